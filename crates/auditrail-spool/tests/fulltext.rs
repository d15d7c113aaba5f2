//! The event-level (full-text) index: queries through it find exactly what
//! a scan finds, cost by their matches, and it catches up after a crash.

#[allow(dead_code)] // raw_sled: not needed here
mod common;
use common::reopen;

use std::path::Path;
use std::time::{Duration, Instant};

use auditrail_model::AuditEvent;
use auditrail_spool::{Budget, Filter, Spool, SpoolConfig};

fn trace(n: u64) -> String {
    format!("{:032x}", 0xabcd_0000_0000u64 + n)
}

/// Event `i`: 40 actors, a trace shared by each 4 events, bodies of words
/// (one word in 100 events only), attribute values of every JSON kind.
fn event(i: u64) -> AuditEvent {
    AuditEvent {
        event_id: format!("e{i}"),
        time_unix_nano: 1_000 + i,
        received_time_unix_nano: 1_000 + i,
        actor_id: format!("user-{}", i % 40),
        actor_name: if i.is_multiple_of(7) {
            "Bob Builder".into()
        } else {
            String::new()
        },
        event_name: ["login", "read", "write"][i as usize % 3].into(),
        service_name: "svc".into(),
        trace_id: if i.is_multiple_of(3) {
            trace(i / 4)
        } else {
            String::new()
        },
        body: format!(
            "request {i} from bob@corp.example {}",
            if i % 100 == 42 {
                "zanzibarite found"
            } else {
                "ok"
            }
        ),
        attributes: format!(
            r#"{{"city":"Zürich","n":{i},"ok":true,"tags":["t{}"]}}"#,
            i % 5
        ),
        resource_attributes: r#"{"host":"web-1"}"#.into(),
        ..Default::default()
    }
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig::new(dir, "node-a")
}

async fn filled(dir: &Path, from: u64, to: u64) -> Spool {
    let spool = reopen(|| Spool::open(config(dir)));
    for chunk in (from..to).collect::<Vec<_>>().chunks(300) {
        spool
            .append(chunk.iter().map(|&i| event(i)).collect())
            .await
            .unwrap();
    }
    spool
}

