//! The Kafka sink (librdkafka, through `rdkafka`).
//!
//! For teams that outgrow one machine and feed several consumers: each event
//! is one record, its `format` encoding (the canonical JSON event by
//! default) as the value and its event id as the key, produced to a topic
//! templated from the event (by tenant, service, event name or node).
//!
//! The producer is librdkafka's idempotent one (`enable.idempotence`,
//! `acks=all`): its own retries inside one producer session never store a
//! record twice, and a record counts as delivered only when every in-sync
//! replica has it. A batch is delivered when every delivery report of it
//! says so. The delivery loop's resends (a timed-out export, a batch split
//! around a poison record) reuse the first produce ([`deliveries`]), so
//! within one process each event is stored once. A crash of auditrail starts
//! a new producer session, and what it sends again after the last cursor
//! flush is stored again: at-least-once across crashes, with the event id as
//! the key for consumers (or log compaction) to drop the copies.

mod deliveries;
mod errors;
mod topic;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use bytesize::ByteSize;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::encoding::LineFormat;
use crate::{ExportError, Exporter, SinkContext};
use deliveries::{Deliveries, Failure, Key, Pending, Step};
pub use topic::TopicTemplate;

/// `type = "kafka"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The bootstrap brokers: `host:port`, several comma-separated, each
    /// with or without `kafka://`.
    pub url: String,
    /// The topic of each event: text with `{tenant}`, `{service_name}`,
    /// `{event_name}` and `{node}`, each replaced by the event's value with
    /// characters Kafka does not allow in topic names made `_`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// What each record's value is.
    #[serde(default)]
    pub format: LineFormat,
    /// The largest record (value and key) the sink sends; a larger event is
    /// dead-lettered. Kafka's own default limit is about 1 MB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
    /// Create a missing topic (with `partitions` and `replication_factor`)
    /// before the first record to it. Off: a missing topic is a
    /// configuration error (unless the broker creates topics itself).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of a topic the sink creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a topic the sink creates; -1 is the broker's
    /// `default.replication.factor`.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Extra librdkafka producer properties (`linger.ms`, `batch.size`,
    /// `compression.type` = `lz4` or `snappy`, ...), checked by librdkafka
    /// at start-up. The ones that make the delivery guarantee are refused
    /// (see [`RESERVED`]). This librdkafka is built without TLS, SASL/SCRAM,
    /// gzip and zstd.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, toml::Value>,
}

fn default_topic() -> String {
    "audit.{tenant}".into()
}

fn default_max_message_bytes() -> ByteSize {
    // librdkafka's default `message.max.bytes`, a little under the broker's
    // default (1,048,588 bytes per record batch).
    ByteSize::b(1_000_000)
}

fn default_true() -> bool {
    true
}

fn default_partitions() -> i32 {
    3
}

fn default_replication_factor() -> i32 {
    -1
}

/// librdkafka properties the sink sets itself, because the delivery
/// guarantee (or another key) depends on them.
pub const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
    "message.max.bytes",
    "max.in.flight",
    "max.in.flight.requests.per.connection",
];

/// Bytes per record that Kafka's framing adds to the key and value; kept
/// free below librdkafka's limit so our own check is the one that refuses.
const RECORD_OVERHEAD: u64 = 1024;

/// How long a metadata request or topic creation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

type Producer = FutureProducer<Logs>;

/// Produces events to Kafka and waits for every delivery report.
pub struct KafkaSink {
    name: String,
    config: KafkaConfig,
    topic: TopicTemplate,
    client: ClientConfig,
    max_message_bytes: usize,
    /// Replaced when librdkafka declares it dead (a fatal error).
    producer: Mutex<Option<Arc<Producer>>>,
    admin: OnceCell<AdminClient<Logs>>,
    /// Topics known to exist.
    topics: Mutex<HashSet<String>>,
    deliveries: Deliveries,
}

