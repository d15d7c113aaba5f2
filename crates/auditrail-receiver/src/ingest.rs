//! The part of a receiver that does not depend on the transport.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auditrail_model::{map_request, ReceiveContext};
use auditrail_spool::{Spool, SpoolError};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};

/// Limits and identity shared by both transports.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Largest request accepted, after decompression.
    pub max_request_bytes: usize,
    /// The tenant recorded for every event (until auth assigns one per token).
    pub tenant: String,
    /// How long a client is told to wait when the spool is full.
    pub retry_after: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_request_bytes: 16 << 20,
            tenant: "default".into(),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Which receiver a request came through, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http_protobuf",
            Transport::HttpJson => "http_json",
        }
    }
}

/// Why a whole request was not accepted. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}; retry later")]
    QuotaExceeded(SpoolError),
    #[error("events could not be stored durably: {0}")]
    Unavailable(SpoolError),
}

/// Maps, stores and acknowledges export requests.
pub struct Ingest {
    spool: Arc<Spool>,
    config: ReceiverConfig,
}

impl Ingest {
    pub fn new(spool: Arc<Spool>, config: ReceiverConfig) -> Arc<Ingest> {
        Arc::new(Ingest { spool, config })
    }

    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    /// Stores the acceptable records of `request` and says which were not.
    /// Returns only after every accepted record is fsync'd in the spool.
    pub async fn export(
        &self,
        request: ExportLogsServiceRequest,
        transport: Transport,
        wire_bytes: usize,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        let label = transport.label();
        metrics::histogram!("auditrail_request_bytes", "transport" => label)
            .record(wire_bytes as f64);
        // Refuse before mapping, so a full spool costs no CPU per record.
        if let Err(e) = self.spool.check_quota() {
            return Err(refused_for_quota(e));
        }
        let ctx = ReceiveContext {
            tenant: self.config.tenant.clone(),
            received_time_unix_nano: now_unix_nano(),
        };
        let mapped = map_request(&request, &ctx);
        drop(request);
        let received = mapped.events.len() + mapped.rejected.len();
        metrics::counter!("auditrail_received_events_total", "transport" => label)
            .increment(received as u64);
        for rejected in &mapped.rejected {
            metrics::counter!("auditrail_rejected_events_total", "reason" => rejected.rejected.reason)
                .increment(1);
        }

        let started = std::time::Instant::now();
        match self.spool.append(mapped.events).await {
            Ok(_) => {}
            Err(e @ SpoolError::QuotaExceeded { .. }) => return Err(refused_for_quota(e)),
            Err(e) => {
                metrics::counter!("auditrail_refused_requests_total", "reason" => "storage")
                    .increment(1);
                tracing::error!(error = %e, "request refused: events could not be stored");
                return Err(IngestError::Unavailable(e));
            }
        }
        metrics::histogram!("auditrail_append_latency_seconds").record(started.elapsed());

        let partial_success = (!mapped.rejected.is_empty()).then(|| {
            let mut message = format!("{} log records rejected: ", mapped.rejected.len());
            // Name every rejected record, but keep the message readable when a
            // sender gets something systematically wrong.
            const NAMED: usize = 20;
            let named: Vec<String> = mapped
                .rejected
                .iter()
                .take(NAMED)
                .map(|r| r.describe())
                .collect();
            message.push_str(&named.join("; "));
            if mapped.rejected.len() > NAMED {
                message.push_str(&format!("; and {} more", mapped.rejected.len() - NAMED));
            }
            tracing::warn!(transport = label, %message, "records rejected");
            ExportLogsPartialSuccess {
                rejected_log_records: mapped.rejected.len() as i64,
                error_message: message,
            }
        });
        Ok(ExportLogsServiceResponse { partial_success })
    }
}

fn refused_for_quota(e: SpoolError) -> IngestError {
    metrics::counter!("auditrail_refused_requests_total", "reason" => "quota").increment(1);
    tracing::warn!(error = %e, "request refused: spool disk quota reached");
    IngestError::QuotaExceeded(e)
}

/// What both transports answer to traces and metrics: a plain refusal
/// rather than a bare 404 / UNIMPLEMENTED, for senders pointed at auditrail
/// wholesale.
pub(crate) fn not_served_message(signal: &str) -> String {
    format!(
        "auditrail receives OTLP logs only; {signal} are not served here \
         (send them to your tracing/metrics backend)"
    )
}

pub(crate) fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
