//! Finding events: pick the narrowest index, check every candidate against
//! the whole filter, and scan directly only the batches not yet indexed.
//!
//! Two orders: [`run`] finds the newest `limit` matches by time (what a
//! plain `query` asks); [`scan`] hands over every match above `after_seq` in
//! seq order as it finds it (what `tail`, paging, sinks and a streamed
//! `limit=0` use), holding nothing but the batch it reads. Both can be held
//! to a [`Budget`]: how many stored events they may decode and check, and
//! until when.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use auditrail_model::{AuditEvent, Outcome, ValuePattern};

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
    /// The event's `target` (what was acted on), exactly or by prefix.
    pub target: Option<ValuePattern>,
    /// Exactly the event's `tenant`.
    pub tenant: Option<String>,
    /// Exactly the event's `event_id` (no index: a scan).
    pub event_id: Option<String>,
    /// Events of this name are left out (what a query that does not ask
    /// for them hides: the trail's own record of each query).
    pub hide_event_name: Option<String>,
    pub after_seq: Option<u64>,
    /// 0 means no limit.
    pub limit: usize,
}

impl Filter {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.since.is_none_or(|t| e.time_unix_nano >= t)
            && self.until.is_none_or(|t| e.time_unix_nano <= t)
            && self.tenant.as_ref().is_none_or(|t| &e.tenant == t)
            && self.event_id.as_ref().is_none_or(|id| &e.event_id == id)
            && self.event_name.as_ref().is_none_or(|n| &e.event_name == n)
            && self
                .hide_event_name
                .as_ref()
                .is_none_or(|n| &e.event_name != n)
            && self
                .actor
                .as_ref()
                .is_none_or(|a| &e.actor_id == a || &e.actor_name == a)
            && self.service.as_ref().is_none_or(|s| &e.service_name == s)
            && self.outcome.is_none_or(|o| e.outcome == o)
            && self.trace_id.as_ref().is_none_or(|t| &e.trace_id == t)
            && self.target.as_ref().is_none_or(|t| t.matches(&e.target))
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

    /// Whether an index can rule batches out.
    fn is_indexed(&self) -> bool {
        self.trace_id.is_some()
            || self.actor.is_some()
            || self.event_name.is_some()
            || self.service.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }
}

/// What one query may spend. The default spends without limit.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// How many stored events it may decode and check against the filter
    /// (events that an index rules out cost nothing).
    pub max_examined: Option<u64>,
    /// When it must stop.
    pub deadline: Option<Instant>,
    /// Set by the caller to stop it, e.g. when its client has gone.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// Why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It reached the last stored event.
    End,
    /// It found `limit` matches.
    Limit,
    /// It examined [`Budget::max_examined`] events.
    Budget,
    /// [`Budget::deadline`] passed.
    Deadline,
    /// [`Budget::cancel`] was set, or the receiver of the matches said stop.
    Cancelled,
}

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryEnd {
    pub stop: Stop,
    /// Stored events decoded and checked.
    pub events_examined: u64,
    /// The highest seq stored when the query started.
    pub last_seq: u64,
    /// Pass as `after_seq` to continue in seq order without missing or
    /// repeating anything: every event up to it was handed over, or checked
    /// and found not to match, or ruled out by an index.
    pub next_after_seq: u64,
}

impl QueryEnd {
    /// Whether the answer holds everything the query asked for: false when
    /// it stopped early (budget, deadline, cancelled), so that fewer
    /// matches than the limit do not mean there are no more.
    pub fn complete(&self) -> bool {
        matches!(self.stop, Stop::End | Stop::Limit)
    }
}

/// What a query cost: how many stored events it had to decode and check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub events_examined: u64,
}

/// How often (in events examined) the deadline and the cancel flag are
/// looked at: a scan examines about a million events a second.
const CHECK_EVERY: u64 = 256;

/// Counts what a query examines against its budget.
struct Meter<'a> {
    budget: &'a Budget,
    examined: u64,
}

impl<'a> Meter<'a> {
    fn new(budget: &'a Budget) -> Self {
        Meter {
            budget,
            examined: 0,
        }
    }

