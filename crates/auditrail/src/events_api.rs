//! `GET /v1/events`: the query API, and what one query may cost.
//!
//! * A page (`limit` N, at most `[admin] max_page_size`) is the newest N
//!   matches by time, or with `after_seq` the first N above it in seq order.
//! * `limit=0` streams every match above `after_seq` (0 when unset) in seq
//!   order, written to the response as the scan finds it: the scan runs on a
//!   blocking thread and feeds a bounded channel, so memory stays bounded
//!   whatever the number of matches. A client that goes away stops the scan.
//! * Every request may examine at most `[admin] max_scan_events` stored
//!   events and run for at most `[admin] query_timeout`. A newest-N page that
//!   cannot finish within them is refused (422 / 503): what it found so far
//!   need not be the newest. An answer in seq order (a stream, or a page with
//!   `after_seq`) instead ends early with `complete: false`, `stopped_by`,
//!   and the `next_after_seq` to continue from.
//! * At most `[admin] max_concurrent_queries` requests run at once; more get
//!   429 with `Retry-After`. A stream holds its slot until it ends, and the
//!   timeout ends it.
//!
//! Every answer, page or stream, has the line layout of
//! [`crate::output::PageLines`]. The gRPC API's `Query` and `Tail` ask
//! [`Queries::page`] for pages under the same limits and slots.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auditrail_spool::{Budget, Filter, QueryEnd, Spool, SpoolError, Stop};
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::admin::error_response;
use crate::output::{
    event_json, EventView, EventsPage, PageEnd, PageLines, STOPPED_BY_ERROR, STOPPED_BY_TIMEOUT,
};
use crate::query_args::QueryArgs;
use crate::scope::{ReadScope, Tenants};

/// What one query may cost (`[admin]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLimits {
    pub max_page_size: usize,
    pub max_scan_events: u64,
    pub max_concurrent_queries: usize,
    pub query_timeout: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_page_size: 1000,
            max_scan_events: 1_000_000,
            max_concurrent_queries: 4,
            query_timeout: Duration::from_secs(30),
        }
    }
}

/// What a refused client is told to wait (`Retry-After`, seconds).
pub const RETRY_AFTER_SECS: u64 = 1;
/// Events a stream's scan may be ahead of what the client has taken.
const STREAM_QUEUE: usize = 16;
/// A stream's body is cut into chunks of about this size when the scan is
/// ahead of the client (each chunk as soon as it is ready otherwise).
const CHUNK_BYTES: usize = 64 << 10;
/// How long a stream's scan waits, past the deadline, to hand over its last
/// line (the one that says why it stopped).
const END_GRACE: Duration = Duration::from_secs(1);

/// The query API: its limits and its slots.
pub struct Queries {
    limits: QueryLimits,
    slots: Arc<Semaphore>,
}

/// How a query ended, as `auditrail_queries_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Streamed,
    BudgetExceeded,
    Busy,
    Timeout,
    BadRequest,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Streamed => "streamed",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::Busy => "busy",
            Outcome::Timeout => "timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::Error => "error",
        }
    }

    fn count(self, examined: Option<u64>) {
        metrics::counter!("auditrail_queries_total", "result" => self.label()).increment(1);
        if let Some(examined) = examined {
            metrics::histogram!("auditrail_query_events_examined").record(examined as f64);
        }
    }
}

/// Why a query got no answer (see [`QueryRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is wrong: its filters, or a limit over `max_page_size`.
    BadRequest,
    /// Every query slot is taken: retry in [`RETRY_AFTER_SECS`].
    Busy,
    /// A newest-N page would examine more than `max_scan_events`.
    BudgetExceeded,
    /// A newest-N page did not finish within `query_timeout`.
    Timeout,
    /// The spool failed.
    Failed,
}

/// A refused query: what kind of refusal, and the message for the client,
/// which says what to do instead. Counted and logged when made.
#[derive(Debug)]
pub struct QueryRefused {
    pub refusal: Refusal,
    pub message: String,
}

