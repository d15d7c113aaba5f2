//! OTLP/HTTP: `POST /v1/logs` with protobuf or JSON bodies, optionally gzip
//! or zstd compressed.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

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
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY an ack can sit out a delayed-ACK timer (~40 ms).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http_router(ingest))
        .with_graceful_shutdown(shutdown)
        .await
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
        let reason = match self.http {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::TOO_MANY_REQUESTS => "quota",
            StatusCode::SERVICE_UNAVAILABLE => "storage",
            StatusCode::NOT_FOUND => "not_served",
            _ => "malformed",
        };
        if !matches!(reason, "quota" | "storage") {
            // Quota and storage refusals are counted and logged where they happen.
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
    let wire = axum::body::to_bytes(body, max).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large("body")
        } else {
            Refusal::bad_request(format!("request body could not be read: {e}"), encoding)
        }
    })?;
    let wire_len = wire.len();
    let plain = decompress(headers, wire, max, encoding).map_err(|e| match e {
        Decompress::TooLarge => too_large("body after decompression"),
        Decompress::Refused(refusal) => refusal,
    })?;
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
    drop(plain);
    let transport = match encoding {
        Encoding::Protobuf => Transport::HttpProtobuf,
        Encoding::Json => Transport::HttpJson,
    };
    let retry_after = ingest.config().retry_after.as_secs().max(1);
    match ingest.export(request, transport, wire_len).await {
        Ok(response) => Ok(encode(&response, encoding, StatusCode::OK)),
        Err(e) => {
            let (http, grpc_code) = match e {
                IngestError::QuotaExceeded(_) => {
                    (StatusCode::TOO_MANY_REQUESTS, code::RESOURCE_EXHAUSTED)
                }
                IngestError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE),
            };
            Err(Refusal {
                retry_after: Some(retry_after),
                ..Refusal::new(http, grpc_code, e.to_string(), encoding)
            })
        }
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

enum Decompress {
    TooLarge,
    Refused(Refusal),
}

fn decompress(
    headers: &HeaderMap,
    wire: Bytes,
    max: usize,
    encoding: Encoding,
) -> Result<Bytes, Decompress> {
    let name = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let mut reader: Box<dyn Read + '_> = match name.as_str() {
        "" | "identity" => return Ok(wire),
        "gzip" => Box::new(flate2::read::GzDecoder::new(wire.as_ref())),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(wire.as_ref()).map_err(|e| {
                Decompress::Refused(Refusal::bad_request(format!("zstd body: {e}"), encoding))
            })?,
        ),
        other => {
            return Err(Decompress::Refused(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::INVALID_ARGUMENT,
                format!("content encoding {other:?} is not supported; use gzip, zstd or none"),
                encoding,
            )))
        }
    };
    // Read one byte past the limit to tell "exactly max" from "more".
    let mut out = Vec::new();
    (&mut reader)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Decompress::Refused(Refusal::bad_request(
                format!("{name} body does not decompress: {e}"),
                encoding,
            ))
        })?;
    if out.len() > max {
        return Err(Decompress::TooLarge);
    }
    Ok(out.into())
}
