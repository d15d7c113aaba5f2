//! The spool: the only component that touches sled.
//!
//! [`Spool::append`] resolves only after the group commit holding its events
//! has been fsync'd, which is what lets the receiver acknowledge an OTLP
//! request durably. The spool assigns each node's gap-free `seq`, links the
//! events into the hash chain, deduplicates by `event_id`, keeps the indexes
//! that make [`Spool::query`] cheap, enforces the disk quota and removes
//! events past their retention.
//!
//! Layout: tree `batches` maps `seq` (big-endian) of a batch's first event to
//! one value holding the whole group-committed batch (see `batch.rs`); tree
//! `ids` holds each batch's dedup keys (see `dedup.rs`); tree `idx` holds the
//! secondary indexes (see `index.rs`).

mod batch;
mod cursors;
mod dead_letter;
mod dedup;
mod index;
mod query;
mod quota;
mod retention;
mod verify;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use auditrail_model::{AuditEvent, Hash, GENESIS_HASH};
use tokio::sync::{oneshot, watch};

pub use dead_letter::DeadLetter;
pub use query::{Filter, QueryStats};
pub use retention::GcStats;
pub use verify::VerifyReport;

use batch::BatchView;
use dedup::DedupSet;
use quota::DiskQuota;
use writer::AppendJob;

/// How a spool is opened.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// This node's id, written into every event it stores.
    pub node: String,
    /// Appends are refused once the stored events take this many bytes, or
    /// sled's files four times as much plus 32 MiB (see `quota.rs`).
    pub max_disk_bytes: u64,
    /// Events received longer ago than this are removed by [`Spool::gc`].
    pub retention: Duration,
    /// sled's page cache size.
    pub cache_bytes: u64,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            node: node.into(),
            max_disk_bytes: 20 << 30,
            retention: Duration::from_secs(7 * 24 * 3600),
            cache_bytes: 256 << 20,
        }
    }
}

/// What went wrong in the spool.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool disk quota reached: {used} of {limit} bytes of events stored, {file_bytes} of at most {file_limit} bytes in sled's files")]
    QuotaExceeded {
        used: u64,
        limit: u64,
        file_bytes: u64,
        file_limit: u64,
    },
    #[error("spool directory {0} is in use by another process (is `auditrail serve` running? query it with --admin instead)")]
    Locked(PathBuf),
    #[error("spool storage error: {0}")]
    Storage(String),
    #[error("spool data is corrupt: {0}")]
    Corrupt(String),
    #[error("spool is shutting down")]
    Closed,
    #[error("sink {0:?} is not registered")]
    UnknownSink(String),
    #[error("sink {sink:?} acknowledged seq {seq}, past the last stored seq {last}")]
    AckBeyondEnd { sink: String, seq: u64, last: u64 },
}

impl From<sled::Error> for SpoolError {
    fn from(e: sled::Error) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

/// The result of one append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Events newly stored.
    pub stored: usize,
    /// Events whose `event_id` the spool already held; they are acknowledged
    /// but not stored again.
    pub duplicates: usize,
    /// The seqs given to the stored events, in order.
    pub seqs: Vec<u64>,
}

/// Counters describing the spool's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    pub first_seq: u64,
    pub last_seq: u64,
    pub indexed_seq: u64,
    pub events: u64,
    /// The size of sled's files (as last measured, plus what was written since).
    pub disk_bytes: u64,
    /// What the stored events take: what `max_disk` bounds.
    pub live_bytes: u64,
}

pub(crate) struct Shared {
    db: sled::Db,
    pub(crate) batches: sled::Tree,
    pub(crate) idx: sled::Tree,
    node: String,
    pub(crate) quota: DiskQuota,
    retention: Duration,
    /// Highest seq inserted into `batches` (not necessarily fsync'd yet).
    pub(crate) last_seq: AtomicU64,
    /// Highest seq covered by a completed fsync: sinks read only up to it,
    /// so no sink ever holds an event the spool could still lose.
    pub(crate) durable_seq: watch::Sender<u64>,
    /// Lowest seq still retained (`last_seq + 1` when empty).
    pub(crate) first_seq: AtomicU64,
    pub(crate) indexed_seq: AtomicU64,
    pub(crate) ids: sled::Tree,
    pub(crate) cursors: sled::Tree,
    pub(crate) dead_letters: sled::Tree,
    /// Small facts that outlive the batches (see `retention.rs`).
    pub(crate) meta: sled::Tree,
    pub(crate) dedup: Mutex<DedupSet>,
    initial_last_hash: Hash,
}

