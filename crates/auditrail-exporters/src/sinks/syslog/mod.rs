//! The syslog sink: RFC 5424 messages over TCP (RFC 6587 octet-counting),
//! TLS (RFC 5425) or UDP (RFC 5426), carrying each event as RFC 5424
//! structured data (`rfc5424.rs`), as ArcSight CEF (`cef.rs`), as the
//! canonical JSON line (`crate::encoding::json`) or as an OCSF event
//! (`crate::encoding::ocsf`).
//!
//! Every event becomes exactly one message, and every message is one line:
//! whatever an event holds, control characters are escaped
//! (`escape.rs`). An event whose message would exceed `max_message_bytes`
//! is never truncated: it fails its batch as `Permanent`, so the delivery
//! loop isolates it and dead-letters it.
//!
//! Syslog has no acknowledgement, so delivery is at-least-once: a batch is
//! "delivered" once written and flushed to the socket, and one retried
//! after a broken connection may arrive twice. Every message carries the
//! event_id for deduplication. See `transport.rs` for what is done about
//! connections that die between batches, and docs/sinks.md.

mod cef;
pub mod escape;
mod rfc5424;
mod transport;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use bytesize::ByteSize;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::encoding::{LineFormat, OcsfMapping};
use crate::{ExportError, Exporter, SinkContext};
pub use rfc5424::Facility;
use transport::{Endpoint, Scheme, StreamTransport, Tls, TlsFiles, UdpTransport};

/// `type = "syslog"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `tcp://host:port`, `tls://host:port` or `udp://host:port`.
    pub url: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub facility: Facility,
    /// The largest message (without the TCP frame's length prefix) sent;
    /// a larger event is dead-lettered. Default: 2 KiB over UDP (RFC 5426's
    /// safe size), 64 KiB over TCP and TLS.
    pub max_message_bytes: Option<ByteSize>,
    /// The SD-ID of the structured data element of `format = "rfc5424"`.
    /// 32473 is the private enterprise number RFC 5424 reserves for
    /// examples; an organisation with its own can use `auditrail@<PEN>`.
    #[serde(default = "default_structured_data_id")]
    pub structured_data_id: String,
    /// `tls://` only: CA certificates (PEM) that sign the receiver's
    /// certificate; without it, the public web PKI roots.
    pub tls_ca_file: Option<PathBuf>,
    /// `tls://` only: a client certificate chain and key (PEM), for
    /// receivers that authenticate senders.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// `tls://` only: the name the receiver's certificate must carry,
    /// when it is not the url's host.
    pub tls_server_name: Option<String>,
}

fn default_structured_data_id() -> String {
    "auditrail@32473".into()
}

/// What each message carries (`format`): a name, or for OCSF with rules
/// of the sink's own, a table as for the other JSON sinks
/// ([`LineFormat`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Format {
    /// The canonical fields as RFC 5424 structured data, the body as MSG.
    #[default]
    Rfc5424,
    /// ArcSight CEF as MSG.
    Cef,
    /// The canonical event as one JSON object as MSG.
    Json,
    /// The event as one OCSF JSON object as MSG.
    Ocsf(Arc<OcsfMapping>),
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FormatVisitor;

        impl<'de> Visitor<'de> for FormatVisitor {
            type Value = Format;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"rfc5424\", \"cef\", \"json\", \"ocsf\", or a table [format.ocsf] of OCSF rules")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Format, E> {
                match name {
                    "rfc5424" => Ok(Format::Rfc5424),
                    "cef" => Ok(Format::Cef),
                    _ => match LineFormat::from_name(name) {
                        Some(LineFormat::Json) => Ok(Format::Json),
                        Some(LineFormat::Ocsf(mapping)) => Ok(Format::Ocsf(mapping)),
                        None => Err(E::custom(format!(
                            "unknown format {name:?}; expected \"rfc5424\", \"cef\", \"json\" or \"ocsf\""
                        ))),
                    },
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Format, A::Error> {
                LineFormat::ocsf_from_table(map).map(Format::Ocsf)
            }
        }

        deserializer.deserialize_any(FormatVisitor)
    }
}

