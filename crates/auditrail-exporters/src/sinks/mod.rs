//! One module per sink. A sink is a config struct (the keys of its
//! `[[sinks]]` table besides `name`, `type` and `[sinks.delivery]`) and an
//! [`Exporter`] built from it.

#[cfg(feature = "mysql")]
pub mod mysql;

use std::sync::Arc;

use serde::Deserialize;

use crate::{ExportError, Exporter, SinkContext};

/// The sink `type` and its own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    #[cfg(feature = "mysql")]
    Mysql(mysql::MysqlConfig),
}

impl SinkKind {
    /// The `type` as written in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "mysql")]
            SinkKind::Mysql(_) => "mysql",
        }
    }

    /// The exporter for this config. Does not connect yet: that is
    /// [`Exporter::prepare`].
    pub fn build(&self, context: &SinkContext) -> Result<Arc<dyn Exporter>, ExportError> {
        match self {
            #[cfg(feature = "mysql")]
            SinkKind::Mysql(config) => Ok(Arc::new(mysql::MysqlSink::new(config, context)?)),
        }
    }
}
