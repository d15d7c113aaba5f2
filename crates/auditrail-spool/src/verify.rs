//! Re-walking the hash chain of a spool.
//!
//! A walk says only what it proved: which seqs it covered, and which hash
//! it had to take on trust as the start of the chain (the genesis hash for
//! a spool that still holds its first event, otherwise the tail that
//! retention recorded when it removed the events before).

use std::fmt;

use auditrail_model::{chain_hash, Hash, GENESIS_HASH};

use crate::batch::BatchView;
use crate::{retention, Shared, SpoolError};

/// What is wrong at one place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Seqs are absent: events were removed (other than by retention).
    Missing,
    /// A seq is lower than the one before it: events were reordered.
    Reordered,
    /// A seq appears twice: an event was inserted.
    Inserted,
    /// An event's content no longer matches its hash.
    Modified,
    /// An event's `prev_hash` is not the hash of the event before it: an
    /// event before it was replaced, inserted or removed, and the chain
    /// recomputed from there.
    Unlinked,
    /// A stored batch or event cannot be decoded at all.
    Unreadable,
}

impl ProblemKind {
    /// A stable label, for output and tests.
    pub fn label(self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Modified => "modified",
            ProblemKind::Unlinked => "unlinked",
            ProblemKind::Unreadable => "unreadable",
        }
    }
}

/// One break in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first seq concerned (for [`ProblemKind::Missing`], the first
    /// missing one).
    pub seq: u64,
    pub kind: ProblemKind,
    /// What exactly was found.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq {}: {}: {}",
            self.seq,
            self.kind.label(),
            self.detail
        )
    }
}

/// Where the walk's chain starts, and so what it had to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainStart {
    /// The spool holds no event.
    Empty,
    /// The first retained event is the node's first: its `prev_hash` is the
    /// genesis hash, so nothing is taken on trust.
    Genesis,
    /// Retention removed the events before; their last hash, as retention
    /// recorded it, is trusted (and the first retained event must link to it).
    RemovedTail { last_removed_seq: u64, hash: Hash },
    /// Neither: the first retained event's `prev_hash` is taken as given.
    Unanchored { prev_hash: Hash },
}

/// What a chain walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The highest seq met (above `last_seq` only when seqs are out of order).
    pub highest_seq: Option<u64>,
    pub start: ChainStart,
    /// Each break in the chain, in seq order.
    pub problems: Vec<Problem>,
    /// The walk stopped early because there were too many problems.
    pub truncated: bool,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Most problems listed; past this a spool is plainly broken.
const MAX_PROBLEMS: usize = 100;

/// The walk's state: what the next event must be.
struct Walk {
    report: VerifyReport,
    expected_seq: Option<u64>,
    prev: Option<Hash>,
    /// Seq ranges found missing so far: a seq from one of them that turns
    /// up later was reordered, any other old seq is a second copy.
    gaps: Vec<(u64, u64)>,
}

impl Walk {
    fn problem(&mut self, seq: u64, kind: ProblemKind, detail: impl Into<String>) -> bool {
        self.report.problems.push(Problem {
            seq,
            kind,
            detail: detail.into(),
        });
        if self.report.problems.len() >= MAX_PROBLEMS {
            self.report.truncated = true;
        }
        self.report.truncated
    }

    /// Checks one stored record; returns true when the walk must stop.
    fn record(&mut self, seq: u64, stored_prev: Hash, canonical: &[u8], stored_hash: Hash) -> bool {
        self.report.events += 1;
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);
        self.report.highest_seq = self.report.highest_seq.max(Some(seq));
        let mut stop = false;
        match self.expected_seq {
            Some(want) if seq > want => {
                let detail = if seq - 1 == want {
                    format!("seq {want} absent")
                } else {
                    format!("seq {want}..{} absent", seq - 1)
                };
                self.gaps.push((want, seq - 1));
                stop |= self.problem(want, ProblemKind::Missing, detail)
            }
            Some(want) if seq < want => {
                // Below the walk's position: either a seq that was missing
                // where it belonged (it arrived late), or one already seen.
                let late = self.gaps.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq));
                stop |= if late {
                    self.problem(
                        seq,
                        ProblemKind::Reordered,
                        format!("stored after seq {}", want - 1),
                    )
                } else {
                    self.problem(
                        seq,
                        ProblemKind::Inserted,
                        format!("appears a second time, after seq {}", want - 1),
                    )
                };
            }
            _ => {}
        }
        self.expected_seq = Some(seq.max(self.expected_seq.unwrap_or(0)) + 1);
        if let Some(prev) = self.prev {
            if prev != stored_prev {
                stop |= self.problem(
                    seq,
                    ProblemKind::Unlinked,
                    "prev_hash is not the hash of the event before it",
                );
            }
        }
        match auditrail_model::AuditEvent::from_canonical_bytes(canonical) {
            Ok(event) if event.seq != seq => {
                stop |= self.problem(
                    seq,
                    ProblemKind::Modified,
                    format!("the event inside says seq {}", event.seq),
                )
            }
            Ok(_) => {}
            Err(e) => stop |= self.problem(seq, ProblemKind::Unreadable, e.to_string()),
        }
        if chain_hash(&stored_prev, canonical) != stored_hash {
            stop |= self.problem(
                seq,
                ProblemKind::Modified,
                "content does not match its hash",
            );
        }
        self.prev = Some(stored_hash);
        stop
    }
}

