//! OTLP/gRPC: `LogsService/Export`, plus explicit refusals for traces and
//! metrics.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        logs_service_server::{LogsService, LogsServiceServer},
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    },
    metrics::v1::{
        metrics_service_server::{MetricsService, MetricsServiceServer},
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::body::{read_body, BodyError};
use futures_util::StreamExt;

use crate::auth::WriteRefused;
use crate::compression::{Compression, DecompressError};
use crate::first_bytes::FirstBytesDeadline;
use crate::ingest::{not_served_message, BodyAccount, Ingest, IngestError, Transport};
use crate::listener::{self, ListenerSettings};
use auditrail_auth::tls::ServerTls;
use auditrail_auth::ConnectionInfo;

struct Logs(Arc<Ingest>);

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        // Decoded: from here `export` counts the request instead of its body.
        if let Some(body) = request.extensions().get::<HeldBody>() {
            body.release();
        }
        // `ReadBody` authenticated every request that reaches here.
        let Some(WriterTenant(tenant)) = request.extensions().get::<WriterTenant>().cloned() else {
            return Err(Status::internal("the request's tenant was not decided"));
        };
        let request = request.into_inner();
        // tonic decoded it from the (decompressed) frame, so the frame's
        // size is the message's encoded length.
        let size = request.encoded_len();
        match self
            .0
            .export(request, Transport::Grpc, tenant, size, size)
            .await
        {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => Err(status_of(&e, self.0.config().retry_after)),
        }
    }
}

/// The status of a refusal, with a retry hint when a retry can help.
fn status_of(e: &IngestError, retry_after: std::time::Duration) -> Status {
    let code = match e {
        IngestError::Unavailable(_) | IngestError::Redaction(_) => Code::Unavailable,
        IngestError::QuotaExceeded(_)
        | IngestError::TooLarge { .. }
        | IngestError::Busy { .. }
        | IngestError::RateLimited(_) => Code::ResourceExhausted,
    };
    if e.retryable() {
        Status::with_error_details(
            code,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(e.retry_after(retry_after))),
        )
    } else {
        Status::new(code, e.to_string())
    }
}

/// The tenant `ReadBody` authenticated the request as.
#[derive(Clone)]
struct WriterTenant(String);

