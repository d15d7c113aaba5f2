//! Per-sink delivery cursors.
//!
//! Each sink has its own cursor: the highest seq up to which it has
//! confirmed every event. Sinks read from their cursor and move it only
//! after a confirmed write, so a slow or dead sink holds back nothing but
//! itself — and retention, which never removes events a registered sink has
//! not confirmed.
//!
//! Tree `cursors`: sink name → acknowledged seq (u64, big-endian). A cursor
//! lost in a crash only means redelivery, which sinks absorb because their
//! writes are idempotent by `(node, seq)`; so cursor moves are not flushed on
//! their own but with the next commit, or by the sink's delivery loop about
//! once a second ([`crate::Spool::flush`]), which bounds the redelivery after
//! a crash while ingest is quiet.

use crate::{seq_from_bytes, Shared, SpoolError};

impl Shared {
    /// The lowest cursor of all registered sinks; `None` without sinks.
    pub(crate) fn slowest_cursor(&self) -> Result<Option<u64>, SpoolError> {
        let mut slowest: Option<u64> = None;
        for item in self.cursors.iter() {
            let (_, value) = item?;
            let seq = seq_from_bytes(&value);
            slowest = Some(slowest.map_or(seq, |s| s.min(seq)));
        }
        Ok(slowest)
    }
}

pub(crate) fn register(shared: &Shared, sink: &str) -> Result<u64, SpoolError> {
    // A new sink starts before the oldest retained event: it gets everything.
    let start = shared
        .first_seq
        .load(std::sync::atomic::Ordering::Acquire)
        .saturating_sub(1);
    let previous = shared.cursors.compare_and_swap(
        sink.as_bytes(),
        None as Option<&[u8]>,
        Some(&start.to_be_bytes()[..]),
    )?;
    match previous {
        Ok(()) => Ok(start),
        Err(existing) => Ok(existing.current.map_or(start, |v| seq_from_bytes(&v))),
    }
}

pub(crate) fn ack(shared: &Shared, sink: &str, seq: u64) -> Result<u64, SpoolError> {
    let last = shared.last_seq.load(std::sync::atomic::Ordering::Acquire);
    if seq > last {
        return Err(SpoolError::AckBeyondEnd {
            sink: sink.to_owned(),
            seq,
            last,
        });
    }
    // Cursors only move forward: a late ack of an older batch changes nothing.
    let updated = shared.cursors.fetch_and_update(sink.as_bytes(), |old| {
        let old = old.map(seq_from_bytes)?;
        Some(old.max(seq).to_be_bytes().to_vec())
    })?;
    match updated {
        Some(old) => Ok(seq_from_bytes(&old).max(seq)),
        None => Err(SpoolError::UnknownSink(sink.to_owned())),
    }
}
