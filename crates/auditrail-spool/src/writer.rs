//! Group commit: one writer thread and one flusher thread.
//!
//! The writer takes every append that is waiting, assigns seqs, chains and
//! encodes the events into batch values, and inserts them. The flusher takes
//! every batch that is waiting, fsyncs once, and only then answers all of
//! their appends. While one fsync runs the writer prepares the next batch, so
//! concurrent requests share fsyncs and the disk is never idle for CPU work.
//!
//! Every queue between them is bounded: appends wait for room in the
//! writer's queue, the writer waits when the flusher is behind, and index
//! digests that find the indexer's queue full are left for the indexer to
//! read back from sled.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use auditrail_model::AuditEvent;
use tokio::sync::{mpsc, oneshot};

use crate::batch::BatchBuilder;
use crate::dedup::event_key;
use crate::failstop::{lock, FailedOp, Recovery};
use crate::index::IndexDigest;
use crate::{seq_key, Appended, Shared, SpoolError};

/// Most events one group commit takes, so that the first request of a burst
/// does not wait for the encoding of everything queued behind it.
const MAX_EVENTS_PER_COMMIT: usize = 8192;

/// Where an append's answer goes. Dropped unanswered (its thread panicked
/// while holding it), it answers with an error itself, so no append waits
/// on a thread that is gone.
pub(crate) struct Reply(Option<oneshot::Sender<Result<Appended, SpoolError>>>);

impl Reply {
    pub(crate) fn new(sender: oneshot::Sender<Result<Appended, SpoolError>>) -> Self {
        Reply(Some(sender))
    }

    fn send(mut self, result: Result<Appended, SpoolError>) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(result);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            let _ = sender.send(Err(SpoolError::Failed {
                op: FailedOp::Panic { thread },
                cause: "the thread stopped before this append was made durable".into(),
                recovery: Recovery::Restart,
            }));
        }
    }
}

pub(crate) struct AppendJob {
    pub(crate) events: Vec<AuditEvent>,
    pub(crate) reply: Reply,
}

pub(crate) struct FlushJob {
    reply: Reply,
    appended: Appended,
    queued_at: Instant,
}

