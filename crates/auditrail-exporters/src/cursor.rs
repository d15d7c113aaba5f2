//! The cursor's arithmetic: which seq a sink may acknowledge, given batches
//! that finish in any order.
//!
//! This is the heart of "nothing lost": the spool's cursor for a sink says
//! "every event up to here is stored by the sink", and retention and a
//! restart both trust it. So the cursor may only move over a gap-free
//! prefix of confirmed batches: a batch confirmed while an earlier one is
//! still in flight waits until the earlier one is confirmed too.
//!
//! Batches are ordered by dispatch, not by seq arithmetic (`first ==
//! cursor + 1`): a seq that was never read (none exists) cannot hold the
//! cursor back, and an unconfirmed batch always does.

use std::collections::BTreeMap;

/// The batches a delivery loop has sent and not yet acknowledged, and the
/// cursor they allow.
#[derive(Debug, Clone)]
pub struct AckWindow {
    cursor: u64,
    /// First seq → (last seq, confirmed), of every batch dispatched and
    /// not yet passed by the cursor, in dispatch (= seq) order.
    batches: BTreeMap<u64, (u64, bool)>,
}

impl AckWindow {
    /// A window whose cursor starts at `cursor` (the durable cursor after a
    /// start or a restart): nothing after it is confirmed.
    pub fn new(cursor: u64) -> Self {
        AckWindow {
            cursor,
            batches: BTreeMap::new(),
        }
    }

    /// Everything up to here is confirmed; no event after it is assumed
    /// to be.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The last seq dispatched so far (the cursor when nothing is out).
    pub fn dispatched_to(&self) -> u64 {
        self.batches
            .last_key_value()
            .map_or(self.cursor, |(_, (last, _))| *last)
    }

    /// Batches sent and not yet passed by the cursor.
    pub fn outstanding(&self) -> usize {
        self.batches.len()
    }

    /// A batch of the seqs `first..=last` was sent.
    ///
    /// # Panics
    ///
    /// When the batch does not come after everything dispatched before
    /// (`first` must exceed [`AckWindow::dispatched_to`], and `first <=
    /// last`): the loop reads the spool in seq order, so anything else is a
    /// bug that would let the cursor skip events.
    pub fn dispatched(&mut self, first: u64, last: u64) {
        assert!(
            first <= last && first > self.dispatched_to(),
            "batch {first}-{last} dispatched out of order (dispatched up to {})",
            self.dispatched_to()
        );
        self.batches.insert(first, (last, false));
    }

