//! One opening of the spool: sled's database, the sync barrier, the
//! recovered state and the writer, flusher and indexer threads.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use auditrail_model::{AuditEvent, GENESIS_HASH};
use tokio::sync::{mpsc, oneshot, watch};

use crate::batch::BatchHeader;
use crate::durable::{self, SyncBarrier};
use crate::failstop::{self, lock, FailStop, FailedOp, Recovery};
use crate::quota::DiskQuota;
use crate::writer::{self, AppendJob};
use crate::{
    check, cursors, dead_letter, dedup, fulltext, identity, index, opening, query, retention,
    seq_from_bytes, tree, verify, Appended, Budget, DeadLetter, Filter, Finding, ForgottenSink,
    GcStats, QueryEnd, Shared, SpoolConfig, SpoolError, SpoolIdentity, SpoolStats, VerifyReport,
    SEGMENT_SIZE,
};

/// One opening of the spool's sled database, with the threads that write
/// it. [`crate::Spool`] holds one at a time and, after a disk-full failure
/// has cleared, closes it and opens the next (see `recovery.rs`).
pub(crate) struct Opened {
    /// Dropped by hand in `Drop`, where a panic in sled's own drop (its
    /// final `sync_all().unwrap()`) is caught.
    pub(crate) shared: ManuallyDrop<Arc<Shared>>,
    jobs: Mutex<Option<mpsc::Sender<AppendJob>>>,
    /// Dropped after the writer and flusher are joined: the tree builder's
    /// cue to sign its last checkpoint and stop.
    tree_stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Dropped first on close: the full-text indexer commits and stops.
    fulltext_stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Appends waiting for the writer; `append` waits for room beyond this.
const JOB_QUEUE: usize = 256;
/// Group commits written but not yet synced; the writer waits beyond this.
const FLUSH_QUEUE: usize = 16;
/// Index digests waiting; beyond this the indexer reads batches from sled.
const INDEX_QUEUE: usize = 256;

impl Opened {
    /// Opens (or creates) the spool and recovers its state: the last seq and
    /// hash, how far it is indexed, and the dedup set (from the `ids` tree).
    pub(crate) fn open(
        config: SpoolConfig,
        durable_seq: Arc<watch::Sender<u64>>,
    ) -> Result<Opened, SpoolError> {
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
        let started = std::time::Instant::now();
        let seen = opening::Inspection::of(&config.dir);
        let db = opening::open_sled(sled_config, &seen)?;
        let sled_opened = started.elapsed();
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
        let merkle = db.open_tree("merkle")?;
        let checkpoints = db.open_tree("checkpoints")?;
        // What this opening recovered, the barrier has just synced.
        let checkpoints_durable = checkpoints.last()?.map_or(0, |(k, _)| seq_from_bytes(&k));
        let checkpoint_cursors = db.open_tree("checkpoint_cursors")?;
        let synced = started.elapsed();
        let dedup = dedup::recover(&batches, &ids)?;
        let dedup_rebuilt = started.elapsed();

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
                let header = BatchHeader::parse(&value)?;
                (header.last_seq(), header.last_hash(&value)?)
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
        // Derived data: without it queries still answer, from the sled indexes.
        let fulltext = match fulltext::FullText::open(
            &config.dir,
            identity.as_ref().map(|i| i.spool_id.as_str()),
            last_seq,
        ) {
            Ok(fulltext) => Some(Arc::new(fulltext)),
            Err(e) => {
                metrics::counter!("auditrail_spool_errors_total", "op" => "fulltext").increment(1);
                tracing::error!(error = %e, "no full-text index: queries narrow by the sled indexes alone");
                None
            }
        };

        let shared = Arc::new(Shared {
            db,
            batches,
            idx,
            node: config.node,
            quota,
            retention: config.retention,
            last_seq: AtomicU64::new(last_seq),
            durable_seq,
            first_seq: AtomicU64::new(first_seq),
            indexed_seq: AtomicU64::new(indexed),
            ids,
            cursors,
            dead_letters,
            meta,
            tree_end: AtomicU64::new(
                tree::TreeState::read(&merkle)?.map_or(first_seq, |t| t.first_seq + t.size),
            ),
            merkle,
            checkpoints,
            checkpoints_durable: AtomicU64::new(checkpoints_durable),
            syncs: Default::default(),
            checkpoint_cursors,
            tree: Mutex::new(None),
            dedup: Mutex::new(dedup),
            fulltext: fulltext.clone(),
            initial_last_hash: last_hash,
            barrier: Mutex::new(barrier),
            failure: FailStop::default(),
            identity: identity.map(OnceLock::from).unwrap_or_default(),
            identity_init: Mutex::new(()),
        });
        shared.quota.measure(&shared.db);
        shared.publish_gauges();
        // Where a restart's time goes (docs/spool.md, Start-up).
        tracing::info!(
            events = (last_seq + 1).saturating_sub(first_seq),
            dedup_keys = shared.dedup.lock().map_or(0, |d| d.len()),
            dedup_bytes = shared.dedup.lock().map_or(0, |d| d.memory_bytes()),
            sled_ms = sled_opened.as_millis() as u64,
            sync_ms = (synced - sled_opened).as_millis() as u64,
            dedup_ms = (dedup_rebuilt - synced).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "spool opened"
        );
        // Sinks read up to here: what this opening recovered has just been
        // synced by the barrier. Never backwards (a reopen recovers at least
        // what was acknowledged: `check_recovered`).
        shared.durable_seq.send_if_modified(|durable| {
            let forward = last_seq > *durable;
            if forward {
                *durable = last_seq;
            }
            forward
        });

        let (job_tx, job_rx) = mpsc::channel(JOB_QUEUE);
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel(FLUSH_QUEUE);
        let (index_tx, index_rx) = std::sync::mpsc::sync_channel(INDEX_QUEUE);
        let (tree_stop, tree_stopped) = std::sync::mpsc::channel();
        let (fulltext_stop, fulltext_stopped) = std::sync::mpsc::channel();
        let mut threads = vec![
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
            // Last: on close it signs a final checkpoint once the writer
            // and flusher, joined before it, have made everything durable.
            spawn("spool-tree", &shared, {
                let shared = shared.clone();
                move || tree::run_builder(shared, config.signing, tree_stopped)
            }),
        ];
        if let Some(fulltext) = fulltext {
            // Before the tree builder, which `close` joins last.
            threads.insert(
                threads.len() - 1,
                spawn("spool-fulltext", &shared, {
                    let shared = shared.clone();
                    move || fulltext::run_indexer(shared, fulltext, fulltext_stopped)
                }),
            );
        }
        Ok(Opened {
            shared: ManuallyDrop::new(shared),
            jobs: Mutex::new(Some(job_tx)),
            tree_stop: Mutex::new(Some(tree_stop)),
            fulltext_stop: Mutex::new(Some(fulltext_stop)),
            threads: Mutex::new(threads),
        })
    }