    /// Takes one more event from the budget, or says why not.
    fn admit(&mut self) -> Result<(), Stop> {
        if self
            .budget
            .max_examined
            .is_some_and(|max| self.examined >= max)
        {
            return Err(Stop::Budget);
        }
        if self.examined.is_multiple_of(CHECK_EVERY) {
            if self.budget.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Stop::Deadline);
            }
            if self
                .budget
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(Stop::Cancelled);
            }
        }
        self.examined += 1;
        Ok(())
    }

    /// The error a newest-N query fails with when it cannot finish.
    fn error(&self, stop: Stop) -> SpoolError {
        match stop {
            Stop::Deadline => SpoolError::QueryTimedOut {
                examined: self.examined,
            },
            Stop::Cancelled => SpoolError::QueryCancelled,
            _ => SpoolError::ScanBudgetExceeded {
                examined: self.examined,
            },
        }
    }
}

/// The newest `limit` matches by time, oldest first (or, with `after_seq`,
/// the first `limit` above it in seq order, see [`scan`]). A newest-N
/// query that cannot finish within its budget fails with
/// [`SpoolError::ScanBudgetExceeded`] or [`SpoolError::QueryTimedOut`]:
/// what it found so far need not be the newest.
pub(crate) fn run(
    shared: &Shared,
    filter: &Filter,
    budget: &Budget,
) -> Result<(Vec<AuditEvent>, QueryEnd), SpoolError> {
    if filter.after_seq.is_some() {
        let mut events = Vec::new();
        let end = scan(shared, filter, budget, &mut |event| {
            events.push(event);
            ControlFlow::Continue(())
        })?;
        return Ok((events, end));
    }
    // Read first: everything up to it is covered by this query.
    let last_seq = shared.last_seq.load(Ordering::Acquire);
    // Read the watermark first: whatever the indexer adds meanwhile is also
    // found by the tail scan, and `found` is keyed by seq, so nothing doubles.
    let indexed = shared.indexed_seq.load(Ordering::Acquire);
    let mut found = Newest::new(filter.limit());
    let mut meter = Meter::new(budget);
    let mut reader = EventReader::new(shared);

    // Events up to `covered` are narrowed event by event by the full-text
    // index; the batch indexes narrow the batches above it.
    let (covered, candidates) = fulltext_candidates(shared, filter, indexed)?;
    if let Some(seqs) = &candidates {
        let mut groups = group_by_batch(shared, seqs)?;
        groups.sort_by(|a, b| b.0.max.cmp(&a.0.max).then(b.1[0].cmp(&a.1[0])));
        for (span, seqs) in groups {
            if found.is_settled_before(span.max) {
                break;
            }
            for &seq in seqs.iter().rev() {
                meter.admit().map_err(|stop| meter.error(stop))?;
                if let Some(event) = reader.get(seq)? {
                    found.offer(filter, event);
                }
            }
        }
    }
    if let Some(trace) = &filter.trace_id {
        for seq in trace_seqs(shared, trace, covered)? {
            meter.admit().map_err(|stop| meter.error(stop))?;
            if let Some(event) = reader.get(seq)? {
                found.offer(filter, event);
            }
        }
    } else {
        for (first_seq, span) in candidate_batches(shared, filter, covered)? {
            if found.is_settled_before(span.max) {
                break;
            }
            let Some(value) = shared.batches.get(seq_key(first_seq))? else {
                continue; // removed by retention meanwhile
            };
            let view = BatchView::parse(&value)?;
            for i in 0..view.count() {
                meter.admit().map_err(|stop| meter.error(stop))?;
                found.offer(filter, view.event(i)?);
            }
        }
    }

    // Batches the indexer has not reached yet.
    let unindexed = Filter {
        limit: 0,
        after_seq: Some(indexed),
        ..filter.clone()
    };
    let mut offer = |event| {
        found.offer(filter, event);
        ControlFlow::Continue(())
    };
    let mut tail = SeqScan::new(&unindexed, meter, &mut offer);
    if let Err(stop) = tail.scan_batches_from(shared, indexed)? {
        return Err(tail.meter.error(stop));
    }
    let events_examined = tail.meter.examined;
    let full = found.events.len() >= found.limit;
    let events = found.into_oldest_first();
    let last_returned = events.iter().map(|e| e.seq).max().unwrap_or(0);
    // A full page may have stopped short of last_seq; otherwise every event
    // up to last_seq was looked at.
    let (stop, next_after_seq) = if full && filter.limit > 0 {
        (Stop::Limit, last_returned)
    } else {
        (Stop::End, last_seq.max(last_returned))
    };
    Ok((
        events,
        QueryEnd {
            stop,
            events_examined,
            last_seq,
            next_after_seq,
        },
    ))
}

