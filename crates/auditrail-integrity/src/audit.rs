//! Auditing a node's stored events: the hash chain re-walked in seq order,
//! the Merkle tree recomputed, and both held against the signed
//! checkpoints. Written once for every store the events were copied to: the
//! spool hands it its batches, a sink's check its rows.
//!
//! A walk says only what it proved: which seqs it covered, and which hash
//! it had to take on trust as the start of the chain (the genesis hash for
//! a store that still holds the node's first event, otherwise where the
//! events removed before it left off).

use std::collections::VecDeque;
use std::fmt;

use auditrail_model::{chain_hash, AuditEvent};

use crate::checkpoint::Checkpoint;
use crate::merkle::{self, Frontier, Hash, NodeSource};
use crate::note::VerifierKey;

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

/// A walk in progress: what the next event must be, and what was found.
pub struct Audit {
    report: VerifyReport,
    expected_seq: Option<u64>,
    prev: Option<Hash>,
    /// Seq ranges found missing so far: a seq from one of them that turns
    /// up later was reordered, any other old seq is a second copy.
    gaps: Vec<(u64, u64)>,
    /// Seqs that turned up late, inside a gap: a gap they fill entirely was
    /// a move, not a loss.
    late: Vec<u64>,
    /// The last record was out of place (moved, inserted, after a gap): the
    /// next one's `prev_hash` cannot link to it, and that is no news.
    link_explained: bool,
    /// Recomputes the Merkle tree as the events go by.
    tree: Option<TreeWalk>,
}

/// How far from its place a moved event is looked for (each try is one
/// hash of the event).
const MOVE_SEARCH: u64 = 16;

impl Audit {
    /// Records a problem concerning `seq`; true when the walk must stop
    /// (too many problems).
    pub fn problem(&mut self, seq: u64, kind: ProblemKind, detail: impl Into<String>) -> bool {
        let count = u64::from(kind != ProblemKind::BadCheckpoint);
        self.problem_of(seq, count, kind, detail)
    }

    /// A problem that concerns `count` seqs from `seq` on.
    pub fn problem_of(
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

    /// Checks one stored record (chain only; see [`Audit::event`]);
    /// returns true when the walk must stop.
    fn record(&mut self, seq: u64, stored_prev: Hash, canonical: &[u8], stored_hash: Hash) -> bool {
        self.report.events += 1;
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);
        self.report.highest_seq = self.report.highest_seq.max(Some(seq));
        let mut stop = false;
        // Whether this record's link to the one before is explained by a
        // problem already reported here or just before.
        let mut link_explained = std::mem::take(&mut self.link_explained);
        match self.expected_seq {
            Some(want) if seq > want => {
                let detail = if seq - 1 == want {
                    format!("seq {want} absent")
                } else {
                    format!("seq {want}..{} absent", seq - 1)
                };
                self.gaps.push((want, seq - 1));
                link_explained = true;
                stop |= self.problem_of(want, seq - want, ProblemKind::Missing, detail)
            }
            Some(want) if seq < want => {
                // Below the walk's position: either a seq that was missing
                // where it belonged (it arrived late), or one already seen.
                let late = self.gaps.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq));
                link_explained = true;
                self.link_explained = true;
                stop |= if late {
                    self.late.push(seq);
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
        // A seq below the walk's position does not move it back.
        self.expected_seq = Some((seq + 1).max(self.expected_seq.unwrap_or(0)));
        let decoded = AuditEvent::from_canonical_bytes(canonical);
        match &decoded {
            Ok(event) if event.seq != seq => {
                link_explained = true;
                self.link_explained = true;
                stop |= self.problem(
                    seq,
                    ProblemKind::Reordered,
                    format!("holds the event of seq {} (moved here)", event.seq),
                )
            }
            Ok(_) => {}
            Err(e) => stop |= self.problem(seq, ProblemKind::Unreadable, e.to_string()),
        }
        if chain_hash(&stored_prev, canonical) != stored_hash {
            match decoded
                .ok()
                .and_then(|e| moved_from(e, stored_prev, stored_hash))
            {
                Some(home) => {
                    link_explained = true;
                    self.link_explained = true;
                    stop |= self.problem(
                        seq,
                        ProblemKind::Reordered,
                        format!("holds the event of seq {home} (moved or swapped here)"),
                    )
                }
                None => {
                    stop |= self.problem(
                        seq,
                        ProblemKind::Modified,
                        "content does not match its hash",
                    )
                }
            }
        }
        if let Some(prev) = self.prev {
            if prev != stored_prev && !link_explained {
                stop |= self.problem(
                    seq,
                    ProblemKind::Unlinked,
                    "prev_hash is not the hash of the event before it",
                );
            }
        }
        self.prev = Some(stored_hash);
        stop
    }

    /// Gaps that events stored late filled entirely were moves, already
    /// reported as such: they are not losses.
    fn drop_filled_gaps(&mut self) {
        let late = &self.late;
        self.report.problems.retain(|p| {
            p.kind != ProblemKind::Missing
                || p.count == 0
                || !(p.seq..p.seq + p.count).all(|s| late.contains(&s))
        });
    }
}

/// The seq near `event.seq` whose place the stored hashes belong to, when
/// the event (its content with its own hashes) was moved there from one:
/// a store keyed by seq (a SQL table) cannot say otherwise that two rows
/// swapped their contents.
pub fn moved_from(mut event: AuditEvent, stored_prev: Hash, stored_hash: Hash) -> Option<u64> {
    let here = event.seq;
    let candidates = (1..=MOVE_SEARCH).flat_map(|d| [here.checked_add(d), here.checked_sub(d)]);
    for home in candidates.flatten().filter(|&s| s > 0) {
        event.seq = home;
        if chain_hash(&stored_prev, &event.canonical_bytes()) == stored_hash {
            return Some(home);
        }
    }
    None
}

impl Audit {
    /// A walk checked against `tree`'s checkpoints (signatures with `key`,
    /// when given); without `tree` the chain alone.
    pub fn new(key: Option<&VerifierKey>, tree: Option<TreeStart>) -> Audit {
        let mut audit = Audit {
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
            late: Vec::new(),
            link_explained: false,
            tree: None,
        };
        audit.report.checkpoints.signatures_checked = key.is_some();
        if let Some(start) = tree {
            let pending = read_checkpoints(key, &start, &mut audit);
            let newest_signed = pending
                .iter()
                .filter(|(_, v)| *v)
                .map(|(c, _)| c.size)
                .max();
            audit.tree = Some(TreeWalk {
                first_seq: start.first_seq,
                frontier: None,
                next_seq: start.first_seq,
                pending,
                proven_through: start.first_seq.saturating_sub(1),
                problems_before: audit.report.problems.len(),
                broken: false,
                nodes_kept: start.nodes_kept,
                newest_signed,
                chain_only: false,
                pinned: 0,
            });
        }
        audit
    }

