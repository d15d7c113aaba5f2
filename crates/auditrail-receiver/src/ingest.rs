//! The part of a receiver that does not depend on the transport.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use auditrail_model::{map_request, ReceiveContext, RequestCost};
use auditrail_redact::{RedactError, Redactor, Report};
use auditrail_spool::{Spool, SpoolError};

use crate::auth::Writers;
use crate::rate::{RateLimits, RateRefused, TenantRateLimiter};
use crate::tombstone;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};

/// Limits and identity shared by both transports.
///
/// Together the limits bound what one request, and all requests at once,
/// can cost: a request is at most `max_request_bytes` decompressed, expands
/// into events of at most `max_request_expansion` times its size, and is
/// admitted only while the bytes held by requests being mapped and stored
/// stay under `max_in_flight_bytes` (see [`Ingest::export`]).
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Largest request accepted, after decompression.
    pub max_request_bytes: usize,
    /// Most log records in one request.
    pub max_records_per_request: usize,
    /// Refuse a request whose records, each counted with its resource and
    /// scope, add up to more than this many times the request's size.
    pub max_request_expansion: u32,
    /// Largest event (canonical bytes); a larger record is rejected alone.
    pub max_event_bytes: usize,
    /// Bytes that all requests being mapped and stored may hold at once;
    /// above it requests are answered 429 / RESOURCE_EXHAUSTED with a retry hint.
    pub max_in_flight_bytes: usize,
    /// OTLP/HTTP: how long a client may take to send a request's headers;
    /// OTLP/gRPC: how long a new connection may take to send its first bytes.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body (OTLP/HTTP:
    /// 408; OTLP/gRPC: the request's deadline, CANCELLED).
    pub body_read_timeout: Duration,
    /// OTLP/gRPC: HTTP/2 ping interval; a client that does not answer within
    /// `keepalive_timeout` is disconnected. Both listeners also set TCP
    /// keepalive to this interval, so a vanished peer's connection is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How long a client is told to wait when the spool is full.
    pub retry_after: Duration,
    /// Events whose time is further than this from the receive time are
    /// counted and flagged (`audit.clock_skew_ns`); zero: never.
    pub max_clock_skew: Duration,
    /// Events/s and bytes/s per tenant.
    pub rate_limits: RateLimits,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_request_bytes: 16 << 20,
            max_records_per_request: 65_536,
            max_request_expansion: 32,
            max_event_bytes: 1 << 20,
            max_in_flight_bytes: 256 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            retry_after: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(300),
            rate_limits: RateLimits::default(),
        }
    }
}

/// What one mapped event costs in memory beyond its strings' bytes (the
/// struct, allocator slack, the spool's batch buffer entry), for the
/// in-flight account. An estimate; it keeps requests of many tiny records
/// from looking free.
const EVENT_OVERHEAD_BYTES: u64 = 512;

/// The in-flight account counts in KiB, so that a u32 permit count covers
/// any byte budget that fits in memory.
const PERMIT_BYTES: u64 = 1024;

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
    /// Over a per-request limit: sending it again will not help (HTTP 413,
    /// gRPC RESOURCE_EXHAUSTED without a retry hint).
    #[error("{message}")]
    TooLarge {
        /// The config key that refused it, e.g. `max_records_per_request`.
        limit: &'static str,
        message: String,
    },
    /// Requests in flight hold `max_in_flight_bytes` already: backpressure
    /// (HTTP 429, gRPC RESOURCE_EXHAUSTED, both with a retry hint).
    #[error(
        "the server is busy: this request needs {needed} bytes of the \
         max_in_flight_bytes ({limit} bytes) held by requests in flight; retry later"
    )]
    Busy { needed: u64, limit: u64 },
    /// Over its tenant's rate (`receiver.rate_limit`).
    #[error("{0}")]
    RateLimited(RateRefused),
    /// The request could not be redacted (a tenant without an HMAC key):
    /// nothing of it may be stored in clear, so none of it is stored. The
    /// server's config is at fault, so the client is told to retry (HTTP
    /// 503, gRPC UNAVAILABLE) while an operator fixes it.
    #[error("events could not be redacted: {0}; retry later")]
    Redaction(RedactError),
}

