//! What the sink end-to-end tests (`mysql_sink`, `clickhouse_sink`) share:
//! numbered OTLP batches sent over gRPC, the sink's `/readyz` entry and
//! counters, the load a test sends across kills and restarts, and events
//! emitted through the real Rust OTel SDK inside a span (which the SDK test
//! `otel_sdk_rust` uses too). What depends on the database (counting rows,
//! checking a table holds each event once) stays with each test.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{LogExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLoggerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::Value;

use crate::{otlp, Server};

pub type Client = LogsServiceClient<tonic::transport::Channel>;

pub async fn client(server: &Server) -> Client {
    LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting over gRPC")
}

/// Sends `request`; returns how long the acknowledgement took. Panics
/// unless every record was accepted.
pub async fn send(client: &mut Client, request: ExportLogsServiceRequest) -> Duration {
    let started = Instant::now();
    let response = client
        .export(request)
        .await
        .expect("export is acknowledged")
        .into_inner();
    if let Some(partial) = response.partial_success {
        assert_eq!(
            partial.rejected_log_records, 0,
            "rejected: {}",
            partial.error_message
        );
    }
    started.elapsed()
}

/// A trace id no other event of this test process has.
pub fn next_trace_id() -> ([u8; 16], String) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    otlp::trace_id(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A poison record between two good ones: `small-1`, `huge` (a body of
/// `huge_bytes`) and `small-2`, in one request of service `imagegen-ui`
/// (span ids start with `span`), for a sink test that the huge one is
/// dead-lettered and its neighbours delivered.
pub fn poison_between_two(
    span: u8,
    trace_seed: u64,
    huge_bytes: usize,
) -> ExportLogsServiceRequest {
    let (trace, _) = otlp::trace_id(trace_seed);
    let records = vec![
        otlp::record(
            "small-1",
            trace,
            [span, 1, 0, 0, 0, 0, 0, 1],
            "fine",
            vec![],
        ),
        otlp::record(
            "huge",
            trace,
            [span, 1, 0, 0, 0, 0, 0, 2],
            &"x".repeat(huge_bytes),
            vec![],
        ),
        otlp::record(
            "small-2",
            trace,
            [span, 1, 0, 0, 0, 0, 0, 3],
            "fine too",
            vec![],
        ),
    ];
    otlp::request("imagegen-ui", records)
}

/// Waits until `sink` has dead-lettered `n` events.
pub async fn wait_dead_lettered(server: &Server, sink: &str, n: u64) {
    let metric = format!("auditrail_sink_dead_lettered_events_total{{sink=\"{sink}\"}}");
    crate::eventually_within(
        Duration::from_secs(30),
        &format!("{n} event(s) dead-lettered by {sink}"),
        || async { server.metric(&metric).await == n as f64 },
    )
    .await;
}

/// `n` events with uids `{prefix}-{i}`, each with its own trace id; every
/// span id starts with the byte `span` (each test file has its own).
/// Returns the request and (uid, trace id hex) of each event.
pub fn numbered_batch(
    span: u8,
    prefix: &str,
    n: usize,
) -> (ExportLogsServiceRequest, Vec<(String, String)>) {
    let mut ids = Vec::with_capacity(n);
    let records = (0..n)
        .map(|i| {
            let uid = format!("{prefix}-{i}");
            let (trace, trace_hex) = next_trace_id();
            let record = otlp::record(
                &uid,
                trace,
                [span, 0, 0, 0, 0, 0, 0, (i % 250) as u8 + 1],
                &format!("prompt for {uid}: a banana in a spacesuit"),
                vec![
                    otlp::attr("event.name", otlp::string("image.generate")),
                    otlp::attr("user.id", otlp::string(format!("user-{}", i % 7))),
                    otlp::attr("audit.outcome", otlp::string("success")),
                ],
            );
            ids.push((uid, trace_hex));
            record
        })
        .collect();
    (otlp::request("imagegen-ui", records), ids)
}

/// Sends `requests` requests of 40 new events each (span ids starting with
/// `span`), adding them to `sent`; every acknowledgement must come
/// promptly, whatever the sink does.
pub async fn send_batch(
    client: &mut Client,
    sent: &mut HashMap<String, String>,
    span: u8,
    name: &str,
    requests: usize,
) -> usize {
    let mut slowest = Duration::ZERO;
    for k in 0..requests {
        let (request, ids) = numbered_batch(span, &format!("{name}-{k}"), 40);
        sent.extend(ids);
        slowest = slowest.max(send(client, request).await);
    }
    // Generous for a loaded machine; a sink holding ingest back would take
    // the sink's timeout (2s) or forever.
    assert!(
        slowest < Duration::from_secs(2),
        "batch {name}: an acknowledgement took {slowest:?}; ingest must not wait on the sink"
    );
    sent.len()
}

/// The last 6,000 bytes (or so, on a character boundary) of a log.
pub fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(6000);
    let start = (start..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(log.len());
    &log[start..]
}

/// The `/readyz` status code and this sink's entry.
pub async fn sink_status(server: &Server, sink: &str) -> (u16, Value) {
    let (code, body) = server.readyz().await;
    let status = body["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|s| s["name"] == sink))
        .cloned()
        .unwrap_or_else(|| panic!("no sink {sink:?} in /readyz: {body}"));
    (code, status)
}

/// Waits (at most `within`: how long a sink may take to catch up, on a
/// loaded two-core machine, which depends on the database) until the sink
/// is healthy and has confirmed `events` events, and the events the trail
/// wrote about itself meanwhile (tombstones of dead letters, config
/// changes at restarts: [`internal_events`]).
pub async fn wait_caught_up(server: &Server, sink: &str, events: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (code, status) = sink_status(server, sink).await;
        assert_eq!(code, 200, "{status}");
        // A server whose admin API wants a token: at least `events`.
        let confirmed = status["cursor"].as_u64().unwrap_or(0);
        let expected = match internal_count(server).await {
            Some(internal) => confirmed == (events + internal) as u64,
            None => confirmed >= events as u64,
        };
        if status["healthy"] == true && expected && status["lag_events"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sink {sink} did not catch up with {events} events within {within:?}: {status}\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events the trail wrote about itself (service `auditrail`):
/// tombstones, config changes, alerts.
pub async fn internal_events(server: &Server) -> Vec<Value> {
    server.events("service=auditrail&limit=0").await
}

/// How many events the trail wrote about itself; `None` when the admin
/// API does not answer without a token.
async fn internal_count(server: &Server) -> Option<usize> {
    let (code, page) = server
        .admin_get("/v1/events?service=auditrail&limit=0", None)
        .await;
    (code == 200).then(|| page["events"].as_array().map_or(0, Vec::len))
}

/// Whether `event_id` is one auditrail derived for its own event.
pub fn is_internal_id(event_id: &str) -> bool {
    event_id.starts_with("auditrail-")
}

/// The sum of a counter over every label set that has `sink="<sink>"`.
pub async fn sink_counter(server: &Server, metric: &str, sink: &str) -> (f64, Vec<String>) {
    let text = server.metrics_text().await;
    let label = format!("sink=\"{sink}\"");
    let samples: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .map(str::to_owned)
        .collect();
    let sum = samples
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (sum, samples)
}

/// Nothing was dead-lettered: a re-sent row must be a no-op, not an error.
pub async fn assert_no_dead_letters(server: &Server, sink: &str) {
    let (_, status) = sink_status(server, sink).await;
    assert_eq!(status["dead_letters"], 0, "{status}");
    let (dead, samples) =
        sink_counter(server, "auditrail_sink_dead_lettered_events_total", sink).await;
    assert_eq!(dead, 0.0, "{samples:?}");
}

/// Every event in `sent` (uid → trace id) was `seen` in a table; names a
/// few of those missing.
pub fn assert_none_missing(sent: &HashMap<String, String>, seen: &HashSet<String>) {
    let missing: Vec<_> = sent
        .keys()
        .filter(|id| !seen.contains(*id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events missing (discarded as duplicates?), e.g. {missing:?}",
        missing.len().max(sent.len().saturating_sub(seen.len())),
        sent.len()
    );
}

/// The end of an exactly-once check, once a test has read its table: every
/// event in `sent` (uid → trace id) was `seen`, and the `seqs` (in order)
/// are 1..=N without gaps or repeats.
pub fn assert_all_once(sent: &HashMap<String, String>, seen: &HashSet<String>, seqs: &[u64]) {
    assert_none_missing(sent, seen);
    // The events sent, and any the trail wrote about itself among them.
    let internal = seen.iter().filter(|id| !sent.contains_key(*id)).count();
    let expected: Vec<u64> = (1..=(sent.len() + internal) as u64).collect();
    assert!(
        seqs == expected,
        "seqs are not exactly 1..={}: first differences {:?}",
        expected.len(),
        seqs.iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------

/// What a test sent, across kills and restarts.
#[derive(Default)]
pub struct Load {
    /// uid → trace id (hex) of every event sent.
    pub trace_of: HashMap<String, String>,
    pub acked: HashSet<String>,
    /// Requests without an answer (the server died): a client sends them
    /// again, as OTLP clients do.
    pub unacked: Vec<(Vec<String>, ExportLogsServiceRequest)>,
}

/// Events per request of a [`start_sending`] load.
pub const PER_REQUEST: usize = 20;

/// Starts sending, in the background, what is unacknowledged from before
/// and then `events` new events (uids `r{round}-…`, span ids starting with
/// `span`), recording in `load` what was sent and acknowledged. When the
/// server dies, the task records what is left as unacknowledged and ends.
pub fn start_sending(
    server: &Server,
    load: &Arc<Mutex<Load>>,
    span: u8,
    round: usize,
    events: usize,
) -> tokio::task::JoinHandle<()> {
    let mut work = std::mem::take(&mut load.lock().unwrap().unacked);
    for k in 0..events / PER_REQUEST {
        let (request, ids) = numbered_batch(span, &format!("r{round}-{k}"), PER_REQUEST);
        let uids = ids.iter().map(|(uid, _)| uid.clone()).collect();
        load.lock().unwrap().trace_of.extend(ids);
        work.push((uids, request));
    }
    tokio::spawn({
        let load = load.clone();
        let url = server.grpc_url();
        async move {
            let mut client = LogsServiceClient::connect(url).await.expect("connect");
            let mut work = work.into_iter();
            while let Some((uids, request)) = work.next() {
                match client.export(request.clone()).await {
                    Ok(_) => load.lock().unwrap().acked.extend(uids),
                    Err(_) => {
                        // The server is gone: everything left is resent later.
                        let mut load = load.lock().unwrap();
                        load.unacked.push((uids, request));
                        load.unacked.extend(work);
                        return;
                    }
                }
            }
        }
    })
}

/// Waits while `sender` sends until the destination holds more than
/// `before` events but fewer than were acknowledged (`held` counts them),
/// then `kill -9`s the server: in the middle of delivery. Returns what the
/// destination held and what was acknowledged at the kill.
pub async fn kill_while_behind<F, Fut>(
    server: &mut Server,
    load: &Arc<Mutex<Load>>,
    sender: &tokio::task::JoinHandle<()>,
    round: usize,
    within: Duration,
    mut held: F,
) -> (u64, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let before = held().await;
    let deadline = Instant::now() + within;
    loop {
        let rows = held().await;
        let acked = load.lock().unwrap().acked.len() as u64;
        if rows > before && rows < acked {
            server.kill9();
            return (rows, acked);
        }
        assert!(
            !(sender.is_finished() && rows >= acked),
            "round {round}: the sink caught up ({rows}) before it could be killed mid-delivery"
        );
        assert!(
            Instant::now() < deadline,
            "round {round}: no delivery progress ({rows} held, {acked} acknowledged):\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resends what was never acknowledged, as a client would.
pub async fn resend_unacked(server: &Server, load: &Arc<Mutex<Load>>) {
    let unacked = std::mem::take(&mut load.lock().unwrap().unacked);
    let mut client = client(server).await;
    for (uids, request) in unacked {
        send(&mut client, request).await;
        load.lock().unwrap().acked.extend(uids);
    }
}

// ---------------------------------------------------------------------------

/// Emits one `image.generate` event through the real Rust OTel SDK (service
/// `imagegen-ui`, scope `audit`) and `exporter`, inside a fresh span; `fill`
/// sets the rest of the record. Returns the span's (trace id, span id) in
/// hex.
pub fn emit_in_span(
    exporter: impl opentelemetry_sdk::logs::LogExporter + 'static,
    fill: impl FnOnce(&mut SdkLogRecord),
) -> (String, String) {
    let resource = Resource::builder().with_service_name("imagegen-ui").build();
    let logs = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_simple_exporter(exporter)
        .build();
    let logger = logs.logger("audit");
    let tracer = SdkTracerProvider::builder().build().tracer("test");
    let ids = tracer.in_span("generate-image", |cx| {
        let mut record = logger.create_log_record();
        record.set_event_name("image.generate");
        fill(&mut record);
        logger.emit(record);
        let span = cx.span().span_context().clone();
        (span.trace_id().to_string(), span.span_id().to_string())
    });
    logs.force_flush().expect("flushing logs");
    logs.shutdown().expect("shutting down the logger provider");
    ids
}

/// An exporter that counts the exports that failed: the SDK's simple
/// processor only logs them, and a test must know.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl<E> CountingExporter<E> {
    /// `exporter`, and the count of its failed exports.
    pub fn new(exporter: E) -> (Self, Arc<std::sync::atomic::AtomicUsize>) {
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = CountingExporter {
            inner: exporter,
            failures: failures.clone(),
        };
        (counting, failures)
    }
}

impl<E: opentelemetry_sdk::logs::LogExporter> opentelemetry_sdk::logs::LogExporter
    for CountingExporter<E>
{
    async fn export(
        &self,
        batch: opentelemetry_sdk::logs::LogBatch<'_>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The real Rust OTel SDK's OTLP/gRPC log exporter, sending to `grpc_url`.
pub fn grpc_log_exporter(grpc_url: String) -> LogExporter {
    LogExporter::builder()
        .with_tonic()
        .with_endpoint(grpc_url)
        .build()
        .expect("OTLP log exporter")
}

/// Emits, over OTLP/gRPC to `grpc_url`, the event the sink tests look for
/// in their tables (see [`emit_in_span`]): at `time`, with `body`, the
/// attributes in an order that is not sorted, and `extra` last. Returns
/// (trace id, span id) of the span.
pub fn emit_sink_event(
    grpc_url: String,
    time: SystemTime,
    body: &'static str,
    extra: (&'static str, AnyValue),
) -> (String, String) {
    emit_in_span(grpc_log_exporter(grpc_url), |record| {
        record.set_timestamp(time);
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_body(AnyValue::from(body));
        // Out of order on purpose: the JSON column has them sorted.
        record.add_attribute("zoom", 3_i64);
        record.add_attribute("user.id", "alice");
        record.add_attribute("user.name", "Alice Liddell");
        record.add_attribute("audit.outcome", "success");
        record.add_attribute("audit.target", "model/sdxl");
        record.add_attribute("client.address", "198.51.100.4");
        record.add_attribute("image.count", 2_i64);
        let (key, value) = extra;
        record.add_attribute(key, value);
    })
}

// ---------------------------------------------------------------------------

/// One row of a sink's table, as the exactly-once checks read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub event_id: String,
    pub trace_id: String,
    pub seq: u64,
}

/// Every event in `sent` (uid → trace id) is among `rows` (in seq order)
/// exactly once with its trace id, nothing else is, and seqs are 1..=N.
/// `store` names the table in messages.
pub fn assert_rows_exactly_once(store: &str, rows: &[StoredRow], sent: &HashMap<String, String>) {
    let mut seen = HashSet::new();
    let mut seqs = Vec::with_capacity(rows.len());
    for row in rows {
        if is_internal_id(&row.event_id) && !sent.contains_key(&row.event_id) {
            // The trail's own event (a tombstone, a config change): in the
            // seqs, and stored once like the rest.
            assert!(
                seen.insert(row.event_id.clone()),
                "{store}: event {} stored twice",
                row.event_id
            );
            seqs.push(row.seq);
            continue;
        }
        match sent.get(&row.event_id) {
            Some(trace) => assert_eq!(
                &row.trace_id, trace,
                "{store}: trace id of {} differs from the one sent",
                row.event_id
            ),
            None => panic!("{store}: row for {}, which was never sent", row.event_id),
        }
        assert!(
            seen.insert(row.event_id.clone()),
            "{store}: event {} stored twice",
            row.event_id
        );
        seqs.push(row.seq);
    }
    assert_all_once(sent, &seen, &seqs);
}

/// Waits until `count` says `want`; panics at once if it says more, and
/// with the server's log if `within` passes first.
pub async fn wait_count<F, Fut>(
    what: &str,
    want: u64,
    server: &Server,
    within: Duration,
    mut count: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = Instant::now() + within;
    loop {
        let rows = count().await;
        assert!(
            rows <= want,
            "{rows} rows in {what}, more than the {want} events sent"
        );
        if rows == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} of {want} rows in {what} after {within:?}; server log (tail):\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The load of a sink's crash-and-outage test: 3,000 events sent while
/// the server at `dir` (with `config`) delivers, killed with `kill -9`
/// 0.7 s in; then the far side goes down (`far_side_down`) while a
/// restarted server takes the unacknowledged resends and 1,000 more, and
/// comes back (`far_side_up`) 2 s later. Returns the server, still
/// running, and every acknowledged event id.
pub async fn kill_9_then_outage(
    dir: &std::path::Path,
    config: &str,
    span: u8,
    far_side_down: impl FnOnce(),
    far_side_up: impl FnOnce(),
) -> (Server, HashSet<String>) {
    kill_9_then_outage_with_env(dir, config, &[], span, far_side_down, far_side_up).await
}

/// [`kill_9_then_outage`] with environment variables for every server it
/// starts (a sink's secret, named by its `*_env` key).
pub async fn kill_9_then_outage_with_env(
    dir: &std::path::Path,
    config: &str,
    env: &[(&str, &str)],
    span: u8,
    far_side_down: impl FnOnce(),
    far_side_up: impl FnOnce(),
) -> (Server, HashSet<String>) {
    let load = Arc::new(Mutex::new(Load::default()));
    let mut server = Server::start_in_env(dir, "", config, env);
    let sending = start_sending(&server, &load, span, 0, 3000);
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill9();
    sending.await.unwrap();

    far_side_down();
    let server = Server::start_in_env(dir, "", config, env);
    resend_unacked(&server, &load).await;
    start_sending(&server, &load, span, 1, 1000).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    far_side_up();
    let acked = load.lock().unwrap().acked.clone();
    (server, acked)
}

/// Every `acked` id is among the ids `store` holds (`stored`, one per
/// stored copy), exactly once; names a few of those missing or doubled.
pub fn assert_each_once<'a>(
    store: &str,
    acked: &HashSet<String>,
    stored: impl IntoIterator<Item = &'a str>,
) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in stored {
        *counts.entry(id).or_insert(0) += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never reached {store}, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} events stored more than once in {store}, e.g. {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
}
