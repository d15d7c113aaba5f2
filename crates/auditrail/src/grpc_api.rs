//! The gRPC API, `auditrail.v1.AuditService` (`proto/auditrail/v1/`),
//! served on the OTLP/gRPC listener beside OTLP's `LogsService`.
//!
//! It is the admin HTTP API under another encoding, and asks the same code
//! for everything: [`crate::admin_auth::authorize`] decides who calls and
//! what they may see, [`crate::events_api::Queries::page`] answers `Query` and each poll of
//! `Tail` under the query limits and slots, and `Verify` and the dead-letter
//! methods call what `POST /v1/verify` and `/v1/dead-letters` call. Each
//! call that passes auth is recorded as an `auditrail.admin.request` event
//! when `[admin] record_requests` is on.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use auditrail_api::v1::audit_service_server::{AuditService, AuditServiceServer};
use auditrail_api::v1::{
    self as api, tail_request, ListDeadLettersRequest, ListDeadLettersResponse, QueryRequest,
    QueryResponse, ReplayDeadLettersRequest, ReplayDeadLettersResponse, TailRequest, TailResponse,
    VerifyRequest, VerifyResponse,
};
use auditrail_spool::{DeadLetter, ProblemKind, VerifyReport};
use axum::extract::State;
use axum::middleware::Next;
use futures::Stream;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::admin::AdminState;
use crate::admin_auth::{guard_as, AdminAuth, Asks, Caller, Refused};
use crate::events_api::{QueryRefused, Refusal, RETRY_AFTER_SECS};
use crate::integrity::{verify_recorded, VerifyFailed};
use crate::output::{EventView, EventsPage, PageEnd};
use crate::query_args::QueryArgs;
use crate::scope::ReadScope;

/// Adds the API to `routes` (the OTLP/gRPC listener's), behind `auth`,
/// over the admin API's `state`. `stopping` turns true at shutdown, which
/// ends every `Tail` (a stream that would otherwise hold the shutdown until
/// its drain timeout).
pub fn add_to(
    routes: Routes,
    state: AdminState,
    auth: AdminAuth,
    stopping: watch::Receiver<bool>,
) -> Routes {
    let api = AuditServiceServer::new(Api { state, stopping });
    // Where tonic's `Routes::add_service` would put it, with the guard in
    // front: a call it refuses ends with UNAUTHENTICATED, PERMISSION_DENIED
    // or UNAVAILABLE before any of it is read; a call it lets through
    // carries its `ReadScope` and `Caller`.
    let path = format!("/{}/{{*rest}}", AuditServiceServer::<Api>::NAME);
    let guarded = axum::Router::new()
        .route_service(&path, api)
        .layer(axum::middleware::from_fn_with_state(auth, guard));
    Routes::from(routes.into_axum_router().merge(guarded))
}

/// The implementation of `AuditService`.
pub struct Api {
    state: AdminState,
    stopping: watch::Receiver<bool>,
}

/// The gRPC methods that change state or read every tenant's events: the
/// operator's, as their HTTP twins (POST) are.
const OPERATOR_METHODS: &[&str] = &["Verify", "ReplayDeadLetters"];

/// What a call asks, by its method (the last part of its path).
fn asks_of(path: &str) -> Asks {
    let method = path.rsplit('/').next().unwrap_or("");
    if OPERATOR_METHODS.contains(&method) {
        Asks::ChangeState
    } else {
        Asks::Read
    }
}

/// The admin API's guard, in gRPC's terms.
async fn guard(
    State(auth): State<AdminAuth>,
    request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    let asks = |head: &http::request::Parts| asks_of(head.uri.path());
    let refusal = |refused: Refused| refused_status(&refused).into_http();
    guard_as(&auth, request, next, asks, refusal).await
}

/// The status of a call the admin API's auth refused.
fn refused_status(refused: &Refused) -> Status {
    let message = refused.to_string();
    match refused {
        Refused::Unauthenticated(_) => Status::unauthenticated(message),
        Refused::Unavailable(_) => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(5))),
        ),
        Refused::NotOperator { .. }
        | Refused::ForeignHost(_)
        | Refused::CrossSite(_)
        | Refused::NotLoopback => Status::permission_denied(message),
    }
}