impl Refusal {
    fn outcome(self) -> Outcome {
        match self {
            Refusal::BadRequest => Outcome::BadRequest,
            Refusal::Busy => Outcome::Busy,
            Refusal::BudgetExceeded => Outcome::BudgetExceeded,
            Refusal::Timeout => Outcome::Timeout,
            Refusal::Failed => Outcome::Error,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Busy => StatusCode::TOO_MANY_REQUESTS,
            // What Prometheus answers a query that would load too much.
            Refusal::BudgetExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for QueryRefused {
    fn into_response(self) -> Response {
        let mut response = error_response(self.refusal.status(), self.message);
        if self.refusal == Refusal::Busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        response
    }
}

/// A query let in: the answer for a tenant that asked for another's
/// events, or a query holding its slot.
enum Admitted {
    Nothing(EventsPage),
    Query {
        query: Box<Query>,
        slot: OwnedSemaphorePermit,
        cancel: CancelOnDrop,
    },
}

/// Sets the flag when dropped: the scan of a request whose client went
/// away (its handler or its body dropped) stops at its next look.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Queries {
    pub fn new(limits: QueryLimits) -> Self {
        Queries {
            slots: Arc::new(Semaphore::new(limits.max_concurrent_queries)),
            limits,
        }
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Answers `GET /v1/events` with `args` (or the reason they do not
    /// parse), for a caller that may see `scope`.
    pub async fn answer(
        &self,
        spool: Arc<Spool>,
        trace_url: Option<String>,
        scope: ReadScope,
        args: Result<QueryArgs, String>,
    ) -> Response {
        match self.admit(spool, trace_url, scope, args) {
            Err(refused) => refused.into_response(),
            Ok(Admitted::Nothing(page)) => page_response(&page),
            Ok(Admitted::Query {
                query,
                slot,
                cancel,
            }) => {
                if query.filter.limit == 0 {
                    query.stream(slot, cancel)
                } else {
                    // Dropped with this future, if the client goes away first.
                    let _cancel = cancel;
                    match query.page(slot).await {
                        Ok(page) => page_response(&page),
                        Err(refused) => refused.into_response(),
                    }
                }
            }
        }
    }

    /// One page of `args` (`args.limit` from 1 to `max_page_size`), for a
    /// caller that may see `scope`: what `GET /v1/events` answers without
    /// `limit=0`, under the same limits and slots.
    pub async fn page(
        &self,
        spool: Arc<Spool>,
        trace_url: Option<String>,
        scope: ReadScope,
        args: QueryArgs,
    ) -> Result<EventsPage, QueryRefused> {
        if args.limit == 0 {
            return Err(refuse(
                Refusal::BadRequest,
                "a page holds 1 event or more: limit must not be 0".to_owned(),
            ));
        }
        match self.admit(spool, trace_url, scope, Ok(args))? {
            Admitted::Nothing(page) => Ok(page),
            Admitted::Query {
                query,
                slot,
                cancel,
            } => {
                let _cancel = cancel;
                query.page(slot).await
            }
        }
    }

    /// Checks `args` and the caller's scope, and takes a query slot.
    fn admit(
        &self,
        spool: Arc<Spool>,
        trace_url: Option<String>,
        scope: ReadScope,
        args: Result<QueryArgs, String>,
    ) -> Result<Admitted, QueryRefused> {
        let filter = args
            .and_then(|args| args.to_filter(SystemTime::now()))
            .map_err(|message| refuse(Refusal::BadRequest, message))?;
        let max_page = self.limits.max_page_size;
        if filter.limit > max_page {
            let message = format!(
                "limit={} is more than [admin] max_page_size = {max_page}: ask for at most \
                 {max_page} events a page and continue from the page's next_after_seq \
                 (after_seq=...), or use limit=0 (--limit 0) to stream every match in seq order",
                filter.limit
            );
            return Err(refuse(Refusal::BadRequest, message));
        }
        let mut filter = filter;
        match scope.restrict(filter.tenant.take()) {
            Tenants::All => {}
            Tenants::Only(tenant) => filter.tenant = Some(tenant),
            Tenants::Nothing => return Ok(Admitted::Nothing(nothing_for(&spool, &filter))),
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let max = self.limits.max_concurrent_queries;
            let message = format!(
                "{max} queries are running already, [admin] max_concurrent_queries = {max}; \
                 retry in a moment"
            );
            return Err(refuse(Refusal::Busy, message));
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let budget = Budget {
            max_examined: Some(self.limits.max_scan_events),
            deadline: Some(Instant::now() + self.limits.query_timeout),
            cancel: Some(cancel.clone()),
        };
        Ok(Admitted::Query {
            query: Box::new(Query {
                spool,
                trace_url,
                filter,
                budget,
                limits: self.limits.clone(),
            }),
            slot,
            cancel: CancelOnDrop(cancel),
        })
    }
}

/// One admitted query.
struct Query {
    spool: Arc<Spool>,
    trace_url: Option<String>,
    filter: Filter,
    budget: Budget,
    limits: QueryLimits,
}

impl Query {
    fn deadline(&self) -> Instant {
        self.budget
            .deadline
            .expect("every admitted query has a deadline")
    }

    /// How to narrow a query, said after it ran out of budget or time.
    fn narrow_hint() -> &'static str {
        "narrow it with --since/--until or --actor/--event/--service (since=, until=, actor=, \
         event=, service= over HTTP), which the indexes answer without reading every event, or \
         read in seq order with --limit 0 (limit=0, after_seq=...), which goes on where each \
         request's budget ends"
    }

    fn budget_message(&self, examined: u64) -> String {
        format!(
            "the query examined {examined} stored events, [admin] max_scan_events = {}, without \
             finishing; {}",
            self.limits.max_scan_events,
            Self::narrow_hint()
        )
    }

    fn timeout_message(&self, examined: u64) -> String {
        format!(
            "the query ran for [admin] query_timeout = {}, examining {examined} stored events, \
             without finishing; {}",
            humantime::format_duration(self.limits.query_timeout),
            Self::narrow_hint()
        )
    }

    /// A page: the newest `limit` matches, or the first `limit` above
    /// `after_seq`; all of it is found before the answer is written.
    async fn page(self, slot: OwnedSemaphorePermit) -> Result<EventsPage, QueryRefused> {
        let (spool, filter, budget) =
            (self.spool.clone(), self.filter.clone(), self.budget.clone());
        let found = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            spool.query_within(&filter, &budget)
        })
        .await;
        let (events, end) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(SpoolError::ScanBudgetExceeded { examined })) => {
                Outcome::BudgetExceeded.count(Some(examined));
                return Err(refuse(
                    Refusal::BudgetExceeded,
                    self.budget_message(examined),
                ));
            }
            Ok(Err(SpoolError::QueryTimedOut { examined })) => {
                Outcome::Timeout.count(Some(examined));
                return Err(refuse(Refusal::Timeout, self.timeout_message(examined)));
            }
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(e) => return Err(failed(format!("query task: {e}"))),
        };
        let mut page = EventsPage::new(events, &end, self.trace_url.as_deref());
        let outcome = match end.stop {
            Stop::End | Stop::Limit => Outcome::Ok,
            Stop::Budget => {
                page.end.error = Some(self.stopped_message(&end));
                Outcome::BudgetExceeded
            }
            Stop::Deadline => {
                page.end.error = Some(self.stopped_message(&end));
                Outcome::Timeout
            }
            Stop::Cancelled => Outcome::Error,
        };
        outcome.count(Some(end.events_examined));
        Ok(page)
    }

