//! The crash loop: `kill -9` at random moments under load, many times over,
//! with a MySQL and a ClickHouse sink attached. Afterwards every event that
//! was sent (a client resends what was not acknowledged, as OTLP clients
//! do) is in the spool exactly once, and in each table exactly once, with
//! seqs 1..=N and the chain intact.
//!
//! `AUDITRAIL_CRASH_ROUNDS` sets the number of kills (default 10, what CI
//! runs); `AUDITRAIL_CRASH_SEED` replays a run (each run prints its seed).
//! `scripts/fault-suite` runs a longer loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auditrail_tests::sinks::{
    assert_no_dead_letters, assert_rows_exactly_once, resend_unacked, start_sending,
    wait_caught_up, wait_count, Load,
};
use auditrail_tests::{cli, clickhouse, mysql, Server};

/// How long sinks may take to catch up, on a loaded two-core machine.
const CATCH_UP: Duration = Duration::from_secs(120);
const SPAN: u8 = 0xc1;
const TABLE: &str = "audit_events";

/// A small deterministic generator (xorshift64*), so a failing run can be
/// replayed from its seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let rounds = env_u64("AUDITRAIL_CRASH_ROUNDS").unwrap_or(10) as usize;
    let seed = env_u64("AUDITRAIL_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            | 1
    });
    eprintln!("crash loop: {rounds} rounds, AUDITRAIL_CRASH_SEED={seed}");
    let mut dice = Dice(seed);

    let warehouse = mysql::Database::create().await;
    let analytics = clickhouse::Database::legacy().await;
    let sinks = format!(
        "{}\n{}",
        mysql::SinkToml::new("warehouse", &warehouse.url())
            .delivery("max_events", "200")
            .delivery("linger", "\"20ms\"")
            .delivery("backoff_initial", "\"50ms\"")
            .delivery("backoff_max", "\"1s\""),
        clickhouse::sink("analytics", analytics.url(), analytics.name())
            .delivery("max_events", "300")
            .delivery("linger", "\"50ms\"")
            .delivery("backoff_initial", "\"50ms\"")
            .delivery("backoff_max", "\"1s\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let load = Arc::new(Mutex::new(Load::default()));
    let mut kills = Vec::new();
    for round in 0..rounds {
        let mut server = Server::start_in(dir.path(), "", &sinks);
        let sender = start_sending(
            &server,
            &load,
            SPAN,
            round,
            1000 + 100 * dice.below(20) as usize,
        );
        // Anywhere from right after start-up (mid-recovery, sinks still
        // preparing) to well into the load (mid-commit, mid-delivery).
        let after = Duration::from_millis(dice.below(1500));
        tokio::time::sleep(after).await;
        server.kill9();
        sender.await.unwrap();
        let acked = load.lock().unwrap().acked.len();
        kills.push((after.as_millis(), acked));
    }
    eprintln!("killed after (ms, acknowledged so far): {kills:?}");

    let server = Server::start_in(dir.path(), "", &sinks);
    resend_unacked(&server, &load).await;
    let sent = std::mem::take(&mut load.lock().unwrap().trace_of);
    let n = sent.len();
    assert_eq!(
        load.lock().unwrap().acked.len(),
        n,
        "every event was acknowledged in the end"
    );

    // The spool: each event once, seqs 1..=N, chain intact.
    let stored: Vec<_> = server
        .events("limit=0")
        .await
        .iter()
        .map(|e| auditrail_tests::sinks::StoredRow {
            event_id: e["event_id"].as_str().unwrap().to_owned(),
            trace_id: e["trace_id"].as_str().unwrap().to_owned(),
            seq: e["seq"].as_u64().unwrap(),
        })
        .collect();
    assert_rows_exactly_once("the spool", &stored, &sent);

    // Both tables: each event once (ClickHouse 18.16 has no insert tokens,
    // so a re-sent row waits for a merge: FINAL is the collapsed view).
    wait_count("MySQL", n as u64, &server, CATCH_UP, || async {
        warehouse.try_count(TABLE).await.unwrap_or(0) as u64
    })
    .await;
    wait_count("ClickHouse FINAL", n as u64, &server, CATCH_UP, || async {
        analytics.try_count(TABLE, "FINAL").await.unwrap_or(0)
    })
    .await;
    for sink in ["warehouse", "analytics"] {
        wait_caught_up(&server, sink, n, CATCH_UP).await;
        assert_no_dead_letters(&server, sink).await;
    }
    assert_rows_exactly_once("MySQL", &warehouse.stored_rows(TABLE).await, &sent);
    assert_rows_exactly_once(
        "ClickHouse FINAL",
        &analytics.stored_rows(TABLE, "FINAL").await,
        &sent,
    );

    let spool = server.spool_dir();
    drop(server);
    let verify = cli(&["verify", "--data-dir", spool.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify: {out}");
    assert!(
        out.contains(&format!("checked {n} events, seq 1..{n}")),
        "{out}"
    );
}
