//! One module per sink. A sink is a config struct (the keys of its
//! `[[sinks]]` table besides `name`, `type` and `[sinks.delivery]`) and an
//! [`Exporter`] built from it.

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
#[cfg(feature = "elasticsearch")]
pub mod elasticsearch;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "splunk_hec")]
pub mod splunk_hec;
#[cfg(feature = "syslog")]
pub mod syslog;
#[cfg(feature = "webhook")]
pub mod webhook;

use std::sync::Arc;

use serde::Deserialize;

use crate::{DeliveryConfig, ExportError, Exporter, SinkContext};

/// The sink `type` and its own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    #[cfg(feature = "mysql")]
    Mysql(mysql::MysqlConfig),
    #[cfg(feature = "clickhouse")]
    Clickhouse(clickhouse::ClickhouseConfig),
    #[cfg(feature = "nats")]
    Nats(nats::NatsConfig),
    #[cfg(feature = "otlp")]
    Otlp(otlp::OtlpConfig),
    #[cfg(feature = "syslog")]
    Syslog(syslog::SyslogConfig),
    #[cfg(feature = "file")]
    File(file::FileConfig),
    #[cfg(feature = "webhook")]
    Webhook(webhook::WebhookConfig),
    #[cfg(feature = "splunk_hec")]
    SplunkHec(splunk_hec::SplunkHecConfig),
    #[cfg(feature = "elasticsearch")]
    Elasticsearch(elasticsearch::ElasticsearchConfig),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConfig),
}

