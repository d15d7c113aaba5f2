//! Reopening after a full disk: ingest comes back once there is space,
//! without a restart.
//!
//! After a failed write or fsync sled keeps the I/O error for the rest of
//! that database's life, so the opening that failed can take no more
//! writes (see `failstop.rs`). When the cause was a full disk, the watcher
//! here waits until the spool's filesystem has room again, then does what a
//! restart would:
//!
//! 1. it takes the opening out of service (calls now fail with the error
//!    that stopped it), closes it, and waits until the last call using it
//!    has returned and sled has let go of its lock;
//! 2. it drops the kernel's cached pages of the spool's files. After a
//!    failed writeback the kernel may have marked pages clean that never
//!    reached the disk (PostgreSQL's lesson of 2018); reading those back
//!    would let the new opening believe, and later acknowledge as a
//!    duplicate, an event that is not on disk. A restart does not drop
//!    them either; this makes the reopen the safer of the two;
//! 3. it opens the spool again the normal way: sled recovers what its
//!    log holds, the barrier syncs every file, and the watermark check
//!    refuses the spool if it recovered less than was acknowledged.
//!
//! Whatever the new opening recovered has been synced, so an event of the
//! failed flush that it finds is durable now, and a resend of it is a true
//! duplicate. Failures with another cause (EIO, a panic) are not retried:
//! they need an operator, and a restart.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::failstop;
use crate::opened::Opened;
use crate::{SpoolConfig, SpoolError, SpoolIdentity, SpoolStats, SEGMENT_SIZE};

/// Free space the spool's filesystem must have before a reopen is tried:
/// two of sled's segments, so the first commits after it have room.
const SPACE_TO_REOPEN: u64 = 2 * SEGMENT_SIZE as u64;
/// How often the watcher looks at the spool.
const POLL: Duration = Duration::from_secs(1);
/// How long a closed opening may take to be let go of before the wait is
/// logged (it is waited for in any case: two openings of one spool never run).
const SLOW_RELEASE: Duration = Duration::from_secs(10);

/// The spool between its openings: which opening serves calls, or why none.
pub(crate) struct Core {
    pub(crate) config: SpoolConfig,
    pub(crate) durable_seq: Arc<watch::Sender<u64>>,
    state: RwLock<State>,
}

enum State {
    Open(Arc<Opened>),
    /// No opening serves calls: between two, after a reopen failed, or
    /// after close. Calls get `error`; stats and identity are as last seen.
    Down {
        error: SpoolError,
        stats: SpoolStats,
        identity: Option<SpoolIdentity>,
    },
}

impl Core {
    pub(crate) fn open(config: SpoolConfig) -> Result<Core, SpoolError> {
        let durable_seq = Arc::new(watch::Sender::new(0));
        let opened = Opened::open(config.clone(), durable_seq.clone())?;
        Ok(Core {
            config,
            durable_seq,
            state: RwLock::new(State::Open(Arc::new(opened))),
        })
    }

    /// The opening that serves calls now.
    pub(crate) fn current(&self) -> Result<Arc<Opened>, SpoolError> {
        match &*self.read_state() {
            State::Open(opened) => Ok(opened.clone()),
            State::Down { error, .. } => Err(error.clone()),
        }
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        match &*self.read_state() {
            State::Open(opened) => opened.stats(),
            State::Down { stats, .. } => *stats,
        }
    }

    pub(crate) fn identity(&self) -> Option<SpoolIdentity> {
        match &*self.read_state() {
            State::Open(opened) => opened.identity().cloned(),
            State::Down { identity, .. } => identity.clone(),
        }
    }

    /// Closes the opening for good: later calls get [`SpoolError::Closed`].
    pub(crate) fn close(&self) -> Result<(), SpoolError> {
        match self.take_out_of_service(SpoolError::Closed) {
            Some(opened) => {
                let closed = opened.close();
                release(opened);
                closed
            }
            None => Ok(()),
        }
    }

