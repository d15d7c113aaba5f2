//! The OTLP forward sink: events to another OTLP endpoint (a Collector,
//! Loki, a vendor, or another auditrail) over gRPC or HTTP/protobuf.
//!
//! Events go back to OTLP log records with their trace context and every
//! attribute (see `auditrail_model::to_otlp`), and the event id as
//! `log.record.uid`, so a downstream auditrail stores each event once
//! however often it is sent. Answers are read the way the OTLP spec says
//! (`answers.rs`): the retryable codes are retried, anything else is a
//! permanent error that the delivery loop narrows down to the records to
//! blame, and `partial_success` with rejected records is such an error too.

mod answers;

use std::time::Duration;

use async_trait::async_trait;
use auditrail_model::to_otlp::events_to_request;
use auditrail_model::AuditEvent;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};

use crate::{ExportError, Exporter, SinkContext};

/// `type = "otlp"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// gRPC: `http://host:4317`; HTTP: `http://host:4318` (the sink adds
    /// `/v1/logs` unless the URL already ends with it).
    pub url: String,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

enum Transport {
    Grpc(LogsServiceClient<Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

/// Forwards batches as OTLP export requests.
pub struct OtlpSink {
    transport: Transport,
    /// `Bearer <token>`, sent with every request when set (`auditrail
    /// import` writing to a receiver with `[[receiver.tokens]]`).
    authorization: Option<String>,
}

/// Above the delivery loop's default batch (5,000 events of a few KiB):
/// the receiver's own limit is what counts, and over it the loop splits.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

impl OtlpSink {
    pub fn new(config: &OtlpConfig, _context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let transport = match config.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(config.url.clone())
                    .map_err(|e| misconfigured(format!("url {:?}: {e}", config.url)))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(10));
                // Connects on first use and again after a failure.
                let channel = endpoint.connect_lazy();
                Transport::Grpc(
                    LogsServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
                )
            }
            Protocol::Http => {
                let url = if config.url.trim_end_matches('/').ends_with("/v1/logs") {
                    config.url.clone()
                } else {
                    format!("{}/v1/logs", config.url.trim_end_matches('/'))
                };
                reqwest::Url::parse(&url)
                    .map_err(|e| misconfigured(format!("url {url:?}: {e}")))?;
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| misconfigured(format!("http client: {e}")))?;
                Transport::Http { client, url }
            }
        };
        Ok(OtlpSink {
            transport,
            authorization: None,
        })
    }

    /// Sends `token` as a bearer token with every request (gRPC metadata
    /// `authorization`, HTTP `Authorization`), as an auditrail receiver
    /// with writer tokens wants.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, ExportError> {
        let value = format!("Bearer {token}");
        // Checked here, once, so a token with a newline is a clear error
        // rather than a failure of every request.
        tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str())
            .map_err(|_| {
                ExportError::misconfigured("auth", "the token is not printable ASCII".to_owned())
            })?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// Sends one request holding `events` (grouped as
    /// [`events_to_request`] groups them) and returns the receiver's
    /// answer as it is, `partial_success` included: for a caller that
    /// reports each rejected record itself rather than dead-lettering it.
    pub async fn send(
        &self,
        events: &[AuditEvent],
    ) -> Result<ExportLogsServiceResponse, ExportError> {
        let request = events_to_request(events);
        match &self.transport {
            Transport::Grpc(client) => {
                let mut client = client.clone();
                let mut request = tonic::Request::new(request);
                if let Some(value) = &self.authorization {
                    let value = value.parse().expect("checked in with_bearer_token");
                    request.metadata_mut().insert("authorization", value);
                }
                client
                    .export(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| answers::grpc_error(&status))
            }
            Transport::Http { client, url } => {
                let mut post = client
                    .post(url)
                    .header("content-type", "application/x-protobuf");
                if let Some(value) = &self.authorization {
                    post = post.header(reqwest::header::AUTHORIZATION, value);
                }
                let response = post
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| ExportError::retryable("connection", format!("{url}: {e}")))?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| ExportError::retryable("connection", format!("{url}: {e}")))?;
                if status.is_success() {
                    ExportLogsServiceResponse::decode(body.as_ref()).map_err(|e| {
                        ExportError::permanent(
                            "server",
                            format!("{url} answered {status} with a body that is not an ExportLogsServiceResponse: {e}"),
                        )
                    })
                } else {
                    Err(answers::http_error(
                        status.as_u16(),
                        retry_after.as_deref(),
                        &body,
                    ))
                }
            }
        }
    }
}

#[async_trait]
impl Exporter for OtlpSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        // An empty export asks nothing of the receiver but checks the
        // endpoint, its protocol and its auth.
        self.send(&[]).await.map(|_| ())
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        let response = self.send(events).await?;
        answers::partial_success(&response, events.len())
    }
}
