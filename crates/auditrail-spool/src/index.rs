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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use auditrail_model::AuditEvent;
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

/// What the index needs to know about one batch value.
///
/// The writer builds it while it encodes the events, so the indexer writes
/// keys without reading and decoding the batch back from sled; after a
/// restart, batches above the watermark are digested from sled instead.
#[derive(Debug, Default)]
pub(crate) struct IndexDigest {
    pub(crate) first_seq: u64,
    pub(crate) count: usize,
    span: Option<TimeSpan>,
    actors: HashSet<String>,
    event_names: HashSet<String>,
    services: HashSet<String>,
    traces: Vec<[u8; TRACE_ENTRY]>,
}

impl IndexDigest {
    pub(crate) fn new(first_seq: u64) -> Self {
        IndexDigest {
            first_seq,
            ..Default::default()
        }
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + self.count as u64 - 1
    }

    /// Adds the next event of the batch (its seq is `first_seq + count`).
    pub(crate) fn add(&mut self, event: &AuditEvent) {
        let time = event.time_unix_nano;
        self.span = Some(match self.span {
            None => TimeSpan {
                min: time,
                max: time,
            },
            Some(s) => TimeSpan {
                min: s.min.min(time),
                max: s.max.max(time),
            },
        });
        note(&mut self.actors, &event.actor_id);
        note(&mut self.actors, &event.actor_name);
        note(&mut self.event_names, &event.event_name);
        note(&mut self.services, &event.service_name);
        let mut entry = [0u8; TRACE_ENTRY];
        if hex::decode_to_slice(&event.trace_id, &mut entry[..16]).is_ok() {
            let seq = self.first_seq + self.count as u64;
            entry[16..].copy_from_slice(&seq.to_be_bytes());
            self.traces.push(entry);
        }
        self.count += 1;
    }
}

/// Clones a value only the first time it shows up in the batch.
fn note(set: &mut HashSet<String>, value: &str) {
    if !value.is_empty() && !set.contains(value) {
        set.insert(value.to_owned());
    }
}

impl IndexDigest {
    /// Digests a stored batch (the path after a restart, and for retention).
    pub(crate) fn of_batch(view: &BatchView<'_>) -> Result<Self, SpoolError> {
        let mut digest = IndexDigest::new(view.first_seq);
        for i in 0..view.count() {
            digest.add(&view.event(i)?);
        }
        Ok(digest)
    }

    /// Adds (or with `remove`, deletes) the batch's index keys.
    pub(crate) fn apply(mut self, batch: &mut sled::Batch, remove: bool) {
        let mut put = |key: Vec<u8>, value: &[u8]| {
            if remove {
                batch.remove(key);
            } else {
                batch.insert(key, value);
            }
        };
        if !self.traces.is_empty() {
            self.traces.sort_unstable();
            put(batch_key(TRACE, &[], self.first_seq), &self.traces.concat());
        }
        for (tag, set) in [
            (ACTOR, &self.actors),
            (EVENT, &self.event_names),
            (SERVICE, &self.services),
        ] {
            for value in set {
                put(batch_key(tag, &short_hash(value), self.first_seq), &[]);
            }
        }
        if let Some(span) = self.span {
            put(batch_key(TIME, &[], self.first_seq), &span.to_bytes());
        }
    }
}

/// Indexes everything stored above the watermark, taking each batch's digest
/// from `digests` when the writer sent one, else from sled. Returns the new
/// watermark.
pub(crate) fn catch_up(
    shared: &Shared,
    digests: &mut VecDeque<IndexDigest>,
) -> Result<u64, SpoolError> {
    let mut indexed = shared.indexed_seq.load(Ordering::Acquire);
    let target = shared.last_seq.load(Ordering::Acquire);
    let mut pending = sled::Batch::default();
    let mut pending_events = 0;
    while indexed < target {
        // Digests of batches already indexed (from sled, after a gap) are stale.
        while digests.front().is_some_and(|d| d.first_seq <= indexed) {
            digests.pop_front();
        }
        let digest = match digests.front() {
            Some(d) if d.first_seq == indexed + 1 => digests.pop_front().expect("front exists"),
            _ => {
                let Some((_, value)) = shared.batches.get_gt(seq_key(indexed))? else {
                    break;
                };
                IndexDigest::of_batch(&BatchView::parse(&value)?)?
            }
        };
        indexed = digest.last_seq();
        pending_events += digest.count;
        digest.apply(&mut pending, false);
        if pending_events >= INDEX_CHUNK || indexed >= target {
            pending.insert(WATERMARK_KEY, &indexed.to_be_bytes());
            shared.idx.apply_batch(std::mem::take(&mut pending))?;
            pending_events = 0;
            shared.indexed_seq.store(indexed, Ordering::Release);
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

/// The indexer thread: fed digests by the writer, and awake every half
/// second in case one was missed.
pub(crate) fn run_indexer(shared: Arc<Shared>, feed: Receiver<IndexDigest>) {
    let mut digests = VecDeque::new();
    loop {
        let closed = match feed.recv_timeout(Duration::from_millis(500)) {
            Ok(digest) => {
                digests.push_back(digest);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(digest) = feed.try_recv() {
            digests.push_back(digest);
        }
        if let Err(e) = catch_up(&shared, &mut digests) {
            metrics::counter!("auditrail_spool_errors_total", "op" => "index").increment(1);
            tracing::error!(error = %e, "indexing failed; queries scan unindexed batches meanwhile");
            // The digests are lost with the failed pass; sled still has the batches.
            digests.clear();
        }
        if closed {
            return;
        }
    }
}
