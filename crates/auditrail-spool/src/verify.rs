//! Re-walking the hash chain of a spool.
//!
//! A walk says only what it proved: which seqs it covered, and which hash
//! it had to take on trust as the start of the chain (the genesis hash for
//! a spool that still holds its first event, otherwise the tail that
//! retention recorded when it removed the events before).

use std::fmt;

use std::collections::VecDeque;

use auditrail_integrity::merkle::{self, Frontier};
use auditrail_integrity::{Checkpoint, VerifierKey};
use auditrail_model::{chain_hash, Hash, GENESIS_HASH};

use crate::batch::BatchView;
use crate::tree::{self, Tiles, TreeState};
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
    /// A checkpoint whose signature fails, that names another log, or whose
    /// predecessor is gone (a period with no checkpoint).
    BadCheckpoint,
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
            ProblemKind::BadCheckpoint => "bad checkpoint",
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
    /// How many seqs it concerns (for [`ProblemKind::Missing`], how many
    /// are absent; 0 for [`ProblemKind::BadCheckpoint`]).
    pub count: u64,
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
    /// What the signed checkpoints proved.
    pub checkpoints: CheckpointSummary,
}

/// What the walk found of the signed checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Checkpoints stored.
    pub total: u64,
    /// Checkpoints whose signature (when a key was given), origin and link
    /// to the one before hold, and whose root the retained events (and the
    /// kept tree nodes of removed ones) hash to.
    pub valid: u64,
    /// Whether signatures were checked (a public key was given).
    pub signatures_checked: bool,
    /// Retained events after the newest checkpoint: not signed yet.
    pub unsigned_tail: u64,
    /// The newest valid checkpoint's tree size.
    pub newest_size: Option<u64>,
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
    /// Recomputes the Merkle tree as the events go by.
    tree: Option<TreeWalk>,
}

impl Walk {
    fn problem(&mut self, seq: u64, kind: ProblemKind, detail: impl Into<String>) -> bool {
        let count = u64::from(kind != ProblemKind::BadCheckpoint);
        self.problem_of(seq, count, kind, detail)
    }

