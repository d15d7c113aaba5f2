//! The MySQL sink end to end: the real `auditrail serve` delivering into a
//! real MariaDB (the shared server on 127.0.0.1:3306, or a private one the
//! test stops and hangs), with events from the real Rust OTel SDK or raw
//! OTLP/gRPC batches.
//!
//! Each test works in a database of its own (see `auditrail_tests::mysql`),
//! so they run in parallel.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditrail_tests::mysql::{text, Database, PrivateMariaDb, SinkToml};
use auditrail_tests::sinks::{
    assert_no_dead_letters, assert_rows_exactly_once, client, emit_sink_event, internal_events,
    next_trace_id, numbered_batch, resend_unacked, send, send_batch, sink_counter, sink_status,
    start_sending, tail, wait_caught_up, wait_count, Load,
};
use auditrail_tests::{cli, eventually_within, free_port, otlp, Server};
use opentelemetry::logs::AnyValue;
use serde_json::Value;
use sqlx::Row;

const TABLE: &str = "audit_events";
/// How long a sink may take to catch up, on a loaded two-core machine.
const CATCH_UP: Duration = Duration::from_secs(60);
/// The first byte of the span ids of this file's batches.
const SPAN: u8 = 0xab;

/// Waits until `table` holds exactly `want` rows; panics at once if it
/// ever holds more, and with the server's log if it takes too long.
/// Waits until the canonical `table` holds `want` of the events sent (the
/// trail's own tombstones and config changes are not counted).
async fn wait_rows(db: &Database, table: &str, want: usize, server: &Server) {
    wait_count(table, want as u64, server, CATCH_UP, || async {
        db.try_count_sent(table).await.unwrap_or(0) as u64
    })
    .await
}

/// Every event in `sent` (uid → trace id) is in the canonical table exactly
/// once with its trace id, and seqs are 1..=N without gaps or repeats.
async fn assert_exactly_once(db: &Database, sent: &HashMap<String, String>) {
    assert_rows_exactly_once("MySQL", &db.stored_rows(TABLE).await, sent);
}