pub(crate) fn run_writer(
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<AppendJob>,
    flushes: SyncSender<Vec<FlushJob>>,
    index_feed: SyncSender<IndexDigest>,
) {
    let mut last_hash = shared.initial_last_hash;
    while let Some(first) = jobs.blocking_recv() {
        let mut taken = vec![first];
        let mut n = taken[0].events.len();
        while n < MAX_EVENTS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => {
                    n += job.events.len();
                    taken.push(job);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        // A stopped spool writes nothing more, not even a duplicate's
        // acknowledgement (see `failstop.rs`).
        if let Err(refusal) = shared.failure.check().and_then(|()| {
            if shared.quota.over() {
                Err(shared.quota.error())
            } else {
                Ok(())
            }
        }) {
            for job in taken {
                job.reply.send(Err(refusal.clone()));
            }
            continue;
        }
        match write_batch(&shared, &mut last_hash, taken) {
            Ok((done, digests)) => {
                // Blocks while the flusher is FLUSH_QUEUE commits behind;
                // fails only when the flusher is gone, and then the
                // replies answer for themselves as they drop.
                let _ = flushes.send(done);
                for digest in digests {
                    // When the queue is full, the indexer digests the batch
                    // from sled instead.
                    let _ = index_feed.try_send(digest);
                }
            }
            Err((error, taken_back)) => {
                // Fail-stop, like a failed sync: after an I/O error sled
                // refuses every later write, so the spool must say it is
                // stopped instead of answering each append on its own.
                let recovery = Recovery::of_error(&error);
                let error = shared.failure.fail(FailedOp::Write, &error, recovery);
                for reply in taken_back {
                    reply.send(Err(error.clone()));
                }
            }
        }
        metrics::histogram!("auditrail_spool_write_seconds").record(started.elapsed());
    }
}

type Replies = Vec<Reply>;

fn write_batch(
    shared: &Shared,
    last_hash: &mut auditrail_model::Hash,
    taken: Vec<AppendJob>,
) -> Result<(Vec<FlushJob>, Vec<IndexDigest>), (SpoolError, Replies)> {
    let first_seq = shared.last_seq.load(Ordering::Acquire) + 1;
    let expected_bytes = taken
        .iter()
        .flat_map(|job| &job.events)
        .map(encoded_size_hint)
        .sum();
    let mut values = BatchValues::new(first_seq, *last_hash, expected_bytes);
    let mut dedup = lock(&shared.dedup);
    let queued_at = Instant::now();
    let mut replies: Replies = Vec::with_capacity(taken.len());
    let mut done = Vec::with_capacity(taken.len());
    let mut new_keys = Vec::new();
    for job in taken {
        let mut appended = Appended::default();
        for event in job.events {
            let key = event_key(&event);
            if !dedup.insert(key) {
                appended.duplicates += 1;
                continue;
            }
            new_keys.push(key);
            appended.seqs.push(values.push(&shared.node, event, key));
            appended.stored += 1;
        }
        replies.push(job.reply);
        done.push(appended);
    }
    let (next_seq, hash, written) = values.write(shared);
    let digests = match written {
        Ok(digests) => digests,
        Err(e) => {
            for key in new_keys {
                dedup.remove(key);
            }
            return Err((e, replies));
        }
    };
    drop(dedup);
    *last_hash = hash;
    shared.last_seq.store(next_seq - 1, Ordering::Release);
    let flush_jobs = replies
        .into_iter()
        .zip(done)
        .map(|(reply, appended)| FlushJob {
            reply,
            appended,
            queued_at,
        })
        .collect();
    Ok((flush_jobs, digests))
}

/// A group commit is cut into batch values of about this size. sled writes
/// values over a quarter of its segment size (2 MiB here) as blob files of
/// their own and rewrites whole leaves (up to 16 values) when it
/// consolidates them. Measured with 8 clients x 512 events of ~1 KiB (20 s,
/// scripts/bench): 128 KiB values gave ~56k events/s, 512 KiB ~84k, 1.5 MiB
/// ~90k, 4 MiB ~98k; the cut also bounds one value when many requests wait.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Roughly what an event's record takes in a batch value, to size buffers
/// so they need not grow (and copy themselves) while events are added.
fn encoded_size_hint(event: &AuditEvent) -> usize {
    256 + event.body.len() + event.attributes.len() + event.resource_attributes.len()
}

/// The batch values (and dedup-key runs) one group commit writes.
struct BatchValues {
    next_seq: u64,
    prev: auditrail_model::Hash,
    current: BatchBuilder,
    /// Estimated bytes of the events not pushed yet.
    expected_bytes: usize,
    run: Vec<u8>,
    digest: IndexDigest,
    finished: Vec<(Vec<u8>, Vec<u8>, IndexDigest)>,
}

impl BatchValues {
    /// `expected_bytes`: about how much all of the commit's events encode to.
    fn new(first_seq: u64, prev: auditrail_model::Hash, expected_bytes: usize) -> Self {
        BatchValues {
            next_seq: first_seq,
            prev,
            current: BatchBuilder::new(first_seq, prev, expected_bytes.min(MAX_BATCH_BYTES)),
            expected_bytes,
            run: Vec::new(),
            digest: IndexDigest::new(first_seq),
            finished: Vec::new(),
        }
    }

    /// Chains and encodes one event; returns its seq.
    fn push(&mut self, node: &str, mut event: AuditEvent, dedup_key: u128) -> u64 {
        let seq = self.next_seq;
        event.node.clear();
        event.node.push_str(node);
        event.seq = seq;
        event.prev_hash = self.prev;
        self.expected_bytes = self
            .expected_bytes
            .saturating_sub(encoded_size_hint(&event));
        self.prev = self.current.push(&event);
        self.digest.add(&event);
        self.run.extend_from_slice(&dedup_key.to_be_bytes());
        self.next_seq += 1;
        if self.current.byte_len() >= MAX_BATCH_BYTES {
            self.cut();
        }
        seq
    }

    fn cut(&mut self) {
        if self.current.len() == 0 {
            return;
        }
        let full = std::mem::replace(
            &mut self.current,
            BatchBuilder::new(
                self.next_seq,
                self.prev,
                self.expected_bytes.min(MAX_BATCH_BYTES),
            ),
        );
        let digest = std::mem::replace(&mut self.digest, IndexDigest::new(self.next_seq));
        self.finished
            .push((full.finish(), std::mem::take(&mut self.run), digest));
    }

    /// Inserts every value; returns the next free seq, the last hash and
    /// the index digests of what was inserted. On failure nothing of this
    /// commit stays.
    fn write(
        mut self,
        shared: &Shared,
    ) -> (
        u64,
        auditrail_model::Hash,
        Result<Vec<IndexDigest>, SpoolError>,
    ) {
        self.cut();
        let mut inserted = Vec::new();
        let mut digests = Vec::with_capacity(self.finished.len());
        let mut bytes = 0;
        for (value, run, digest) in self.finished {
            let first = digest.first_seq;
            bytes +=
                crate::quota::batch_bytes(crate::batch::uncompressed_len(&value), run.len() / 16);
            // Both inserts are covered by the flush that follows; if a crash
            // keeps the batch but loses its run, recovery recomputes the run.
            let written = shared
                .batches
                .insert(seq_key(first), value)
                .and_then(|_| shared.ids.insert(seq_key(first), run));
            inserted.push(first);
            if let Err(e) = written {
                return (
                    self.next_seq,
                    self.prev,
                    Err(undo(shared, inserted, e.into())),
                );
            }
            digests.push(digest);
        }
        // Counted once the commit's batches are in: see `quota.rs`.
        let last = inserted.last().copied().unwrap_or_default();
        if let Err(e) = shared.quota.inserted(&shared.meta, last, bytes) {
            return (self.next_seq, self.prev, Err(undo(shared, inserted, e)));
        }
        (self.next_seq, self.prev, Ok(digests))
    }
}

/// Removes a failed commit's batches again, so that nothing of it stays.
fn undo(shared: &Shared, inserted: Vec<u64>, error: SpoolError) -> SpoolError {
    for first in inserted {
        let _ = shared.batches.remove(seq_key(first));
        let _ = shared.ids.remove(seq_key(first));
    }
    error
}

pub(crate) fn run_flusher(shared: Arc<Shared>, jobs: Receiver<Vec<FlushJob>>) {
    while let Ok(mut waiting) = jobs.recv() {
        while let Ok(more) = jobs.try_recv() {
            waiting.extend(more);
        }
        let started = Instant::now();
        let flushed = shared.sync();
        metrics::histogram!("auditrail_spool_fsync_seconds").record(started.elapsed());
        shared.quota.refresh(&shared.db);
        match flushed {
            Ok(_) => {
                let mut stored = 0;
                let mut duplicates = 0;
                // Every job here was inserted before it was queued for this
                // flush, so the flush covers the highest seq among them.
                let covered = waiting
                    .iter()
                    .filter_map(|job| job.appended.seqs.last().copied())
                    .max();
                if let Some(seq) = covered {
                    shared.durable_seq.send_if_modified(|durable| {
                        let moved = seq > *durable;
                        *durable = (*durable).max(seq);
                        moved
                    });
                }
                for job in waiting {
                    stored += job.appended.stored;
                    duplicates += job.appended.duplicates;
                    metrics::histogram!("auditrail_spool_commit_wait_seconds")
                        .record(job.queued_at.elapsed());
                    job.reply.send(Ok(job.appended));
                }
                metrics::counter!("auditrail_stored_events_total").increment(stored as u64);
                metrics::counter!("auditrail_duplicate_events_total").increment(duplicates as u64);
                shared.publish_gauges();
            }
            Err(error) => {
                // `sync` has stopped the spool, logged and counted it.
                for job in waiting {
                    job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
