//! One module per sink. A sink is a config struct (the keys of its
//! `[[sinks]]` table besides `name`, `type` and `[sinks.delivery]`) and an
//! [`Exporter`] built from it.

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
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
    #[cfg(feature = "clickhouse")]
    Clickhouse(clickhouse::ClickhouseConfig),
}

impl SinkKind {
    /// The `type` as written in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "mysql")]
            SinkKind::Mysql(_) => "mysql",
            #[cfg(feature = "clickhouse")]
            SinkKind::Clickhouse(_) => "clickhouse",
            #[cfg(not(any(feature = "mysql", feature = "clickhouse")))]
            _ => unreachable!("no sink type is compiled in"),
        }
    }

    /// The exporter for this config. Does not connect yet: that is
    /// [`Exporter::prepare`].
    pub fn build(&self, context: &SinkContext) -> Result<Arc<dyn Exporter>, ExportError> {
        match self {
            #[cfg(feature = "mysql")]
            SinkKind::Mysql(config) => Ok(Arc::new(mysql::MysqlSink::new(config, context)?)),
            #[cfg(feature = "clickhouse")]
            SinkKind::Clickhouse(config) => {
                Ok(Arc::new(clickhouse::ClickhouseSink::new(config, context)?))
            }
            // Built without sink features, no config can name a sink type.
            #[cfg(not(any(feature = "mysql", feature = "clickhouse")))]
            _ => unreachable!("no sink type is compiled in: {context:?}"),
        }
    }
}
