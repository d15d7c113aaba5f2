//! Spool identity end to end: a wiped spool must not start again at seq 1
//! under the same node id, because the sinks' `(node, seq)` keys would
//! silently discard its events as duplicates of old rows; and a spool
//! restored from an older copy (behind what a sink holds) must be a loud
//! error, never silent discards. Against the real MariaDB, Debian's
//! ClickHouse 18.16 and ClickHouse 26.x (chdb).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use auditrail_tests::clickhouse::{self, num, select, Chdb};
use auditrail_tests::mysql::{self, text, PrivateMariaDb, SinkToml};
use auditrail_tests::sinks::{
    assert_no_dead_letters, assert_none_missing, client, send_batch, sink_counter, sink_status,
    tail,
};
use auditrail_tests::{free_port, Server};
use sqlx::Row;

/// How long a sink may take to catch up, on a loaded two-core machine.
const CATCH_UP: Duration = Duration::from_secs(90);
/// The first byte of the span ids of this file's batches.
const SPAN: u8 = 0xe1;

/// Where a test's sink writes, read back as (event_id, seq) rows.
enum Table {
    Mysql(mysql::Database),
    /// The `auditrail` schema's table (read `FINAL`).
    Clickhouse(clickhouse::Database),
    /// The `otel` schema's table: seq and event id in `LogAttributes`.
    Otel(clickhouse::Database),
}

impl Table {
    async fn rows(&self) -> Vec<(String, u64)> {
        match self {
            Table::Mysql(db) => db
                .rows("SELECT event_id, seq FROM audit_events ORDER BY seq")
                .await
                .iter()
                .map(|row| (text(row, "event_id").unwrap(), row.get::<u64, _>("seq")))
                .collect(),
            Table::Clickhouse(db) => select(
                db.url(),
                &format!(
                    "SELECT event_id, seq FROM {} FINAL ORDER BY seq",
                    db.table("audit_events")
                ),
            )
            .await
            .iter()
            .map(|r| (r["event_id"].as_str().unwrap().to_owned(), num(&r["seq"])))
            .collect(),
            Table::Otel(db) => select(
                db.url(),
                &format!(
                    "SELECT LogAttributes['auditrail.event_id'] AS event_id, \
                     toUInt64(LogAttributes['auditrail.seq']) AS seq FROM {} \
                     ORDER BY seq LIMIT 1 BY seq",
                    db.table("otel_logs")
                ),
            )
            .await
            .iter()
            .map(|r| (r["event_id"].as_str().unwrap().to_owned(), num(&r["seq"])))
            .collect(),
        }
    }
}

fn delivery(sink: SinkToml) -> SinkToml {
    sink.delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .delivery("backoff_max", "\"1s\"")
        .delivery("timeout", "\"5s\"")
}

