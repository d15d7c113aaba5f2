//! The event-level index: tantivy, in `<spool dir>/fulltext`.
//!
//! The sled indexes (`index.rs`) are per batch (~4,000 events), so a query
//! they narrow still decodes every event of each batch they point to, and
//! `--text` had no index at all. This one has a document per event, so a
//! query's cost follows its matches:
//!
//! | field | what | for |
//! |---|---|---|
//! | `seq` | u64, indexed and fast | the hit; removal by retention |
//! | `trace`, `actor`, `event`, `service` | the exact value (actor: actor_id and actor_name) | `--trace-id`, `--actor`, `--event`, `--service` |
//! | `text` | the body and every scalar attribute value, tokenized | `--text` |
//! | `long` | set when one of those has a token too long to index | `--text` |
//!
//! Tokens are the maximal runs of alphanumeric characters
//! (`char::is_alphanumeric`, tantivy's `SimpleTokenizer`), case kept. `--text` matches a *substring* of the body or of an attribute
//! value (`AuditEvent::contains_text`); an event holding the needle holds its
//! longest alphanumeric run inside one of its tokens, so "a term containing
//! that run" (a regex walk of the term dictionary) finds a superset of the
//! matches. tantivy drops tokens longer than `MAX_TOKEN_LEN` (65,530 bytes):
//! an event with one is marked `long`, and every text query also takes the
//! marked events. A needle with no alphanumeric character cannot be
//! narrowed: it scans.
//!
//! Like the sled indexes it is derived data and can never lose or fake a
//! match: every candidate is checked against the whole filter, and events
//! above its watermark (the commit's payload) are found by the sled indexes
//! and the scan above them. It indexes only durable events (a seq that a
//! crash can reassign is never in it), in its own thread at a low CPU
//! priority, committing about once a second; a crash loses at most the
//! uncommitted part, redone from sled on the next start. An index that
//! cannot be opened, belongs to another spool or is ahead of it is rebuilt.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrail_model::AuditEvent;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, RegexQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, STRING,
};
use tantivy::tokenizer::{SimpleTokenizer, TextAnalyzer, MAX_TOKEN_LEN};
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentReader, TantivyDocument,
    Term,
};

use crate::batch::BatchView;
use crate::query::Filter;
use crate::{seq_key, Shared, SpoolError};

/// The index's directory, inside the spool's.
pub(crate) const DIR: &str = "fulltext";
/// The tokenizer of `text`, registered under this name.
const WORDS: &str = "auditrail_words";
/// The value of `long` for an event whose text has a token tantivy drops.
const LONG: &str = "1";
/// The tantivy writer's memory (one indexing thread).
const WRITER_BYTES: usize = 48 << 20;
/// How often the index commits while events keep coming.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Events added at most between two commits.
const COMMIT_EVENTS: u64 = 100_000;
/// How long the thread sleeps when it has caught up.
const IDLE: Duration = Duration::from_millis(200);

struct Fields {
    seq: Field,
    trace: Field,
    actor: Field,
    event: Field,
    service: Field,
    text: Field,
    long: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        seq: builder.add_u64_field("seq", NumericOptions::default().set_indexed().set_fast()),
        trace: builder.add_text_field("trace", STRING),
        actor: builder.add_text_field("actor", STRING),
        event: builder.add_text_field("event", STRING),
        service: builder.add_text_field("service", STRING),
        text: builder.add_text_field(
            "text",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(WORDS)
                    .set_index_option(IndexRecordOption::Basic),
            ),
        ),
        long: builder.add_text_field("long", STRING),
    };
    (builder.build(), fields)
}

/// What the commit payload says: whose index it is and how far it got.
fn payload(spool_id: &str, seq: u64) -> String {
    format!("{spool_id} {seq}")
}

fn parse_payload(payload: &str) -> Option<(&str, u64)> {
    let (id, seq) = payload.split_once(' ')?;
    Some((id, seq.parse().ok()?))
}

