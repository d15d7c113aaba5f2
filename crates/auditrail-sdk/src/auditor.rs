//! The connection to auditrail: both paths, their configuration, their
//! shutdown.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::logs::{Logger as _, LoggerProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{LogExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfig, BatchLogProcessor, LogBatch, SdkLogger, SdkLoggerProvider,
};
use opentelemetry_sdk::Resource;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{BuildError, DurableError, Event, FlushError};

/// auditrail's OTLP/gRPC address when none is given (`auditrail serve`'s
/// embedded default).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4317";

/// How long [`Event::emit_durable`] waits for auditrail by default.
pub const DEFAULT_DURABLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one export of the batched path may take by default.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The instrumentation scope of every event: auditrail's `scope_name`.
pub const SCOPE_NAME: &str = "auditrail-sdk";

/// Sends audit events to one auditrail. Cheap to clone (one shared
/// connection pair); build it once per process with [`Auditor::builder`],
/// inside a Tokio runtime, and call [`Auditor::shutdown`] before exiting so
/// that queued events are sent. (Dropping the last clone without it flushes
/// too, but blocks the dropping thread for up to 5 seconds.)
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    provider: SdkLoggerProvider,
    logger: SdkLogger,
    scope: InstrumentationScope,
    resource: ResourceAttributesWithSchema,
    /// The durable path's own connection: a backlog of batched exports
    /// never queues ahead of (or shares HTTP/2 flow control with) an event a
    /// request is waiting on.
    durable: LogsServiceClient<Channel>,
    durable_timeout: Duration,
    metadata: MetadataMap,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("endpoint", &self.inner.endpoint)
            .field("durable_timeout", &self.inner.durable_timeout)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// Configuration, starting from the defaults: [`DEFAULT_ENDPOINT`], no
    /// token, service name `unknown_service`, [`DEFAULT_DURABLE_TIMEOUT`].
    pub fn builder() -> AuditorBuilder {
        AuditorBuilder::default()
    }

    /// A new event named `name` (auditrail's `event_name`, e.g.
    /// `image.generate`), recorded in the current span.
    pub fn event(&self, name: impl Into<Cow<'static, str>>) -> Event {
        Event::new(Some(self.clone()), name.into())
    }

    /// The OTLP/gRPC endpoint events go to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Sends every queued event of the batched path now, and waits for the
    /// export to end (successfully or not).
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.on_batch_provider(SdkLoggerProvider::force_flush).await
    }

    /// Sends what is queued and stops the batched path; later
    /// [`Event::emit`]s are dropped. [`Event::emit_durable`] still works.
    pub async fn shutdown(&self) -> Result<(), FlushError> {
        self.on_batch_provider(SdkLoggerProvider::shutdown).await
    }

    /// Runs `call` on the batched path's provider on a blocking thread: the
    /// SDK's flush and shutdown block their caller until the batch thread is
    /// done, which must not stall a runtime worker.
    async fn on_batch_provider(
        &self,
        call: fn(&SdkLoggerProvider) -> OTelSdkResult,
    ) -> Result<(), FlushError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || call(&inner.provider))
            .await
            .map_err(|e| FlushError(e.to_string()))?
            .map_err(|e| FlushError(e.to_string()))
    }

    pub(crate) fn emit_batched(&self, event: &Event) {
        let mut record = self.inner.logger.create_log_record();
        event.fill(&mut record);
        self.inner.logger.emit(record);
    }

    /// The OTLP request that carries `event` alone, encoded by the same
    /// transform as the batched exporter's.
    pub(crate) fn request_for(&self, event: &Event) -> ExportLogsServiceRequest {
        let mut record = self.inner.logger.create_log_record();
        event.fill(&mut record);
        let records = [(&record, &self.inner.scope)];
        let batch = LogBatch::new(&records);
        ExportLogsServiceRequest {
            resource_logs: group_logs_by_resource_and_scope(&batch, &self.inner.resource),
        }
    }

    pub(crate) async fn export_durable(&self, event: &Event) -> Result<(), DurableError> {
        let inner = &self.inner;
        let timeout = inner.durable_timeout;
        let mut request = tonic::Request::new(self.request_for(event));
        *request.metadata_mut() = inner.metadata.clone();
        // auditrail then gives up on the call too, instead of storing an
        // event whose sender has stopped waiting for it.
        request.set_timeout(timeout);
        let mut client = inner.durable.clone();
        let answer = match tokio::time::timeout(timeout, client.export(request)).await {
            Err(_elapsed) => {
                return Err(DurableError::Timeout {
                    endpoint: inner.endpoint.clone(),
                    timeout,
                })
            }
            Ok(answer) => answer,
        };
        match answer {
            Ok(response) => accepted(response.into_inner()),
            Err(status) => Err(DurableError::from_status(&status, &inner.endpoint, timeout)),
        }
    }
}

/// `Ok` when auditrail took the one record of the request. An answer that
/// names rejected records is a refusal of this record: auditrail stored
/// nothing of it.
fn accepted(response: ExportLogsServiceResponse) -> Result<(), DurableError> {
    match response.partial_success {
        Some(partial) if partial.rejected_log_records > 0 => Err(DurableError::Rejected {
            reason: partial.error_message,
        }),
        _ => Ok(()),
    }
}

