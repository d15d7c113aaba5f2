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
mod fulltext;
mod identity;
mod index;
mod opened;
mod opening;
mod query;
mod quota;
mod read_only;
mod recovery;
mod retention;
mod tree;
mod verify;
mod watermark;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use auditrail_model::{AuditEvent, Hash};
use tokio::sync::watch;

pub use batch::raw as raw_batch;
pub use check::{scan_files, FileScan, Finding};
pub use dead_letter::DeadLetter;
pub use failstop::{FailedOp, Recovery};
pub use identity::SpoolIdentity;
pub use query::{Budget, Filter, QueryEnd, QueryStats, Stop};
pub use read_only::{check_is_spool, ReadOnlySpool};
pub use retention::GcStats;
pub use tree::{Signing, StoredCheckpoint};
pub use verify::{ChainStart, CheckpointSummary, Problem, ProblemKind, VerifyReport};

use dedup::DedupSet;
use durable::SyncBarrier;
use failstop::FailStop;
use opened::Opened;
use quota::DiskQuota;
use recovery::Core;

/// How a spool is opened.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// This node's id, written into every event it stores.
    pub node: String,
    /// Appends are refused once the stored events take this many bytes, or
    /// sled's files twice as much plus 64 MiB (see `quota.rs`).
    pub max_disk_bytes: u64,
    /// Events received longer ago than this are removed by [`Spool::gc`].
    pub retention: Duration,
    /// sled's page cache size.
    pub cache_bytes: u64,
    /// Signs checkpoints of the Merkle tree; `None`: the tree is kept, but
    /// nothing is signed.
    pub signing: Option<Signing>,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            node: node.into(),
            max_disk_bytes: 20 << 30,
            retention: Duration::from_secs(7 * 24 * 3600),
            cache_bytes: 256 << 20,
            signing: None,
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
    #[error("no space left for the spool: {0}")]
    NoSpace(String),
    #[error("spool stopped after a failed {op}: {cause}; {recovery}")]
    Failed {
        op: FailedOp,
        cause: String,
        recovery: Recovery,
    },
    #[error("spool is shutting down")]
    Closed,
    #[error("sink {0:?} is not registered")]
    UnknownSink(String),
    #[error("sink {sink:?} acknowledged seq {seq}, past the last stored seq {last}")]
    AckBeyondEnd { sink: String, seq: u64, last: u64 },
    #[error("the spool already has an identity: its first seq is decided")]
    AlreadyStarted,
    /// A newest-N query examined [`Budget::max_examined`] events without
    /// being able to finish.
    #[error(
        "the query examined {examined} stored events, its whole scan budget, without finishing"
    )]
    ScanBudgetExceeded { examined: u64 },
    /// A query was still running at [`Budget::deadline`].
    #[error("the query ran out of time after examining {examined} stored events")]
    QueryTimedOut { examined: u64 },
    /// A query was stopped through [`Budget::cancel`].
    #[error("the query was cancelled")]
    QueryCancelled,
    /// No signed checkpoint of that tree size (`None`: none at all yet).
    #[error("{}", match .size {
        Some(size) => format!("no signed checkpoint of tree size {size}"),
        None => "no signed checkpoint yet: is [integrity] configured with a key, and has the first period passed?".to_owned(),
    })]
    NoCheckpoint { size: Option<u64> },
    /// The checkpoint does not cover the event.
    #[error("seq {seq} is not covered by the checkpoint of tree size {size} (it covers seqs {first_seq}..{}); wait for the next checkpoint", first_seq + size)]
    NotCovered { seq: u64, size: u64, first_seq: u64 },
    /// The tree nodes a consistency proof from `size` needs went with the
    /// events retention removed.
    #[error("the tree nodes needed to prove from tree size {size} were removed by retention with its events; prove from a newer checkpoint")]
    ProofPastRetention { size: u64 },
    /// The event was removed by retention (or never stored).
    #[error("seq {0} is not in the spool (removed by retention, or never stored)")]
    NotRetained(u64),
}

impl SpoolError {
    /// Whether this clears by itself once the disk has space again.
    pub fn clears_with_space(&self) -> bool {
        failstop::Recovery::of_error(self) == Recovery::WhenSpaceFrees
    }
}