#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error(transparent)]
    Tantivy(#[from] tantivy::TantivyError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("it belongs to spool {0}")]
    OtherSpool(String),
    #[error("it has events up to seq {0}, past the spool's last")]
    Ahead(u64),
}

impl From<tantivy::TantivyError> for SpoolError {
    fn from(e: tantivy::TantivyError) -> Self {
        SpoolError::Storage(format!("full-text index: {e}"))
    }
}

pub(crate) struct FullText {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// Every event up to this seq is in what `reader` sees.
    indexed: AtomicU64,
}

impl FullText {
    /// Opens the index of the spool in `spool_dir`, or builds it anew when
    /// it is missing or not this spool's (`spool_id`, `None` while the spool
    /// is pending) up to `last_seq`.
    pub(crate) fn open(
        spool_dir: &Path,
        spool_id: Option<&str>,
        last_seq: u64,
    ) -> Result<FullText, SpoolError> {
        let dir = spool_dir.join(DIR);
        match Self::try_open(&dir, spool_id, last_seq) {
            Ok(fulltext) => Ok(fulltext),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), reason = %why, "rebuilding the full-text index");
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    SpoolError::Storage(format!("cannot remove {}: {e}", dir.display()))
                })?;
                Self::try_open(&dir, spool_id, last_seq).map_err(|e| {
                    SpoolError::Storage(format!("full-text index {}: {e}", dir.display()))
                })
            }
        }
    }

    fn try_open(dir: &Path, spool_id: Option<&str>, last_seq: u64) -> Result<FullText, Unusable> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(MmapDirectory::open(dir)?, schema)?;
        index
            .tokenizers()
            .register(WORDS, TextAnalyzer::from(SimpleTokenizer::default()));
        let indexed = match index
            .load_metas()?
            .payload
            .as_deref()
            .and_then(parse_payload)
        {
            None => 0,
            Some((id, seq)) if Some(id) == spool_id => seq,
            Some((id, _)) => return Err(Unusable::OtherSpool(id.to_owned())),
        };
        if indexed > last_seq {
            return Err(Unusable::Ahead(indexed));
        }
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(FullText {
            index,
            reader,
            fields,
            indexed: AtomicU64::new(indexed),
        })
    }

    /// Every event up to this seq is indexed.
    pub(crate) fn watermark(&self) -> u64 {
        self.indexed.load(Ordering::Acquire)
    }

    /// The indexed events (seq at most the watermark returned with them)
    /// that may match `filter`, in seq order: a superset of those that do.
    /// `None` when nothing in the filter narrows by this index.
    pub(crate) fn candidates(
        &self,
        filter: &Filter,
    ) -> Result<Option<(u64, Vec<u64>)>, SpoolError> {
        let f = &self.fields;
        let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, value) in [
            (f.trace, &filter.trace_id),
            (f.actor, &filter.actor),
            (f.event, &filter.event_name),
            (f.service, &filter.service),
        ] {
            if let Some(value) = value {
                must.push((Occur::Must, Box::new(term_query(field, value))));
            }
        }
        if let Some(run) = filter.text.as_deref().and_then(longest_run) {
            must.push((Occur::Must, Box::new(self.text_query(run)?)));
        }
        if must.is_empty() {
            return Ok(None);
        }
        // The watermark first: the searcher is at least that new.
        let watermark = self.watermark();
        let searcher = self.reader.searcher();
        let mut seqs = searcher.search(&BooleanQuery::new(must), &Seqs)?;
        seqs.retain(|&s| s <= watermark);
        seqs.sort_unstable();
        Ok(Some((watermark, seqs)))
    }

    /// The events with a token containing `run`, or a token too long to index.
    fn text_query(&self, run: &str) -> Result<BooleanQuery, SpoolError> {
        // `run` is alphanumeric: nothing in it is special to a regex.
        let contains = RegexQuery::from_pattern(&format!(".*{run}.*"), self.fields.text)?;
        Ok(BooleanQuery::new(vec![
            (Occur::Should, Box::new(contains)),
            (Occur::Should, Box::new(term_query(self.fields.long, LONG))),
        ]))
    }

    fn document(&self, event: &AuditEvent) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.seq, event.seq);
        for (field, value) in [
            (f.trace, &event.trace_id),
            (f.actor, &event.actor_id),
            (f.actor, &event.actor_name),
            (f.event, &event.event_name),
            (f.service, &event.service_name),
        ] {
            // A longer value is left out; it could not equal a query's
            // value of the length tantivy takes.
            if !value.is_empty() && value.len() <= MAX_TOKEN_LEN {
                doc.add_text(field, value);
            }
        }
        let mut long = false;
        for_each_text(event, &mut |text| {
            long |= has_long_token(text);
            doc.add_text(f.text, text);
        });
        if long {
            doc.add_text(f.long, LONG);
        }
        doc
    }
}

