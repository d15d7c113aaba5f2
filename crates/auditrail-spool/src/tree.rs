//! The spool's Merkle tree and its signed checkpoints (see
//! `auditrail-integrity`).
//!
//! One RFC 9162 tree per spool over its events in seq order: leaf `i` is the
//! event with seq `first_seq + i`, and its leaf hash is `SHA-256(0x00 ‖
//! canonical bytes)`. The hash chain stays beside it: sinks' rows carry the
//! chain's `hash` and `prev_hash`, which let a single row be checked against
//! its neighbours, while the tree gives logarithmic proofs and a root worth
//! signing. Each checkpoint also signs the chain's hash at its last event.
//!
//! The tree is built off the ack path, by a thread of its own, from events
//! already durable: it reads the batches up to the durable seq, so it never
//! covers an event the spool could still lose, and it adds nothing to an
//! append's latency. It is derived data: after a crash it is rebuilt from
//! the batches where its stored state left off.
//!
//! Storage, tree `merkle`, as in C2SP `tlog-tiles`: tile `(L, t)` holds the
//! hashes of the nodes at level `8L` with indices `256t .. 256t + 256` (all
//! 256 once full; the rightmost tile of each level grows and is rewritten).
//! Nodes between two tile levels are recomputed from the tile below. Key
//! `state` holds `first_seq ‖ size`, written in the same atomic batch as the
//! tiles it describes. Retention removes level-0 tiles wholly below the
//! retained events, and keeps the levels above (one hash per 256 events),
//! so the tree's root can still be recomputed and proofs of retained events
//! still made.
//!
//! Tree `checkpoints` maps tree size (big-endian) to the signed note.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditrail_integrity::merkle::{self, Frontier, NodeSource};
use auditrail_integrity::proof::{hashes_to_hex, ConsistencyProof, InclusionProof};
use auditrail_integrity::{Checkpoint, Hash, SignerKey};
use base64::Engine;

use crate::batch::BatchView;
use crate::failstop::lock;
use crate::{seq_key, Shared, SpoolError};

const TILE_HEIGHT: u8 = 8;
const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
const STATE_KEY: &[u8] = b"state";

/// How the spool signs checkpoints.
#[derive(Clone)]
pub struct Signing {
    pub key: Arc<SignerKey>,
    /// A checkpoint once this many events are not yet covered by one...
    pub every_events: u64,
    /// ...or once the oldest uncovered event waited this long.
    pub interval: Duration,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("key", &self.key)
            .field("every_events", &self.every_events)
            .field("interval", &self.interval)
            .finish()
    }
}

pub(crate) fn tile_key(tile_level: u8, tile: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[0] = b't';
    key[1] = tile_level;
    key[2..].copy_from_slice(&tile.to_be_bytes());
    key
}

fn hashes_of(bytes: &[u8]) -> Result<Vec<Hash>, SpoolError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(SpoolError::Corrupt(
            "a merkle tile is not a whole number of hashes".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect())
}

/// Complete nodes, read from the stored tiles.
pub(crate) struct Tiles<'a>(pub(crate) &'a sled::Tree);

impl NodeSource for Tiles<'_> {
    type Error = SpoolError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, SpoolError> {
        let (tile_level, sub) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
        let first = index << sub;
        let (tile, offset) = (first / TILE_WIDTH, (first % TILE_WIDTH) as usize);
        let missing = || {
            SpoolError::Corrupt(format!(
                "merkle node at level {level}, index {index} is not stored (tile {tile_level}/{tile})"
            ))
        };
        let bytes = self
            .0
            .get(tile_key(tile_level, tile))?
            .ok_or_else(missing)?;
        let hashes = hashes_of(&bytes)?;
        let mut row = hashes
            .get(offset..offset + (1 << sub))
            .ok_or_else(missing)?
            .to_vec();
        while row.len() > 1 {
            row = row
                .chunks_exact(2)
                .map(|p| merkle::node_hash(&p[0], &p[1]))
                .collect();
        }
        Ok(row[0])
    }
}

/// The stored tree's extent: leaf 0 is `first_seq`, and `size` leaves are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TreeState {
    pub(crate) first_seq: u64,
    pub(crate) size: u64,
}

