//! The spool's promises, exercised through its public API on a real sled.

mod common;
use common::{raw_sled, reopen};

use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};

use auditrail_model::{chain_hash, AuditEvent, Outcome, GENESIS_HASH};
use auditrail_spool::{
    ChainStart, Filter, ProblemKind, ReadOnlySpool, Spool, SpoolConfig, SpoolError,
};

fn event(id: &str, time: u64, actor: &str, name: &str) -> AuditEvent {
    AuditEvent {
        event_id: id.into(),
        time_unix_nano: time,
        received_time_unix_nano: time,
        actor_id: actor.into(),
        event_name: name.into(),
        service_name: "svc".into(),
        body: format!("body of {id}"),
        attributes: r#"{"city":"Paris"}"#.into(),
        resource_attributes: "{}".into(),
        ..Default::default()
    }
}

fn open(dir: &std::path::Path) -> Spool {
    Spool::open(SpoolConfig::new(dir, "node-a")).unwrap()
}

fn all(spool: &Spool) -> Vec<AuditEvent> {
    spool.query(&Filter::default()).unwrap()
}

#[tokio::test]
async fn seqs_are_gap_free_and_chained() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let first = spool
        .append(
            (0..3)
                .map(|i| event(&format!("e{i}"), 10 + i, "alice", "x"))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(first.seqs, [1, 2, 3]);
    let second = spool
        .append(vec![event("e3", 20, "bob", "y")])
        .await
        .unwrap();
    assert_eq!(second.seqs, [4]);

    let events = all(&spool);
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let mut prev = GENESIS_HASH;
    for e in &events {
        assert_eq!(e.node, "node-a");
        assert_eq!(e.prev_hash, prev);
        assert_eq!(e.hash, chain_hash(&prev, &e.canonical_bytes()));
        prev = e.hash;
    }
}

#[tokio::test]
async fn resent_ids_are_acknowledged_but_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    spool.append(vec![event("a", 1, "u", "x")]).await.unwrap();
    // Same id within one request and across requests, before and after the
    // indexer has caught up.
    let again = spool
        .append(vec![
            event("a", 1, "u", "x"),
            event("b", 2, "u", "x"),
            event("b", 2, "u", "x"),
        ])
        .await
        .unwrap();
    assert_eq!((again.stored, again.duplicates), (1, 2));
    assert_eq!(again.seqs, [2]);
    wait_indexed(&spool).await;
    let later = spool.append(vec![event("b", 2, "u", "x")]).await.unwrap();
    assert_eq!((later.stored, later.duplicates, later.seqs), (0, 1, vec![]));
    assert_eq!(all(&spool).len(), 2);
}

/// An id is unique within its tenant: one tenant cannot claim another's
/// `log.record.uid` in advance and have the real event dropped as a
/// duplicate. Checked in the live dedup set and in the one rebuilt at start.
#[tokio::test]
async fn ids_are_deduplicated_within_a_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let of = |tenant: &str| AuditEvent {
        tenant: tenant.into(),
        ..event("claimed-uid", 1, "u", "x")
    };
    {
        let spool = open(dir.path());
        let claim = spool.append(vec![of("mallory")]).await.unwrap();
        assert_eq!(claim.stored, 1);
        let real = spool.append(vec![of("acme"), of("default")]).await.unwrap();
        assert_eq!(
            (real.stored, real.duplicates),
            (2, 0),
            "other tenants' events are not duplicates"
        );
        let resend = spool.append(vec![of("acme")]).await.unwrap();
        assert_eq!(
            (resend.stored, resend.duplicates),
            (0, 1),
            "a resend within the tenant is"
        );
        spool.close().unwrap();
    }
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    let after = spool
        .append(vec![of("acme"), of("mallory"), of("default"), of("globex")])
        .await
        .unwrap();
    assert_eq!(
        (after.stored, after.duplicates),
        (1, 3),
        "the rebuilt set is scoped the same way"
    );
    let tenants: Vec<String> = all(&spool).into_iter().map(|e| e.tenant).collect();
    assert_eq!(tenants, ["mallory", "acme", "default", "globex"]);
}