/// The configuration of an [`Auditor`].
#[derive(Debug)]
pub struct AuditorBuilder {
    endpoint: String,
    token: Option<String>,
    ca_certificate: Option<Vec<u8>>,
    service_name: Option<String>,
    resource_attributes: Vec<KeyValue>,
    durable_timeout: Duration,
    export_timeout: Duration,
    batch: Option<BatchConfig>,
}

impl Default for AuditorBuilder {
    fn default() -> Self {
        AuditorBuilder {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            token: None,
            ca_certificate: None,
            service_name: None,
            resource_attributes: Vec::new(),
            durable_timeout: DEFAULT_DURABLE_TIMEOUT,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            batch: None,
        }
    }
}

impl AuditorBuilder {
    /// auditrail's OTLP/gRPC address, e.g. `http://audit.internal:4317`, or
    /// `https://…` when its receiver has `[receiver.tls]`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// A writer token of auditrail (`[[receiver.tokens]]`), sent as
    /// `authorization: Bearer <token>`. It also decides the events'
    /// `tenant`: an event cannot name its own.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The CA certificate (PEM) that signed auditrail's certificate, for an
    /// `https` endpoint with a private CA; without it, the Mozilla roots
    /// (webpki-roots) are trusted.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate = Some(pem.into());
        self
    }

    /// `service.name` of the resource: auditrail's `service_name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// A further resource attribute (e.g. `service.version`,
    /// `deployment.environment.name`): in every event's
    /// `resource_attributes`.
    pub fn resource_attribute(mut self, attribute: KeyValue) -> Self {
        self.resource_attributes.push(attribute);
        self
    }

    /// How long [`Event::emit_durable`] waits for auditrail's answer, the
    /// connection included (default 5s).
    pub fn durable_timeout(mut self, timeout: Duration) -> Self {
        self.durable_timeout = timeout;
        self
    }

    /// How long one export of the batched path may take, retries included
    /// (default 10s).
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// The batched path's queue and batch sizes and delay. By default
    /// OpenTelemetry's, which the `OTEL_BLRP_*` environment variables
    /// change: a queue of 2,048 events, batches of up to 512, sent every
    /// second.
    pub fn batch_config(mut self, config: BatchConfig) -> Self {
        self.batch = Some(config);
        self
    }

    /// Connects (lazily: the first event opens the connections, and a lost
    /// connection is opened again) and starts the batched path's thread.
    pub fn build(self) -> Result<Auditor, BuildError> {
        tokio::runtime::Handle::try_current().map_err(|e| BuildError::NoRuntime(e.to_string()))?;
        let endpoint = self.channel_endpoint()?;
        let metadata = self.metadata()?;

        let mut resource =
            Resource::builder().with_attributes(self.resource_attributes.iter().cloned());
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource = resource.build();

        let exporter = LogExporter::builder()
            .with_tonic()
            .with_channel(
                endpoint
                    .clone()
                    .connect_timeout(self.export_timeout)
                    .timeout(self.export_timeout)
                    .connect_lazy(),
            )
            .with_metadata(metadata.clone())
            .with_timeout(self.export_timeout)
            .build()
            .map_err(|e| BuildError::Exporter(e.to_string()))?;
        let processor = BatchLogProcessor::builder(exporter)
            .with_batch_config(self.batch.unwrap_or_default())
            .build();
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource.clone())
            .with_log_processor(processor)
            .build();
        let scope = InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let logger = provider.logger_with_scope(scope.clone());

        Ok(Auditor {
            inner: Arc::new(Inner {
                endpoint: self.endpoint,
                provider,
                logger,
                scope,
                resource: ResourceAttributesWithSchema::from(&resource),
                // No request timeout here: emit_durable bounds the whole
                // call, so its timeout is the one the caller sees. The
                // connect timeout, longer, only ends an attempt that would
                // otherwise hang for the kernel's TCP timeout, so that a
                // later call connects afresh.
                durable: LogsServiceClient::new(
                    endpoint
                        .connect_timeout(self.durable_timeout * 2)
                        .connect_lazy(),
                ),
                durable_timeout: self.durable_timeout,
                metadata,
            }),
        })
    }

    fn channel_endpoint(&self) -> Result<Endpoint, BuildError> {
        let invalid = |message: String| BuildError::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            message,
        };
        let endpoint =
            Endpoint::from_shared(self.endpoint.clone()).map_err(|e| invalid(e.to_string()))?;
        match endpoint.uri().scheme_str() {
            Some("http") => Ok(endpoint),
            Some("https") => {
                let tls = match &self.ca_certificate {
                    Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                    None => ClientTlsConfig::new().with_webpki_roots(),
                };
                endpoint.tls_config(tls).map_err(|e| BuildError::Tls {
                    endpoint: self.endpoint.clone(),
                    message: e.to_string(),
                })
            }
            _ => Err(invalid(
                "the endpoint must start with http:// or https://".into(),
            )),
        }
    }

    fn metadata(&self) -> Result<MetadataMap, BuildError> {
        let mut metadata = MetadataMap::new();
        if let Some(token) = &self.token {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| BuildError::InvalidToken(e.to_string()))?;
            metadata.insert("authorization", value);
        }
        Ok(metadata)
    }
}
