//! A protocol double of Splunk's HTTP Event Collector (HEC), for tests and
//! benchmarks: Splunk cannot be installed on these machines.
//!
//! It follows Splunk's documented wire behaviour, and only that:
//!
//! * Endpoints and bodies: `POST /services/collector/event` (and its alias
//!   `/services/collector`) takes one or more JSON event objects
//!   concatenated in one body (`time`, `host`, `source`, `sourcetype`,
//!   `index`, `event`, `fields`); `POST /services/collector/ack` takes
//!   `{"acks":[0,1,2]}` and answers `{"acks":{"0":true,"1":false,"2":true}}`;
//!   `GET /services/collector/health` answers `{"text":"HEC is healthy","code":17}`.
//!   REST API reference, "services/collector/event" and
//!   "services/collector/ack":
//!   <https://docs.splunk.com/Documentation/Splunk/latest/RESTREF/RESTinput>
//! * The answers and their codes, from the table "Possible error codes" of
//!   Troubleshoot HTTP Event Collector
//!   (<https://docs.splunk.com/Documentation/Splunk/latest/Data/TroubleshootHTTPEventCollector>):
//!   0 200 Success; 2 401 Token is required; 3 401 Invalid authorization;
//!   4 403 Invalid token; 5 400 No data; 6 400 Invalid data format (with
//!   `invalid-event-number`, the 0-based index of the first bad event);
//!   7 400 Incorrect index; 9 503 Server is busy; 10 400 Data channel is
//!   missing; 11 400 Invalid data channel; 12 400 Event field is required;
//!   13 400 Event field cannot be blank; 14 400 ACK is disabled.
//! * Indexer acknowledgement, from About HTTP Event Collector Indexer
//!   Acknowledgment
//!   (<https://docs.splunk.com/Documentation/Splunk/latest/Data/AboutHECIDXAck>):
//!   it is a property of the token; with it on, every request must name a
//!   channel (a GUID, in `X-Splunk-Request-Channel` or `?channel=`), else
//!   code 10 (11 for one that is not a GUID); each accepted request
//!   answers `{"text":"Success","code":0,"ackId":N}`, the ids counting up
//!   from 0 *per channel* (ids of one channel say nothing of another); an
//!   ack query reports `true` for an id once its events are indexed, and
//!   HEC then forgets it, so the next query about it says `false`, as it
//!   does for an id it never gave out (Apache NiFi's
//!   QuerySplunkIndexingStatus notes the same: "Splunk serves information
//!   only about successful acknowledgement. In every other case it will
//!   return a value of false. This includes unsuccessful or ongoing
//!   indexing and unknown acknowledgement identifiers."). With the token's
//!   acknowledgement off, `/event` answers without `ackId` and `/ack`
//!   answers 400 code 14 "ACK is disabled". Pending acks live in memory:
//!   a restart of the double forgets them (its ids then answer false).
//! * Server busy is 503 `{"text":"Server is busy","code":9}` (what HEC
//!   answers while its queues are full); Splunk may or may not send
//!   `Retry-After`, so a knob says.
//!
//! Where the docs say nothing, the double takes the case that is worst
//! for the sender: on an invalid event (code 6) the events before it in
//! the request are indexed anyway (the answer says nothing of them, and
//! carries no ack id), so a sender that resends them indexes them twice;
//! and a stop (a crash of Splunk) loses the events of every request whose
//! ack was not yet reported true, since only a true ack says that events
//! are safe (a sender that counted the 200 loses them).
//!
//! Knobs ([`Knobs`]) make it misbehave the ways a sender must survive:
//! acks that come late (after N polls, or held until released), acks that
//! never come for the first K requests (their events lost, as when an
//! indexer dies before committing), acknowledgement switched off on the
//! token, busy and throttled answers, a poison event. Everything indexed
//! is recorded, duplicates included, for the tests to check.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// An answer the double gives instead of taking the next requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

impl Refusal {
    /// 503 code 9, "Server is busy".
    pub fn busy(retry_after: Option<&str>) -> Refusal {
        Refusal {
            status: 503,
            body: r#"{"text":"Server is busy","code":9}"#.into(),
            retry_after: retry_after.map(str::to_owned),
        }
    }

    /// 429 from a proxy or gateway in front of HEC (HEC itself has no code
    /// for it).
    pub fn throttled(retry_after: Option<&str>) -> Refusal {
        Refusal {
            status: 429,
            body: "Too Many Requests".into(),
            retry_after: retry_after.map(str::to_owned),
        }
    }
}

