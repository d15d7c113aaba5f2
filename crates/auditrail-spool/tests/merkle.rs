//! The Merkle tree and its signed checkpoints, through the spool's public
//! API on a real sled: every event provable offline, and tampering that the
//! hash chain alone cannot see (a chain recomputed over a change, a removed
//! checkpoint, events removed from the end) found by `verify`.

mod common;
use common::{raw_sled, reopen};

use std::sync::Arc;
use std::time::Duration;

use auditrail_integrity::{Checkpoint, SignerKey, VerifierKey};
use auditrail_model::{chain_hash, AuditEvent};
use auditrail_spool::{ProblemKind, ReadOnlySpool, Signing, Spool, SpoolConfig, VerifyReport};

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        event_id: format!("e{n}"),
        time_unix_nano: n,
        received_time_unix_nano: n,
        actor_id: "alice".into(),
        event_name: "image.delete".into(),
        service_name: "svc".into(),
        body: format!("body of {n}"),
        attributes: "{}".into(),
        resource_attributes: "{}".into(),
        ..Default::default()
    }
}

fn config(dir: &std::path::Path, key: &Arc<SignerKey>) -> SpoolConfig {
    let mut config = SpoolConfig::new(dir, "node-a");
    config.signing = Some(Signing {
        key: key.clone(),
        every_events: 2,
        interval: Duration::from_secs(3600),
    });
    config
}

/// Waits until the spool has signed a checkpoint of `size` events.
fn wait_for_checkpoint(spool: &Spool, size: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !spool.checkpoints().unwrap().iter().any(|c| c.size == size) {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of size {size}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A spool of 10 events in appends of 1, 2, 3 and 4, closed (which signs
/// the last checkpoint).
async fn ten_events(dir: &std::path::Path, key: &Arc<SignerKey>) {
    let spool = Spool::open(config(dir, key)).unwrap();
    let mut n = 0;
    for size in 1..=4 {
        let batch = (0..size).map(|_| {
            n += 1;
            event(n)
        });
        spool.append(batch.collect()).await.unwrap();
        // One checkpoint per group of events, as they come: 3, 6 and 10.
        if n >= 2 {
            wait_for_checkpoint(&spool, n);
        }
    }
    spool.close().unwrap();
}

fn key() -> Arc<SignerKey> {
    Arc::new(SignerKey::generate("auditrail-test").unwrap())
}

fn kinds(report: &VerifyReport) -> Vec<(u64, ProblemKind)> {
    report.problems.iter().map(|p| (p.seq, p.kind)).collect()
}

#[tokio::test]
async fn every_event_is_provable_offline_against_a_signed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    ten_events(dir.path(), &key).await;
    let spool = reopen(|| Spool::open(config(dir.path(), &key)));
    let verifier = key.verifier();
    let sizes: Vec<u64> = spool
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| c.size)
        .collect();
    assert_eq!(
        sizes.last(),
        Some(&10),
        "closing signs the last events: {sizes:?}"
    );
    for seq in 1..=10 {
        let proof = spool.prove_inclusion(seq, None).unwrap();
        let checkpoint = proof.verify(&verifier).unwrap();
        assert_eq!(checkpoint.size, 10);
        let event = AuditEvent::from_canonical_bytes(&proof.event_bytes().unwrap()).unwrap();
        assert_eq!(event.event_id, format!("e{seq}"));
        // Against an older checkpoint that covers it, too.
        for &size in sizes.iter().filter(|&&s| s >= seq) {
            let proof = spool.prove_inclusion(seq, Some(size)).unwrap();
            assert_eq!(proof.verify(&verifier).unwrap().size, size);
        }
    }
    for (i, &old) in sizes.iter().enumerate() {
        for &new in &sizes[i..] {
            let proof = spool.prove_consistency(old, Some(new)).unwrap();
            proof.verify(&verifier).unwrap();
        }
    }
    // A proof fails under another key, and for a seq past the checkpoint.
    let other = SignerKey::generate("auditrail-test").unwrap().verifier();
    assert!(spool
        .prove_inclusion(3, None)
        .unwrap()
        .verify(&other)
        .is_err());
    assert!(spool.prove_inclusion(11, None).is_err());
    let report = spool.verify(Some(&verifier)).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.checkpoints.total, sizes.len() as u64);
    assert_eq!(report.checkpoints.valid, sizes.len() as u64);
    assert_eq!(report.checkpoints.unsigned_tail, 0);
}

