//! The admin HTTP server: health, readiness, Prometheus metrics and the
//! event query API.

use std::sync::Arc;
use std::time::SystemTime;

use auditrail_spool::Spool;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::output::EventsPage;
use crate::query_args::QueryArgs;

#[derive(Clone)]
pub struct AdminState {
    pub spool: Arc<Spool>,
    pub metrics: PrometheusHandle,
    pub trace_url: Option<String>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(events))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.spool.check_quota() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn events(
    State(state): State<AdminState>,
    query: Result<Query<QueryArgs>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(args) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let filter = match args.to_filter(SystemTime::now()) {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    let spool = state.spool.clone();
    let result = tokio::task::spawn_blocking(move || {
        // Read before querying: everything up to it is covered by the query.
        let last_seq = spool.stats().last_seq;
        spool
            .query(&filter)
            .map(|events| (events, last_seq, filter.limit))
    })
    .await;
    match result {
        Ok(Ok((events, last_seq, limit))) => Json(EventsPage::new(
            events,
            last_seq,
            limit,
            state.trace_url.as_deref(),
        ))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}
