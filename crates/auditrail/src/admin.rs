//! The admin HTTP server: health, readiness, Prometheus metrics, the
//! event query API and the search page (`/ui`, see [`crate::ui`]).

use std::sync::Arc;

use auditrail_exporters::{ForgetError, Pipeline};
use auditrail_spool::Spool;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin_auth::{self, AdminAuth};
use crate::events_api::Queries;
use crate::query_args::QueryArgs;
use crate::scope::{ReadScope, Tenants};

#[derive(Clone)]
pub struct AdminState {
    pub spool: Arc<Spool>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: PrometheusHandle,
    pub trace_url: Option<String>,
    /// The query API's limits and slots (see `events_api.rs`).
    pub queries: Arc<Queries>,
    /// This node's checkpoint verifier key, for `POST /v1/verify`.
    pub verifier: Option<Arc<auditrail_integrity::VerifierKey>>,
    /// `[admin] record_requests`: each `/v1/` request is an event.
    pub record_requests: bool,
}

/// The admin API, every route behind `auth` (see [`crate::admin_auth`]).
pub fn router(state: AdminState, auth: AdminAuth) -> Router {
    let routes = operations_router(state.clone())
        .route("/v1/events", get(events))
        .route("/v1/proof", get(crate::integrity::proof_handler))
        .route(
            "/v1/checkpoints",
            get(crate::integrity::checkpoints_handler),
        )
        .route("/v1/verify", post(crate::integrity::verify_handler))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/replay", post(replay_handler))
        .route("/v1/sinks/{name}/forget", post(forget_sink))
        .merge(crate::ui::router())
        .with_state(state.clone());
    // Inside the auth: only requests that got past it, with their caller.
    let routes = if state.record_requests {
        routes.layer(axum::middleware::from_fn_with_state(
            state.spool.clone(),
            crate::operator::record_request,
        ))
    } else {
        routes
    };
    routes.layer(axum::middleware::from_fn_with_state(
        auth,
        admin_auth::guard,
    ))
}

