//! OTLP/HTTP: `POST /v1/logs` with protobuf or JSON bodies, optionally gzip
//! or zstd compressed.

use std::future::Future;
use std::sync::Arc;

use auditrail_auth::ConnectionInfo;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use crate::auth::WriteRefused;
use crate::body::{read_body, BodyError};
use crate::compression::{Compression, DecompressError};
use crate::ingest::{not_served_message, Ingest, IngestError, Transport};
use crate::listener::ListenerSettings;
use crate::server::{serve_router, ServerSettings};
use crate::status::{code, Status};
use auditrail_auth::tls::ServerTls;

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

/// Serves OTLP/HTTP on `listener` (with `tls` when given: its ALPN must
/// offer `h2` and `http/1.1`) until `shutdown` resolves, then finishes the
/// requests in flight (see [`crate::server`]).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = ingest.config();
    let settings = ServerSettings {
        listener: ListenerSettings {
            name: "otlp_http",
            tls,
            handshake_timeout: config.header_read_timeout,
            keepalive: config.keepalive_interval,
        },
        header_read_timeout: config.header_read_timeout,
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
    };
    serve_router(listener, http_router(ingest), settings, shutdown).await
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
    /// `WWW-Authenticate`, on a 401 (RFC 6750).
    challenge: Option<&'static str>,
    /// Refusals from [`Ingest::export`] and the auth check are counted and
    /// logged there.
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
            challenge: None,
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
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
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
    connection: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let connection = connection.map(|Extension(c)| c);
    match read_and_export(&ingest, connection.as_ref(), &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn read_and_export(
    ingest: &Ingest,
    connection: Option<&ConnectionInfo>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    // Before anything else: an unauthenticated client learns nothing and
    // costs no more than its headers.
    let tenant = ingest
        .writers()
        .tenant_of(headers, connection)
        .await
        .map_err(|e| {
            let encoding = content_type(headers).unwrap_or(Encoding::Json);
            write_refusal(e, ingest.config().retry_after, encoding)
        })?;
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
    let retry_after = ingest.config().retry_after;
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
    match ingest
        .export(request, transport, tenant, wire_len, plain_len)
        .await
    {
        Ok(response) => Ok(encode(&response, encoding, StatusCode::OK)),
        Err(e) => Err(refusal_of(e, retry_after, encoding)),
    }
}

/// The answer to a request that may not write (counted by [`Writers`]).
fn write_refusal(e: WriteRefused, retry_after: std::time::Duration, encoding: Encoding) -> Refusal {
    let (http, grpc_code) = match &e {
        WriteRefused::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED),
        WriteRefused::NotAWriter { .. } => (StatusCode::FORBIDDEN, code::PERMISSION_DENIED),
        WriteRefused::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE),
    };
    Refusal {
        retry_after: matches!(e, WriteRefused::Unavailable(_))
            .then(|| retry_after_seconds(retry_after)),
        challenge: matches!(e, WriteRefused::Unauthenticated(_))
            .then_some(r#"Bearer realm="auditrail""#),
        counted: true,
        ..Refusal::new(http, grpc_code, e.to_string(), encoding)
    }
}

/// The answer to a refusal the ingest counted already.
fn refusal_of(e: IngestError, retry_after: std::time::Duration, encoding: Encoding) -> Refusal {
    let (http, grpc_code) = match e {
        _ if e.too_large() => (StatusCode::PAYLOAD_TOO_LARGE, code::RESOURCE_EXHAUSTED),
        IngestError::Unavailable(_) | IngestError::Redaction(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE)
        }
        _ => (StatusCode::TOO_MANY_REQUESTS, code::RESOURCE_EXHAUSTED),
    };
    Refusal {
        retry_after: e
            .retryable()
            .then(|| retry_after_seconds(e.retry_after(retry_after))),
        counted: true,
        ..Refusal::new(http, grpc_code, e.to_string(), encoding)
    }
}

/// `Retry-After` is in whole seconds: rounded up (at least 1), so a client
/// that obeys it is not refused again.
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
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