    /// A problem that concerns `count` seqs from `seq` on.
    fn problem_of(
        &mut self,
        seq: u64,
        count: u64,
        kind: ProblemKind,
        detail: impl Into<String>,
    ) -> bool {
        self.report.problems.push(Problem {
            seq,
            kind,
            count,
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
                stop |= self.problem_of(want, seq - want, ProblemKind::Missing, detail)
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

pub(crate) fn verify(
    shared: &Shared,
    key: Option<&VerifierKey>,
) -> Result<VerifyReport, SpoolError> {
    // The tree is derived from the batches: bring it up to them first, so
    // that a spool whose server stopped before its builder caught up is
    // checked all the same. It cannot when events it needs are gone; the
    // walk says which.
    if let Err(e) = tree::step(shared, None, false) {
        tracing::debug!(error = %e, "the merkle tree could not catch up before verify");
    }
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
            checkpoints: CheckpointSummary::default(),
        },
        expected_seq: None,
        prev: None,
        gaps: Vec::new(),
        tree: None,
    };
    let tree_state = TreeState::read(&shared.merkle)?;
    let checkpoints = read_checkpoints(shared, key, tree_state, &mut walk)?;
    walk.tree = tree_state.map(|state| TreeWalk {
        first_seq: state.first_seq,
        frontier: None,
        next_seq: state.first_seq,
        pending: checkpoints,
        proven_through: state.first_seq - 1,
        problems_before: walk.report.problems.len(),
        broken: false,
        pinned: 0,
        tile: None,
    });
    walk.report.checkpoints.signatures_checked = key.is_some();
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
                    if walk.problem_of(1, last, ProblemKind::Missing, detail) {
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
            let stop = walk.record(seq, stored_prev, canonical, stored_hash);
            walk.leaf(shared, seq, canonical, stored_hash)?;
            if stop {
                return Ok(walk.report);
            }
        }
    }
    walk.finish();
    Ok(walk.report)
}

/// The Merkle side of the walk.
///
/// Two checks. Each checkpoint's root is compared with the tree the walk
/// recomputes as it reaches the checkpoint's size. And the stored tree
/// nodes, once the newest checkpoint they agree with has authenticated
/// them, pin each leaf: an event whose leaf hash differs from its stored
/// leaf is named by seq, even when its chain was recomputed around it.
struct TreeWalk {
    /// The seq of leaf 0.
    first_seq: u64,
    /// Loaded at the first retained event, from the kept nodes of the
    /// events retention removed before it.
    frontier: Option<Frontier>,
    next_seq: u64,
    /// Checkpoints not reached yet, by size; `bool`: valid so far.
    pending: VecDeque<(Checkpoint, bool)>,
    /// The last seq a checkpoint proved.
    proven_through: u64,
    /// How many problems were known when the current checkpoint's
    /// interval began: a root that does not match is news only if the walk
    /// found nothing else wrong in the interval.
    problems_before: usize,
    /// Roots are no longer compared: seqs out of order, or a checkpoint
    /// already failed (every later root differs for the same cause).
    broken: bool,
    /// Leaves below this index are pinned by stored nodes a signed root
    /// authenticated.
    pinned: u64,
    /// The level-0 tile read last, for the pinned leaves.
    tile: Option<(u64, Vec<u8>)>,
}

const TILE_WIDTH: u64 = 256;

impl TreeWalk {
    /// The stored leaf hash of leaf `index`, if it is pinned.
    fn pinned_leaf(&mut self, shared: &Shared, index: u64) -> Option<Hash> {
        if index >= self.pinned {
            return None;
        }
        let tile = index / TILE_WIDTH;
        if self.tile.as_ref().is_none_or(|(t, _)| *t != tile) {
            let bytes = shared.merkle.get(tree::tile_key(0, tile)).ok()??;
            self.tile = Some((tile, bytes.to_vec()));
        }
        let (_, bytes) = self.tile.as_ref()?;
        let at = (index % TILE_WIDTH) as usize * 32;
        bytes.get(at..at + 32)?.try_into().ok()
    }
}

impl Walk {
    /// Adds a walked event to the tree; checks the checkpoints it completes.
    fn leaf(
        &mut self,
        shared: &Shared,
        seq: u64,
        canonical: &[u8],
        stored_hash: Hash,
    ) -> Result<(), SpoolError> {
        let Some(tree) = self.tree.as_mut() else {
            return Ok(());
        };
        if seq < tree.first_seq {
            return Ok(());
        }
        if tree.frontier.is_none() && !tree.broken {
            self.start_tree(shared, seq);
        }
        let tree = self.tree.as_mut().expect("checked above");
        let leaf = merkle::leaf_hash(canonical);
        if let Some(pinned) = tree.pinned_leaf(shared, seq - tree.first_seq) {
            let already = self
                .report
                .problems
                .iter()
                .rev()
                .take(4)
                .any(|p| p.seq == seq && p.kind == ProblemKind::Modified);
            if pinned != leaf && !already {
                self.problem(
                    seq,
                    ProblemKind::Modified,
                    "content does not hash to the leaf a signed checkpoint covers \
                     (the chain was recomputed over the change)",
                );
            }
        }
        let tree = self.tree.as_mut().expect("checked above");
        if tree.broken {
            return Ok(());
        }
        if seq != tree.next_seq {
            tree.broken = true;
            return Ok(());
        }
        let frontier = tree.frontier.as_mut().expect("loaded by start_tree");
        frontier.push(leaf, |_, _, _| {});
        tree.next_seq += 1;
        while tree
            .pending
            .front()
            .is_some_and(|(c, _)| c.size == frontier.size())
        {
            let (checkpoint, valid) = tree.pending.pop_front().expect("front exists");
            let matches = checkpoint.root == frontier.root() && checkpoint.chain == stored_hash;
            let explained = self.report.problems.len() > tree.problems_before;
            if !matches {
                if !explained {
                    let from = tree.proven_through + 1;
                    self.report.problems.push(Problem {
                        seq: from,
                        kind: ProblemKind::Modified,
                        count: 1,
                        detail: format!(
                            "seq {from}..{seq} no longer hash to the root signed by the \
                             checkpoint of tree size {}: an event in that range was changed \
                             and the chain recomputed over it",
                            checkpoint.size
                        ),
                    });
                }
                tree.broken = true;
                break;
            }
            if valid {
                self.report.checkpoints.valid += 1;
                self.report.checkpoints.newest_size = Some(checkpoint.size);
            }
            tree.proven_through = seq;
            tree.problems_before = self.report.problems.len();
        }
        Ok(())
    }