/// The sink table, with the delivery settings the tests share.
fn sink(name: &str, url: &str) -> SinkToml {
    SinkToml::new(name, url)
        .delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .delivery("backoff_max", "\"1s\"")
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_mysql_with_trace_context() {
    let db = Database::create().await;
    let server = Server::start_with("", &sink("warehouse", &db.url()).to_string());

    // A time with nanoseconds below the microsecond, which DATETIME(6)
    // cannot hold: `time_unix_nano` keeps them, `time` has the microsecond.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let time_ns = (now.as_secs() - 3600) * 1_000_000_000 + 123_456_789;
    let time = UNIX_EPOCH + Duration::from_nanos(time_ns);
    let url = server.grpc_url();
    let (trace_id, span_id) = tokio::task::spawn_blocking(move || {
        emit_sink_event(
            url,
            time,
            "a lighthouse in a storm, in MySQL",
            ("a.first", AnyValue::from("yes")),
        )
    })
    .await
    .unwrap();
    assert_eq!(trace_id.len(), 32);

    wait_rows(&db, TABLE, 1, &server).await;
    let spooled = server.events(&format!("trace_id={trace_id}")).await;
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let spooled = &spooled[0];

    // Every canonical field in MySQL is what the spool holds...
    let fields: Vec<&String> = spooled
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "trace_url")
        .collect();
    assert!(fields.len() >= 25, "{fields:?}");
    let select: Vec<String> = fields
        .iter()
        .map(|f| format!("CAST(`{f}` AS CHAR) AS `{f}`"))
        .collect();
    let row = &db
        .rows(&format!(
            "SELECT {}, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', `time`) AS time_us, \
             JSON_VALUE(attributes, '$.\"image.count\"') AS image_count FROM audit_events",
            select.join(", ")
        ))
        .await[0];
    for field in &fields {
        let in_mysql = text(row, field.as_str()).unwrap_or_default();
        let in_spool = match &spooled[field.as_str()] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(in_mysql, in_spool, "column {field}");
    }

    // ...and what the SDK sent.
    let column = |name: &str| text(row, name).unwrap_or_default();
    assert_eq!(column("trace_id"), trace_id);
    assert_eq!(column("span_id"), span_id);
    assert_eq!(column("trace_flags"), "1", "sampled");
    assert_eq!(column("event_name"), "image.generate");
    assert_eq!(column("actor_id"), "alice");
    assert_eq!(column("actor_name"), "Alice Liddell");
    assert_eq!(column("client_address"), "198.51.100.4");
    assert_eq!(column("outcome"), "success");
    assert_eq!(column("target"), "model/sdxl");
    assert_eq!(column("service_name"), "imagegen-ui");
    assert_eq!(column("scope_name"), "audit");
    assert_eq!(column("body"), "a lighthouse in a storm, in MySQL");
    assert_eq!(column("severity_number"), "9");
    assert_eq!(column("severity_text"), "INFO");
    assert_eq!(column("node"), "test-node");
    assert_eq!(column("seq"), "1");
    assert_eq!(column("time_unix_nano"), time_ns.to_string(), "exact time");
    assert_eq!(
        row.get::<i64, _>("time_us"),
        (time_ns / 1000) as i64,
        "`time` is the event time to the microsecond"
    );
    assert_eq!(column("hash"), spooled["hash"].as_str().unwrap());
    assert_eq!(column("hash").len(), 64);
    assert_eq!(column("prev_hash"), "0".repeat(64), "first in the chain");
    let attributes = column("attributes");
    let keys: Vec<String> = attributes
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(|kv| kv.split(':').next())
        .map(|k| k.trim_matches('"').to_owned())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "attribute keys are sorted: {attributes}");
    for key in ["a.first", "audit.target", "image.count", "user.id", "zoom"] {
        assert!(keys.iter().any(|k| k == key), "{key} in {attributes}");
    }
    assert_eq!(
        text(row, "image_count").as_deref(),
        Some("2"),
        "JSON column"
    );
    let resource: Value = serde_json::from_str(&column("resource_attributes")).unwrap();
    assert_eq!(resource["service.name"], "imagegen-ui");
}

// ---------------------------------------------------------------------------

