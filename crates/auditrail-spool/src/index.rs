//! Secondary indexes, kept in one sled tree and written off the ack path.
//!
//! Indexes are derived data: the spool acknowledges a batch as soon as its one
//! value is flushed, and an indexer thread adds the index keys afterwards.
//! The tree remembers how far it has indexed (`WATERMARK_KEY`, written in the
//! same atomic sled batch as the keys), so after a crash indexing resumes from
//! there, and queries scan the few batches above the watermark directly.
//!
//! Measured on this machine, one sled key per event costs about 10 µs of CPU
//! (random keys split sled nodes), more than everything else in ingest
//! together. So every index key here is per batch: a query reads the batches
//! a key points to and filters their events. (Dedup keys are kept by the
//! writer, see `dedup.rs`.)
//!
//! Keys (all integers big-endian, so sled's byte order is numeric order):
//!
//! | key | value | granularity | for |
//! |---|---|---|---|
//! | `x` first_seq | sorted (trace_id\[16\], seq) pairs | batch | `--trace-id` |
//! | `t` first_seq | min time, max time | batch | time ranges, newest-first order |
//! | `a` h(actor) first_seq | – | batch | `--actor` (actor_id and actor_name) |
//! | `e` h(event_name) first_seq | – | batch | `--event` |
//! | `s` h(service_name) first_seq | – | batch | `--service` |
//!
//! `h` is the first 8 bytes of a SHA-256: collisions only cost a wasted read,
//! because every candidate event is checked against the full filter.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::batch::BatchView;
use crate::{seq_key, Shared, SpoolError};

pub(crate) const WATERMARK_KEY: &[u8] = b"m:indexed";

pub(crate) const TIME: u8 = b't';
pub(crate) const ACTOR: u8 = b'a';
pub(crate) const EVENT: u8 = b'e';
pub(crate) const SERVICE: u8 = b's';
pub(crate) const TRACE: u8 = b'x';

/// Events indexed per atomic sled batch.
const INDEX_CHUNK: usize = 4096;

pub(crate) fn short_hash(value: &str) -> [u8; 8] {
    Sha256::digest(value.as_bytes())[..8]
        .try_into()
        .expect("8 bytes")
}

/// `tag ‖ prefix ‖ first_seq`: a batch-level key.
pub(crate) fn batch_key(tag: u8, prefix: &[u8], first_seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + prefix.len() + 8);
    key.push(tag);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// One entry of a batch's trace run: trace id then seq.
pub(crate) const TRACE_ENTRY: usize = 24;

/// The time span of a batch's events, the value of its `t` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeSpan {
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl TimeSpan {
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.min.to_be_bytes());
        out[8..].copy_from_slice(&self.max.to_be_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<TimeSpan> {
        Some(TimeSpan {
            min: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            max: u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

/// Adds (or with `remove`, deletes) the index keys of a whole batch.
pub(crate) fn index_batch(
    view: &BatchView<'_>,
    batch: &mut sled::Batch,
    remove: bool,
) -> Result<usize, SpoolError> {
    let mut put = |key: Vec<u8>, value: &[u8]| {
        if remove {
            batch.remove(key);
        } else {
            batch.insert(key, value);
        }
    };
    let mut span = TimeSpan {
        min: u64::MAX,
        max: 0,
    };
    let mut per_batch: HashSet<(u8, [u8; 8])> = HashSet::new();
    let mut traces: Vec<[u8; TRACE_ENTRY]> = Vec::new();
    for i in 0..view.count() {
        let seq = view.first_seq + i as u64;
        let event = view.event(i)?;
        span.min = span.min.min(event.time_unix_nano);
        span.max = span.max.max(event.time_unix_nano);
        for (tag, value) in [
            (ACTOR, &event.actor_id),
            (ACTOR, &event.actor_name),
            (EVENT, &event.event_name),
            (SERVICE, &event.service_name),
        ] {
            if !value.is_empty() {
                per_batch.insert((tag, short_hash(value)));
            }
        }
        let mut entry = [0u8; TRACE_ENTRY];
        if hex::decode_to_slice(&event.trace_id, &mut entry[..16]).is_ok() {
            entry[16..].copy_from_slice(&seq.to_be_bytes());
            traces.push(entry);
        }
    }
    if !traces.is_empty() {
        traces.sort_unstable();
        put(batch_key(TRACE, &[], view.first_seq), &traces.concat());
    }
    for (tag, hash) in per_batch {
        put(batch_key(tag, &hash, view.first_seq), &[]);
    }
    if view.count() > 0 {
        put(batch_key(TIME, &[], view.first_seq), &span.to_bytes());
    }
    Ok(view.count())
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
        // Batches are indexed whole; the watermark only ever sits at a batch end.
        pending_events += index_batch(&view, &mut pending, false)?;
        indexed = view.last_seq();
        if pending_events >= INDEX_CHUNK || indexed >= target {
            pending.insert(WATERMARK_KEY, &indexed.to_be_bytes());
            shared.idx.apply_batch(std::mem::take(&mut pending))?;
            pending_events = 0;
            shared.indexed_seq.store(indexed, Ordering::Release);
        }
        if indexed >= target {
            break;
        }
    }
    if pending_events > 0 {
        pending.insert(WATERMARK_KEY, &indexed.to_be_bytes());
        shared.idx.apply_batch(pending)?;
        shared.indexed_seq.store(indexed, Ordering::Release);
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