    /// What the end of an answer in seq order says when it stopped at a limit.
    fn stopped_message(&self, end: &QueryEnd) -> String {
        let (key, value) = match end.stop {
            Stop::Deadline => (
                "query_timeout",
                humantime::format_duration(self.limits.query_timeout).to_string(),
            ),
            _ => ("max_scan_events", self.limits.max_scan_events.to_string()),
        };
        format!(
            "stopped after examining {} stored events, [admin] {key} = {value}; continue with \
             after_seq={}",
            end.events_examined, end.next_after_seq
        )
    }

    /// `limit=0`: every match in seq order, written as it is found.
    fn stream(self, slot: OwnedSemaphorePermit, cancel: CancelOnDrop) -> Response {
        let deadline = self.deadline();
        let after = self.filter.after_seq.unwrap_or(0);
        let (pieces, received) = mpsc::channel::<Piece>(STREAM_QUEUE);
        // The slot is held until both the scan and the body are done (each
        // holds a sender), or until the deadline, whichever comes first.
        let (done, mut all_done) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = all_done.recv() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        });
        let runtime = tokio::runtime::Handle::current();
        let scan_done = done.clone();
        let last_seq = self.spool.stats().last_seq;
        let timeout = humantime::format_duration(self.limits.query_timeout).to_string();
        tokio::task::spawn_blocking(move || {
            let _done = scan_done;
            self.run_stream(&runtime, &pieces);
        });
        let body = BodyState {
            received,
            lines: PageLines::default(),
            head_sent: false,
            finished: false,
            last_seq,
            last_seq_sent: after,
            deadline,
            timeout,
            _done: done,
            _cancel: cancel,
        };
        let stream = futures::stream::unfold(body, |mut body| async move {
            let chunk = body.next_chunk().await?;
            Some((Ok::<_, Infallible>(Bytes::from(chunk)), body))
        });
        json_response(StatusCode::OK, Body::from_stream(stream))
    }

    /// The scan of a stream, on a blocking thread: every match to `pieces`,
    /// then the end.
    fn run_stream(self, runtime: &tokio::runtime::Handle, pieces: &mpsc::Sender<Piece>) {
        let deadline = self.deadline();
        // Waits for room while the client is slower than the scan, but not
        // past `until`: a client that stops reading does not hold the scan.
        let send = |piece: Piece, until: Instant| match pieces.try_send(piece) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(piece)) => runtime
                .block_on(tokio::time::timeout_at(until.into(), pieces.send(piece)))
                .is_ok_and(|sent| sent.is_ok()),
        };
        let last_seq = self.spool.stats().last_seq;
        let mut sent_up_to = self.filter.after_seq.unwrap_or(0);
        let trace_url = self.trace_url.as_deref();
        let scanned = self.spool.scan(&self.filter, &self.budget, |event| {
            let seq = event.seq;
            let json = event_json(&EventView::new(event, trace_url));
            if send(Piece::Event { seq, json }, deadline) {
                sent_up_to = seq;
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        let (end, outcome, examined) = match scanned {
            Ok(end) => {
                let mut page_end = PageEnd::of(&end);
                let timed_out = end.stop == Stop::Deadline
                    || (end.stop == Stop::Cancelled && Instant::now() >= deadline);
                let outcome = if timed_out {
                    page_end.stopped_by = Some(STOPPED_BY_TIMEOUT.into());
                    page_end.error = Some(self.stopped_message(&QueryEnd {
                        stop: Stop::Deadline,
                        ..end
                    }));
                    Outcome::Timeout
                } else if end.stop == Stop::Budget {
                    page_end.error = Some(self.stopped_message(&end));
                    Outcome::BudgetExceeded
                } else {
                    // The end, or a client that went away.
                    Outcome::Streamed
                };
                (page_end, outcome, Some(end.events_examined))
            }
            Err(e) => {
                tracing::error!(error = %e, "a streamed query failed");
                let end = PageEnd {
                    last_seq,
                    next_after_seq: sent_up_to,
                    complete: false,
                    stopped_by: Some(STOPPED_BY_ERROR.into()),
                    error: Some(e.to_string()),
                };
                (end, Outcome::Error, None)
            }
        };
        if outcome != Outcome::Streamed {
            tracing::debug!(
                result = outcome.label(),
                examined,
                next_after_seq = end.next_after_seq,
                "a streamed query stopped early"
            );
        }
        outcome.count(examined);
        send(Piece::End(end), Instant::now().max(deadline) + END_GRACE);
    }
}

/// What a stream's scan hands to its body.
enum Piece {
    Event { seq: u64, json: Vec<u8> },
    End(PageEnd),
}

/// The body of a stream: frames what the scan sends in the page layout.
struct BodyState {
    received: mpsc::Receiver<Piece>,
    lines: PageLines,
    head_sent: bool,
    finished: bool,
    /// The highest seq stored when the stream started.
    last_seq: u64,
    last_seq_sent: u64,
    deadline: Instant,
    /// `query_timeout`, for the end that says it ran out.
    timeout: String,
    /// Dropped with the body: see `Query::stream`.
    _done: mpsc::Sender<()>,
    _cancel: CancelOnDrop,
}

impl BodyState {
    /// The next part of the body: the head at once, then whatever the scan
    /// has ready (at least one piece), up to about [`CHUNK_BYTES`].
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        if !self.head_sent {
            self.head_sent = true;
            return Some(PageLines::HEAD.to_vec());
        }
        let mut out = Vec::new();
        let first = self.received.recv().await;
        self.take(first, &mut out);
        while !self.finished && out.len() < CHUNK_BYTES {
            match self.received.try_recv() {
                Ok(piece) => self.take(Some(piece), &mut out),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.take(None, &mut out),
            }
        }
        Some(out)
    }

    fn take(&mut self, piece: Option<Piece>, out: &mut Vec<u8>) {
        match piece {
            Some(Piece::Event { seq, json }) => {
                self.lines.event(&json, out);
                self.last_seq_sent = seq;
            }
            Some(Piece::End(end)) => {
                self.lines.end(&end, out);
                self.finished = true;
            }
            // The scan is gone without handing over its end: the client
            // had stopped reading until past the deadline (or the scan
            // panicked). Everything up to the last event sent is complete.
            None => {
                let next = self.last_seq_sent;
                let (stopped_by, error) = if Instant::now() >= self.deadline {
                    (
                        STOPPED_BY_TIMEOUT,
                        format!(
                            "stopped after [admin] query_timeout = {} with the client not \
                             reading; continue with after_seq={next}",
                            self.timeout
                        ),
                    )
                } else {
                    (
                        STOPPED_BY_ERROR,
                        "the query stopped unexpectedly".to_owned(),
                    )
                };
                let end = PageEnd {
                    last_seq: self.last_seq,
                    next_after_seq: next,
                    complete: false,
                    stopped_by: Some(stopped_by.into()),
                    error: Some(error),
                };
                self.lines.end(&end, out);
                self.finished = true;
            }
        }
    }
}

