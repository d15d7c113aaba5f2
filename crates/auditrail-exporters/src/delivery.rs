//! The delivery loop: one per sink, written once for every sink.
//!
//! Each sink reads from its own cursor in the spool, so a slow or dead sink
//! holds back nothing but itself. A loop gathers durable events into
//! batches (by count, bytes and linger), keeps up to `concurrency` batches
//! in flight, and moves the cursor only over batches the sink has
//! confirmed, in seq order, however the in-flight batches finish.
//!
//! A batch task never gives up on a batch: retryable errors wait with
//! backoff and are tried again; a permanent error splits the batch in two
//! until the record(s) to blame stand alone, and those go to the spool's
//! dead-letter tree while the rest is delivered. A destination that
//! answers for each record on its own ([`ErrorClass::Partial`]) names the
//! records to dead-letter and to send again itself. A destination that
//! confirms only later ([`crate::acks`]) frees the batch's sending slot
//! while the batch waits for its acknowledgement, and the batch is sent
//! again if the acknowledgement does not come in time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditrail_model::internal::{self, InternalEvent};
use auditrail_model::{AuditEvent, Outcome};
use auditrail_spool::{ForgottenSink, Spool, SpoolError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::acks::{AckId, AckPolicy, AckTracker, Sent};
use crate::cursor::AckWindow;
use crate::health::{Health, StuckBatch};
use crate::partial::SortedBatch;
use crate::removed::{self, ForgetError, RemovedSink};
use crate::retry::Backoff;
use crate::{
    spool_check, DeliveryConfig, ErrorClass, ExportError, Exporter, SinkConfig, SinkContext,
    SinkStatus,
};

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // Not `source`: the message already holds the error, and a source would
    // print it a second time in `{:#}` chains (`error: ...: X: X`).
    #[error("sink {name:?} ({kind}): {error}")]
    Sink {
        name: String,
        kind: &'static str,
        error: ExportError,
    },
    /// A new spool must not assign a seq before every sink said which
    /// seqs of this node it already holds.
    #[error("sink {name:?} ({kind}): {error}; the spool is new, and its first seq must come after every seq of node {node:?} that a sink already holds (else a sink would discard its events as duplicates), so auditrail does not start until every sink answers: start it again once this sink is reachable (see docs/sinks.md, \"Spool identity\")")]
    NewSpool {
        name: String,
        kind: &'static str,
        node: String,
        error: ExportError,
    },
    /// The spool error is the source, so `{:#}` shows it once.
    #[error("sink cursors")]
    Spool(#[from] SpoolError),
}

/// Every configured sink, each delivering on its own.
pub struct Pipeline {
    sinks: Vec<RunningSink>,
    spool: Arc<Spool>,
    configured: BTreeSet<String>,
    /// Sinks no longer configured whose cursor or dead letters remain.
    removed: std::sync::Mutex<Vec<String>>,
}

struct RunningSink {
    health: Arc<Health>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Pipeline {
    /// Builds and prepares every sink, decides a new spool's first seq (or
    /// checks an existing spool against the sinks, see `spool_check.rs`),
    /// registers each cursor and starts each delivery loop. Sinks no longer
    /// configured keep their cursor and dead letters, with a warning, until
    /// [`Pipeline::forget`].
    ///
    /// A sink that is [`ErrorClass::Misconfigured`] (wrong password,
    /// missing database) fails the start with its message. A sink that is
    /// only unreachable starts anyway and keeps trying, while ingest and the
    /// other sinks go on.
    pub async fn start(
        spool: Arc<Spool>,
        configs: &[SinkConfig],
        retention: Duration,
    ) -> Result<Pipeline, StartError> {
        let mut prepared = Vec::new();
        for config in configs {
            let kind = config.kind.type_name();
            let context = SinkContext {
                name: config.name.clone(),
                retention,
            };
            let sink_error = |error| StartError::Sink {
                name: config.name.clone(),
                kind,
                error,
            };
            let exporter = config.kind.build(&context).map_err(sink_error)?;
            let outcome = match tokio::time::timeout(config.delivery.timeout, exporter.prepare())
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if e.class == ErrorClass::Misconfigured => return Err(sink_error(e)),
                Ok(Err(e)) => {
                    tracing::warn!(sink = %config.name, error = %e, "sink is not reachable yet; ingest goes on and delivery starts when it is");
                    Err(e)
                }
                Err(_) => {
                    tracing::warn!(sink = %config.name, timeout = ?config.delivery.timeout, "sink did not answer at start; ingest goes on and delivery starts when it does");
                    Err(ExportError::retryable(
                        "timeout",
                        format!("no answer within {:?}", config.delivery.timeout),
                    ))
                }
            };
            prepared.push((config, exporter, outcome));
        }
        spool_check::reconcile(&spool, &mut prepared).await?;

        let configured: BTreeSet<String> = configs.iter().map(|c| c.name.clone()).collect();
        let removed = removed::find(&spool, &configured)?;
        for status in removed::statuses(&spool, &removed)? {
            tracing::warn!(sink = %status.name, cursor = ?status.cursor, lag_events = status.lag_events, dead_letters = status.dead_letters,
                "sink is no longer configured; {}", status.note);
        }

        let mut sinks = Vec::new();
        for (config, exporter, outcome) in prepared {
            let ready = outcome.is_ok();
            let cursor = spool.register_sink(&config.name)?;
            let health = Arc::new(Health::new(&config.name, config.kind.type_name(), cursor));
            let sink = Arc::new(SinkShared::new(
                &config.name,
                spool.clone(),
                exporter,
                config.delivery.clone(),
                health.clone(),
            ));
            let mut tasks = vec![tokio::spawn(sink.clone().run(cursor, ready))];
            if let Some(every) = sink.exporter.maintenance_interval() {
                tasks.push(tokio::spawn(sink.clone().maintain(every)));
            }
            if let Some((policy, _)) = &sink.acks {
                tasks.push(tokio::spawn(sink.clone().poll_acks(policy.poll_interval)));
            }
            if sink.exporter.holds_checkpoints() {
                tasks.push(tokio::spawn(sink.clone().deliver_checkpoints()));
            }
            sinks.push(RunningSink {
                health,
                tasks: std::sync::Mutex::new(tasks),
            });
        }
        Ok(Pipeline {
            sinks,
            spool,
            configured,
            removed: std::sync::Mutex::new(removed),
        })
    }

    /// Every sink's state, for `/readyz`.
    pub fn statuses(&self) -> Vec<SinkStatus> {
        self.sinks.iter().map(|s| s.health.snapshot()).collect()
    }

    /// Sinks no longer configured whose cursor or dead letters the spool
    /// keeps, for `/readyz` (which also refreshes their metrics).
    pub fn removed_sinks(&self) -> Result<Vec<RemovedSink>, SpoolError> {
        let names = self.removed.lock().expect("removed lock").clone();
        removed::statuses(&self.spool, &names)
    }

    /// `auditrail sink forget NAME` on a running server: removes the cursor
    /// and dead letters of a sink that is no longer configured.
    pub fn forget(&self, name: &str) -> Result<ForgottenSink, ForgetError> {
        let forgotten = removed::forget(&self.spool, &self.configured, name)?;
        self.removed
            .lock()
            .expect("removed lock")
            .retain(|n| n != name);
        Ok(forgotten)
    }

    /// Stops every sink. Batches in flight are abandoned; their cursors did
    /// not move, so they are sent again (idempotently) after a restart.
    pub async fn shutdown(&self) {
        for sink in &self.sinks {
            let tasks: Vec<_> = sink.tasks.lock().expect("tasks lock").drain(..).collect();
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// What a sink's delivery loop and its batch tasks share.
struct SinkShared {
    name: String,
    spool: Arc<Spool>,
    exporter: Arc<dyn Exporter>,
    config: DeliveryConfig,
    health: Arc<Health>,
    /// One permit per batch being sent (`concurrency` of them). A batch
    /// that waits for its acknowledgement gives its permit back.
    sending: Arc<Semaphore>,
    /// A batch gave its sending permit back while it waits: the loop may
    /// send the next one.
    slot_freed: Notify,
    /// For a sink that confirms later: how to wait, and who waits.
    acks: Option<(AckPolicy, AckTracker)>,
}

/// What a finished batch task reports back to its loop.
struct BatchDone {
    /// The seq range it covered; `None` for a replay of dead letters.
    range: Option<(u64, u64)>,
}

/// A delivery loop's bookkeeping.
struct Progress {
    /// Which batches are out and how far the cursor may move.
    window: AckWindow,
    /// The cursor as last flushed to disk.
    flushed: u64,
    /// First seq → received time of the first event, of batches in flight:
    /// the age of the oldest is the sink's lag.
    in_flight: BTreeMap<u64, u64>,
    pending: VecDeque<AuditEvent>,
    pending_bytes: u64,
    pending_since: Option<Instant>,
    replaying: bool,
}

impl Progress {
    /// Nothing read or in flight yet; everything up to `cursor` confirmed.
    fn starting_at(cursor: u64) -> Self {
        Progress {
            window: AckWindow::new(cursor),
            flushed: cursor,
            in_flight: BTreeMap::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_since: None,
            replaying: false,
        }
    }

    /// Everything up to here is confirmed and acked in the spool.
    fn acked(&self) -> u64 {
        self.window.cursor()
    }

    /// Everything up to here has been read into a batch (or is pending).
    fn read(&self) -> u64 {
        self.pending
            .back()
            .map_or_else(|| self.window.dispatched_to(), |e| e.seq)
    }
}

impl SinkShared {
    fn new(
        name: &str,
        spool: Arc<Spool>,
        exporter: Arc<dyn Exporter>,
        config: DeliveryConfig,
        health: Arc<Health>,
    ) -> SinkShared {
        let acks = exporter
            .acknowledgements()
            .map(|policy| (policy, AckTracker::default()));
        SinkShared {
            name: name.to_owned(),
            spool,
            exporter,
            sending: Arc::new(Semaphore::new(config.concurrency)),
            config,
            health,
            slot_freed: Notify::new(),
            acks,
        }
    }

    /// At most this many batch tasks at once: the ones being sent, and
    /// those waiting for their acknowledgement.
    fn max_batches(&self) -> usize {
        self.config.concurrency + self.acks.as_ref().map_or(0, |(p, _)| p.max_pending)
    }

    /// A sending permit, when one is free and there is room for a batch.
    fn free_slot(&self, batches: usize) -> Option<OwnedSemaphorePermit> {
        if batches >= self.max_batches() {
            return None;
        }
        self.sending.clone().try_acquire_owned().ok()
    }

    async fn run(self: Arc<Self>, cursor: u64, mut ready: bool) {
        let mut backoff = self.backoff();
        while !ready {
            match self.attempt(self.exporter.prepare()).await {
                Ok(()) => ready = true,
                Err(e) => {
                    self.record_error(&e);
                    // Events wait while the sink cannot even be prepared:
                    // the lag has to say so, every second (as it does
                    // while delivering), not once per backoff of up to
                    // `backoff_max`.
                    let retry_at = Instant::now() + backoff.delay_after(&e);
                    loop {
                        self.publish_waiting(cursor).await;
                        let left = retry_at.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
                    }
                }
            }
        }
        self.health.succeeded();
        let mut cursor = cursor;
        loop {
            match self.clone().deliver_from(cursor).await {
                Ok(()) => return,
                Err(acked) => {
                    // A batch task died; its range would never be confirmed.
                    // Start over from the cursor: what was in flight is sent again.
                    tracing::error!(sink = %self.name, cursor = acked, "a batch task failed unexpectedly; restarting delivery from the cursor");
                    cursor = acked;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Delivers from `cursor` on. Returns `Ok` when the spool closes and
    /// `Err(cursor)` when delivery has to restart from `cursor`.
    async fn deliver_from(self: Arc<Self>, cursor: u64) -> Result<(), u64> {
        let mut durable = self.spool.subscribe_durable();
        let mut tasks: JoinSet<BatchDone> = JoinSet::new();
        let mut progress = Progress::starting_at(cursor);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_bytes = self.config.max_bytes.as_u64();
        loop {
            let durable_seq = *durable.borrow_and_update();
            let room = progress.pending.len() < self.config.max_events
                && progress.pending_bytes < max_bytes;
            if room && progress.read() < durable_seq {
                let want = self.config.max_events - progress.pending.len();
                match self.read(progress.read(), want).await {
                    Ok(events) => {
                        if !events.is_empty() {
                            progress.pending_since.get_or_insert_with(Instant::now);
                        }
                        for event in events {
                            progress.pending_bytes += approximate_size(&event);
                            progress.pending.push_back(event);
                        }
                    }
                    Err(e) => {
                        tracing::error!(sink = %self.name, error = %e, "reading the spool failed");
                        metrics::counter!("auditrail_sink_errors_total", "sink" => self.name.clone(), "kind" => "spool").increment(1);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }

            let slot_free =
                tasks.len() < self.max_batches() && self.sending.available_permits() > 0;
            if slot_free && !progress.pending.is_empty() {
                let full = progress.pending.len() >= self.config.max_events
                    || progress.pending_bytes >= max_bytes;
                let lingered = progress
                    .pending_since
                    .is_some_and(|t| t.elapsed() >= self.config.linger);
                if let (true, Some(permit)) = (full || lingered, self.free_slot(tasks.len())) {
                    let batch = self.take_batch(&mut progress);
                    let range = (batch[0].seq, batch[batch.len() - 1].seq);
                    progress.window.dispatched(range.0, range.1);
                    progress
                        .in_flight
                        .insert(range.0, batch[0].received_time_unix_nano);
                    tasks.spawn(self.clone().deliver(batch, Some(range), permit));
                    continue;
                }
            }

            let linger_deadline = progress
                .pending_since
                .map(|t| tokio::time::Instant::from_std(t + self.config.linger));
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let Ok(done) = joined else {
                        tasks.abort_all();
                        return Err(progress.acked());
                    };
                    self.confirmed(&mut progress, done);
                    self.publish_progress(&progress, *durable.borrow());
                }
                changed = durable.changed(), if room => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = self.slot_freed.notified(), if !slot_free => {}
                _ = tokio::time::sleep_until(linger_deadline.unwrap_or_else(tokio::time::Instant::now)), if slot_free && linger_deadline.is_some() => {}
                _ = tick.tick() => {
                    self.publish_progress(&progress, *durable.borrow());
                    self.flush_cursor(&mut progress).await;
                    if slot_free && !progress.replaying {
                        self.start_replay(&mut progress, &mut tasks).await;
                    }
                }
            }
        }
    }

    /// Takes the next batch off the front of `pending`, within both limits
    /// (but always at least one event).
    fn take_batch(&self, progress: &mut Progress) -> Vec<AuditEvent> {
        let max_bytes = self.config.max_bytes.as_u64();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(event) = progress.pending.front() {
            let size = approximate_size(event);
            if !batch.is_empty()
                && (batch.len() >= self.config.max_events || bytes + size > max_bytes)
            {
                break;
            }
            bytes += size;
            batch.push(progress.pending.pop_front().expect("front exists"));
        }
        progress.pending_bytes -= bytes;
        progress.pending_since = if progress.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        batch
    }

    fn confirmed(&self, progress: &mut Progress, done: BatchDone) {
        let Some((first, _)) = done.range else {
            progress.replaying = false;
            return;
        };
        progress.in_flight.remove(&first);
        if let Some(cursor) = progress.window.confirmed(first) {
            if let Err(e) = self.spool.ack(&self.name, cursor) {
                tracing::error!(sink = %self.name, error = %e, "moving the sink cursor failed");
            }
        }
    }

    /// Makes the cursor durable when it moved: the spool flushes cursor
    /// moves with its next commit, which never comes while ingest is quiet,
    /// and a crash would then redeliver everything since.
    async fn flush_cursor(&self, progress: &mut Progress) {
        if progress.acked() == progress.flushed {
            return;
        }
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.flush()).await {
            Ok(Ok(())) => progress.flushed = progress.acked(),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "flushing the sink cursor failed")
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "flushing the sink cursor failed")
            }
        }
    }

    /// Sends the dead letters an operator marked for replay, one batch at a
    /// time, beside the normal flow (their cursor moved on long ago).
    async fn start_replay(
        self: &Arc<Self>,
        progress: &mut Progress,
        tasks: &mut JoinSet<BatchDone>,
    ) {
        let spool = self.spool.clone();
        let name = self.name.clone();
        let max = self.config.max_events;
        let letters =
            tokio::task::spawn_blocking(move || spool.dead_letters(Some(&name), None)).await;
        let events: Vec<AuditEvent> = match letters {
            Ok(Ok(letters)) => letters
                .into_iter()
                .filter(|l| l.replay)
                .take(max)
                .map(|l| l.event)
                .collect(),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "reading dead letters failed");
                return;
            }
            Err(_) => return,
        };
        if events.is_empty() {
            return;
        }
        let Some(permit) = self.free_slot(tasks.len()) else {
            return;
        };
        tracing::info!(sink = %self.name, events = events.len(), "replaying dead letters");
        progress.replaying = true;
        tasks.spawn(self.clone().deliver(events, None, permit));
    }

    fn publish_progress(&self, progress: &Progress, durable: u64) {
        let lag_events = durable.saturating_sub(progress.acked());
        let oldest = progress
            .in_flight
            .values()
            .copied()
            .chain(progress.pending.front().map(|e| e.received_time_unix_nano))
            .min();
        let lag_seconds = match oldest {
            Some(received) if lag_events > 0 => {
                now_unix_nano().saturating_sub(received) as f64 / 1e9
            }
            _ => 0.0,
        };
        let dead = self.spool.dead_letter_count(&self.name);
        let sink = self.name.clone();
        metrics::gauge!("auditrail_sink_lag_events", "sink" => sink.clone()).set(lag_events as f64);
        metrics::gauge!("auditrail_sink_lag_seconds", "sink" => sink.clone()).set(lag_seconds);
        metrics::gauge!("auditrail_sink_cursor", "sink" => sink.clone())
            .set(progress.acked() as f64);
        metrics::gauge!("auditrail_sink_dead_letters", "sink" => sink).set(dead as f64);
        self.health
            .progress(progress.acked(), lag_events, lag_seconds, dead);
    }

    /// Publishes the lag of a sink whose delivery has not started yet.
    async fn publish_waiting(&self, cursor: u64) {
        let durable = self.spool.durable_seq();
        let oldest = self.read(cursor, 1).await.unwrap_or_default();
        let mut progress = Progress::starting_at(cursor);
        progress.pending = oldest.into();
        self.publish_progress(&progress, durable);
    }

    /// Delivers one batch, whatever it takes: retries what is transient,
    /// splits what is permanent, dead-letters the records to blame, waits
    /// for a late acknowledgement (without its sending slot) and sends
    /// again when it does not come. Returns only once every event of the
    /// batch is stored by the sink or in the dead-letter tree.
    async fn deliver(
        self: Arc<Self>,
        events: Vec<AuditEvent>,
        range: Option<(u64, u64)>,
        permit: OwnedSemaphorePermit,
    ) -> BatchDone {
        let replay = range.is_none();
        let mut permit = Some(permit);
        // Depth-first, left half first, so a sink sees seqs in order.
        let mut work = vec![events];
        while let Some(mut chunk) = work.pop() {
            let mut backoff = self.backoff();
            let mut attempts = Attempts::new(&self.health, self.config.stuck_after, &chunk);
            // After a misconfigured answer the sink is checked again
            // before the batch is: `prepare` may mend it (a table dropped
            // meanwhile is created again), and one that still fails sends
            // nothing (a Splunk token without acknowledgement would index
            // every resend).
            let mut check_first = false;
            loop {
                if permit.is_none() {
                    let acquired = self.sending.clone().acquire_owned().await;
                    permit = Some(acquired.expect("the sending semaphore is never closed"));
                }
                if check_first {
                    if let Err(error) = self.attempt(self.exporter.prepare()).await {
                        self.record_error(&error);
                        attempts.failed(&error);
                        tokio::time::sleep(backoff.delay_after(&error)).await;
                        continue;
                    }
                    check_first = false;
                }
                let started = Instant::now();
                let outcome = match self.attempt(self.exporter.send(&chunk)).await {
                    Ok(Sent::Stored) => Ok(()),
                    Ok(Sent::Awaiting(id)) => {
                        // The destination has the batch; while it decides,
                        // the next batch may go out.
                        permit = None;
                        self.slot_freed.notify_one();
                        self.await_ack(id).await
                    }
                    Err(error) => Err(error),
                };
                let error = match outcome {
                    Ok(()) => {
                        self.delivered(&chunk, started, replay).await;
                        break;
                    }
                    Err(error) => error,
                };
                self.record_error(&error);
                match error.class {
                    ErrorClass::Retryable => {}
                    ErrorClass::Misconfigured => check_first = true,
                    ErrorClass::Permanent if chunk.len() == 1 => {
                        drop(attempts);
                        self.dead_letter(&chunk[0], &error.to_string()).await;
                        break;
                    }
                    ErrorClass::Permanent => {
                        let right = chunk.split_off(chunk.len() / 2);
                        work.push(right);
                        work.push(chunk);
                        break;
                    }
                    ErrorClass::Partial => {
                        match SortedBatch::sort(std::mem::take(&mut chunk), &error.records) {
                            Ok(sorted) => {
                                if !sorted.stored.is_empty() {
                                    self.delivered(&sorted.stored, started, replay).await;
                                }
                                for (event, reason) in &sorted.rejected {
                                    self.dead_letter(event, reason).await;
                                }
                                if sorted.retry.is_empty() {
                                    break;
                                }
                                chunk = sorted.retry;
                            }
                            Err((whole, mismatch)) => {
                                tracing::error!(sink = %self.name, %mismatch, "the sink's per-record answer does not fit the batch; the whole batch is sent again");
                                chunk = whole;
                            }
                        }
                    }
                }
                attempts.failed(&error);
                tokio::time::sleep(backoff.delay_after(&error)).await;
            }
        }
        BatchDone { range }
    }

    /// `events` are in the sink now.
    async fn delivered(&self, events: &[AuditEvent], started: Instant, replay: bool) {
        metrics::histogram!("auditrail_sink_batch_seconds", "sink" => self.name.clone())
            .record(started.elapsed());
        metrics::counter!("auditrail_sink_delivered_events_total", "sink" => self.name.clone())
            .increment(events.len() as u64);
        self.recovered();
        if replay {
            self.resolve_replayed(events).await;
        }
    }

    /// Waits for the destination to acknowledge `id`; an acknowledgement
    /// that does not come in time is an error, so the batch is sent again
    /// rather than taken as delivered.
    async fn await_ack(&self, id: AckId) -> Result<(), ExportError> {
        let Some((policy, tracker)) = &self.acks else {
            return Err(ExportError::misconfigured(
                "acks",
                format!("the sink answered with ack id {id} but has no acknowledgement policy"),
            ));
        };
        let acknowledged = tracker.wait_for(id);
        if let Ok(Ok(())) = tokio::time::timeout(policy.timeout, acknowledged).await {
            return Ok(());
        }
        tracker.forget(id);
        metrics::counter!("auditrail_sink_ack_timeouts_total", "sink" => self.name.clone())
            .increment(1);
        tracing::warn!(sink = %self.name, ack_id = id, timeout = ?policy.timeout,
            "the destination did not acknowledge a batch in time; it is sent again (the destination may end up with it twice)");
        Err(ExportError::retryable(
            "ack_timeout",
            format!(
                "ack id {id} not acknowledged within {:?}; the batch is sent again",
                policy.timeout
            ),
        ))
    }

    /// Asks the destination about every batch waiting for its
    /// acknowledgement, every `every`, and lets the acknowledged ones go.
    async fn poll_acks(self: Arc<Self>, every: Duration) {
        let Some((_, tracker)) = &self.acks else {
            return;
        };
        loop {
            tracker.waiting().await;
            // Give the destination time before asking (and between asks).
            tokio::time::sleep(every).await;
            let ids = tracker.waiting().await;
            match self.attempt(self.exporter.acknowledged(&ids)).await {
                Ok(acknowledged) => {
                    let resolved = tracker.acknowledged(&acknowledged);
                    metrics::counter!("auditrail_sink_acknowledged_batches_total", "sink" => self.name.clone())
                        .increment(resolved as u64);
                }
                Err(error) => {
                    // Batches keep waiting, and are sent again when their
                    // timeout passes; the error is what an operator sees.
                    self.record_error(&error);
                }
            }
        }
    }

    /// Stores `event` in the dead-letter tree, retrying until it is there:
    /// the batch (and so the cursor) must not move past an event that is
    /// neither in the sink nor in the dead letters.
    async fn dead_letter(&self, event: &AuditEvent, reason: &str) {
        tracing::warn!(sink = %self.name, seq = event.seq, event_id = %event.event_id, reason, "sink rejected an event; it is dead-lettered and delivery goes on");
        let mut backoff = self.backoff();
        let mut attempts = Attempts::new(
            &self.health,
            self.config.stuck_after,
            std::slice::from_ref(event),
        );
        loop {
            let spool = self.spool.clone();
            let name = self.name.clone();
            let letter = event.clone();
            let why = reason.to_owned();
            let stored = tokio::task::spawn_blocking(move || {
                spool.dead_letter(&name, &letter, &why, now_unix_nano())
            })
            .await
            .unwrap_or_else(|e| Err(SpoolError::Storage(format!("dead-letter task: {e}"))));
            match stored {
                Ok(()) => {
                    metrics::counter!("auditrail_sink_dead_lettered_events_total", "sink" => self.name.clone())
                        .increment(1);
                    self.record_tombstone(event, reason).await;
                    return;
                }
                Err(e) => {
                    let error = ExportError::retryable(
                        "dead_letter",
                        format!(
                            "storing the dead letter of seq {} failed, so the cursor waits before it: {e}",
                            event.seq
                        ),
                    );
                    tracing::error!(sink = %self.name, %error, "dead letter not stored; retrying");
                    self.record_error(&error);
                    attempts.failed(&error);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The trail's own record that the sink refused `event`: a tombstone
    /// event, delivered to every sink like the rest. Not for a refused
    /// tombstone: a sink that refuses everything would otherwise be sent
    /// tombstones of tombstones for ever (the dead letter and the metric
    /// still say so).
    async fn record_tombstone(&self, event: &AuditEvent, reason: &str) {
        if event.event_name == internal::TOMBSTONE && internal::is_internal(event) {
            return;
        }
        let tombstone = InternalEvent::new(internal::TOMBSTONE, &event.tenant)
            .warning()
            .outcome(Outcome::Failure)
            .attr("auditrail.tombstone.kind", vec!["dead_lettered".to_owned()])
            .attr("auditrail.sink", self.name.as_str())
            .attr("auditrail.seq", event.seq)
            .attr("auditrail.event_id", event.event_id.as_str())
            .attr("auditrail.event_name", event.event_name.as_str())
            .attr("auditrail.reasons", vec![reason.to_owned()])
            .body(format!(
                "sink {:?} rejected seq {} ({}); it is dead-lettered: {reason}",
                self.name, event.seq, event.event_name
            ))
            // Dead-lettered again after a crash: the same tombstone.
            .id_from(&[&self.name, &event.seq.to_string()])
            .build(now_unix_nano());
        // Counted and logged by `record` when it fails.
        let _ = self.spool.record(tombstone).await;
    }

    async fn resolve_replayed(&self, events: &[AuditEvent]) {
        for event in events {
            match self.spool.resolve_dead_letter(&self.name, event.seq) {
                Ok(true) => {
                    tracing::info!(sink = %self.name, seq = event.seq, "replayed dead letter delivered")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "removing a replayed dead letter failed")
                }
            }
        }
    }

    async fn maintain(self: Arc<Self>, every: Duration) {
        loop {
            match self
                .attempt(self.exporter.maintain(SystemTime::now()))
                .await
            {
                Ok(()) => tokio::time::sleep(every).await,
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "sink maintenance failed; retrying in a minute");
                    metrics::counter!("auditrail_sink_errors_total", "sink" => self.name.clone(), "kind" => "maintenance").increment(1);
                    tokio::time::sleep(Duration::from_secs(60).min(every)).await;
                }
            }
        }
    }

    /// Stores the spool's signed checkpoints in the sink, each once every
    /// event it covers is confirmed there, so that the sink never holds a
    /// checkpoint of events it lacks (which `verify --sink` would report as
    /// missing). Failures are retried with backoff, like batches.
    async fn deliver_checkpoints(self: Arc<Self>) {
        let mut backoff = self.backoff();
        loop {
            match self.checkpoints_due().await {
                Ok(due) if due.is_empty() => {
                    backoff = self.backoff();
                    tokio::time::sleep(CHECKPOINT_POLL).await;
                }
                Ok(due) => {
                    let newest = due.last().map_or(0, |c| c.checkpoint.size);
                    let stored = self.attempt(self.exporter.export_checkpoints(&due)).await;
                    let recorded = stored.and_then(|()| {
                        self.spool
                            .checkpoints_delivered_to(&self.name, newest)
                            .map_err(|e| ExportError::retryable("spool", e.to_string()))
                    });
                    match recorded {
                        Ok(()) => {
                            backoff = self.backoff();
                            metrics::counter!("auditrail_sink_checkpoints_total", "sink" => self.name.clone())
                                .increment(due.len() as u64);
                        }
                        Err(e) => {
                            tracing::warn!(sink = %self.name, error = %e, "storing checkpoints failed; retrying");
                            metrics::counter!("auditrail_sink_errors_total", "sink" => self.name.clone(), "kind" => "checkpoints").increment(1);
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "reading checkpoints from the spool failed");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Checkpoints the sink has not stored yet whose events it has all
    /// confirmed, oldest first (at most [`CHECKPOINTS_PER_CALL`]).
    async fn checkpoints_due(&self) -> Result<Vec<crate::SignedCheckpoint>, SpoolError> {
        let spool = self.spool.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let delivered = spool.checkpoints_delivered(&name)?;
            let confirmed = spool
                .cursors()?
                .into_iter()
                .find(|(sink, _)| *sink == name)
                .map_or(0, |(_, seq)| seq);
            let mut due = Vec::new();
            for stored in spool.checkpoints()? {
                if stored.size <= delivered {
                    continue;
                }
                let Some(signed) = crate::SignedCheckpoint::of_note(stored.note) else {
                    continue;
                };
                if signed.checkpoint.last_seq() > confirmed || due.len() >= CHECKPOINTS_PER_CALL {
                    break;
                }
                due.push(signed);
            }
            Ok(due)
        })
        .await
        .map_err(|e| SpoolError::Storage(format!("spool read task: {e}")))?
    }

    /// Runs one call with the configured timeout; a timeout is retryable.
    async fn attempt<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ExportError>>,
    ) -> Result<T, ExportError> {
        tokio::time::timeout(self.config.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(ExportError::retryable(
                    "timeout",
                    format!("no answer within {:?}", self.config.timeout),
                ))
            })
    }

    fn record_error(&self, error: &ExportError) {
        metrics::counter!("auditrail_sink_errors_total", "sink" => self.name.clone(), "kind" => error.kind)
            .increment(1);
        let only_refusals = match error.class {
            ErrorClass::Permanent => true,
            ErrorClass::Partial => !error.records.contains(&crate::RecordOutcome::Retry),
            ErrorClass::Retryable | ErrorClass::Misconfigured => false,
        };
        if only_refusals {
            // The sink works; a record in the batch does not fit. Splitting
            // (or the sink's own answer) finds it, and dead-lettering it is
            // what gets logged.
            tracing::debug!(sink = %self.name, %error, "batch rejected; isolating the record to blame");
            return;
        }
        let was_healthy = self.health.snapshot().healthy;
        self.health.failed(error);
        if was_healthy {
            tracing::warn!(sink = %self.name, %error, "sink failing; its events wait in the spool");
        } else {
            tracing::debug!(sink = %self.name, %error, "sink still failing");
        }
    }

    fn recovered(&self) {
        if !self.health.snapshot().healthy {
            tracing::info!(sink = %self.name, "sink delivering again");
        }
        self.health.succeeded();
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.config.backoff_initial, self.config.backoff_max)
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>, SpoolError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.read(after, limit))
            .await
            .map_err(|e| SpoolError::Storage(format!("spool read task: {e}")))?
    }
}

/// How often a sink that holds checkpoints looks for new ones.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);
/// Most checkpoints stored in one call.
const CHECKPOINTS_PER_CALL: usize = 500;

/// One batch's consecutive failures with the same kind of error: after
/// `stuck_after` of them the batch shows as stuck, until it goes through
/// (or is split, or its task ends: the tracker is dropped).
struct Attempts<'a> {
    health: &'a Health,
    stuck_after: u32,
    id: u64,
    first_seq: u64,
    last_seq: u64,
    /// Class and kind of the current run of failures, how many, since when.
    streak: Option<((ErrorClass, &'static str), u32, u64)>,
}

impl<'a> Attempts<'a> {
    fn new(health: &'a Health, stuck_after: u32, events: &[AuditEvent]) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Attempts {
            health,
            stuck_after,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            first_seq: events.first().map_or(0, |e| e.seq),
            last_seq: events.last().map_or(0, |e| e.seq),
            streak: None,
        }
    }

    fn failed(&mut self, error: &ExportError) {
        let key = (error.class, error.kind);
        let (attempts, since) = match self.streak {
            Some((same, attempts, since)) if same == key => (attempts + 1, since),
            _ => (1, crate::health::unix_now()),
        };
        self.streak = Some((key, attempts, since));
        if attempts >= self.stuck_after {
            if attempts == self.stuck_after {
                tracing::error!(first_seq = self.first_seq, last_seq = self.last_seq, attempts, %error,
                    "a batch keeps failing with the same error; the sink is stuck until it goes through");
            }
            self.health.stuck(
                self.id,
                StuckBatch {
                    first_seq: self.first_seq,
                    last_seq: self.last_seq,
                    attempts,
                    error: error.to_string(),
                    since,
                },
            );
        } else {
            // Another kind of error starts a new run.
            self.health.unstuck(self.id);
        }
    }
}

impl Drop for Attempts<'_> {
    fn drop(&mut self) {
        self.health.unstuck(self.id);
    }
}

/// Roughly the bytes an event takes in a row: its variable-length fields
/// plus a fixed allowance for the numbers and hashes.
fn approximate_size(e: &AuditEvent) -> u64 {
    let text = e.node.len()
        + e.event_id.len()
        + e.tenant.len()
        + e.service_name.len()
        + e.event_name.len()
        + e.severity_text.len()
        + e.actor_id.len()
        + e.actor_name.len()
        + e.client_address.len()
        + e.target.len()
        + e.trace_id.len()
        + e.span_id.len()
        + e.body.len()
        + e.attributes.len()
        + e.resource_attributes.len()
        + e.scope_name.len();
    text as u64 + 200
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SinkShared {
        fn spawn_ack_poller_for_test(self: Arc<Self>) {
            let every = self.acks.as_ref().expect("acks").0.poll_interval;
            tokio::spawn(self.poll_acks(every));
        }
    }

    fn events(first: u64, last: u64) -> Vec<AuditEvent> {
        (first..=last)
            .map(|seq| AuditEvent {
                seq,
                ..AuditEvent::default()
            })
            .collect()
    }

    /// Refuses its first export with a `Retry-After` hint, then accepts;
    /// records when each export came.
    struct Throttled {
        hint: Duration,
        calls: std::sync::Mutex<Vec<Instant>>,
    }

    #[async_trait::async_trait]
    impl Exporter for Throttled {
        async fn prepare(&self) -> Result<(), ExportError> {
            Ok(())
        }
        async fn export(&self, _: &[AuditEvent]) -> Result<(), ExportError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            if calls.len() == 1 {
                return Err(
                    ExportError::retryable("throttled", "HTTP 429").with_retry_after(self.hint)
                );
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_retry_waits_at_least_as_long_as_the_sink_was_told() {
        let dir = tempfile::tempdir().unwrap();
        let spool = test_spool(&dir);
        let hint = Duration::from_millis(700);
        let exporter = Arc::new(Throttled {
            hint,
            calls: Default::default(),
        });
        let sink = Arc::new(SinkShared::new(
            "throttled",
            spool,
            exporter.clone(),
            // The loop's own first retry would come after 10-20ms.
            DeliveryConfig {
                backoff_initial: Duration::from_millis(20),
                ..DeliveryConfig::default()
            },
            Arc::new(Health::new("throttled", "test", 0)),
        ));
        let permit = sink.free_slot(0).unwrap();
        sink.deliver(events(1, 3), Some((1, 3)), permit).await;
        let calls = exporter.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "refused once, then delivered");
        let waited = calls[1] - calls[0];
        assert!(
            waited >= hint,
            "retried after {waited:?}, before the {hint:?} asked for"
        );
    }

    fn test_spool(dir: &tempfile::TempDir) -> Arc<Spool> {
        Arc::new(
            Spool::open(auditrail_spool::SpoolConfig::new(
                dir.path().join("spool"),
                "n",
            ))
            .unwrap(),
        )
    }

    fn test_sink(name: &str, spool: Arc<Spool>, exporter: Arc<dyn Exporter>) -> Arc<SinkShared> {
        Arc::new(SinkShared::new(
            name,
            spool,
            exporter,
            DeliveryConfig {
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(20),
                concurrency: 1,
                ..DeliveryConfig::default()
            },
            Arc::new(Health::new(name, "test", 0)),
        ))
    }

    /// Answers for each record: the first time, seq 3 is refused and seqs
    /// 1 and 4 are to be sent again; then everything is stored.
    #[derive(Default)]
    struct PerItem {
        calls: std::sync::Mutex<Vec<Vec<u64>>>,
    }

    #[async_trait::async_trait]
    impl Exporter for PerItem {
        async fn prepare(&self) -> Result<(), ExportError> {
            Ok(())
        }
        async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(events.iter().map(|e| e.seq).collect());
            if calls.len() > 1 {
                return Ok(());
            }
            let records = events
                .iter()
                .map(|e| match e.seq {
                    1 | 4 => crate::RecordOutcome::Retry,
                    3 => crate::RecordOutcome::Rejected("mapper_parsing_exception".into()),
                    _ => crate::RecordOutcome::Stored,
                })
                .collect();
            Err(ExportError::partial(
                "items",
                "2 of 4 items failed",
                records,
            ))
        }
    }

    #[tokio::test]
    async fn a_per_record_answer_dead_letters_the_refused_and_resends_only_the_retried() {
        let dir = tempfile::tempdir().unwrap();
        let spool = test_spool(&dir);
        let exporter = Arc::new(PerItem::default());
        let sink = test_sink("items", spool.clone(), exporter.clone());
        let batch: Vec<AuditEvent> = events(1, 4)
            .into_iter()
            .map(|e| AuditEvent {
                event_id: format!("e{}", e.seq),
                ..e
            })
            .collect();
        let permit = sink.free_slot(0).unwrap();
        sink.deliver(batch, Some((1, 4)), permit).await;
        let calls = exporter.calls.lock().unwrap().clone();
        assert_eq!(calls, [vec![1, 2, 3, 4], vec![1, 4]]);
        let letters = spool.dead_letters(Some("items"), None).unwrap();
        let seqs: Vec<u64> = letters.iter().map(|l| l.event.seq).collect();
        assert_eq!(seqs, [3]);
        assert!(letters[0].reason.contains("mapper_parsing_exception"));
    }

    /// Answers its first export as misconfigured (the table is gone), and
    /// its next two prepares fail too; records every call in order.
    #[derive(Default)]
    struct Unprepared {
        calls: std::sync::Mutex<Vec<&'static str>>,
    }

    #[async_trait::async_trait]
    impl Exporter for Unprepared {
        async fn prepare(&self) -> Result<(), ExportError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push("prepare");
            if calls.iter().filter(|c| **c == "prepare").count() <= 2 {
                return Err(ExportError::misconfigured("schema", "no table"));
            }
            Ok(())
        }
        async fn export(&self, _: &[AuditEvent]) -> Result<(), ExportError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push("export");
            if calls.len() == 1 {
                return Err(ExportError::misconfigured("schema", "table dropped"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn after_a_misconfigured_answer_nothing_is_sent_until_prepare_passes_again() {
        let dir = tempfile::tempdir().unwrap();
        let exporter = Arc::new(Unprepared::default());
        let sink = test_sink("unprepared", test_spool(&dir), exporter.clone());
        let permit = sink.free_slot(0).unwrap();
        sink.deliver(events(1, 2), Some((1, 2)), permit).await;
        let calls = exporter.calls.lock().unwrap().clone();
        assert_eq!(calls, ["export", "prepare", "prepare", "prepare", "export"]);
    }

    /// Confirms later: each send gets the next ack id; only ids in `acks`
    /// are ever acknowledged.
    struct LateAcks {
        sends: std::sync::Mutex<Vec<Vec<u64>>>,
        acks: Vec<AckId>,
    }

    #[async_trait::async_trait]
    impl Exporter for LateAcks {
        async fn prepare(&self) -> Result<(), ExportError> {
            Ok(())
        }
        async fn export(&self, _: &[AuditEvent]) -> Result<(), ExportError> {
            unreachable!("the loop calls send")
        }
        async fn send(&self, events: &[AuditEvent]) -> Result<Sent, ExportError> {
            let mut sends = self.sends.lock().unwrap();
            sends.push(events.iter().map(|e| e.seq).collect());
            Ok(Sent::Awaiting(sends.len() as AckId - 1))
        }
        fn acknowledgements(&self) -> Option<AckPolicy> {
            Some(AckPolicy {
                timeout: Duration::from_millis(300),
                poll_interval: Duration::from_millis(20),
                max_pending: 4,
            })
        }
        async fn acknowledged(&self, ids: &[AckId]) -> Result<Vec<AckId>, ExportError> {
            Ok(ids
                .iter()
                .copied()
                .filter(|id| self.acks.contains(id))
                .collect())
        }
    }

    #[tokio::test]
    async fn a_batch_waits_for_its_ack_without_its_slot_and_is_sent_again_when_none_comes() {
        let dir = tempfile::tempdir().unwrap();
        // Ack id 0 (the first send) never comes; id 1 (the resend) does.
        let exporter = Arc::new(LateAcks {
            sends: Default::default(),
            acks: vec![1],
        });
        let sink = test_sink("late", test_spool(&dir), exporter.clone());
        sink.clone().spawn_ack_poller_for_test();
        let permit = sink.free_slot(0).unwrap();
        assert!(
            sink.free_slot(1).is_none(),
            "concurrency 1: one batch sends at a time"
        );
        let batch = tokio::spawn(sink.clone().deliver(events(1, 3), Some((1, 3)), permit));
        // Sent and waiting: its slot is free for the next batch.
        let freed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(permit) = sink.free_slot(1) {
                    return permit;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the waiting batch gave its slot back");
        assert!(!batch.is_finished(), "not delivered before its ack");
        drop(freed);
        let done = tokio::time::timeout(Duration::from_secs(5), batch)
            .await
            .expect("delivered after the resend was acknowledged")
            .unwrap();
        assert_eq!(done.range, Some((1, 3)));
        let sends = exporter.sends.lock().unwrap().clone();
        assert_eq!(
            sends,
            [vec![1, 2, 3], vec![1, 2, 3]],
            "sent again after the timeout"
        );
    }

    #[test]
    fn a_batch_is_stuck_after_the_same_error_n_times_and_clears_when_it_goes_through() {
        let health = Health::new("s", "mysql", 0);
        let timeout = ExportError::retryable("timeout", "no answer within 30s");
        let refused = ExportError::retryable("connection", "Connection refused");
        let batch = events(11, 20);
        let mut attempts = Attempts::new(&health, 3, &batch);
        attempts.failed(&timeout);
        attempts.failed(&timeout);
        assert_eq!(health.snapshot().stuck, None);
        // Another kind of error starts the count again.
        attempts.failed(&refused);
        attempts.failed(&timeout);
        attempts.failed(&timeout);
        assert_eq!(health.snapshot().stuck, None);
        attempts.failed(&timeout);
        let status = health.snapshot();
        assert_eq!(status.state, "stuck");
        let stuck = status.stuck.expect("stuck");
        assert_eq!(
            (stuck.first_seq, stuck.last_seq, stuck.attempts),
            (11, 20, 3)
        );
        assert_eq!(stuck.error, "timeout: no answer within 30s");
        attempts.failed(&timeout);
        assert_eq!(health.snapshot().stuck.expect("still stuck").attempts, 4);

        // A second stuck batch: the one with the lower seqs is shown.
        let earlier = events(1, 10);
        let mut other = Attempts::new(&health, 1, &earlier);
        other.failed(&refused);
        assert_eq!(health.snapshot().stuck.expect("stuck").first_seq, 1);
        drop(other);
        assert_eq!(health.snapshot().stuck.expect("stuck").first_seq, 11);

        // The batch goes through (its tracker ends): not stuck any more.
        drop(attempts);
        health.succeeded();
        let status = health.snapshot();
        assert_eq!((status.state, status.stuck), ("delivering", None));
    }
}
