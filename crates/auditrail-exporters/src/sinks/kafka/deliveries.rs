//! Which events this producer has already handed to librdkafka, so that the
//! delivery loop sending a batch again produces nothing twice.
//!
//! The idempotent producer deduplicates only its *own* retries of a
//! message. The delivery loop retries at a higher level: an export that has
//! not answered within `[sinks.delivery] timeout` (a broker down for a
//! while) is dropped and the batch sent again, and a batch with a poison
//! record is split and its halves sent again. Producing those events anew
//! would add copies behind the ones librdkafka still holds or has already
//! delivered. So an event is produced once per process: a resend waits for
//! the first produce's delivery report instead, and an event delivered
//! lately is skipped. Only a failed delivery is produced again.
//!
//! What is remembered is bounded: events in flight (at most the batches in
//! flight, which the delivery loop bounds) and the last [`REMEMBERED`]
//! delivered ones. A crash forgets it all, which is why a restart can
//! produce duplicates (see docs/sinks.md).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};

/// Delivered events remembered: more than a few batches of the largest
/// size, so a split batch or a timed-out one skips what got through.
pub const REMEMBERED: usize = 200_000;

/// An event: the spool's `(node, seq)`, which names it uniquely.
pub type Key = (String, u64);

/// What librdkafka said about one message, shareable between an export
/// and its retries.
pub type Report = Result<(), Failure>;

/// A failed delivery report.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: Option<rdkafka::error::RDKafkaErrorCode>,
    pub message: String,
}

pub type Pending = Shared<BoxFuture<'static, Report>>;

/// What to do about one event of a batch.
pub enum Step {
    /// Delivered lately: nothing to do.
    Delivered,
    /// Produced already and not reported yet: wait for this.
    InFlight(Pending),
    /// Produce it.
    Produce,
}

#[derive(Default)]
struct State {
    pending: HashMap<Key, Pending>,
    delivered: HashSet<Key>,
    /// `delivered` in insertion order, to forget the oldest.
    order: VecDeque<Key>,
}

#[derive(Default)]
pub struct Deliveries {
    state: Mutex<State>,
}

impl Deliveries {
    pub fn step(&self, key: &Key) -> Step {
        let state = self.state.lock().unwrap();
        if state.delivered.contains(key) {
            Step::Delivered
        } else if let Some(pending) = state.pending.get(key) {
            Step::InFlight(pending.clone())
        } else {
            Step::Produce
        }
    }

    /// Records a message just handed to librdkafka.
    pub fn produced(&self, key: Key, pending: Pending) {
        self.state.lock().unwrap().pending.insert(key, pending);
    }

    /// Records the report of `pending` (which whoever awaited it calls):
    /// a delivered event is remembered, a failed one forgotten so that the
    /// next attempt produces it again.
    pub fn reported(&self, key: &Key, pending: &Pending, report: &Report) {
        let mut state = self.state.lock().unwrap();
        // Only the entry this report belongs to: a newer produce of the
        // same event (after this one failed) has its own.
        if !state.pending.get(key).is_some_and(|p| p.ptr_eq(pending)) {
            return;
        }
        state.pending.remove(key);
        if report.is_ok() && state.delivered.insert(key.clone()) {
            state.order.push_back(key.clone());
            while state.order.len() > REMEMBERED {
                if let Some(old) = state.order.pop_front() {
                    state.delivered.remove(&old);
                }
            }
        }
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.pending.len(), state.delivered.len())
    }
}

/// A delivery report future, made shareable.
pub fn share(report: impl std::future::Future<Output = Report> + Send + 'static) -> Pending {
    report.boxed().shared()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> Key {
        ("n1".into(), seq)
    }

    #[tokio::test]
    async fn a_resend_waits_for_the_first_produce_and_then_skips() {
        let d = Deliveries::default();
        assert!(matches!(d.step(&key(1)), Step::Produce));
        let (tx, rx) = tokio::sync::oneshot::channel::<Report>();
        let pending = share(async move { rx.await.unwrap() });
        d.produced(key(1), pending.clone());
        let Step::InFlight(again) = d.step(&key(1)) else {
            panic!("in flight")
        };
        tx.send(Ok(())).unwrap();
        let report = again.clone().await;
        d.reported(&key(1), &again, &report);
        assert!(matches!(d.step(&key(1)), Step::Delivered));
        // The first export, awaiting later, changes nothing.
        d.reported(&key(1), &pending, &report);
        assert_eq!(d.sizes(), (0, 1));
    }

    #[tokio::test]
    async fn a_failed_delivery_is_produced_again() {
        let d = Deliveries::default();
        let pending = share(async {
            Err(Failure {
                code: None,
                message: "timed out".into(),
            })
        });
        d.produced(key(2), pending.clone());
        let report = pending.clone().await;
        d.reported(&key(2), &pending, &report);
        assert!(matches!(d.step(&key(2)), Step::Produce));
        assert_eq!(d.sizes(), (0, 0));
    }

    #[tokio::test]
    async fn only_the_last_delivered_are_remembered() {
        let d = Deliveries::default();
        for seq in 0..(REMEMBERED as u64 + 10) {
            let pending = share(async { Ok(()) });
            d.produced(key(seq), pending.clone());
            d.reported(&key(seq), &pending, &Ok(()));
        }
        assert_eq!(d.sizes(), (0, REMEMBERED));
        assert!(matches!(d.step(&key(0)), Step::Produce));
        assert!(matches!(
            d.step(&key(REMEMBERED as u64 + 9)),
            Step::Delivered
        ));
    }
}