/// Health, readiness and metrics alone: what `[admin] metrics_addr` serves,
/// open to whoever reaches it (it shows no event).
pub fn operations_router(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready means events are accepted: 503 over the disk quota, or while the
/// spool is stopped after a failed fsync or write or a crashed spool thread
/// (until a restart, or until a full disk has space again; `spool.error`
/// says which). A failing sink does not make the node
/// unready (ingest goes on and the sink catches up later, which is the
/// point); it shows in `sinks`, with its error.
async fn readyz(State(state): State<AdminState>) -> Response {
    let accepting = state.spool.check_accepting();
    let status = if accepting.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let pipeline = state.pipeline.clone();
    let removed = on_spool(move || pipeline.removed_sinks())
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the removed sinks failed");
            Vec::new()
        });
    let body = serde_json::json!({
        "ready": accepting.is_ok(),
        "spool": {
            "accepting": accepting.is_ok(),
            "error": accepting.err().map(|e| e.to_string()),
            "identity": state.spool.identity(),
        },
        "sinks": state.pipeline.statuses(),
        "removed_sinks": removed,
    });
    (status, Json(body)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct SinkParam {
    sink: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct DeadLetterParams {
    sink: Option<String>,
    /// The events' tenant.
    tenant: Option<String>,
}

/// `GET /v1/dead-letters[?sink=…][&tenant=…]`, within the caller's scope.
async fn dead_letters(
    State(state): State<AdminState>,
    scope: Option<Extension<ReadScope>>,
    Query(param): Query<DeadLetterParams>,
) -> Response {
    list_dead_letters(&state.spool, ReadScope::of(scope), param.sink, param.tenant)
        .await
        .map_or_else(internal_error, |letters| {
            Json(serde_json::json!({ "dead_letters": letters })).into_response()
        })
}

/// The dead letters of `sink` (else every sink's) whose events are of
/// `tenant` (else any), as far as `scope` may see them.
pub async fn list_dead_letters(
    spool: &Arc<Spool>,
    scope: ReadScope,
    sink: Option<String>,
    tenant: Option<String>,
) -> Result<Vec<auditrail_spool::DeadLetter>, String> {
    let tenant = match scope.restrict(tenant) {
        Tenants::All => None,
        Tenants::Only(tenant) => Some(tenant),
        Tenants::Nothing => return Ok(Vec::new()),
    };
    let spool = spool.clone();
    on_spool(move || spool.dead_letters(sink.as_deref(), tenant.as_deref())).await
}

/// `POST /v1/dead-letters/replay[?sink=…]`: see [`replay_dead_letters`].
async fn replay_handler(
    State(state): State<AdminState>,
    caller: Option<Extension<crate::admin_auth::Caller>>,
    Query(param): Query<SinkParam>,
) -> Response {
    let subject = caller.map_or(crate::admin_auth::ANONYMOUS.to_owned(), |c| c.0.subject);
    replay_dead_letters(&state.spool, param.sink.as_deref(), &subject)
        .await
        .map_or_else(internal_error, |marked| {
            Json(serde_json::json!({ "marked": marked })).into_response()
        })
}

/// Marks the dead letters of `sink` (else of every sink) for replay, and
/// leaves a tombstone in the trail that says `subject` replayed how many
/// of which sink's. Returns how many were marked.
pub async fn replay_dead_letters(
    spool: &Arc<Spool>,
    sink: Option<&str>,
    subject: &str,
) -> Result<usize, String> {
    let marking = spool.clone();
    let owned = sink.map(str::to_owned);
    let marked = on_spool(move || marking.request_replay(owned.as_deref())).await?;
    let sink = sink.unwrap_or("*");
    let tombstone = auditrail_model::internal::InternalEvent::new(
        auditrail_model::internal::TOMBSTONE,
        auditrail_model::internal::INTERNAL_TENANT,
    )
    .actor(subject)
    .outcome(auditrail_model::Outcome::Success)
    .attr(
        "auditrail.tombstone.kind",
        vec!["dead_letter_replay".to_owned()],
    )
    .attr("auditrail.sink", sink)
    .attr("auditrail.count", marked)
    .body(format!(
        "{subject} replayed {marked} dead letters of sink {sink}"
    ))
    .build(crate::operator::now_unix_nano());
    // Counted and logged by `record` when it fails.
    let _ = spool.record(tombstone).await;
    Ok(marked)
}

/// `POST /v1/sinks/NAME/forget`: removes the cursor and dead letters of a
/// sink that is no longer configured.
async fn forget_sink(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let pipeline = state.pipeline.clone();
    let forgotten = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || pipeline.forget(&name)).await
    };
    match forgotten {
        Ok(Ok(forgotten)) => Json(serde_json::json!({
            "forgotten": name,
            "cursor": forgotten.cursor,
            "dead_letters": forgotten.dead_letters,
        }))
        .into_response(),
        Ok(Err(e)) => {
            let status = match &e {
                ForgetError::StillConfigured(_) => StatusCode::CONFLICT,
                ForgetError::Unknown(_) => StatusCode::NOT_FOUND,
                ForgetError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error_response(status, format!("{:#}", anyhow::Error::from(e)))
        }
        Err(e) => internal_error(e.to_string()),
    }
}

/// Runs a (blocking) spool call off the async workers.
async fn on_spool<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, auditrail_spool::SpoolError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn internal_error(message: String) -> Response {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// Every error the admin API answers: `{"error": message}` with `status`.
pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Removed sinks have no delivery loop to keep their gauges current.
    let pipeline = state.pipeline.clone();
    let _ = on_spool(move || pipeline.removed_sinks()).await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/events`: see `events_api.rs`.
async fn events(
    State(state): State<AdminState>,
    scope: Option<Extension<ReadScope>>,
    query: Result<Query<QueryArgs>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let args = query.map(|Query(args)| args).map_err(|e| e.body_text());
    state
        .queries
        .answer(
            state.spool.clone(),
            state.trace_url.clone(),
            ReadScope::of(scope),
            args,
        )
        .await
}