/// Every match above `filter.after_seq` (up to `filter.limit`), in seq
/// order, handed to `each` as it is found; `each` may stop the scan by
/// returning `Break`, and the event it was given then counts as not taken. Indexed batches that cannot match are skipped. Running
/// out of budget is not an error here: the scan says where it stopped, so
/// that the caller can continue from there.
pub(crate) fn scan(
    shared: &Shared,
    filter: &Filter,
    budget: &Budget,
    each: &mut dyn FnMut(AuditEvent) -> ControlFlow<()>,
) -> Result<QueryEnd, SpoolError> {
    let after = filter.after_seq.unwrap_or(0);
    let last_seq = shared.last_seq.load(Ordering::Acquire);
    let indexed = shared.indexed_seq.load(Ordering::Acquire);
    let mut scan = SeqScan::new(filter, Meter::new(budget), each);
    scan.position = after;
    let (covered, candidates) = fulltext_candidates(shared, filter, indexed)?;
    let stopped = (|| {
        let mut raw_from = after;
        if let Some(seqs) = &candidates {
            if after < covered {
                let mut reader = EventReader::new(shared);
                for &seq in &seqs[seqs.partition_point(|&s| s <= after)..] {
                    if let Err(stop) = scan.visit(seq, || reader.get(seq))? {
                        return Ok(Some(stop));
                    }
                }
                // Every other event up to it was ruled out by the index.
                scan.position = scan.position.max(covered);
                raw_from = covered;
            }
        }
        if filter.is_indexed() && raw_from < indexed {
            if let Err(stop) = scan.scan_indexed(shared, raw_from, indexed, covered)? {
                return Ok(Some(stop));
            }
            // Everything up to the watermark was examined or ruled out.
            scan.position = scan.position.max(indexed);
            raw_from = indexed;
        }
        Ok::<_, SpoolError>(scan.scan_batches_from(shared, raw_from)?.err())
    })()?;
    let (stop, next_after_seq) = match stopped {
        Some(stop) => (stop, scan.position),
        None => (Stop::End, scan.position.max(last_seq)),
    };
    Ok(QueryEnd {
        stop,
        events_examined: scan.meter.examined,
        last_seq,
        next_after_seq,
    })
}

/// A scan in seq order: where it has got to, and what it hands over.
struct SeqScan<'f, 'b, 'e> {
    filter: &'f Filter,
    meter: Meter<'b>,
    each: &'e mut dyn FnMut(AuditEvent) -> ControlFlow<()>,
    limit: usize,
    found: usize,
    /// The last seq examined (or ruled out).
    position: u64,
}

impl<'f, 'b, 'e> SeqScan<'f, 'b, 'e> {
    fn new(
        filter: &'f Filter,
        meter: Meter<'b>,
        each: &'e mut dyn FnMut(AuditEvent) -> ControlFlow<()>,
    ) -> Self {
        SeqScan {
            filter,
            meter,
            each,
            limit: filter.limit(),
            found: 0,
            position: 0,
        }
    }