/// The answer for a tenant that asked for another tenant's events: none.
fn nothing_for(spool: &Spool, filter: &Filter) -> EventsPage {
    let last_seq = spool.stats().last_seq;
    let end = QueryEnd {
        stop: Stop::End,
        events_examined: 0,
        last_seq,
        next_after_seq: last_seq.max(filter.after_seq.unwrap_or(0)),
    };
    Outcome::Ok.count(Some(0));
    EventsPage::new(Vec::new(), &end, None)
}

fn page_response(page: &EventsPage) -> Response {
    json_response(StatusCode::OK, Body::from(page.to_lines()))
}

fn json_response(status: StatusCode, body: Body) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A refused query: counted, logged, and answered with its reason.
fn refuse(refusal: Refusal, message: String) -> QueryRefused {
    let outcome = refusal.outcome();
    if !matches!(outcome, Outcome::BudgetExceeded | Outcome::Timeout) {
        // (Those two are counted with what they examined.)
        outcome.count(None);
    }
    tracing::warn!(result = outcome.label(), "query refused: {message}");
    QueryRefused { refusal, message }
}

fn failed(message: String) -> QueryRefused {
    Outcome::Error.count(None);
    tracing::error!("query failed: {message}");
    QueryRefused {
        refusal: Refusal::Failed,
        message,
    }
}
