//! What one query may cost: the scan budget, the deadline, resuming a
//! seq-ordered scan where it stopped, and the tenant filter.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrail_model::{AuditEvent, Outcome};
use auditrail_spool::{Budget, Filter, Spool, SpoolConfig, SpoolError, Stop};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Event `n`: actors, names, tenants, outcomes and texts in patterns that
/// filters can pick out; time goes backwards every 7th event, so time order
/// and seq order differ.
fn event(n: u64) -> AuditEvent {
    AuditEvent {
        event_id: format!("id{n}"),
        time_unix_nano: if n.is_multiple_of(7) { n / 2 } else { n * 10 },
        received_time_unix_nano: n,
        actor_id: format!("user{}", n % 5),
        event_name: if n.is_multiple_of(3) {
            "image.generate"
        } else {
            "user.login"
        }
        .into(),
        service_name: "svc".into(),
        tenant: if n.is_multiple_of(4) {
            "acme"
        } else {
            "globex"
        }
        .into(),
        outcome: if n.is_multiple_of(11) {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        trace_id: format!("{:032x}", 1 + n % 13),
        body: if n.is_multiple_of(17) {
            format!("needle {n}")
        } else {
            format!("hay {n}")
        },
        attributes: "{}".into(),
        resource_attributes: "{}".into(),
        ..Default::default()
    }
}

/// A spool holding `batches` appends of `per_batch` events each, indexed.
async fn spool_with(dir: &std::path::Path, batches: u64, per_batch: u64) -> Spool {
    let spool = Spool::open(SpoolConfig::new(dir, "node-a")).unwrap();
    for b in 0..batches {
        let events = (1..=per_batch).map(|i| event(b * per_batch + i)).collect();
        spool.append(events).await.unwrap();
    }
    wait_indexed(&spool).await;
    spool
}

async fn wait_indexed(spool: &Spool) {
    for _ in 0..500 {
        let stats = spool.stats();
        if stats.indexed_seq == stats.last_seq {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("indexer did not catch up: {:?}", spool.stats());
}

fn budget(max: u64) -> Budget {
    Budget {
        max_examined: Some(max),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_newest_n_query_over_budget_fails_with_what_it_examined() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 10, 100).await;
    // Matches nothing, so it must read everything: 1,000 events.
    let filter = Filter {
        text: Some("no such text".into()),
        limit: 10,
        ..Default::default()
    };
    match spool.query_within(&filter, &budget(999)) {
        Err(SpoolError::ScanBudgetExceeded { examined }) => assert_eq!(examined, 999),
        other => panic!("expected ScanBudgetExceeded, got {other:?}"),
    }
    let (events, end) = spool.query_within(&filter, &budget(1000)).unwrap();
    assert!(events.is_empty());
    assert_eq!(end.events_examined, 1000);
    assert_eq!(end.stop, Stop::End);

    // An indexed query costs what its candidate batches hold, not the spool.
    let narrow = Filter {
        text: Some("needle".into()),
        since: Some(9_000),
        limit: 10,
        ..Default::default()
    };
    let (events, end) = spool.query_within(&narrow, &budget(200)).unwrap();
    assert!(!events.is_empty());
    assert!(end.events_examined <= 200, "{end:?}");

    // The deadline and the cancel flag stop it too, with their own errors.
    let past = Budget {
        deadline: Some(Instant::now()),
        ..Default::default()
    };
    assert!(matches!(
        spool.query_within(&filter, &past),
        Err(SpoolError::QueryTimedOut { .. })
    ));
    let cancelled = Budget {
        cancel: Some(Arc::new(AtomicBool::new(true))),
        ..Default::default()
    };
    assert!(matches!(
        spool.query_within(&filter, &cancelled),
        Err(SpoolError::QueryCancelled)
    ));
}

/// Scans from `after` in budget-sized steps until complete, as a client
/// continuing from `next_after_seq` does, taking at most `take` matches a
/// step (then refusing the next one, as a receiver that goes away does);
/// returns the seqs found.
fn scan_in_steps(spool: &Spool, filter: &Filter, step: u64, take: usize) -> Vec<u64> {
    let mut found = Vec::new();
    let mut after = filter.after_seq;
    for _ in 0..100_000 {
        let f = Filter {
            after_seq: after,
            ..filter.clone()
        };
        let mut taken = 0;
        let end = spool
            .scan(&f, &budget(step), |e| {
                if taken == take {
                    return ControlFlow::Break(());
                }
                taken += 1;
                found.push(e.seq);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(end.events_examined <= step, "{end:?}");
        match end.stop {
            Stop::End => return found,
            Stop::Budget | Stop::Cancelled => {
                assert!(!end.complete());
                assert!(
                    end.next_after_seq >= after.unwrap_or(0),
                    "never backwards: {end:?} after {after:?}"
                );
                assert!(
                    taken > 0 || end.stop == Stop::Budget,
                    "a refused first match ends a step without progress"
                );
            }
            other => panic!("unexpected stop {other:?}"),
        }
        after = Some(end.next_after_seq);
    }
    panic!("never finished");
}

#[tokio::test]
async fn a_seq_scan_stops_at_its_budget_and_resumes_to_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // 12 batches of 250: the indexed path skips whole batches.
    let spool = spool_with(dir.path(), 12, 250).await;
    let everything: Vec<AuditEvent> = {
        let mut all = Vec::new();
        spool
            .scan(&Filter::default(), &Budget::default(), |e| {
                all.push(e);
                ControlFlow::Continue(())
            })
            .unwrap();
        all
    };
    assert_eq!(everything.len(), 3000);
    assert!(everything.windows(2).all(|w| w[0].seq + 1 == w[1].seq));

    // The filters that matter: no index (raw scan), a batch index, the
    // trace index, time ranges, and a filter that matches nothing.
    let filters = [
        Filter::default(),
        Filter {
            text: Some("needle".into()),
            ..Default::default()
        },
        Filter {
            actor: Some("user3".into()),
            ..Default::default()
        },
        Filter {
            trace_id: Some(format!("{:032x}", 5)),
            ..Default::default()
        },
        Filter {
            since: Some(10_000),
            until: Some(20_000),
            outcome: Some(Outcome::Failure),
            ..Default::default()
        },
        Filter {
            tenant: Some("acme".into()),
            event_name: Some("image.generate".into()),
            ..Default::default()
        },
        Filter {
            actor: Some("nobody".into()),
            ..Default::default()
        },
    ];
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    runner
        .run(
            &(0..filters.len(), 1u64..700, 0u64..3100, 1usize..400),
            |(which, step, start, take)| {
                let filter = Filter {
                    after_seq: (start > 0).then_some(start),
                    ..filters[which].clone()
                };
                let want: Vec<u64> = everything
                    .iter()
                    .filter(|e| filter.matches(e))
                    .map(|e| e.seq)
                    .collect();
                let got = scan_in_steps(&spool, &filter, step, take);
                prop_assert_eq!(
                    got,
                    want,
                    "{:?} in steps of {}, {} taken",
                    filter,
                    step,
                    take
                );
                Ok(())
            },
        )
        .unwrap();
}

#[tokio::test]
async fn a_seq_scan_says_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 4, 100).await;
    let filter = Filter {
        text: Some("needle".into()), // seqs 17, 34, ..., 391
        ..Default::default()
    };
    let mut found = Vec::new();
    let end = spool
        .scan(&filter, &budget(40), |e| {
            found.push(e.seq);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(found, [17, 34]);
    assert_eq!(
        (end.stop, end.next_after_seq, end.events_examined),
        (Stop::Budget, 40, 40)
    );
    assert!(!end.complete());

    // A limit ends it at the last match, complete.
    let (events, end) = spool
        .query_within(
            &Filter {
                after_seq: Some(0),
                limit: 3,
                ..filter.clone()
            },
            &budget(1000),
        )
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [17, 34, 51]
    );
    assert_eq!((end.stop, end.next_after_seq), (Stop::Limit, 51));
    assert!(end.complete());

    // At the end, it continues after the last stored seq.
    let (events, end) = spool
        .query_within(
            &Filter {
                after_seq: Some(380),
                ..filter.clone()
            },
            &budget(1000),
        )
        .unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [391]);
    assert_eq!(
        (end.stop, end.next_after_seq, end.last_seq),
        (Stop::End, 400, 400)
    );

    // The receiver can stop it; the event it refused is not taken.
    let mut seen = 0;
    let end = spool
        .scan(&Filter::default(), &Budget::default(), |_| {
            seen += 1;
            if seen == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!((end.stop, end.next_after_seq), (Stop::Cancelled, 4));
    // And so can the deadline.
    let end = spool
        .scan(
            &Filter::default(),
            &Budget {
                deadline: Some(Instant::now()),
                ..Default::default()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!((end.stop, end.events_examined), (Stop::Deadline, 0));
}

#[tokio::test]
async fn the_tenant_filter_matches_the_events_tenant_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 2, 50).await;
    let of = |tenant: &str, after_seq| {
        spool
            .query(&Filter {
                tenant: Some(tenant.into()),
                after_seq,
                ..Default::default()
            })
            .unwrap()
    };
    for after_seq in [None, Some(0)] {
        let acme = of("acme", after_seq);
        assert_eq!(acme.len(), 25);
        assert!(acme.iter().all(|e| e.tenant == "acme"));
        assert_eq!(of("globex", after_seq).len(), 75);
        assert!(of("acm", after_seq).is_empty(), "no prefix match");
        assert!(of("", after_seq).is_empty());
    }
    // Narrowed further, by actor (indexed) and text.
    let filter = Filter {
        tenant: Some("acme".into()),
        actor: Some("user0".into()),
        ..Default::default()
    };
    let got = spool.query(&filter).unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [20, 40, 60, 80, 100]
    );

    // Dead letters by the event's tenant.
    for seq in [4, 5, 8] {
        let e = spool
            .query(&Filter {
                after_seq: Some(seq - 1),
                limit: 1,
                ..Default::default()
            })
            .unwrap()
            .remove(0);
        spool.dead_letter("warehouse", &e, "rejected", 1).unwrap();
    }
    let seqs = |sink: Option<&str>, tenant: Option<&str>| {
        spool
            .dead_letters(sink, tenant)
            .unwrap()
            .iter()
            .map(|l| l.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(None, Some("acme")), [4, 8]);
    assert_eq!(seqs(Some("warehouse"), Some("globex")), [5]);
    assert_eq!(seqs(None, None), [4, 5, 8]);
    assert!(seqs(Some("other"), Some("acme")).is_empty());
}

/// What a full scan budget costs on this machine: 1,000,000 stored events of
/// about 1 KB, read by a `--text` query that matches none of them (the
/// worst case: every event decoded and searched), newest-N and in seq
/// order. Run with
/// `cargo test --release -p auditrail-spool --test query_limits -- --ignored --nocapture`
/// (the figures are in docs/config.md).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: about a minute in release"]
async fn cost_of_a_full_scan_budget() {
    const EVENTS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(dir.path(), "node-a")).unwrap();
    let started = Instant::now();
    for chunk in 0..EVENTS / 1000 {
        let events = (1..=1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                AuditEvent {
                    body: format!("prompt {n}: a lighthouse over a city at night, {}", "x".repeat(200)),
                    attributes: format!(
                        r#"{{"audit.target":"model/sdxl","client.address":"203.0.113.{}","log.record.uid":"id{n}","user.id":"user{}","prompt.tokens":"{}"}}"#,
                        n % 250,
                        n % 5000,
                        "t".repeat(300)
                    ),
                    resource_attributes: r#"{"deployment.environment":"prod","host.name":"imagegen-7f9c","service.name":"imagegen","service.version":"1.4.2"}"#.into(),
                    trace_id: format!("{n:032x}"),
                    span_id: format!("{n:016x}"),
                    ..event(n)
                }
            })
            .collect();
        spool.append(events).await.unwrap();
    }
    wait_indexed(&spool).await;
    let stats = spool.stats();
    println!(
        "stored {EVENTS} events in {:.1?}, {} live bytes ({} per event)",
        started.elapsed(),
        stats.live_bytes,
        stats.live_bytes / EVENTS
    );
    let filter = Filter {
        text: Some("matches nothing".into()),
        limit: 100,
        ..Default::default()
    };
    for round in 0..3 {
        let started = Instant::now();
        let result = spool.query_within(&filter, &budget(EVENTS));
        let (events, end) = result.unwrap();
        assert!(events.is_empty());
        println!(
            "round {round}: newest-N --text, {} examined in {:.2?}",
            end.events_examined,
            started.elapsed()
        );
        let started = Instant::now();
        let mut bytes = 0;
        let end = spool
            .scan(
                &Filter {
                    after_seq: Some(0),
                    ..Default::default()
                },
                &budget(EVENTS),
                |e| {
                    bytes += serde_json::to_vec(&e).unwrap().len();
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        println!(
            "round {round}: seq order, every event matched and serialized ({} MB of JSON), {} examined in {:.2?}",
            bytes >> 20,
            end.events_examined,
            started.elapsed()
        );
    }
}