    /// Examines the event at `seq`; `Err` says why the scan stops.
    fn visit(
        &mut self,
        seq: u64,
        event: impl FnOnce() -> Result<Option<AuditEvent>, SpoolError>,
    ) -> Result<Result<(), Stop>, SpoolError> {
        if let Err(stop) = self.meter.admit() {
            return Ok(Err(stop));
        }
        let Some(event) = event()? else {
            return Ok(Ok(())); // removed by retention meanwhile
        };
        self.position = seq;
        if self.filter.matches(&event) {
            self.found += 1;
            if (self.each)(event).is_break() {
                // Not taken: continuing starts with it again.
                self.position = seq - 1;
                return Ok(Err(Stop::Cancelled));
            }
            if self.found >= self.limit {
                return Ok(Err(Stop::Limit));
            }
        }
        Ok(Ok(()))
    }

    /// Every stored event above `after`, straight from the batches.
    fn scan_batches_from(
        &mut self,
        shared: &Shared,
        after: u64,
    ) -> Result<Result<(), Stop>, SpoolError> {
        if after >= shared.last_seq.load(Ordering::Acquire) {
            return Ok(Ok(()));
        }
        let start = shared
            .batch_holding(after + 1)?
            .map(|(k, _)| k.to_vec())
            .unwrap_or_default();
        for item in shared.batches.range(start..) {
            let (_, value) = item?;
            if let Err(stop) = self.scan_batch(&BatchView::parse(&value)?, after)? {
                return Ok(Err(stop));
            }
        }
        Ok(Ok(()))
    }

    /// The events of one batch above `after`.
    fn scan_batch(
        &mut self,
        view: &BatchView<'_>,
        after: u64,
    ) -> Result<Result<(), Stop>, SpoolError> {
        for i in 0..view.count() {
            let seq = view.first_seq + i as u64;
            if seq <= after {
                continue;
            }
            if let Err(stop) = self.visit(seq, || view.event(i).map(Some))? {
                return Ok(Err(stop));
            }
        }
        Ok(Ok(()))
    }

    /// The indexed events in `(after, indexed]` that an index does not rule
    /// out, in seq order; batches starting at or below `covered` (a batch
    /// boundary at or below `after`) are not looked at.
    fn scan_indexed(
        &mut self,
        shared: &Shared,
        after: u64,
        indexed: u64,
        covered: u64,
    ) -> Result<Result<(), Stop>, SpoolError> {
        if let Some(trace) = &self.filter.trace_id {
            let mut seqs = trace_seqs(shared, trace, covered)?;
            seqs.retain(|&s| s > after && s <= indexed);
            seqs.sort_unstable();
            let mut reader = EventReader::new(shared);
            for seq in seqs {
                if let Err(stop) = self.visit(seq, || reader.get(seq))? {
                    return Ok(Err(stop));
                }
            }
            return Ok(Ok(()));
        }
        let mut batches: Vec<u64> = candidate_batches(shared, self.filter, covered)?
            .into_iter()
            .map(|(first_seq, _)| first_seq)
            // Indexed after the watermark was read: the raw scan finds them.
            .filter(|&first_seq| first_seq <= indexed)
            .collect();
        batches.sort_unstable();
        // The last batch starting at or before `after` may hold seqs above it.
        let skip = batches.partition_point(|&first_seq| first_seq <= after);
        for first_seq in &batches[skip.saturating_sub(1)..] {
            let Some(value) = shared.batches.get(seq_key(*first_seq))? else {
                continue; // removed by retention meanwhile
            };
            if let Err(stop) = self.scan_batch(&BatchView::parse(&value)?, after)? {
                return Ok(Err(stop));
            }
        }
        Ok(Ok(()))
    }
}

/// The full-text index's candidates for `filter` (seqs in order), with how
/// far they cover: `(0, None)` when it has none (no index, or nothing in
/// the filter it narrows by). Never past `indexed`, so that the batch
/// indexes and the scan above take exactly the rest.
fn fulltext_candidates(
    shared: &Shared,
    filter: &Filter,
    indexed: u64,
) -> Result<(u64, Option<Vec<u64>>), SpoolError> {
    let Some(fulltext) = &shared.fulltext else {
        return Ok((0, None));
    };
    let Some((watermark, mut seqs)) = fulltext.candidates(filter)? else {
        return Ok((0, None));
    };
    let covered = watermark.min(indexed);
    seqs.truncate(seqs.partition_point(|&s| s <= covered));
    Ok((covered, Some(seqs)))
}