impl KafkaSink {
    pub fn new(config: &KafkaConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let bad = |message: String| ExportError::misconfigured("config", message);
        let topic = TopicTemplate::parse(&config.topic).map_err(|e| bad(format!("topic: {e}")))?;
        let bootstrap = bootstrap_servers(&config.url).map_err(|e| bad(format!("url: {e}")))?;
        if config.partitions < 1 {
            return Err(bad(format!(
                "partitions = {} must be at least 1",
                config.partitions
            )));
        }
        if config.replication_factor < 1 && config.replication_factor != -1 {
            return Err(bad(format!(
                "replication_factor = {} must be at least 1, or -1 for the broker's default",
                config.replication_factor
            )));
        }
        let max_message_bytes = usize::try_from(config.max_message_bytes.as_u64())
            .ok()
            .filter(|b| (1024..=1_000_000_000).contains(b))
            .ok_or_else(|| {
                bad(format!(
                    "max_message_bytes = {} is out of range 1KiB..=1GB",
                    config.max_message_bytes
                ))
            })?;

        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &bootstrap)
            .set("client.id", format!("auditrail-{}", context.name))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // librdkafka keeps retrying (idempotently) for as long as it
            // takes; the delivery loop's timeout only decides when the sink
            // shows as failing. A finite timeout would fail records that
            // may have been stored, and producing them again would store
            // them twice.
            .set("message.timeout.ms", "0")
            // The Java client's partitioner: the same key lands on the same
            // partition whichever client produced it.
            .set("partitioner", "murmur2_random")
            // Room for the largest record we send, and never below
            // librdkafka's default, which also bounds its request size.
            .set(
                "message.max.bytes",
                (config.max_message_bytes.as_u64() + RECORD_OVERHEAD)
                    .max(1_000_000)
                    .to_string(),
            );
        for (key, value) in &config.librdkafka {
            if RESERVED.contains(&key.as_str()) {
                return Err(bad(format!(
                    "librdkafka.{key:?} is set by the sink (it makes the delivery guarantee, or has a key of its own: url, max_message_bytes)"
                )));
            }
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.to_string()
                }
                other => {
                    return Err(bad(format!(
                        "librdkafka.{key:?} must be a string, number or boolean, not {}",
                        other.type_str()
                    )))
                }
            };
            client.set(key, value);
        }
        // librdkafka checks every property here (an unknown one, a bad
        // value), so a typo stops start-up instead of the first connect.
        client
            .create_native_config()
            .map_err(|e| bad(format!("librdkafka: {e}")))?;
        Ok(KafkaSink {
            name: context.name.clone(),
            config: config.clone(),
            topic,
            client,
            max_message_bytes,
            producer: Mutex::new(None),
            admin: OnceCell::new(),
            topics: Mutex::new(HashSet::new()),
            deliveries: Deliveries::default(),
        })
    }

    fn logs(&self) -> Logs {
        Logs {
            sink: self.name.clone(),
        }
    }

    /// The producer, made on first use and again after a fatal error.
    fn producer(&self) -> Result<Arc<Producer>, ExportError> {
        let mut slot = self.producer.lock().unwrap();
        if let Some(producer) = slot.as_ref() {
            match producer.client().fatal_error() {
                None => return Ok(producer.clone()),
                Some((code, reason)) => {
                    tracing::warn!(sink = %self.name, ?code, %reason, "the Kafka producer failed fatally; starting a new producer session");
                    metrics::counter!("auditrail_kafka_producer_restarts_total", "sink" => self.name.clone()).increment(1);
                }
            }
        }
        let producer: Producer = self
            .client
            .create_with_context(self.logs())
            .map_err(|e| ExportError::misconfigured("config", format!("Kafka producer: {e}")))?;
        let producer = Arc::new(producer);
        if let Some(old) = slot.replace(producer.clone()) {
            // Dropping a producer purges its queue (its records report
            // failure, and are produced again by the new one) and waits up
            // to half a second: not on this thread.
            tokio::task::spawn_blocking(move || drop(old));
        }
        Ok(producer)
    }

    async fn admin(&self) -> Result<&AdminClient<Logs>, ExportError> {
        self.admin
            .get_or_try_init(|| async {
                self.client.create_with_context(self.logs()).map_err(|e| {
                    ExportError::misconfigured("config", format!("Kafka admin client: {e}"))
                })
            })
            .await
    }

    /// Makes sure `topic` exists: creates it, or (with `create_topics`
    /// off) asks the broker for it.
    async fn ensure_topic(&self, topic: &str) -> Result<(), ExportError> {
        if self.topics.lock().unwrap().contains(topic) {
            return Ok(());
        }
        if self.config.create_topics {
            let max_bytes = (self.config.max_message_bytes.as_u64() + RECORD_OVERHEAD).to_string();
            let new = NewTopic::new(
                topic,
                self.config.partitions,
                TopicReplication::Fixed(self.config.replication_factor),
            )
            // So that the broker takes every record the sink sends.
            .set("max.message.bytes", &max_bytes);
            let options = AdminOptions::new()
                .request_timeout(Some(ADMIN_TIMEOUT))
                .operation_timeout(Some(ADMIN_TIMEOUT));
            let results = self
                .admin()
                .await?
                .create_topics([&new], &options)
                .await
                .map_err(|e| kafka_error(&e, format!("creating topic {topic:?}: {e}")))?;
            for result in results {
                match result {
                    Ok(_) => {
                        tracing::info!(sink = %self.name, topic, partitions = self.config.partitions, "created Kafka topic");
                        metrics::counter!("auditrail_kafka_topics_created_total", "sink" => self.name.clone()).increment(1);
                    }
                    Err((_, Code::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        return Err(errors::classify(
                            code,
                            format!("creating topic {topic:?}: {code}"),
                        ))
                    }
                }
            }
        } else {
            let producer = self.producer()?;
            let name = topic.to_owned();
            let metadata = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(Some(&name), ADMIN_TIMEOUT)
            })
            .await
            .map_err(|e| ExportError::retryable("server", format!("metadata task: {e}")))?
            .map_err(|e| kafka_error(&e, format!("metadata of topic {topic:?}: {e}")))?;
            let error = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.error())
                .unwrap_or(Some(
                    rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                ));
            if let Some(error) = error {
                let code = Code::from(error);
                return Err(match code {
                    Code::UnknownTopicOrPartition | Code::UnknownTopic => {
                        ExportError::misconfigured(
                            "topic",
                            format!("topic {topic:?} does not exist, and create_topics = false"),
                        )
                    }
                    _ => errors::classify(code, format!("topic {topic:?}: {code}")),
                });
            }
        }
        self.topics.lock().unwrap().insert(topic.to_owned());
        Ok(())
    }

    /// Hands one record to librdkafka; waits while its queue is full.
    async fn produce(
        &self,
        producer: &Producer,
        topic: &str,
        event: &AuditEvent,
        payload: &[u8],
    ) -> Result<Pending, ExportError> {
        let mut record = FutureRecord::to(topic)
            .key(event.event_id.as_bytes())
            .payload(payload);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    return Ok(deliveries::share(async move {
                        match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _message))) => Err(Failure {
                                code: e.rdkafka_error_code(),
                                message: e.to_string(),
                            }),
                            Err(_) => Err(Failure {
                                code: None,
                                message: "the producer was closed before it reported".into(),
                            }),
                        }
                    }));
                }
                // Its queue (100,000 records by default) drains as
                // deliveries are reported.
                Err((KafkaError::MessageProduction(Code::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(kafka_error(
                        &e,
                        format!("event {} to topic {topic:?}: {e}", event.event_id),
                    ))
                }
            }
        }
    }

    /// What a failed delivery report means, and what it changes here.
    fn failed(&self, key: &Key, topic: Option<&str>, failure: &Failure) -> ExportError {
        let message = format!(
            "event seq {} of node {}{}: {}",
            key.1,
            key.0,
            topic
                .map(|t| format!(" to topic {t:?}"))
                .unwrap_or_default(),
            failure.message
        );
        let Some(code) = failure.code else {
            return ExportError::retryable("server", message);
        };
        if matches!(code, Code::UnknownTopic | Code::UnknownTopicOrPartition) {
            // Deleted under us, perhaps: ask (or create) again next time.
            if let Some(topic) = topic {
                self.topics.lock().unwrap().remove(topic);
            }
        }
        errors::classify(code, message)
    }
}