/// The status of a refused query: the HTTP API's refusals in gRPC's codes.
fn query_status(refused: QueryRefused) -> Status {
    match refused.refusal {
        Refusal::BadRequest => Status::invalid_argument(refused.message),
        Refusal::Busy => Status::with_error_details(
            Code::ResourceExhausted,
            refused.message,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(RETRY_AFTER_SECS))),
        ),
        // No retry hint: the same query would run out again.
        Refusal::BudgetExceeded => Status::resource_exhausted(refused.message),
        Refusal::Timeout => Status::deadline_exceeded(refused.message),
        Refusal::Failed => Status::internal(refused.message),
    }
}

/// What the guard decided about a call; a call without it (which the
/// guard never lets through) is refused, not read as the operator's.
fn caller_of<T>(request: &Request<T>) -> Result<(ReadScope, Caller), Status> {
    let scope = request.extensions().get::<ReadScope>().cloned();
    let caller = request.extensions().get::<Caller>().cloned();
    scope
        .zip(caller)
        .ok_or_else(|| Status::internal("the call's caller was not decided"))
}

/// The query words of `filter`, as `GET /v1/events` takes them.
fn query_args(filter: Option<api::EventFilter>, limit: usize, after_seq: Option<u64>) -> QueryArgs {
    let f = filter.unwrap_or_default();
    QueryArgs {
        since: f.since,
        until: f.until,
        event: f.event,
        actor: f.actor,
        service: f.service,
        outcome: f.outcome,
        trace_id: f.trace_id,
        text: f.text,
        target: f.target,
        tenant: f.tenant,
        limit,
        after_seq,
    }
}

impl Api {
    /// One page, within the caller's scope and the query limits.
    async fn page(&self, scope: ReadScope, args: QueryArgs) -> Result<EventsPage, Status> {
        let state = &self.state;
        state
            .queries
            .page(state.spool.clone(), state.trace_url.clone(), scope, args)
            .await
            .map_err(query_status)
    }

    /// Records the call in the trail (`[admin] record_requests`): who, from
    /// where, which method with which parameters, and its status.
    async fn record<T>(
        &self,
        caller: &Caller,
        method: &str,
        parameters: &impl serde::Serialize,
        answer: &Result<T, Status>,
    ) {
        if !self.state.record_requests {
            return;
        }
        let code = match answer {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        let path = format!("/{}/{method}", AuditServiceServer::<Api>::NAME);
        let parameters = serde_json::to_string(parameters).unwrap_or_default();
        let event = crate::operator::admin_request_event(Some(caller), &path, code == Code::Ok)
            .attr("rpc.system", "grpc")
            .attr("rpc.service", AuditServiceServer::<Api>::NAME)
            .attr("rpc.method", method)
            .attr("rpc.grpc.status_code", code as i64)
            .attr("auditrail.request", parameters.as_str())
            .body(format!(
                "gRPC {path} {parameters} by {}: {code:?}",
                caller.subject
            ));
        // Counted and logged by `record` when it fails; the answer goes out
        // anyway, as the HTTP API's does.
        let _ = self
            .state
            .spool
            .record(event.build(crate::operator::now_unix_nano()))
            .await;
    }
}

/// How often a `Tail` asks for new events at most, however fast they are
/// stored: each ask is a query, under the query slots.
const TAIL_MIN_INTERVAL: Duration = Duration::from_millis(100);

type TailStream = Pin<Box<dyn Stream<Item = Result<TailResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Api {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let (scope, caller) = caller_of(&request)?;
        let request = request.into_inner();
        let limit = request
            .limit
            .map_or_else(crate::query_args::default_limit, |limit| limit as usize);
        let args = query_args(request.filter, limit, request.after_seq);
        let answer = self.page(scope, args.clone()).await.map(|page| {
            Response::new(QueryResponse {
                events: page.events.into_iter().map(event).collect(),
                end: Some(page_end(page.end)),
            })
        });
        self.record(&caller, "Query", &args, &answer).await;
        answer
    }

