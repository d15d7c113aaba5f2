//! A sink removed from the config keeps its cursor and dead letters (with a
//! warning, an entry in `/readyz` and metrics, and retention waiting for
//! it) until `auditrail sink forget NAME`; re-added, it resumes from its
//! cursor. Against the real MariaDB, with the real binary and CLI.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use auditrail_tests::mysql::{Database, SinkToml};
use auditrail_tests::sinks::{
    client, numbered_batch, send, send_batch, sink_counter, sink_status, tail, wait_caught_up,
};
use auditrail_tests::{cli, eventually_within, otlp, Server};
use serde_json::Value;

/// How long a sink may take to catch up, on a loaded two-core machine.
const CATCH_UP: Duration = Duration::from_secs(60);
/// The first byte of the span ids of this file's batches.
const SPAN: u8 = 0xe2;

fn sink(name: &str, url: &str) -> SinkToml {
    SinkToml::new(name, url)
        .delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .delivery("backoff_max", "\"1s\"")
}

/// `/readyz`'s `removed_sinks`.
async fn removed_sinks(server: &Server) -> Vec<Value> {
    let (_, ready) = server.readyz().await;
    ready["removed_sinks"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no removed_sinks in /readyz: {ready}"))
}

async fn stored_seqs(server: &Server) -> Vec<u64> {
    let mut seqs: Vec<u64> = server
        .events("limit=0")
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_sink_keeps_its_cursor_and_resumes_when_re_added() {
    let db = Database::create().await;
    let sinks = sink("warehouse", &db.url()).to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut sent = HashMap::new();

    let mut server = Server::start_in(dir.path(), "", &sinks);
    send_batch(&mut client(&server).await, &mut sent, SPAN, "first", 1).await;
    wait_caught_up(&server, "warehouse", 40, CATCH_UP).await;
    assert!(server.terminate().success());

    // Removed from the config: kept, and said so.
    let mut server = Server::start_in(dir.path(), "", "");
    send_batch(
        &mut client(&server).await,
        &mut sent,
        SPAN,
        "while-removed",
        1,
    )
    .await;
    let log = server.log();
    assert!(
        log.contains("sink is no longer configured") && log.contains("warehouse"),
        "no warning at start-up:\n{}",
        tail(&log)
    );
    let removed = removed_sinks(&server).await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["name"], "warehouse");
    assert_eq!(removed[0]["cursor"], 40);
    // The 40 sent while it was removed, and the trail's record of the
    // config change that removed it (seq 41).
    assert_eq!(removed[0]["lag_events"], 41, "{removed:?}");
    let changes = server.events("event=auditrail.config.changed").await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["seq"], 41);
    assert_eq!(removed[0]["dead_letters"], 0);
    let note = removed[0]["note"].as_str().unwrap();
    assert!(
        note.contains("retention keeps every event") && note.contains("sink forget warehouse"),
        "{note}"
    );
    assert_eq!(
        server
            .metric("auditrail_sink_removed{sink=\"warehouse\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("auditrail_sink_lag_events{sink=\"warehouse\"}")
            .await,
        41.0
    );
    assert!(server.terminate().success());

    // Added back: it resumes from its cursor, sending only what it missed.
    let server = Server::start_in(dir.path(), "", &sinks);
    wait_caught_up(&server, "warehouse", 80, CATCH_UP).await;
    let (delivered, samples) = sink_counter(
        &server,
        "auditrail_sink_delivered_events_total",
        "warehouse",
    )
    .await;
    // What it missed: the 40 sent while it was removed, and the two config
    // changes (removing it, adding it back) the trail recorded.
    assert_eq!(delivered, 42.0, "no redelivery from the start: {samples:?}");
    assert_eq!(db.count("audit_events").await, 82);
    assert!(removed_sinks(&server).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_waits_for_a_removed_sink() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sent = HashMap::new();
    let mut server = Server::start_in(dir.path(), "", &sink("warehouse", &db.url()).to_string());
    send_batch(&mut client(&server).await, &mut sent, SPAN, "delivered", 1).await;
    wait_caught_up(&server, "warehouse", 40, CATCH_UP).await;
    assert!(server.terminate().success());

    let server = Server::start_in(
        dir.path(),
        "retention = \"1s\"\ngc_interval = \"100ms\"",
        "",
    );
    send_batch(&mut client(&server).await, &mut sent, SPAN, "waiting", 1).await;
    let sent_at = Instant::now();
    // What the removed sink confirmed goes once it is past retention...
    eventually_within(CATCH_UP, "the delivered events expire", || async {
        stored_seqs(&server).await.first() == Some(&41)
    })
    .await;
    // ...what it has not stays, however long past retention.
    while sent_at.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // (Seq 41 is the config change that removed the sink, then 40 sent.)
    assert_eq!(stored_seqs(&server).await, (41..=81).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_forget_removes_cursor_and_dead_letters_and_refuses_a_configured_sink() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "", &sink("warehouse", &db.url()).to_string());
    // The 3rd record's target does not fit the TEXT column: a dead letter.
    let (mut request, _) = numbered_batch(SPAN, "forget", 10);
    request.resource_logs[0].scope_logs[0].log_records[2]
        .attributes
        .push(otlp::attr("audit.target", otlp::string("t".repeat(70_000))));
    send(&mut client(&server).await, request).await;
    wait_caught_up(&server, "warehouse", 10, CATCH_UP).await;
    let (_, status) = sink_status(&server, "warehouse").await;
    assert_eq!(status["dead_letters"], 1, "{status}");
    assert!(server.terminate().success());

    // Another sink is configured now; warehouse is removed.
    let other = sink("other", &db.url())
        .set("table", "\"other_events\"")
        .to_string();
    let mut server = Server::start_in(dir.path(), "", &other);
    let admin = server.admin_url();
    // (It gets everything, and rejects the same record.)
    wait_caught_up(&server, "other", 10, CATCH_UP).await;
    let removed = removed_sinks(&server).await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(
        (
            removed[0]["cursor"].as_u64(),
            removed[0]["dead_letters"].as_u64()
        ),
        // The 10, and the tombstone of its dead letter.
        (Some(11), Some(1))
    );

    let refused = cli(&["sink", "forget", "other", "--admin", &admin]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("still configured"),
        "{stderr}"
    );

    let forgot = cli(&["sink", "forget", "warehouse", "--admin", &admin]);
    let stdout = String::from_utf8_lossy(&forgot.stdout);
    assert!(
        forgot.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&forgot.stderr)
    );
    assert!(
        stdout.contains(
            "forgot sink \"warehouse\": removed its cursor at seq 11 and 1 dead letter(s)"
        ),
        "{stdout}"
    );
    assert!(removed_sinks(&server).await.is_empty());
    let letters = cli(&[
        "dead-letter",
        "list",
        "--admin",
        &admin,
        "--sink",
        "warehouse",
    ]);
    let letters = String::from_utf8_lossy(&letters.stdout);
    assert_eq!(letters.trim(), "no dead letters", "warehouse has none left");
    let again = cli(&["sink", "forget", "warehouse", "--admin", &admin]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no cursor and no dead letters"));
    assert!(server.terminate().success());

    // On a stopped server: with its config, a configured sink is refused...
    let config = server.config_path.to_str().unwrap().to_owned();
    let refused = cli(&["sink", "forget", "other", "--config", &config]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("still configured"));
    // ...and with --data-dir the spool is changed directly.
    let data_dir = server.spool_dir().to_str().unwrap().to_owned();
    let forgot = cli(&["sink", "forget", "other", "--data-dir", &data_dir]);
    assert!(
        forgot.status.success(),
        "{}",
        String::from_utf8_lossy(&forgot.stderr)
    );
    // Its cursor is past the 10 sent and the events the trail wrote (the
    // dead letters' tombstones, the config change).
    let stdout = String::from_utf8_lossy(&forgot.stdout);
    let cursor: u64 = stdout
        .split("removed its cursor at seq ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(cursor > 10, "{stdout}");
    assert!(stdout.contains("and 1 dead letter(s)"), "{stdout}");
}