/// How the double behaves; change it any time with [`HecDouble::knobs`].
#[derive(Debug, Clone)]
pub struct Knobs {
    /// The HEC token it accepts (`Authorization: Splunk <token>`).
    pub token: String,
    /// The token has indexer acknowledgement on.
    pub acks: bool,
    /// Indexes allowed to the token; empty means any.
    pub allowed_indexes: Vec<String>,
    /// An ack id reports true only from this many queries about it on
    /// (0 or 1: the first query after indexing).
    pub ack_after_polls: u32,
    /// While set, no ack id reports true (the events are indexed, the
    /// indexer has not confirmed them yet).
    pub hold_acks: bool,
    /// The first this many accepted requests (counted from start) are
    /// answered with an ack id, but their events are lost and their ack
    /// never comes.
    pub lose_first: usize,
    /// The next requests to `/event` get these answers, one each.
    pub refuse_next: VecDeque<Refusal>,
    /// An event whose `event` holds this text is invalid data (code 6).
    pub poison_marker: Option<String>,
    /// Keep every indexed event's JSON (tests); the benchmark keeps only
    /// counts and ids.
    pub keep_events: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            token: "00000000-0000-4000-8000-000000000001".into(),
            acks: true,
            allowed_indexes: Vec::new(),
            ack_after_polls: 0,
            hold_acks: false,
            lose_first: 0,
            refuse_next: VecDeque::new(),
            poison_marker: None,
            keep_events: true,
        }
    }
}

/// One event as it was indexed.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// The `/event` request that carried it, numbered from 1.
    pub request: usize,
    /// `event.event_id`, when the event is an object that has one.
    pub event_id: String,
    pub channel: Option<String>,
    pub index: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub host: Option<String>,
    /// The whole HEC event (`time`, `host`, `event`, `fields`...), when
    /// [`Knobs::keep_events`].
    pub json: Option<Value>,
}

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// `event` or `ack`.
    pub endpoint: &'static str,
    pub status: u16,
    pub channel: Option<String>,
    /// `/event`: the ack id given; `/ack`: none.
    pub ack_id: Option<u64>,
    /// `/event`: the event ids of the request; `/ack`: the ids asked about.
    pub ids: Vec<String>,
    /// `/ack`: the ids answered true.
    pub acked: Vec<u64>,
}

#[derive(Debug, Default)]
struct Channel {
    next_ack_id: u64,
    /// Ack id → queries about it so far, while it is not yet reported.
    pending: HashMap<u64, Pending>,
}

#[derive(Debug)]
struct Pending {
    polls: u32,
    /// Its events were lost: it never reports true.
    lost: bool,
    /// The request that got this id (see [`Indexed::request`]).
    request: usize,
}

/// Everything the double holds.
#[derive(Debug, Default)]
pub struct Books {
    pub knobs: Knobs,
    /// Every indexed event, in order, duplicates included.
    pub indexed: Vec<Indexed>,
    /// Event id → times indexed.
    pub counts: HashMap<String, usize>,
    pub requests: Vec<Seen>,
    /// Requests taken (answered 200) on `/event`, for `lose_first`.
    accepted: usize,
    /// `/event` requests so far, to number them.
    received: usize,
    /// Event copies of requests whose ack is not reported yet, by request,
    /// lost if the double stops first.
    unconfirmed: HashMap<usize, Vec<String>>,
    channels: HashMap<String, Channel>,
}

impl Books {
    /// How many copies of the event `id` are indexed.
    pub fn copies(&self, id: &str) -> usize {
        self.counts.get(id).copied().unwrap_or(0)
    }

    /// The `/ack` queries so far.
    pub fn ack_queries(&self) -> impl Iterator<Item = &Seen> {
        self.requests.iter().filter(|r| r.endpoint == "ack")
    }

    /// The `/event` requests so far.
    pub fn event_requests(&self) -> impl Iterator<Item = &Seen> {
        self.requests.iter().filter(|r| r.endpoint == "event")
    }

    /// Ack ids given out and not yet reported true (lost ones included).
    pub fn unreported_acks(&self) -> usize {
        self.channels.values().map(|c| c.pending.len()).sum()
    }
}

type Shared = Arc<Mutex<Books>>;