    /// Where the chain starts: `prev` is what the first event must link
    /// to (none when it is taken as given), `expected_seq` its seq.
    pub fn start(&mut self, start: ChainStart, prev: Option<Hash>, expected_seq: Option<u64>) {
        self.report.start = start;
        self.prev = prev;
        self.expected_seq = expected_seq;
    }

    /// Seqs `first..=last` are absent before the first stored event (and
    /// not removed by retention); true when the walk must stop.
    pub fn missing_before(&mut self, first: u64, last: u64, detail: impl Into<String>) -> bool {
        self.gaps.push((first, last));
        self.problem_of(first, last + 1 - first, ProblemKind::Missing, detail)
    }

    /// A record that could not be read at all: reported, and the next one
    /// is not expected to link to it. True when the walk must stop.
    pub fn unreadable(&mut self, seq: u64, detail: impl Into<String>) -> bool {
        self.prev = None;
        self.problem(seq, ProblemKind::Unreadable, detail)
    }

    /// Checks one stored event in store order: its seq, its link to the one
    /// before, its content against its hash, its leaf against the tree and
    /// the checkpoints. True when the walk must stop.
    pub fn event(
        &mut self,
        seq: u64,
        stored_prev: Hash,
        canonical: &[u8],
        stored_hash: Hash,
        nodes: &dyn KeptNodes,
    ) -> bool {
        let stop = self.record(seq, stored_prev, canonical, stored_hash);
        self.leaf(seq, canonical, stored_hash, nodes);
        stop
    }

    /// What the walk found.
    pub fn finish(mut self) -> VerifyReport {
        self.drop_filled_gaps();
        self.finish_tree();
        self.report
    }
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
    /// The store keeps no tree nodes.
    nodes_kept: bool,
    /// The tree size of the newest checkpoint whose signature holds.
    newest_signed: Option<u64>,
    /// Roots cannot be recomputed (no nodes for the events before the
    /// first stored one): each checkpoint's `chain` line is compared with
    /// the stored hash of its last event instead.
    chain_only: bool,
    /// Leaves below this index are pinned by stored nodes a signed root
    /// authenticated.
    pinned: u64,
}

/// The tree nodes a store kept beside its events (the spool's tiles),
/// answered only where present; a sink keeps none ([`NoNodes`]).
pub trait KeptNodes {
    /// The complete node at `level` and `index`, if it was kept.
    fn node(&self, level: u8, index: u64) -> Option<Hash>;
}

/// A store that keeps no tree nodes.
pub struct NoNodes;

impl KeptNodes for NoNodes {
    fn node(&self, _: u8, _: u64) -> Option<Hash> {
        None
    }
}

/// [`KeptNodes`] as a [`NodeSource`], for the tree's functions.
struct Kept<'a>(&'a dyn KeptNodes);