/// The ids auditrail derives for its own events (an alert's, a
/// tombstone's) are keyed with a secret of the spool: a sender who claims
/// the derived id first, in the same tenant, does not make the real one a
/// duplicate; the keyed id is stable, so writing it again after a restart
/// stores it once.
#[tokio::test]
async fn internal_ids_cannot_be_claimed_in_advance() {
    use auditrail_model::internal::{InternalEvent, TOMBSTONE};
    let dir = tempfile::tempdir().unwrap();
    let tombstone = || {
        InternalEvent::new(TOMBSTONE, "acme")
            .id_from(&["sink", "42"])
            .build(7)
    };
    let derived = tombstone().event_id;
    assert!(derived.starts_with("auditrail-"));
    let keyed = {
        let spool = open(dir.path());
        // The sender computed the derivation and sent that id first.
        let claim = AuditEvent {
            tenant: "acme".into(),
            ..event(&derived, 1, "mallory", "x")
        };
        assert_eq!(spool.append(vec![claim]).await.unwrap().stored, 1);
        let stored = spool.record(tombstone()).await.unwrap();
        let stored = stored.expect("the real tombstone is stored, not a duplicate");
        assert_ne!(stored.event_id, derived);
        assert!(stored.event_id.starts_with("auditrail-"));
        assert_eq!(stored.seq, 2);
        spool.close().unwrap();
        stored.event_id
    };
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    assert_eq!(
        spool.record(tombstone()).await.unwrap(),
        None,
        "written again after a restart: stored once"
    );
    let ids: Vec<String> = all(&spool).into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, [derived, keyed]);
}