impl IngestError {
    /// The `reason` label of `auditrail_refused_requests_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::QuotaExceeded(_) => "quota",
            IngestError::Unavailable(_) => "storage",
            IngestError::TooLarge { limit, .. } => limit,
            IngestError::Busy { .. } => "max_in_flight_bytes",
            IngestError::RateLimited(_) => "rate_limit",
            IngestError::Redaction(_) => "redaction",
        }
    }

    /// Whether the client should retry later (a retry hint goes with it).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            IngestError::QuotaExceeded(_)
                | IngestError::Unavailable(_)
                | IngestError::Busy { .. }
                | IngestError::RateLimited(RateRefused::Later { .. })
                | IngestError::Redaction(_)
        )
    }

    /// How long the client should wait: the rate limiter's own answer, else
    /// the configured `retry_after`.
    pub fn retry_after(&self, configured: Duration) -> Duration {
        match self {
            IngestError::RateLimited(RateRefused::Later { retry_after, .. }) => *retry_after,
            _ => configured,
        }
    }

    /// Whether sending the request again, unchanged, can never succeed
    /// (HTTP 413).
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            IngestError::TooLarge { .. } | IngestError::RateLimited(RateRefused::Never { .. })
        )
    }
}

/// What a request holds of `max_in_flight_bytes` before it is decoded: its
/// body as it arrives, then its decompressed form. Counted like the decoded
/// request, so that many slow or large bodies at once get 429 /
/// RESOURCE_EXHAUSTED with a retry hint instead of the server's memory.
/// Dropped once the request is decoded and its body gone, just before
/// [`Ingest::export`] counts the decoded request.
pub struct BodyAccount {
    in_flight: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    limit: u64,
}

impl BodyAccount {
    /// An empty account on `in_flight` (1 KiB permits of `limit` bytes).
    pub(crate) fn new(in_flight: Arc<Semaphore>, limit: u64) -> Self {
        BodyAccount {
            in_flight,
            held: None,
            limit,
        }
    }

    /// An account of `limit` bytes of its own, for tests.
    #[cfg(test)]
    pub(crate) fn budget(limit: u64) -> Arc<Semaphore> {
        Arc::new(Semaphore::new((limit / PERMIT_BYTES) as usize))
    }

    /// Holds `bytes` in total from now on (never less than before). `Busy`
    /// when the account has not that much room.
    pub fn hold(&mut self, bytes: u64) -> Result<(), IngestError> {
        let want = bytes.div_ceil(PERMIT_BYTES);
        let have = self.held.as_ref().map_or(0, |p| p.num_permits() as u64);
        if want <= have {
            return Ok(());
        }
        let busy = || IngestError::Busy {
            needed: bytes,
            limit: self.limit,
        };
        let more = u32::try_from(want - have).map_err(|_| busy())?;
        let permit = self
            .in_flight
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| busy())?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// The bytes held now (a multiple of the account's 1 KiB unit).
    pub fn held_bytes(&self) -> u64 {
        self.held
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * PERMIT_BYTES)
    }
}

/// Redacts, maps, stores and acknowledges export requests.
pub struct Ingest {
    spool: Arc<Spool>,
    config: ReceiverConfig,
    writers: Writers,
    /// Applied to every request before its records become events.
    redactor: Redactor,
    rates: TenantRateLimiter,
    /// The in-flight account, in KiB (`PERMIT_BYTES`).
    in_flight: Arc<Semaphore>,
    in_flight_permits: u32,
}

impl Ingest {
    pub fn new(
        spool: Arc<Spool>,
        config: ReceiverConfig,
        writers: Writers,
        redactor: Redactor,
    ) -> Arc<Ingest> {
        let in_flight_permits =
            u32::try_from(config.max_in_flight_bytes as u64 / PERMIT_BYTES).unwrap_or(u32::MAX);
        Arc::new(Ingest {
            spool,
            rates: TenantRateLimiter::new(config.rate_limits.clone()),
            in_flight: Arc::new(Semaphore::new(in_flight_permits as usize)),
            in_flight_permits,
            config,
            writers,
            redactor,
        })
    }

    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    /// Who may write (see [`Writers`]).
    pub fn writers(&self) -> &Writers {
        &self.writers
    }

    /// An empty account for one request's body (see [`BodyAccount`]).
    pub fn body_account(&self) -> BodyAccount {
        BodyAccount::new(
            self.in_flight.clone(),
            self.config.max_in_flight_bytes as u64,
        )
    }

    /// Counts and logs a refusal: [`Ingest::export`]'s own, and one made
    /// while the body was read.
    pub fn count_refusal(&self, error: &IngestError) {
        let reason = error.reason();
        metrics::counter!("auditrail_refused_requests_total", "reason" => reason).increment(1);
        match error {
            IngestError::Unavailable(_) => {
                tracing::error!(%error, "request refused: events could not be stored")
            }
            IngestError::Redaction(e) => {
                metrics::counter!("auditrail_redaction_failures_total", "reason" => e.reason())
                    .increment(1);
                tracing::error!(%error, "request refused: events could not be redacted")
            }
            IngestError::RateLimited(
                RateRefused::Later { tenant, .. } | RateRefused::Never { tenant, .. },
            ) => {
                metrics::counter!("auditrail_rate_limited_requests_total", "tenant" => tenant.clone())
                    .increment(1);
                // At debug: a tenant over its rate may be refused thousands
                // of times a second, and the counter says it already.
                tracing::debug!(%error, reason, "request refused");
            }
            _ => tracing::warn!(%error, reason, "request refused"),
        }
    }

