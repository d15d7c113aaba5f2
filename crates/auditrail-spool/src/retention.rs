//! Removing events past retention.
//!
//! Batches are removed whole, oldest first, once the newest event in them was
//! received longer ago than the retention period. Retention counts from
//! receive time, not from the event's own timestamp, so a client with a wrong
//! clock cannot make auditrail drop fresh events. A batch also stays until
//! every registered sink has acknowledged it. Only indexed batches are
//! removed, so that their index keys can be removed with them. Their event
//! ids leave the dedup set too: a resend after retention is a new event.
//!
//! The Merkle tree outlives them too: a batch goes only once the tree
//! holds its events, and the tree keeps its nodes above the leaves (see
//! `tree.rs`).
//!
//! The chain's tail outlives the batches: before a batch goes, its last seq
//! and hash are written to `meta` (key [`REMOVED_TAIL`]), so a spool that
//! retention emptied still continues its seq and chain after a restart
//! instead of starting again at seq 1.

use std::sync::atomic::Ordering;

use crate::batch::BatchView;
use crate::index::IndexDigest;
use crate::{seq_from_bytes, Shared, SpoolError};

/// `meta` key: last seq (big-endian) ‖ hash of the newest removed event.
pub(crate) const REMOVED_TAIL: &[u8] = b"removed_tail";

/// The newest event retention removed, as (seq, hash).
pub(crate) fn removed_tail(
    meta: &sled::Tree,
) -> Result<Option<(u64, auditrail_model::Hash)>, SpoolError> {
    let Some(value) = meta.get(REMOVED_TAIL)? else {
        return Ok(None);
    };
    let hash = value
        .get(8..40)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| SpoolError::Corrupt("meta removed_tail has the wrong length".into()))?;
    Ok(Some((seq_from_bytes(&value[..8]), hash)))
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub batches: u64,
    pub events: u64,
}

pub(crate) fn gc(shared: &Shared, now_unix_nano: u64) -> Result<GcStats, SpoolError> {
    let retention = u64::try_from(shared.retention.as_nanos()).unwrap_or(u64::MAX);
    let cutoff = now_unix_nano.saturating_sub(retention);
    let delivered = shared.slowest_cursor()?.unwrap_or(u64::MAX);
    // Events leave only once the Merkle tree holds them: bring it up to date
    // rather than wait for its thread.
    crate::tree::step(shared, None, false)?;
    let mut stats = GcStats::default();
    for item in shared.batches.iter() {
        let (key, value) = item?;
        let view = BatchView::parse(&value)?;
        if view.max_received >= cutoff
            || view.last_seq() > shared.indexed_seq.load(Ordering::Acquire)
            || view.last_seq() > delivered
            || view.last_seq() >= shared.tree_end.load(Ordering::Acquire)
        {
            break;
        }
        let mut removals = sled::Batch::default();
        IndexDigest::of_batch(&view)?.apply(&mut removals, true);
        shared.idx.apply_batch(removals)?;
        if let Some(run) = shared.ids.remove(&key)? {
            crate::failstop::lock(&shared.dedup).remove_run(&run);
        }
        let mut tail = view.last_seq().to_be_bytes().to_vec();
        tail.extend_from_slice(&view.last_hash()?);
        shared.meta.insert(REMOVED_TAIL, tail)?;
        // Uncounted before the removal: see `quota.rs`.
        shared.quota.removing(
            &shared.meta,
            view.last_seq() + 1,
            crate::quota::batch_bytes(crate::batch::uncompressed_len(&value), view.count()),
        )?;
        shared.batches.remove(&key)?;
        shared
            .first_seq
            .store(view.last_seq() + 1, Ordering::Release);
        stats.batches += 1;
        stats.events += view.count() as u64;
        debug_assert_eq!(crate::seq_from_bytes(&key), view.first_seq);
    }
    if stats.events > 0 {
        crate::tree::forget_leaves_below(shared, shared.first_seq.load(Ordering::Acquire))?;
        shared.sync()?;
        metrics::counter!("auditrail_spool_expired_events_total").increment(stats.events);
        tracing::info!(events = stats.events, "removed events past retention");
    }
    Ok(stats)
}