pub(crate) fn verify(shared: &Shared) -> Result<VerifyReport, SpoolError> {
    let removed_tail = retention::removed_tail(&shared.meta)?;
    let mut walk = Walk {
        report: VerifyReport {
            events: 0,
            first_seq: None,
            last_seq: None,
            highest_seq: None,
            start: ChainStart::Empty,
            problems: Vec::new(),
            truncated: false,
        },
        expected_seq: None,
        prev: None,
        gaps: Vec::new(),
    };
    let mut first = true;
    for item in shared.batches.iter() {
        let (key, value) = item?;
        let view = match BatchView::parse(&value) {
            Ok(view) => view,
            Err(e) => {
                let seq = crate::seq_from_bytes(&key);
                if walk.problem(seq, ProblemKind::Unreadable, e.to_string()) {
                    break;
                }
                // What follows cannot link to a batch that did not decode.
                walk.prev = None;
                continue;
            }
        };
        if first {
            first = false;
            let prev = view.prev_hash_of(0)?;
            walk.report.start = match removed_tail {
                Some((last_removed_seq, hash)) if last_removed_seq + 1 == view.first_seq => {
                    // Retention recorded where the chain left off; the first
                    // retained event must link to it.
                    walk.prev = Some(hash);
                    walk.expected_seq = Some(view.first_seq);
                    ChainStart::RemovedTail {
                        last_removed_seq,
                        hash,
                    }
                }
                Some((last_removed_seq, _)) if last_removed_seq >= view.first_seq => {
                    // A removal record past the first batch: should not be.
                    ChainStart::Unanchored { prev_hash: prev }
                }
                Some((last_removed_seq, hash)) => {
                    walk.prev = Some(hash);
                    walk.expected_seq = Some(last_removed_seq + 1);
                    ChainStart::RemovedTail {
                        last_removed_seq,
                        hash,
                    }
                }
                // A spool that continued the numbering of a wiped one starts
                // a new chain from genesis past seq 1.
                None if prev == GENESIS_HASH => ChainStart::Genesis,
                None if view.first_seq == 1 => {
                    walk.prev = Some(GENESIS_HASH);
                    ChainStart::Genesis
                }
                None => {
                    // Retention records what it removes, so events before
                    // the first retained one went some other way.
                    let last = view.first_seq - 1;
                    walk.gaps.push((1, last));
                    let detail = format!("seq 1..{last} absent, and retention did not remove them");
                    if walk.problem(1, ProblemKind::Missing, detail) {
                        return Ok(walk.report);
                    }
                    ChainStart::Unanchored { prev_hash: prev }
                }
            };
        }
        for i in 0..view.count() {
            let seq = view.first_seq + i as u64;
            let (canonical, stored_hash) = match view.record(i) {
                Ok(record) => record,
                Err(e) => {
                    if walk.problem(seq, ProblemKind::Unreadable, e.to_string()) {
                        return Ok(walk.report);
                    }
                    walk.prev = None;
                    continue;
                }
            };
            let stored_prev = match view.prev_hash_of(i) {
                Ok(prev) => prev,
                Err(_) => walk.prev.unwrap_or(GENESIS_HASH),
            };
            if walk.record(seq, stored_prev, canonical, stored_hash) {
                return Ok(walk.report);
            }
        }
    }
    Ok(walk.report)
}