    type TailStream = TailStream;

    async fn tail(&self, request: Request<TailRequest>) -> Result<Response<TailStream>, Status> {
        let (scope, caller) = caller_of(&request)?;
        let request = request.into_inner();
        let page_size = self.state.queries.limits().max_page_size;
        let args = query_args(request.filter, page_size, None);
        let start = request.start;
        let answer = self.start_tail(scope, args.clone(), start).await;
        let parameters = match start {
            Some(tail_request::Start::Backlog(n)) => {
                serde_json::json!({ "filter": args, "backlog": n })
            }
            Some(tail_request::Start::AfterSeq(n)) => {
                serde_json::json!({ "filter": args, "after_seq": n })
            }
            None => serde_json::json!({ "filter": args }),
        };
        self.record(&caller, "Tail", &parameters, &answer).await;
        answer.map(|tail| Response::new(Box::pin(tail.stream()) as TailStream))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let (_, caller) = caller_of(&request)?;
        let pubkey = request.into_inner().pubkey;
        let answer = verify_recorded(&self.state, pubkey.as_deref(), &caller.subject)
            .await
            .map(|verified| {
                Response::new(verify_response(
                    verified.intact,
                    &verified.report,
                    verified.summary,
                    verified.text,
                ))
            })
            .map_err(|e| match e {
                VerifyFailed::BadKey(_) => Status::invalid_argument(e.to_string()),
                VerifyFailed::Unavailable(_) => Status::unavailable(e.to_string()),
                VerifyFailed::Task(_) => Status::internal(e.to_string()),
            });
        let parameters = serde_json::json!({ "pubkey": pubkey });
        self.record(&caller, "Verify", &parameters, &answer).await;
        answer
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let (scope, caller) = caller_of(&request)?;
        let ListDeadLettersRequest { sink, tenant } = request.into_inner();
        let parameters = serde_json::json!({ "sink": sink, "tenant": tenant });
        let answer = crate::admin::list_dead_letters(&self.state.spool, scope, sink, tenant)
            .await
            .map(|letters| {
                Response::new(ListDeadLettersResponse {
                    dead_letters: letters.into_iter().map(dead_letter).collect(),
                })
            })
            .map_err(Status::internal);
        self.record(&caller, "ListDeadLetters", &parameters, &answer)
            .await;
        answer
    }

    async fn replay_dead_letters(
        &self,
        request: Request<ReplayDeadLettersRequest>,
    ) -> Result<Response<ReplayDeadLettersResponse>, Status> {
        let (_, caller) = caller_of(&request)?;
        let sink = request.into_inner().sink;
        let answer =
            crate::admin::replay_dead_letters(&self.state.spool, sink.as_deref(), &caller.subject)
                .await
                .map(|marked| {
                    Response::new(ReplayDeadLettersResponse {
                        marked: marked as u64,
                    })
                })
                .map_err(Status::internal);
        let parameters = serde_json::json!({ "sink": sink });
        self.record(&caller, "ReplayDeadLetters", &parameters, &answer)
            .await;
        answer
    }
}

/// A `Tail` under way: what it has found and not sent yet, and where it
/// goes on from.
struct Tail {
    state: AdminState,
    scope: ReadScope,
    args: QueryArgs,
    /// The highest seq looked at: the next ask is for what is above it.
    after: u64,
    found: VecDeque<EventView>,
    /// The spool's durable seq, which moves when events are stored.
    stored: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    /// A refusal to end the stream with, after what was found before it.
    failed: Option<Status>,
}