impl SinkKind {
    /// The `type` as written in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "mysql")]
            SinkKind::Mysql(_) => "mysql",
            #[cfg(feature = "clickhouse")]
            SinkKind::Clickhouse(_) => "clickhouse",
            #[cfg(feature = "nats")]
            SinkKind::Nats(_) => "nats",
            #[cfg(feature = "otlp")]
            SinkKind::Otlp(_) => "otlp",
            #[cfg(feature = "syslog")]
            SinkKind::Syslog(_) => "syslog",
            #[cfg(feature = "file")]
            SinkKind::File(_) => "file",
            #[cfg(feature = "webhook")]
            SinkKind::Webhook(_) => "webhook",
            #[cfg(feature = "splunk_hec")]
            SinkKind::SplunkHec(_) => "splunk_hec",
            #[cfg(feature = "elasticsearch")]
            SinkKind::Elasticsearch(_) => "elasticsearch",
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(_) => "kafka",
            #[cfg(not(any(
                feature = "mysql",
                feature = "clickhouse",
                feature = "nats",
                feature = "otlp",
                feature = "syslog",
                feature = "file",
                feature = "webhook",
                feature = "splunk_hec",
                feature = "elasticsearch",
                feature = "kafka"
            )))]
            _ => unreachable!("no sink type is compiled in"),
        }
    }

    /// Delivery settings that suit this sink, which `[sinks.delivery]`
    /// keys override.
    pub fn default_delivery(&self) -> DeliveryConfig {
        match self {
            // One statement per 2,000 rows, and the server does the work:
            // more connections keep both its cores busy (measured by
            // scripts/bench-sinks: 35k rows/s with 2, 45k with 4).
            #[cfg(feature = "mysql")]
            SinkKind::Mysql(_) => DeliveryConfig {
                concurrency: 4,
                ..DeliveryConfig::default()
            },
            // Every insert makes a part (a file per column); ClickHouse
            // wants few, large inserts.
            #[cfg(feature = "clickhouse")]
            SinkKind::Clickhouse(_) => DeliveryConfig {
                max_events: 50_000,
                max_bytes: bytesize::ByteSize::mib(64),
                linger: std::time::Duration::from_secs(1),
                ..DeliveryConfig::default()
            },
            // One connection: a second batch in flight would only wait for
            // it, and could overtake the first.
            #[cfg(feature = "syslog")]
            SinkKind::Syslog(_) => DeliveryConfig {
                concurrency: 1,
                ..DeliveryConfig::default()
            },
            // One writer, batches in seq order: the sink skips what it
            // already holds by seq, which two batches in flight would
            // break. Big batches: one fdatasync each.
            #[cfg(feature = "file")]
            SinkKind::File(_) => DeliveryConfig {
                concurrency: 1,
                max_events: 20_000,
                max_bytes: bytesize::ByteSize::mib(32),
                ..DeliveryConfig::default()
            },
            // A receiver is someone's web service: moderate requests, a
            // few at a time.
            #[cfg(feature = "webhook")]
            SinkKind::Webhook(_) => DeliveryConfig {
                max_events: 1000,
                max_bytes: bytesize::ByteSize::mib(4),
                ..DeliveryConfig::default()
            },
            // HEC takes requests up to its max_content_length (limits.conf
            // [http_input]; 1 MB on older Splunk): batches stay near that,
            // and acknowledgement lets more wait besides (max_pending_acks).
            #[cfg(feature = "splunk_hec")]
            SinkKind::SplunkHec(_) => DeliveryConfig {
                max_events: 1000,
                max_bytes: bytesize::ByteSize::kib(768),
                ..DeliveryConfig::default()
            },
            // Elastic's guidance for _bulk: requests of a few MB, a few
            // at a time; larger ones only queue up in the write pool. The
            // ECS documents are larger than the canonical fields max_bytes
            // counts, and small AWS OpenSearch domains refuse requests
            // over 10 MiB.
            #[cfg(feature = "elasticsearch")]
            SinkKind::Elasticsearch(_) => DeliveryConfig {
                max_events: 2000,
                max_bytes: bytesize::ByteSize::mib(5),
                ..DeliveryConfig::default()
            },
            // librdkafka batches records across exports by itself; more
            // and larger batches in flight hide each one's wait for its
            // last delivery report (scripts/bench-sinks into tansu: median
            // ~68k events/s with 2 x 5,000, ~82k with 4 x 10,000).
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(_) => DeliveryConfig {
                concurrency: 4,
                max_events: 10_000,
                ..DeliveryConfig::default()
            },
            _ => DeliveryConfig::default(),
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
            #[cfg(feature = "nats")]
            SinkKind::Nats(config) => Ok(Arc::new(nats::NatsSink::new(config, context)?)),
            #[cfg(feature = "otlp")]
            SinkKind::Otlp(config) => Ok(Arc::new(otlp::OtlpSink::new(config, context)?)),
            #[cfg(feature = "syslog")]
            SinkKind::Syslog(config) => Ok(Arc::new(syslog::SyslogSink::new(config, context)?)),
            #[cfg(feature = "file")]
            SinkKind::File(config) => Ok(Arc::new(file::FileSink::new(config, context)?)),
            #[cfg(feature = "webhook")]
            SinkKind::Webhook(config) => Ok(Arc::new(webhook::WebhookSink::new(config, context)?)),
            #[cfg(feature = "splunk_hec")]
            SinkKind::SplunkHec(config) => {
                Ok(Arc::new(splunk_hec::SplunkHecSink::new(config, context)?))
            }
            #[cfg(feature = "elasticsearch")]
            SinkKind::Elasticsearch(config) => Ok(Arc::new(elasticsearch::ElasticsearchSink::new(
                config, context,
            )?)),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(config) => Ok(Arc::new(kafka::KafkaSink::new(config, context)?)),
            // Built without sink features, no config can name a sink type.
            #[cfg(not(any(
                feature = "mysql",
                feature = "clickhouse",
                feature = "nats",
                feature = "otlp",
                feature = "syslog",
                feature = "file",
                feature = "webhook",
                feature = "splunk_hec",
                feature = "elasticsearch",
                feature = "kafka"
            )))]
            _ => unreachable!("no sink type is compiled in: {context:?}"),
        }
    }
}