    /// At the first retained event of the tree: loads the tree of the events
    /// retention removed before it, checks the checkpoints that cover only
    /// those, and finds how far the stored nodes are authenticated.
    fn start_tree(&mut self, shared: &Shared, seq: u64) {
        let tree = self.tree.as_mut().expect("called with a tree");
        let tiles = Tiles(&shared.merkle);
        // The newest valid checkpoint whose root the stored nodes give.
        tree.pinned = tree
            .pending
            .iter()
            .rev()
            .filter(|(_, valid)| *valid)
            .find(|(c, _)| merkle::root(&tiles, c.size).is_ok_and(|r| r == c.root))
            .map_or(0, |(c, _)| c.size);
        let removed = seq - tree.first_seq;
        match Frontier::load(&tiles, removed) {
            Ok(frontier) => tree.frontier = Some(frontier),
            Err(e) => {
                tree.broken = true;
                self.problem(
                    seq,
                    ProblemKind::Unreadable,
                    format!("the kept tree nodes of the {removed} removed events: {e}"),
                );
                return;
            }
        }
        tree.next_seq = seq;
        tree.proven_through = seq - 1;
        // Checkpoints of removed events only: their roots come from the kept
        // nodes alone (when retention kept enough of them to say).
        while let Some((checkpoint, valid)) = tree.pending.front().cloned() {
            if checkpoint.size > removed {
                break;
            }
            tree.pending.pop_front();
            let root = merkle::root(&tiles, checkpoint.size).ok();
            if valid && root.is_none_or(|r| r == checkpoint.root) {
                self.report.checkpoints.valid += 1;
                self.report.checkpoints.newest_size = Some(checkpoint.size);
            }
        }
    }

    /// After the last event: checkpoints past it sign events that are gone.
    fn finish(&mut self) {
        let last_retained = self.report.highest_seq;
        let Some(tree) = self.tree.as_mut() else {
            return;
        };
        let newest = tree
            .pending
            .iter()
            .rev()
            .find(|(_, valid)| *valid)
            .map(|(c, _)| c.clone());
        if let Some(newest) = newest {
            let from = tree.next_seq.max(last_retained.map_or(0, |l| l + 1));
            if newest.last_seq() >= from {
                self.report.problems.push(Problem {
                    seq: from,
                    kind: ProblemKind::Missing,
                    count: newest.last_seq() + 1 - from,
                    detail: format!(
                        "seq {from}..{} absent, though the checkpoint of tree size {} signed them",
                        newest.last_seq(),
                        newest.size
                    ),
                });
            }
        }
        let signed_through = self
            .report
            .checkpoints
            .newest_size
            .map_or(tree.first_seq - 1, |size| tree.first_seq + size - 1);
        self.report.checkpoints.unsigned_tail =
            last_retained.map_or(0, |last| last.saturating_sub(signed_through));
    }
}

/// Reads and checks every stored checkpoint on its own (signature, origin,
/// link to the one before); returns those whose root is still to compare.
fn read_checkpoints(
    shared: &Shared,
    key: Option<&VerifierKey>,
    state: Option<TreeState>,
    walk: &mut Walk,
) -> Result<VecDeque<(Checkpoint, bool)>, SpoolError> {
    let stored = tree::checkpoints(shared)?;
    walk.report.checkpoints.total = stored.len() as u64;
    let spool_id = shared.identity.get().map(|i| i.spool_id.clone());
    let mut pending = VecDeque::new();
    let mut previous = 0;
    for stored in stored {
        let first_seq = state.map_or(1, |s| s.first_seq);
        let seq = (first_seq + stored.size).saturating_sub(1);
        let opened = match key {
            Some(key) => Checkpoint::open(&stored.note, key),
            None => Checkpoint::parse_unverified(&stored.note),
        };
        let checkpoint = match opened {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                walk.problem(
                    seq,
                    ProblemKind::BadCheckpoint,
                    format!("checkpoint of tree size {}: {e}", stored.size),
                );
                continue;
            }
        };
        let mut wrong = Vec::new();
        if checkpoint.size != stored.size {
            wrong.push(format!("it is stored as tree size {}", stored.size));
        }
        if let Some(id) = &spool_id {
            if !checkpoint.origin.ends_with(&format!("/{id}")) {
                wrong.push(format!(
                    "its origin {:?} is not this spool's",
                    checkpoint.origin
                ));
            }
        }
        if checkpoint.first_seq != first_seq {
            wrong.push(format!(
                "it starts the tree at seq {}, the spool at {first_seq}",
                checkpoint.first_seq
            ));
        }
        if checkpoint.previous != previous {
            wrong.push(match previous {
                0 => format!(
                    "the checkpoint before it (tree size {}) is missing",
                    checkpoint.previous
                ),
                _ => format!(
                    "it follows tree size {}, but the checkpoint before it is of size {previous}: \
                     the checkpoints between are missing",
                    checkpoint.previous
                ),
            });
        }
        for why in &wrong {
            walk.problem(
                seq,
                ProblemKind::BadCheckpoint,
                format!("checkpoint of tree size {}: {why}", stored.size),
            );
        }
        previous = stored.size;
        pending.push_back((checkpoint, wrong.is_empty()));
    }
    Ok(pending)
}
