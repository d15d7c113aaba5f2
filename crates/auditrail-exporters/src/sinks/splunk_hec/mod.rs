//! The `splunk_hec` sink: batches POSTed to Splunk's HTTP Event Collector
//! (`/services/collector/event`), counted as delivered only once Splunk's
//! indexer acknowledgement (`/services/collector/ack`) says they are
//! indexed.
//!
//! HEC's 200 only says that the data looked valid, before it entered
//! Splunk's pipeline; with indexer acknowledgement on (the default here,
//! `acknowledgements = true`) the 200 carries an `ackId`, and the sink
//! answers [`Sent::Awaiting`] with it. The delivery loop's ack tracker
//! then asks `/services/collector/ack` about every waiting id, and a batch
//! whose ack does not come within `ack_timeout` is sent again (never
//! taken as delivered, unlike Vector, which marks such an id Rejected and
//! drops it).
//!
//! Acknowledgement never degrades silently (Vector's "Unable to use
//! indexer acknowledgements. Acknowledging based on initial 200 OK."):
//! [`Exporter::prepare`] asks the ack endpoint first, and a token with
//! acknowledgement off (code 14) stops `serve` at start with the message;
//! at runtime a refusing ack endpoint is an error that keeps the sink
//! failing, and a 200 without `ackId` is [`ErrorClass::Misconfigured`],
//! not a delivery. Counting on the 200 is an explicit setting
//! (`acknowledgements = false`), documented as at-least-once.
//!
//! Every request carries the token (`Authorization: Splunk <token>`) and
//! one channel GUID (`X-Splunk-Request-Channel`) per sink and process:
//! ack ids are numbered per channel, so the ids this process waits for
//! are ids of its own channel. HEC has no idempotent write: a resend after
//! an ack timeout or a crash can index an event twice, and the
//! `event_id` field lets a search drop the copies.
//!
//! [`Sent::Awaiting`]: crate::Sent::Awaiting
//! [`ErrorClass::Misconfigured`]: crate::ErrorClass::Misconfigured

mod encode;
mod response;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use rand::Rng;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;

use crate::acks::{AckId, AckPolicy, Sent};
use crate::encoding::LineFormat;
use crate::retry::parse_retry_after;
use crate::{ExportError, Exporter, SinkContext};
pub use encode::Envelope;
pub use response::{classify, classify_ack, HecAnswer};

/// The header that names the channel of a request.
pub const CHANNEL_HEADER: &str = "x-splunk-request-channel";

/// `type = "splunk_hec"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkHecConfig {
    /// The HEC base, e.g. `https://splunk.internal:8088`: the sink adds
    /// `/services/collector/event` and `/services/collector/ack`.
    pub url: String,
    /// The environment variable that holds the HEC token; a token is never
    /// written in the config itself.
    pub token_env: String,
    /// The index to write to; none leaves it to the token's default index.
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    #[serde(default = "default_source")]
    pub source: String,
    /// An event counts as delivered only once HEC's indexer
    /// acknowledgement says it is indexed. `false` counts it on HEC's 200,
    /// before Splunk's pipeline has it.
    #[serde(default = "default_acknowledgements")]
    pub acknowledgements: bool,
    /// A batch not acknowledged within this long after it was sent is sent
    /// again.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How often the waiting ack ids are asked about (all in one request).
    #[serde(default = "default_ack_poll_interval", with = "humantime_serde")]
    pub ack_poll_interval: Duration,
    /// At most this many batches wait for their acknowledgement at once;
    /// it bounds the memory a slow indexer can take.
    #[serde(default = "default_max_pending_acks")]
    pub max_pending_acks: usize,
    #[serde(default)]
    pub format: LineFormat,
}

fn default_sourcetype() -> String {
    "auditrail".into()
}

fn default_source() -> String {
    "auditrail".into()
}

fn default_acknowledgements() -> bool {
    true
}

/// Splunk acknowledges once the indexer has committed the events, which
/// under load can take tens of seconds; a minute is well past that
/// without leaving a lost batch unnoticed for long.
fn default_ack_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_ack_poll_interval() -> Duration {
    Duration::from_secs(1)
}

/// Throughput is at most `max_pending_acks × max_events` per ack round
/// (the indexer's latency plus up to one poll interval: about 32,000
/// events/s when acks come at once, 6,000 at a slow indexer's 10 s), and
/// each waiting batch holds its events in memory (at most `max_bytes`,
/// 768 KiB by default: under 50 MiB in all).
fn default_max_pending_acks() -> usize {
    64
}

