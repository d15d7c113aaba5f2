//! Destinations that confirm a write only later: Splunk HEC with indexer
//! acknowledgement answers a batch with an ack id at once, and says only
//! later, when asked, whether the batch reached the indexers.
//!
//! Such a sink answers [`Exporter::send`](crate::Exporter::send) with
//! [`Sent::Awaiting`] and implements
//! [`Exporter::acknowledged`](crate::Exporter::acknowledged). The delivery
//! loop then frees the batch's sending slot (the next batch goes out while
//! this one waits), and one [`AckTracker`] per sink asks the destination
//! about every waiting id at once, every [`AckPolicy::poll_interval`]. A
//! batch counts as delivered, and the cursor may pass it, only when its id
//! is acknowledged; one that is not within [`AckPolicy::timeout`] is sent
//! again, never taken as delivered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// The destination's id for a batch it has yet to confirm.
pub type AckId = u64;

/// What a send achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The destination holds the batch: it is delivered.
    Stored,
    /// The destination took the batch and will say later whether it kept
    /// it: ask about this id.
    Awaiting(AckId),
}

/// How a sink that confirms later is to be waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// A batch not acknowledged within this long after it was sent is sent
    /// again.
    pub timeout: Duration,
    /// How often the waiting ids are asked about.
    pub poll_interval: Duration,
    /// At most this many batches wait for their acknowledgement at once,
    /// besides the ones being sent: it bounds what is held in memory.
    pub max_pending: usize,
}

/// The batches of one sink that wait for their acknowledgement.
#[derive(Default)]
pub(crate) struct AckTracker {
    waiting: Mutex<HashMap<AckId, oneshot::Sender<()>>>,
    added: Notify,
}

impl AckTracker {
    /// Starts waiting for `id`; the receiver resolves once it is
    /// acknowledged.
    pub fn wait_for(&self, id: AckId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("ack lock").insert(id, tx);
        self.added.notify_one();
        rx
    }

    /// Stops waiting for `id` (it timed out and its batch is sent again).
    pub fn forget(&self, id: AckId) {
        self.waiting.lock().expect("ack lock").remove(&id);
    }

    /// The ids waited for, in order; waits while there are none.
    pub async fn waiting(&self) -> Vec<AckId> {
        loop {
            let notified = self.added.notified();
            {
                let mut waiting = self.waiting.lock().expect("ack lock");
                // A wait whose batch task is gone (delivery restarted from
                // the cursor) is not asked about any more.
                waiting.retain(|_, tx| !tx.is_closed());
                if !waiting.is_empty() {
                    let mut ids: Vec<AckId> = waiting.keys().copied().collect();
                    ids.sort_unstable();
                    return ids;
                }
            }
            notified.await;
        }
    }

    /// Resolves the waits of `acknowledged`; ids not waited for (any
    /// more) are ignored. Returns how many waits it resolved.
    pub fn acknowledged(&self, acknowledged: &[AckId]) -> usize {
        let mut waiting = self.waiting.lock().expect("ack lock");
        acknowledged
            .iter()
            .filter_map(|id| waiting.remove(id))
            .map(|tx| {
                // The batch task may have timed out meanwhile; then the
                // resend decides.
                let _ = tx.send(());
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_acknowledged_id_resolves_its_wait_and_no_other() {
        let tracker = AckTracker::default();
        let mut first = tracker.wait_for(7);
        let second = tracker.wait_for(8);
        assert_eq!(tracker.waiting().await, [7, 8]);
        assert_eq!(tracker.acknowledged(&[8, 99]), 1, "99 was never waited for");
        second.await.expect("8 acknowledged");
        assert!(first.try_recv().is_err(), "7 is still waiting");
        assert_eq!(tracker.waiting().await, [7]);
    }

    #[tokio::test]
    async fn a_wait_whose_task_is_gone_is_not_asked_about() {
        let tracker = AckTracker::default();
        drop(tracker.wait_for(3));
        let _kept = tracker.wait_for(4);
        assert_eq!(tracker.waiting().await, [4]);
    }

    #[tokio::test]
    async fn a_forgotten_id_is_not_asked_about_and_its_late_ack_is_ignored() {
        let tracker = AckTracker::default();
        let wait = tracker.wait_for(1);
        tracker.forget(1);
        assert_eq!(tracker.acknowledged(&[1]), 0);
        assert!(wait.await.is_err(), "its wait ends without an ack");
        // With nothing waiting, `waiting` blocks until an id is added.
        let pending = tokio::time::timeout(Duration::from_millis(50), tracker.waiting()).await;
        assert!(pending.is_err());
    }
}