    /// Stores the acceptable records of `request` as `tenant`'s events and
    /// says which were not. Returns only after every accepted record is
    /// fsync'd in the spool.
    ///
    /// `wire_bytes` is the request as it arrived (for the size histogram),
    /// `decoded_bytes` its decompressed body, which it holds in memory.
    pub async fn export(
        &self,
        request: ExportLogsServiceRequest,
        transport: Transport,
        tenant: String,
        wire_bytes: usize,
        decoded_bytes: usize,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        let result = self
            .admit_and_store(request, transport, tenant, wire_bytes, decoded_bytes)
            .await;
        if let Err(e) = &result {
            self.count_refusal(e);
        }
        result
    }

    /// Checks the request against the limits, in the order of their cost to
    /// check: all of them before a single event is built.
    fn admit(
        &self,
        cost: &RequestCost,
        decoded_bytes: usize,
        tenant: &str,
    ) -> Result<OwnedSemaphorePermit, IngestError> {
        let config = &self.config;
        if cost.records > config.max_records_per_request {
            return Err(IngestError::TooLarge {
                limit: "max_records_per_request",
                message: format!(
                    "the request holds {} log records, over max_records_per_request ({}); \
                     send smaller batches",
                    cost.records, config.max_records_per_request
                ),
            });
        }
        let allowed = cost
            .request_bytes
            .saturating_mul(u64::from(config.max_request_expansion));
        if cost.expanded_bytes > allowed {
            return Err(IngestError::TooLarge {
                limit: "max_request_expansion",
                message: format!(
                    "the request's {} records, each with its resource and scope, come to {} bytes: \
                     {:.0} times the request's {} bytes, over max_request_expansion ({}); \
                     send fewer records per resource or a smaller resource",
                    cost.records,
                    cost.expanded_bytes,
                    cost.expansion(),
                    cost.request_bytes,
                    config.max_request_expansion
                ),
            });
        }
        // Before the shared in-flight budget: a tenant over its rate takes
        // none of it from the others.
        self.rates
            .admit(tenant, cost.records as u64, decoded_bytes as u64)
            .map_err(IngestError::RateLimited)?;
        let needed = (decoded_bytes as u64)
            .saturating_add(cost.expanded_bytes)
            .saturating_add(EVENT_OVERHEAD_BYTES.saturating_mul(cost.records as u64));
        let limit = config.max_in_flight_bytes as u64;
        let permits = needed.div_ceil(PERMIT_BYTES);
        if permits > u64::from(self.in_flight_permits) {
            return Err(IngestError::TooLarge {
                limit: "max_in_flight_bytes",
                message: format!(
                    "the request needs {needed} bytes to map and store, more than \
                     max_in_flight_bytes ({limit} bytes) allows at all; send smaller batches"
                ),
            });
        }
        // Never wait for room: a client told to retry later frees its
        // connection, a queue of waiting requests would hold their bodies.
        self.in_flight
            .clone()
            .try_acquire_many_owned(permits as u32)
            .map_err(|_| IngestError::Busy { needed, limit })
    }