async fn wait_indexed(spool: &Spool) {
    for _ in 0..200 {
        let stats = spool.stats();
        if stats.indexed_seq == stats.last_seq {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("indexer did not catch up: {:?}", spool.stats());
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let last_hash = {
        let spool = open(dir.path());
        spool
            .append(vec![event("a", 1, "u", "x"), event("b", 2, "u", "x")])
            .await
            .unwrap();
        let hash = all(&spool).last().unwrap().hash;
        spool.close().unwrap();
        hash
    };
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    let appended = spool
        .append(vec![event("b", 2, "u", "x"), event("c", 3, "u", "x")])
        .await
        .unwrap();
    assert_eq!(appended.duplicates, 1, "dedup holds across reopen");
    assert_eq!(appended.seqs, [3], "seq continues after reopen");
    let events = all(&spool);
    assert_eq!(events[2].prev_hash, last_hash, "the chain continues");
    // Batches from before and after the reopen are indexed.
    wait_indexed(&spool).await;
    let by_actor = spool
        .query(&Filter {
            actor: Some("u".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        by_actor.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn queries_use_every_filter() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut events = Vec::new();
    for i in 0..50u64 {
        let actor = if i % 5 == 0 { "alice" } else { "bob" };
        let name = if i % 2 == 0 {
            "image.generate"
        } else {
            "user.login"
        };
        let mut e = event(&format!("e{i}"), 1000 + i, actor, name);
        if i == 7 {
            e.trace_id = "ab".repeat(16);
            e.body = "a city at night".into();
            e.outcome = Outcome::Failure;
        }
        events.push(e);
    }
    spool.append(events).await.unwrap();

    // Both before and after indexing, the answers must be the same.
    for round in 0..2 {
        if round == 1 {
            wait_indexed(&spool).await;
        }
        let q = |f: Filter| spool.query(&f).unwrap();
        let alice = q(Filter {
            actor: Some("alice".into()),
            event_name: Some("image.generate".into()),
            ..Default::default()
        });
        assert_eq!(
            alice
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["e0", "e10", "e20", "e30", "e40"]
        );
        let trace = q(Filter {
            trace_id: Some("ab".repeat(16)),
            ..Default::default()
        });
        assert_eq!(trace.len(), 1);
        assert_eq!(trace[0].event_id, "e7");
        assert_eq!(
            q(Filter {
                text: Some("city at".into()),
                ..Default::default()
            })
            .len(),
            1
        );
        assert_eq!(
            q(Filter {
                text: Some("Paris".into()),
                ..Default::default()
            })
            .len(),
            50
        );
        assert_eq!(
            q(Filter {
                outcome: Some(Outcome::Failure),
                ..Default::default()
            })[0]
                .event_id,
            "e7"
        );
        let window = q(Filter {
            since: Some(1010),
            until: Some(1019),
            ..Default::default()
        });
        assert_eq!(window.len(), 10);
        let newest = q(Filter {
            limit: 3,
            ..Default::default()
        });
        assert_eq!(
            newest.iter().map(|e| e.time_unix_nano).collect::<Vec<_>>(),
            [1047, 1048, 1049],
            "the newest matches, oldest first"
        );
        let tail = q(Filter {
            after_seq: Some(48),
            ..Default::default()
        });
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [49, 50]);
        assert!(q(Filter {
            actor: Some("carol".into()),
            ..Default::default()
        })
        .is_empty());
    }
}

#[tokio::test]
async fn retention_removes_old_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SpoolConfig::new(dir.path(), "n");
    config.retention = Duration::from_nanos(100);
    let spool = Spool::open(config).unwrap();
    spool
        .append(vec![event("old", 1_000, "alice", "x")])
        .await
        .unwrap();
    spool
        .append(vec![event("new", 5_000, "alice", "x")])
        .await
        .unwrap();
    wait_indexed(&spool).await;
    let removed = spool.gc(2_000).unwrap();
    assert_eq!((removed.batches, removed.events), (1, 1));
    let left = all(&spool);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_id, "new");
    assert!(spool
        .query(&Filter {
            actor: Some("alice".into()),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .all(|e| e.event_id == "new"));
    assert_eq!(spool.stats().first_seq, 2);
    assert_eq!(spool.stats().events, 1);
}

#[tokio::test]
async fn quota_refuses_appends_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SpoolConfig::new(dir.path(), "n");
    config.max_disk_bytes = 4096;
    let spool = Spool::open(config).unwrap();
    let big = |id: &str| AuditEvent {
        // Random text: the spool compresses batches, and a run of one
        // byte would shrink to nothing.
        body: Alphanumeric.sample_string(&mut rand::rng(), 8192),
        ..event(id, 1, "u", "x")
    };
    // The first append may fit (an empty spool can be smaller than the
    // quota); the one after it cannot.
    let first_fit = spool.append(vec![big("a")]).await.is_ok();
    match spool.append(vec![big("b")]).await {
        Err(SpoolError::QuotaExceeded {
            limit: 4096, used, ..
        }) => assert!(used >= 4096),
        other => panic!("expected quota error, got {other:?}"),
    }
    assert!(spool.over_quota());
    assert_eq!(
        all(&spool).len(),
        usize::from(first_fit),
        "acknowledged data is kept"
    );
}

#[tokio::test]
async fn a_second_open_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match Spool::open(SpoolConfig::new(dir.path(), "n")) {
        Err(SpoolError::Locked(path)) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open must fail"),
    }
}

#[tokio::test]
async fn verify_finds_an_intact_chain_and_a_tampered_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool
            .append(vec![event("a", 1, "u", "x"), event("b", 2, "u", "x")])
            .await
            .unwrap();
        spool.append(vec![event("c", 3, "u", "x")]).await.unwrap();
        let report = spool.verify(None).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
        assert_eq!(
            (report.events, report.first_seq, report.last_seq),
            (3, Some(1), Some(3))
        );
        spool.close().unwrap();
    }
    // Change one byte of an event's body behind the spool's back.
    {
        let db = raw_sled(dir.path());
        let batches = db.open_tree("batches").unwrap();
        let (key, value) = batches.first().unwrap().unwrap();
        let mut bytes = auditrail_spool::raw_batch::to_plain(&value).unwrap();
        let at = bytes.windows(9).position(|w| w == b"body of a").unwrap();
        bytes[at + 8] = b'z';
        let stored = auditrail_spool::raw_batch::from_plain(&bytes).unwrap();
        batches.insert(key, stored).unwrap();
        db.flush().unwrap();
    }
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    let report = spool.verify(None).unwrap();
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        ["seq 1: modified: content does not match its hash"]
    );
    assert_eq!(report.problems[0].kind, ProblemKind::Modified);
    assert_eq!(report.start, ChainStart::Genesis);
}