impl TreeState {
    pub(crate) fn read(tree: &sled::Tree) -> Result<Option<TreeState>, SpoolError> {
        let Some(v) = tree.get(STATE_KEY)? else {
            return Ok(None);
        };
        let bad = || SpoolError::Corrupt("merkle state has the wrong length".into());
        let first_seq =
            u64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let size = u64::from_be_bytes(
            v.get(8..16)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        Ok(Some(TreeState { first_seq, size }))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = self.first_seq.to_be_bytes().to_vec();
        v.extend_from_slice(&self.size.to_be_bytes());
        v
    }

    /// The seq of the last leaf (`first_seq - 1` when empty).
    pub(crate) fn last_seq(&self) -> u64 {
        (self.first_seq + self.size).saturating_sub(1)
    }
}

/// Grows the stored tree as events become durable, and signs checkpoints.
pub(crate) struct Builder {
    state: TreeState,
    frontier: Frontier,
    /// The rightmost tile of each tile level, as far as it is filled.
    open_tiles: Vec<(u64, Vec<Hash>)>,
    /// The chain hash of the last leaf.
    chain: Hash,
    /// The tree size the newest checkpoint signed.
    signed_size: u64,
    /// Since when leaves beyond `signed_size` have been waiting.
    unsigned_since: Option<Instant>,
    /// The newest checkpoint, signed and inserted but not yet known to be
    /// durable: its size, the sync ticket that covers it, and when.
    undurable: Option<(u64, u64, Instant)>,
}

impl Builder {
    /// The builder of a started spool; `None` while the spool is pending.
    pub(crate) fn open(shared: &Shared) -> Result<Option<Builder>, SpoolError> {
        if shared.identity.get().is_none() {
            return Ok(None);
        }
        let state = match TreeState::read(&shared.merkle)? {
            Some(state) => state,
            None => {
                // A new tree starts at the first retained event: for a new
                // spool its first seq, for one older than the tree, after
                // what retention removed before the tree existed.
                let state = TreeState {
                    first_seq: shared.first_seq.load(Ordering::Acquire),
                    size: 0,
                };
                shared.merkle.insert(STATE_KEY, state.bytes())?;
                state
            }
        };
        let frontier = Frontier::load(&Tiles(&shared.merkle), state.size)?;
        let mut open_tiles = Vec::new();
        for tile_level in 0.. {
            let width = state
                .size
                .checked_shr(tile_level * TILE_HEIGHT as u32)
                .unwrap_or(0);
            if width == 0 && tile_level > 0 {
                break;
            }
            let tile = width / TILE_WIDTH;
            let hashes = match width % TILE_WIDTH {
                0 => Vec::new(),
                _ => match shared.merkle.get(tile_key(tile_level as u8, tile))? {
                    Some(bytes) => hashes_of(&bytes)?,
                    None => {
                        return Err(SpoolError::Corrupt(format!(
                            "merkle tile {tile_level}/{tile} is missing"
                        )))
                    }
                },
            };
            open_tiles.push((tile, hashes));
        }
        let chain = match state.size {
            0 => auditrail_model::GENESIS_HASH,
            _ => chain_hash_of(shared, state.last_seq())?,
        };
        let signed_size = shared
            .checkpoints
            .last()?
            .map_or(0, |(k, _)| crate::seq_from_bytes(&k));
        Ok(Some(Builder {
            state,
            frontier,
            open_tiles,
            chain,
            signed_size,
            unsigned_since: (state.size > signed_size).then(Instant::now),
            undurable: None,
        }))
    }