/// The status of a request that may not write (counted by `Writers`).
fn write_status(e: &WriteRefused, retry_after: std::time::Duration) -> Status {
    match e {
        WriteRefused::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
        WriteRefused::NotAWriter { .. } => Status::permission_denied(e.to_string()),
        WriteRefused::Unavailable(_) => Status::with_error_details(
            Code::Unavailable,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
    }
}

/// A request's body account, from `ReadBody` to the handler, which lets
/// it go once tonic has decoded the message.
#[derive(Clone)]
struct HeldBody(Arc<std::sync::Mutex<Option<BodyAccount>>>);

impl HeldBody {
    fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Traces and metrics arrive when a Collector or SDK is pointed at auditrail
/// wholesale; say plainly that only logs are taken, instead of a bare 404.
struct NotServed;

fn not_served(signal: &str) -> Status {
    Status::unimplemented(not_served_message(signal))
}

#[tonic::async_trait]
impl TraceService for NotServed {
    async fn export(
        &self,
        _: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Err(not_served("traces"))
    }
}

#[tonic::async_trait]
impl MetricsService for NotServed {
    async fn export(
        &self,
        _: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Err(not_served("metrics"))
    }
}

/// The gRPC services, ready to be served by tonic.
pub fn grpc_routes(ingest: Arc<Ingest>) -> Routes {
    let max = ingest.config().max_request_bytes;
    let ingest_timeout = ingest.config().body_read_timeout;
    // Still declared, so tonic advertises them in grpc-accept-encoding;
    // `Decompress` below decodes them before tonic sees the body.
    let logs = LogsServiceServer::new(Logs(ingest.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max);
    Routes::new(NormalizeStatus {
        inner: ReadBody {
            inner: logs,
            max,
            ingest,
        },
        timeout: ingest_timeout,
    })
    .add_service(TraceServiceServer::new(NotServed))
    .add_service(MetricsServiceServer::new(NotServed))
}

/// Serves OTLP/gRPC on `listener` (with `tls` when given: its ALPN must
/// offer `h2`) until `shutdown` resolves, then finishes the requests in
/// flight.
///
/// `beside` adds further gRPC services to the OTLP ones (with tonic's
/// `Routes::add_service`): the binary's own API is served this way, on the
/// same port and connections. Those services do their own auth; the
/// writers' auth and body accounting apply to OTLP's `Export` alone.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    beside: impl FnOnce(Routes) -> Routes,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let config = ingest.config().clone();
    let first_bytes_within = config.header_read_timeout;
    let accepted = listener::accept(
        listener,
        ListenerSettings {
            name: "otlp_grpc",
            tls,
            handshake_timeout: config.header_read_timeout,
            keepalive: config.keepalive_interval,
        },
    );
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(accepted).map(move |(conn, info)| {
            Ok::<_, std::io::Error>(FirstBytesDeadline::new(conn, info, first_bytes_within))
        });
    tonic::transport::Server::builder()
        // (`body_read_timeout`, the deadline of an Export call, is applied
        // by `NormalizeStatus`, so that the answer can name it.)
        // A connection whose peer stops answering pings is closed.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_routes(beside(grpc_routes(ingest)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Reads each Export body whole under the in-flight account (see `body`),
/// decompresses gzip and zstd messages with the receivers' own decoder (see
/// `compression`), then hands tonic the uncompressed frames.
///
/// Without it, tonic would buffer any number of bodies at once, each up to
/// `max_request_bytes`, before `max_in_flight_bytes` saw any of them.
///
/// tonic's gzip decoder reads only the first gzip member of a message and
/// ignores the rest, and ignores trailing bytes: a request would be read in
/// part and acknowledged whole. An Export request is unary and at most
/// `max_request_bytes`, so buffering it here costs nothing tonic would not
/// hold anyway.
#[derive(Clone)]
struct ReadBody<S> {
    inner: S,
    max: usize,
    ingest: Arc<Ingest>,
}

impl<S: NamedService> NamedService for ReadBody<S> {
    const NAME: &'static str = S::NAME;
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for ReadBody<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max;
        let ingest = self.ingest.clone();
        Box::pin(async move {
            // Before the body: an unauthenticated client costs no more than
            // its headers, and nothing of its request is stored.
            let connection = request.extensions().get::<ConnectionInfo>();
            let tenant = match ingest
                .writers()
                .tenant_of(request.headers(), connection)
                .await
            {
                Ok(tenant) => tenant,
                Err(e) => return Ok(write_status(&e, ingest.config().retry_after).into_http()),
            };
            let compression = match request.headers().get("grpc-encoding") {
                None => None,
                Some(name) if name.as_bytes().eq_ignore_ascii_case(b"identity") => None,
                Some(name) => match name.to_str().ok().and_then(Compression::from_name) {
                    Some(compression) => Some(compression),
                    // An encoding tonic refuses itself (UNIMPLEMENTED)
                    // without reading the body.
                    None => return inner.call(request).await,
                },
            };
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(WriterTenant(tenant));
            let mut account = ingest.body_account();
            let frames = match read_frames(body, compression, max, &mut account).await {
                Ok(frames) => frames,
                Err(Refused::Busy(e)) => {
                    ingest.count_refusal(&e);
                    return Ok(status_of(&e, ingest.config().retry_after).into_http());
                }
                Err(Refused::Request(status)) => {
                    let label = if status.code() == Code::ResourceExhausted {
                        "too_large"
                    } else {
                        "malformed"
                    };
                    metrics::counter!("auditrail_refused_requests_total", "reason" => label)
                        .increment(1);
                    tracing::warn!(code = ?status.code(), reason = label, message = status.message(), "OTLP/gRPC request refused");
                    return Ok(status.into_http());
                }
            };
            parts.headers.remove("grpc-encoding");
            parts
                .extensions
                .insert(HeldBody(Arc::new(std::sync::Mutex::new(Some(account)))));
            let body = Body::new(http_body_util::Full::new(frames));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

enum Refused {
    /// No room in the in-flight account: retry later.
    Busy(IngestError),
    /// The request itself is wrong or too large.
    Request(Status),
}

/// The whole body, read under `account`, with every message decompressed
/// when the request is compressed.
async fn read_frames(
    body: Body,
    compression: Option<Compression>,
    max: usize,
    account: &mut BodyAccount,
) -> Result<bytes::Bytes, Refused> {
    // Framing adds 5 bytes per message; compressed input is never larger
    // than the limit on its output, by much.
    let limit = max.saturating_add(1024);
    let wire = read_body(body, limit, None, account)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => Refused::Request(Status::resource_exhausted(format!(
                "request too large: it exceeds max_request_bytes ({max} bytes)"
            ))),
            BodyError::Busy(e) => Refused::Busy(e),
            BodyError::Unreadable(e) => Refused::Request(Status::invalid_argument(format!(
                "request body could not be read: {e}"
            ))),
        })?;
    let Some(compression) = compression else {
        // tonic checks the frames and the message size itself.
        return Ok(wire);
    };
    let plain = decompress_frames(&wire, compression, max).map_err(Refused::Request)?;
    drop(wire);
    account.hold(plain.len() as u64).map_err(Refused::Busy)?;
    Ok(plain.into())
}

/// The body's length-prefixed messages, each decompressed if its flag says
/// so, re-framed uncompressed.
fn decompress_frames(wire: &[u8], compression: Compression, max: usize) -> Result<Vec<u8>, Status> {
    let mut out = Vec::with_capacity(wire.len());
    let mut rest = wire;
    while !rest.is_empty() {
        let Some((&[flag, a, b, c, d], after)) = rest.split_first_chunk::<5>() else {
            return Err(Status::invalid_argument(
                "request body ends inside a gRPC message header",
            ));
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let payload = after
            .get(..len)
            .ok_or_else(|| Status::invalid_argument("request body ends inside a gRPC message"))?;
        rest = &after[len..];
        let plain;
        let message = match flag {
            0 => payload,
            1 => {
                plain = compression
                    .decompress(payload, max.saturating_sub(out.len()))
                    .map_err(|e| match e {
                        DecompressError::TooLarge(_) => Status::resource_exhausted(format!(
                            "message after decompression exceeds max_request_bytes ({max} bytes)"
                        )),
                        e @ DecompressError::Corrupt { .. } => {
                            Status::invalid_argument(e.to_string())
                        }
                    })?;
                &plain[..]
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "gRPC message flag {other} is neither 0 nor 1"
                )))
            }
        };
        let len = u32::try_from(message.len()).map_err(|_| {
            Status::resource_exhausted(format!("message exceeds max_request_bytes ({max} bytes)"))
        })?;
        out.push(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(message);
    }
    Ok(out)
}

/// Gives request-decoding failures the codes the OTLP spec expects.
///
/// tonic reports a body that does not decode, or does not decompress, as
/// INTERNAL, and a frame over the size limit as OUT_OF_RANGE. To a client,
/// INTERNAL reads as "the server broke, retry" — wrong for a request that will
/// never decode — so these become INVALID_ARGUMENT and RESOURCE_EXHAUSTED.
/// Only tonic's own decoding messages are rewritten; any other INTERNAL stays.
#[derive(Clone)]
struct NormalizeStatus<S> {
    inner: S,
    /// `body_read_timeout`: the deadline of a whole Export call.
    timeout: std::time::Duration,
}

const DECODE_FAILURES: &[&str] = &[
    "failed to decode Protobuf message",
    "Error decompressing",
    "protocol error",
    "Unexpected EOF decoding stream",
];

impl<S: NamedService> NamedService for NormalizeStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for NormalizeStatus<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            // The call's future reads the body too: a client that sends half
            // a message and stalls is answered here, and its stream closed.
            let Ok(response) = tokio::time::timeout(timeout, future).await else {
                let message = format!(
                    "the request did not arrive and complete within body_read_timeout ({})",
                    humantime::format_duration(timeout)
                );
                metrics::counter!("auditrail_refused_requests_total", "reason" => "timeout")
                    .increment(1);
                tracing::warn!(message, "OTLP/gRPC request refused");
                return Ok(Status::cancelled(message).into_http());
            };
            let mut response = response?;
            normalize(response.headers_mut());
            Ok(response)
        })
    }
}

fn normalize(headers: &mut http::HeaderMap) {
    // grpc-message is percent-encoded; let tonic decode it.
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let (new_code, label) = match status.code() {
        Code::Internal if DECODE_FAILURES.iter().any(|p| message.starts_with(p)) => {
            (Code::InvalidArgument, "malformed")
        }
        Code::OutOfRange if message.contains("message length too large") => {
            (Code::ResourceExhausted, "too_large")
        }
        // tonic already says RESOURCE_EXHAUSTED for a body that decompresses
        // past the limit; only count it.
        Code::ResourceExhausted if message.starts_with("Error decompressing") => {
            (Code::ResourceExhausted, "too_large")
        }
        _ => return,
    };
    metrics::counter!("auditrail_refused_requests_total", "reason" => label).increment(1);
    tracing::warn!(code = ?new_code, reason = label, message, "OTLP/gRPC request refused");
    headers.insert("grpc-status", (new_code as i32).into());
}