/// Every file under `dir` with its length and content hash.
fn file_digests(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, auditrail_model::Hash)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes.len() as u64, chain_hash(&GENESIS_HASH, &bytes)));
            }
        }
    }
    out.sort();
    out
}

/// Writes three batches (seqs 1-2, 3, 4-5), then applies `tamper` to the
/// `batches` tree with sled directly, and verifies read-only.
async fn tampered(tamper: impl FnOnce(&sled::Tree)) -> auditrail_spool::VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool
            .append(vec![event("a", 1, "u", "x"), event("b", 2, "u", "x")])
            .await
            .unwrap();
        spool.append(vec![event("c", 3, "u", "x")]).await.unwrap();
        spool
            .append(vec![event("d", 4, "u", "x"), event("e", 5, "u", "x")])
            .await
            .unwrap();
        spool.close().unwrap();
    }
    {
        let db = raw_sled(dir.path());
        tamper(&db.open_tree("batches").unwrap());
        db.flush().unwrap();
    }
    let before = file_digests(dir.path());
    let spool = reopen(|| ReadOnlySpool::open(dir.path()));
    let report = spool.verify(None).unwrap();
    drop(spool);
    assert_eq!(before, file_digests(dir.path()), "verify changed the spool");
    report
}

fn kinds(report: &auditrail_spool::VerifyReport) -> Vec<(u64, ProblemKind)> {
    report.problems.iter().map(|p| (p.seq, p.kind)).collect()
}

#[tokio::test]
async fn verify_names_each_kind_of_tampering_by_seq() {
    let intact = tampered(|_| {}).await;
    assert!(intact.is_intact(), "{:?}", intact.problems);
    assert_eq!(
        (intact.first_seq, intact.last_seq, intact.events),
        (Some(1), Some(5), 5)
    );
    assert_eq!(intact.start, ChainStart::Genesis);

    // The middle batch (seq 3) removed.
    let removed = tampered(|t| {
        t.remove(3u64.to_be_bytes()).unwrap();
    })
    .await;
    // (Seq 4 cannot link to what is gone: the gap says so already.)
    assert_eq!(kinds(&removed), [(3, ProblemKind::Missing)]);

    // Seq 4-5's batch moved under seq 3's key and seq 3's after it: the
    // walk meets 1, 2, 4, 5, 3.
    let reordered = tampered(|t| {
        let three = t.get(3u64.to_be_bytes()).unwrap().unwrap();
        let four = t.remove(4u64.to_be_bytes()).unwrap().unwrap();
        t.insert(3u64.to_be_bytes(), four).unwrap();
        t.insert(6u64.to_be_bytes(), three).unwrap();
    })
    .await;
    // Seq 3 is not lost: it turned up late, so the gap it left is no
    // loss, and the links around it are explained by the move.
    assert_eq!(kinds(&reordered), [(3, ProblemKind::Reordered)]);

    // Seq 3's batch stored a second time, after the end.
    let inserted = tampered(|t| {
        let three = t.get(3u64.to_be_bytes()).unwrap().unwrap();
        t.insert(9u64.to_be_bytes(), three).unwrap();
    })
    .await;
    assert_eq!(kinds(&inserted), [(3, ProblemKind::Inserted)]);
}

#[tokio::test]
async fn read_only_open_refuses_a_running_spool_and_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    spool.append(vec![event("a", 1, "u", "x")]).await.unwrap();
    assert!(matches!(
        ReadOnlySpool::open(dir.path()),
        Err(SpoolError::Locked(_))
    ));
    assert!(matches!(
        ReadOnlySpool::open(&dir.path().join("missing")),
        Err(SpoolError::NotFound(_))
    ));
    assert!(!dir.path().join("missing").exists());
}

