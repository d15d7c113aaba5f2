//! Fail-stop: after a failed fsync or write, or a panic in one of its
//! threads, the spool takes no more writes on that opening of sled.
//!
//! Most failures hold until auditrail restarts. One clears by itself: a
//! full disk (ENOSPC, EDQUOT). Then the spool reopens once there is space
//! again, which is the same as a restart of the spool (see `recovery.rs`).
//!
//! Why not retry: after a failed fsync the kernel may already have dropped
//! the dirty pages, or marked them clean, so a second fsync can "succeed"
//! with the data gone (PostgreSQL's lesson of 2018). The appends the failed
//! flush covered get errors, and every later append is refused, so no event
//! of the failed flush can be acknowledged later, not even as a "duplicate"
//! of itself (its dedup key was taken when it was written). A restart
//! rebuilds the dedup set from what sled reads back, after syncing it all.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::SpoolError;

/// What stopped the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailedOp {
    /// Making written data durable failed (sled's flush, an fsync or an
    /// fdatasync).
    Fsync,
    /// Writing to sled failed (an insert, e.g. with ENOSPC): sled keeps an
    /// I/O error for the rest of the process, so no later write can work.
    Write,
    /// A spool thread panicked.
    Panic { thread: String },
}

impl fmt::Display for FailedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailedOp::Fsync => f.write_str("fsync"),
            FailedOp::Write => f.write_str("write"),
            FailedOp::Panic { thread } => write!(f, "panic in thread {thread}"),
        }
    }
}

impl FailedOp {
    fn metric_label(&self) -> &'static str {
        match self {
            FailedOp::Fsync => "fsync",
            FailedOp::Write => "write",
            FailedOp::Panic { .. } => "panic",
        }
    }
}

/// What clears a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// Only a restart of auditrail: the device failed in a way an operator
    /// must look at (EIO, a panic), and retrying would hide it.
    Restart,
    /// The disk was full: the spool reopens by itself once there is space.
    WhenSpaceFrees,
}

impl Recovery {
    /// How an I/O error of this kind clears.
    pub fn of_kind(kind: io::ErrorKind) -> Recovery {
        match kind {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Recovery::WhenSpaceFrees,
            _ => Recovery::Restart,
        }
    }

    pub(crate) fn of_sled(error: &sled::Error) -> Recovery {
        match error {
            sled::Error::Io(e) => Recovery::of_kind(e.kind()),
            _ => Recovery::Restart,
        }
    }

    /// How a spool error raised by a write clears.
    pub(crate) fn of_error(error: &SpoolError) -> Recovery {
        match error {
            SpoolError::NoSpace(_) => Recovery::WhenSpaceFrees,
            SpoolError::Failed { recovery, .. } => *recovery,
            _ => Recovery::Restart,
        }
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Recovery::Restart => {
                "it refuses appends until auditrail is restarted (check the disk and the logs first)"
            }
            Recovery::WhenSpaceFrees => {
                "the disk is full: it refuses appends until there is space again, then reopens by itself"
            }
        })
    }
}

/// The spool's failure, set once.
#[derive(Default)]
pub(crate) struct FailStop {
    cause: OnceLock<SpoolError>,
}