/// Rewrites every batch value with `edit` applied to each record's
/// canonical bytes, and the hash chain recomputed over the result: what an
/// attacker who knows the batch layout (`batch.rs`) would do.
fn rewrite_with_recomputed_chain(db: &sled::Db, edit: impl Fn(u64, &mut Vec<u8>)) {
    let batches = db.open_tree("batches").unwrap();
    let mut prev = auditrail_model::GENESIS_HASH;
    for item in batches.iter() {
        let (key, value) = item.unwrap();
        let value = auditrail_spool::raw_batch::to_plain(&value).unwrap();
        let count = u32::from_be_bytes(value[1..5].try_into().unwrap()) as usize;
        let first_seq = u64::from_be_bytes(value[5..13].try_into().unwrap());
        let header = &value[..21];
        let ends_at = value.len() - 4 * count;
        let ends: Vec<usize> = value[ends_at..]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
            .collect();
        let records = &value[53..ends_at];
        let mut out = header.to_vec();
        out.extend_from_slice(&prev);
        let mut new_ends = Vec::new();
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let mut canonical = records[start..end - 32].to_vec();
            edit(first_seq + i as u64, &mut canonical);
            let hash = chain_hash(&prev, &canonical);
            out.extend_from_slice(&canonical);
            out.extend_from_slice(&hash);
            new_ends.push((out.len() - 53) as u32);
            prev = hash;
            start = end;
        }
        for end in new_ends {
            out.extend_from_slice(&end.to_be_bytes());
        }
        let out = auditrail_spool::raw_batch::from_plain(&out).unwrap();
        batches.insert(key, out).unwrap();
    }
    db.flush().unwrap();
}

async fn tampered(tamper: impl FnOnce(&sled::Db)) -> (VerifyReport, VerifierKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    ten_events(dir.path(), &key).await;
    tamper(&raw_sled(dir.path()));
    let spool = reopen(|| ReadOnlySpool::open(dir.path()));
    (spool.verify(Some(&key.verifier())).unwrap(), key.verifier())
}

#[tokio::test]
async fn a_chain_recomputed_over_a_change_is_caught_by_the_checkpoint() {
    // The rewrite itself is faithful: with no edit, all is intact.
    let (report, _) = tampered(|db| rewrite_with_recomputed_chain(db, |_, _| {})).await;
    assert!(report.is_intact(), "{:?}", report.problems);
    // Seq 6's body changed, same length, chain recomputed: every link holds.
    let (report, _) = tampered(|db| {
        rewrite_with_recomputed_chain(db, |seq, bytes| {
            if seq == 6 {
                let at = bytes.windows(9).position(|w| w == b"body of 6").unwrap();
                bytes[at + 8] = b'7';
            }
        })
    })
    .await;
    // The stored tree nodes, authenticated by the newest signed root, pin
    // it to its seq.
    assert_eq!(
        kinds(&report),
        [(6, ProblemKind::Modified)],
        "{:?}",
        report.problems
    );

    // The tree nodes rewritten too (an attacker who also rebuilt the
    // `merkle` tree): the signed root still does not match, and the
    // checkpoint interval that holds the change is named.
    let (report, _) = tampered(|db| {
        rewrite_with_recomputed_chain(db, |seq, bytes| {
            if seq == 5 {
                let at = bytes.windows(9).position(|w| w == b"body of 5").unwrap();
                bytes[at + 8] = b'7';
            }
        });
        db.drop_tree("merkle").unwrap();
        db.flush().unwrap();
    })
    .await;
    assert_eq!(
        kinds(&report),
        [(4, ProblemKind::Modified)],
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[0].detail.contains("seq 4..6"),
        "{}",
        report.problems[0]
    );
}