    /// Adds every durable event not in the tree yet.
    pub(crate) fn advance(&mut self, shared: &Shared) -> Result<(), SpoolError> {
        let durable = *shared.durable_seq.borrow();
        let mut next = self.state.first_seq + self.state.size;
        if next > durable {
            return Ok(());
        }
        let mut changed: BTreeMap<(u8, u64), ()> = BTreeMap::new();
        let mut writes = sled::Batch::default();
        // The batch holding `next` may start before it (the tree stopped
        // in the middle of a batch before a restart).
        let start = shared.batch_holding(next)?.map(|(k, _)| k.to_vec());
        let start = start.unwrap_or_else(|| seq_key(next).to_vec());
        for item in shared.batches.range(start..) {
            let (_, value) = item?;
            let view = BatchView::parse(&value)?;
            for i in 0..view.count() {
                let seq = view.first_seq + i as u64;
                if seq < next {
                    continue;
                }
                if seq > durable {
                    break;
                }
                if seq != next {
                    return Err(SpoolError::Corrupt(format!(
                        "merkle tree: seq {next} is not stored (found {seq})"
                    )));
                }
                let (canonical, hash) = view.record(i)?;
                let open_tiles = &mut self.open_tiles;
                let mut emit = |level: u8, index: u64, h: &Hash| {
                    if !level.is_multiple_of(TILE_HEIGHT) {
                        return;
                    }
                    let tile_level = level / TILE_HEIGHT;
                    let (tile, offset) = (index / TILE_WIDTH, index % TILE_WIDTH);
                    if open_tiles.len() <= tile_level as usize {
                        open_tiles.push((tile, Vec::new()));
                    }
                    let (open, hashes) = &mut open_tiles[tile_level as usize];
                    if *open != tile {
                        *open = tile;
                        hashes.clear();
                    }
                    debug_assert_eq!(hashes.len() as u64, offset);
                    hashes.push(*h);
                    changed.insert((tile_level, tile), ());
                };
                self.frontier.push(merkle::leaf_hash(canonical), &mut emit);
                // Full tiles are written here, before the next one clears them.
                for (tile_level, (tile, hashes)) in self.open_tiles.iter().enumerate() {
                    if hashes.len() as u64 == TILE_WIDTH
                        && changed.remove(&(tile_level as u8, *tile)).is_some()
                    {
                        writes.insert(&tile_key(tile_level as u8, *tile), hashes.concat());
                    }
                }
                self.chain = hash;
                next += 1;
            }
            if next > durable {
                break;
            }
        }
        for (tile_level, tile) in changed.into_keys() {
            let (open, hashes) = &self.open_tiles[tile_level as usize];
            debug_assert_eq!(*open, tile);
            writes.insert(&tile_key(tile_level, tile), hashes.concat());
        }
        self.state.size = next - self.state.first_seq;
        if self.state.size > self.signed_size && self.unsigned_since.is_none() {
            self.unsigned_since = Some(Instant::now());
        }
        writes.insert(STATE_KEY, self.state.bytes());
        shared.merkle.apply_batch(writes)?;
        shared.tree_end.store(next, Ordering::Release);
        Ok(())
    }