    async fn admit_and_store(
        &self,
        mut request: ExportLogsServiceRequest,
        transport: Transport,
        tenant: String,
        wire_bytes: usize,
        decoded_bytes: usize,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        let label = transport.label();
        metrics::histogram!("auditrail_request_bytes", "transport" => label)
            .record(wire_bytes as f64);
        let cost = RequestCost::of(&request);
        // Held until the events are stored (or refused) and dropped.
        let _in_flight = self.admit(&cost, decoded_bytes, &tenant)?;
        // Refuse before mapping, so a full spool costs no CPU per record.
        self.spool
            .check_quota()
            .map_err(IngestError::QuotaExceeded)?;
        // Before the records become events: the canonical fields and
        // content-hash ids are then made from what is stored, and clear
        // text never reaches the spool.
        let mut redaction = Report::default();
        if self.redactor.is_active() {
            redaction = self
                .redactor
                .redact(&mut request, &tenant)
                .map_err(IngestError::Redaction)?;
            self.count_redactions(&redaction);
        }
        let ctx = ReceiveContext {
            tenant,
            received_time_unix_nano: now_unix_nano(),
            max_event_bytes: self.config.max_event_bytes,
            max_clock_skew_nanos: u64::try_from(self.config.max_clock_skew.as_nanos())
                .unwrap_or(u64::MAX),
        };
        let mut mapped = map_request(&request, &ctx);
        for event in &mapped.events {
            if let Some(skew) = auditrail_model::clock_skew(
                event.time_unix_nano,
                event.received_time_unix_nano,
                ctx.max_clock_skew_nanos,
            ) {
                let direction = if skew < 0 { "past" } else { "future" };
                metrics::counter!("auditrail_clock_skew_events_total", "direction" => direction)
                    .increment(1);
            }
        }
        drop(request);
        let received = mapped.events.len() + mapped.rejected.len();
        metrics::counter!("auditrail_received_events_total", "transport" => label)
            .increment(received as u64);
        for rejected in &mapped.rejected {
            metrics::counter!("auditrail_rejected_events_total", "reason" => rejected.rejected.reason)
                .increment(1);
        }

        // In the same append as the events: durable before the client
        // hears of the request, and never without them.
        let tombstone = tombstone::for_request(
            &mapped.rejected,
            &redaction,
            &mapped.events,
            label,
            &ctx.tenant,
            ctx.received_time_unix_nano,
        );
        let with_tombstone = tombstone.is_some();
        mapped.events.extend(tombstone);
        let started = std::time::Instant::now();
        match self.spool.append(mapped.events).await {
            Ok(_) if with_tombstone => {
                metrics::counter!("auditrail_tombstones_total", "kind" => "request").increment(1)
            }
            Ok(_) => {}
            Err(e @ SpoolError::QuotaExceeded { .. }) => return Err(IngestError::QuotaExceeded(e)),
            Err(e) => return Err(IngestError::Unavailable(e)),
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

    /// Counts what redacting a request did, by rule and by cut.
    fn count_redactions(&self, report: &Report) {
        for ((rule, action), &n) in self.redactor.policy().rule_labels().zip(&report.by_rule) {
            if n > 0 {
                metrics::counter!("auditrail_redactions_total",
                    "rule" => rule.to_owned(), "action" => action)
                .increment(n);
            }
        }
        for (reason, n) in [
            ("metadata", report.dropped_by_level),
            ("max_body_bytes", report.truncated_by_cap),
        ] {
            if n > 0 {
                metrics::counter!("auditrail_truncated_values_total", "reason" => reason)
                    .increment(n);
            }
        }
        if report.cut_bytes > 0 {
            metrics::counter!("auditrail_truncated_bytes_total").increment(report.cut_bytes);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use auditrail_auth::tokens::TokenSet;
    use auditrail_auth::Authenticator;
    use auditrail_redact::{Action, CaptureSpec, Keyring, Policy, RuleSpec};
    use auditrail_spool::SpoolConfig;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn ingest(dir: &std::path::Path) -> (Arc<Ingest>, Arc<Spool>) {
        let spool = Arc::new(
            Spool::open(SpoolConfig {
                dir: dir.to_owned(),
                node: "n".into(),
                max_disk_bytes: 1 << 30,
                retention: Duration::from_secs(3600),
                cache_bytes: 1 << 20,
                signing: None,
            })
            .unwrap(),
        );
        let rules = [RuleSpec {
            name: None,
            attributes: vec!["user.id".into()],
            resource_attributes: Vec::new(),
            body: false,
            action: Action::Hmac,
        }];
        let redactor = Redactor::new(
            Policy::new(&rules, &CaptureSpec::default()).unwrap(),
            Keyring::from_keys([("acme", 1, b"0123456789abcdef0123456789abcdef".as_slice())]),
        );
        let writers = Writers::new(Arc::new(Authenticator::new(TokenSet::new(), None)), false);
        let ingest = Ingest::new(spool.clone(), ReceiverConfig::default(), writers, redactor);
        (ingest, spool)
    }

    fn request() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        attributes: vec![KeyValue {
                            key: "user.id".into(),
                            value: Some(AnyValue {
                                value: Some(Value::StringValue("alice".into())),
                            }),
                            ..KeyValue::default()
                        }],
                        ..LogRecord::default()
                    }],
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
    }

    /// Redaction runs before the spool: a tenant with a key gets its
    /// events stored redacted; one without is refused whole, with a retry
    /// hint, and nothing of it is stored.
    #[tokio::test]
    async fn requests_are_redacted_before_the_spool_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ingest, spool) = ingest(dir.path());
        let err = ingest
            .export(request(), Transport::Grpc, "globex".into(), 10, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Redaction(_)), "{err}");
        assert_eq!(err.reason(), "redaction");
        assert!(err.retryable() && !err.too_large());
        assert!(err.to_string().contains("tenant globex"), "{err}");
        assert_eq!(spool.stats().last_seq, 0, "nothing stored");

        ingest
            .export(request(), Transport::Grpc, "acme".into(), 10, 10)
            .await
            .unwrap();
        let stored = spool.read(0, 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert!(
            stored[0].actor_id.starts_with("hmac-sha256:v1:"),
            "{:?}",
            stored[0]
        );
        assert!(!stored[0].attributes.contains("alice"), "{:?}", stored[0]);
    }
}
