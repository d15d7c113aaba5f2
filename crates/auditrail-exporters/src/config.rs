//! The `[[sinks]]` tables of the config file.

use std::time::Duration;

use bytesize::ByteSize;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::sinks::SinkKind;

/// One `[[sinks]]` table: a name, how to deliver, and what to deliver to.
///
/// ```toml
/// [[sinks]]
/// name = "warehouse"
/// type = "mysql"
/// url = "mysql://audit:${MYSQL_PASSWORD}@127.0.0.1:3306/audit"
/// table = "audit_events"
///
/// [sinks.delivery]
/// max_events = 5000
/// linger = "200ms"
/// ```
///
/// `name` and `[sinks.delivery]` are the same for every sink; every other
/// key belongs to the sink `type` (see [`SinkKind`]), and unknown keys are
/// errors. Keys left out of `[sinks.delivery]` take the sink type's
/// defaults ([`SinkKind::default_delivery`]).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Names the sink's cursor in the spool, its metrics and its dead
    /// letters; renaming a sink makes it start over from the oldest event.
    pub name: String,
    pub delivery: DeliveryConfig,
    pub kind: SinkKind,
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Serde cannot combine a flattened common part with
        // `deny_unknown_fields`, so the common keys are taken out by hand and
        // the rest goes to the sink type's own strict struct.
        let mut table = toml::Table::deserialize(deserializer)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "sink `name` must be a string, not {}",
                    other.type_str()
                )))
            }
            None => return Err(D::Error::missing_field("name")),
        };
        if name.is_empty() || name.contains(['\0', '/']) {
            return Err(D::Error::custom(format!(
                "sink name {name:?} must be non-empty and contain no '/' or NUL"
            )));
        }
        let delivery = table.remove("delivery");
        let kind = SinkKind::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(format!("sink {name:?}: {e}")))?;
        let delivery = kind
            .default_delivery()
            .with_overrides(delivery)
            .map_err(|e| D::Error::custom(format!("sink {name:?}, [delivery]: {e}")))?;
        Ok(SinkConfig {
            name,
            delivery,
            kind,
        })
    }
}

/// How the delivery loop feeds one sink (`[sinks.delivery]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// A batch is sent once it holds this many events...
    pub max_events: usize,
    /// ...or this many bytes (canonical field sizes, roughly the row size)...
    pub max_bytes: ByteSize,
    /// ...or once its first event has waited this long.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// An export that has not answered within this is retried.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The first retry waits about this long; each next one twice as long...
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// ...up to this.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A batch that has failed this many times in a row with the same kind
    /// of error shows as stuck (`/readyz`, `auditrail_sink_stuck`).
    pub stuck_after: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_events: 5000,
            max_bytes: ByteSize::mib(8),
            linger: Duration::from_millis(200),
            concurrency: 2,
            timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            // With the default backoff, about a minute and a half of the
            // same error: longer than a restart of the destination.
            stuck_after: 10,
        }
    }
}

impl DeliveryConfig {
    /// These settings with the keys of a `[sinks.delivery]` table on top.
    pub fn with_overrides(self, table: Option<toml::Value>) -> Result<DeliveryConfig, String> {
        let Some(table) = table else {
            return Ok(self);
        };
        let toml::Value::Table(overrides) = table else {
            return Err(format!("must be a table, not {}", table.type_str()));
        };
        let mut merged = toml::Table::try_from(&self).map_err(|e| e.to_string())?;
        merged.extend(overrides);
        let config =
            DeliveryConfig::deserialize(toml::Value::Table(merged)).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.max_events) {
            return Err(format!(
                "max_events = {} is out of range 1..=100000",
                self.max_events
            ));
        }
        if self.max_bytes.as_u64() < 1024 {
            return Err(format!("max_bytes = {} is below 1KiB", self.max_bytes));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(format!(
                "concurrency = {} is out of range 1..=64",
                self.concurrency
            ));
        }
        if self.timeout.is_zero() {
            return Err("timeout must be above 0".into());
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err("backoff_initial must be above 0 and at most backoff_max".into());
        }
        if self.stuck_after == 0 {
            return Err("stuck_after must be at least 1".into());
        }
        Ok(())
    }
}