/// Sends `events` new events (after what is unacknowledged from before)
/// and `kill -9`s the server once the sink has written some of them but
/// not all that was acknowledged, i.e. in the middle of delivery. Returns
/// the rows in `table` after the kill.
async fn kill_mid_delivery(
    server: &mut Server,
    db: &Database,
    table: &str,
    round: usize,
    events: usize,
    load: &Arc<Mutex<Load>>,
) -> i64 {
    let rows_before = db.try_count(table).await.unwrap_or(0);
    let sender = start_sending(server, load, SPAN, round, events);
    let deadline = Instant::now() + CATCH_UP;
    let (rows_at_kill, acked_at_kill) = loop {
        let rows = db.try_count(table).await.unwrap_or(0);
        let acked = load.lock().unwrap().acked.len() as i64;
        if rows > rows_before && rows < acked {
            server.kill9();
            break (rows, acked);
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    sender.await.unwrap();
    // A transaction the server had already received may still commit after
    // the kill, so the count now can reach what was acknowledged; the kill
    // itself came while rows were missing.
    let rows = db.try_count(table).await.unwrap_or(0);
    eprintln!(
        "round {round}: killed at {rows_at_kill} of {acked_at_kill} acknowledged rows; {rows} rows after the kill"
    );
    rows_at_kill
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_through_kill_9_mid_delivery() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = sink("warehouse", &db.url())
        .delivery("max_events", "200")
        .to_string();
    let load = Arc::new(Mutex::new(Load::default()));
    let mut killed_at = Vec::new();
    for round in 0..2 {
        let mut server = Server::start_in(dir.path(), "", &sinks);
        killed_at.push(kill_mid_delivery(&mut server, &db, TABLE, round, 3000, &load).await);
    }

    let server = Server::start_in(dir.path(), "", &sinks);
    resend_unacked(&server, &load).await;
    let sent = std::mem::take(&mut load.lock().unwrap().trace_of);
    assert_eq!(load.lock().unwrap().acked.len(), sent.len());
    assert!(sent.len() >= 6000);
    wait_rows(&db, TABLE, sent.len(), &server).await;
    wait_caught_up(&server, "warehouse", sent.len(), CATCH_UP).await;
    assert_no_dead_letters(&server, "warehouse").await;
    assert_eq!(
        server.events("limit=0").await.len(),
        sent.len(),
        "the spool holds each event once"
    );
    assert_exactly_once(&db, &sent).await;
    eprintln!("killed at {killed_at:?} rows of {}", sent.len());

    // Everything delivered once more, from the start (what a renamed sink
    // does): the table does not change.
    drop(server);
    let sinks = sinks.replace("name = \"warehouse\"", "name = \"warehouse-again\"");
    let server = Server::start_in(dir.path(), "", &sinks);
    wait_caught_up(&server, "warehouse-again", sent.len(), CATCH_UP).await;
    assert_no_dead_letters(&server, "warehouse-again").await;
    assert_eq!(
        server
            .metric("auditrail_sink_delivered_events_total{sink=\"warehouse-again\"}")
            .await as usize,
        sent.len() + internal_events(&server).await.len(),
        "every event was delivered again (and the config change that renamed the sink)"
    );
    assert_exactly_once(&db, &sent).await;
}

/// A crash while ingest is quiet does not make the sink start over: the
/// delivery loop flushes its cursor, which the spool otherwise writes only
/// with the next commit.
#[tokio::test(flavor = "multi_thread")]
async fn cursor_survives_kill_9_while_ingest_is_quiet() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = sink("warehouse", &db.url()).to_string();
    let mut server = Server::start_in(dir.path(), "", &sinks);
    let (request, ids) = numbered_batch(SPAN, "quiet", 50);
    send(&mut client(&server).await, request).await;
    wait_caught_up(&server, "warehouse", ids.len(), CATCH_UP).await;
    // Idle for longer than the loop's one-second flush, then crash.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill9();

    let server = Server::start_in(dir.path(), "", &sinks);
    let (_, status) = sink_status(&server, "warehouse").await;
    assert_eq!(
        status["cursor"], 50,
        "the cursor survived the crash: {status}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server
            .metric("auditrail_sink_delivered_events_total{sink=\"warehouse\"}")
            .await,
        0.0,
        "nothing is delivered again after the restart"
    );
    wait_rows(&db, TABLE, ids.len(), &server).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_and_hang_then_catch_up() {
    let mut mariadb = PrivateMariaDb::start().await;
    let db = Database::create_on(&mariadb.server_url()).await;
    let sinks = sink("warehouse", &db.url())
        .delivery("max_events", "100")
        .delivery("timeout", "\"2s\"")
        .to_string();
    let server = Server::start_with("", &sinks);
    let mut client = client(&server).await;
    let mut sent = HashMap::new();

    // A: delivered while all is well.
    let total = send_batch(&mut client, &mut sent, SPAN, "A", 5).await;
    wait_rows(&db, TABLE, total, &server).await;
    wait_caught_up(&server, "warehouse", total, CATCH_UP).await;

    // B: the database hangs. Ingest goes on, /readyz stays ready and names
    // the failing sink, and its lag shows.
    mariadb.hang();
    let total = send_batch(&mut client, &mut sent, SPAN, "B", 10).await;
    eventually_within(
        Duration::from_secs(30),
        "/readyz reports the hung sink unhealthy",
        || async {
            let (code, status) = sink_status(&server, "warehouse").await;
            assert_eq!(code, 200, "a failing sink does not make the node unready");
            status["healthy"] == false && status["last_error"].is_string()
        },
    )
    .await;
    eventually_within(Duration::from_secs(30), "lag metric above 0", || async {
        server
            .metric("auditrail_sink_lag_events{sink=\"warehouse\"}")
            .await
            > 0.0
    })
    .await;
    // It stays hung across several attempts, each of which times out.
    let errors = async || {
        sink_counter(&server, "auditrail_sink_errors_total", "warehouse")
            .await
            .0
    };
    eventually_within(
        Duration::from_secs(30),
        "retries go on (and time out) while hung",
        || async { errors().await >= 3.0 },
    )
    .await;
    let (_, status) = sink_status(&server, "warehouse").await;
    eprintln!("while hung: {status}");
    // The hang ends: B arrives, once.
    mariadb.resume();
    wait_rows(&db, TABLE, total, &server).await;
    wait_caught_up(&server, "warehouse", total, CATCH_UP).await;
    assert_exactly_once(&db, &sent).await;

    // C: the database is down altogether.
    let (_, status) = sink_status(&server, "warehouse").await;
    assert_eq!(status["healthy"], true, "{status}");
    mariadb.stop().await;
    let total = send_batch(&mut client, &mut sent, SPAN, "C", 10).await;
    eventually_within(
        Duration::from_secs(30),
        "/readyz reports the stopped database",
        || async {
            let (code, status) = sink_status(&server, "warehouse").await;
            assert_eq!(code, 200, "a failing sink does not make the node unready");
            // Refused connections are retried by the pool until the
            // delivery timeout (2s here) ends the attempt, so the error
            // may read either way.
            status["healthy"] == false
                && status["last_error"].is_string()
                && status["lag_events"].as_u64() > Some(0)
        },
    )
    .await;
    let before = errors().await;
    eventually_within(
        Duration::from_secs(30),
        "retries go on while the database is down",
        || async { errors().await >= before + 2.0 },
    )
    .await;
    let (_, status) = sink_status(&server, "warehouse").await;
    eprintln!("while down: {status}");

    // Back: everything arrives, once.
    mariadb.restart().await;
    wait_rows(&db, TABLE, total, &server).await;
    wait_caught_up(&server, "warehouse", total, CATCH_UP).await;
    assert_exactly_once(&db, &sent).await;
    let (errors, samples) = sink_counter(&server, "auditrail_sink_errors_total", "warehouse").await;
    eprintln!("errors: {samples:?}");
    assert!(errors > 0.0, "errors counted by kind: {samples:?}");
    assert!(
        samples.iter().any(|s| s.contains("kind=\"timeout\"")),
        "the hang counted as timeouts: {samples:?}"
    );
    let (_, status) = sink_status(&server, "warehouse").await;
    assert_eq!(status["healthy"], true, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    assert_no_dead_letters(&server, "warehouse").await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn poison_record_is_dead_lettered_then_replayed() {
    let db = Database::create().await;
    let sinks = sink("warehouse", &db.url())
        .delivery("max_events", "100")
        .to_string();
    let server = Server::start_with("", &sinks);

    // One request of 20; the 8th has an `audit.target` the TEXT column
    // cannot hold (65,535 bytes at most; the session is strict).
    let big_target = "t".repeat(70_000);
    let (mut request, ids) = numbered_batch(SPAN, "poison", 20);
    let poison_uid = ids[7].0.clone();
    request.resource_logs[0].scope_logs[0].log_records[7]
        .attributes
        .push(otlp::attr("audit.target", otlp::string(big_target.clone())));
    send(&mut client(&server).await, request).await;

    wait_rows(&db, TABLE, 19, &server).await;
    eventually_within(Duration::from_secs(30), "one dead letter", || async {
        server
            .metric("auditrail_sink_dead_lettered_events_total{sink=\"warehouse\"}")
            .await
            == 1.0
    })
    .await;
    let poison = server
        .events(&format!("text=prompt for {poison_uid}:"))
        .await;
    assert_eq!(poison.len(), 1, "{poison:?}");
    let poison_seq = poison[0]["seq"].as_u64().unwrap();
    let stored: i64 = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE event_id = '{poison_uid}'"
        ))
        .await;
    assert_eq!(stored, 0, "the poison record is not in the table");

    let admin = server.admin_url();
    let list = cli(&["dead-letter", "list", "--admin", &admin]);
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let line = table
        .lines()
        .find(|l| l.contains(&poison_uid))
        .unwrap_or_else(|| panic!("{poison_uid} not listed:\n{table}"));
    assert!(line.starts_with("warehouse"), "{line}");
    assert!(line.contains(&format!(" {poison_seq} ")), "{line}");
    assert!(
        line.contains("1406") || line.contains("Data too long"),
        "the reason is the server's: {line}"
    );
    assert_eq!(
        table.lines().count(),
        2,
        "a header and one dead letter:\n{table}"
    );

    let list = cli(&["dead-letter", "list", "--admin", &admin, "--format", "json"]);
    assert!(list.status.success());
    let letters: Vec<Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["sink"], "warehouse");
    assert_eq!(letter["seq"], poison_seq);
    assert_eq!(letter["replay"], false);
    assert_eq!(letter["event"]["event_id"], poison_uid.as_str());
    assert_eq!(
        letter["event"]["target"].as_str().map(str::len),
        Some(70_000)
    );
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("1406") && reason.contains("Data too long"),
        "{reason}"
    );

    // The operator widens the column, then replays.
    db.execute("ALTER TABLE audit_events MODIFY target LONGTEXT NOT NULL")
        .await;
    let replay = cli(&[
        "dead-letter",
        "replay",
        "--admin",
        &admin,
        "--sink",
        "warehouse",
    ]);
    let out = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(out.contains("marked 1 "), "{out}");

    wait_rows(&db, TABLE, 20, &server).await;
    // The trail recorded the dead letter and the replay.
    eventually_within(
        Duration::from_secs(30),
        "the tombstones in MySQL",
        || async { db.count(TABLE).await == 22 },
    )
    .await;
    let row = &db
        .rows(&format!(
            "SELECT seq, target FROM audit_events WHERE event_id = '{poison_uid}'"
        ))
        .await[0];
    assert_eq!(row.get::<u64, _>("seq"), poison_seq);
    assert!(
        text(row, "target").as_deref() == Some(big_target.as_str()),
        "the full target"
    );
    eventually_within(
        Duration::from_secs(30),
        "the dead letter is resolved",
        || async {
            let list = cli(&["dead-letter", "list", "--admin", &admin, "--format", "json"]);
            list.status.success() && list.stdout.is_empty()
        },
    )
    .await;
    let list = cli(&["dead-letter", "list", "--admin", &admin]);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).trim(),
        "no dead letters"
    );
    assert_exactly_once(&db, &ids.into_iter().collect()).await;
    assert_eq!(
        server
            .metric("auditrail_sink_dead_lettered_events_total{sink=\"warehouse\"}")
            .await,
        1.0
    );
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn startup_errors_are_clear() {
    let db = Database::create().await;
    const QUICKLY: Duration = Duration::from_secs(15);

    // (a) A wrong password: one clear error, and no start.
    let user = db.create_user("right").await;
    let url = db.url_as(&user);
    let sinks = SinkToml::new("warehouse", &url)
        .set("password_env", "\"AUDITRAIL_TEST_MYSQL_PASSWORD\"")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    auditrail_tests::binary(); // built before the clock starts
    let started = Instant::now();
    let (status, log) = Server::start_expecting_exit(
        dir.path(),
        "",
        &sinks,
        &[("AUDITRAIL_TEST_MYSQL_PASSWORD", "wrong")],
        QUICKLY,
    );
    let took = started.elapsed();
    eprintln!("wrong password, exit after {took:?}:\n{log}");
    assert!(took < Duration::from_secs(10), "exits at once: {took:?}");
    assert!(!status.success(), "{log}");
    assert_eq!(
        log.matches("Access denied").count(),
        1,
        "one error, not a retry storm:\n{log}"
    );
    let error = log.lines().find(|l| l.contains("Access denied")).unwrap();
    assert!(error.contains("warehouse"), "names the sink: {error}");
    assert!(error.contains("password"), "hints at the password: {error}");

    // The right one works (and the hint above was not a guess).
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in_env(
        dir.path(),
        "",
        &sinks,
        &[("AUDITRAIL_TEST_MYSQL_PASSWORD", "right")],
    );
    wait_caught_up(&server, "warehouse", 0, CATCH_UP).await;
    assert_eq!(db.count(TABLE).await, 0, "the table was created");
    assert!(server.terminate().success());

    // (b) A database that does not exist.
    let missing = format!("{}_missing", db.name());
    let sinks = SinkToml::new("warehouse", &db.url().replace(db.name(), &missing)).to_string();
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = Server::start_expecting_exit(dir.path(), "", &sinks, &[], QUICKLY);
    eprintln!("missing database:\n{log}");
    assert!(!status.success(), "{log}");
    assert_eq!(log.matches("Unknown database").count(), 1, "{log}");
    assert!(log.contains(&missing), "{log}");

    // (b2) A TLS mode the server cannot meet (the test server has no TLS).
    let sinks = format!(
        "{}\n[sinks.tls]\nmode = \"verify_identity\"\n",
        SinkToml::new("warehouse", &db.url())
    );
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = Server::start_expecting_exit(dir.path(), "", &sinks, &[], QUICKLY);
    eprintln!("tls required:\n{log}");
    assert!(!status.success(), "{log}");
    assert_eq!(log.matches("does not support TLS").count(), 1, "{log}");

    // (c) A table of another shape: named, and left as it is.
    let sinks = sink("warehouse", &db.url()).to_string();
    db.execute("DROP TABLE audit_events").await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "", &sinks);
    wait_caught_up(&server, "warehouse", 0, CATCH_UP).await;
    assert!(server.terminate().success());
    db.execute("ALTER TABLE audit_events MODIFY seq VARCHAR(20) NOT NULL, DROP COLUMN actor_id")
        .await;
    let before = db.show_create(TABLE).await;
    let (status, log) = Server::start_expecting_exit(dir.path(), "", &sinks, &[], QUICKLY);
    eprintln!("schema drift:\n{log}");
    assert!(!status.success(), "{log}");
    let error = log
        .lines()
        .find(|l| l.contains("audit_events"))
        .unwrap_or_else(|| panic!("no error naming the table:\n{log}"));
    assert!(error.contains("`seq` is varchar(20)"), "{error}");
    assert!(error.contains("`actor_id` is missing"), "{error}");
    assert!(error.contains("never alters"), "{error}");
    assert_eq!(
        db.show_create(TABLE).await,
        before,
        "the table is unchanged"
    );

    // (d) A database that is not there yet is no reason not to start, once
    // the spool exists (a new spool must first ask every sink which seqs it
    // holds: tests/tests/spool_identity.rs).
    let port = free_port();
    let sinks = sink("warehouse", &format!("mysql://root@127.0.0.1:{port}/audit")).to_string();
    let dir = tempfile::tempdir().unwrap();
    Server::start_in(dir.path(), "", "").kill9(); // its identity is flushed before it serves
    let server = Server::start_in(dir.path(), "", &sinks);
    let (uid_request, ids) = numbered_batch(SPAN, "unreachable", 3);
    send(&mut client(&server).await, uid_request).await;
    eventually_within(
        Duration::from_secs(30),
        "the sink reports the refused connection and the events waiting",
        || async {
            let (code, status) = sink_status(&server, "warehouse").await;
            assert_eq!(code, 200, "ready: ingest works without the sink");
            status["healthy"] == false
                && status["last_error"].is_string()
                // The 3 sent, and the config change that added the sink.
                && status["lag_events"] == 4
        },
    )
    .await;
    let (_, status) = sink_status(&server, "warehouse").await;
    eprintln!("unreachable: {status}");
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