impl From<sled::Error> for SpoolError {
    fn from(e: sled::Error) -> Self {
        match Recovery::of_sled(&e) {
            Recovery::WhenSpaceFrees => SpoolError::NoSpace(e.to_string()),
            Recovery::Restart => SpoolError::Storage(e.to_string()),
        }
    }
}

/// The prefix of ids that auditrail derives for its own events (see
/// [`Spool::record`]).
pub const INTERNAL_ID_PREFIX: &str = "auditrail-";

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
    /// Every event up to this seq is in the full-text index (see docs/spool.md, Indexes).
    pub fulltext_seq: u64,
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
    /// so no sink ever holds an event the spool could still lose. One for
    /// the spool's lifetime, shared by every opening.
    pub(crate) durable_seq: Arc<watch::Sender<u64>>,
    /// Lowest seq still retained (`last_seq + 1` when empty).
    pub(crate) first_seq: AtomicU64,
    pub(crate) indexed_seq: AtomicU64,
    pub(crate) ids: sled::Tree,
    pub(crate) cursors: sled::Tree,
    pub(crate) dead_letters: sled::Tree,
    /// Small facts that outlive the batches (see `retention.rs`).
    pub(crate) meta: sled::Tree,
    /// The Merkle tree's tiles and state (see `tree.rs`).
    pub(crate) merkle: sled::Tree,
    /// Signed checkpoints by tree size (see `tree.rs`).
    pub(crate) checkpoints: sled::Tree,
    /// Per sink, the tree size of the newest checkpoint it stored.
    pub(crate) checkpoint_cursors: sled::Tree,
    /// The newest checkpoint known durable: readers see none after it.
    pub(crate) checkpoints_durable: AtomicU64,
    /// What each completed sync covered (see `durable.rs`).
    pub(crate) syncs: durable::SyncTickets,
    /// The tree's builder, once the spool has started.
    pub(crate) tree: Mutex<Option<tree::Builder>>,
    /// The seq the tree takes next: retention keeps every event from it on.
    pub(crate) tree_end: AtomicU64,
    pub(crate) dedup: Mutex<DedupSet>,
    /// The event-level index (see `fulltext.rs`); `None` when it could not
    /// be opened, and queries narrow by the sled indexes alone.
    pub(crate) fulltext: Option<Arc<fulltext::FullText>>,
    initial_last_hash: Hash,
    /// Makes what sled wrote durable (see `durable.rs`).
    barrier: Mutex<SyncBarrier>,
    /// Set once a sync fails or a spool thread panics (see `failstop.rs`).
    pub(crate) failure: FailStop,
    /// Unset while the spool is new and pending (see `identity.rs`).
    pub(crate) identity: OnceLock<SpoolIdentity>,
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
            fulltext_seq: self.fulltext.as_ref().map_or(0, |f| f.watermark()),
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
///
/// It holds one opening of sled at a time. A failed fsync or write, or a
/// panicked spool thread, stops that opening for writes (see
/// `failstop.rs`). When a full disk caused it, the spool waits until there
/// is space again, then closes the opening and opens the spool afresh, as a
/// restart would (see `recovery.rs`); anything else holds until auditrail
/// restarts. Between two openings calls fail with the error that stopped
/// the first.
pub struct Spool {
    core: Arc<Core>,
    recovery: Mutex<Option<recovery::Watcher>>,
}

