//! OTLP/HTTP: `POST /v1/logs` with protobuf or JSON bodies, optionally gzip
//! or zstd compressed.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use crate::body::{read_body, BodyError};
use crate::compression::{Compression, DecompressError};
use crate::ingest::{not_served_message, Ingest, IngestError, Transport};
use crate::status::{code, Status};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP routes.
pub fn http_router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/logs", post(export_logs))
        .route("/v1/traces", post(|| not_served("traces")))
        .route("/v1/metrics", post(|| not_served("metrics")))
        // The body is read with our own limit, so the error can say which.
        .layer(DefaultBodyLimit::disable())
        .with_state(ingest)
}

/// Serves OTLP/HTTP on `listener` until `shutdown` resolves, then finishes
/// the requests in flight.
///
/// hyper's server is driven directly, not through `axum::serve`, because
/// only hyper's own builder can bound how long a client may take to send
/// its headers (`header_read_timeout`): without it, a client that opens
/// connections and sends half a request line holds them forever.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let config = ingest.config().clone();
    let service = hyper_util::service::TowerToHyperService::new(http_router(ingest));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to
                    // close instead of spinning.
                    tracing::warn!(error = %e, "OTLP/HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune_socket(&stream, config.keepalive_interval);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "OTLP/HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// TCP_NODELAY (without it an ack can sit out a delayed-ACK timer, ~40 ms)
/// and TCP keepalive (so the connection of a peer that vanished is closed).
fn tune_socket(stream: &tokio::net::TcpStream, keepalive: std::time::Duration) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// An error answer, encoded like the request it answers.
struct Refusal {
    http: StatusCode,
    grpc_code: i32,
    message: String,
    encoding: Encoding,
    retry_after: Option<u64>,
    /// Refusals from [`Ingest::export`] are counted and logged there.
    counted: bool,
}

impl Refusal {
    fn new(
        http: StatusCode,
        grpc_code: i32,
        message: impl Into<String>,
        encoding: Encoding,
    ) -> Self {
        Refusal {
            http,
            grpc_code,
            message: message.into(),
            encoding,
            retry_after: None,
            counted: false,
        }
    }

    fn bad_request(message: impl Into<String>, encoding: Encoding) -> Self {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_ARGUMENT,
            message,
            encoding,
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if !self.counted {
            let reason = match self.http {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::NOT_FOUND => "not_served",
                StatusCode::REQUEST_TIMEOUT => "timeout",
                _ => "malformed",
            };
            metrics::counter!("auditrail_refused_requests_total", "reason" => reason).increment(1);
            tracing::warn!(status = %self.http, reason, message = %self.message, "OTLP/HTTP request refused");
        }
        let status = Status {
            code: self.grpc_code,
            message: self.message,
        };
        let mut response = encode(&status, self.encoding, self.http);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn encode<M: Message + serde::Serialize>(
    message: &M,
    encoding: Encoding,
    http: StatusCode,
) -> Response {
    let (content_type, body) = match encoding {
        Encoding::Protobuf => (PROTOBUF, message.encode_to_vec()),
        Encoding::Json => {
            let mut value = serde_json::to_value(message).expect("OTLP messages serialize to JSON");
            drop_nulls(&mut value);
            (JSON, value.to_string().into_bytes())
        }
    };
    (http, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// OTLP/JSON leaves unset fields out; opentelemetry-proto's serde writes an
/// unset message field as `null`, which strict JSON-protobuf parsers refuse.
fn drop_nulls(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(drop_nulls);
    }
}

async fn not_served(signal: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        code::UNIMPLEMENTED,
        not_served_message(signal),
        Encoding::Json,
    )
}

async fn export_logs(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match read_and_export(&ingest, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn read_and_export(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let encoding = content_type(headers)?;
    let max = ingest.config().max_request_bytes;
    let too_large = |what: &str| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::RESOURCE_EXHAUSTED,
            format!("request {what} exceeds max_request_bytes ({max} bytes)"),
            encoding,
        )
    };
    let timeout = ingest.config().body_read_timeout;
    let retry_after = ingest.config().retry_after.as_secs().max(1);
    let refuse = |e: IngestError| {
        ingest.count_refusal(&e);
        refusal_of(e, retry_after, encoding)
    };
    let mut account = ingest.body_account();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let read = tokio::time::timeout(timeout, read_body(body, max, announced, &mut account))
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                code::DEADLINE_EXCEEDED,
                format!(
                    "the request body did not arrive within body_read_timeout ({})",
                    humantime::format_duration(timeout)
                ),
                encoding,
            )
        })?;
    let wire = read.map_err(|e| match e {
        BodyError::TooLarge => too_large("body"),
        BodyError::Busy(e) => refuse(e),
        BodyError::Unreadable(e) => {
            Refusal::bad_request(format!("request body could not be read: {e}"), encoding)
        }
    })?;
    let wire_len = wire.len();
    let plain = decompress(headers, wire, max, encoding)?;
    // The body is gone once decompressed (or is the same bytes).
    account.hold(plain.len() as u64).map_err(&refuse)?;
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(plain.as_ref()).map_err(|e| {
            Refusal::bad_request(
                format!("body is not a valid OTLP ExportLogsServiceRequest protobuf: {e}"),
                encoding,
            )
        })?,
        Encoding::Json => serde_json::from_slice(&plain).map_err(|e| {
            Refusal::bad_request(
                format!("body is not a valid OTLP/JSON ExportLogsServiceRequest: {e}"),
                encoding,
            )
        })?,
    };
    let plain_len = plain.len();
    drop(plain);
    // From here `export` counts the decoded request.
    drop(account);
    let transport = match encoding {
        Encoding::Protobuf => Transport::HttpProtobuf,
        Encoding::Json => Transport::HttpJson,
    };
    match ingest.export(request, transport, wire_len, plain_len).await {
        Ok(response) => Ok(encode(&response, encoding, StatusCode::OK)),
        Err(e) => Err(refusal_of(e, retry_after, encoding)),
    }
}

