//! The ClickHouse sink end to end: the real `auditrail serve` delivering
//! into real ClickHouse engines (see `auditrail_tests::clickhouse`):
//! ClickHouse 26.x (chdb behind `tests/python/chdb_http.py`, one per test,
//! which a test may kill -9 and start again) and Debian's 18.16 (the shared
//! server on 127.0.0.1:18123), with events from the real Rust OTel SDK or
//! raw OTLP/gRPC batches.
//!
//! Each test works in a database of its own, so they run in parallel. A test
//! that cannot start an engine fails; none is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditrail_tests::clickhouse::{self, legacy_url, num, query, select, Chdb, Database};
use auditrail_tests::mysql::SinkToml;
use auditrail_tests::sinks::{
    assert_no_dead_letters, assert_rows_exactly_once, client, emit_sink_event, numbered_batch,
    resend_unacked, send, send_batch, sink_counter, sink_status, start_sending, tail,
    wait_caught_up, wait_count, Load,
};
use auditrail_tests::{free_port, Server};
use opentelemetry::logs::AnyValue;
use serde_json::Value;

const TABLE: &str = "audit_events";
const OTEL_TABLE: &str = "otel_logs";
/// How long a sink may take to catch up, on a loaded two-core machine.
const CATCH_UP: Duration = Duration::from_secs(90);
/// The first byte of the span ids of this file's batches.
const SPAN: u8 = 0xcd;

/// Waits until `table` holds `want` rows (`modifiers`: e.g. `FINAL`); panics
/// at once if it ever holds more, and with the server's log if it takes
/// too long.
async fn wait_rows(db: &Database, table: &str, modifiers: &str, want: u64, server: &Server) {
    wait_count(
        &format!("{table} {modifiers}"),
        want,
        server,
        CATCH_UP,
        || async { db.try_count(table, modifiers).await.unwrap_or(0) },
    )
    .await
}

/// Raw `count()` and distinct `(node, seq)` of the table, as stored now
/// (before ReplacingMergeTree has collapsed anything that is not merged).
async fn raw_counts(db: &Database) -> (u64, u64) {
    let raw = db.count(TABLE, "").await;
    let distinct = clickhouse::count(
        db.url(),
        &format!("SELECT uniqExact(node, seq) FROM {}", db.table(TABLE)),
    )
    .await;
    (raw, distinct)
}

/// Every event in `sent` (uid → trace id) is in the table exactly once
/// (in the collapsed view, `FINAL`) with its trace id, and seqs are
/// 1..=N without gaps or repeats.
async fn assert_exactly_once(db: &Database, sent: &HashMap<String, String>) {
    assert_rows_exactly_once(
        "ClickHouse FINAL",
        &db.stored_rows(TABLE, "FINAL").await,
        sent,
    );
}

/// The sink table, with the delivery settings the tests share.
fn sink(name: &str, url: &str, database: &str) -> SinkToml {
    clickhouse::sink(name, url, database)
        .delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .delivery("backoff_max", "\"1s\"")
}

/// The attributes as a ClickHouse `Map(String, String)` shows them: string
/// values as they are, others as their JSON text.
fn as_string_map(value: &Value) -> Value {
    let object = match value {
        Value::String(text) => serde_json::from_str(text).expect("JSON object text"),
        Value::Object(object) => object.clone(),
        other => panic!("attributes are {other}"),
    };
    Value::Object(
        object
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Value::String(text))
            })
            .collect(),
    )
}