/// `kafka://a:9092,b:9092` or `a:9092,b:9092` as librdkafka's list.
fn bootstrap_servers(url: &str) -> Result<String, String> {
    let mut servers = Vec::new();
    for part in url.split(',').map(str::trim) {
        let address = part.strip_prefix("kafka://").unwrap_or(part);
        let address = address.strip_suffix('/').unwrap_or(address);
        if address.contains("://") {
            return Err(format!("{part:?}: only kafka:// (plaintext) is supported"));
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(format!("{part:?} is not host:port"));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{part:?} is not host:port"));
        }
        servers.push(address.to_owned());
    }
    Ok(servers.join(","))
}

/// A `KafkaError` as an export error, by its code when it has one.
fn kafka_error(error: &KafkaError, message: String) -> ExportError {
    match errors::code_of(error) {
        Some(code) => errors::classify(code, message),
        None => ExportError::retryable("server", message),
    }
}

#[async_trait]
impl Exporter for KafkaSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        let producer = self.producer()?;
        // Any broker answering a metadata request: the address is right
        // and it speaks Kafka.
        let url = self.config.url.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, ADMIN_TIMEOUT))
            .await
            .map_err(|e| ExportError::retryable("server", format!("metadata task: {e}")))?
            .map_err(|e| {
                let message = format!("no Kafka broker at {url} answered: {e}");
                match errors::code_of(&e) {
                    // A timeout or transport error here is a broker that is
                    // down or still starting.
                    Some(
                        Code::OperationTimedOut
                        | Code::BrokerTransportFailure
                        | Code::AllBrokersDown,
                    )
                    | None => ExportError::retryable("connection", message),
                    Some(code) => errors::classify(code, message),
                }
            })?;
        if let Some(topic) = self.topic.fixed() {
            self.ensure_topic(topic).await?;
        }
        Ok(())
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        let producer = self.producer()?;
        // Everything the batch needs is checked before anything is
        // produced: a poison record fails the batch at once, and the
        // delivery loop's split then isolates it.
        let mut to_produce = Vec::with_capacity(events.len());
        let mut waits: Vec<(Key, Option<String>, Pending)> = Vec::new();
        let mut resent = 0u64;
        for event in events {
            let key = (event.node.clone(), event.seq);
            match self.deliveries.step(&key) {
                Step::Delivered => {
                    resent += 1;
                    continue;
                }
                Step::InFlight(pending) => {
                    resent += 1;
                    waits.push((key, None, pending));
                    continue;
                }
                Step::Produce => {}
            }
            let topic = self.topic.render(event).map_err(|e| {
                ExportError::permanent("data", format!("event {}: {e}", event.event_id))
            })?;
            let mut payload = Vec::new();
            self.config.format.write_line(event, &mut payload);
            // One record per event: the line without its newline.
            payload.pop();
            let size = payload.len() + event.event_id.len();
            if size > self.max_message_bytes {
                return Err(ExportError::permanent(
                    "message_too_large",
                    format!(
                        "event {} takes {size} bytes as a record, over the sink's max_message_bytes ({} bytes)",
                        event.event_id, self.max_message_bytes
                    ),
                ));
            }
            to_produce.push((key, event, topic, payload));
        }
        if resent > 0 {
            metrics::counter!("auditrail_kafka_resends_deduplicated_total", "sink" => self.name.clone())
                .increment(resent);
        }
        let topics: HashSet<&str> = to_produce.iter().map(|(_, _, t, _)| t.as_str()).collect();
        for topic in topics {
            self.ensure_topic(topic).await?;
        }
        let produced = to_produce.len() as u64;
        for (key, event, topic, payload) in to_produce {
            let pending = self.produce(&producer, &topic, event, &payload).await?;
            self.deliveries.produced(key.clone(), pending.clone());
            waits.push((key, Some(topic), pending));
        }
        metrics::counter!("auditrail_kafka_records_produced_total", "sink" => self.name.clone())
            .increment(produced);

        // Every report, not only up to the first failure: each one settles
        // its event in `deliveries`.
        let reports =
            futures::future::join_all(waits.iter().map(|(_, _, pending)| pending.clone())).await;
        let mut first_error = None;
        for ((key, topic, pending), report) in waits.iter().zip(reports) {
            self.deliveries.reported(key, pending, &report);
            if let Err(failure) = report {
                if first_error.is_none() {
                    first_error = Some(self.failed(key, topic.as_deref(), &failure));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}

/// librdkafka's logs and global errors, into auditrail's log and metrics
/// with the sink's name.
#[derive(Clone)]
pub struct Logs {
    sink: String,
}

impl ClientContext for Logs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(sink = %self.sink, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(sink = %self.sink, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(sink = %self.sink, facility, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Connection losses and the like, which librdkafka recovers from
        // by itself; a delivery that suffers from them fails on its own.
        tracing::warn!(sink = %self.sink, %error, "Kafka client: {reason}");
        metrics::counter!("auditrail_kafka_client_errors_total", "sink" => self.sink.clone())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SinkContext {
        SinkContext {
            name: "stream".into(),
            retention: Duration::from_secs(3600),
        }
    }

    fn config(extra: &str) -> Result<KafkaConfig, toml::de::Error> {
        toml::from_str(&format!("url = \"kafka://127.0.0.1:9092\"\n{extra}"))
    }

    #[test]
    fn bootstrap_lists_take_either_spelling() {
        assert_eq!(
            bootstrap_servers("kafka://a:9092, b:9093,kafka://c:1/").unwrap(),
            "a:9092,b:9093,c:1"
        );
        assert!(bootstrap_servers("https://a:9092").is_err());
        assert!(bootstrap_servers("a").is_err());
        assert!(bootstrap_servers("a:port").is_err());
        assert!(bootstrap_servers(":9092").is_err());
    }

    #[test]
    fn defaults_and_refusals() {
        let c = config("").unwrap();
        assert_eq!(c.topic, "audit.{tenant}");
        assert_eq!(c.format, LineFormat::Json);
        assert_eq!(c.max_message_bytes, ByteSize::b(1_000_000));
        assert!(c.create_topics);
        assert!(KafkaSink::new(&c, &context()).is_ok());

        let err = |extra: &str| {
            KafkaSink::new(&config(extra).unwrap(), &context())
                .err()
                .unwrap()
                .message
        };
        assert!(err("topic = \"audit/{tenant}\"").contains("topic"));
        assert!(err("partitions = 0").contains("partitions"));
        assert!(err("replication_factor = 0").contains("replication_factor"));
        assert!(err("max_message_bytes = 10").contains("max_message_bytes"));
        assert!(err("[librdkafka]\nacks = \"1\"").contains("acks"));
        assert!(err("[librdkafka]\n\"enable.idempotence\" = false").contains("idempotence"));
        assert!(config("nope = 1").is_err());
        // librdkafka's own check, at start-up.
        assert!(err("[librdkafka]\n\"no.such.property\" = 1").contains("no.such.property"));
        assert!(err("[librdkafka]\n\"linger.ms\" = \"soon\"").contains("linger.ms"));
    }

    #[test]
    fn librdkafka_properties_pass_through() {
        let c = config("[librdkafka]\n\"linger.ms\" = 20\n\"compression.type\" = \"lz4\"").unwrap();
        let sink = KafkaSink::new(&c, &context()).unwrap();
        assert_eq!(sink.client.get("linger.ms"), Some("20"));
        assert_eq!(sink.client.get("compression.type"), Some("lz4"));
        assert_eq!(sink.client.get("acks"), Some("all"));
        assert_eq!(sink.client.get("enable.idempotence"), Some("true"));
    }
}
