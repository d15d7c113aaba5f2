//! Finding events: pick the narrowest index, check every candidate against
//! the whole filter, and scan directly only the batches not yet indexed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use auditrail_model::{AuditEvent, Outcome};

use crate::batch::BatchView;
use crate::index::{short_hash, timed_key, ACTOR, EVENT, SERVICE, TIME, TRACE};
use crate::{seq_key, Shared, SpoolError};

/// What to look for. Every set field must match.
///
/// Results are the newest `limit` matches by `time_unix_nano`, returned
/// oldest first. With `after_seq` (what `tail` uses) they are instead the
/// first `limit` matches above that seq, in seq order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Inclusive lower bound on `time_unix_nano`.
    pub since: Option<u64>,
    /// Inclusive upper bound on `time_unix_nano`.
    pub until: Option<u64>,
    pub event_name: Option<String>,
    /// Matches `actor_id` or `actor_name`.
    pub actor: Option<String>,
    pub service: Option<String>,
    pub outcome: Option<Outcome>,
    /// Lower-case hex.
    pub trace_id: Option<String>,
    /// Substring of the body or of any attribute value.
    pub text: Option<String>,
    pub after_seq: Option<u64>,
    /// 0 means no limit.
    pub limit: usize,
}

impl Filter {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.since.is_none_or(|t| e.time_unix_nano >= t)
            && self.until.is_none_or(|t| e.time_unix_nano <= t)
            && self.event_name.as_ref().is_none_or(|n| &e.event_name == n)
            && self
                .actor
                .as_ref()
                .is_none_or(|a| &e.actor_id == a || &e.actor_name == a)
            && self.service.as_ref().is_none_or(|s| &e.service_name == s)
            && self.outcome.is_none_or(|o| e.outcome == o)
            && self.trace_id.as_ref().is_none_or(|t| &e.trace_id == t)
            && self.after_seq.is_none_or(|s| e.seq > s)
            && self.text.as_ref().is_none_or(|t| e.contains_text(t))
    }

    fn limit(&self) -> usize {
        if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        }
    }
}

pub(crate) fn run(shared: &Shared, filter: &Filter) -> Result<Vec<AuditEvent>, SpoolError> {
    if let Some(after) = filter.after_seq {
        return scan_from(shared, after, filter);
    }
    // Read the watermark first: whatever the indexer adds meanwhile is also
    // found by the tail scan, and `found` is keyed by seq, so nothing doubles.
    let indexed = shared.indexed_seq.load(Ordering::Acquire);
    let mut found: BTreeMap<(u64, u64), AuditEvent> = BTreeMap::new();
    let mut reader = EventReader::new(shared);
    let limit = filter.limit();

    let mut take = |seq: u64, found: &mut BTreeMap<(u64, u64), AuditEvent>| {
        if let Some(event) = reader.get(seq)? {
            if filter.matches(&event) {
                found.insert((event.time_unix_nano, event.seq), event);
            }
        }
        Ok::<bool, SpoolError>(found.len() >= limit)
    };

    if let Some(trace) = &filter.trace_id {
        let raw = hex::decode(trace).unwrap_or_default();
        if raw.len() == 16 {
            let mut prefix = vec![TRACE];
            prefix.extend_from_slice(&raw);
            for item in shared.idx.scan_prefix(&prefix) {
                let (key, _) = item?;
                take(seq_at_end(&key), &mut found)?;
            }
        }
        // A trace id of another length was never stored: nothing to find.
    } else {
        let (tag, prefix) = if let Some(actor) = &filter.actor {
            (ACTOR, short_hash(actor).to_vec())
        } else if let Some(name) = &filter.event_name {
            (EVENT, short_hash(name).to_vec())
        } else if let Some(service) = &filter.service {
            (SERVICE, short_hash(service).to_vec())
        } else {
            (TIME, Vec::new())
        };
        let low = timed_key(tag, &prefix, filter.since.unwrap_or(0), 0);
        let high = timed_key(tag, &prefix, filter.until.unwrap_or(u64::MAX), u64::MAX);
        // Newest first, so a limit stops the walk early.
        for item in shared.idx.range(low..=high).rev() {
            let (key, _) = item?;
            if take(seq_at_end(&key), &mut found)? {
                break;
            }
        }
    }

    // Batches the indexer has not reached yet.
    let tail = scan_from(
        shared,
        indexed,
        &Filter {
            limit: 0,
            ..filter.clone()
        },
    )?;
    for event in tail {
        found.insert((event.time_unix_nano, event.seq), event);
    }
    let skip = found.len().saturating_sub(limit);
    Ok(found.into_values().skip(skip).collect())
}

/// Matches above `after`, in seq order, straight from the batches.
fn scan_from(shared: &Shared, after: u64, filter: &Filter) -> Result<Vec<AuditEvent>, SpoolError> {
    let limit = filter.limit();
    let mut out = Vec::new();
    if after >= shared.last_seq.load(Ordering::Acquire) {
        return Ok(out);
    }
    let start = shared
        .batches
        .range(..=seq_key(after + 1))
        .next_back()
        .transpose()?
        .map(|(k, _)| k.to_vec())
        .unwrap_or_default();
    for item in shared.batches.range(start..) {
        let (_, value) = item?;
        let view = BatchView::parse(&value)?;
        for i in 0..view.count() {
            if view.first_seq + i as u64 <= after {
                continue;
            }
            let event = view.event(i)?;
            if filter.matches(&event) {
                out.push(event);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

fn seq_at_end(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"))
}

/// Reads events by seq, keeping the last batch it opened: index hits are
/// often neighbours in the same batch.
struct EventReader<'a> {
    shared: &'a Shared,
    batch: Option<sled::IVec>,
}

impl<'a> EventReader<'a> {
    fn new(shared: &'a Shared) -> Self {
        EventReader {
            shared,
            batch: None,
        }
    }

    fn get(&mut self, seq: u64) -> Result<Option<AuditEvent>, SpoolError> {
        if let Some(bytes) = &self.batch {
            let view = BatchView::parse(bytes)?;
            if (view.first_seq..=view.last_seq()).contains(&seq) {
                return view.event((seq - view.first_seq) as usize).map(Some);
            }
        }
        let Some((_, value)) = self
            .shared
            .batches
            .range(..=seq_key(seq))
            .next_back()
            .transpose()?
        else {
            return Ok(None);
        };
        let view = BatchView::parse(&value)?;
        if seq > view.last_seq() {
            return Ok(None);
        }
        let event = view.event((seq - view.first_seq) as usize)?;
        self.batch = Some(value);
        Ok(Some(event))
    }
}