fn term_query(field: Field, value: &str) -> TermQuery {
    TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    )
}

/// The longest maximal run of alphanumeric characters in `needle`: every
/// text holding `needle` holds it inside one of its tokens.
pub(crate) fn longest_run(needle: &str) -> Option<&str> {
    needle
        .split(|c: char| !c.is_alphanumeric())
        .filter(|run| !run.is_empty())
        .max_by_key(|run| run.len())
}

/// Whether `text` has a token tantivy would drop.
fn has_long_token(text: &str) -> bool {
    text.len() > MAX_TOKEN_LEN
        && text
            .split(|c: char| !c.is_alphanumeric())
            .any(|token| token.len() > MAX_TOKEN_LEN)
}

/// Hands over everything `--text` searches: the body and each scalar
/// attribute value, as `AuditEvent::contains_text` sees them.
pub(crate) fn for_each_text(event: &AuditEvent, each: &mut dyn FnMut(&str)) {
    fn walk(value: &serde_json::Value, each: &mut dyn FnMut(&str)) {
        match value {
            serde_json::Value::String(s) => each(s),
            serde_json::Value::Number(n) => each(&n.to_string()),
            serde_json::Value::Bool(b) => each(&b.to_string()),
            serde_json::Value::Null => {}
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, each)),
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, each)),
        }
    }
    each(&event.body);
    for json in [&event.attributes, &event.resource_attributes] {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(json) {
            walk(&value, each);
        }
    }
}

/// Collects the seqs of the matching documents.
struct Seqs;

struct SegmentSeqs {
    column: tantivy::columnar::Column<u64>,
    seqs: Vec<u64>,
}

impl Collector for Seqs {
    type Fruit = Vec<u64>;
    type Child = SegmentSeqs;

    fn for_segment(&self, _: u32, segment: &SegmentReader) -> tantivy::Result<SegmentSeqs> {
        Ok(SegmentSeqs {
            column: segment.fast_fields().u64("seq")?,
            seqs: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        Ok(fruits.concat())
    }
}

impl SegmentCollector for SegmentSeqs {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        self.seqs.extend(self.column.first(doc));
    }

    fn harvest(self) -> Vec<u64> {
        self.seqs
    }
}

/// Lowers the calling thread's CPU priority (nice 10), so that indexing
/// takes what ingest leaves; threads it starts (tantivy's) inherit it.
fn lower_priority() {
    // On Linux, PRIO_PROCESS with a thread id sets that thread's nice value.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 10) {
        tracing::debug!(error = %e, "full-text indexer keeps its priority");
    }
}