/// A running (or stopped) double, on one port for its whole life.
pub struct HecDouble {
    books: Shared,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HecDouble {
    /// Starts on a free port of 127.0.0.1, in a runtime of its own (so a
    /// test's runtime need not drive it, and stopping it ends every
    /// connection, as a stopped server would).
    pub fn start(knobs: Knobs) -> HecDouble {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        HecDouble::start_on(addr, knobs)
    }

    /// Starts on `addr`.
    pub fn start_on(addr: SocketAddr, knobs: Knobs) -> HecDouble {
        let books = Shared::new(Mutex::new(Books {
            knobs,
            ..Books::default()
        }));
        let mut double = HecDouble {
            books,
            addr,
            runtime: None,
        };
        double.restart();
        double
    }

    /// `http://127.0.0.1:PORT`: what the sink's `url` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and drops every connection. What was indexed stays;
    /// pending acks are forgotten, as a restarted Splunk forgets them.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let mut books = self.books();
        books.channels.clear();
        // Only a true ack says events are safe: the rest is lost.
        let unconfirmed = std::mem::take(&mut books.unconfirmed);
        for ids in unconfirmed.values() {
            for id in ids {
                if let Some(n) = books.counts.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        books.counts.remove(id);
                    }
                }
            }
        }
        books
            .indexed
            .retain(|e| !unconfirmed.contains_key(&e.request));
    }

    /// Listens again, on the same port.
    pub fn restart(&mut self) {
        assert!(self.runtime.is_none(), "the double is running");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the double");
        let listener = {
            let _inside = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            // Back on the same port after being down, past TIME_WAIT.
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket.bind(self.addr).expect("binding the double's port");
            socket.listen(1024).expect("listening")
        };
        runtime.spawn(serve(listener, self.books.clone()));
        self.runtime = Some(runtime);
    }

    /// What the double holds, locked: read the records, turn the knobs.
    pub fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().expect("double lock")
    }

    /// Changes the knobs.
    pub fn knobs(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.books().knobs);
    }
}

impl Drop for HecDouble {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves the double's endpoints on `listener` until the runtime stops
/// (the standalone binary calls it directly).
pub async fn serve(listener: tokio::net::TcpListener, books: Shared) {
    let app = router(books);
    axum::serve(listener, app)
        .await
        .expect("serving the double");
}

/// The double's endpoints, plus `GET /double/stats` (counts as JSON, for
/// the benchmark).
pub fn router(books: Shared) -> axum::Router {
    axum::Router::new()
        .route("/services/collector/event", post(event))
        .route("/services/collector", post(event))
        .route("/services/collector/ack", post(ack))
        .route("/services/collector/health", get(health))
        .route("/double/stats", get(stats))
        .with_state(books)
}

/// Books shared with [`serve`], for the standalone binary.
pub fn books(knobs: Knobs) -> Shared {
    Arc::new(Mutex::new(Books {
        knobs,
        ..Books::default()
    }))
}

fn answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).expect("a valid status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn code(status: u16, code: u32, text: &str) -> Response {
    answer(status, json!({"text": text, "code": code}))
}

/// One of HEC's error answers: status, code and text.
#[derive(Debug, Clone, Copy)]
struct HecError(u16, u32, &'static str);

impl HecError {
    fn response(self) -> Response {
        code(self.0, self.1, self.2)
    }
}

#[derive(Deserialize)]
struct ChannelQuery {
    channel: Option<String>,
}

/// The token check HEC does first: 401 code 2 without a header, 401 code
/// 3 for one that is not `Splunk <token>`, 403 code 4 for a wrong token.
fn check_token(headers: &HeaderMap, token: &str) -> Result<(), HecError> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(HecError(401, 2, "Token is required"));
    };
    let Some(given) = value.strip_prefix("Splunk ") else {
        return Err(HecError(401, 3, "Invalid authorization"));
    };
    if given.trim() != token {
        return Err(HecError(403, 4, "Invalid token"));
    }
    Ok(())
}

/// The request's channel: the header, else `?channel=`.
fn channel_of(headers: &HeaderMap, query: &ChannelQuery) -> Option<String> {
    headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.channel.clone())
}

