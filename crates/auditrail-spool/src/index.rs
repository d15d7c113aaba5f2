//! Secondary indexes, kept in one sled tree and written off the ack path.
//!
//! Indexes are derived data: the spool acknowledges a batch as soon as its one
//! value is flushed, and an indexer thread adds the index keys afterwards.
//! The tree remembers how far it has indexed (`WATERMARK_KEY`, written in the
//! same atomic sled batch as the keys), so after a crash indexing resumes from
//! there, and queries scan the few batches above the watermark directly.
//!
//! Keys (all integers big-endian, so sled's byte order is numeric order):
//!
//! | key | value | for |
//! |---|---|---|
//! | `i` dedup_key(event_id)\[16\] | seq | dedup by event id |
//! | `t` time seq | – | time ranges |
//! | `a` h(actor) time seq | – | `--actor` (actor_id and actor_name) |
//! | `e` h(event_name) time seq | – | `--event` |
//! | `s` h(service_name) time seq | – | `--service` |
//! | `x` trace_id\[16\] seq | – | `--trace-id` |
//!
//! `h` is the first 8 bytes of a SHA-256: collisions only cost a wasted read,
//! because every candidate is checked against the full filter.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use auditrail_model::AuditEvent;
use sha2::{Digest, Sha256};

use crate::batch::BatchView;
use crate::{seq_key, Shared, SpoolError};

pub(crate) const WATERMARK_KEY: &[u8] = b"m:indexed";

pub(crate) const DEDUP: u8 = b'i';
pub(crate) const TIME: u8 = b't';
pub(crate) const ACTOR: u8 = b'a';
pub(crate) const EVENT: u8 = b'e';
pub(crate) const SERVICE: u8 = b's';
pub(crate) const TRACE: u8 = b'x';

/// Events indexed per atomic sled batch.
const INDEX_CHUNK: usize = 4096;

pub(crate) fn dedup_index_key(dedup: &[u8; 16]) -> [u8; 17] {
    let mut key = [DEDUP; 17];
    key[1..].copy_from_slice(dedup);
    key
}

pub(crate) fn short_hash(value: &str) -> [u8; 8] {
    Sha256::digest(value.as_bytes())[..8]
        .try_into()
        .expect("8 bytes")
}

/// `tag ‖ prefix ‖ time ‖ seq`
pub(crate) fn timed_key(tag: u8, prefix: &[u8], time: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + prefix.len() + 16);
    key.push(tag);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&time.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn trace_key(trace_id: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(25);
    key.push(TRACE);
    key.extend_from_slice(trace_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Every index key of one event (the dedup key excluded).
pub(crate) fn event_keys(event: &AuditEvent) -> Vec<Vec<u8>> {
    let (time, seq) = (event.time_unix_nano, event.seq);
    let mut keys = vec![timed_key(TIME, &[], time, seq)];
    for actor in [&event.actor_id, &event.actor_name] {
        let seen_as_id = std::ptr::eq(actor, &event.actor_name) && *actor == event.actor_id;
        if !actor.is_empty() && !seen_as_id {
            keys.push(timed_key(ACTOR, &short_hash(actor), time, seq));
        }
    }
    if !event.event_name.is_empty() {
        keys.push(timed_key(EVENT, &short_hash(&event.event_name), time, seq));
    }
    if !event.service_name.is_empty() {
        keys.push(timed_key(
            SERVICE,
            &short_hash(&event.service_name),
            time,
            seq,
        ));
    }
    if let Ok(trace) = hex::decode(&event.trace_id) {
        if !trace.is_empty() {
            keys.push(trace_key(&trace, seq));
        }
    }
    keys
}

/// Adds (or with `remove`, deletes) the index keys of every event in a batch
/// whose seq is above `after`.
pub(crate) fn index_batch(
    view: &BatchView<'_>,
    after: u64,
    batch: &mut sled::Batch,
    remove: bool,
) -> Result<usize, SpoolError> {
    let mut n = 0;
    for i in 0..view.count() {
        let seq = view.first_seq + i as u64;
        if seq <= after {
            continue;
        }
        let event = view.event(i)?;
        for key in event_keys(&event) {
            if remove {
                batch.remove(key);
            } else {
                batch.insert(key, &[] as &[u8]);
            }
        }
        let dedup = dedup_index_key(&auditrail_model::id::dedup_key(&event.event_id));
        if remove {
            batch.remove(&dedup[..]);
        } else {
            batch.insert(&dedup[..], &seq.to_be_bytes());
        }
        n += 1;
    }
    Ok(n)
}

/// Indexes everything stored above the watermark; returns the new watermark.
pub(crate) fn catch_up(shared: &Shared) -> Result<u64, SpoolError> {
    let mut indexed = shared.indexed_seq.load(Ordering::Acquire);
    let target = shared.last_seq.load(Ordering::Acquire);
    if indexed >= target {
        return Ok(indexed);
    }
    let start = shared
        .batches
        .range(..=seq_key(indexed + 1))
        .next_back()
        .transpose()?
        .map(|(k, _)| k)
        .unwrap_or_else(|| seq_key(0).to_vec().into());
    let mut pending = sled::Batch::default();
    let mut pending_events = 0;
    for item in shared.batches.range(start..) {
        let (_, value) = item?;
        let view = BatchView::parse(&value)?;
        if view.last_seq() <= indexed {
            continue;
        }
        pending_events += index_batch(&view, indexed, &mut pending, false)?;
        indexed = view.last_seq();
        if pending_events >= INDEX_CHUNK || indexed >= target {
            pending.insert(WATERMARK_KEY, &indexed.to_be_bytes());
            shared.idx.apply_batch(std::mem::take(&mut pending))?;
            pending_events = 0;
            shared.indexed_seq.store(indexed, Ordering::Release);
            shared
                .recent
                .lock()
                .expect("recent ids lock")
                .forget_through(indexed);
        }
        if indexed >= target {
            break;
        }
    }
    if pending_events > 0 {
        pending.insert(WATERMARK_KEY, &indexed.to_be_bytes());
        shared.idx.apply_batch(pending)?;
        shared.indexed_seq.store(indexed, Ordering::Release);
        shared
            .recent
            .lock()
            .expect("recent ids lock")
            .forget_through(indexed);
    }
    metrics::gauge!("auditrail_spool_index_lag_events").set(
        shared
            .last_seq
            .load(Ordering::Acquire)
            .saturating_sub(indexed) as f64,
    );
    Ok(indexed)
}

/// The indexer thread: woken after each stored batch, and every half second.
pub(crate) fn run_indexer(shared: Arc<Shared>, wake: std::sync::mpsc::Receiver<()>) {
    loop {
        match wake.recv_timeout(Duration::from_millis(500)) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = catch_up(&shared) {
                    tracing::error!(error = %e, "final indexing pass failed");
                }
                return;
            }
        }
        while wake.try_recv().is_ok() {}
        if let Err(e) = catch_up(&shared) {
            metrics::counter!("auditrail_spool_errors_total", "op" => "index").increment(1);
            tracing::error!(error = %e, "indexing failed; queries scan unindexed batches meanwhile");
        }
    }
}