    /// Signs a checkpoint when one is due; returns it.
    pub(crate) fn checkpoint_if_due(
        &mut self,
        shared: &Shared,
        signing: &Signing,
        force: bool,
    ) -> Result<Option<String>, SpoolError> {
        let size = self.state.size;
        let covered = self.signed_size;
        let pending = size.saturating_sub(covered);
        let waited = self.unsigned_since.map_or(Duration::ZERO, |t| t.elapsed());
        if pending == 0 || !(force || pending >= signing.every_events || waited >= signing.interval)
        {
            return Ok(None);
        }
        let identity = shared
            .identity
            .get()
            .expect("a builder exists only once started");
        let checkpoint = Checkpoint {
            origin: Checkpoint::origin_of(&shared.node, &identity.spool_id),
            size,
            root: self.frontier.root(),
            first_seq: self.state.first_seq,
            chain: self.chain,
            previous: covered,
            time_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        };
        let note = checkpoint
            .sign(&signing.key)
            .map_err(|e| SpoolError::Storage(format!("signing a checkpoint: {e}")))?;
        shared
            .checkpoints
            .insert(size.to_be_bytes(), note.as_bytes())?;
        // Shown (listed, proved against, exported) only once durable: one
        // exported and then lost in a crash would look like a removed one.
        // The next group commit's sync covers it; an idle spool gets a sync
        // of its own (see `publish_durable`).
        self.undurable = Some((size, shared.syncs.next(), Instant::now()));
        if force {
            self.publish_durable(shared, true)?;
        }
        self.signed_size = size;
        self.unsigned_since = None;
        metrics::counter!("auditrail_checkpoints_total").increment(1);
        metrics::gauge!("auditrail_checkpoint_tree_size").set(size as f64);
        tracing::debug!(size, "signed a checkpoint");
        Ok(Some(note))
    }
}

/// How long a checkpoint waits for a group commit to make it durable before
/// the builder syncs the spool itself.
const DURABLE_WAIT: Duration = Duration::from_millis(500);

impl Builder {
    /// Shows the newest checkpoint once a sync has covered it; syncs itself
    /// when none came within [`DURABLE_WAIT`] (or at once with `now`).
    fn publish_durable(&mut self, shared: &Shared, now: bool) -> Result<(), SpoolError> {
        let Some((size, ticket, since)) = self.undurable else {
            return Ok(());
        };
        if !shared.syncs.covered(ticket) {
            if !now && since.elapsed() < DURABLE_WAIT {
                return Ok(());
            }
            shared.sync()?;
        }
        shared.checkpoints_durable.fetch_max(size, Ordering::AcqRel);
        self.undurable = None;
        Ok(())
    }
}

/// The chain hash stored with the event `seq`.
fn chain_hash_of(shared: &Shared, seq: u64) -> Result<Hash, SpoolError> {
    let (_, value) = shared
        .batch_holding(seq)?
        .ok_or_else(|| SpoolError::Corrupt(format!("merkle tree: seq {seq} is not stored")))?;
    let view = BatchView::parse(&value)?;
    let i = seq
        .checked_sub(view.first_seq)
        .filter(|&i| (i as usize) < view.count());
    match i {
        Some(i) => Ok(view.record(i as usize)?.1),
        // Removed by retention: its hash is the removed tail's.
        None => match crate::retention::removed_tail(&shared.meta)? {
            Some((tail, hash)) if tail == seq => Ok(hash),
            _ => Err(SpoolError::Corrupt(format!(
                "merkle tree: seq {seq} is not stored"
            ))),
        },
    }
}

/// How often the builder looks for newly durable events.
const POLL: Duration = Duration::from_millis(100);

/// The builder thread: grows the tree, signs checkpoints, and signs a last
/// one when the spool closes (`stop` disconnects).
pub(crate) fn run_builder(
    shared: Arc<Shared>,
    signing: Option<Signing>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    loop {
        let stopping = matches!(
            stop.recv_timeout(POLL),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        if let Err(e) = step(&shared, signing.as_ref(), stopping) {
            if shared.failure.check().is_ok() {
                tracing::error!(error = %e, "building the merkle tree");
                metrics::counter!("auditrail_merkle_errors_total").increment(1);
            }
        }
        if stopping {
            return;
        }
    }
}

pub(crate) fn step(
    shared: &Shared,
    signing: Option<&Signing>,
    force: bool,
) -> Result<(), SpoolError> {
    let mut guard = lock(&shared.tree);
    if guard.is_none() {
        *guard = Builder::open(shared)?;
    }
    let Some(builder) = guard.as_mut() else {
        return Ok(());
    };
    builder.advance(shared)?;
    if let Some(signing) = signing {
        builder.checkpoint_if_due(shared, signing, force)?;
    }
    builder.publish_durable(shared, force)
}

/// Level-0 tiles wholly below `first_retained` are no longer needed: the
/// levels above them keep the tree's root computable.
pub(crate) fn forget_leaves_below(shared: &Shared, first_retained: u64) -> Result<(), SpoolError> {
    let Some(state) = TreeState::read(&shared.merkle)? else {
        return Ok(());
    };
    let below = first_retained.saturating_sub(state.first_seq) / TILE_WIDTH;
    for item in shared.merkle.range(tile_key(0, 0)..tile_key(0, below)) {
        let (key, _) = item?;
        shared.merkle.remove(key)?;
    }
    Ok(())
}

/// A checkpoint as the spool stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it signs.
    pub size: u64,
    /// The signed note.
    pub note: String,
}

pub(crate) fn checkpoints(shared: &Shared) -> Result<Vec<StoredCheckpoint>, SpoolError> {
    let durable = shared.checkpoints_durable.load(Ordering::Acquire);
    shared
        .checkpoints
        .range(..=durable.to_be_bytes())
        .map(|item| {
            let (key, value) = item?;
            Ok(StoredCheckpoint {
                size: crate::seq_from_bytes(&key),
                note: String::from_utf8(value.to_vec())
                    .map_err(|_| SpoolError::Corrupt("a stored checkpoint is not UTF-8".into()))?,
            })
        })
        .collect()
}

/// The stored checkpoint of tree size `size`, or the newest one.
fn checkpoint_at(shared: &Shared, size: Option<u64>) -> Result<StoredCheckpoint, SpoolError> {
    let found = match size {
        Some(size) => shared
            .checkpoints
            .get(size.to_be_bytes())?
            .map(|v| (size, v)),
        None => shared
            .checkpoints
            .last()?
            .map(|(k, v)| (crate::seq_from_bytes(&k), v)),
    };
    let (size, note) = found.ok_or(SpoolError::NoCheckpoint { size })?;
    Ok(StoredCheckpoint {
        size,
        note: String::from_utf8(note.to_vec())
            .map_err(|_| SpoolError::Corrupt("a stored checkpoint is not UTF-8".into()))?,
    })
}

/// Brings the tree up to the durable seq, then reads its state.
fn caught_up(shared: &Shared) -> Result<TreeState, SpoolError> {
    step(shared, None, false)?;
    TreeState::read(&shared.merkle)?.ok_or(SpoolError::NoCheckpoint { size: None })
}

/// An inclusion proof of the event `seq` against the checkpoint of tree
/// size `at_size`, or the newest checkpoint.
pub(crate) fn prove_inclusion(
    shared: &Shared,
    seq: u64,
    at_size: Option<u64>,
) -> Result<InclusionProof, SpoolError> {
    let state = caught_up(shared)?;
    let checkpoint = checkpoint_at(shared, at_size)?;
    let index = seq
        .checked_sub(state.first_seq)
        .filter(|&i| i < checkpoint.size)
        .ok_or(SpoolError::NotCovered {
            seq,
            size: checkpoint.size,
            first_seq: state.first_seq,
        })?;
    let (_, value) = shared
        .batch_holding(seq)?
        .ok_or(SpoolError::NotRetained(seq))?;
    let view = BatchView::parse(&value)?;
    let i = seq - view.first_seq;
    if i as usize >= view.count() {
        return Err(SpoolError::NotRetained(seq));
    }
    let (canonical, _) = view.record(i as usize)?;
    let path = merkle::inclusion_proof(&Tiles(&shared.merkle), index, checkpoint.size)?;
    Ok(InclusionProof {
        seq,
        leaf_index: index,
        event: base64::engine::general_purpose::STANDARD.encode(canonical),
        hashes: hashes_to_hex(&path),
        checkpoint: checkpoint.note,
    })
}

/// A consistency proof from the checkpoint of `old_size` to that of
/// `new_size`, or to the newest.
pub(crate) fn prove_consistency(
    shared: &Shared,
    old_size: u64,
    new_size: Option<u64>,
) -> Result<ConsistencyProof, SpoolError> {
    let state = caught_up(shared)?;
    let old = checkpoint_at(shared, Some(old_size))?;
    let new = checkpoint_at(shared, new_size)?;
    if old.size > new.size {
        return Err(SpoolError::NoCheckpoint {
            size: Some(old.size),
        });
    }
    // The proof needs the nodes at the old tree's right edge; below 256
    // leaves they sit in level-0 tiles, which retention removes with the
    // events (see `forget_leaves_below`).
    let retained_from = shared
        .first_seq
        .load(Ordering::Acquire)
        .saturating_sub(state.first_seq);
    if !old.size.is_multiple_of(TILE_WIDTH) && old.size / TILE_WIDTH < retained_from / TILE_WIDTH {
        return Err(SpoolError::ProofPastRetention { size: old.size });
    }
    let hashes = match old.size {
        0 => Vec::new(),
        m => merkle::consistency_proof(&Tiles(&shared.merkle), m, new.size)?,
    };
    Ok(ConsistencyProof {
        old_checkpoint: old.note,
        new_checkpoint: new.note,
        hashes: hashes_to_hex(&hashes),
    })
}
