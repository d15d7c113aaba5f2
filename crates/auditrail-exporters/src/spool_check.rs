//! The spool and its sinks agree on seqs before anything is delivered.
//!
//! Sinks make writes idempotent by `(node, seq)`, which is only safe while a
//! seq names one event for good. Two ways that breaks, and what happens:
//!
//! * **A new spool** (first start, or the spool directory was wiped) would
//!   start at seq 1 again, and every sink would discard its events as
//!   re-sends of old rows. So before the receivers open, every sink is
//!   asked for the highest seq of this node it holds, and the spool's seqs
//!   (and a new hash chain) start after the highest answer. A sink that
//!   cannot answer stops the start: guessing could lose events silently.
//! * **An existing spool behind a sink** (restored from an older copy, or a
//!   second instance with the same node id) would have its next events
//!   discarded the same way. A sink that holds a higher seq than the spool
//!   ever assigned is [`ErrorClass::Misconfigured`]: fatal at start-up when
//!   the sink answers then, else the sink shows failing with that message
//!   (and delivers nothing) from the moment it is reachable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use auditrail_spool::Spool;

use crate::delivery::StartError;
use crate::{ErrorClass, ExportError, Exporter, SinkConfig};

/// What a sink knows about the seqs of one node ([`Exporter::highest_seq`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldSeq {
    /// The sink does not key rows by `(node, seq)` (a legacy table without
    /// such columns, a stream), so it cannot discard an event by its seq.
    NotTracked,
    /// The highest seq it holds; 0 when it holds none of this node.
    Highest(u64),
}

/// A sink as [`crate::Pipeline::start`] prepared it: its config, exporter,
/// and whether `prepare` succeeded (the error if not).
pub(crate) type PreparedSink<'a> = (&'a SinkConfig, Arc<dyn Exporter>, Result<(), ExportError>);

/// Decides a new spool's first seq, or checks an existing spool against
/// every sink. Runs before any cursor is registered and before the
/// receivers open.
pub(crate) async fn reconcile(
    spool: &Arc<Spool>,
    prepared: &mut [PreparedSink<'_>],
) -> Result<(), StartError> {
    let node = spool.node().to_owned();
    if spool.identity().is_some() {
        return check_existing(spool, &node, prepared).await;
    }
    let mut after = 0;
    for (config, exporter, outcome) in prepared.iter() {
        let held = match outcome {
            Ok(()) => ask(config, exporter.as_ref(), &node).await,
            Err(e) => Err(e.clone()),
        };
        match held {
            Ok(HeldSeq::Highest(highest)) => {
                if highest > 0 {
                    tracing::info!(sink = %config.name, node, highest, "the sink already holds events of this node; the new spool's seqs start after them");
                }
                after = after.max(highest);
            }
            Ok(HeldSeq::NotTracked) => {}
            Err(error) => {
                return Err(StartError::NewSpool {
                    name: config.name.clone(),
                    kind: config.kind.type_name(),
                    node,
                    error,
                })
            }
        }
    }
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || spool.start_new(after))
        .await
        .map_err(|e| StartError::Spool(auditrail_spool::SpoolError::Storage(e.to_string())))??;
    Ok(())
}