// ---------------------------------------------------------------------------

const LEGACY_TABLE: &str = "nano_banana_user_use_log";

const LEGACY_DDL: &str = "CREATE TABLE nano_banana_user_use_log (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    user_name VARCHAR(64),
    device_name VARCHAR(128),
    prompt TEXT,
    result_path VARCHAR(512),
    status VARCHAR(16),
    error_message TEXT,
    model VARCHAR(64),
    duration_ms INT,
    finish_reason VARCHAR(32),
    created_at DATETIME(6)";

/// The seed's columns, each from a canonical field or an attribute.
fn legacy_sink(name: &str, url: &str) -> SinkToml {
    sink(name, url)
        .set("table", &format!("\"{LEGACY_TABLE}\""))
        .column("user_name", "actor_name")
        .column("device_name", "attributes.device.name")
        .column("prompt", "body")
        .column("result_path", "target")
        .column("status", "outcome")
        .column("error_message", "attributes.error.message")
        .column("model", "attributes.gen_ai.request.model")
        .column("duration_ms", "attributes.duration_ms")
        .column("finish_reason", "attributes.gen_ai.response.finish_reasons")
        .column("created_at", "time")
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_table_mapping() {
    let db = Database::create().await;
    db.execute(&format!("{LEGACY_DDL})")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(
        dir.path(),
        "",
        &legacy_sink("legacy", &db.url()).to_string(),
    );

    let base = otlp::now_unix_nano() - 60_000_000_000;
    let (trace, _) = next_trace_id();
    let mut success = otlp::record(
        "gen-1",
        trace,
        [1; 8],
        "a banana wearing sunglasses",
        vec![
            otlp::attr("event.name", otlp::string("image.generate")),
            otlp::attr("user.name", otlp::string("alice")),
            otlp::attr("device.name", otlp::string("iPhone 15")),
            otlp::attr("audit.target", otlp::string("/outputs/2026/alice/1.png")),
            otlp::attr("audit.outcome", otlp::string("success")),
            otlp::attr("gen_ai.request.model", otlp::string("nano-banana")),
            otlp::attr("duration_ms", otlp::int(1234)),
            otlp::attr(
                "gen_ai.response.finish_reasons",
                otlp::array(vec![otlp::string("stop")]),
            ),
        ],
    );
    success.time_unix_nano = base + 111_222_333;
    let (trace, _) = next_trace_id();
    let mut failure = otlp::record(
        "gen-2",
        trace,
        [2; 8],
        "a banana in the style of a forbidden artist",
        vec![
            otlp::attr("event.name", otlp::string("image.generate")),
            otlp::attr("user.name", otlp::string("bob")),
            otlp::attr("device.name", otlp::string("Pixel 9")),
            otlp::attr("audit.outcome", otlp::string("failure")),
            otlp::attr("gen_ai.request.model", otlp::string("nano-banana-pro")),
            otlp::attr("duration_ms", otlp::int(87)),
            otlp::attr("error.message", otlp::string("content policy: refused")),
        ],
    );
    failure.time_unix_nano = base + 2_000_000_999;
    send(
        &mut client(&server).await,
        otlp::request("nano-banana", vec![success, failure]),
    )
    .await;

    wait_rows(&db, LEGACY_TABLE, 2, &server).await;
    let rows = db
        .rows(&format!(
            "SELECT id, user_name, device_name, prompt, result_path, status, error_message, model, \
             duration_ms, finish_reason, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', created_at) AS created_us \
             FROM {LEGACY_TABLE} ORDER BY user_name"
        ))
        .await;
    assert_eq!(rows.len(), 2);
    let get = |i: usize, column: &str| text(&rows[i], column);
    assert_eq!(get(0, "user_name").as_deref(), Some("alice"));
    assert_eq!(get(0, "device_name").as_deref(), Some("iPhone 15"));
    assert_eq!(
        get(0, "prompt").as_deref(),
        Some("a banana wearing sunglasses")
    );
    assert_eq!(
        get(0, "result_path").as_deref(),
        Some("/outputs/2026/alice/1.png")
    );
    assert_eq!(get(0, "status").as_deref(), Some("success"));
    assert_eq!(get(0, "error_message"), None, "absent attribute → NULL");
    assert_eq!(get(0, "model").as_deref(), Some("nano-banana"));
    assert_eq!(rows[0].get::<Option<i32>, _>("duration_ms"), Some(1234));
    assert_eq!(get(0, "finish_reason").as_deref(), Some(r#"["stop"]"#));
    assert_eq!(
        rows[0].get::<i64, _>("created_us"),
        ((base + 111_222_333) / 1000) as i64
    );

    assert_eq!(get(1, "user_name").as_deref(), Some("bob"));
    assert_eq!(get(1, "device_name").as_deref(), Some("Pixel 9"));
    assert_eq!(
        get(1, "prompt").as_deref(),
        Some("a banana in the style of a forbidden artist")
    );
    assert_eq!(get(1, "result_path").as_deref(), Some(""), "no target");
    assert_eq!(get(1, "status").as_deref(), Some("failure"));
    assert_eq!(
        get(1, "error_message").as_deref(),
        Some("content policy: refused")
    );
    assert_eq!(get(1, "model").as_deref(), Some("nano-banana-pro"));
    assert_eq!(rows[1].get::<Option<i32>, _>("duration_ms"), Some(87));
    assert_eq!(get(1, "finish_reason"), None);
    assert_eq!(
        rows[1].get::<i64, _>("created_us"),
        ((base + 2_000_000_999) / 1000) as i64
    );
    let ids: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
    assert!(ids.iter().all(|id| *id > 0), "AUTO_INCREMENT ids: {ids:?}");

    // Without a unique key that identifies an event, a re-delivery stores
    // rows twice: the start-up warning says so, and it is true (a renamed
    // sink starts over from the oldest event).
    assert!(server.log().contains("no unique key"), "{}", server.log());
    assert!(server.terminate().success());
    let server = Server::start_in(
        dir.path(),
        "",
        &legacy_sink("legacy2", &db.url()).to_string(),
    );
    // The two again, and the trail's record of the config change that
    // renamed the sink (a row of its own in the legacy table).
    wait_rows(&db, LEGACY_TABLE, 5, &server).await;
    wait_caught_up(&server, "legacy2", 2, CATCH_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_table_with_a_unique_event_id_is_exactly_once() {
    let db = Database::create().await;
    db.execute(&format!("{LEGACY_DDL}, event_id VARCHAR(128) UNIQUE)"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = legacy_sink("legacy", &db.url())
        .column("event_id", "event_id")
        .delivery("max_events", "100")
        .to_string();
    let mut server = Server::start_in(dir.path(), "", &sinks);
    let load = Arc::new(Mutex::new(Load::default()));
    kill_mid_delivery(&mut server, &db, LEGACY_TABLE, 0, 2000, &load).await;

    let server = Server::start_in(dir.path(), "", &sinks);
    assert!(
        !server.log().contains("no unique key"),
        "the key on event_id is recognised:\n{}",
        server.log()
    );
    resend_unacked(&server, &load).await;
    let sent: HashSet<String> = load.lock().unwrap().trace_of.keys().cloned().collect();
    wait_rows(&db, LEGACY_TABLE, sent.len(), &server).await;
    wait_caught_up(&server, "legacy", sent.len(), CATCH_UP).await;
    assert_no_dead_letters(&server, "legacy").await;
    drop(server);

    // Everything delivered again from the start (a renamed sink): no row
    // is added.
    let sinks = sinks.replace("name = \"legacy\"", "name = \"legacy-again\"");
    let server = Server::start_in(dir.path(), "", &sinks);
    wait_caught_up(&server, "legacy-again", sent.len(), CATCH_UP).await;
    assert_no_dead_letters(&server, "legacy-again").await;
    assert_eq!(
        server
            .metric("auditrail_sink_delivered_events_total{sink=\"legacy-again\"}")
            .await as usize,
        sent.len() + internal_events(&server).await.len(),
        "every event was delivered again (and the config change that renamed the sink)"
    );
    let rows = db
        .rows(&format!(
            "SELECT event_id, user_name, prompt FROM {LEGACY_TABLE} WHERE event_id NOT LIKE 'auditrail-%'"
        ))
        .await;
    assert_eq!(rows.len(), sent.len());
    let stored: HashSet<String> = rows
        .iter()
        .map(|r| text(r, "event_id").expect("event_id"))
        .collect();
    assert_eq!(stored, sent);
    for row in &rows {
        let event_id = text(row, "event_id").unwrap();
        assert_eq!(
            text(row, "prompt").unwrap(),
            format!("prompt for {event_id}: a banana in a spacesuit")
        );
    }
}
