//! Removing events past retention.
//!
//! Batches are removed whole, oldest first, once the newest event in them was
//! received longer ago than the retention period. Retention counts from
//! receive time, not from the event's own timestamp, so a client with a wrong
//! clock cannot make auditrail drop fresh events. A batch also stays until
//! every registered sink has acknowledged it. Only indexed batches are
//! removed, so that their index keys can be removed with them. Their event
//! ids leave the dedup set too: a resend after retention is a new event.

use std::sync::atomic::Ordering;

use crate::batch::BatchView;
use crate::index::IndexDigest;
use crate::{Shared, SpoolError};

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
    let mut stats = GcStats::default();
    for item in shared.batches.iter() {
        let (key, value) = item?;
        let view = BatchView::parse(&value)?;
        if view.max_received >= cutoff
            || view.last_seq() > shared.indexed_seq.load(Ordering::Acquire)
            || view.last_seq() > delivered
        {
            break;
        }
        let mut removals = sled::Batch::default();
        IndexDigest::of_batch(&view)?.apply(&mut removals, true);
        shared.idx.apply_batch(removals)?;
        if let Some(run) = shared.ids.remove(&key)? {
            shared.dedup.lock().expect("dedup lock").remove_run(&run);
        }
        shared.batches.remove(&key)?;
        shared
            .first_seq
            .store(view.last_seq() + 1, Ordering::Release);
        stats.batches += 1;
        stats.events += view.count() as u64;
        debug_assert_eq!(crate::seq_from_bytes(&key), view.first_seq);
    }
    if stats.events > 0 {
        shared.db.flush()?;
        metrics::counter!("auditrail_spool_expired_events_total").increment(stats.events);
        tracing::info!(events = stats.events, "removed events past retention");
    }
    Ok(stats)
}