/// The answer to a refusal the ingest counted already.
fn refusal_of(e: IngestError, retry_after: u64, encoding: Encoding) -> Refusal {
    let (http, grpc_code) = match e {
        IngestError::QuotaExceeded(_) | IngestError::Busy { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, code::RESOURCE_EXHAUSTED)
        }
        IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, code::RESOURCE_EXHAUSTED),
        IngestError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE),
    };
    Refusal {
        retry_after: e.retryable().then_some(retry_after),
        counted: true,
        ..Refusal::new(http, grpc_code, e.to_string(), encoding)
    }
}

fn content_type(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        PROTOBUF => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        _ => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_ARGUMENT,
            format!("content type {raw:?} is not supported; send {PROTOBUF} or {JSON}"),
            Encoding::Json,
        )),
    }
}

fn decompress(
    headers: &HeaderMap,
    wire: Bytes,
    max: usize,
    encoding: Encoding,
) -> Result<Bytes, Refusal> {
    let name = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim();
    if name.is_empty() || name.eq_ignore_ascii_case("identity") {
        return Ok(wire);
    }
    let compression = Compression::from_name(name).ok_or_else(|| {
        Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_ARGUMENT,
            format!("content encoding {name:?} is not supported; use gzip, zstd or none"),
            encoding,
        )
    })?;
    match compression.decompress(&wire, max) {
        Ok(plain) => Ok(plain.into()),
        Err(DecompressError::TooLarge(_)) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::RESOURCE_EXHAUSTED,
            format!("request body after decompression exceeds max_request_bytes ({max} bytes)"),
            encoding,
        )),
        Err(e @ DecompressError::Corrupt { .. }) => {
            Err(Refusal::bad_request(e.to_string(), encoding))
        }
    }
}
