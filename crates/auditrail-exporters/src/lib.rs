//! Getting events out of the spool and into the systems where auditors and
//! analysts work.
//!
//! A sink is an [`Exporter`]: it writes a batch and says what went wrong.
//! Everything else about delivery (batching, linger, concurrency, retries
//! with backoff and jitter, splitting a batch to isolate a poison record,
//! dead letters, cursor commits, metrics and health) is written once, in the
//! [`delivery`] loop, which drives every sink the way the OpenTelemetry
//! Collector's exporterhelper drives every exporter.
//!
//! Adding a sink is one module under [`sinks`] and one variant of
//! [`SinkKind`]; each sink is a cargo feature.

pub mod acks;
pub mod config;
pub mod cursor;
pub mod delivery;
pub mod encoding;
mod error;
pub mod fields;
mod health;
#[cfg(any(feature = "webhook", feature = "splunk_hec", feature = "elasticsearch"))]
mod http;
mod partial;
mod removed;
mod retry;
pub mod sinks;
mod spool_check;
#[cfg(any(feature = "nats", feature = "kafka"))]
mod template;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditrail_model::AuditEvent;

pub use acks::{AckId, AckPolicy, Sent};
pub use config::{DeliveryConfig, SinkConfig};
pub use delivery::Pipeline;
pub use error::{ErrorClass, ExportError, RecordOutcome};
pub use health::SinkStatus;
pub use removed::{forget as forget_sink, ForgetError, RemovedSink};
pub use sinks::SinkKind;
pub use spool_check::HeldSeq;

/// One destination for audit events.
///
/// Implementations only talk to their destination; the delivery loop decides
/// when to call them, how often to retry and what to do with a rejection.
#[async_trait]
pub trait Exporter: Send + Sync + 'static {
    /// Checks the destination and creates what is missing (a table, its
    /// partitions). Runs before the first batch, and again after a failure
    /// until it succeeds; also before a batch is sent again after a
    /// [`ErrorClass::Misconfigured`] answer, and the batch waits until it
    /// succeeds. [`ErrorClass::Misconfigured`] here stops `auditrail serve`
    /// at start-up with the message.
    async fn prepare(&self) -> Result<(), ExportError>;

    /// Writes `events` (in seq order) and returns once the destination has
    /// confirmed them. It must be idempotent: the same events may be sent
    /// again after a crash or a retry, and must not be stored twice.
    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError>;

    /// What the delivery loop calls to send a batch. The default is
    /// [`Exporter::export`]: the batch is delivered once it returns. A
    /// destination that confirms only later (see [`acks`]) answers
    /// [`Sent::Awaiting`] with its id for the batch, and then must also
    /// implement [`Exporter::acknowledgements`] and
    /// [`Exporter::acknowledged`].
    async fn send(&self, events: &[AuditEvent]) -> Result<Sent, ExportError> {
        self.export(events).await.map(|()| Sent::Stored)
    }

    /// How to wait for a sink whose [`Exporter::send`] answers
    /// [`Sent::Awaiting`]; `None` (the default) for a sink that never does.
    fn acknowledgements(&self) -> Option<AckPolicy> {
        None
    }

    /// Which of `ids` the destination has acknowledged by now. Called
    /// every [`AckPolicy::poll_interval`] with every id still waited for.
    async fn acknowledged(&self, _ids: &[AckId]) -> Result<Vec<AckId>, ExportError> {
        Err(ExportError::misconfigured(
            "acks",
            "this sink answered with an ack id but cannot be asked about acknowledgements",
        ))
    }

    /// Periodic upkeep such as creating partitions ahead of time; called
    /// every [`Exporter::maintenance_interval`] with the current time.
    async fn maintain(&self, _now: SystemTime) -> Result<(), ExportError> {
        Ok(())
    }

    /// How often [`Exporter::maintain`] runs; `None` for never.
    fn maintenance_interval(&self) -> Option<Duration> {
        None
    }

    /// The highest seq of `node` that the destination already holds, asked
    /// before a new spool assigns its first seq (so a wiped spool does not
    /// reuse seqs this sink would discard as duplicates) and at start-up of
    /// an existing one (a sink ahead of the spool means a restored spool or
    /// a node id used twice). Runs after a successful [`Exporter::prepare`].
    /// The default, for sinks that do not key rows by `(node, seq)`, is
    /// [`HeldSeq::NotTracked`].
    async fn highest_seq(&self, _node: &str) -> Result<HeldSeq, ExportError> {
        Ok(HeldSeq::NotTracked)
    }

    /// Whether the sink stores signed checkpoints beside the events (an
    /// `audit_checkpoints` table, checkpoint lines), so that `auditrail
    /// verify --sink` can check it against them. The default: it cannot.
    fn holds_checkpoints(&self) -> bool {
        false
    }

    /// Stores `checkpoints` (oldest first), idempotently: the same one may
    /// come again. The delivery loop calls it only with checkpoints whose
    /// every event this sink has confirmed, and only when
    /// [`Exporter::holds_checkpoints`].
    async fn export_checkpoints(
        &self,
        _checkpoints: &[SignedCheckpoint],
    ) -> Result<(), ExportError> {
        Ok(())
    }

    /// What `auditrail verify --sink` reads back; `None` (the default) for
    /// a sink whose far side cannot be read back.
    fn read_back(&self) -> Option<&dyn ReadBack> {
        None
    }
}