/// Waits until `sink` is healthy and has confirmed every event the spool
/// holds; returns the spool's highest seq.
async fn wait_delivered(server: &Server, sink: &str) -> u64 {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let last = server
            .events("limit=0")
            .await
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .max()
            .unwrap_or(0);
        let (_, status) = sink_status(server, sink).await;
        if status["healthy"] == true && status["cursor"] == last {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "sink {sink} did not confirm up to seq {last} within {CATCH_UP:?}: {status}\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event in `sent` is in `rows` exactly once; returns uid → seq.
fn each_once(rows: &[(String, u64)], sent: &HashMap<String, String>) -> HashMap<String, u64> {
    let mut seq_of = HashMap::new();
    for (uid, seq) in rows {
        assert!(
            sent.contains_key(uid),
            "row for {uid}, which was never sent"
        );
        assert!(
            seq_of.insert(uid.clone(), *seq).is_none(),
            "{uid} stored twice"
        );
    }
    assert_none_missing(sent, &seq_of.keys().cloned().collect());
    let mut uid_of = HashMap::new();
    for (uid, seq) in rows {
        if let Some(other) = uid_of.insert(*seq, uid) {
            panic!("{other} and {uid} share seq {seq}: (node, seq) must name one event");
        }
    }
    seq_of
}

/// The log says each of `parts`.
fn assert_says(log: &str, parts: &[&str]) {
    for part in parts {
        assert!(log.contains(part), "{part:?} not in:\n{}", tail(log));
    }
}

/// Delivers 120 events, stops, wipes the spool directory, starts again with
/// the same node id and sinks, and sends 80 more: all 200 must be in every
/// table, the new ones with seqs above the old maximum.
async fn wiped_spool_keeps_delivering(tables: Vec<(&str, Table)>, sinks: String) {
    let dir = tempfile::tempdir().unwrap();
    let mut sent = HashMap::new();
    let mut server = Server::start_in(dir.path(), "", &sinks);
    send_batch(&mut client(&server).await, &mut sent, SPAN, "before", 3).await;
    for (sink, _) in &tables {
        assert_eq!(wait_delivered(&server, sink).await, 120);
    }
    let (_, first_ready) = server.readyz().await;
    assert!(server.terminate().success());

    std::fs::remove_dir_all(server.spool_dir()).unwrap();
    let server = Server::start_in(dir.path(), "", &sinks);
    let before: Vec<String> = sent.keys().cloned().collect();
    send_batch(&mut client(&server).await, &mut sent, SPAN, "after", 2).await;
    for (sink, table) in &tables {
        let last = wait_delivered(&server, sink).await;
        assert_no_dead_letters(&server, sink).await;
        // The table first: what a user sees (before this change: 80 of
        // the 200 events missing from MySQL, taken for duplicates of old
        // rows; in ClickHouse two events per seq, which its deduplication
        // tokens drop whenever the batches are cut alike).
        let rows = table.rows().await;
        let seq_of = each_once(&rows, &sent);
        assert_eq!(last, 200);
        assert_eq!(
            rows.len(),
            200,
            "sink {sink}: the table grew by the new events"
        );
        let old_max = before.iter().map(|u| seq_of[u]).max().unwrap();
        assert_eq!(old_max, 120);
        let new_min = seq_of
            .iter()
            .filter(|(u, _)| u.starts_with("after"))
            .map(|(_, s)| *s)
            .min()
            .unwrap();
        assert_eq!(
            new_min, 121,
            "sink {sink}: new seqs continue after the old maximum"
        );
    }
    let first = &first_ready["spool"]["identity"];
    assert_eq!(first["first_seq"], 1, "{first_ready}");
    let (_, ready) = server.readyz().await;
    let identity = &ready["spool"]["identity"];
    assert_eq!(
        identity["first_seq"], 121,
        "a new spool starts after what the sinks hold: {ready}"
    );
    assert_eq!(identity["spool_id"].as_str().unwrap().len(), 32, "{ready}");
    assert_ne!(
        identity["spool_id"], first["spool_id"],
        "a new spool, a new id"
    );
    assert!(
        server.log().contains("new spool: its seqs start at 121"),
        "{}",
        tail(&server.log())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_spool_continues_after_what_mysql_holds() {
    let db = mysql::Database::create().await;
    let sinks = delivery(SinkToml::new("warehouse", &db.url())).to_string();
    wiped_spool_keeps_delivering(vec![("warehouse", Table::Mysql(db))], sinks).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_spool_continues_after_what_clickhouse_18_16_holds() {
    let db = clickhouse::Database::legacy().await;
    let sinks = delivery(clickhouse::sink("warehouse", db.url(), db.name())).to_string();
    wiped_spool_keeps_delivering(vec![("warehouse", Table::Clickhouse(db))], sinks).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_spool_continues_after_what_modern_clickhouse_holds_in_both_schemas() {
    let chdb = Chdb::start();
    let db = clickhouse::Database::create(&chdb.url()).await;
    let otel = clickhouse::Database::create(&chdb.url()).await;
    let sinks = format!(
        "{}\n{}",
        delivery(clickhouse::sink("warehouse", db.url(), db.name())),
        delivery(
            clickhouse::sink("grafana", otel.url(), otel.name())
                .set("schema", "\"otel\"")
                .set("table", "\"otel_logs\"")
        )
    );
    wiped_spool_keeps_delivering(
        vec![
            ("warehouse", Table::Clickhouse(db)),
            ("grafana", Table::Otel(otel)),
        ],
        sinks,
    )
    .await;
    drop(chdb);
}

// ---------------------------------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A spool restored from an older copy is behind the sink: starting with
/// the sink reachable is a clear start-up error; starting while it is down
/// works, and once it is back the sink shows failing with that error and
/// writes nothing (instead of having its events discarded as duplicates).
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_restored_from_an_older_copy_is_a_loud_error() {
    let mut mariadb = PrivateMariaDb::start().await;
    let db = mysql::Database::create_on(&mariadb.server_url()).await;
    let sinks = delivery(SinkToml::new("warehouse", &db.url())).to_string();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let mut sent = HashMap::new();

    let mut server = Server::start_in(dir.path(), "", &sinks);
    send_batch(&mut client(&server).await, &mut sent, SPAN, "old", 3).await;
    assert_eq!(wait_delivered(&server, "warehouse").await, 120);
    assert!(server.terminate().success());
    copy_dir(&server.spool_dir(), &backup);

    let mut server = Server::start_in(dir.path(), "", &sinks);
    send_batch(&mut client(&server).await, &mut sent, SPAN, "later", 2).await;
    assert_eq!(wait_delivered(&server, "warehouse").await, 200);
    assert!(server.terminate().success());

    std::fs::remove_dir_all(server.spool_dir()).unwrap();
    copy_dir(&backup, &server.spool_dir());
    let (status, log) =
        Server::start_expecting_exit(dir.path(), "", &sinks, &[], Duration::from_secs(60));
    assert!(!status.success());
    assert_says(
        &log,
        &[
            "sink \"warehouse\" (mysql): spool_identity:",
            "holds events of node \"test-node\" up to seq 200",
            "has assigned seqs only up to 120",
            "restored from an older copy, or another auditrail instance uses node id",
        ],
    );

    // The database is down at start: the check waits for it.
    mariadb.stop().await;
    let server = Server::start_in(dir.path(), "", &sinks);
    let mut late = HashMap::new();
    send_batch(&mut client(&server).await, &mut late, SPAN, "restored", 1).await;
    mariadb.restart().await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let (code, status) = sink_status(&server, "warehouse").await;
        assert_eq!(code, 200, "ingest goes on: {status}");
        let error = status["last_error"].as_str().unwrap_or_default();
        if error.contains("spool_identity") {
            assert!(error.contains("up to seq 200"), "{status}");
            assert_eq!(status["healthy"], false, "{status}");
            assert_eq!(status["cursor"], 120, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not report the conflict: {status}\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        db.count("audit_events").await,
        200,
        "nothing written, nothing discarded"
    );
    let (errors, samples) = sink_counter(&server, "auditrail_sink_errors_total", "warehouse").await;
    assert!(
        errors > 0.0
            && samples
                .iter()
                .any(|s| s.contains("kind=\"spool_identity\"")),
        "{samples:?}"
    );
    drop(server);
    drop(mariadb);
}

/// A SIGTERM that comes while start-up waits on a sink shuts down
/// cleanly: before, the handler was installed only once serving, and the
/// signal's default action killed the process.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_sink_check_hangs_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // A "database" that takes connections and never says a word: the new
    // spool's check of the sink hangs (for the pool's 10 s acquire timeout).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mysql://root@{}/audit", silent.local_addr().unwrap());
    let sinks = delivery(SinkToml::new("warehouse", &url)).to_string();
    let mut server = Server::spawn_starting(dir.path(), "", &sinks);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("spool open") {
        assert!(
            Instant::now() < deadline,
            "never opened the spool:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = server.terminate();
    let log = server.log();
    assert!(
        status.success(),
        "SIGTERM during start-up is a clean shutdown, not death by signal: {status}\n{log}"
    );
    assert!(log.contains("shutting down during start-up"), "{log}");
    drop(silent);
}

/// A new spool with a sink that cannot be asked which seqs it holds does
/// not start (it could reuse them), with an error that says why and what
/// to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_spool_with_an_unreachable_sink_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mysql://root@127.0.0.1:{}/audit", free_port());
    let sinks = delivery(SinkToml::new("warehouse", &url)).to_string();
    let (status, log) =
        Server::start_expecting_exit(dir.path(), "", &sinks, &[], Duration::from_secs(60));
    assert!(!status.success());
    assert_says(
        &log,
        &[
            "sink \"warehouse\" (mysql): connection:",
            "the spool is new",
            "start it again once this sink is reachable",
        ],
    );
    // Nothing was decided: once the sink answers, the spool starts at 1.
    let db = mysql::Database::create().await;
    let sinks = delivery(SinkToml::new("warehouse", &db.url())).to_string();
    let server = Server::start_in(dir.path(), "", &sinks);
    let (_, ready) = server.readyz().await;
    assert_eq!(ready["spool"]["identity"]["first_seq"], 1, "{ready}");
}