/// Sends to one HEC, on one channel.
pub struct SplunkHecSink {
    name: String,
    client: reqwest::Client,
    event_url: reqwest::Url,
    ack_url: reqwest::Url,
    authorization: HeaderValue,
    channel: HeaderValue,
    envelope: Envelope,
    acks: Option<AckPolicy>,
    /// `acknowledgements = false`, but HEC answered with an ack id: said
    /// once, not per batch.
    told_unused_acks: AtomicBool,
}

impl SplunkHecSink {
    pub fn new(config: &SplunkHecConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let base =
            reqwest::Url::parse(&config.url).map_err(|e| misconfigured(format!("url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(misconfigured(format!(
                "url: {:?} is not http:// or https://",
                config.url
            )));
        }
        if base.path().contains("/services/collector") {
            return Err(misconfigured(format!(
                "url: {:?} names an endpoint; give the HEC base (e.g. https://splunk:8088): the sink adds /services/collector/event and /ack itself",
                config.url
            )));
        }
        if base.query().is_some() {
            return Err(misconfigured(format!(
                "url: {:?} has a query; the token goes in token_env",
                config.url
            )));
        }
        let endpoint = |path: &str| {
            // A base with a path (a proxy's prefix) keeps it.
            let mut url = base.clone();
            let prefix = base.path().trim_end_matches('/');
            url.set_path(&format!("{prefix}/services/collector/{path}"));
            url
        };
        let token = std::env::var(&config.token_env).map_err(|_| {
            misconfigured(format!(
                "token_env: environment variable {} is not set",
                config.token_env
            ))
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(misconfigured(format!(
                "token_env: environment variable {} is empty",
                config.token_env
            )));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Splunk {token}")).map_err(|_| {
                misconfigured(format!(
                    "token_env: the token in {} is not a valid header value",
                    config.token_env
                ))
            })?;
        // Kept out of Debug output and logs.
        authorization.set_sensitive(true);
        for (key, value) in [
            ("sourcetype", &config.sourcetype),
            ("source", &config.source),
        ] {
            if value.trim().is_empty() {
                return Err(misconfigured(format!("{key} must not be empty")));
            }
        }
        if config.index.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(misconfigured(
                "index must not be empty (leave it out for the token's default index)".into(),
            ));
        }
        let acks = if config.acknowledgements {
            if config.ack_poll_interval.is_zero() || config.ack_poll_interval >= config.ack_timeout
            {
                return Err(misconfigured(format!(
                    "ack_poll_interval ({:?}) must be above 0 and below ack_timeout ({:?})",
                    config.ack_poll_interval, config.ack_timeout
                )));
            }
            if !(1..=10_000).contains(&config.max_pending_acks) {
                return Err(misconfigured(format!(
                    "max_pending_acks = {} is out of range 1..=10000",
                    config.max_pending_acks
                )));
            }
            Some(AckPolicy {
                timeout: config.ack_timeout,
                poll_interval: config.ack_poll_interval,
                max_pending: config.max_pending_acks,
            })
        } else {
            tracing::warn!(sink = %context.name,
                "splunk_hec runs with acknowledgements = false: an event counts as delivered on HEC's 200 OK, before Splunk has indexed it (at-least-once; an event Splunk loses after the 200 is not noticed)");
            None
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("auditrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| misconfigured(format!("HTTP client: {e}")))?;
        Ok(SplunkHecSink {
            name: context.name.clone(),
            client,
            event_url: endpoint("event"),
            ack_url: endpoint("ack"),
            authorization,
            channel: HeaderValue::from_str(&new_channel()).expect("a GUID is a header value"),
            envelope: Envelope::new(
                &config.source,
                &config.sourcetype,
                config.index.as_deref(),
                config.format.clone(),
            ),
            acks,
            told_unused_acks: AtomicBool::new(false),
        })
    }

    /// The channel GUID of this sink's requests.
    pub fn channel(&self) -> &str {
        self.channel.to_str().expect("a GUID is ASCII")
    }

    fn post(&self, url: &reqwest::Url, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.client
            .post(url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CHANNEL_HEADER, self.channel.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
    }

    /// `POST /services/collector/ack` with `ids`: which of them are
    /// indexed. HEC says true for an id once, and false for one it does
    /// not know (or no longer knows), so only `true` counts.
    async fn query_acks(&self, ids: &[AckId]) -> Result<Vec<AckId>, ExportError> {
        let body = serde_json::to_vec(&serde_json::json!({ "acks": ids }))
            .expect("serializing ids cannot fail");
        let response = self
            .post(&self.ack_url, body)
            .send()
            .await
            .map_err(response::transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let text = response.text().await.map_err(response::transport)?;
        if !(200..300).contains(&status) {
            return Err(classify_ack(status, retry_after, &text));
        }
        #[derive(Deserialize)]
        struct AckAnswer {
            acks: std::collections::HashMap<String, bool>,
        }
        let answer: AckAnswer = serde_json::from_str(&text).map_err(|e| {
            ExportError::misconfigured(
                "acks",
                format!(
                    "the ack endpoint answered HTTP {status} without an `acks` object ({e}): is `url` a Splunk HEC?"
                ),
            )
        })?;
        Ok(ids
            .iter()
            .copied()
            .filter(|id| answer.acks.get(&id.to_string()) == Some(&true))
            .collect())
    }
}

/// A random (version 4) GUID, as HEC wants a channel to be.
fn new_channel() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

#[async_trait]
impl Exporter for SplunkHecSink {
    /// With acknowledgement on, asks the ack endpoint about an id this new
    /// channel cannot have yet (HEC answers false for it): a token with
    /// acknowledgement off (code 14), a wrong token or a wrong URL stops
    /// `serve` at start with HEC's message, rather than showing up later
    /// as batches that never count as delivered. Without it, an empty
    /// event request checks the token (HEC answers `No data` once the
    /// token is good).
    async fn prepare(&self) -> Result<(), ExportError> {
        if self.acks.is_some() {
            return self.query_acks(&[0]).await.map(|_| ()).map_err(|mut e| {
                e.message = format!(
                    "indexer acknowledgement probe (POST {}): {}",
                    self.ack_url, e.message
                );
                e
            });
        }
        let response = self
            .post(&self.event_url, Vec::new())
            .send()
            .await
            .map_err(response::transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let text = response.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let error = classify(status, retry_after, &text);
        match (HecAnswer::parse(&text).code, error.class) {
            // "No data": the token is good, and the request held no event.
            (Some(5), _) => Ok(()),
            (_, crate::ErrorClass::Permanent) => Ok(()),
            _ => Err(error),
        }
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        // The delivery loop calls `send`; this is for callers that want
        // one call to mean "indexed": it waits for the ack itself.
        let Sent::Awaiting(id) = self.send(events).await? else {
            return Ok(());
        };
        let policy = self
            .acks
            .expect("an ack id comes only with acknowledgements on");
        let deadline = tokio::time::Instant::now() + policy.timeout;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(policy.poll_interval).await;
            if self.query_acks(&[id]).await?.contains(&id) {
                return Ok(());
            }
        }
        Err(ExportError::retryable(
            "ack_timeout",
            format!("ack id {id} not acknowledged within {:?}", policy.timeout),
        ))
    }

    async fn send(&self, events: &[AuditEvent]) -> Result<Sent, ExportError> {
        if events.is_empty() {
            return Ok(Sent::Stored);
        }
        let response = self
            .post(&self.event_url, self.envelope.body(events))
            .send()
            .await
            .map_err(response::transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let text = response.text().await;
        if !(200..300).contains(&status) {
            // The body explains the refusal; a failed read of it explains nothing.
            return Err(classify(status, retry_after, &text.unwrap_or_default()));
        }
        let answer = match text {
            Ok(text) => HecAnswer::parse(&text),
            // Without acknowledgement the 200 is what counts; with it, the
            // ack id was in the body that did not arrive: send again.
            Err(_) if self.acks.is_none() => return Ok(Sent::Stored),
            Err(e) => return Err(response::transport(e)),
        };
        match (self.acks.is_some(), answer.ack_id) {
            (true, Some(id)) => Ok(Sent::Awaiting(id)),
            (true, None) => Err(ExportError::misconfigured(
                "acks",
                format!(
                    "HEC answered HTTP {status} without an ackId although acknowledgements are on, so nothing says the batch will be indexed; it is not counted as delivered ({})",
                    response::ACKS_DISABLED_HINT
                ),
            )),
            (false, ack) => {
                if ack.is_some() && !self.told_unused_acks.swap(true, Ordering::Relaxed) {
                    tracing::warn!(sink = %self.name,
                        "this HEC token has indexer acknowledgement on, but the sink has acknowledgements = false: events count as delivered on the 200, not once indexed; set acknowledgements = true to wait for the indexer");
                }
                Ok(Sent::Stored)
            }
        }
    }

    fn acknowledgements(&self) -> Option<AckPolicy> {
        self.acks
    }

    async fn acknowledged(&self, ids: &[AckId]) -> Result<Vec<AckId>, ExportError> {
        self.query_acks(ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(toml: &str) -> Result<SplunkHecSink, ExportError> {
        std::env::set_var(
            "AUDITRAIL_TEST_HEC_TOKEN",
            "11111111-2222-3333-4444-555555555555",
        );
        let config: SplunkHecConfig = toml::from_str(toml)
            .map_err(|e| ExportError::misconfigured("config", e.to_string()))?;
        let context = SinkContext {
            name: "splunk".into(),
            retention: Duration::from_secs(60),
        };
        SplunkHecSink::new(&config, &context)
    }

    const TOKEN: &str = "token_env = \"AUDITRAIL_TEST_HEC_TOKEN\"\n";

    #[test]
    fn defaults_wait_for_acks_and_endpoints_come_from_the_base() {
        let on = sink(&format!("url = \"http://127.0.0.1:8088\"\n{TOKEN}")).unwrap();
        assert_eq!(
            on.acknowledgements(),
            Some(AckPolicy {
                timeout: Duration::from_secs(60),
                poll_interval: Duration::from_secs(1),
                max_pending: 64,
            })
        );
        assert_eq!(
            on.event_url.as_str(),
            "http://127.0.0.1:8088/services/collector/event"
        );
        assert_eq!(
            on.ack_url.as_str(),
            "http://127.0.0.1:8088/services/collector/ack"
        );
        let behind_a_proxy =
            sink(&format!("url = \"https://gw.internal/splunk/\"\n{TOKEN}")).unwrap();
        assert_eq!(
            behind_a_proxy.ack_url.as_str(),
            "https://gw.internal/splunk/services/collector/ack"
        );
        let off = sink(&format!(
            "url = \"http://127.0.0.1:8088\"\n{TOKEN}acknowledgements = false\n"
        ))
        .unwrap();
        assert_eq!(off.acknowledgements(), None);
    }

    #[test]
    fn bad_settings_are_named() {
        for (extra, expected) in [
            (
                "url = \"http://h:8088/services/collector/event\"\n",
                "names an endpoint",
            ),
            ("url = \"ftp://h\"\n", "not http"),
            (
                "url = \"http://h:8088\"\nack_timeout = \"1s\"\nack_poll_interval = \"1s\"\n",
                "below ack_timeout",
            ),
            (
                "url = \"http://h:8088\"\nmax_pending_acks = 0\n",
                "max_pending_acks",
            ),
            (
                "url = \"http://h:8088\"\nindex = \"\"\n",
                "index must not be empty",
            ),
            (
                "url = \"http://h:8088\"\nsourcetype = \" \"\n",
                "sourcetype must not be empty",
            ),
            (
                "url = \"http://h:8088\"\ntoken = \"inline\"\n",
                "unknown field",
            ),
        ] {
            let error = sink(&format!("{extra}{TOKEN}"))
                .err()
                .unwrap_or_else(|| panic!("{extra} accepted"));
            assert!(error.message.contains(expected), "{extra}: {error}");
        }
        let unset =
            sink("url = \"http://h:8088\"\ntoken_env = \"AUDITRAIL_TEST_UNSET_HEC_TOKEN\"\n")
                .err()
                .unwrap();
        assert!(
            unset
                .message
                .contains("AUDITRAIL_TEST_UNSET_HEC_TOKEN is not set"),
            "{unset}"
        );
    }

    #[test]
    fn the_channel_is_a_guid_of_its_own_per_sink() {
        let a = sink(&format!("url = \"http://h:8088\"\n{TOKEN}")).unwrap();
        let b = sink(&format!("url = \"http://h:8088\"\n{TOKEN}")).unwrap();
        assert_ne!(a.channel(), b.channel());
        let parts: Vec<&str> = a.channel().split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{}",
            a.channel()
        );
        assert!(parts[2].starts_with('4'), "version 4: {}", a.channel());
        assert!(format!("{:?}", a.authorization).contains("Sensitive"));
    }
}