/// The full-text indexer's thread: indexes durable batches until `stop`
/// is dropped, then commits what it added.
pub(crate) fn run_indexer(shared: Arc<Shared>, fulltext: Arc<FullText>, stop: Receiver<()>) {
    lower_priority();
    loop {
        match index_until_stopped(&shared, &fulltext, &stop) {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("auditrail_spool_errors_total", "op" => "fulltext").increment(1);
                tracing::error!(error = %e, "full-text indexing failed; queries scan what it has not indexed, and it tries again in 10 s");
                match stop.recv_timeout(Duration::from_secs(10)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        }
    }
}

fn index_until_stopped(
    shared: &Shared,
    fulltext: &FullText,
    stop: &Receiver<()>,
) -> Result<(), SpoolError> {
    let mut writer: IndexWriter<TantivyDocument> =
        fulltext.index.writer_with_num_threads(1, WRITER_BYTES)?;
    // What was added since the last commit is gone with the writer it was
    // added to: start again from what is committed.
    let mut added = fulltext.watermark();
    let mut pending = 0u64;
    let mut deleted_below = 0u64;
    let mut last_commit = Instant::now();
    loop {
        let stopping = !matches!(stop.recv_timeout(IDLE), Err(RecvTimeoutError::Timeout));
        let durable = *shared.durable_seq.borrow();
        while added < durable && pending < COMMIT_EVENTS {
            let Some((_, value)) = shared.batches.get_gt(seq_key(added))? else {
                break;
            };
            let view = BatchView::parse(&value)?;
            if view.last_seq() > durable {
                break;
            }
            for i in 0..view.count() {
                writer.add_document(fulltext.document(&view.event(i)?))?;
            }
            added = view.last_seq();
            pending += view.count() as u64;
        }
        // Retention removed these events from the batches.
        let first_seq = shared.first_seq.load(Ordering::Acquire);
        let mut dirty = pending > 0;
        if first_seq > deleted_below {
            writer.delete_query(Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_u64(fulltext.fields.seq, first_seq)),
            )))?;
            deleted_below = first_seq;
            dirty = true;
        }
        let caught_up = added >= *shared.durable_seq.borrow();
        if dirty
            && (stopping
                || caught_up
                || pending >= COMMIT_EVENTS
                || last_commit.elapsed() >= COMMIT_EVERY)
        {
            // Nothing is stored before the spool has an identity.
            if let Some(identity) = shared.identity.get() {
                let mut commit = writer.prepare_commit()?;
                commit.set_payload(&payload(&identity.spool_id, added));
                commit.commit()?;
                fulltext.reader.reload()?;
                fulltext.indexed.store(added, Ordering::Release);
                pending = 0;
                last_commit = Instant::now();
            }
        }
        metrics::gauge!("auditrail_spool_fulltext_lag_events").set(
            shared
                .last_seq
                .load(Ordering::Acquire)
                .saturating_sub(fulltext.watermark()) as f64,
        );
        if stopping {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_run_is_inside_a_token_of_any_text_holding_the_needle() {
        assert_eq!(longest_run("user@example.com"), Some("example"));
        assert_eq!(longest_run("  x "), Some("x"));
        assert_eq!(longest_run("-- ::"), None);
        assert_eq!(longest_run(""), None);
        assert_eq!(longest_run("Zürich-1"), Some("Zürich"));
    }

    #[test]
    fn the_text_is_the_body_and_scalar_values_not_keys() {
        let event = AuditEvent {
            body: "login denied for bob@corp".into(),
            attributes: r#"{"city":"Paris","n":[12,true,null],"obj":{"k":"v-1"}}"#.into(),
            resource_attributes: "{}".into(),
            ..Default::default()
        };
        let mut texts = Vec::new();
        for_each_text(&event, &mut |t| texts.push(t.to_owned()));
        assert_eq!(
            texts,
            ["login denied for bob@corp", "Paris", "12", "true", "v-1"]
        );
    }

    #[test]
    fn a_token_tantivy_would_drop_is_seen() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(has_long_token(&format!("short {long} short")));
        assert!(!has_long_token(&"a b ".repeat(MAX_TOKEN_LEN)));
        assert!(!has_long_token(&"a".repeat(MAX_TOKEN_LEN)));
    }

    #[test]
    fn the_payload_round_trips() {
        assert_eq!(parse_payload(&payload("abc", 42)), Some(("abc", 42)));
        assert_eq!(parse_payload(&payload("", 7)), Some(("", 7)));
        assert_eq!(parse_payload("garbage"), None);
    }
}