/// 8-4-4-4-12 hex digits.
fn is_guid(channel: &str) -> bool {
    let parts: Vec<&str> = channel.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// With acknowledgement on, a channel is required and must be a GUID.
fn check_channel(channel: &Option<String>) -> Result<(), HecError> {
    match channel {
        None => Err(HecError(400, 10, "Data channel is missing")),
        Some(c) if !is_guid(c) => Err(HecError(400, 11, "Invalid data channel")),
        Some(_) => Ok(()),
    }
}

#[derive(Deserialize)]
struct HecEvent<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    index: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    host: Option<String>,
}

#[derive(Deserialize)]
struct EventId {
    event_id: Option<String>,
}

/// One parsed event of a request, or why the request stops there.
enum Parsed {
    Event(Indexed),
    /// Answer with this (the events before it are indexed).
    Refused(Response),
}

fn parse_event(raw: &RawValue, n: usize, knobs: &Knobs, channel: &Option<String>) -> Parsed {
    let invalid = |n: usize| {
        Parsed::Refused(answer(
            400,
            json!({"text": "Invalid data format", "code": 6, "invalid-event-number": n}),
        ))
    };
    let Ok(hec) = serde_json::from_str::<HecEvent>(raw.get()) else {
        return invalid(n);
    };
    let Some(event) = hec.event else {
        return Parsed::Refused(code(400, 12, "Event field is required"));
    };
    let text = event.get();
    if text == "\"\"" || text == "null" {
        return Parsed::Refused(code(400, 13, "Event field cannot be blank"));
    }
    if knobs
        .poison_marker
        .as_deref()
        .is_some_and(|marker| text.contains(marker))
    {
        return invalid(n);
    }
    if let Some(index) = &hec.index {
        if !knobs.allowed_indexes.is_empty() && !knobs.allowed_indexes.contains(index) {
            return Parsed::Refused(code(400, 7, "Incorrect index"));
        }
    }
    let event_id = serde_json::from_str::<EventId>(text)
        .ok()
        .and_then(|e| e.event_id)
        .unwrap_or_default();
    Parsed::Event(Indexed {
        request: 0,
        event_id,
        channel: channel.clone(),
        index: hec.index,
        source: hec.source,
        sourcetype: hec.sourcetype,
        host: hec.host,
        json: knobs
            .keep_events
            .then(|| serde_json::from_str(raw.get()).expect("parsed once already")),
    })
}