/// sled's segment size. sled records it in the spool on creation and
/// refuses to open a spool with another, so it is fixed, not configurable.
const SEGMENT_SIZE: usize = 8 << 20;

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The inverse of [`seq_key`]; a stored value of another length reads as 0.
pub(crate) fn seq_from_bytes(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]))
}

impl Shared {
    fn over_quota(&self) -> bool {
        self.quota.over()
    }

    fn quota_error(&self) -> SpoolError {
        self.quota.error()
    }

    fn refresh_disk_usage(&self) {
        self.quota.refresh(&self.db);
    }

    fn measure_disk_usage(&self) {
        self.quota.measure(&self.db);
    }

    fn stats(&self) -> SpoolStats {
        let last_seq = self.last_seq.load(Ordering::Acquire);
        let first_seq = self.first_seq.load(Ordering::Acquire);
        SpoolStats {
            first_seq,
            last_seq,
            indexed_seq: self.indexed_seq.load(Ordering::Acquire),
            events: (last_seq + 1).saturating_sub(first_seq),
            disk_bytes: self.quota.file_bytes(),
            live_bytes: self.quota.live_bytes(),
        }
    }

    /// The batch whose seq range holds `seq` (or the last one before it, when
    /// `seq` is past the end or was removed).
    pub(crate) fn batch_holding(
        &self,
        seq: u64,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, SpoolError> {
        Ok(self
            .batches
            .range(..=seq_key(seq))
            .next_back()
            .transpose()?)
    }

    fn publish_gauges(&self) {
        let stats = self.stats();
        metrics::gauge!("auditrail_spool_events").set(stats.events as f64);
        metrics::gauge!("auditrail_spool_bytes").set(stats.disk_bytes as f64);
        metrics::gauge!("auditrail_spool_live_bytes").set(stats.live_bytes as f64);
        metrics::gauge!("auditrail_spool_last_seq").set(stats.last_seq as f64);
    }
}

/// A node's durable spool. Cheap to share behind an `Arc`.
pub struct Spool {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<AppendJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Spool {
    /// Opens (or creates) the spool and recovers its state: the last seq and
    /// hash, how far it is indexed, and the dedup set (from the `ids` tree).
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        let db = sled::Config::new()
            .path(&config.dir)
            .cache_capacity(config.cache_bytes)
            // Larger segments than sled's default 512 KiB: fewer, larger
            // writes for ~MiB batch values (measured: bench/examples/sled_layout.rs).
            .segment_size(SEGMENT_SIZE)
            // Every commit flushes explicitly; sled's own timer would only add
            // flushes at moments nobody waits for (and a thread that holds
            // the spool's lock for a while after the spool is dropped).
            // Index and retention writes are flushed with the next commit, by
            // `gc`, or by `close`; losing them in a crash only means redoing
            // them, since both are derived from the batches.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    SpoolError::Locked(config.dir.clone())
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    SpoolError::Locked(config.dir.clone())
                }
                other => SpoolError::from(other),
            })?;
        let batches = db.open_tree("batches")?;
        let idx = db.open_tree("idx")?;
        let ids = db.open_tree("ids")?;
        let cursors = db.open_tree("cursors")?;
        let dead_letters = db.open_tree("dead_letters")?;
        let meta = db.open_tree("meta")?;
        let dedup = dedup::recover(&batches, &ids)?;
        tracing::debug!(keys = dedup.len(), "dedup set rebuilt");

        let (last_seq, last_hash) = match batches.last()? {
            Some((_, value)) => {
                let view = BatchView::parse(&value)?;
                (view.last_seq(), view.last_hash()?)
            }
            None => retention::removed_tail(&meta)?.unwrap_or((0, GENESIS_HASH)),
        };
        let first_seq = match batches.first()? {
            Some((key, _)) => seq_from_bytes(&key),
            None => last_seq + 1,
        };
        let indexed = idx
            .get(index::WATERMARK_KEY)?
            .map(|v| seq_from_bytes(&v))
            .unwrap_or(0)
            .min(last_seq);
        let quota = DiskQuota::open(&meta, &batches, config.max_disk_bytes, SEGMENT_SIZE as u64)?;

        let shared = Arc::new(Shared {
            db,
            batches,
            idx,
            node: config.node,
            quota,
            retention: config.retention,
            last_seq: AtomicU64::new(last_seq),
            durable_seq: watch::Sender::new(last_seq),
            first_seq: AtomicU64::new(first_seq),
            indexed_seq: AtomicU64::new(indexed),
            ids,
            cursors,
            dead_letters,
            meta,
            dedup: Mutex::new(dedup),
            initial_last_hash: last_hash,
        });
        shared.measure_disk_usage();
        shared.publish_gauges();

        let (job_tx, job_rx) = mpsc::channel();
        let (flush_tx, flush_rx) = mpsc::channel();
        let (index_tx, index_rx) = mpsc::channel();
        let threads = vec![
            spawn("spool-writer", {
                let shared = shared.clone();
                move || writer::run_writer(shared, job_rx, flush_tx, index_tx)
            }),
            spawn("spool-flusher", {
                let shared = shared.clone();
                move || writer::run_flusher(shared, flush_rx)
            }),
            spawn("spool-indexer", {
                let shared = shared.clone();
                move || index::run_indexer(shared, index_rx)
            }),
        ];
        Ok(Spool {
            shared,
            jobs: Mutex::new(Some(job_tx)),
            threads: Mutex::new(threads),
        })
    }

    /// Stores events durably. Resolves once the fsync that covers them has
    /// completed; an `Err` means none of them may be considered stored.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<Appended, SpoolError> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        self.check_quota()?;
        let (reply, answer) = oneshot::channel();
        {
            let jobs = self.jobs.lock().expect("jobs lock");
            let sender = jobs.as_ref().ok_or(SpoolError::Closed)?;
            sender
                .send(AppendJob { events, reply })
                .map_err(|_| SpoolError::Closed)?;
        }
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Whether appends are currently refused for lack of disk quota.
    pub fn over_quota(&self) -> bool {
        self.shared.over_quota()
    }

    /// `Err(QuotaExceeded)` while appends would be refused. Re-measures the
    /// disk first, so space freed by retention is seen at once.
    pub fn check_quota(&self) -> Result<(), SpoolError> {
        if self.shared.over_quota() {
            self.shared.refresh_disk_usage();
            if self.shared.over_quota() {
                return Err(self.shared.quota_error());
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// The node id this spool writes into events.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Finds events; see [`Filter`] for the order and limits.
    pub fn query(&self, filter: &Filter) -> Result<Vec<AuditEvent>, SpoolError> {
        self.query_with_stats(filter).map(|(events, _)| events)
    }

    /// [`Spool::query`], also saying how many stored events it examined.
    pub fn query_with_stats(
        &self,
        filter: &Filter,
    ) -> Result<(Vec<AuditEvent>, QueryStats), SpoolError> {
        let (events, stats) = query::run(&self.shared, filter)?;
        metrics::histogram!("auditrail_query_examined_events").record(stats.events_examined as f64);
        Ok((events, stats))
    }

    /// Registers a sink's cursor, at the start of the retained events for a
    /// new sink; returns the cursor. From now on retention keeps every event
    /// the sink has not acknowledged.
    pub fn register_sink(&self, sink: &str) -> Result<u64, SpoolError> {
        cursors::register(&self.shared, sink)
    }

    /// Forgets a sink's cursor (the sink was removed from the config), so
    /// that retention no longer waits for it.
    pub fn unregister_sink(&self, sink: &str) -> Result<(), SpoolError> {
        self.shared.cursors.remove(sink.as_bytes())?;
        Ok(())
    }

    /// Every registered sink with its cursor.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.shared.cursors.iter() {
            let (name, value) = item?;
            out.push((
                String::from_utf8_lossy(&name).into_owned(),
                seq_from_bytes(&value),
            ));
        }
        Ok(out)
    }

    /// Moves a sink's cursor to `seq` once the sink has confirmed every event
    /// up to it. Never moves a cursor back; returns the cursor. The move is
    /// durable with the next commit or [`Spool::flush`].
    pub fn ack(&self, sink: &str, seq: u64) -> Result<u64, SpoolError> {
        cursors::ack(&self.shared, sink, seq)
    }

    /// Makes cursor moves (and everything else written so far) durable now.
    /// Sinks call it about once a second, so that a crash while ingest is
    /// quiet redelivers at most that much.
    pub fn flush(&self) -> Result<(), SpoolError> {
        self.shared.db.flush()?;
        Ok(())
    }

    /// Up to `limit` durable events after `after_seq`, in seq order: what a
    /// sink reads from its cursor. Events inserted but not yet fsync'd are
    /// left out, so a sink never holds an event a crash could still undo.
    pub fn read(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditEvent>, SpoolError> {
        let durable = self.durable_seq();
        if after_seq >= durable {
            return Ok(Vec::new());
        }
        let limit = limit.min(usize::try_from(durable - after_seq).unwrap_or(usize::MAX));
        let (mut events, _) = query::run(
            &self.shared,
            &Filter {
                after_seq: Some(after_seq),
                limit,
                ..Filter::default()
            },
        )?;
        events.retain(|e| e.seq <= durable);
        Ok(events)
    }

    /// The highest seq whose fsync has completed.
    pub fn durable_seq(&self) -> u64 {
        *self.shared.durable_seq.borrow()
    }

    /// Watches [`Spool::durable_seq`]: wakes a sink when there is more to read.
    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.shared.durable_seq.subscribe()
    }

    /// Records that `sink` permanently rejected `event`, keeping a copy of
    /// the event so that retention cannot take it before a replay. Flushed
    /// before it returns: the sink's cursor may move past the event next.
    pub fn dead_letter(
        &self,
        sink: &str,
        event: &AuditEvent,
        reason: &str,
        now_unix_nano: u64,
    ) -> Result<(), SpoolError> {
        dead_letter::put(&self.shared, sink, event, reason, now_unix_nano)?;
        self.shared.db.flush()?;
        Ok(())
    }

    /// Dead letters, of one sink or of all, in (sink, seq) order.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        dead_letter::list(&self.shared, sink)
    }

    /// How many dead letters `sink` has.
    pub fn dead_letter_count(&self, sink: &str) -> usize {
        dead_letter::count(&self.shared, sink)
    }

    /// Marks dead letters (of one sink or of all) for replay; their sinks
    /// pick them up. Returns how many were marked.
    pub fn request_replay(&self, sink: Option<&str>) -> Result<usize, SpoolError> {
        let marked = dead_letter::mark_for_replay(&self.shared, sink)?;
        self.shared.db.flush()?;
        Ok(marked)
    }

    /// Removes a dead letter once its sink has taken the event after all.
    /// A dead letter that was rejected again since (and so is no longer
    /// marked for replay) is kept.
    pub fn resolve_dead_letter(&self, sink: &str, seq: u64) -> Result<bool, SpoolError> {
        dead_letter::resolve(&self.shared, sink, seq)
    }

    /// Re-walks the hash chain of everything retained. The first retained
    /// event's `prev_hash` is taken as given: retention removed what it links to.
    pub fn verify(&self) -> Result<VerifyReport, SpoolError> {
        verify::verify(&self.shared)
    }

    /// Removes events past retention. Safe to call while appends run.
    pub fn gc(&self, now_unix_nano: u64) -> Result<GcStats, SpoolError> {
        let stats = retention::gc(&self.shared, now_unix_nano)?;
        self.shared.measure_disk_usage();
        self.shared.publish_gauges();
        Ok(stats)
    }

    /// Stops the writer, flusher and indexer after the work already queued,
    /// and flushes. Appends after this return [`SpoolError::Closed`].
    pub fn close(&self) -> Result<(), SpoolError> {
        self.jobs.lock().expect("jobs lock").take();
        for handle in self.threads.lock().expect("threads lock").drain(..) {
            let _ = handle.join();
        }
        self.shared.db.flush()?;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning a spool thread")
}