/// Index answers equal a brute-force filter over everything, across many
/// batches with out-of-order event times, for several filters and limits.
#[tokio::test]
async fn index_answers_match_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut n = 0u64;
    for batch in 0..40u64 {
        let events = (0..7u64)
            .map(|i| {
                n += 1;
                // Times jump around so batch order is not time order.
                let time = 10_000 + (n * 7919) % 1000;
                let mut e = event(
                    &format!("id{n}"),
                    time,
                    ["alice", "bob", "carol"][(n % 3) as usize],
                    ["image.generate", "user.login"][(n % 2) as usize],
                );
                e.trace_id = format!("{:032x}", batch * 10 + i % 2);
                e
            })
            .collect();
        spool.append(events).await.unwrap();
    }
    // Before the indexer runs too (the tail scan), the limit holds.
    let some = spool
        .query(&Filter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(some.len(), 100);
    wait_indexed(&spool).await;
    let mut all = spool
        .query(&Filter {
            limit: 0,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 280);
    all.sort_by_key(|e| (e.time_unix_nano, e.seq));

    let filters = [
        Filter {
            limit: 5,
            ..Default::default()
        },
        Filter {
            actor: Some("bob".into()),
            limit: 10,
            ..Default::default()
        },
        Filter {
            event_name: Some("user.login".into()),
            since: Some(10_200),
            until: Some(10_600),
            limit: 0,
            ..Default::default()
        },
        Filter {
            trace_id: Some(format!("{:032x}", 171)),
            limit: 0,
            ..Default::default()
        },
        Filter {
            service: Some("svc".into()),
            text: Some("id1".into()),
            limit: 7,
            ..Default::default()
        },
        Filter {
            since: Some(10_990),
            limit: 0,
            ..Default::default()
        },
    ];
    for filter in filters {
        let want: Vec<u64> = {
            let matching: Vec<&AuditEvent> = all.iter().filter(|e| filter.matches(e)).collect();
            let skip = if filter.limit == 0 {
                0
            } else {
                matching.len().saturating_sub(filter.limit)
            };
            matching[skip..].iter().map(|e| e.seq).collect()
        };
        let got: Vec<u64> = spool
            .query(&filter)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, want, "{filter:?}");
        assert!(
            !want.is_empty(),
            "the case should match something: {filter:?}"
        );
    }
}

/// The indexes keep queries from reading the whole spool: with 100,000
/// events stored, finding ten examines a few batches, not everything.
#[tokio::test]
async fn a_narrow_query_examines_only_a_few_batches() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut n = 0u64;
    for _ in 0..200 {
        let events = (0..500)
            .map(|_| {
                n += 1;
                let mut e = event(
                    &format!("id{n}"),
                    n,
                    &format!("user{}", n % 1000),
                    "api.request",
                );
                e.trace_id = format!("{n:032x}");
                e
            })
            .collect();
        spool.append(events).await.unwrap();
    }
    let rare = event("rare", 50_000, "mallory", "model_config.update");
    spool.append(vec![rare]).await.unwrap();
    wait_indexed(&spool).await;

    let cases = [
        Filter {
            actor: Some("mallory".into()),
            ..Default::default()
        },
        Filter {
            event_name: Some("model_config.update".into()),
            ..Default::default()
        },
        Filter {
            trace_id: Some(format!("{:032x}", 77_777)),
            ..Default::default()
        },
        Filter {
            limit: 10,
            ..Default::default()
        },
        Filter {
            since: Some(60_000),
            until: Some(60_009),
            ..Default::default()
        },
    ];
    for filter in cases {
        let (events, stats) = spool.query_with_stats(&filter).unwrap();
        assert!(!events.is_empty(), "{filter:?}");
        assert!(
            stats.events_examined <= 1_000,
            "{filter:?} examined {} of 100,001 events",
            stats.events_examined
        );
    }
}

