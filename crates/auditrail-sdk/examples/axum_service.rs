//! An axum service that audits itself with auditrail-sdk.
//!
//! * Every request is an `http.request` event (method, route, status, the
//!   user from the `x-user-id` header, the client's address), emitted on the
//!   batched path by a middleware layer, in the request's span.
//! * `DELETE /images/{id}` is the sensitive route: the deletion happens only
//!   after auditrail has durably stored an `image.delete` event; when that
//!   fails (auditrail down, too slow, refusing) the service answers 503 and
//!   keeps the image. That is failing closed.
//!
//! Each request runs in a `tracing` span that tracing-opentelemetry turns
//! into an OpenTelemetry span, continuing the caller's trace when the
//! request carries a W3C `traceparent` header; the audit events carry that
//! trace id, so an auditor can go from an event to the trace.
//!
//! Environment: `AUDITRAIL_ENDPOINT` (default `http://127.0.0.1:4317`),
//! `AUDITRAIL_TOKEN` (a writer token, optional), `LISTEN` (default
//! `127.0.0.1:3000`), `AUDIT_TIMEOUT_MS` (the durable timeout, default 5000).
//!
//! ```text
//! cargo run -p auditrail-sdk --example axum_service
//! curl -X PUT -H 'x-user-id: alice' --data 'a cat as a judge' localhost:3000/images/cat
//! curl -X DELETE -H 'x-user-id: alice' localhost:3000/images/cat
//! auditrail query --since 5m
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditrail_sdk::{Auditor, Outcome};
use axum::extract::{ConnectInfo, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The images the service holds (a stand-in for files on disk).
type Images = Arc<Mutex<HashMap<String, String>>>;

#[derive(Clone)]
struct App {
    auditor: Auditor,
    images: Images,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans for tracing-opentelemetry. A real service would add an OTLP
    // span exporter (to Tempo or Jaeger) here; ids are made either way.
    let tracer = SdkTracerProvider::builder().build().tracer("axum_service");
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(tracing_subscriber::fmt::layer())
        .init();

    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let mut auditor = Auditor::builder()
        .endpoint(env("AUDITRAIL_ENDPOINT", auditrail_sdk::DEFAULT_ENDPOINT))
        .service_name("imagegen-api")
        .durable_timeout(Duration::from_millis(
            env("AUDIT_TIMEOUT_MS", "5000").parse()?,
        ));
    if let Ok(token) = std::env::var("AUDITRAIL_TOKEN") {
        auditor = auditor.token(token);
    }
    let app = App {
        auditor: auditor.build()?,
        images: Images::default(),
    };

    let router = Router::new()
        .route("/images/{id}", get(show).put(create).delete(delete))
        // `layer`, not `route_layer`: requests that match no route are audited too.
        .layer(middleware::from_fn_with_state(app.clone(), audit_request))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(env("LISTEN", "127.0.0.1:3000")).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // What the batched path still holds goes out before the process ends.
    app.auditor.shutdown().await?;
    Ok(())
}

/// The middleware layer: runs the request in its span and records it as an
/// `http.request` event once the status is known.
async fn audit_request(
    State(app): State<App>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    // The route template (`/images/{id}`), not the path: one value per
    // endpoint, whatever the ids. None when no route matched.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let user = user_of(request.headers());
    let span = tracing::info_span!("request", %method, route = route.as_deref());
    // Continue the caller's trace when it sent one.
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    let _ = span.set_parent(parent);

    async move {
        let response = next.run(request).await;
        let status = response.status();
        // The current span is the request's (tracing-opentelemetry), so the
        // event carries its trace id.
        let mut event = app
            .auditor
            .event("http.request")
            .actor_id(user)
            .client(client.ip().to_string())
            .target(path)
            .outcome(if status.is_client_error() || status.is_server_error() {
                Outcome::Failure
            } else {
                Outcome::Success
            })
            .attr("http.request.method", method)
            .attr("http.response.status_code", i64::from(status.as_u16()));
        if let Some(route) = route {
            event = event.attr("http.route", route);
        }
        event.emit();
        response
    }
    .instrument(span)
    .await
}

async fn show(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.images.lock().expect("images").get(&id) {
        Some(prompt) => prompt.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// "Generates" an image from the prompt in the body (batched event).
async fn create(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    prompt: String,
) -> StatusCode {
    app.auditor
        .event("image.generate")
        .actor_id(user_of(&headers))
        .target(format!("images/{id}"))
        .outcome(Outcome::Success)
        .attr("gen_ai.request.model", "sdxl")
        .body(prompt.clone())
        .emit();
    app.images.lock().expect("images").insert(id, prompt);
    StatusCode::CREATED
}

/// The sensitive route: no durable audit record, no deletion.
async fn delete(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !app.images.lock().expect("images").contains_key(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let audited = app
        .auditor
        .event("image.delete")
        .actor_id(user_of(&headers))
        .target(format!("images/{id}"))
        .outcome(Outcome::Success)
        .emit_durable()
        .await;
    if let Err(error) = audited {
        tracing::error!(%error, image = %id, "deletion refused: it could not be audited");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not deleted: the deletion could not be audited: {error}\n"),
        )
            .into_response();
    }
    app.images.lock().expect("images").remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

/// The caller's user id, from the `x-user-id` header that the service's
/// authenticating proxy sets (`anonymous` without one).
fn user_of(headers: &HeaderMap) -> String {
    headers
        .get("x-user-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned()
}

/// Reads W3C trace context headers from a request.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