    /// The batch that starts at `first` was confirmed by the sink. Returns
    /// the new cursor when it moved, which is when this batch and every one
    /// dispatched before it are confirmed. A `first` that names no
    /// outstanding batch (a stale report) changes nothing.
    pub fn confirmed(&mut self, first: u64) -> Option<u64> {
        let (_, done) = self.batches.get_mut(&first)?;
        *done = true;
        let before = self.cursor;
        while let Some(entry) = self.batches.first_entry() {
            let (last, done) = *entry.get();
            if !done {
                break;
            }
            entry.remove();
            self.cursor = last;
        }
        (self.cursor != before).then_some(self.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn waits_for_the_earlier_batch() {
        let mut window = AckWindow::new(10);
        window.dispatched(11, 20);
        window.dispatched(21, 30);
        assert_eq!(window.confirmed(21), None);
        assert_eq!(window.cursor(), 10);
        assert_eq!(window.confirmed(11), Some(30));
        assert_eq!(window.outstanding(), 0);
    }

    #[test]
    fn a_stale_or_repeated_confirmation_changes_nothing() {
        let mut window = AckWindow::new(0);
        window.dispatched(1, 5);
        assert_eq!(window.confirmed(3), None);
        assert_eq!(window.confirmed(1), Some(5));
        assert_eq!(window.confirmed(1), None);
        assert_eq!(window.cursor(), 5);
    }

    #[test]
    fn seqs_never_read_do_not_hold_the_cursor() {
        let mut window = AckWindow::new(0);
        window.dispatched(4, 6);
        assert_eq!(window.confirmed(4), Some(6));
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn overlapping_dispatch_is_a_bug() {
        let mut window = AckWindow::new(0);
        window.dispatched(1, 5);
        window.dispatched(5, 8);
    }

    /// One step of a delivery loop's life, as the property test drives it.
    #[derive(Debug, Clone)]
    enum Step {
        /// Cut the next batch of up to this many events.
        Dispatch(usize),
        /// The sink confirms the n-th outstanding batch (mod how many).
        Confirm(usize),
        /// The n-th outstanding batch fails for good: it is never
        /// confirmed in this life of the loop.
        Fail(usize),
        /// The cursor is made durable.
        Flush,
        /// A crash: a new window from the durable cursor, everything in
        /// flight is lost and is sent again.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1usize..8).prop_map(Step::Dispatch),
            4 => any::<usize>().prop_map(Step::Confirm),
            1 => any::<usize>().prop_map(Step::Fail),
            1 => Just(Step::Flush),
            1 => Just(Step::Restart),
        ]
    }

    /// A delivery loop over `seqs` with a sink that stores what it is
    /// sent, for the property test.
    struct Model {
        seqs: Vec<u64>,
        window: AckWindow,
        durable: u64,
        /// Outstanding batches: first seq, their seqs, failed for good.
        out: Vec<(u64, Vec<u64>, bool)>,
        /// What the sink has stored (in any life).
        stored: BTreeSet<u64>,
    }

    impl Model {
        fn new(seqs: Vec<u64>) -> Self {
            Model {
                seqs,
                window: AckWindow::new(0),
                durable: 0,
                out: Vec::new(),
                stored: BTreeSet::new(),
            }
        }

        fn dispatch(&mut self, size: usize) {
            let from = self.window.dispatched_to();
            let batch: Vec<u64> = self
                .seqs
                .iter()
                .copied()
                .filter(|s| *s > from)
                .take(size)
                .collect();
            if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                self.window.dispatched(*first, *last);
                self.out.push((*first, batch, false));
            }
        }

        fn confirm(&mut self, pick: usize) {
            let live: Vec<usize> = (0..self.out.len()).filter(|i| !self.out[*i].2).collect();
            if live.is_empty() {
                return;
            }
            let (first, seqs, _) = self.out.remove(live[pick % live.len()]);
            self.stored.extend(seqs);
            self.window.confirmed(first);
        }

        fn step(&mut self, step: &Step) {
            match step {
                Step::Dispatch(size) => self.dispatch(*size),
                Step::Confirm(pick) => self.confirm(*pick),
                Step::Fail(pick) => {
                    if !self.out.is_empty() {
                        let len = self.out.len();
                        self.out[pick % len].2 = true;
                    }
                }
                Step::Flush => self.durable = self.window.cursor(),
                Step::Restart => {
                    self.window = AckWindow::new(self.durable);
                    self.out.clear();
                }
            }
        }

        /// The cursor never passes an event the sink has not stored.
        fn check(&self) -> Result<(), TestCaseError> {
            for cursor in [self.window.cursor(), self.durable] {
                for seq in self.seqs.iter().take_while(|s| **s <= cursor) {
                    prop_assert!(
                        self.stored.contains(seq),
                        "cursor {} passed seq {} that no sink confirmed",
                        cursor,
                        seq
                    );
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_cursor_never_passes_an_unconfirmed_event_and_reaches_the_end(
            gaps in proptest::collection::vec(1u64..3, 1..60),
            steps in proptest::collection::vec(step(), 0..120),
        ) {
            // Seqs with occasional holes (seqs never read), in order.
            let seqs: Vec<u64> = gaps
                .iter()
                .scan(0u64, |seq, gap| {
                    *seq += gap;
                    Some(*seq)
                })
                .collect();
            let end = *seqs.last().expect("at least one seq");
            let mut model = Model::new(seqs);
            for step in &steps {
                model.step(step);
                model.check()?;
            }
            // Then the failures heal (a restart sends the failed batches
            // again) and everything is confirmed, in any order.
            model.step(&Step::Restart);
            let mut pick = 0usize;
            while model.window.cursor() < end {
                model.dispatch(3);
                pick = pick.wrapping_mul(31).wrapping_add(7);
                model.confirm(pick);
                model.check()?;
            }
            while !model.out.is_empty() {
                model.confirm(0);
            }
            prop_assert_eq!(model.window.cursor(), end);
            prop_assert_eq!(model.window.outstanding(), 0);
        }
    }
}
