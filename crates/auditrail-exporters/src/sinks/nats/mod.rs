//! The NATS JetStream sink (`async-nats`).
//!
//! Each event is published as one message (in the sink's `format`, `json`
//! by default) to a subject templated from the event, with the event id
//! as `Nats-Msg-Id`, and counts as delivered only when JetStream's publish
//! ack says the stream stored it. The server drops a resend with the same
//! id inside the stream's duplicate window (2 minutes by default), which
//! is far longer than what a crash or a retry redelivers (the cursor is
//! flushed every second), so delivery is exactly-once within the window
//! and at-least-once beyond it.

mod subject;

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{CreateStreamErrorKind, PublishError, PublishErrorKind},
    ErrorCode,
};
use async_trait::async_trait;
use auditrail_model::AuditEvent;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::encoding::LineFormat;
use crate::{ExportError, Exporter, SinkContext};
pub use subject::SubjectTemplate;

/// `type = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
    /// The subject of each event: text with `{tenant}`, `{service_name}`,
    /// `{event_name}` and `{node}`, each replaced by the event's value with
    /// `.`, `*`, `>` and whitespace made `_` (so one value is one token).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The JetStream stream that must capture the subjects. Created when
    /// missing (subjects: the template with a `*` for each placeholder).
    pub stream: Option<String>,
    /// The stream's duplicate window when auditrail creates it.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// A file with NATS credentials (`.creds`), for servers that need them.
    pub credentials_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub format: LineFormat,
}

fn default_subject() -> String {
    "audit.{tenant}.{service_name}".into()
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

struct Connection {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

/// Publishes events to JetStream and waits for the stream's acks.
pub struct NatsSink {
    config: NatsConfig,
    subject: SubjectTemplate,
    /// Connected by the first `prepare`; the client reconnects by itself.
    connection: OnceCell<Connection>,
}

impl NatsSink {
    pub fn new(config: &NatsConfig, _context: &SinkContext) -> Result<Self, ExportError> {
        let subject = SubjectTemplate::parse(&config.subject)
            .map_err(|e| ExportError::misconfigured("config", format!("subject: {e}")))?;
        Ok(NatsSink {
            config: config.clone(),
            subject,
            connection: OnceCell::new(),
        })
    }

    async fn connect(&self) -> Result<Connection, ExportError> {
        let options = match &self.config.credentials_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| {
                    ExportError::misconfigured(
                        "auth",
                        format!("credentials_file {}: {e}", path.display()),
                    )
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        let client = options
            // Publishes wait for the reconnect instead of failing at once.
            .retry_on_initial_connect()
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| {
                ExportError::retryable("connection", format!("{}: {e}", self.config.url))
            })?;
        // The client's own cap on acks in flight (5,000 by default) is
        // shared by every batch: batches in flight that each hold part of
        // it while waiting for more deadlock until their timeout. Each
        // export bounds its own acks instead (ACK_WINDOW).
        let jetstream = jetstream::context::ContextBuilder::new()
            .max_ack_inflight(1 << 20)
            .build(client.clone());
        Ok(Connection { jetstream, client })
    }

    async fn connection(&self) -> Result<&Connection, ExportError> {
        self.connection.get_or_try_init(|| self.connect()).await
    }

    /// Creates the configured stream when it is missing.
    async fn ensure_stream(&self, js: &jetstream::Context, name: &str) -> Result<(), ExportError> {
        let subjects = vec![self.subject.wildcard()];
        js.get_or_create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: subjects.clone(),
            duplicate_window: self.config.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let message = format!("stream {name:?} (subjects {subjects:?}): {e}");
            match e.kind() {
                // The server is down or starting: try again later.
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::Response => {
                    ExportError::retryable("connection", message)
                }
                // No JetStream on the server, a bad name, or a stream that
                // exists with other settings: the config must change.
                _ => ExportError::misconfigured("stream", message),
            }
        })?;
        Ok(())
    }
}

#[async_trait]
impl Exporter for NatsSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        let connection = self.connection().await?;
        if let Some(stream) = &self.config.stream {
            self.ensure_stream(&connection.jetstream, stream).await?;
        }
        Ok(())
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        let connection = self.connection().await?;
        // The server's limit on one message (1 MiB by default), less room
        // for the headers: an event over it can never be published.
        let max_payload = connection.client.max_payload().saturating_sub(HEADER_ROOM);
        // Send a window of messages, then wait for their acks: one round
        // trip per window, not per event, and a bounded number of acks
        // pending per batch.
        let mut payload = Vec::new();
        for window in events.chunks(ACK_WINDOW) {
            let mut acks = Vec::with_capacity(window.len());
            for event in window {
                payload.clear();
                self.config.format.write(event, &mut payload);
                if payload.len() > max_payload {
                    return Err(ExportError::permanent(
                        "data",
                        format!(
                            "event {} takes {} bytes, over the server's max_payload ({} bytes with headers)",
                            event.event_id,
                            payload.len(),
                            max_payload + HEADER_ROOM
                        ),
                    ));
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
                let subject = self.subject.render(event);
                let ack = connection
                    .jetstream
                    .publish_with_headers(subject, headers, payload.clone().into())
                    .await
                    .map_err(|e| classify(&e, event))?;
                acks.push((ack, event));
            }
            for (ack, event) in acks {
                ack.await.map_err(|e| classify(&e, event))?;
            }
        }
        Ok(())
    }
}

/// Messages published before the sink waits for their acks.
const ACK_WINDOW: usize = 1024;

/// Bytes kept for the message's headers (`Nats-Msg-Id` and framing).
const HEADER_ROOM: usize = 512;

/// What a failed publish or ack means for delivery.
fn classify(error: &PublishError, event: &AuditEvent) -> ExportError {
    let message = format!("event {}: {error}", event.event_id);
    // The stream's own answer, when the server refused the message.
    let refusal = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .map(async_nats::jetstream::Error::error_code);
    if refusal == Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) {
        // The stream's max_msg_size (smaller than the server's
        // max_payload): this event will never fit, however often it is
        // sent.
        return ExportError::permanent(
            "data",
            format!("{message} (over the stream's max_msg_size)"),
        );
    }
    match error.kind() {
        // No stream captures the subject: the config (or the stream) is wrong.
        PublishErrorKind::StreamNotFound => ExportError::misconfigured(
            "stream",
            format!("no JetStream stream captures this subject (set `stream` to have one created): {message}"),
        ),
        PublishErrorKind::TimedOut => ExportError::retryable("timeout", message),
        _ => ExportError::retryable("server", message),
    }
}