impl Spool {
    /// Opens (or creates) the spool and recovers its state: the last seq and
    /// hash, how far it is indexed, and the dedup set (from the `ids` tree).
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        let core = Arc::new(Core::open(config)?);
        let watcher = recovery::Watcher::start(&core);
        Ok(Spool {
            core,
            recovery: Mutex::new(Some(watcher)),
        })
    }

    fn current(&self) -> Result<Arc<Opened>, SpoolError> {
        self.core.current()
    }

    /// Stores events durably. Resolves once the fsync that covers them has
    /// completed; an `Err` means none of them may be considered stored.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<Appended, SpoolError> {
        let opened = self.current()?;
        let appended = opened.append(events).await;
        // Closed under it by a reopen: say why, not "shutting down".
        appended.map_err(|e| match e {
            SpoolError::Closed => self.core.current().err().unwrap_or(SpoolError::Closed),
            e => e,
        })
    }

    /// Stores one event auditrail writes about itself (see
    /// `auditrail_model::internal`): the event as stored (its seq, node and
    /// final id), `Ok(None)` when the spool already held its id (written
    /// before a restart). A failure is counted
    /// (`auditrail_internal_event_failures_total`) and logged here, so that
    /// every caller's "could not record" shows the same way.
    ///
    /// An id the event's writer derived from what it records (`auditrail-`
    /// and a hash, so that a restart writing it again stores it once) is
    /// keyed here with a secret of this spool: a sender who can compute
    /// the derivation cannot claim the id in advance, in its own tenant,
    /// and have the real alert or tombstone dropped as a duplicate.
    pub async fn record(&self, mut event: AuditEvent) -> Result<Option<AuditEvent>, SpoolError> {
        let name = event.event_name.clone();
        let derived = event
            .event_id
            .strip_prefix(INTERNAL_ID_PREFIX)
            .map(str::to_owned);
        let keyed = match derived {
            Some(derived) => self.internal_id_key().map(|key| {
                let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
                sha2::Digest::update(&mut hasher, key.as_bytes());
                sha2::Digest::update(&mut hasher, derived.as_bytes());
                let digest = sha2::Digest::finalize(hasher);
                event.event_id = format!("{INTERNAL_ID_PREFIX}{}", hex::encode(&digest[..16]));
            }),
            None => Ok(()),
        };
        let stored = match keyed {
            Ok(()) => {
                let copy = event.clone();
                self.append(vec![event]).await.map(|appended| {
                    appended.seqs.first().map(|&seq| AuditEvent {
                        seq,
                        node: self.node().to_owned(),
                        ..copy
                    })
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &stored {
            metrics::counter!("auditrail_internal_event_failures_total", "event" => name.clone())
                .increment(1);
            tracing::error!(event = %name, error = %e, "could not record an internal event in the spool");
        }
        stored
    }

    /// This spool's secret for internal event ids, made at its first use.
    fn internal_id_key(&self) -> Result<String, SpoolError> {
        const KEY: &str = "internal_id_key";
        if let Some(key) = self.remembered(KEY)? {
            return Ok(key);
        }
        let key = format!("{:032x}", rand::random::<u128>());
        self.remember(KEY, &key)?;
        Ok(key)
    }

    /// `Err` when appends are refused: the spool stopped after a failure
    /// (until a restart, or until there is space again), or the disk quota
    /// is reached. What `/readyz` asks.
    pub fn check_accepting(&self) -> Result<(), SpoolError> {
        self.current()?.check_accepting()
    }

    /// Whether appends are currently refused for lack of disk quota.
    pub fn over_quota(&self) -> bool {
        self.current().is_ok_and(|o| o.over_quota())
    }

    /// `Err(QuotaExceeded)` while appends would be refused. Re-measures the
    /// disk first, so space freed by retention is seen at once.
    pub fn check_quota(&self) -> Result<(), SpoolError> {
        self.current()?.check_quota()
    }

    /// The spool's counters (as last seen, between two openings).
    pub fn stats(&self) -> SpoolStats {
        self.core.stats()
    }

    /// Who this spool is; `None` while it is new and pending: nothing
    /// stored yet and its first seq not decided (see [`Spool::start_new`]).
    pub fn identity(&self) -> Option<SpoolIdentity> {
        self.core.identity()
    }

    /// Decides a new spool's first seq: `after_seq + 1`, where `after_seq`
    /// is the highest seq of this node that any sink already holds (0 for
    /// none), so that a wiped or recreated spool never reuses a seq a sink
    /// would discard as a duplicate. The identity is flushed before this
    /// returns. [`SpoolError::AlreadyStarted`] once the spool has one.
    pub fn start_new(&self, after_seq: u64) -> Result<(), SpoolError> {
        self.current()?.start_new(after_seq)
    }

    /// The node id this spool writes into events.
    pub fn node(&self) -> &str {
        &self.core.config.node
    }

    /// Finds events; see [`Filter`] for the order and limits. It spends
    /// what it takes: with `limit` 0 it returns every match at once.
    pub fn query(&self, filter: &Filter) -> Result<Vec<AuditEvent>, SpoolError> {
        self.query_with_stats(filter).map(|(events, _)| events)
    }

    /// [`Spool::query`], also saying how many stored events it examined.
    pub fn query_with_stats(
        &self,
        filter: &Filter,
    ) -> Result<(Vec<AuditEvent>, QueryStats), SpoolError> {
        let (events, end) = self.query_within(filter, &Budget::default())?;
        let stats = QueryStats {
            events_examined: end.events_examined,
        };
        Ok((events, stats))
    }

    /// [`Spool::query`] within a budget. A newest-N query (no `after_seq`)
    /// that cannot finish within it fails with
    /// [`SpoolError::ScanBudgetExceeded`], [`SpoolError::QueryTimedOut`] or
    /// [`SpoolError::QueryCancelled`]. One in seq order (`after_seq`)
    /// returns what it found, and its [`QueryEnd`] says where to continue.
    pub fn query_within(
        &self,
        filter: &Filter,
        budget: &Budget,
    ) -> Result<(Vec<AuditEvent>, QueryEnd), SpoolError> {
        self.current()?.query_within(filter, budget)
    }

    /// Every match above `filter.after_seq` (0 when unset), up to
    /// `filter.limit` (0: no limit), in seq order, handed to `each` as it
    /// is found, without collecting them; `each` stops the scan by returning
    /// `Break` (the event it was given then counts as not taken: the
    /// [`QueryEnd`]'s `next_after_seq` is before it). Indexed batches that cannot match are skipped. It stops at
    /// the budget too; the [`QueryEnd`] says why and where to continue.
    pub fn scan(
        &self,
        filter: &Filter,
        budget: &Budget,
        mut each: impl FnMut(AuditEvent) -> std::ops::ControlFlow<()>,
    ) -> Result<QueryEnd, SpoolError> {
        self.current()?.scan(filter, budget, &mut each)
    }

    /// Every signed checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SpoolError> {
        tree::checkpoints(&self.current()?.shared)
    }

    /// The tree size of the newest checkpoint `sink` has stored (0: none).
    pub fn checkpoints_delivered(&self, sink: &str) -> Result<u64, SpoolError> {
        let shared = &self.current()?.shared;
        Ok(shared
            .checkpoint_cursors
            .get(sink.as_bytes())?
            .map_or(0, |v| seq_from_bytes(&v)))
    }

    /// Records that `sink` has stored the checkpoints up to tree size
    /// `size`. Written with the next flush: losing it in a crash only means
    /// sending those checkpoints again, which sinks take idempotently.
    pub fn checkpoints_delivered_to(&self, sink: &str, size: u64) -> Result<(), SpoolError> {
        let shared = &self.current()?.shared;
        shared
            .checkpoint_cursors
            .insert(sink.as_bytes(), &size.to_be_bytes())?;
        Ok(())
    }

    /// An inclusion proof of the event `seq` against the checkpoint of tree
    /// size `at_size` (the newest when `None`), to check offline.
    pub fn prove_inclusion(
        &self,
        seq: u64,
        at_size: Option<u64>,
    ) -> Result<auditrail_integrity::InclusionProof, SpoolError> {
        tree::prove_inclusion(&self.current()?.shared, seq, at_size)
    }

    /// A consistency proof that the checkpoint of `new_size` (the newest
    /// when `None`) extends the one of `old_size`.
    pub fn prove_consistency(
        &self,
        old_size: u64,
        new_size: Option<u64>,
    ) -> Result<auditrail_integrity::ConsistencyProof, SpoolError> {
        tree::prove_consistency(&self.current()?.shared, old_size, new_size)
    }

    /// A value remembered across restarts under `key` (e.g. the hash of
    /// the config the node last started with).
    pub fn remembered(&self, key: &str) -> Result<Option<String>, SpoolError> {
        self.current()?.remembered(key)
    }

    /// Remembers `value` under `key`, durably.
    pub fn remember(&self, key: &str, value: &str) -> Result<(), SpoolError> {
        self.current()?.remember(key, value)
    }

    /// Registers a sink's cursor, at the start of the retained events for a
    /// new sink; returns the cursor. From now on retention keeps every event
    /// the sink has not acknowledged.
    pub fn register_sink(&self, sink: &str) -> Result<u64, SpoolError> {
        self.current()?.register_sink(sink)
    }

    /// Forgets a sink for good (`auditrail sink forget`): removes its cursor,
    /// so retention no longer waits for it, and its dead letters. Flushed
    /// before it returns. Says what there was; both empty for a sink the
    /// spool never knew.
    pub fn forget_sink(&self, sink: &str) -> Result<ForgottenSink, SpoolError> {
        self.current()?.forget_sink(sink)
    }

    /// The names of every sink that has dead letters, in order.
    pub fn dead_letter_sinks(&self) -> Result<Vec<String>, SpoolError> {
        self.current()?.dead_letter_sinks()
    }

    /// Every registered sink with its cursor.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        self.current()?.cursors()
    }

    /// Moves a sink's cursor to `seq` once the sink has confirmed every event
    /// up to it. Never moves a cursor back; returns the cursor. The move is
    /// durable with the next commit or [`Spool::flush`].
    pub fn ack(&self, sink: &str, seq: u64) -> Result<u64, SpoolError> {
        self.current()?.ack(sink, seq)
    }

    /// Makes cursor moves (and everything else written so far) durable now.
    /// Sinks call it about once a second, so that a crash while ingest is
    /// quiet redelivers at most that much.
    pub fn flush(&self) -> Result<(), SpoolError> {
        self.current()?.flush()
    }

    /// Up to `limit` durable events after `after_seq`, in seq order: what a
    /// sink reads from its cursor. Events inserted but not yet fsync'd are
    /// left out, so a sink never holds an event a crash could still undo.
    pub fn read(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditEvent>, SpoolError> {
        self.current()?.read(after_seq, limit)
    }

    /// The highest seq whose fsync has completed.
    pub fn durable_seq(&self) -> u64 {
        *self.core.durable_seq.borrow()
    }

    /// Watches [`Spool::durable_seq`]: wakes a sink when there is more to
    /// read. It outlives reopens, and closes only with the spool.
    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.core.durable_seq.subscribe()
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
        self.current()?
            .dead_letter(sink, event, reason, now_unix_nano)
    }

    /// Dead letters, of one sink or of all, and of one tenant (the event's)
    /// or of all, in (sink, seq) order.
    pub fn dead_letters(
        &self,
        sink: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        self.current()?.dead_letters(sink, tenant)
    }

    /// How many dead letters `sink` has (0 between two openings).
    pub fn dead_letter_count(&self, sink: &str) -> usize {
        self.current().map_or(0, |o| o.dead_letter_count(sink))
    }

    /// Marks dead letters (of one sink or of all) for replay; their sinks
    /// pick them up. Returns how many were marked.
    pub fn request_replay(&self, sink: Option<&str>) -> Result<usize, SpoolError> {
        self.current()?.request_replay(sink)
    }

    /// Removes a dead letter once its sink has taken the event after all.
    /// A dead letter that was rejected again since (and so is no longer
    /// marked for replay) is kept.
    pub fn resolve_dead_letter(&self, sink: &str, seq: u64) -> Result<bool, SpoolError> {
        self.current()?.resolve_dead_letter(sink, seq)
    }

    /// Re-walks the hash chain of everything retained and recomputes the
    /// Merkle tree, checking it against every signed checkpoint (their
    /// signatures too, when `key` is given). The first retained event's
    /// `prev_hash` is taken as given: retention removed what it links to.
    pub fn verify(
        &self,
        key: Option<&auditrail_integrity::VerifierKey>,
    ) -> Result<VerifyReport, SpoolError> {
        self.current()?.verify(key)
    }

    /// The content pass of `auditrail spool check`: whether the trees agree
    /// with each other (see `check.rs`). [`Spool::verify`] checks the chain.
    pub fn check_trees(&self) -> Result<Vec<Finding>, SpoolError> {
        self.current()?.check_trees()
    }

    /// Removes events past retention. Safe to call while appends run.
    pub fn gc(&self, now_unix_nano: u64) -> Result<GcStats, SpoolError> {
        self.current()?.gc(now_unix_nano)
    }

    /// Stops the writer, flusher and indexer after the work already queued,
    /// and flushes. Appends after this return [`SpoolError::Closed`].
    pub fn close(&self) -> Result<(), SpoolError> {
        if let Some(watcher) = failstop::lock(&self.recovery).take() {
            watcher.stop();
        }
        self.core.close()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the spool");
        }
    }
}