#[tokio::test]
async fn removed_and_forged_checkpoints_are_bad() {
    // A middle checkpoint removed: the next one names it as its previous.
    let (report, _) = tampered(|db| {
        let checkpoints = db.open_tree("checkpoints").unwrap();
        let sizes: Vec<_> = checkpoints.iter().keys().map(|k| k.unwrap()).collect();
        assert!(sizes.len() >= 3, "{} checkpoints", sizes.len());
        checkpoints.remove(&sizes[1]).unwrap();
        db.flush().unwrap();
    })
    .await;
    assert!(
        kinds(&report)
            .iter()
            .any(|&(_, k)| k == ProblemKind::BadCheckpoint),
        "{:?}",
        report.problems
    );
    // The newest checkpoint replaced by one signed with another key.
    let (report, _) = tampered(|db| {
        let checkpoints = db.open_tree("checkpoints").unwrap();
        let (size, note) = checkpoints.last().unwrap().unwrap();
        let claimed = Checkpoint::parse_unverified(std::str::from_utf8(&note).unwrap()).unwrap();
        let forged = claimed
            .sign(&SignerKey::generate("auditrail-test").unwrap())
            .unwrap();
        checkpoints.insert(size, forged.as_bytes()).unwrap();
        db.flush().unwrap();
    })
    .await;
    let bad: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::BadCheckpoint)
        .collect();
    assert_eq!(bad.len(), 1, "{:?}", report.problems);
    assert!(bad[0].detail.contains("signature"), "{}", bad[0]);
    assert_eq!(report.checkpoints.valid + 1, report.checkpoints.total);
}

#[tokio::test]
async fn events_removed_from_the_end_are_missing_against_the_newest_checkpoint() {
    let (report, _) = tampered(|db| {
        let batches = db.open_tree("batches").unwrap();
        // The last append (seqs 7..10) is one batch.
        let (key, _) = batches.last().unwrap().unwrap();
        assert_eq!(key.as_ref(), 7u64.to_be_bytes());
        batches.remove(key).unwrap();
        // Also the watermark's evidence, as a thorough attacker would.
        db.flush().unwrap();
    })
    .await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Missing && p.seq == 7 && p.detail.contains("..10")),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn retention_keeps_the_tree_provable() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let now = 1_000 * 86_400 * 1_000_000_000u64;
    {
        let mut config = config(dir.path(), &key);
        config.signing.as_mut().unwrap().every_events = 100;
        let spool = Spool::open(config).unwrap();
        // 600 old events (so level-0 tiles go), then 10 recent ones.
        for chunk in 0..6u64 {
            let events = (1..=100).map(|i| event(chunk * 100 + i)).collect();
            spool.append(events).await.unwrap();
            wait_for_checkpoint(&spool, (chunk + 1) * 100);
        }
        let recent = (601..=610)
            .map(|n| AuditEvent {
                received_time_unix_nano: now,
                ..event(n)
            })
            .collect();
        spool.append(recent).await.unwrap();
        spool.close().unwrap();
    }
    let spool = reopen(|| Spool::open(config(dir.path(), &key)));
    let removed = spool.gc(now).unwrap();
    assert_eq!(removed.events, 600);
    let report = spool.verify(Some(&key.verifier())).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.checkpoints.valid, report.checkpoints.total);
    for seq in 601..=610 {
        spool
            .prove_inclusion(seq, None)
            .unwrap()
            .verify(&key.verifier())
            .unwrap();
    }
    assert!(spool.prove_inclusion(5, None).is_err(), "seq 5 is gone");
    // A checkpoint whose boundary is in retained nodes still proves that
    // the newest extends it; one deep in the removed events cannot.
    spool
        .prove_consistency(600, None)
        .unwrap()
        .verify(&key.verifier())
        .unwrap();
    let err = spool.prove_consistency(100, None).unwrap_err().to_string();
    assert!(err.contains("retention"), "{err}");
}