    /// Replaces the serving opening by `Down { error }`, and returns it.
    fn take_out_of_service(&self, error: SpoolError) -> Option<Arc<Opened>> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let (stats, identity) = match &*state {
            State::Open(opened) => (opened.stats(), opened.identity().cloned()),
            State::Down {
                stats, identity, ..
            } => (*stats, identity.clone()),
        };
        let previous = std::mem::replace(
            &mut *state,
            State::Down {
                error,
                stats,
                identity,
            },
        );
        match previous {
            State::Open(opened) => Some(opened),
            State::Down { .. } => None,
        }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The error that waits for free space, if that is what stopped the
    /// spool (the serving opening failed, or the last reopen did).
    fn waiting_for_space(&self) -> Option<SpoolError> {
        let error = match &*self.read_state() {
            State::Open(opened) => opened.failure()?,
            State::Down { error, .. } => error.clone(),
        };
        error.clears_with_space().then_some(error)
    }

    /// Closes the failed opening (if one still serves) and opens the spool
    /// again. On `Err` no opening serves, and calls get that error.
    fn reopen(&self, stopped_by: SpoolError) -> Result<(), SpoolError> {
        if let Some(failed) = self.take_out_of_service(stopped_by) {
            // Its appends were answered with errors already; what is left
            // to flush cannot be flushed, and the error says so again.
            let _ = failed.close();
            release(failed);
        }
        wait_for_sled_lock(&self.config.dir);
        drop_cached_pages(&self.config.dir);
        match Opened::open(self.config.clone(), self.durable_seq.clone()) {
            Ok(opened) => {
                *self.state.write().unwrap_or_else(|p| p.into_inner()) =
                    State::Open(Arc::new(opened));
                Ok(())
            }
            Err(e) => {
                let _ = self.take_out_of_service(e.clone());
                Err(e)
            }
        }
    }
}