/// A JSON value as text (strings as they are), to compare a ClickHouse
/// column (UInt64 comes quoted) with the spool's field.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_clickhouse_with_trace_context() {
    let ch = Chdb::start();
    let url = ch.url();
    let db = Database::create(&url).await;
    let sinks = format!(
        "{}\n{}",
        sink("warehouse", &url, db.name()),
        sink("grafana", &url, db.name())
            .set("schema", "\"otel\"")
            .set("table", &format!("\"{OTEL_TABLE}\""))
    );
    let server = Server::start_with("", &sinks);

    // A time with nanoseconds that DateTime64(9) keeps to the last digit.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let time_ns = (now.as_secs() - 3600) * 1_000_000_000 + 123_456_789;
    let time = UNIX_EPOCH + Duration::from_nanos(time_ns);
    let grpc = server.grpc_url();
    let (trace_id, span_id) = tokio::task::spawn_blocking(move || {
        emit_sink_event(
            grpc,
            time,
            "a lighthouse in a storm, in ClickHouse",
            ("nsfw", AnyValue::from(false)),
        )
    })
    .await
    .unwrap();
    assert_eq!(trace_id.len(), 32);
    assert_eq!(span_id.len(), 16);

    wait_rows(&db, TABLE, "", 1, &server).await;
    wait_rows(&db, OTEL_TABLE, "", 1, &server).await;
    wait_caught_up(&server, "warehouse", 1, CATCH_UP).await;
    wait_caught_up(&server, "grafana", 1, CATCH_UP).await;
    let spooled = server.events(&format!("trace_id={trace_id}")).await;
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let spooled = &spooled[0];

    // schema = "auditrail": every canonical field is what the spool holds...
    let rows = select(
        &url,
        &format!(
            "SELECT *, toString(time) AS time_text, toUnixTimestamp64Nano(time) AS time_ns, \
             attributes['image.count'] AS image_count FROM {}",
            db.table(TABLE)
        ),
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let fields: Vec<&String> = spooled
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "trace_url")
        .collect();
    assert!(fields.len() >= 25, "{fields:?}");
    let mut compared = Vec::new();
    for field in &fields {
        let in_spool = &spooled[field.as_str()];
        let Some(in_clickhouse) = row.get(field.as_str()) else {
            continue;
        };
        match field.as_str() {
            // DateTime64 text vs the spool's rendering: compared below, in ns.
            "time" => continue,
            "attributes" | "resource_attributes" => {
                assert_eq!(in_clickhouse, &as_string_map(in_spool), "column {field}")
            }
            _ => assert_eq!(as_text(in_clickhouse), as_text(in_spool), "column {field}"),
        }
        compared.push(field.as_str());
    }
    assert!(
        compared.len() >= 24,
        "columns compared with the spool: {compared:?}; row: {row}"
    );

    // ...and what the SDK sent.
    assert_eq!(row["trace_id"], trace_id.as_str());
    assert_eq!(row["span_id"], span_id.as_str());
    assert_eq!(row["trace_flags"], 1, "sampled");
    assert_eq!(row["event_name"], "image.generate");
    assert_eq!(row["actor_id"], "alice");
    assert_eq!(row["actor_name"], "Alice Liddell");
    assert_eq!(row["client_address"], "198.51.100.4");
    assert_eq!(row["outcome"], "success");
    assert_eq!(row["target"], "model/sdxl");
    assert_eq!(row["service_name"], "imagegen-ui");
    assert_eq!(row["scope_name"], "audit");
    assert_eq!(row["body"], "a lighthouse in a storm, in ClickHouse");
    assert_eq!(row["severity_number"], 9);
    assert_eq!(row["severity_text"], "INFO");
    assert_eq!(row["node"], "test-node");
    assert_eq!(num(&row["seq"]), 1);
    assert_eq!(num(&row["time_unix_nano"]), time_ns, "exact time");
    let time_text = row["time_text"].as_str().unwrap();
    assert_eq!(
        time_text.split_once('.').map(|(_, fraction)| fraction),
        Some("123456789"),
        "`time` has all 9 digits: {time_text}"
    );
    assert_eq!(
        num(&row["time_ns"]),
        time_ns,
        "`time` is time_unix_nano exactly"
    );
    assert_eq!(row["hash"], spooled["hash"]);
    assert_eq!(row["hash"].as_str().map(str::len), Some(64));
    assert_eq!(row["prev_hash"], "0".repeat(64), "first in the chain");
    assert_eq!(row["attributes"]["user.id"], "alice");
    assert_eq!(row["attributes"]["zoom"], "3", "non-strings as JSON text");
    assert_eq!(row["attributes"]["nsfw"], "false");
    assert_eq!(row["image_count"], "2", "a Map column");
    assert_eq!(row["resource_attributes"]["service.name"], "imagegen-ui");

    // schema = "otel": the Collector's otel_logs columns.
    let rows = select(
        &url,
        &format!(
            "SELECT TraceId, SpanId, TraceFlags, toString(Timestamp) AS ts, toUnixTimestamp64Nano(Timestamp) AS ns, \
             ServiceName, EventName, Body, SeverityText, SeverityNumber, ScopeName, LogAttributes, ResourceAttributes, \
             LogAttributes['auditrail.seq'] AS seq FROM {}",
            db.table(OTEL_TABLE)
        ),
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let otel = &rows[0];
    assert_eq!(otel["TraceId"], trace_id.as_str());
    assert_eq!(otel["SpanId"], span_id.as_str());
    assert_eq!(otel["TraceFlags"], 1);
    assert_eq!(num(&otel["ns"]), time_ns, "Timestamp to the nanosecond");
    assert!(
        otel["ts"].as_str().unwrap().ends_with(".123456789"),
        "{}",
        otel["ts"]
    );
    assert_eq!(otel["ServiceName"], "imagegen-ui");
    assert_eq!(otel["EventName"], "image.generate");
    assert_eq!(otel["Body"], "a lighthouse in a storm, in ClickHouse");
    assert_eq!(otel["SeverityText"], "INFO");
    assert_eq!(otel["SeverityNumber"], 9);
    assert_eq!(otel["ScopeName"], "audit");
    assert_eq!(otel["seq"], "1");
    let attributes = &otel["LogAttributes"];
    assert_eq!(attributes["auditrail.node"], "test-node");
    assert_eq!(attributes["auditrail.event_id"], spooled["event_id"]);
    assert_eq!(attributes["user.id"], "alice");
    assert_eq!(attributes["image.count"], "2");
    assert_eq!(otel["ResourceAttributes"]["service.name"], "imagegen-ui");
    assert_no_dead_letters(&server, "warehouse").await;
    assert_no_dead_letters(&server, "grafana").await;
}