impl Api {
    /// Checks the filter and the caller's scope with a first ask (so that
    /// a bad filter fails the call itself), from where `start` says.
    async fn start_tail(
        &self,
        scope: ReadScope,
        args: QueryArgs,
        start: Option<tail_request::Start>,
    ) -> Result<Tail, Status> {
        let spool = &self.state.spool;
        let mut stored = spool.subscribe_durable();
        stored.borrow_and_update();
        let (found, after) = match start {
            Some(tail_request::Start::Backlog(newest)) if newest > 0 => {
                let args = QueryArgs {
                    limit: newest as usize,
                    ..args.clone()
                };
                let page = self.page(scope.clone(), args).await?;
                (page.events, page.end.next_after_seq)
            }
            Some(tail_request::Start::AfterSeq(after)) => (Vec::new(), after),
            Some(tail_request::Start::Backlog(_)) | None => (Vec::new(), spool.stats().last_seq),
        };
        let mut tail = Tail {
            state: self.state.clone(),
            scope,
            args,
            after,
            found: found.into(),
            stored,
            stopping: self.stopping.clone(),
            failed: None,
        };
        tail.ask().await?;
        Ok(tail)
    }
}

impl Tail {
    /// Asks for the matches above `after`, adding them to `found`; whether
    /// there may be more right away.
    async fn ask(&mut self) -> Result<bool, Status> {
        let args = QueryArgs {
            after_seq: Some(self.after),
            ..self.args.clone()
        };
        let page = self
            .state
            .queries
            .page(
                self.state.spool.clone(),
                self.state.trace_url.clone(),
                self.scope.clone(),
                args,
            )
            .await;
        match page {
            Ok(page) => {
                let more = !page.events.is_empty() || page.end.can_continue();
                self.after = self.after.max(page.end.next_after_seq);
                self.found.extend(page.events);
                Ok(more)
            }
            // Every slot is taken: this tail waits its turn, as a client
            // told to retry would.
            Err(refused) if refused.refusal == Refusal::Busy => {
                tokio::time::sleep(Duration::from_secs(RETRY_AFTER_SECS)).await;
                Ok(true)
            }
            Err(refused) => Err(query_status(refused)),
        }
    }

    /// The next event to send; `Err` ends the stream with that status.
    async fn next(&mut self) -> Option<Result<TailResponse, Status>> {
        loop {
            if let Some(view) = self.found.pop_front() {
                return Some(Ok(TailResponse {
                    event: Some(event(view)),
                }));
            }
            if let Some(status) = self.failed.take() {
                return Some(Err(status));
            }
            // Marked as seen before asking: what is stored after the ask
            // wakes the wait below.
            self.stored.borrow_and_update();
            match self.ask().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(status) => {
                    self.failed = Some(status);
                    continue;
                }
            }
            tokio::select! {
                changed = self.stored.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    tokio::time::sleep(TAIL_MIN_INTERVAL).await;
                }
                () = stopped(&mut self.stopping) => {
                    return Some(Err(Status::unavailable(format!(
                        "auditrail is shutting down; resume with start.after_seq = {}",
                        self.after
                    ))));
                }
            }
        }
    }

    fn stream(self) -> impl Stream<Item = Result<TailResponse, Status>> + Send {
        futures::stream::unfold(Some(self), |tail| async move {
            let mut tail = tail?;
            let next = tail.next().await?;
            // After an error, the stream ends.
            let keep = next.is_ok().then_some(tail);
            Some((next, keep))
        })
    }
}

/// Resolves once `stopping` turns true (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // (Not holding the value's guard past this function.)
    let _ = stopping.wait_for(|stop| *stop).await.is_ok();
}

/// An event with the canonical fields, its trace link, and its attributes
/// both as JSON objects and as the canonical text they are hashed as.
fn event(view: EventView) -> api::Event {
    let e = view.event;
    api::Event {
        attributes: json_object(&e.attributes),
        resource_attributes: json_object(&e.resource_attributes),
        node: e.node,
        seq: e.seq,
        event_id: e.event_id,
        time_unix_nano: e.time_unix_nano,
        observed_time_unix_nano: e.observed_time_unix_nano,
        received_time_unix_nano: e.received_time_unix_nano,
        tenant: e.tenant,
        service_name: e.service_name,
        event_name: e.event_name,
        severity_number: e.severity_number,
        severity_text: e.severity_text,
        actor_id: e.actor_id,
        actor_name: e.actor_name,
        client_address: e.client_address,
        outcome: e.outcome.as_str().to_owned(),
        target: e.target,
        trace_id: e.trace_id,
        span_id: e.span_id,
        trace_flags: e.trace_flags,
        body: e.body,
        scope_name: e.scope_name,
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
        trace_url: view.trace_url.unwrap_or_default(),
        attributes_json: e.attributes,
        resource_attributes_json: e.resource_attributes,
    }
}