async fn check_existing(
    spool: &Spool,
    node: &str,
    prepared: &mut [PreparedSink<'_>],
) -> Result<(), StartError> {
    // Before the receivers open: everything this spool ever assigned.
    let assigned = spool.stats().last_seq;
    let spool_id = spool
        .identity()
        .map(|i| i.spool_id.clone())
        .unwrap_or_default();
    for (config, exporter, outcome) in prepared.iter_mut() {
        let sink_error = |error| StartError::Sink {
            name: config.name.clone(),
            kind: config.kind.type_name(),
            error,
        };
        if outcome.is_ok() {
            match ask(config, exporter.as_ref(), node).await {
                Ok(held) => {
                    conflict(held, assigned, node, &spool_id).map_err(sink_error)?;
                    continue;
                }
                Err(e) if e.class == ErrorClass::Misconfigured => return Err(sink_error(e)),
                Err(e) => {
                    tracing::warn!(sink = %config.name, error = %e, "could not ask the sink which seqs it holds; it is asked again before it delivers");
                    *outcome = Err(e);
                }
            }
        }
        // Not checked yet: the check runs with the sink's first successful
        // prepare, before it delivers anything.
        *exporter = Arc::new(Checked {
            inner: exporter.clone(),
            node: node.to_owned(),
            assigned,
            spool_id: spool_id.clone(),
            checked: AtomicBool::new(false),
        });
    }
    Ok(())
}

async fn ask(
    config: &SinkConfig,
    exporter: &dyn Exporter,
    node: &str,
) -> Result<HeldSeq, ExportError> {
    let timeout = config.delivery.timeout;
    tokio::time::timeout(timeout, exporter.highest_seq(node))
        .await
        .unwrap_or_else(|_| {
            Err(ExportError::retryable(
                "timeout",
                format!("no answer within {timeout:?}"),
            ))
        })
}

/// `Err` when the sink holds seqs of `node` that this spool never
/// assigned: its next events would be discarded as duplicates.
fn conflict(held: HeldSeq, assigned: u64, node: &str, spool_id: &str) -> Result<(), ExportError> {
    match held {
        HeldSeq::Highest(highest) if highest > assigned => Err(ExportError::misconfigured(
            "spool_identity",
            format!(
                "the destination holds events of node {node:?} up to seq {highest}, but this spool (id {spool_id}) \
                 has assigned seqs only up to {assigned}: it was restored from an older copy, or another auditrail \
                 instance uses node id {node:?}. Its next events (seq {}..={highest}) would be discarded as duplicates \
                 of those rows, so this sink delivers nothing. Give every instance its own [node] id; for a restored \
                 spool see docs/sinks.md (\"Spool identity\")",
                assigned + 1
            ),
        )),
        _ => Ok(()),
    }
}

/// An exporter whose first successful prepare also runs the check, for a
/// sink that could not be asked at start-up.
struct Checked {
    inner: Arc<dyn Exporter>,
    node: String,
    assigned: u64,
    spool_id: String,
    /// Once passed, never again: afterwards the sink holds seqs this
    /// process delivered, which are rightly above `assigned`.
    checked: AtomicBool,
}

#[async_trait]
impl Exporter for Checked {
    async fn prepare(&self) -> Result<(), ExportError> {
        self.inner.prepare().await?;
        if !self.checked.load(Ordering::Acquire) {
            let held = self.inner.highest_seq(&self.node).await?;
            conflict(held, self.assigned, &self.node, &self.spool_id)?;
            self.checked.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        self.inner.export(events).await
    }

    async fn maintain(&self, now: SystemTime) -> Result<(), ExportError> {
        self.inner.maintain(now).await
    }

    fn maintenance_interval(&self) -> Option<Duration> {
        self.inner.maintenance_interval()
    }

    async fn highest_seq(&self, node: &str) -> Result<HeldSeq, ExportError> {
        self.inner.highest_seq(node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sink_ahead_of_the_spool_conflicts() {
        for (held, assigned) in [
            (HeldSeq::NotTracked, 0),
            (HeldSeq::Highest(0), 0),
            (HeldSeq::Highest(10), 10),
            (HeldSeq::Highest(9), 10),
        ] {
            assert!(
                conflict(held, assigned, "n", "id").is_ok(),
                "{held:?} {assigned}"
            );
        }
        let error = conflict(HeldSeq::Highest(150), 100, "node-a", "ab12").unwrap_err();
        assert_eq!(error.class, ErrorClass::Misconfigured);
        assert_eq!(error.kind, "spool_identity");
        for part in [
            "node \"node-a\" up to seq 150",
            "only up to 100",
            "(seq 101..=150)",
            "ab12",
        ] {
            assert!(error.message.contains(part), "{part}: {}", error.message);
        }
    }

    /// A sink that answers `held` and counts its prepares.
    struct Fixed {
        held: HeldSeq,
        prepares: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Exporter for Fixed {
        async fn prepare(&self) -> Result<(), ExportError> {
            self.prepares.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        async fn export(&self, _: &[AuditEvent]) -> Result<(), ExportError> {
            Ok(())
        }
        async fn highest_seq(&self, _: &str) -> Result<HeldSeq, ExportError> {
            Ok(self.held)
        }
    }

    fn checked(held: HeldSeq, assigned: u64) -> Checked {
        Checked {
            inner: Arc::new(Fixed {
                held,
                prepares: Default::default(),
            }),
            node: "n".into(),
            assigned,
            spool_id: "id".into(),
            checked: AtomicBool::new(false),
        }
    }

    #[tokio::test]
    async fn a_late_check_fails_every_prepare_while_the_sink_is_ahead() {
        let sink = checked(HeldSeq::Highest(50), 20);
        for _ in 0..2 {
            let error = sink.prepare().await.unwrap_err();
            assert_eq!(error.class, ErrorClass::Misconfigured);
        }
    }

    #[tokio::test]
    async fn a_passed_check_is_not_repeated() {
        let sink = checked(HeldSeq::Highest(20), 20);
        sink.prepare().await.unwrap();
        assert!(sink.checked.load(Ordering::Acquire));
        // Later the sink holds what this process delivered: still fine.
        sink.prepare().await.unwrap();
    }
}