const UDP_DEFAULT_MAX: u64 = 2048;
const STREAM_DEFAULT_MAX: u64 = 64 * 1024;
/// The largest payload of a UDP datagram over IPv4.
const UDP_ABSOLUTE_MAX: u64 = 65_507;
/// Far above what any receiver takes (rsyslog's default is 8 KiB).
const STREAM_ABSOLUTE_MAX: u64 = 16 * 1024 * 1024;

enum Transport {
    Stream(StreamTransport),
    Udp(UdpTransport),
}

/// Sends batches to one syslog receiver.
pub struct SyslogSink {
    transport: Transport,
    format: Format,
    facility: Facility,
    structured_data_id: String,
    max_message_bytes: usize,
}

impl SyslogSink {
    pub fn new(config: &SyslogConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let endpoint = Endpoint::parse(&config.url).map_err(|e| misconfigured(e.to_string()))?;
        if !rfc5424::is_valid_sd_id(&config.structured_data_id) {
            return Err(misconfigured(format!(
                "structured_data_id {:?} must be 1 to 32 printable ASCII characters without space, '=', ']' or '\"', e.g. \"auditrail@32473\"",
                config.structured_data_id
            )));
        }
        let tls_keys = [
            ("tls_ca_file", config.tls_ca_file.is_some()),
            ("tls_cert_file", config.tls_cert_file.is_some()),
            ("tls_key_file", config.tls_key_file.is_some()),
            ("tls_server_name", config.tls_server_name.is_some()),
        ];
        if endpoint.scheme != Scheme::Tls {
            if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set) {
                return Err(misconfigured(format!(
                    "{key} applies to tls:// urls only, and the url is {}",
                    config.url
                )));
            }
        }
        let (default_max, absolute_max) = match endpoint.scheme {
            Scheme::Udp => (UDP_DEFAULT_MAX, UDP_ABSOLUTE_MAX),
            Scheme::Tcp | Scheme::Tls => (STREAM_DEFAULT_MAX, STREAM_ABSOLUTE_MAX),
        };
        let max_message_bytes = config.max_message_bytes.map_or(default_max, |b| b.as_u64());
        // RFC 5424 §6.1: every receiver must take 480 octets.
        if !(480..=absolute_max).contains(&max_message_bytes) {
            return Err(misconfigured(format!(
                "max_message_bytes = {max_message_bytes} is out of range 480..={absolute_max} for {}://",
                endpoint.scheme.name()
            )));
        }
        let transport = match endpoint.scheme {
            Scheme::Udp => Transport::Udp(UdpTransport::new(endpoint, &context.name)),
            Scheme::Tcp => Transport::Stream(StreamTransport::new(endpoint, None, &context.name)),
            Scheme::Tls => {
                let files = TlsFiles {
                    ca: config.tls_ca_file.as_deref(),
                    cert: config.tls_cert_file.as_deref(),
                    key: config.tls_key_file.as_deref(),
                    server_name: config.tls_server_name.as_deref(),
                };
                let tls = Tls::new(&files, &endpoint.host)?;
                Transport::Stream(StreamTransport::new(endpoint, Some(tls), &context.name))
            }
        };
        Ok(SyslogSink {
            transport,
            format: config.format.clone(),
            facility: config.facility,
            structured_data_id: config.structured_data_id.clone(),
            max_message_bytes: max_message_bytes as usize,
        })
    }

    /// The whole syslog message for `event` in the configured format.
    pub fn message(&self, event: &AuditEvent) -> String {
        match &self.format {
            Format::Rfc5424 => rfc5424::message(event, self.facility, &self.structured_data_id),
            Format::Cef => self.with_header(event, &cef::message(event)),
            Format::Json => self.with_header(event, &crate::encoding::event_json(event)),
            Format::Ocsf(mapping) => {
                self.with_header(event, &crate::encoding::event_ocsf(event, mapping))
            }
        }
    }

    /// The header, no structured data (the MSG holds every field), `msg`.
    fn with_header(&self, event: &AuditEvent, msg: &str) -> String {
        let mut out = String::with_capacity(128 + msg.len());
        rfc5424::write_header(&mut out, self.facility, event);
        out.push_str(" - ");
        out.push_str(msg);
        out
    }

    /// Every message of the batch, or the error that blames the batch for
    /// holding one too large to send whole.
    fn messages(&self, events: &[AuditEvent]) -> Result<Vec<String>, ExportError> {
        events
            .iter()
            .map(|event| {
                let message = self.message(event);
                if message.len() > self.max_message_bytes {
                    return Err(ExportError::permanent(
                        "message_too_large",
                        format!(
                            "event seq {} ({}) is a {}-byte syslog message, over max_message_bytes = {}; it is not truncated",
                            event.seq,
                            event.event_id,
                            message.len(),
                            self.max_message_bytes
                        ),
                    ));
                }
                Ok(message)
            })
            .collect()
    }
}

