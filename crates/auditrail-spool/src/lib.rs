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
mod check;
mod cursors;
mod dead_letter;
mod dedup;
mod durable;
mod failstop;
mod identity;
mod index;
mod opening;
mod query;
mod quota;
mod read_only;
mod retention;
mod verify;
mod watermark;
mod writer;

use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use auditrail_model::{AuditEvent, Hash, GENESIS_HASH};
use tokio::sync::{mpsc, oneshot, watch};

pub use check::{scan_files, FileScan, Finding};
pub use dead_letter::DeadLetter;
pub use failstop::FailedOp;
pub use identity::SpoolIdentity;
pub use query::{Filter, QueryStats};
pub use read_only::{check_is_spool, ReadOnlySpool};
pub use retention::GcStats;
pub use verify::{ChainStart, Problem, ProblemKind, VerifyReport};

use batch::BatchView;
use dedup::DedupSet;
use durable::SyncBarrier;
use failstop::{lock, FailStop};
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
    #[error("no spool at {0}: the directory does not exist")]
    NotFound(PathBuf),
    #[error("{0} is not a spool: it has no sled `db` file")]
    NotASpool(PathBuf),
    #[error("spool storage error: {0}")]
    Storage(String),
    #[error("spool data is corrupt: {0}")]
    Corrupt(String),
    #[error("spool file {path} is damaged: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    #[error("spool stopped after a failed {op}: {cause}; it refuses appends until auditrail is restarted (check the disk and the logs first)")]
    Failed { op: FailedOp, cause: String },
    #[error("spool is shutting down")]
    Closed,
    #[error("sink {0:?} is not registered")]
    UnknownSink(String),
    #[error("sink {sink:?} acknowledged seq {seq}, past the last stored seq {last}")]
    AckBeyondEnd { sink: String, seq: u64, last: u64 },
    #[error("the spool already has an identity: its first seq is decided")]
    AlreadyStarted,
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

/// What [`Spool::forget_sink`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgottenSink {
    /// The sink's cursor, if it had one.
    pub cursor: Option<u64>,
    /// How many dead letters it had.
    pub dead_letters: usize,
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
    /// Makes what sled wrote durable (see `durable.rs`).
    barrier: Mutex<SyncBarrier>,
    /// Set once a sync fails or a spool thread panics (see `failstop.rs`).
    pub(crate) failure: FailStop,
    /// Unset while the spool is new and pending (see `identity.rs`).
    identity: OnceLock<SpoolIdentity>,
    /// Serializes [`Spool::start_new`] against an append's implicit start.
    identity_init: Mutex<()>,
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
    /// Dropped by hand in `Drop`, where a panic in sled's own drop (its
    /// final `sync_all().unwrap()`) is caught.
    shared: ManuallyDrop<Arc<Shared>>,
    jobs: Mutex<Option<mpsc::Sender<AppendJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Appends waiting for the writer; `append` waits for room beyond this.
const JOB_QUEUE: usize = 256;
/// Group commits written but not yet synced; the writer waits beyond this.
const FLUSH_QUEUE: usize = 16;
/// Index digests waiting; beyond this the indexer reads batches from sled.
const INDEX_QUEUE: usize = 256;

impl Spool {
    /// Opens (or creates) the spool and recovers its state: the last seq and
    /// hash, how far it is indexed, and the dedup set (from the `ids` tree).
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        let created = durable::missing_dirs(&config.dir);
        let sled_config = sled::Config::new()
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
            // Durability comes from the barrier after each flush, not
            // from this timer: sled's flush alone is not an fsync.
            .flush_every_ms(None);
        let seen = opening::Inspection::of(&config.dir);
        let db = opening::open_sled(sled_config, &seen)?;
        // Before anything is read or written: the spool's files (and the
        // directories created for it) are synced once, then watched.
        let mut barrier = SyncBarrier::open(&config.dir, &created).map_err(|e| {
            SpoolError::Storage(format!(
                "cannot make spool {} durable: {e}",
                config.dir.display()
            ))
        })?;
        let batches = db.open_tree("batches")?;
        let idx = db.open_tree("idx")?;
        let ids = db.open_tree("ids")?;
        let cursors = db.open_tree("cursors")?;
        let dead_letters = db.open_tree("dead_letters")?;
        let meta = db.open_tree("meta")?;
        let dedup = dedup::recover(&batches, &ids)?;
        tracing::debug!(keys = dedup.len(), "dedup set rebuilt");

