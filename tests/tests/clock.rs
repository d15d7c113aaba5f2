//! Issue 7 D: the server's wall clock jumps back a day while it runs. seqs
//! stay gap-free and increasing, the chain stays intact, retention removes
//! nothing early (neither what was received before the jump, now "from the
//! future", nor what came after), queries and the sink see every event, and
//! the sink's lag gauge stays sane.
//!
//! Only the server's clock moves: libfaketime (Debian package `faketime`,
//! installed by `scripts/test`) is preloaded into it, reading its offset
//! from a file on every call. CLOCK_MONOTONIC is left alone
//! (`FAKETIME_DONT_FAKE_MONOTONIC`), as it is on a real machine whose
//! clock is stepped, so tokio's timers keep their pace.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use auditrail_tests::mysql::{Database, SinkToml};
use auditrail_tests::sinks::{client, send_batch, wait_caught_up};
use auditrail_tests::{cli, eventually_within, otlp, Server};
use serde_json::Value;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const DAY_NS: u64 = 86_400 * 1_000_000_000;
/// Span ids of this test's events start with this byte.
const SPAN: u8 = 0xc1;

fn set_clock(file: &Path, offset: &str) {
    // Written whole and renamed, so the server never reads a half-written offset.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).expect("writing the faketime offset");
    std::fs::rename(&tmp, file).expect("installing the faketime offset");
}

async fn all_events(server: &Server) -> Vec<Value> {
    server.events("limit=0").await
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn received(event: &Value) -> u64 {
    event["received_time_unix_nano"]
        .as_u64()
        .or_else(|| event["received_time_unix_nano"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no received time in {event}"))
}

/// The sink's lag gauge is never negative, nor near the clock's jump.
async fn assert_lag_sane(server: &Server) {
    let lag = server
        .metric("auditrail_sink_lag_seconds{sink=\"warehouse\"}")
        .await;
    assert!(
        (0.0..3600.0).contains(&lag),
        "auditrail_sink_lag_seconds is {lag} after the clock jumped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_jumping_back_a_day_changes_no_seq_chain_or_retention() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install the Debian package faketime (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    set_clock(&clock, "+0");
    let db = Database::create().await;
    let sinks = SinkToml::new("warehouse", &db.url())
        .set("table", "\"audit_events\"")
        .delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .to_string();
    let clock_path = clock.to_str().unwrap().to_owned();
    let server = Server::start_in_env(
        dir.path(),
        "retention = \"20s\"\ngc_interval = \"1s\"",
        &sinks,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let mut grpc = client(&server).await;
    let mut sent = HashMap::new();

    // A: received on the right clock.
    let before_a = otlp::now_unix_nano();
    let a = send_batch(&mut grpc, &mut sent, SPAN, "A", 5).await;
    let after_a = otlp::now_unix_nano();
    wait_caught_up(&server, "warehouse", a, Duration::from_secs(60)).await;

    // B: the clock is stepped back a day; B is received "before" A.
    set_clock(&clock, "-1d");
    let total = send_batch(&mut grpc, &mut sent, SPAN, "B", 5).await;
    assert_lag_sane(&server).await;
    wait_caught_up(&server, "warehouse", total, Duration::from_secs(60)).await;
    assert_lag_sane(&server).await;

    let events = all_events(&server).await;
    assert_eq!(events.len(), total, "every event is stored");
    let mut by_seq = seqs(&events);
    by_seq.sort_unstable();
    assert_eq!(
        by_seq,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs are gap-free"
    );
    for event in &events {
        let id = event["event_id"].as_str().unwrap();
        let seq = event["seq"].as_u64().unwrap();
        let at = received(event);
        if id.starts_with("A-") {
            assert!(seq <= a as u64, "{id} was stored before B");
            assert!(
                (before_a..=after_a).contains(&at),
                "{id}: received at {at}, not on the real clock"
            );
        } else {
            assert!(seq > a as u64, "{id} was stored after A");
            // Proves the server's clock was really moved (by libfaketime).
            let behind = after_a.saturating_sub(at);
            assert!(
                behind > DAY_NS - 120_000_000_000 && behind < DAY_NS + 120_000_000_000,
                "{id}: received {behind} ns before A ended, expected about a day"
            );
        }
    }
    let trace = sent.values().next().unwrap().clone();
    assert_eq!(server.events(&format!("trace_id={trace}")).await.len(), 1);
    assert_eq!(
        server.events("actor=user-3&limit=0").await.len(),
        10 * (0..40).filter(|i| i % 7 == 3).count(),
        "an indexed query finds A's and B's events"
    );

    // Retention (20 s, a pass every second) removes nothing early: A is
    // "from the future" on the stepped-back clock, B is younger than 20 s on
    // it. Watched for 25 s after A was received.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(25);
    while tokio::time::Instant::now() < watch_until {
        assert_eq!(
            all_events(&server).await.len(),
            total,
            "retention removed events early after the clock stepped back"
        );
        assert_lag_sane(&server).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        server.metric("auditrail_spool_expired_events_total").await,
        0.0
    );

    // The clock is set right again: A is now 25 s old, past retention, and
    // B's receive time is a day ago, so both go; seqs and chain go on.
    set_clock(&clock, "+0");
    eventually_within(
        Duration::from_secs(60),
        "retention removes A and B once the clock is right",
        || async { all_events(&server).await.is_empty() },
    )
    .await;
    assert_eq!(
        server.metric("auditrail_spool_expired_events_total").await,
        total as f64
    );
    let total = send_batch(&mut grpc, &mut sent, SPAN, "C", 1).await;
    wait_caught_up(&server, "warehouse", total, Duration::from_secs(60)).await;
    let c = all_events(&server).await;
    let mut c_seqs = seqs(&c);
    c_seqs.sort_unstable();
    assert_eq!(c_seqs, (401..=total as u64).collect::<Vec<_>>());
    assert_lag_sane(&server).await;

    // The sink holds every event once.
    let rows: Vec<String> = db
        .rows("SELECT event_id FROM audit_events")
        .await
        .iter()
        .map(|r| auditrail_tests::mysql::text(r, "event_id").unwrap())
        .collect();
    assert_eq!(rows.len(), total);
    assert_eq!(
        rows.into_iter().collect::<HashSet<_>>(),
        sent.keys().cloned().collect::<HashSet<_>>()
    );

    let mut server = server;
    assert!(server.terminate().success());
    let out = cli(&["verify", "--data-dir", server.spool_dir().to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("checked 40 events"),
        "verify after the clock jumps: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