impl NodeSource for Kept<'_> {
    type Error = ();
    fn node(&self, level: u8, index: u64) -> Result<Hash, ()> {
        self.0.node(level, index).ok_or(())
    }
}

impl Audit {
    /// Adds a walked event to the tree; checks the checkpoints it completes.
    fn leaf(&mut self, seq: u64, canonical: &[u8], stored_hash: Hash, nodes: &dyn KeptNodes) {
        let Some(tree) = self.tree.as_mut() else {
            return;
        };
        if seq < tree.first_seq {
            return;
        }
        if tree.frontier.is_none() && !tree.broken {
            self.start_tree(seq, nodes);
        }
        let tree = self.tree.as_mut().expect("checked above");
        let leaf = merkle::leaf_hash(canonical);
        let index = seq - tree.first_seq;
        let pinned = (index < tree.pinned)
            .then(|| nodes.node(0, index))
            .flatten();
        if let Some(pinned) = pinned {
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
        if tree.chain_only {
            self.chain_line(seq, stored_hash);
            return;
        }
        if tree.broken {
            return;
        }
        if seq != tree.next_seq {
            tree.broken = true;
            return;
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
    }

    /// Without the tree: checkpoints that end before `seq` cover events the
    /// store no longer holds (their signatures were checked); one that ends
    /// at `seq` must sign its stored hash.
    fn chain_line(&mut self, seq: u64, stored_hash: Hash) {
        loop {
            let tree = self.tree.as_mut().expect("called with a tree");
            let Some((checkpoint, valid)) = tree.pending.front().cloned() else {
                return;
            };
            if checkpoint.last_seq() > seq {
                return;
            }
            tree.pending.pop_front();
            let ends_here = checkpoint.last_seq() == seq;
            let from = tree.proven_through.max(tree.first_seq.saturating_sub(1)) + 1;
            if ends_here {
                tree.proven_through = seq;
            }
            if ends_here && checkpoint.chain != stored_hash {
                self.report.problems.push(Problem {
                    seq: from,
                    kind: ProblemKind::Modified,
                    count: 1,
                    detail: format!(
                        "the hash of seq {seq} is not the one the checkpoint of tree size {} \
                         signed: an event up to it was changed and the chain recomputed",
                        checkpoint.size
                    ),
                });
            } else if valid {
                self.report.checkpoints.valid += 1;
                self.report.checkpoints.newest_size = Some(checkpoint.size);
            }
        }
    }

    /// At the first retained event of the tree: loads the tree of the events
    /// retention removed before it, checks the checkpoints that cover only
    /// those, and finds how far the stored nodes are authenticated.
    fn start_tree(&mut self, seq: u64, nodes: &dyn KeptNodes) {
        let tree = self.tree.as_mut().expect("called with a tree");
        let tiles = Kept(nodes);
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
            Err(()) if !tree.nodes_kept => {
                tree.chain_only = true;
                return;
            }
            Err(()) => {
                tree.broken = true;
                self.problem(
                    seq,
                    ProblemKind::Unreadable,
                    format!(
                        "the tree nodes of the {removed} events before it are not kept: its \
                         checkpoints cannot be recomputed"
                    ),
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
    fn finish_tree(&mut self) {
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
        // Events past the newest checkpoint whose signature holds (whether
        // or not the events still match it) were never signed.
        let signed_through = tree
            .newest_signed
            .map_or(tree.first_seq - 1, |size| tree.first_seq + size - 1);
        self.report.checkpoints.unsigned_tail =
            last_retained.map_or(0, |last| last.saturating_sub(signed_through));
    }
}

/// A signed checkpoint as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNote {
    /// The tree size it is stored under.
    pub size: u64,
    /// The signed note.
    pub note: String,
}

/// What a walk checks the Merkle tree against.
#[derive(Debug, Clone)]
pub struct TreeStart {
    /// The seq of leaf 0.
    pub first_seq: u64,
    /// Every checkpoint the store holds, oldest first.
    pub checkpoints: Vec<StoredNote>,
    /// The spool id their origin must name, when the store knows it.
    pub spool_id: Option<String>,
    /// Whether the store keeps tree nodes (the spool). A store that does
    /// not (a sink) and lacks the events before its first one is checked
    /// against each checkpoint's `chain` line instead of its root.
    pub nodes_kept: bool,
}

/// Reads and checks every stored checkpoint on its own (signature, origin,
/// link to the one before); returns those whose root is still to compare.
fn read_checkpoints(
    key: Option<&VerifierKey>,
    start: &TreeStart,
    walk: &mut Audit,
) -> VecDeque<(Checkpoint, bool)> {
    let stored = &start.checkpoints;
    walk.report.checkpoints.total = stored.len() as u64;
    let spool_id = start.spool_id.clone();
    let mut pending = VecDeque::new();
    let mut previous = 0;
    for stored in stored {
        let first_seq = start.first_seq;
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
    pending
}