        let removed_tail = retention::removed_tail(&meta)?;
        let has_contents = !batches.is_empty()
            || removed_tail.is_some()
            || !cursors.is_empty()
            || !dead_letters.is_empty();
        let identity = identity::recover(&meta, has_contents, std::time::SystemTime::now())?;
        if identity.as_ref().is_some_and(|i| i.adopted) {
            // Through the barrier like every other flush: sled's flush alone
            // is not an fsync. (0: the watermark only ever moves forward.)
            db.flush()?;
            barrier.sync(0).map_err(|e| {
                SpoolError::Storage(format!(
                    "cannot make spool {}'s identity durable: {e}",
                    config.dir.display()
                ))
            })?;
        }
        let (last_seq, last_hash) = match batches.last()? {
            Some((_, value)) => {
                let view = BatchView::parse(&value)?;
                (view.last_seq(), view.last_hash()?)
            }
            // Nothing stored (or all of it past retention): continue after
            // the removed tail, or start where the identity says.
            None => removed_tail.unwrap_or((
                identity.as_ref().map_or(0, SpoolIdentity::floor),
                GENESIS_HASH,
            )),
        };
        let first_seq = match batches.first()? {
            Some((key, _)) => seq_from_bytes(&key),
            None => last_seq + 1,
        };
        opening::check_recovered(&seen, barrier.previous_watermark(), last_seq)?;
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
            barrier: Mutex::new(barrier),
            failure: FailStop::default(),
            identity: identity.map(OnceLock::from).unwrap_or_default(),
            identity_init: Mutex::new(()),
        });
        shared.quota.measure(&shared.db);
        shared.publish_gauges();

        let (job_tx, job_rx) = mpsc::channel(JOB_QUEUE);
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel(FLUSH_QUEUE);
        let (index_tx, index_rx) = std::sync::mpsc::sync_channel(INDEX_QUEUE);
        let threads = vec![
            spawn("spool-writer", &shared, {
                let shared = shared.clone();
                move || writer::run_writer(shared, job_rx, flush_tx, index_tx)
            }),
            spawn("spool-flusher", &shared, {
                let shared = shared.clone();
                move || writer::run_flusher(shared, flush_rx)
            }),
            spawn("spool-indexer", &shared, {
                let shared = shared.clone();
                move || index::run_indexer(shared, index_rx)
            }),
        ];
        Ok(Spool {
            shared: ManuallyDrop::new(shared),
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
        self.shared.failure.check()?;
        self.check_quota()?;
        if self.shared.identity.get().is_none() {
            // Nobody asked the sinks: a pending spool starts at seq 1.
            self.start_new(0).or_else(|e| match e {
                SpoolError::AlreadyStarted => Ok(()),
                e => Err(e),
            })?;
        }
        let (reply, answer) = oneshot::channel();
        let sender = lock(&self.jobs).clone().ok_or(SpoolError::Closed)?;
        // Waits while the writer's queue is full: backpressure, not memory.
        // The writer only goes away with every sender, so a failed send or
        // an unanswered reply means a spool thread died.
        if sender
            .send(AppendJob {
                events,
                reply: writer::Reply::new(reply),
            })
            .await
            .is_err()
        {
            return Err(self.thread_died());
        }
        drop(sender);
        answer.await.map_err(|_| self.thread_died())?
    }

    fn thread_died(&self) -> SpoolError {
        self.shared.failure.error().unwrap_or(SpoolError::Failed {
            op: FailedOp::Panic {
                thread: "spool-writer".into(),
            },
            cause: "the writer thread stopped".into(),
        })
    }

    /// `Err` when appends are refused: the spool stopped after a failure
    /// (until a restart), or the disk quota is reached. What `/readyz` asks.
    pub fn check_accepting(&self) -> Result<(), SpoolError> {
        self.shared.failure.check()?;
        self.check_quota()
    }

    /// Whether appends are currently refused for lack of disk quota.
    pub fn over_quota(&self) -> bool {
        self.shared.quota.over()
    }

    /// `Err(QuotaExceeded)` while appends would be refused. Re-measures the
    /// disk first, so space freed by retention is seen at once.
    pub fn check_quota(&self) -> Result<(), SpoolError> {
        if self.shared.quota.over() {
            self.shared.quota.refresh(&self.shared.db);
            if self.shared.quota.over() {
                return Err(self.shared.quota.error());
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// Who this spool is; `None` while it is new and pending: nothing
    /// stored yet and its first seq not decided (see [`Spool::start_new`]).
    pub fn identity(&self) -> Option<&SpoolIdentity> {
        self.shared.identity.get()
    }

    /// Decides a new spool's first seq: `after_seq + 1`, where `after_seq`
    /// is the highest seq of this node that any sink already holds (0 for
    /// none), so that a wiped or recreated spool never reuses a seq a sink
    /// would discard as a duplicate. The identity is flushed before this
    /// returns. [`SpoolError::AlreadyStarted`] once the spool has one.
    pub fn start_new(&self, after_seq: u64) -> Result<(), SpoolError> {
        let _init = self.shared.identity_init.lock().expect("identity lock");
        if self.shared.identity.get().is_some() {
            return Err(SpoolError::AlreadyStarted);
        }
        let first_seq = after_seq
            .checked_add(1)
            .ok_or_else(|| SpoolError::Corrupt(format!("no seq after {after_seq}")))?;
        let identity = SpoolIdentity::new(first_seq, false, std::time::SystemTime::now());
        identity::store(&self.shared.meta, &identity)?;
        self.shared.sync()?;
        // Nothing is stored and no append ran (they wait for the identity),
        // so the counters can move from 0 to the new floor.
        let shared = &self.shared;
        shared.last_seq.store(after_seq, Ordering::Release);
        shared.first_seq.store(first_seq, Ordering::Release);
        shared.indexed_seq.store(after_seq, Ordering::Release);
        shared.durable_seq.send_replace(after_seq);
        tracing::info!(spool_id = %identity.spool_id, first_seq, "new spool: its seqs start at {first_seq}, after what the sinks already hold, with a new hash chain");
        let _ = shared.identity.set(identity);
        shared.publish_gauges();
        Ok(())
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

    /// Forgets a sink for good (`auditrail sink forget`): removes its cursor,
    /// so retention no longer waits for it, and its dead letters. Flushed
    /// before it returns. Says what there was; both empty for a sink the
    /// spool never knew.
    pub fn forget_sink(&self, sink: &str) -> Result<ForgottenSink, SpoolError> {
        let cursor = self
            .shared
            .cursors
            .remove(sink.as_bytes())?
            .map(|v| seq_from_bytes(&v));
        let dead_letters = dead_letter::remove_all(&self.shared, sink)?;
        self.shared.sync()?;
        Ok(ForgottenSink {
            cursor,
            dead_letters,
        })
    }

    /// The names of every sink that has dead letters, in order.
    pub fn dead_letter_sinks(&self) -> Result<Vec<String>, SpoolError> {
        dead_letter::sinks(&self.shared)
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
        self.shared.sync()
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
        self.shared.sync()
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
        self.shared.sync()?;
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

    /// The content pass of `auditrail spool check`: whether the trees agree
    /// with each other (see `check.rs`). [`Spool::verify`] checks the chain.
    pub fn check_trees(&self) -> Result<Vec<Finding>, SpoolError> {
        check::check_trees(&self.shared)
    }

    /// Removes events past retention. Safe to call while appends run.
    pub fn gc(&self, now_unix_nano: u64) -> Result<GcStats, SpoolError> {
        let stats = retention::gc(&self.shared, now_unix_nano)?;
        self.shared.quota.measure(&self.shared.db);
        self.shared.publish_gauges();
        Ok(stats)
    }

    /// Stops the writer, flusher and indexer after the work already queued,
    /// and flushes. Appends after this return [`SpoolError::Closed`].
    pub fn close(&self) -> Result<(), SpoolError> {
        lock(&self.jobs).take();
        for handle in lock(&self.threads).drain(..) {
            // A panic was caught inside the thread (see `spawn`).
            let _ = handle.join();
        }
        self.shared.sync()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the spool");
        }
        // SAFETY: `shared` is taken once, here, and never used after.
        let shared = unsafe { ManuallyDrop::take(&mut self.shared) };
        // The threads are joined, so this is normally the last reference and
        // drops sled, whose log calls `sync_all().unwrap()` on drop.
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(shared)));
        if let Err(panic) = dropped {
            tracing::error!(
                panic = %failstop::panic_message(&*panic),
                "sled failed its final sync while closing the spool"
            );
        }
    }
}

/// Starts a spool thread. A panic in it stops the spool (see `failstop.rs`)
/// instead of leaving appends waiting on a thread that is gone.
fn spawn(name: &str, shared: &Arc<Shared>, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let shared = Arc::downgrade(shared);
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let message = failstop::panic_message(&*panic);
                match shared.upgrade() {
                    Some(shared) => {
                        shared.failure.fail(FailedOp::Panic { thread }, message);
                    }
                    None => tracing::error!(thread, panic = %message, "spool thread panicked"),
                }
            }
        })
        .expect("spawning a spool thread")
}