#[tokio::test]
async fn sink_cursors_read_ack_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool
            .append(
                (0..5)
                    .map(|i| event(&format!("e{i}"), i, "u", "x"))
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(spool.register_sink("warehouse").unwrap(), 0);
        assert_eq!(spool.register_sink("siem").unwrap(), 0);
        let first = spool.read(0, 3).unwrap();
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(spool.ack("warehouse", 3).unwrap(), 3);
        assert_eq!(
            spool.ack("warehouse", 2).unwrap(),
            3,
            "cursors never move back"
        );
        assert!(matches!(
            spool.ack("nobody", 1),
            Err(SpoolError::UnknownSink(_))
        ));
        assert!(matches!(
            spool.ack("siem", 6),
            Err(SpoolError::AckBeyondEnd {
                seq: 6,
                last: 5,
                ..
            })
        ));
        assert_eq!(
            spool.register_sink("warehouse").unwrap(),
            3,
            "registering again keeps the cursor"
        );
        let rest = spool.read(3, 100).unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        // Cursors are flushed with the next commit (or on close).
        spool.close().unwrap();
    }
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    let mut cursors = spool.cursors().unwrap();
    cursors.sort();
    assert_eq!(
        cursors,
        [("siem".to_string(), 0), ("warehouse".to_string(), 3)]
    );
}

#[tokio::test]
async fn retention_waits_for_the_slowest_sink() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SpoolConfig::new(dir.path(), "n");
    config.retention = Duration::from_nanos(100);
    let spool = Spool::open(config).unwrap();
    spool.append(vec![event("a", 1, "u", "x")]).await.unwrap();
    spool.append(vec![event("b", 2, "u", "x")]).await.unwrap();
    spool.register_sink("fast").unwrap();
    spool.register_sink("slow").unwrap();
    spool.ack("fast", 2).unwrap();
    wait_indexed(&spool).await;
    let now = 1_000_000;
    assert_eq!(
        spool.gc(now).unwrap().events,
        0,
        "slow has confirmed nothing"
    );
    spool.ack("slow", 1).unwrap();
    assert_eq!(spool.gc(now).unwrap().events, 1, "only what both confirmed");
    assert_eq!(all(&spool).iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    let forgotten = spool.forget_sink("slow").unwrap();
    assert_eq!((forgotten.cursor, forgotten.dead_letters), (Some(1), 0));
    assert_eq!(
        spool.gc(now).unwrap().events,
        1,
        "a forgotten sink holds nothing back"
    );
    assert!(all(&spool).is_empty());
}

#[tokio::test]
async fn dead_letters_keep_the_event_through_retention_and_replay_marks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut config = SpoolConfig::new(dir.path(), "n");
        config.retention = Duration::from_nanos(100);
        let spool = Spool::open(config).unwrap();
        let stored = spool
            .append(vec![event("a", 1, "u", "x"), event("b", 2, "u", "x")])
            .await
            .unwrap();
        assert_eq!(spool.durable_seq(), 2, "append resolves after the fsync");
        assert_eq!(stored.seqs, [1, 2]);
        spool.register_sink("warehouse").unwrap();
        let events = spool.read(0, 10).unwrap();
        spool
            .dead_letter("warehouse", &events[1], "1406: Data too long", 7)
            .unwrap();
        spool
            .dead_letter("siem", &events[0], "400 bad field", 8)
            .unwrap();
        spool.ack("warehouse", 2).unwrap();
        wait_indexed(&spool).await;
        assert_eq!(spool.gc(1_000_000).unwrap().events, 2);
        assert!(all(&spool).is_empty(), "retention removed the batches");

        let letters = spool.dead_letters(Some("warehouse"), None).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            letters[0].event, events[1],
            "the dead letter holds the event"
        );
        assert_eq!(letters[0].reason, "1406: Data too long");
        assert!(!letters[0].replay);
        assert_eq!(spool.dead_letters(None, None).unwrap().len(), 2);

        assert!(
            !spool.resolve_dead_letter("warehouse", 2).unwrap(),
            "only a replayed entry is resolved"
        );
        assert_eq!(spool.request_replay(Some("warehouse")).unwrap(), 1);
        assert_eq!(spool.request_replay(Some("warehouse")).unwrap(), 0);
        spool.close().unwrap();
    }
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "n")));
    assert_eq!(spool.durable_seq(), 2);
    let letters = spool.dead_letters(None, None).unwrap();
    assert_eq!(
        letters
            .iter()
            .map(|l| (&l.sink[..], l.replay))
            .collect::<Vec<_>>(),
        [("siem", false), ("warehouse", true)],
        "dead letters and replay marks survive a reopen"
    );
    assert!(spool.resolve_dead_letter("warehouse", 2).unwrap());
    assert_eq!(spool.dead_letters(None, None).unwrap().len(), 1);
    let next = spool.append(vec![event("c", 3, "u", "x")]).await.unwrap();
    assert_eq!(
        next.seqs,
        [3],
        "a spool emptied by retention continues its seq after a restart"
    );
    assert!(spool.verify(None).unwrap().is_intact());
}