    /// See [`crate::Spool::append`].
    pub(crate) async fn append(&self, events: Vec<AuditEvent>) -> Result<Appended, SpoolError> {
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

    /// Why this opening stopped taking writes, if it did.
    pub(crate) fn failure(&self) -> Option<SpoolError> {
        self.shared.failure.error()
    }

    fn thread_died(&self) -> SpoolError {
        self.shared.failure.error().unwrap_or(SpoolError::Failed {
            op: FailedOp::Panic {
                thread: "spool-writer".into(),
            },
            cause: "the writer thread stopped".into(),
            recovery: Recovery::Restart,
        })
    }

    /// See [`crate::Spool::check_accepting`].
    pub(crate) fn check_accepting(&self) -> Result<(), SpoolError> {
        self.shared.failure.check()?;
        self.check_quota()
    }

    /// See [`crate::Spool::over_quota`].
    pub(crate) fn over_quota(&self) -> bool {
        self.shared.quota.over()
    }

    /// See [`crate::Spool::check_quota`].
    pub(crate) fn check_quota(&self) -> Result<(), SpoolError> {
        if self.shared.quota.over() {
            self.shared.quota.refresh(&self.shared.db);
            if self.shared.quota.over() {
                return Err(self.shared.quota.error());
            }
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// See [`crate::Spool::identity`].
    pub(crate) fn identity(&self) -> Option<&SpoolIdentity> {
        self.shared.identity.get()
    }

    /// See [`crate::Spool::start_new`].
    pub(crate) fn start_new(&self, after_seq: u64) -> Result<(), SpoolError> {
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

    /// See [`crate::Spool::query_within`].
    pub(crate) fn query_within(
        &self,
        filter: &Filter,
        budget: &Budget,
    ) -> Result<(Vec<AuditEvent>, QueryEnd), SpoolError> {
        query::run(&self.shared, filter, budget)
    }

    /// See [`crate::Spool::scan`].
    pub(crate) fn scan(
        &self,
        filter: &Filter,
        budget: &Budget,
        each: &mut dyn FnMut(AuditEvent) -> std::ops::ControlFlow<()>,
    ) -> Result<QueryEnd, SpoolError> {
        query::scan(&self.shared, filter, budget, each)
    }

    /// See [`crate::Spool::remembered`].
    pub(crate) fn remembered(&self, key: &str) -> Result<Option<String>, SpoolError> {
        let value = self.shared.meta.get(remembered_key(key))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// See [`crate::Spool::remember`].
    pub(crate) fn remember(&self, key: &str, value: &str) -> Result<(), SpoolError> {
        self.shared
            .meta
            .insert(remembered_key(key), value.as_bytes())?;
        self.shared.sync()
    }

    /// See [`crate::Spool::register_sink`].
    pub(crate) fn register_sink(&self, sink: &str) -> Result<u64, SpoolError> {
        cursors::register(&self.shared, sink)
    }

    /// See [`crate::Spool::forget_sink`].
    pub(crate) fn forget_sink(&self, sink: &str) -> Result<ForgottenSink, SpoolError> {
        let cursor = self
            .shared
            .cursors
            .remove(sink.as_bytes())?
            .map(|v| seq_from_bytes(&v));
        let dead_letters = dead_letter::remove_all(&self.shared, sink)?;
        self.shared.checkpoint_cursors.remove(sink.as_bytes())?;
        self.shared.sync()?;
        Ok(ForgottenSink {
            cursor,
            dead_letters,
        })
    }

    /// See [`crate::Spool::dead_letter_sinks`].
    pub(crate) fn dead_letter_sinks(&self) -> Result<Vec<String>, SpoolError> {
        dead_letter::sinks(&self.shared)
    }

    /// See [`crate::Spool::cursors`].
    pub(crate) fn cursors(&self) -> Result<Vec<(String, u64)>, SpoolError> {
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

    /// See [`crate::Spool::ack`].
    pub(crate) fn ack(&self, sink: &str, seq: u64) -> Result<u64, SpoolError> {
        cursors::ack(&self.shared, sink, seq)
    }

    /// See [`crate::Spool::flush`].
    pub(crate) fn flush(&self) -> Result<(), SpoolError> {
        self.shared.sync()
    }

    /// See [`crate::Spool::read`].
    pub(crate) fn read(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditEvent>, SpoolError> {
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
            &Budget::default(),
        )?;
        events.retain(|e| e.seq <= durable);
        Ok(events)
    }

    /// See [`crate::Spool::durable_seq`].
    pub(crate) fn durable_seq(&self) -> u64 {
        *self.shared.durable_seq.borrow()
    }

    /// See [`crate::Spool::dead_letter`].
    pub(crate) fn dead_letter(
        &self,
        sink: &str,
        event: &AuditEvent,
        reason: &str,
        now_unix_nano: u64,
    ) -> Result<(), SpoolError> {
        dead_letter::put(&self.shared, sink, event, reason, now_unix_nano)?;
        self.shared.sync()
    }

    /// See [`crate::Spool::dead_letters`].
    pub(crate) fn dead_letters(
        &self,
        sink: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        dead_letter::list(&self.shared, sink, tenant)
    }

    /// See [`crate::Spool::dead_letter_count`].
    pub(crate) fn dead_letter_count(&self, sink: &str) -> usize {
        dead_letter::count(&self.shared, sink)
    }

    /// See [`crate::Spool::request_replay`].
    pub(crate) fn request_replay(&self, sink: Option<&str>) -> Result<usize, SpoolError> {
        let marked = dead_letter::mark_for_replay(&self.shared, sink)?;
        self.shared.sync()?;
        Ok(marked)
    }

    /// See [`crate::Spool::resolve_dead_letter`].
    pub(crate) fn resolve_dead_letter(&self, sink: &str, seq: u64) -> Result<bool, SpoolError> {
        dead_letter::resolve(&self.shared, sink, seq)
    }

    /// See [`crate::Spool::verify`].
    pub(crate) fn verify(
        &self,
        key: Option<&auditrail_integrity::VerifierKey>,
    ) -> Result<VerifyReport, SpoolError> {
        verify::verify(&self.shared, key)
    }

    /// See [`crate::Spool::check_trees`].
    pub(crate) fn check_trees(&self) -> Result<Vec<Finding>, SpoolError> {
        check::check_trees(&self.shared)
    }

    /// See [`crate::Spool::gc`].
    pub(crate) fn gc(&self, now_unix_nano: u64) -> Result<GcStats, SpoolError> {
        let stats = retention::gc(&self.shared, now_unix_nano)?;
        self.shared.quota.measure(&self.shared.db);
        self.shared.publish_gauges();
        Ok(stats)
    }

    /// See [`crate::Spool::close`].
    pub(crate) fn close(&self) -> Result<(), SpoolError> {
        lock(&self.jobs).take();
        lock(&self.fulltext_stop).take();
        let mut threads: Vec<_> = lock(&self.threads).drain(..).collect();
        let tree = threads.pop();
        for handle in threads {
            // A panic was caught inside the thread (see `spawn`).
            let _ = handle.join();
        }
        lock(&self.tree_stop).take();
        if let Some(handle) = tree {
            let _ = handle.join();
        }
        self.shared.sync()
    }
}

impl Drop for Opened {
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
pub(crate) fn spawn(
    name: &str,
    shared: &Arc<Shared>,
    f: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    let shared = Arc::downgrade(shared);
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let message = failstop::panic_message(&*panic);
                match shared.upgrade() {
                    Some(shared) => {
                        shared
                            .failure
                            .fail(FailedOp::Panic { thread }, message, Recovery::Restart);
                    }
                    None => tracing::error!(thread, panic = %message, "spool thread panicked"),
                }
            }
        })
        .expect("spawning a spool thread")
}

/// The meta key of a remembered value: a prefix no other meta key has.
fn remembered_key(key: &str) -> Vec<u8> {
    [b"remembered/".as_slice(), key.as_bytes()].concat()
}