fn wait_fulltext(spool: &Spool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = spool.stats();
        if stats.fulltext_seq == stats.last_seq && stats.indexed_seq == stats.last_seq {
            return;
        }
        assert!(Instant::now() < deadline, "not indexed: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The filters to check, each with a limit of 0 (everything).
fn filters() -> Vec<Filter> {
    let text = |t: &str| Filter {
        text: Some(t.into()),
        ..Default::default()
    };
    vec![
        text("zanzibarite"),
        // Substrings inside a token, across punctuation, in attribute values
        // of each kind, and one in no event.
        text("nzibari"),
        text("bob@corp"),
        text("rich"),
        text("t3"),
        text("123"),
        text("true"),
        text("st 4"),
        text("qqxyzzy"),
        // Keys are not values.
        text("city"),
        // Nothing alphanumeric: a scan.
        text("@"),
        Filter {
            trace_id: Some(trace(21)),
            ..Default::default()
        },
        Filter {
            actor: Some("user-7".into()),
            ..Default::default()
        },
        Filter {
            actor: Some("Bob Builder".into()),
            text: Some("zanzibarite".into()),
            ..Default::default()
        },
        Filter {
            event_name: Some("write".into()),
            text: Some("t1".into()),
            ..Default::default()
        },
    ]
}

/// What a scan of every event finds.
fn expected(all: &[AuditEvent], filter: &Filter) -> Vec<u64> {
    all.iter()
        .filter(|e| filter.matches(e))
        .map(|e| e.seq)
        .collect()
}

fn found(spool: &Spool, filter: &Filter) -> Vec<u64> {
    let mut seqs: Vec<u64> = spool.query(filter).unwrap().iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    seqs
}

/// In seq order, from `after`, through `scan`.
fn scanned(spool: &Spool, filter: &Filter, after: u64) -> Vec<u64> {
    let filter = Filter {
        after_seq: Some(after),
        ..filter.clone()
    };
    let mut seqs = Vec::new();
    spool
        .scan(&filter, &Budget::default(), |e| {
            seqs.push(e.seq);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    seqs
}

fn check_all(spool: &Spool, all: &[AuditEvent]) {
    for filter in filters() {
        let want = expected(all, &filter);
        assert_eq!(found(spool, &filter), want, "{filter:?}");
        assert_eq!(scanned(spool, &filter, 0), want, "scan {filter:?}");
        let after = all.len() as u64 / 3;
        let tail: Vec<u64> = want.iter().copied().filter(|&s| s > after).collect();
        assert_eq!(
            scanned(spool, &filter, after),
            tail,
            "scan after {after} {filter:?}"
        );
    }
}

#[tokio::test]
async fn indexed_queries_find_what_a_scan_finds_and_examine_only_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let spool = filled(dir.path(), 0, 3000).await;
    wait_fulltext(&spool);
    let all = spool.query(&Filter::default()).unwrap();
    assert_eq!(all.len(), 3000);
    check_all(&spool, &all);

    // Through the index, a rare word costs its matches, not the 3,000.
    for (filter, matches) in [
        (
            Filter {
                text: Some("zanzibarite".into()),
                ..Default::default()
            },
            30,
        ),
        (
            Filter {
                trace_id: Some(trace(21)),
                ..Default::default()
            },
            2,
        ),
    ] {
        let (events, stats) = spool.query_with_stats(&filter).unwrap();
        assert_eq!(events.len(), matches, "{filter:?}");
        assert_eq!(stats.events_examined, matches as u64, "{filter:?}");
    }
    // The newest 10 of an actor's 75: examined in batches from the newest.
    let (events, stats) = spool
        .query_with_stats(&Filter {
            actor: Some("user-7".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        expected(
            &all,
            &Filter {
                actor: Some("user-7".into()),
                ..Default::default()
            }
        )[65..]
    );
    assert!(stats.events_examined < 75, "{}", stats.events_examined);
}

#[tokio::test]
async fn after_a_crash_that_lost_index_commits_queries_still_find_everything() {
    let dir = tempfile::tempdir().unwrap();
    let spool = filled(dir.path(), 0, 1000).await;
    wait_fulltext(&spool);
    spool.close().unwrap();
    drop(spool);
    // The index as a crash right after these events were acknowledged
    // would leave it: committed up to event 1,000 only.
    let stale = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("fulltext"), stale.path());

    let spool = filled(dir.path(), 1000, 2500).await;
    wait_fulltext(&spool);
    spool.close().unwrap();
    drop(spool);
    std::fs::remove_dir_all(dir.path().join("fulltext")).unwrap();
    copy_dir(stale.path(), &dir.path().join("fulltext"));

    let spool = reopen(|| Spool::open(config(dir.path())));
    // At once, before the index caught up (it waits a moment first)...
    assert_eq!(spool.stats().fulltext_seq, 1000, "{:?}", spool.stats());
    let all = spool.query(&Filter::default()).unwrap();
    assert_eq!(all.len(), 2500);
    check_all(&spool, &all);
    // ...and after.
    wait_fulltext(&spool);
    check_all(&spool, &all);
    let (events, stats) = spool
        .query_with_stats(&Filter {
            text: Some("zanzibarite".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(events.len(), 25);
    assert_eq!(stats.events_examined, 25);
}

#[tokio::test]
async fn an_index_of_another_spool_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    // Another spool's index, not as far along as this spool, with its
    // matches at other seqs: trusted, it would hide this spool's first 500.
    let spool = filled(other.path(), 5050, 5550).await;
    wait_fulltext(&spool);
    spool.close().unwrap();
    drop(spool);
    let spool = filled(dir.path(), 0, 1000).await;
    spool.close().unwrap();
    drop(spool);
    std::fs::remove_dir_all(dir.path().join("fulltext")).unwrap();
    copy_dir(&other.path().join("fulltext"), &dir.path().join("fulltext"));

    let spool = reopen(|| Spool::open(config(dir.path())));
    wait_fulltext(&spool);
    let all = spool.query(&Filter::default()).unwrap();
    check_all(&spool, &all);
}

#[tokio::test]
async fn retention_removes_the_documents_of_what_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = filled(dir.path(), 0, 1000).await;
    // Newer events, received much later.
    spool
        .append(
            (1000..1200)
                .map(|i| AuditEvent {
                    received_time_unix_nano: 10u64.pow(18),
                    ..event(i)
                })
                .collect(),
        )
        .await
        .unwrap();
    wait_fulltext(&spool);
    let retention = config(dir.path()).retention.as_nanos() as u64;
    let removed = spool.gc(10u64.pow(18) + retention - 1).unwrap();
    assert_eq!(removed.events, 1000);
    let filter = Filter {
        text: Some("zanzibarite".into()),
        ..Default::default()
    };
    // The 10 matches among the removed events leave the index too: a scan
    // in seq order (which would examine every candidate) examines nothing
    // for them once the index has caught up with retention.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (events, end) = spool
            .query_within(
                &Filter {
                    after_seq: Some(0),
                    ..filter.clone()
                },
                &Budget::default(),
            )
            .unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1043, 1143]
        );
        assert_eq!(found(&spool, &filter), [1043, 1143]);
        if end.events_examined == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still examined {}",
            end.events_examined
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