async fn event(
    State(books): State<Shared>,
    Query(query): Query<ChannelQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let channel = channel_of(&headers, &query);
    let knobs = books.lock().expect("double lock").knobs.clone();
    let refused = |books: &Shared, status: u16, response: Response| {
        books.lock().expect("double lock").requests.push(Seen {
            at: Instant::now(),
            endpoint: "event",
            status,
            channel: channel.clone(),
            ack_id: None,
            ids: Vec::new(),
            acked: Vec::new(),
        });
        response
    };
    if let Err(e) = check_token(&headers, &knobs.token) {
        return refused(&books, e.0, e.response());
    }
    let next_refusal = books
        .lock()
        .expect("double lock")
        .knobs
        .refuse_next
        .pop_front();
    if let Some(refusal) = next_refusal {
        let mut response = (
            StatusCode::from_u16(refusal.status).expect("a valid status"),
            refusal.body,
        )
            .into_response();
        if let Some(wait) = refusal.retry_after {
            response
                .headers_mut()
                .insert("retry-after", wait.parse().expect("a header value"));
        }
        return refused(&books, refusal.status, response);
    }
    if knobs.acks {
        if let Err(e) = check_channel(&channel) {
            return refused(&books, e.0, e.response());
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return refused(&books, 400, code(400, 5, "No data"));
    }

    // Parse outside the lock: the sink sends several requests at once.
    let mut events = Vec::new();
    let mut refusal = None;
    for (n, raw) in serde_json::Deserializer::from_slice(&body)
        .into_iter::<&RawValue>()
        .enumerate()
    {
        let Ok(raw) = raw else {
            refusal = Some(answer(
                400,
                json!({"text": "Invalid data format", "code": 6, "invalid-event-number": n}),
            ));
            break;
        };
        match parse_event(raw, n, &knobs, &channel) {
            Parsed::Event(indexed) => events.push(indexed),
            Parsed::Refused(response) => {
                refusal = Some(response);
                break;
            }
        }
    }

    let mut books = books.lock().expect("double lock");
    books.received += 1;
    let request = books.received;
    for event in &mut events {
        event.request = request;
    }
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    if let Some(response) = refusal {
        // The events before the bad one went into the pipeline.
        index(&mut books, events);
        books.requests.push(Seen {
            at: Instant::now(),
            endpoint: "event",
            status: response.status().as_u16(),
            channel,
            ack_id: None,
            ids,
            acked: Vec::new(),
        });
        return response;
    }
    books.accepted += 1;
    let lost = books.accepted <= books.knobs.lose_first;
    if !lost {
        index(&mut books, events);
    }
    let ack_id = match (&channel, books.knobs.acks) {
        (Some(channel), true) => {
            let channel = books.channels.entry(channel.clone()).or_default();
            let id = channel.next_ack_id;
            channel.next_ack_id += 1;
            channel.pending.insert(
                id,
                Pending {
                    polls: 0,
                    lost,
                    request,
                },
            );
            Some(id)
        }
        _ => None,
    };
    if ack_id.is_some() && !lost {
        books.unconfirmed.insert(request, ids.clone());
    }
    books.requests.push(Seen {
        at: Instant::now(),
        endpoint: "event",
        status: 200,
        channel,
        ack_id,
        ids,
        acked: Vec::new(),
    });
    match ack_id {
        Some(id) => answer(200, json!({"text": "Success", "code": 0, "ackId": id})),
        None => code(200, 0, "Success"),
    }
}

fn index(books: &mut Books, events: Vec<Indexed>) {
    for event in events {
        *books.counts.entry(event.event_id.clone()).or_default() += 1;
        // Without keep_events, counts only: a benchmark's millions of
        // events stay small.
        if books.knobs.keep_events {
            books.indexed.push(event);
        }
    }
}

#[derive(Deserialize)]
struct AckQuery {
    acks: Vec<u64>,
}

async fn ack(
    State(books): State<Shared>,
    Query(query): Query<ChannelQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let channel = channel_of(&headers, &query);
    let mut books = books.lock().expect("double lock");
    let mut seen = Seen {
        at: Instant::now(),
        endpoint: "ack",
        status: 200,
        channel: channel.clone(),
        ack_id: None,
        ids: Vec::new(),
        acked: Vec::new(),
    };
    let result = (|| {
        check_token(&headers, &books.knobs.token)?;
        if !books.knobs.acks {
            return Err(HecError(400, 14, "ACK is disabled"));
        }
        check_channel(&channel)?;
        let Ok(asked) = serde_json::from_slice::<AckQuery>(&body) else {
            return Err(HecError(400, 6, "Invalid data format"));
        };
        Ok(asked.acks)
    })();
    let asked = match result {
        Ok(asked) => asked,
        Err(e) => {
            seen.status = e.0;
            books.requests.push(seen);
            return e.response();
        }
    };
    let (hold, after) = (books.knobs.hold_acks, books.knobs.ack_after_polls);
    let channel = books.channels.entry(channel.expect("checked")).or_default();
    let mut answers = serde_json::Map::new();
    let mut acked = Vec::new();
    let mut confirmed = Vec::new();
    for id in &asked {
        let ready = match channel.pending.get_mut(id) {
            Some(pending) => {
                pending.polls += 1;
                !pending.lost && !hold && pending.polls >= after
            }
            // Never given out, or already reported: false.
            None => false,
        };
        if ready {
            // Reported true once, then forgotten.
            if let Some(pending) = channel.pending.remove(id) {
                confirmed.push(pending.request);
            }
            acked.push(*id);
        }
        answers.insert(id.to_string(), Value::Bool(ready));
    }
    for request in confirmed {
        books.unconfirmed.remove(&request);
    }
    seen.ids = asked.iter().map(u64::to_string).collect();
    seen.acked = acked;
    books.requests.push(seen);
    answer(200, json!({ "acks": answers }))
}

async fn health(State(books): State<Shared>) -> Response {
    let busy = books
        .lock()
        .expect("double lock")
        .knobs
        .refuse_next
        .front()
        .is_some_and(|r| r.status == 503);
    if busy {
        return code(503, 9, "Server is busy");
    }
    code(200, 17, "HEC is healthy")
}

async fn stats(State(books): State<Shared>) -> Response {
    let books = books.lock().expect("double lock");
    let copies: usize = books.counts.values().sum();
    answer(
        200,
        json!({
            "indexed": copies,
            "distinct": books.counts.len(),
            "event_requests": books.event_requests().count(),
            "ack_queries": books.ack_queries().count(),
            "unreported_acks": books.unreported_acks(),
        }),
    )
}
