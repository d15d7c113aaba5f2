//! Sorting a batch by a destination's per-record answer
//! ([`ErrorClass::Partial`](crate::ErrorClass::Partial)): what was stored,
//! what is to be sent again, what goes to the dead letters.

use auditrail_model::AuditEvent;

use crate::RecordOutcome;

/// A batch sorted by what the destination said of each of its records.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SortedBatch {
    /// The records stored, in their batch order.
    pub stored: Vec<AuditEvent>,
    /// The records to send again, in their batch order.
    pub retry: Vec<AuditEvent>,
    /// The records refused for what they hold, with the reason.
    pub rejected: Vec<(AuditEvent, String)>,
}

/// The answer did not name every record once: a sink bug, and the batch
/// cannot be sorted by it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the destination answered for {answered} records of a batch of {sent}")]
pub(crate) struct OutcomeCountMismatch {
    pub sent: usize,
    pub answered: usize,
}

impl SortedBatch {
    /// Sorts `batch` by `outcomes`, one per record in the same order.
    pub fn sort(
        batch: Vec<AuditEvent>,
        outcomes: &[RecordOutcome],
    ) -> Result<SortedBatch, (Vec<AuditEvent>, OutcomeCountMismatch)> {
        if batch.len() != outcomes.len() {
            let mismatch = OutcomeCountMismatch {
                sent: batch.len(),
                answered: outcomes.len(),
            };
            return Err((batch, mismatch));
        }
        let mut sorted = SortedBatch::default();
        for (event, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                RecordOutcome::Stored => sorted.stored.push(event),
                RecordOutcome::Retry => sorted.retry.push(event),
                RecordOutcome::Rejected(reason) => sorted.rejected.push((event, reason.clone())),
            }
        }
        Ok(sorted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(n: u64) -> Vec<AuditEvent> {
        (1..=n)
            .map(|seq| AuditEvent {
                seq,
                ..AuditEvent::default()
            })
            .collect()
    }

    #[test]
    fn each_record_goes_where_its_outcome_says_in_order() {
        let outcomes = [
            RecordOutcome::Retry,
            RecordOutcome::Stored,
            RecordOutcome::Rejected("mapper_parsing_exception".into()),
            RecordOutcome::Retry,
        ];
        let sorted = SortedBatch::sort(events(4), &outcomes).unwrap();
        assert_eq!(sorted.stored.len(), 1);
        assert_eq!(sorted.stored[0].seq, 2);
        let retry: Vec<u64> = sorted.retry.iter().map(|e| e.seq).collect();
        assert_eq!(retry, [1, 4]);
        assert_eq!(sorted.rejected.len(), 1);
        assert_eq!(sorted.rejected[0].0.seq, 3);
        assert_eq!(sorted.rejected[0].1, "mapper_parsing_exception");
    }

    #[test]
    fn an_answer_for_fewer_records_gives_the_batch_back_whole() {
        let (batch, mismatch) = SortedBatch::sort(events(3), &[RecordOutcome::Stored]).unwrap_err();
        assert_eq!(batch.len(), 3);
        assert_eq!(
            mismatch,
            OutcomeCountMismatch {
                sent: 3,
                answered: 1
            }
        );
    }

    proptest! {
        /// Nothing is lost or doubled: every record lands in exactly one place.
        #[test]
        fn every_record_is_accounted_for_once(kinds in proptest::collection::vec(0u8..3, 0..64)) {
            let outcomes: Vec<RecordOutcome> = kinds.iter().map(|k| match k {
                0 => RecordOutcome::Stored,
                1 => RecordOutcome::Retry,
                _ => RecordOutcome::Rejected("bad".into()),
            }).collect();
            let sorted = SortedBatch::sort(events(kinds.len() as u64), &outcomes).unwrap();
            let mut seen: Vec<u64> = sorted.retry.iter().map(|e| e.seq)
                .chain(sorted.rejected.iter().map(|(e, _)| e.seq)).collect();
            seen.sort_unstable();
            let expected: Vec<u64> = kinds.iter().enumerate().filter(|(_, k)| **k != 0).map(|(i, _)| i as u64 + 1).collect();
            prop_assert_eq!(seen, expected);
            prop_assert_eq!(sorted.stored.len() + sorted.retry.len() + sorted.rejected.len(), kinds.len());
        }
    }
}