#[async_trait]
impl Exporter for SyslogSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        match &self.transport {
            Transport::Stream(stream) => stream.connect_now().await,
            Transport::Udp(udp) => udp.open_now().await,
        }
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        // Encoded (and checked) before anything is sent, so an oversized
        // event fails the batch without sending half of it first.
        let messages = self.messages(events)?;
        match &self.transport {
            Transport::Stream(stream) => {
                let total: usize = messages.iter().map(|m| m.len() + 8).sum();
                let mut frames = Vec::with_capacity(total);
                for message in &messages {
                    // RFC 6587 octet-counting: `MSG-LEN SP SYSLOG-MSG`.
                    frames.extend_from_slice(message.len().to_string().as_bytes());
                    frames.push(b' ');
                    frames.extend_from_slice(message.as_bytes());
                }
                stream.send(&frames).await
            }
            Transport::Udp(udp) => udp.send(&messages).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(url: &str) -> SyslogConfig {
        toml::from_str(&format!("url = {url:?}")).expect("config")
    }

    fn context() -> SinkContext {
        SinkContext {
            name: "siem".into(),
            retention: Duration::from_secs(3600),
        }
    }

    #[test]
    fn config_defaults_and_checks() {
        let c = config("tcp://127.0.0.1:514");
        assert_eq!(
            (c.format.clone(), c.facility),
            (Format::Rfc5424, Facility::Authpriv)
        );
        assert_eq!(c.structured_data_id, "auditrail@32473");
        let sink = SyslogSink::new(&config("udp://127.0.0.1:514"), &context()).unwrap();
        assert_eq!(sink.max_message_bytes, 2048);
        let sink = SyslogSink::new(&c, &context()).unwrap();
        assert_eq!(sink.max_message_bytes, 65536);

        let error = |c: &SyslogConfig| SyslogSink::new(c, &context()).err().expect("an error");
        let mut tls_on_tcp = c.clone();
        tls_on_tcp.tls_ca_file = Some("ca.pem".into());
        assert!(error(&tls_on_tcp)
            .message
            .contains("tls_ca_file applies to tls://"));
        let mut bad_id = c.clone();
        bad_id.structured_data_id = "a b".into();
        assert!(error(&bad_id).message.contains("structured_data_id"));
        let mut tiny = c.clone();
        tiny.max_message_bytes = Some(ByteSize::b(100));
        assert!(error(&tiny).message.contains("max_message_bytes"));
        let mut missing_ca = config("tls://localhost:6514");
        missing_ca.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let e = error(&missing_ca);
        assert_eq!(e.class, crate::ErrorClass::Misconfigured);
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        let mut cert_without_key = config("tls://localhost:6514");
        cert_without_key.tls_cert_file = Some("client.pem".into());
        assert!(error(&cert_without_key).message.contains("go together"));
        assert!(toml::from_str::<SyslogConfig>("url = \"tcp://h:1\"\nformat = \"xml\"").is_err());
        for (format, want) in [
            ("rfc5424", Format::Rfc5424),
            ("cef", Format::Cef),
            ("json", Format::Json),
        ] {
            let c: SyslogConfig =
                toml::from_str(&format!("url = \"tcp://h:1\"\nformat = {format:?}")).unwrap();
            assert_eq!(c.format, want);
        }
        let c: SyslogConfig = toml::from_str("url = \"tcp://h:1\"\n[format.ocsf.events]\n\"a.b\" = { class = \"api_activity\", activity = \"read\" }\n").unwrap();
        assert!(matches!(c.format, Format::Ocsf(_)), "{:?}", c.format);
        assert!(toml::from_str::<SyslogConfig>("url = \"tcp://h:1\"\nport = 1").is_err());
    }

    #[test]
    fn an_event_over_the_cap_fails_its_batch_as_permanent() {
        let mut c = config("udp://127.0.0.1:514");
        c.format = Format::Json;
        let sink = SyslogSink::new(&c, &context()).unwrap();
        let small = AuditEvent {
            seq: 1,
            body: "ok".into(),
            ..AuditEvent::default()
        };
        let big = AuditEvent {
            seq: 2,
            event_id: "big".into(),
            body: "x".repeat(3000),
            ..AuditEvent::default()
        };
        assert!(sink.messages(std::slice::from_ref(&small)).is_ok());
        let error = sink.messages(&[small, big]).unwrap_err();
        assert_eq!(error.class, crate::ErrorClass::Permanent);
        assert_eq!(error.kind, "message_too_large");
        assert!(error.message.contains("seq 2 (big)"), "{error}");
    }

    #[test]
    fn cef_and_json_have_the_header_and_no_structured_data() {
        let event = AuditEvent {
            node: "n1".into(),
            service_name: "svc".into(),
            event_name: "user.login".into(),
            body: "line one\nline two".into(),
            ..AuditEvent::default()
        };
        let mut c = config("tcp://127.0.0.1:514");
        c.format = Format::Cef;
        let cef = SyslogSink::new(&c, &context()).unwrap().message(&event);
        assert!(
            cef.starts_with(
                "<86>1 1970-01-01T00:00:00.000000Z n1 svc - user.login - CEF:0|auditrail|"
            ),
            "{cef}"
        );
        assert!(cef.ends_with("msg=line one\\nline two"), "{cef}");
        c.format = Format::Json;
        let json = SyslogSink::new(&c, &context()).unwrap().message(&event);
        let (header, body) = json.split_at(json.find(" - {").unwrap());
        assert_eq!(
            header,
            "<86>1 1970-01-01T00:00:00.000000Z n1 svc - user.login"
        );
        let value: serde_json::Value = serde_json::from_str(&body[3..]).unwrap();
        assert_eq!(value["body"], "line one\nline two");
        assert!(!json.contains('\n'));
        c.format = Format::Ocsf(Arc::default());
        let ocsf = SyslogSink::new(&c, &context()).unwrap().message(&event);
        let (header, body) = ocsf.split_at(ocsf.find(" - {").unwrap());
        assert_eq!(
            header,
            "<86>1 1970-01-01T00:00:00.000000Z n1 svc - user.login"
        );
        let value: serde_json::Value = serde_json::from_str(&body[3..]).unwrap();
        assert_eq!(
            (value["class_uid"].as_u64(), value["activity_id"].as_u64()),
            (Some(3002), Some(1))
        );
        assert_eq!(value["message"], "line one\nline two");
        assert!(!ocsf.contains('\n'));
    }
}