impl FailStop {
    /// `Err` (the first failure) once the spool has stopped.
    pub(crate) fn check(&self) -> Result<(), SpoolError> {
        match self.cause.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn error(&self) -> Option<SpoolError> {
        self.cause.get().cloned()
    }

    /// Stops the spool (the first cause is the one kept and reported) and
    /// returns the error every covered and later append gets.
    pub(crate) fn fail(
        &self,
        op: FailedOp,
        cause: impl fmt::Display,
        recovery: Recovery,
    ) -> SpoolError {
        let error = SpoolError::Failed {
            op: op.clone(),
            cause: cause.to_string(),
            recovery,
        };
        metrics::counter!("auditrail_spool_errors_total", "op" => op.metric_label()).increment(1);
        if self.cause.set(error.clone()).is_ok() {
            metrics::gauge!("auditrail_spool_failed").set(1.0);
            tracing::error!(%error, "spool stopped");
        } else {
            tracing::error!(%error, "spool failed again (already stopped)");
        }
        self.error().unwrap_or(error)
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Locks a spool mutex even if a panicking thread poisoned it: that panic
/// has stopped the spool for writes already, and what these locks guard
/// (the dedup set, timers, the sync barrier) stays usable for reads,
/// retention and close.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept() {
        let stop = FailStop::default();
        assert!(stop.check().is_ok());
        let first = stop.fail(FailedOp::Fsync, "EIO", Recovery::Restart);
        let again = stop.fail(
            FailedOp::Panic {
                thread: "spool-writer".into(),
            },
            "boom",
            Recovery::Restart,
        );
        assert_eq!(first.to_string(), again.to_string());
        match stop.check() {
            Err(SpoolError::Failed {
                op: FailedOp::Fsync,
                cause,
                recovery: Recovery::Restart,
            }) => assert_eq!(cause, "EIO"),
            other => panic!("expected the fsync failure, got {other:?}"),
        }
    }

    #[test]
    fn a_poisoned_lock_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 1);
    }

    fn event(id: &str) -> auditrail_model::AuditEvent {
        auditrail_model::AuditEvent {
            event_id: id.into(),
            body: format!("body of {id}"),
            ..Default::default()
        }
    }

    fn expect_failed<T: std::fmt::Debug>(result: Result<T, SpoolError>, want: &FailedOp) {
        match result {
            Err(SpoolError::Failed { op, .. }) => assert_eq!(&op, want),
            other => panic!("expected Failed({want}), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_sync_answers_errors_and_refuses_even_resends() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::Spool::open(crate::SpoolConfig::new(dir.path(), "n")).unwrap();
        spool.append(vec![event("before")]).await.unwrap();

        lock(&spool.current().unwrap().shared.barrier).inject_failure = Some(io::ErrorKind::Other);
        expect_failed(spool.append(vec![event("covered")]).await, &FailedOp::Fsync);
        // The resend of the covered event is not a "duplicate": refused.
        expect_failed(spool.append(vec![event("covered")]).await, &FailedOp::Fsync);
        // Nor is a resend of an event made durable before the failure.
        expect_failed(spool.append(vec![event("before")]).await, &FailedOp::Fsync);
        expect_failed(spool.check_accepting(), &FailedOp::Fsync);
        expect_failed(spool.flush(), &FailedOp::Fsync);
        // Only what was durable is readable by sinks.
        assert_eq!(spool.durable_seq(), 1);
        drop(spool);

        // A restart takes appends again.
        let spool = loop {
            match crate::Spool::open(crate::SpoolConfig::new(dir.path(), "n")) {
                Ok(spool) => break spool,
                Err(SpoolError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        spool.check_accepting().unwrap();
        let again = spool.append(vec![event("after")]).await.unwrap();
        assert_eq!(again.stored, 1);
    }

    #[tokio::test]
    async fn a_full_disk_stops_the_spool_until_it_reopens_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::Spool::open(crate::SpoolConfig::new(dir.path(), "n")).unwrap();
        let mut durable = spool.subscribe_durable();
        spool.append(vec![event("before")]).await.unwrap();

        lock(&spool.current().unwrap().shared.barrier).inject_failure =
            Some(io::ErrorKind::StorageFull);
        let refused = spool.append(vec![event("covered")]).await.unwrap_err();
        assert!(refused.clears_with_space(), "{refused}");
        assert!(
            refused.to_string().contains("reopens by itself"),
            "{refused}"
        );
        expect_failed(spool.append(vec![event("covered")]).await, &FailedOp::Fsync);
        assert_eq!(spool.durable_seq(), 1, "only what was durable is readable");
        // Reads go on from the failed opening while the disk is full.
        assert_eq!(spool.read(0, 10).unwrap().len(), 1);

        // The tempdir has space: the watcher reopens within its poll.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while spool.check_accepting().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "never reopened: {:?}",
                spool.check_accepting()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // sled wrote "covered" before the injected barrier failure; the
        // reopen read it back and synced it, so the resend is a duplicate
        // now, and durable.
        let resent = spool.append(vec![event("covered")]).await.unwrap();
        assert_eq!((resent.stored, resent.duplicates), (0, 1));
        let after = spool.append(vec![event("after")]).await.unwrap();
        assert_eq!(after.seqs, [3]);
        assert_eq!(spool.durable_seq(), 3);
        // A sink's watch lives across the reopen.
        durable.changed().await.unwrap();
        assert_eq!(*durable.borrow_and_update(), 3);
        let seqs: Vec<u64> = spool.read(0, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(spool.verify(None).unwrap().is_intact());
    }

    #[tokio::test]
    async fn an_io_error_is_not_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::Spool::open(crate::SpoolConfig::new(dir.path(), "n")).unwrap();
        lock(&spool.current().unwrap().shared.barrier).inject_failure = Some(io::ErrorKind::Other);
        let refused = spool.append(vec![event("covered")]).await.unwrap_err();
        assert!(!refused.clears_with_space());
        // Three of the watcher's polls: still stopped.
        tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
        expect_failed(spool.check_accepting(), &FailedOp::Fsync);
    }

    #[tokio::test]
    async fn a_panicking_spool_thread_stops_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::Spool::open(crate::SpoolConfig::new(dir.path(), "n")).unwrap();
        crate::opened::spawn("spool-test", &spool.current().unwrap().shared, || {
            panic!("injected")
        })
        .join()
        .unwrap();
        let want = FailedOp::Panic {
            thread: "spool-test".into(),
        };
        expect_failed(spool.check_accepting(), &want);
        expect_failed(spool.append(vec![event("x")]).await, &want);
    }

    #[tokio::test]
    async fn an_append_held_by_a_panicking_thread_gets_an_error() {
        let (sender, answer) = tokio::sync::oneshot::channel();
        let reply = crate::writer::Reply::new(sender);
        let _ = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                let _held = reply;
                panic!("injected");
            })
            .unwrap()
            .join();
        expect_failed(
            answer.await.unwrap(),
            &FailedOp::Panic {
                thread: "spool-writer".into(),
            },
        );
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let e = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*e), "static");
        let e = std::panic::catch_unwind(|| panic!("formatted {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*e), "formatted 1");
    }
}