/// Opens a spool that this process closed a moment ago (see [`reopen`]),
/// returning whatever else the open says.
fn reopen_result(dir: &std::path::Path) -> Result<Spool, SpoolError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Spool::open(SpoolConfig::new(dir, "node-a")) {
            Err(SpoolError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// A spool holding one append of ~3 MiB: more than a quarter of sled's
/// segment, so sled keeps its batch value in a file under `blobs/`.
/// Returns the non-empty blob files.
async fn spool_with_a_blob(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let spool = open(dir);
    let events: Vec<AuditEvent> = (0..3000)
        .map(|i| {
            let mut e = event(&format!("big{i}"), i, "u", "x");
            // Random text, so that compression leaves it over 2 MiB.
            e.body = Alphanumeric.sample_string(&mut rand::rng(), 1024);
            e
        })
        .collect();
    spool.append(events).await.unwrap();
    spool.close().unwrap();
    drop(spool);
    let blobs: Vec<_> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert!(
        !blobs.is_empty(),
        "a value of 3 MiB (~2.3 MiB compressed) must be a blob file"
    );
    blobs
}

#[tokio::test]
async fn a_spool_with_an_emptied_blob_fails_to_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = spool_with_a_blob(dir.path()).await;
    // What a power cut leaves of a blob file that was never fsync'd.
    for blob in &blobs {
        std::fs::File::create(blob).unwrap();
    }
    match reopen_result(dir.path()) {
        Err(SpoolError::CorruptFile { path, reason }) => {
            assert!(blobs.contains(&path), "{path:?} is not one of {blobs:?}");
            assert!(reason.contains("0 bytes"), "{reason}");
        }
        Err(other) => panic!("expected CorruptFile naming a blob, got {other:?}"),
        Ok(spool) => panic!(
            "a spool whose data is gone must not open; it holds {} events",
            spool.stats().events
        ),
    }
}

#[tokio::test]
async fn an_empty_conf_is_rewritten_and_the_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_a_blob(dir.path()).await;
    // sled writes `conf` without fsync; a power cut can leave it empty.
    std::fs::File::create(dir.path().join("conf")).unwrap();
    let spool = reopen_result(dir.path()).unwrap();
    assert_eq!(spool.stats().events, 3000);
    assert_eq!(all(&spool).len(), 3000);
    assert!(spool.verify(None).unwrap().problems.is_empty());
    drop(spool);
    assert!(
        std::fs::metadata(dir.path().join("conf")).unwrap().len() > 8,
        "sled wrote the parameters again"
    );
    reopen_result(dir.path()).unwrap();
}

// ---------------------------------------------------------------------------
// Identity (see identity.rs)

