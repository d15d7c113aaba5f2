//! Re-walking the hash chain of a spool.

use auditrail_model::{chain_hash, Hash};

use crate::batch::BatchView;
use crate::{Shared, SpoolError};

/// What a chain walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Each break in the chain, in seq order: what is wrong and where.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Most problems listed; past this a spool is plainly broken.
const MAX_PROBLEMS: usize = 100;

pub(crate) fn verify(shared: &Shared) -> Result<VerifyReport, SpoolError> {
    let mut report = VerifyReport::default();
    let mut expected_seq: Option<u64> = None;
    let mut prev: Option<Hash> = None;
    for item in shared.batches.iter() {
        let (_, value) = item?;
        let view = match BatchView::parse(&value) {
            Ok(view) => view,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        for i in 0..view.count() {
            let seq = view.first_seq + i as u64;
            report.events += 1;
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            match expected_seq {
                Some(want) if seq > want => report
                    .problems
                    .push(format!("seq {want}..{} missing", seq - 1)),
                Some(want) if seq < want => report
                    .problems
                    .push(format!("seq {seq} out of order (expected {want})")),
                _ => {}
            }
            expected_seq = Some(seq + 1);
            let (canonical, stored_hash) = view.record(i)?;
            let stored_prev = view.prev_hash_of(i)?;
            if let Some(prev) = prev {
                if prev != stored_prev {
                    report.problems.push(format!(
                        "seq {seq}: prev_hash does not link to seq {}",
                        seq - 1
                    ));
                }
            }
            match auditrail_model::AuditEvent::from_canonical_bytes(canonical) {
                Ok(event) if event.seq != seq => report.problems.push(format!(
                    "seq {seq}: the event inside says seq {}",
                    event.seq
                )),
                Ok(_) => {}
                Err(e) => report.problems.push(format!("seq {seq}: {e}")),
            }
            if chain_hash(&stored_prev, canonical) != stored_hash {
                report.problems.push(format!(
                    "seq {seq}: content does not match its hash (modified)"
                ));
            }
            prev = Some(stored_hash);
            if report.problems.len() >= MAX_PROBLEMS {
                report.problems.push("too many problems; stopped".into());
                return Ok(report);
            }
        }
    }
    Ok(report)
}