/// Canonical JSON object text as a `google.protobuf.Struct`.
fn json_object(text: &str) -> Option<prost_types::Struct> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(fields)) => Some(json_struct(fields)),
        _ => None,
    }
}

fn json_struct(fields: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(key, value)| (key, json_value(value)))
            .collect(),
    }
}

fn json_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(values) => Kind::ListValue(prost_types::ListValue {
            values: values.into_iter().map(json_value).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(json_struct(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn page_end(end: PageEnd) -> api::PageEnd {
    api::PageEnd {
        last_seq: end.last_seq,
        next_after_seq: end.next_after_seq,
        complete: end.complete,
        stopped_by: end.stopped_by.unwrap_or_default(),
        error: end.error.unwrap_or_default(),
    }
}

fn dead_letter(letter: DeadLetter) -> api::DeadLetter {
    api::DeadLetter {
        sink: letter.sink,
        seq: letter.seq,
        reason: letter.reason,
        dead_lettered_unix_nano: letter.dead_lettered_unix_nano,
        replay_queued: letter.replay,
        event: Some(event(EventView::new(letter.event, None))),
    }
}

fn verify_response(
    intact: bool,
    report: &VerifyReport,
    summary: String,
    text: String,
) -> VerifyResponse {
    let kind = |kind: ProblemKind| match kind {
        ProblemKind::Missing => api::ProblemKind::Missing,
        ProblemKind::Reordered => api::ProblemKind::Reordered,
        ProblemKind::Inserted => api::ProblemKind::Inserted,
        ProblemKind::Modified => api::ProblemKind::Modified,
        ProblemKind::Unlinked => api::ProblemKind::Unlinked,
        ProblemKind::Unreadable => api::ProblemKind::Unreadable,
        ProblemKind::BadCheckpoint => api::ProblemKind::BadCheckpoint,
    };
    let checkpoints = &report.checkpoints;
    VerifyResponse {
        intact,
        problems: report
            .problems
            .iter()
            .map(|p| api::Problem {
                seq: p.seq,
                kind: kind(p.kind).into(),
                count: p.count,
                detail: p.detail.clone(),
            })
            .collect(),
        truncated: report.truncated,
        events: report.events,
        first_seq: report.first_seq.unwrap_or(0),
        last_seq: report.last_seq.unwrap_or(0),
        checkpoints: Some(api::Checkpoints {
            total: checkpoints.total,
            valid: checkpoints.valid,
            signatures_checked: checkpoints.signatures_checked,
            unsigned_tail: checkpoints.unsigned_tail,
        }),
        summary,
        report: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_and_replay_are_the_operators() {
        assert_eq!(
            asks_of("/auditrail.v1.AuditService/ReplayDeadLetters"),
            Asks::ChangeState
        );
        assert_eq!(
            asks_of("/auditrail.v1.AuditService/Verify"),
            Asks::ChangeState
        );
        for read in ["Query", "Tail", "ListDeadLetters", "Unknown"] {
            assert_eq!(
                asks_of(&format!("/auditrail.v1.AuditService/{read}")),
                Asks::Read
            );
        }
    }

    #[test]
    fn attributes_become_json_objects() {
        let object = json_object(r#"{"a":1,"b":["x",true],"c":{"d":null}}"#).unwrap();
        assert_eq!(object.fields.len(), 3);
        assert_eq!(
            object.fields["a"].kind,
            Some(prost_types::value::Kind::NumberValue(1.0))
        );
        assert!(json_object("not json").is_none());
    }
}