#[tokio::test]
async fn a_new_spool_is_pending_until_its_first_seq_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    assert!(
        spool.identity().is_none(),
        "nothing stored, nothing decided"
    );
    spool.start_new(500).unwrap();
    let identity = spool.identity().unwrap().clone();
    assert_eq!(identity.first_seq, 501);
    assert!(!identity.adopted);
    assert!(matches!(
        spool.start_new(9),
        Err(SpoolError::AlreadyStarted)
    ));
    assert_eq!(spool.stats().last_seq, 500);
    assert_eq!(spool.stats().events, 0);
    let appended = spool
        .append(vec![event("a", 1, "u", "x"), event("b", 2, "u", "x")])
        .await
        .unwrap();
    assert_eq!(appended.seqs, [501, 502]);
    // A new chain: the first event links to the genesis hash.
    let events = all(&spool);
    assert_eq!(events[0].prev_hash, GENESIS_HASH);
    assert!(spool.verify(None).unwrap().is_intact());
    spool.register_sink("s").unwrap();
    assert_eq!(spool.read(0, 10).unwrap().len(), 2);
    drop(spool);

    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    assert_eq!(
        spool.identity().as_ref(),
        Some(&identity),
        "the identity lasts"
    );
    assert_eq!(spool.stats().last_seq, 502);
}

#[tokio::test]
async fn a_decided_first_seq_survives_a_restart_before_any_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    spool.start_new(41).unwrap();
    drop(spool);
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    assert_eq!(spool.identity().unwrap().first_seq, 42);
    assert_eq!(spool.stats().last_seq, 41);
    let appended = spool.append(vec![event("a", 1, "u", "x")]).await.unwrap();
    assert_eq!(appended.seqs, [42]);
}

#[tokio::test]
async fn an_append_starts_a_pending_spool_at_seq_1() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let appended = spool.append(vec![event("a", 1, "u", "x")]).await.unwrap();
    assert_eq!(appended.seqs, [1]);
    assert_eq!(spool.identity().unwrap().first_seq, 1);
    assert!(matches!(
        spool.start_new(100),
        Err(SpoolError::AlreadyStarted)
    ));
}

#[tokio::test]
async fn a_spool_without_an_identity_adopts_one_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool.append(vec![event("a", 1, "u", "x")]).await.unwrap();
    }
    // What a spool made before identities looks like: the same, without it.
    reopen(|| {
        let db = sled::Config::new()
            .path(dir.path())
            .segment_size(8 << 20)
            .open()?;
        db.open_tree("meta")?.remove("identity")?;
        db.flush()
    });
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    let identity = spool.identity().unwrap().clone();
    assert!(identity.adopted);
    assert_eq!(identity.first_seq, 1);
    let appended = spool.append(vec![event("b", 2, "u", "x")]).await.unwrap();
    assert_eq!(appended.seqs, [2]);
    drop(spool);
    let spool = reopen(|| Spool::open(SpoolConfig::new(dir.path(), "node-a")));
    assert_eq!(
        spool.identity().as_ref(),
        Some(&identity),
        "adopted once, for good"
    );
}

#[tokio::test]
async fn forgetting_a_sink_removes_its_cursor_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    spool
        .append(vec![event("a", 1, "u", "x"), event("b", 2, "u", "x")])
        .await
        .unwrap();
    spool.register_sink("gone").unwrap();
    spool.register_sink("kept").unwrap();
    let events = all(&spool);
    for sink in ["gone", "kept"] {
        spool.dead_letter(sink, &events[0], "too long", 5).unwrap();
    }
    spool
        .dead_letter("gone", &events[1], "too long", 5)
        .unwrap();
    spool.ack("gone", 2).unwrap();
    assert_eq!(spool.dead_letter_sinks().unwrap(), ["gone", "kept"]);

    let forgotten = spool.forget_sink("gone").unwrap();
    assert_eq!((forgotten.cursor, forgotten.dead_letters), (Some(2), 2));
    assert_eq!(spool.cursors().unwrap(), [("kept".to_string(), 0)]);
    assert_eq!(spool.dead_letter_sinks().unwrap(), ["kept"]);
    assert_eq!(spool.dead_letter_count("kept"), 1);
    let again = spool.forget_sink("gone").unwrap();
    assert_eq!((again.cursor, again.dead_letters), (None, 0));
}