/// The batches holding `seqs` (in order), each with its time span and the
/// seqs of it: two index reads per batch, none per seq.
fn group_by_batch<'s>(
    shared: &Shared,
    seqs: &'s [u64],
) -> Result<Vec<(TimeSpan, &'s [u64])>, SpoolError> {
    let mut groups = Vec::new();
    let mut rest = seqs;
    while let Some(&seq) = rest.first() {
        let here = shared
            .idx
            .range(batch_key(TIME, &[], 0)..=batch_key(TIME, &[], seq))
            .next_back()
            .transpose()?;
        let next_first = shared
            .idx
            .range(batch_key(TIME, &[], seq + 1)..=batch_key(TIME, &[], u64::MAX))
            .next()
            .transpose()?
            .map_or(u64::MAX, |(key, _)| seq_at_end(&key));
        let (mine, later) = rest.split_at(rest.partition_point(|&s| s < next_first));
        // No span: removed by retention meanwhile.
        if let Some(span) = here.and_then(|(_, span)| TimeSpan::from_bytes(&span)) {
            groups.push((span, mine));
        }
        rest = later;
    }
    Ok(groups)
}

/// Seqs of the indexed events of one trace in batches starting above
/// `above`: a binary search in each batch's sorted trace run.
fn trace_seqs(shared: &Shared, trace_hex: &str, above: u64) -> Result<Vec<u64>, SpoolError> {
    let mut trace = [0u8; 16];
    if hex::decode_to_slice(trace_hex, &mut trace).is_err() {
        return Ok(Vec::new()); // never stored under another length
    }
    let mut seqs = Vec::new();
    for item in shared.idx.range(above_keys(TRACE, &[], above)) {
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

/// The keys `tag ‖ prefix ‖ first_seq` of the batches starting above `above`.
fn above_keys(tag: u8, prefix: &[u8], above: u64) -> std::ops::RangeInclusive<Vec<u8>> {
    batch_key(tag, prefix, above.saturating_add(1))..=batch_key(tag, prefix, u64::MAX)
}

/// The indexed batches starting above `above` that may hold matches, newest
/// (by latest event time) first.
fn candidate_batches(
    shared: &Shared,
    filter: &Filter,
    above: u64,
) -> Result<Vec<(u64, TimeSpan)>, SpoolError> {
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
            for item in shared.idx.range(above_keys(tag, &hash, above)) {
                let (key, _) = item?;
                let first_seq = seq_at_end(&key);
                if let Some(span) = shared.idx.get(batch_key(TIME, &[], first_seq))? {
                    batches.extend(TimeSpan::from_bytes(&span).map(|s| (first_seq, s)));
                }
            }
        }
        None => {
            for item in shared.idx.range(above_keys(TIME, &[], above)) {
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

/// Index keys and trace entries end in a seq.
fn seq_at_end(key: &[u8]) -> u64 {
    seq_from_bytes(&key[key.len() - 8..])
}

/// Reads events by seq, keeping the last batch it opened (decompressed):
/// index hits are often neighbours in the same batch.
struct EventReader<'a> {
    shared: &'a Shared,
    batch: Option<BatchView<'static>>,
}

impl<'a> EventReader<'a> {
    fn new(shared: &'a Shared) -> Self {
        EventReader {
            shared,
            batch: None,
        }
    }

    fn get(&mut self, seq: u64) -> Result<Option<AuditEvent>, SpoolError> {
        if let Some(view) = &self.batch {
            if (view.first_seq..=view.last_seq()).contains(&seq) {
                return view.event((seq - view.first_seq) as usize).map(Some);
            }
        }
        let Some((_, value)) = self.shared.batch_holding(seq)? else {
            return Ok(None);
        };
        let view = BatchView::parse_owned(&value)?;
        if seq > view.last_seq() {
            return Ok(None);
        }
        let event = view.event((seq - view.first_seq) as usize)?;
        self.batch = Some(view);
        Ok(Some(event))
    }
}
