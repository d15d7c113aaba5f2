//! Issue 7 D: the disk quota is reached, retention frees space, and the
//! spool accepts again. Small commits (a few requests of small events) keep
//! sled's data in its `db` file, which sled rarely shrinks, so a quota on the
//! files' size would stay reached after retention removed everything.
//!
//! The same test measures the file ceiling at other scales (not in CI):
//! `AUDITRAIL_QUOTA_MAX_DISK` (bytes, default 24 MiB), `AUDITRAIL_QUOTA_ROUNDS`
//! (default 4), `AUDITRAIL_QUOTA_EVENTS` (events per request, default 50) and
//! `AUDITRAIL_QUOTA_BODY` (body bytes, default 300); see docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditrail_model::AuditEvent;
use auditrail_spool::{Spool, SpoolConfig, SpoolError};
use rand::distr::{Alphanumeric, SampleString};

const RETENTION: Duration = Duration::from_secs(2);
/// sled's segment size (see lib.rs).
const SEGMENT: u64 = 8 << 20;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: not a number: {e}"))
    })
}

/// The quota, and the shape of the load that fills it.
struct Scale {
    max_disk: u64,
    rounds: usize,
    events_per_request: usize,
    body_bytes: usize,
}

impl Scale {
    fn from_env() -> Scale {
        Scale {
            max_disk: knob("AUDITRAIL_QUOTA_MAX_DISK", 24 << 20),
            rounds: knob("AUDITRAIL_QUOTA_ROUNDS", 4) as usize,
            events_per_request: knob("AUDITRAIL_QUOTA_EVENTS", 50) as usize,
            body_bytes: knob("AUDITRAIL_QUOTA_BODY", 300) as usize,
        }
    }

    fn events(&self, prefix: &str, n: usize) -> Vec<AuditEvent> {
        events(prefix, n, self.body_bytes)
    }
}

fn events(prefix: &str, n: usize, body_bytes: usize) -> Vec<AuditEvent> {
    let received = now();
    (0..n)
        .map(|i| AuditEvent {
            event_id: format!("{prefix}-{i}"),
            time_unix_nano: received,
            received_time_unix_nano: received,
            service_name: "svc".into(),
            event_name: "api.request".into(),
            actor_id: format!("user-{}", i % 50),
            // Random text: the spool compresses batches, and the quota
            // counts what is stored.
            body: format!(
                "request {prefix}-{i} {}",
                Alphanumeric.sample_string(&mut rand::rng(), body_bytes)
            ),
            attributes: r#"{"http.route":"/v1/images"}"#.into(),
            resource_attributes: "{}".into(),
            ..Default::default()
        })
        .collect()
}

/// Appends from 4 concurrent "clients" until the spool refuses; returns
/// (seq, received time) of every acknowledged event.
async fn fill(spool: &Arc<Spool>, scale: &Scale, round: usize) -> Vec<(u64, u64)> {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90 + (scale.max_disk >> 20));
    for request in 0.. {
        assert!(Instant::now() < deadline, "round {round}: never refused");
        let mut tasks = Vec::new();
        for client in 0..4 {
            let spool = spool.clone();
            let batch = scale.events(
                &format!("r{round}-q{request}-c{client}"),
                scale.events_per_request,
            );
            let received = batch[0].received_time_unix_nano;
            tasks.push(tokio::spawn(async move {
                (received, spool.append(batch).await)
            }));
        }
        let mut refused = false;
        for task in tasks {
            match task.await.unwrap() {
                (received, Ok(appended)) => {
                    acked.extend(appended.seqs.into_iter().map(|s| (s, received)))
                }
                (_, Err(SpoolError::QuotaExceeded { .. })) => refused = true,
                (_, Err(e)) => panic!("round {round}: unexpected error {e}"),
            }
        }
        if refused {
            return acked;
        }
    }
    unreachable!()
}

/// Nothing acknowledged was removed before its retention ran out.
fn assert_nothing_evicted_early(spool: &Spool, acked: &[(u64, u64)], before: u64) {
    let first = spool.stats().first_seq;
    let retention = RETENTION.as_nanos() as u64;
    for &(seq, received) in acked {
        if received + retention > before {
            assert!(
                seq >= first,
                "seq {seq} (received {}s before the check) was evicted before its retention",
                (before - received) as f64 / 1e9
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_frees_the_quota_again_and_files_stay_bounded() {
    let scale = Scale::from_env();
    let max_disk = scale.max_disk;
    let dir = tempfile::tempdir().unwrap();
    let mut config = SpoolConfig::new(dir.path(), "n");
    config.max_disk_bytes = max_disk;
    config.retention = RETENTION;
    let spool = Arc::new(Spool::open(config).unwrap());
    // The file ceiling (see quota.rs), plus a segment for the writes between
    // two measurements of the files.
    let bound = 2 * max_disk + 9 * SEGMENT;
    let mut largest_files = 0;
    for round in 0..scale.rounds {
        let acked = fill(&spool, &scale, round).await;
        let full = spool.stats();
        eprintln!(
            "round {round}: refused after {} events: {full:?}",
            acked.len()
        );
        assert!(!acked.is_empty(), "round {round}: nothing was accepted");
        assert!(
            full.live_bytes >= max_disk - (1 << 20),
            "round {round}: refused at {} live bytes, well below max_disk",
            full.live_bytes
        );
        assert!(
            full.disk_bytes <= bound,
            "round {round}: sled's files {} exceed {bound}",
            full.disk_bytes
        );
        largest_files = largest_files.max(full.disk_bytes);
        // Retention runs every 500 ms (the binary's gc_interval); appends
        // must be accepted again soon after the events expire.
        let expired = Instant::now() + RETENTION;
        let deadline = expired + Duration::from_secs(30);
        loop {
            let before = now();
            spool.gc(before).unwrap();
            assert_nothing_evicted_early(&spool, &acked, before);
            if spool.check_quota().is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: still refused {}s after retention removed events: {:?}",
                (Instant::now() - expired).as_secs(),
                spool.stats()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "round {round}: accepting again after {:.1}s: {:?}",
            (Instant::now() + RETENTION - expired).as_secs_f64(),
            spool.stats()
        );
        spool
            .append(scale.events(&format!("r{round}-after"), 10))
            .await
            .expect("accepted once retention freed the quota");
    }
    eprintln!(
        "max_disk {max_disk}: sled's files at most {largest_files} bytes when full, {:.2} x max_disk",
        largest_files as f64 / max_disk as f64
    );
    // The live count survives a restart without recounting.
    let live = spool.stats().live_bytes;
    spool.close().unwrap();
    drop(spool);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        let mut config = SpoolConfig::new(dir.path(), "n");
        config.max_disk_bytes = max_disk;
        match Spool::open(config) {
            Ok(spool) => break spool,
            // sled releases its lock from background threads a moment later.
            Err(e) if Instant::now() > deadline => panic!("reopen: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(reopened.stats().live_bytes, live);
}
