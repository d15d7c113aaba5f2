//! The delivery loop against real failures, with a real spool and the real
//! MariaDB (a database of the test's own, see `auditrail_tests::mysql`).
//!
//! A dead letter that cannot be stored: the spool sits on a small tmpfs
//! that the test fills, so sled's write of the dead letter fails with
//! ENOSPC, the way it would on a full disk. (Mounting needs root, which
//! the test machines and CI have; without it the test fails, saying so.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrail_exporters::{Pipeline, SinkConfig, SinkStatus};
use auditrail_model::AuditEvent;
use auditrail_spool::{Spool, SpoolConfig};
use auditrail_tests::mysql::{Database, SinkToml};
use sqlx::Row;

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed ({status}); this test needs root to make a full filesystem",
            dir.path().display()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem has no space left.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 1 << 16];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn event(n: u64, target: String) -> AuditEvent {
    AuditEvent {
        event_id: format!("dl-{n}"),
        time_unix_nano: 1_700_000_000_000_000_000 + n,
        received_time_unix_nano: 1_700_000_000_000_000_000 + n,
        tenant: "default".into(),
        service_name: "imagegen-ui".into(),
        event_name: "image.generate".into(),
        body: format!("prompt {n}"),
        attributes: "{}".into(),
        resource_attributes: "{}".into(),
        target,
        ..AuditEvent::default()
    }
}

fn sink_configs(toml: &str) -> Vec<SinkConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        sinks: Vec<SinkConfig>,
    }
    toml::from_str::<File>(toml)
        .unwrap_or_else(|e| panic!("{toml}: {e}"))
        .sinks
}

async fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cursor(spool: &Spool, sink: &str) -> u64 {
    spool
        .cursors()
        .expect("cursors")
        .into_iter()
        .find(|(name, _)| name == sink)
        .map_or(0, |(_, c)| c)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_that_cannot_be_stored_holds_the_cursor_and_shows_stuck() {
    let db = Database::create().await;
    let fs = Tmpfs::mount("48m");
    let mut config = SpoolConfig::new(fs.path().join("spool"), "dl-node");
    config.cache_bytes = 8 << 20;
    let spool = Arc::new(Spool::open(config).expect("spool on the tmpfs"));
    // Seq 3's target is over TEXT's 64 KiB: MySQL refuses it (permanent),
    // so the loop isolates it and dead-letters it.
    let events = (1..=6)
        .map(|n| {
            event(
                n,
                if n == 3 {
                    "x".repeat(70_000)
                } else {
                    format!("t{n}")
                },
            )
        })
        .collect();
    spool.append(events).await.expect("append");
    spool.flush().expect("flush");

    let toml = SinkToml::new("warehouse", &db.url())
        .delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"20ms\"")
        .delivery("backoff_max", "\"200ms\"")
        .delivery("stuck_after", "3")
        .to_string();
    let configs = sink_configs(&toml);
    // Full before delivery starts, so the dead letter cannot be written.
    let filler = fs.fill();
    let pipeline = Pipeline::start(spool.clone(), &configs, Duration::from_secs(86_400))
        .await
        .expect("pipeline");

    let status: SinkStatus = poll("the sink to show the dead-letter failure as stuck", || {
        pipeline.statuses().into_iter().find(|s| s.stuck.is_some())
    })
    .await;
    let stuck = status.stuck.clone().expect("stuck");
    assert_eq!(status.state, "stuck", "{status:?}");
    assert_eq!((stuck.first_seq, stuck.last_seq), (3, 3), "{status:?}");
    assert!(stuck.attempts >= 3, "{status:?}");
    assert!(
        stuck
            .error
            .starts_with("dead_letter: storing the dead letter of seq 3 failed"),
        "{status:?}"
    );
    // The rows before the poison are in the table; the loop is not done
    // with the batch, so the cursor has not moved past seq 3 (it has not
    // moved at all: the whole batch 1-6 waits for its dead letter).
    let seqs: Vec<u64> = db
        .rows("SELECT seq FROM audit_events ORDER BY seq")
        .await
        .iter()
        .map(|r| r.get::<u64, _>("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2], "rows in MySQL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cursor(&spool, "warehouse") < 3,
        "the cursor moved past an event that is neither in the sink nor a dead letter: {}",
        cursor(&spool, "warehouse")
    );

    // sled keeps an I/O error for the life of the process, so it takes a
    // restart once there is space again: the batch is delivered anew from
    // the cursor, the dead letter is stored and the cursor reaches the end.
    // Nothing was lost on the way.
    pipeline.shutdown().await;
    drop(pipeline);
    let _ = spool.close();
    drop(spool);
    std::fs::remove_file(&filler).expect("remove the filler");
    let spool = poll("the spool to reopen", || {
        let mut config = SpoolConfig::new(fs.path().join("spool"), "dl-node");
        config.cache_bytes = 8 << 20;
        Spool::open(config).ok()
    })
    .await;
    let spool = Arc::new(spool);
    let pipeline = Pipeline::start(spool.clone(), &configs, Duration::from_secs(86_400))
        .await
        .expect("pipeline after the restart");
    // Seq 7: the tombstone the dead letter left, delivered like the rest.
    let status = poll("the sink to deliver everything", || {
        pipeline.statuses().into_iter().find(|s| s.cursor == 7)
    })
    .await;
    assert_eq!(status.state, "delivering", "{status:?}");
    assert_eq!(status.stuck, None);
    let letters = spool
        .dead_letters(Some("warehouse"), None)
        .expect("dead letters");
    assert_eq!(letters.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(db.count("audit_events").await, 6);
    let tombstone = db
        .rows("SELECT CAST(event_name AS CHAR) AS event_name, CAST(attributes AS CHAR) AS attributes FROM audit_events WHERE seq = 7")
        .await;
    assert_eq!(
        tombstone[0].get::<String, _>("event_name"),
        "auditrail.tombstone"
    );
    assert!(tombstone[0]
        .get::<String, _>("attributes")
        .contains(r#""auditrail.seq":3"#));
    pipeline.shutdown().await;
}