/// A signed checkpoint, on its way to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The signed note, as the spool stored it.
    pub note: String,
    /// What it states (read without checking the signature: sinks store,
    /// `verify` checks).
    pub checkpoint: auditrail_integrity::Checkpoint,
}

impl SignedCheckpoint {
    /// Reads a stored note; `None` when it cannot be read at all.
    pub fn of_note(note: String) -> Option<SignedCheckpoint> {
        let checkpoint = auditrail_integrity::Checkpoint::parse_unverified(&note).ok()?;
        Some(SignedCheckpoint { note, checkpoint })
    }
}

/// A sink's far side, read back by `auditrail verify --sink`: the events
/// and checkpoints it holds, as it holds them.
#[async_trait]
pub trait ReadBack: Send + Sync {
    /// The nodes whose events it holds.
    async fn nodes(&self) -> Result<Vec<String>, ExportError>;

    /// The events of `node` with seq above `after`, in seq order (rows of
    /// one seq in the order they were stored), at most `limit`; each with
    /// the `hash` and `prev_hash` it was stored with.
    async fn events(
        &self,
        node: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, ExportError>;

    /// The signed notes of `node`'s checkpoints, oldest first (a note
    /// stored twice, byte for byte, once).
    async fn checkpoints(&self, node: &str) -> Result<Vec<String>, ExportError>;

    /// Every record of `node` in the order the store keeps them: what
    /// `auditrail verify --sink` walks. A table keeps no order but its
    /// keys, so it answers [`BySeq`]: pages of [`ReadBack::events`]. A file
    /// keeps its lines in the order they were written, and a line moved is
    /// a line out of place.
    async fn walk<'a>(&'a self, node: &str) -> Result<Box<dyn Walk + 'a>, ExportError>;
}

/// A record as a store keeps it, read back in the store's own order.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// An event, with the `hash` and `prev_hash` it was stored with.
    Event(Box<AuditEvent>),
    /// Something where a record should be that is not one (a line cut off
    /// mid-way, a line that is no longer JSON); `seq` when it can still be
    /// told.
    Unreadable { seq: Option<u64>, detail: String },
}

/// A walk through one node's records; see [`ReadBack::walk`].
#[async_trait]
pub trait Walk: Send {
    /// The next records, in store order; empty at the end.
    async fn next_page(&mut self) -> Result<Vec<Stored>, ExportError>;
}

/// The walk of a table: its rows in seq order, a page of
/// [`BySeq::PAGE`] rows at a time. A page never ends inside one seq's rows
/// (a forged second row of a seq must not fall between two pages), unless
/// one seq has a whole page of rows.
pub struct BySeq<'a> {
    store: &'a dyn ReadBack,
    node: String,
    after: u64,
    done: bool,
}

impl<'a> BySeq<'a> {
    /// Rows read per query.
    pub const PAGE: usize = 5_000;

    pub fn new(store: &'a dyn ReadBack, node: &str) -> Self {
        BySeq {
            store,
            node: node.to_owned(),
            after: 0,
            done: false,
        }
    }
}

#[async_trait]
impl Walk for BySeq<'_> {
    async fn next_page(&mut self) -> Result<Vec<Stored>, ExportError> {
        if self.done {
            return Ok(Vec::new());
        }
        let mut rows = self
            .store
            .events(&self.node, self.after, Self::PAGE)
            .await?;
        let last = rows.last().map_or(self.after, |r| r.seq);
        if rows.len() < Self::PAGE {
            self.done = true;
        } else if rows.first().is_some_and(|r| r.seq != last) {
            // The last seq's rows may go on in the next page: read them
            // all there.
            rows.retain(|r| r.seq != last);
            self.after = last - 1;
        } else {
            self.after = last;
        }
        Ok(rows
            .into_iter()
            .map(|row| Stored::Event(Box::new(row)))
            .collect())
    }
}

/// The node an origin line names (`auditrail/<node>/<spool id>`).
pub fn node_of_origin(origin: &str) -> &str {
    origin.split('/').nth(1).unwrap_or(origin)
}

/// What a sink needs to know about the node it runs in.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The `[[sinks]] name`.
    pub name: String,
    /// The spool's retention, for sinks that expire rows themselves.
    pub retention: Duration,
}
