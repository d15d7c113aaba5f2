//! The webhook sink: NDJSON batches POSTed to the user's own service.
//!
//! Each request carries one line per event in the sink's `format`, and is
//! signed so the receiver can tell it came from this auditrail and reject
//! replays: `X-Auditrail-Timestamp: <unix seconds>` and
//! `X-Auditrail-Signature: sha256=<hex HMAC-SHA256(secret, timestamp "."
//! body)>`. `X-Auditrail-Batch: <node>:<first seq>-<last seq>` names the
//! batch, so a receiver can drop a resend.
//!
//! Delivery is at least once: a timeout after the receiver stored a batch
//! means that batch is sent again, with the same batch name and event ids.
//! The answer decides what the delivery loop does (see [`classify`]).

mod response;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use sha2::Sha256;

use crate::encoding::LineFormat;
pub use crate::retry::parse_retry_after;
use crate::{ExportError, Exporter, SinkContext};
pub use response::classify;

pub const TIMESTAMP_HEADER: &str = "x-auditrail-timestamp";
pub const SIGNATURE_HEADER: &str = "x-auditrail-signature";
pub const BATCH_HEADER: &str = "x-auditrail-batch";

/// `type = "webhook"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where batches are POSTed (`http://` or `https://`).
    pub url: String,
    /// The environment variable that holds the HMAC key; a key is never
    /// written in the config itself.
    pub secret_env: String,
    /// Extra request headers (an `Authorization` the receiver wants, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A request with no complete answer by then is sent again.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub format: LineFormat,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// POSTs signed NDJSON batches to one URL.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    headers: HeaderMap,
    format: LineFormat,
}

impl WebhookSink {
    pub fn new(config: &WebhookConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let url =
            reqwest::Url::parse(&config.url).map_err(|e| misconfigured(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(misconfigured(format!(
                "url: {:?} is not http:// or https://",
                config.url
            )));
        }
        let secret = std::env::var(&config.secret_env).map_err(|_| {
            misconfigured(format!(
                "secret_env: environment variable {} is not set",
                config.secret_env
            ))
        })?;
        if secret.is_empty() {
            return Err(misconfigured(format!(
                "secret_env: environment variable {} is empty",
                config.secret_env
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| misconfigured(format!("headers.{name}: {e}")))?;
            if header == CONTENT_TYPE || header.as_str().starts_with("x-auditrail-") {
                return Err(misconfigured(format!(
                    "headers.{name}: auditrail sets this header itself"
                )));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|e| misconfigured(format!("headers.{name}: {e}")))?;
            headers.insert(header, value);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("auditrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| misconfigured(format!("HTTP client: {e}")))?;
        let _ = context;
        Ok(WebhookSink {
            client,
            url,
            secret: secret.into_bytes(),
            headers,
            format: config.format.clone(),
        })
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp`, `.` and `body`: what the
/// receiver computes again to check [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl Exporter for WebhookSink {
    /// A webhook has nothing to check or create ahead of time: the first
    /// batch tells whether the receiver is there.
    async fn prepare(&self) -> Result<(), ExportError> {
        Ok(())
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let mut body = Vec::with_capacity(events.len() * 1024);
        for event in events {
            self.format.write_line(event, &mut body);
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signed = signature(&self.secret, &timestamp, &body);
        let batch = format!("{}:{}-{}", first.node, first.seq, last.seq);
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signed)
            .header(BATCH_HEADER, batch)
            .body(body)
            .send()
            .await
            .map_err(response::transport)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The body explains the refusal; a failed read of it explains nothing.
        let text = response.text().await.unwrap_or_default();
        Err(classify(status, retry_after, &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(key, b"1700000000." + body, sha256).
        assert_eq!(
            signature(b"whsec_test", "1700000000", b"{\"seq\":1}\n{\"seq\":2}\n"),
            "sha256=ae1f7ca1612f395718ead949e173bbee7ea43fda98586b177b2f05e274039870"
        );
    }

    #[test]
    fn the_mac_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2; the "." the signature adds is part of the data here.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn config(toml: &str) -> Result<WebhookSink, ExportError> {
        let config: WebhookConfig = toml::from_str(toml).unwrap();
        let context = SinkContext {
            name: "hook".into(),
            retention: Duration::from_secs(60),
        };
        WebhookSink::new(&config, &context)
    }

    #[test]
    fn the_secret_comes_from_the_environment_only() {
        let error =
            config("url = \"http://127.0.0.1:9/\"\nsecret_env = \"AUDITRAIL_TEST_UNSET_SECRET\"")
                .err()
                .unwrap();
        assert!(
            error
                .message
                .contains("AUDITRAIL_TEST_UNSET_SECRET is not set"),
            "{error}"
        );
        let inline: Result<WebhookConfig, _> = toml::from_str(
            "url = \"http://127.0.0.1:9/\"\nsecret = \"hunter2\"\nsecret_env = \"X\"",
        );
        assert!(inline.is_err(), "an inline secret is an unknown key");
    }

    #[test]
    fn own_headers_cannot_be_overridden() {
        std::env::set_var("AUDITRAIL_TEST_WEBHOOK_SECRET", "s");
        let error = config(
            "url = \"http://127.0.0.1:9/\"\nsecret_env = \"AUDITRAIL_TEST_WEBHOOK_SECRET\"\n[headers]\nX-Auditrail-Signature = \"forged\"",
        )
        .err()
        .unwrap();
        assert!(error.message.contains("sets this header itself"), "{error}");
        assert!(config(
            "url = \"http://127.0.0.1:9/\"\nsecret_env = \"AUDITRAIL_TEST_WEBHOOK_SECRET\"\n[headers]\nAuthorization = \"Bearer t\""
        )
        .is_ok());
    }
}
