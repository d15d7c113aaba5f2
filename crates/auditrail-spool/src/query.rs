//! Finding events: pick the narrowest index, check every candidate against
//! the whole filter, and scan directly only the batches not yet indexed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use auditrail_model::{AuditEvent, Outcome};

use crate::batch::BatchView;
use crate::index::{
    batch_key, short_hash, TimeSpan, ACTOR, EVENT, SERVICE, TIME, TRACE, TRACE_ENTRY,
};
use crate::{seq_from_bytes, seq_key, Shared, SpoolError};

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

/// What a query cost: how many stored events it had to decode and check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub events_examined: u64,
}

pub(crate) fn run(
    shared: &Shared,
    filter: &Filter,
) -> Result<(Vec<AuditEvent>, QueryStats), SpoolError> {
    let mut stats = QueryStats::default();
    if let Some(after) = filter.after_seq {
        let events = scan_from(shared, after, filter, &mut stats)?;
        return Ok((events, stats));
    }
    // Read the watermark first: whatever the indexer adds meanwhile is also
    // found by the tail scan, and `found` is keyed by seq, so nothing doubles.
    let indexed = shared.indexed_seq.load(Ordering::Acquire);
    let mut found = Newest::new(filter.limit());

    if let Some(trace) = &filter.trace_id {
        let mut reader = EventReader::new(shared);
        for seq in trace_seqs(shared, trace)? {
            if let Some(event) = reader.get(seq)? {
                stats.events_examined += 1;
                found.offer(filter, event);
            }
        }
    } else {
        for (first_seq, span) in candidate_batches(shared, filter)? {
            if found.is_settled_before(span.max) {
                break;
            }
            let Some(value) = shared.batches.get(seq_key(first_seq))? else {
                continue; // removed by retention meanwhile
            };
            let view = BatchView::parse(&value)?;
            for i in 0..view.count() {
                stats.events_examined += 1;
                found.offer(filter, view.event(i)?);
            }
        }
    }

    // Batches the indexer has not reached yet.
    let unindexed = Filter {
        limit: 0,
        ..filter.clone()
    };
    for event in scan_from(shared, indexed, &unindexed, &mut stats)? {
        found.offer(filter, event);
    }
    Ok((found.into_oldest_first(), stats))
}

/// Seqs of the indexed events of one trace: a binary search in each batch's
/// sorted trace run.
fn trace_seqs(shared: &Shared, trace_hex: &str) -> Result<Vec<u64>, SpoolError> {
    let mut trace = [0u8; 16];
    if hex::decode_to_slice(trace_hex, &mut trace).is_err() {
        return Ok(Vec::new()); // never stored under another length
    }
    let mut seqs = Vec::new();
    for item in shared.idx.scan_prefix([TRACE]) {
        let (_, run) = item?;
        let entries: Vec<&[u8]> = run.chunks_exact(TRACE_ENTRY).collect();
        let start = entries.partition_point(|e| e[..16] < trace[..]);
        for entry in &entries[start..] {
            if entry[..16] != trace[..] {
                break;
            }
            seqs.push(seq_at_end(entry));
        }
    }
    Ok(seqs)
}

/// The indexed batches that may hold matches, newest (by latest event time)
/// first.
fn candidate_batches(shared: &Shared, filter: &Filter) -> Result<Vec<(u64, TimeSpan)>, SpoolError> {
    let narrowing = [
        (ACTOR, &filter.actor),
        (EVENT, &filter.event_name),
        (SERVICE, &filter.service),
    ]
    .into_iter()
    .find_map(|(tag, value)| value.as_ref().map(|v| (tag, short_hash(v))));
    let mut batches = Vec::new();
    match narrowing {
        Some((tag, hash)) => {
            let prefix = batch_key(tag, &hash, 0)[..9].to_vec();
            for item in shared.idx.scan_prefix(prefix) {
                let (key, _) = item?;
                let first_seq = seq_at_end(&key);
                if let Some(span) = shared.idx.get(batch_key(TIME, &[], first_seq))? {
                    batches.extend(TimeSpan::from_bytes(&span).map(|s| (first_seq, s)));
                }
            }
        }
        None => {
            for item in shared.idx.scan_prefix([TIME]) {
                let (key, span) = item?;
                batches.extend(TimeSpan::from_bytes(&span).map(|s| (seq_at_end(&key), s)));
            }
        }
    }
    let (since, until) = (filter.since.unwrap_or(0), filter.until.unwrap_or(u64::MAX));
    batches.retain(|(_, span)| span.max >= since && span.min <= until);
    batches.sort_by(|a, b| b.1.max.cmp(&a.1.max).then(b.0.cmp(&a.0)));
    Ok(batches)
}

/// The newest `limit` matches seen so far, by (time, seq).
struct Newest {
    limit: usize,
    events: BTreeMap<(u64, u64), AuditEvent>,
}

impl Newest {
    fn new(limit: usize) -> Self {
        Newest {
            limit,
            events: BTreeMap::new(),
        }
    }

    fn offer(&mut self, filter: &Filter, event: AuditEvent) {
        if !filter.matches(&event) {
            return;
        }
        self.events.insert((event.time_unix_nano, event.seq), event);
        if self.events.len() > self.limit {
            self.events.pop_first();
        }
    }

    /// Whether no event at or before `max_time` can still make the cut.
    fn is_settled_before(&self, max_time: u64) -> bool {
        self.events.len() >= self.limit
            && self
                .events
                .first_key_value()
                .is_some_and(|((oldest, _), _)| max_time < *oldest)
    }

    fn into_oldest_first(self) -> Vec<AuditEvent> {
        self.events.into_values().collect()
    }
}

/// Matches above `after`, in seq order, straight from the batches.
fn scan_from(
    shared: &Shared,
    after: u64,
    filter: &Filter,
    stats: &mut QueryStats,
) -> Result<Vec<AuditEvent>, SpoolError> {
    let limit = filter.limit();
    let mut out = Vec::new();
    if after >= shared.last_seq.load(Ordering::Acquire) {
        return Ok(out);
    }
    let start = shared
        .batch_holding(after + 1)?
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
            stats.events_examined += 1;
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

/// Index keys and trace entries end in a seq.
fn seq_at_end(key: &[u8]) -> u64 {
    seq_from_bytes(&key[key.len() - 8..])
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
        let Some((_, value)) = self.shared.batch_holding(seq)? else {
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