// ---------------------------------------------------------------------------

/// Sends `events` new events (after what is unacknowledged from before)
/// and `kill -9`s the server once the sink has written some of them but
/// not all that was acknowledged, i.e. in the middle of delivery. Returns
/// the distinct events in the table at the kill.
async fn kill_mid_delivery(
    server: &mut Server,
    db: &Database,
    round: usize,
    events: usize,
    load: &Arc<Mutex<Load>>,
) -> u64 {
    // FINAL: on 18.16 a re-sent row stays twice until a merge; what counts
    // here is which events are in.
    let stored = async || db.try_count(TABLE, "FINAL").await.unwrap_or(0);
    let before = stored().await;
    let sender = start_sending(server, load, SPAN, round, events);
    let deadline = Instant::now() + CATCH_UP;
    let killed_at = loop {
        let rows = stored().await;
        let acked = load.lock().unwrap().acked.len() as u64;
        if rows > before && rows < acked {
            server.kill9();
            break rows;
        }
        assert!(
            !(sender.is_finished() && rows >= acked),
            "round {round}: the sink caught up ({rows} rows) before it could be killed mid-delivery"
        );
        assert!(
            Instant::now() < deadline,
            "round {round}: no delivery progress ({rows} rows, {acked} acknowledged):\n{}",
            tail(&server.log())
        );
        // Not faster: chdb runs one query at a time, so polling competes
        // with the sink's inserts.
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    sender.await.unwrap();
    // Unlike MySQL, whose transaction dies with the connection, ClickHouse
    // completes an INSERT whose body it has received: the rows of batches
    // in flight may still arrive after the kill, unconfirmed (so they are
    // sent again).
    killed_at
}

/// Prints where the sink resumes after a start and how many events the
/// table already holds: the difference is what it sends again. (Read just
/// after the start, so the cursor may already have moved a little.)
async fn report_resume(server: &Server, db: &Database, when: &str) {
    let (_, status) = sink_status(server, "warehouse").await;
    let stored = db.try_count(TABLE, "FINAL").await.unwrap_or(0);
    eprintln!(
        "{when}: the sink resumes after seq {} with {stored} events in the table",
        status["cursor"]
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// ClickHouse 26.x (chdb): deduplication tokens and ReplacingMergeTree.
    Modern,
    /// Debian's 18.16: ReplacingMergeTree only.
    Legacy,
}

/// Two rounds of: send 2,000 events, `kill -9` auditrail while its sink is
/// part-way through them; then a last start delivers the rest. Every event
/// must be in ClickHouse once (in the collapsed view) with its trace id.
async fn exactly_once_through_kill_9(engine: Engine) {
    let chdb = (engine == Engine::Modern).then(Chdb::start);
    let db = match &chdb {
        Some(chdb) => Database::create(&chdb.url()).await,
        None => Database::legacy().await,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sinks = sink("warehouse", db.url(), db.name())
        .delivery("max_events", "200")
        .to_string();
    if engine == Engine::Modern {
        // And the otel schema, whose plain MergeTree keeps whatever
        // duplicates the tokens let through.
        let otel = sink("grafana", db.url(), db.name())
            .set("schema", "\"otel\"")
            .set("table", &format!("\"{OTEL_TABLE}\""))
            .delivery("max_events", "200");
        sinks = format!("{sinks}\n{otel}");
    }
    let load = Arc::new(Mutex::new(Load::default()));
    let mut killed_at = Vec::new();
    for round in 0..2 {
        let mut server = Server::start_in(dir.path(), "", &sinks);
        report_resume(&server, &db, &format!("round {round}")).await;
        if round == 0 {
            // The sink created the table before the receivers opened. With
            // merges stopped the raw count shows every duplicate row that
            // was written (the deduplication tokens on the modern engine
            // drop exact re-sends; nothing collapses unseen).
            query(db.url(), &format!("SYSTEM STOP MERGES {}", db.table(TABLE))).await;
        }
        killed_at.push(kill_mid_delivery(&mut server, &db, round, 2000, &load).await);
    }

    let server = Server::start_in(dir.path(), "", &sinks);
    report_resume(&server, &db, "last start").await;
    resend_unacked(&server, &load).await;
    let sent = std::mem::take(&mut load.lock().unwrap().trace_of);
    assert_eq!(load.lock().unwrap().acked.len(), sent.len());
    assert!(sent.len() >= 4000);
    let n = sent.len() as u64;
    wait_caught_up(&server, "warehouse", sent.len(), CATCH_UP).await;
    assert_no_dead_letters(&server, "warehouse").await;
    if engine == Engine::Modern {
        wait_caught_up(&server, "grafana", sent.len(), CATCH_UP).await;
        assert_no_dead_letters(&server, "grafana").await;
        assert_otel_at_least_once(&db, &sent).await;
    }
    assert_eq!(
        server.events("limit=0").await.len(),
        sent.len(),
        "the spool holds each event once"
    );
    let (raw, distinct) = raw_counts(&db).await;
    eprintln!(
        "{engine:?}: killed at {killed_at:?} distinct events of {n}; before any merge: count() = {raw} \
         ({} duplicate rows), uniqExact(node, seq) = {distinct}",
        raw - distinct
    );
    assert_eq!(distinct, n, "every (node, seq) is stored");
    assert!(raw >= n);
    assert_eq!(db.count(TABLE, "FINAL").await, n);
    assert_exactly_once(&db, &sent).await;

    // Merged for good, the table has one row per event.
    query(
        db.url(),
        &format!("SYSTEM START MERGES {}", db.table(TABLE)),
    )
    .await;
    query(
        db.url(),
        &format!("OPTIMIZE TABLE {} FINAL", db.table(TABLE)),
    )
    .await;
    assert_eq!(
        db.count(TABLE, "").await,
        n,
        "count() after OPTIMIZE TABLE ... FINAL"
    );
}

/// Every event in `sent` is in `otel_logs` with its trace id, and its
/// `auditrail.seq` is one of 1..=N. A plain MergeTree never collapses rows:
/// how many duplicates a crash left is printed, not asserted (see
/// docs/sinks.md: `LIMIT 1 BY LogAttributes['auditrail.seq']` hides them).
async fn assert_otel_at_least_once(db: &Database, sent: &HashMap<String, String>) {
    let rows = select(
        db.url(),
        &format!(
            "SELECT LogAttributes['auditrail.event_id'] AS event_id, TraceId, \
             toUInt64(LogAttributes['auditrail.seq']) AS seq, count() AS copies \
             FROM {} GROUP BY event_id, TraceId, seq ORDER BY seq",
            db.table(OTEL_TABLE)
        ),
    )
    .await;
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for row in &rows {
        let event_id = row["event_id"].as_str().expect("event_id").to_owned();
        match sent.get(&event_id) {
            Some(trace) => assert_eq!(row["TraceId"], trace.as_str(), "TraceId of {event_id}"),
            None => panic!("otel row for {event_id}, which was never sent"),
        }
        assert!(
            seen.insert(event_id.clone()),
            "{event_id} with two seqs or trace ids"
        );
        duplicates += num(&row["copies"]) - 1;
    }
    assert_eq!(seen.len(), sent.len(), "every event is in {OTEL_TABLE}");
    let seqs: Vec<u64> = rows.iter().map(|r| num(&r["seq"])).collect();
    assert_eq!(seqs, (1..=sent.len() as u64).collect::<Vec<_>>());
    eprintln!(
        "{OTEL_TABLE} (plain MergeTree): {} rows for {} events ({duplicates} duplicate rows)",
        db.count(OTEL_TABLE, "").await,
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_through_kill_9_mid_delivery_modern() {
    exactly_once_through_kill_9(Engine::Modern).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_through_kill_9_mid_delivery_legacy_18_16() {
    exactly_once_through_kill_9(Engine::Legacy).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_outage_then_catch_up() {
    let mut ch = Chdb::start();
    let url = ch.url();
    let db = Database::create(&url).await;
    let sinks = sink("warehouse", &url, db.name())
        .delivery("max_events", "100")
        .delivery("timeout", "\"2s\"")
        .delivery("stuck_after", "4")
        .to_string();
    let server = Server::start_with("", &sinks);
    let mut client = client(&server).await;
    let mut sent = HashMap::new();

    // A: delivered while all is well.
    let total = send_batch(&mut client, &mut sent, SPAN, "A", 5).await;
    wait_caught_up(&server, "warehouse", total, CATCH_UP).await;
    assert_eq!(db.count(TABLE, "FINAL").await, total as u64);

    // B: ClickHouse is gone (kill -9, so whatever it was doing is cut
    // short). Ingest goes on promptly, /readyz stays ready and names the
    // failing sink, and its lag shows.
    ch.kill9();
    let total = send_batch(&mut client, &mut sent, SPAN, "B", 10).await;
    eventually_within_status(&server, "/readyz reports the sink unhealthy", |status| {
        status["healthy"] == false
            && status["last_error"].is_string()
            && status["lag_events"].as_u64() > Some(0)
    })
    .await;
    let lag = server
        .metric("auditrail_sink_lag_events{sink=\"warehouse\"}")
        .await;
    assert!(lag > 0.0, "lag metric: {lag}");
    let errors = async || {
        sink_counter(&server, "auditrail_sink_errors_total", "warehouse")
            .await
            .0
    };
    let before = errors().await;
    auditrail_tests::eventually_within(
        Duration::from_secs(30),
        "retries go on while ClickHouse is down",
        || async { errors().await >= before + 2.0 },
    )
    .await;
    let (_, status) = sink_status(&server, "warehouse").await;
    eprintln!("while down: {status} (lag metric {lag})");
    let last_error = status["last_error"].as_str().unwrap();
    assert!(last_error.contains("connection"), "{status}");
    assert!(
        last_error.contains("Connection refused"),
        "the cause: {last_error}"
    );
    assert!(
        !last_error.contains("query=") && !last_error.contains("INSERT"),
        "no statement in the error: {last_error}"
    );
    // The same error again and again: the batch shows as stuck, with the
    // error, since when and its seqs.
    eventually_within_status(&server, "/readyz reports the batch stuck", |status| {
        status["state"] == "stuck" && status["stuck"]["attempts"].as_u64() >= Some(4)
    })
    .await;
    let (_, status) = sink_status(&server, "warehouse").await;
    let stuck = &status["stuck"];
    assert!(
        stuck["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{status}"
    );
    assert!(stuck["since"].as_u64() > Some(0), "{status}");
    assert!(
        stuck["first_seq"].as_u64() > status["cursor"].as_u64()
            && stuck["last_seq"].as_u64() >= stuck["first_seq"].as_u64(),
        "{status}"
    );
    assert_eq!(
        server
            .metric("auditrail_sink_stuck{sink=\"warehouse\"}")
            .await,
        1.0
    );

    // Back on the same data and port: B arrives, once.
    ch.restart();
    wait_caught_up(&server, "warehouse", total, CATCH_UP).await;
    let (raw, distinct) = raw_counts(&db).await;
    eprintln!("after catching up: count() = {raw}, uniqExact(node, seq) = {distinct}");
    assert_eq!(distinct, total as u64);
    assert_exactly_once(&db, &sent).await;
    let (_, status) = sink_status(&server, "warehouse").await;
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["state"], "delivering", "{status}");
    assert!(status["stuck"].is_null(), "{status}");
    assert_eq!(
        server
            .metric("auditrail_sink_stuck{sink=\"warehouse\"}")
            .await,
        0.0
    );
    assert!(status["last_error"].is_null(), "{status}");
    let (errors, samples) = sink_counter(&server, "auditrail_sink_errors_total", "warehouse").await;
    eprintln!("errors: {samples:?}");
    assert!(
        samples.iter().any(|s| s.contains("kind=\"connection\"")),
        "refused connections counted: {samples:?}"
    );
    assert!(errors > 0.0);
    assert_eq!(
        server
            .metric("auditrail_sink_lag_events{sink=\"warehouse\"}")
            .await,
        0.0
    );
    assert_no_dead_letters(&server, "warehouse").await;
}

/// One OTLP request of 150 records stamped a month apart by their sender
/// (an honest backfill, or a hostile client) spans more partitions than
/// one ClickHouse INSERT may touch: 150 months in the `auditrail` table,
/// 150 days in `otel_logs`. Both sinks deliver it, once, and are not
/// stuck. (Before the sink cut such batches, the INSERT failed with code
/// 252 and was retried forever.)
#[tokio::test(flavor = "multi_thread")]
async fn one_request_spanning_150_months_is_delivered() {
    let ch = Chdb::start();
    let url = ch.url();
    let db = Database::create(&url).await;
    let sinks = format!(
        "{}\n{}",
        sink("warehouse", &url, db.name()),
        sink("otel", &url, db.name())
            .set("schema", "\"otel\"")
            .set("table", "\"otel_logs\"")
    );
    let server = Server::start_with("", &sinks);
    let mut client = client(&server).await;
    let (mut request, ids) = numbered_batch(SPAN, "backfill", 150);
    const Y2010: u64 = 1_262_304_000_000_000_000;
    for (i, record) in request.resource_logs[0].scope_logs[0]
        .log_records
        .iter_mut()
        .enumerate()
    {
        record.time_unix_nano = Y2010 + i as u64 * 31 * 86_400_000_000_000;
    }
    send(&mut client, request).await;
    wait_caught_up(&server, "warehouse", ids.len(), CATCH_UP).await;
    wait_caught_up(&server, "otel", ids.len(), CATCH_UP).await;
    let counts = select(
        &url,
        &format!(
            "SELECT count() AS rows, uniqExact(toYYYYMM(time)) AS months FROM {}.{TABLE}",
            db.name()
        ),
    )
    .await;
    assert_eq!(num(&counts[0]["rows"]), 150, "{counts:?}");
    assert_eq!(num(&counts[0]["months"]), 150, "{counts:?}");
    let counts = select(
        &url,
        &format!(
            "SELECT count() AS rows, uniqExact(toDate(TimestampTime)) AS days FROM {}.{OTEL_TABLE}",
            db.name()
        ),
    )
    .await;
    assert_eq!(num(&counts[0]["rows"]), 150, "{counts:?}");
    assert_eq!(num(&counts[0]["days"]), 150, "{counts:?}");
    for name in ["warehouse", "otel"] {
        let (_, status) = sink_status(&server, name).await;
        assert_eq!(status["state"], "delivering", "{status}");
        assert!(status["stuck"].is_null(), "{status}");
    }
    assert_no_dead_letters(&server, "warehouse").await;
    assert_no_dead_letters(&server, "otel").await;
}

/// Waits (30 s) until the `warehouse` sink's `/readyz` entry passes
/// `check`; `/readyz` must answer 200 throughout (a failing sink does not
/// make the node unready).
async fn eventually_within_status(server: &Server, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, status) = sink_status(server, "warehouse").await;
        assert_eq!(code, 200, "a failing sink does not make the node unready");
        if check(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; last: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn startup_errors_are_clear() {
    // (a) A database that does not exist, on 18.16: one clear error naming
    // it, and no start.
    let missing = format!("{}_missing", clickhouse::unique_name());
    let sinks = sink("warehouse", legacy_url(), &missing).to_string();
    let dir = tempfile::tempdir().unwrap();
    auditrail_tests::binary(); // built before the clock starts
    let started = Instant::now();
    let (status, log) =
        Server::start_expecting_exit(dir.path(), "", &sinks, &[], Duration::from_secs(30));
    let took = started.elapsed();
    eprintln!("missing database, exit after {took:?}:\n{log}");
    assert!(!status.success(), "{log}");
    assert!(took < Duration::from_secs(20), "exits at once: {took:?}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(&missing)).collect();
    assert_eq!(errors.len(), 1, "one error, not a retry storm:\n{log}");
    let error = errors[0];
    assert!(error.contains("does not exist"), "{error}");
    assert!(error.contains("warehouse"), "names the sink: {error}");
    assert!(error.contains("clickhouse"), "names the type: {error}");
    assert!(
        error.contains("CREATE DATABASE"),
        "says what to do: {error}"
    );

    // (b) ClickHouse not listening: no reason not to start, once the spool
    // exists (a new spool must first ask every sink which seqs it holds:
    // tests/tests/spool_identity.rs). Events are accepted and wait, and
    // /readyz says why.
    let port = free_port();
    let sinks = sink("warehouse", &format!("http://127.0.0.1:{port}"), "audit").to_string();
    let dir = tempfile::tempdir().unwrap();
    Server::start_in(dir.path(), "", "").kill9(); // its identity is flushed before it serves
    let server = Server::start_in(dir.path(), "", &sinks);
    let (request, ids) = numbered_batch(SPAN, "unreachable", 3);
    send(&mut client(&server).await, request).await;
    eventually_within_status(
        &server,
        "the sink reports the refused connection and the events waiting",
        |status| {
            status["healthy"] == false
                && status["last_error"].is_string()
                // The 3 sent, and the config change that added the sink.
                && status["lag_events"] == 4
        },
    )
    .await;
    let (code, body) = server.readyz().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    let (_, status) = sink_status(&server, "warehouse").await;
    eprintln!("unreachable: {status}");
    assert_eq!(status["type"], "clickhouse");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("connection"),
        "{status}"
    );
    assert_eq!(
        server
            .metric("auditrail_sink_lag_events{sink=\"warehouse\"}")
            .await,
        4.0
    );
    let events = server.events("event=image.generate").await;
    assert_eq!(events.len(), ids.len(), "queryable locally: {events:?}");
}