/// Drops the last reference to a closed opening, once every call that
/// still uses it has returned, so that sled closes its files.
fn release(opened: Arc<Opened>) {
    let started = Instant::now();
    let mut logged = false;
    let mut opened = opened;
    loop {
        match Arc::try_unwrap(opened) {
            Ok(last) => return drop(last),
            Err(shared) => opened = shared,
        }
        if !logged && started.elapsed() > SLOW_RELEASE {
            tracing::warn!("waiting for calls that still use the closed spool to return");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until no one holds sled's lock on the `db` file (a closing sled
/// releases it when its last file handle goes; `spool check` holds a
/// shared lock while it copies).
fn wait_for_sled_lock(dir: &Path) {
    let Ok(db) = File::open(dir.join("db")) else {
        return;
    };
    let started = Instant::now();
    let mut logged = false;
    while db.try_lock().is_err() {
        if !logged && started.elapsed() > SLOW_RELEASE {
            tracing::warn!(dir = %dir.display(), "waiting for the spool's lock to reopen it");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = db.unlock();
}

/// Asks the kernel to forget its cached pages of every spool file, so the
/// next opening reads what the disk holds (see the module doc). Advice
/// only: a file it cannot open or advise is left as it is.
fn drop_cached_pages(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => drop_cached_pages(&path),
            Ok(t) if t.is_file() => {
                if let Ok(file) = File::open(&path) {
                    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
                }
            }
            _ => {}
        }
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// When the next reopen may be tried. A disk that fills again right after
/// a reopen should not make the spool re-read its log every second: each
/// try that does not last doubles the wait, up to a minute.
#[derive(Debug)]
pub(crate) struct ReopenPacing {
    wait: Duration,
    last_try: Option<Instant>,
}

/// A reopen that served this long without failing resets the wait.
const LASTED: Duration = Duration::from_secs(600);
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(60);

impl ReopenPacing {
    pub(crate) fn new() -> Self {
        ReopenPacing {
            wait: FIRST_WAIT,
            last_try: None,
        }
    }

    /// Whether a reopen may be tried at `now`; if so, it counts as tried.
    pub(crate) fn try_at(&mut self, now: Instant) -> bool {
        match self.last_try {
            Some(last) if now.duration_since(last) < self.wait => false,
            Some(last) => {
                self.wait = if now.duration_since(last) >= LASTED {
                    FIRST_WAIT
                } else {
                    (self.wait * 2).min(LONGEST_WAIT)
                };
                self.last_try = Some(now);
                true
            }
            None => {
                self.last_try = Some(now);
                true
            }
        }
    }
}

/// The thread that reopens the spool once a full disk has space again.
pub(crate) struct Watcher {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Watcher {
    pub(crate) fn start(core: &Arc<Core>) -> Watcher {
        let (stop, stopped) = mpsc::channel();
        let core = Arc::downgrade(core);
        let thread = std::thread::Builder::new()
            .name("spool-recovery".into())
            .spawn(move || watch_for_space(core, stopped))
            .expect("spawning the spool's recovery thread");
        Watcher { stop, thread }
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn watch_for_space(core: Weak<Core>, stopped: mpsc::Receiver<()>) {
    let mut pacing = ReopenPacing::new();
    let mut last_short_log: Option<Instant> = None;
    loop {
        match stopped.recv_timeout(POLL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(core) = core.upgrade() else { return };
        let Some(stopped_by) = core.waiting_for_space() else {
            continue;
        };
        let free = free_bytes(&core.config.dir).unwrap_or(0);
        if free < SPACE_TO_REOPEN {
            if last_short_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(free, needed = SPACE_TO_REOPEN, dir = %core.config.dir.display(), "spool waits for free space before it reopens");
                last_short_log = Some(Instant::now());
            }
            continue;
        }
        if !pacing.try_at(Instant::now()) {
            continue;
        }
        tracing::info!(free, error = %stopped_by, "the spool's disk has space again: reopening the spool");
        let reopened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.reopen(stopped_by)));
        match reopened {
            Ok(Ok(())) => {
                metrics::gauge!("auditrail_spool_failed").set(0.0);
                metrics::counter!("auditrail_spool_reopens_total").increment(1);
                tracing::info!(
                    last_seq = core.stats().last_seq,
                    "spool reopened: appends are accepted again"
                );
            }
            Ok(Err(e)) if e.clears_with_space() => {
                tracing::warn!(error = %e, "reopening the spool failed; trying again once there is space")
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reopening the spool failed; it stays stopped until auditrail is restarted")
            }
            Err(panic) => {
                let message = failstop::panic_message(&*panic);
                tracing::error!(panic = %message, "reopening the spool panicked; it stays stopped until auditrail is restarted");
                let _ = core.take_out_of_service(SpoolError::Failed {
                    op: crate::FailedOp::Panic {
                        thread: "spool-recovery".into(),
                    },
                    cause: message,
                    recovery: crate::Recovery::Restart,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reopen_is_tried_at_once() {
        let mut pacing = ReopenPacing::new();
        assert!(pacing.try_at(Instant::now()));
    }

    #[test]
    fn reopens_that_do_not_last_wait_longer_each_time_up_to_a_minute() {
        let start = Instant::now();
        let mut pacing = ReopenPacing::new();
        assert!(pacing.try_at(start));
        assert!(!pacing.try_at(start + Duration::from_millis(999)));
        let mut at = start + FIRST_WAIT;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(pacing.try_at(at));
            waits.push(pacing.wait);
            assert!(!pacing.try_at(at + pacing.wait - Duration::from_millis(1)));
            at += pacing.wait;
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_reopen_that_lasted_resets_the_wait() {
        let start = Instant::now();
        let mut pacing = ReopenPacing::new();
        assert!(pacing.try_at(start));
        assert!(pacing.try_at(start + Duration::from_secs(1)));
        assert!(pacing.try_at(start + Duration::from_secs(3)));
        assert_eq!(pacing.wait, Duration::from_secs(4));
        assert!(pacing.try_at(start + Duration::from_secs(3) + LASTED));
        assert_eq!(pacing.wait, FIRST_WAIT);
    }
}
