//! Re-walking a spool: its batches, in seq order, through the audit that
//! every store shares (`auditrail_integrity::audit`), with the spool's
//! own start (genesis, or where retention left off) and its kept tree
//! tiles.

use std::cell::RefCell;

use auditrail_integrity::audit::{Audit, KeptNodes, StoredNote, TreeStart};
pub use auditrail_integrity::audit::{
    ChainStart, CheckpointSummary, Problem, ProblemKind, VerifyReport,
};
use auditrail_integrity::merkle::NodeSource;
use auditrail_integrity::VerifierKey;
use auditrail_model::{Hash, GENESIS_HASH};

use crate::batch::BatchView;
use crate::tree::{self, Tiles, TreeState};
use crate::{retention, Shared, SpoolError};

/// The spool's tiles as [`KeptNodes`], with the level-0 tile read last
/// kept at hand (the walk asks for each leaf in turn).
struct KeptTiles<'a> {
    tiles: Tiles<'a>,
    leaves: RefCell<Option<(u64, Vec<u8>)>>,
}

impl KeptNodes for KeptTiles<'_> {
    fn node(&self, level: u8, index: u64) -> Option<Hash> {
        if level != 0 {
            return self.tiles.node(level, index).ok();
        }
        let tile = index / 256;
        let mut cached = self.leaves.borrow_mut();
        if cached.as_ref().is_none_or(|(t, _)| *t != tile) {
            let bytes = self.tiles.0.get(tree::tile_key(0, tile)).ok()??;
            *cached = Some((tile, bytes.to_vec()));
        }
        let (_, bytes) = cached.as_ref()?;
        let at = (index % 256) as usize * 32;
        bytes.get(at..at + 32)?.try_into().ok()
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
    let tree = match TreeState::read(&shared.merkle)? {
        Some(state) => Some(TreeStart {
            first_seq: state.first_seq,
            checkpoints: tree::checkpoints(shared)?
                .into_iter()
                .map(|c| StoredNote {
                    size: c.size,
                    note: c.note,
                })
                .collect(),
            spool_id: shared.identity.get().map(|i| i.spool_id.clone()),
            nodes_kept: true,
        }),
        None => None,
    };
    let mut walk = Audit::new(key, tree);
    let nodes = KeptTiles {
        tiles: Tiles(&shared.merkle),
        leaves: RefCell::new(None),
    };
    let mut first = true;
    for item in shared.batches.iter() {
        let (key, value) = item?;
        let view = match BatchView::parse(&value) {
            Ok(view) => view,
            Err(e) => {
                let seq = crate::seq_from_bytes(&key);
                // What follows cannot link to a batch that did not decode.
                if walk.unreadable(seq, e.to_string()) {
                    break;
                }
                continue;
            }
        };
        if first {
            first = false;
            let prev = view.prev_hash_of(0)?;
            match removed_tail {
                Some((last_removed_seq, hash)) if last_removed_seq + 1 == view.first_seq => {
                    // Retention recorded where the chain left off; the first
                    // retained event must link to it.
                    let start = ChainStart::RemovedTail {
                        last_removed_seq,
                        hash,
                    };
                    walk.start(start, Some(hash), Some(view.first_seq));
                }
                Some((last_removed_seq, _)) if last_removed_seq >= view.first_seq => {
                    // A removal record past the first batch: should not be.
                    walk.start(ChainStart::Unanchored { prev_hash: prev }, None, None);
                }
                Some((last_removed_seq, hash)) => {
                    let start = ChainStart::RemovedTail {
                        last_removed_seq,
                        hash,
                    };
                    walk.start(start, Some(hash), Some(last_removed_seq + 1));
                }
                // A spool that continued the numbering of a wiped one starts
                // a new chain from genesis past seq 1.
                None if prev == GENESIS_HASH => walk.start(ChainStart::Genesis, None, None),
                None if view.first_seq == 1 => {
                    walk.start(ChainStart::Genesis, Some(GENESIS_HASH), None)
                }
                None => {
                    // Retention records what it removes, so events before
                    // the first retained one went some other way.
                    let last = view.first_seq - 1;
                    walk.start(ChainStart::Unanchored { prev_hash: prev }, None, None);
                    let detail = format!("seq 1..{last} absent, and retention did not remove them");
                    if walk.missing_before(1, last, detail) {
                        return Ok(walk.finish());
                    }
                }
            }
        }
        for i in 0..view.count() {
            let seq = view.first_seq + i as u64;
            let (canonical, stored_hash) = match view.record(i) {
                Ok(record) => record,
                Err(e) => {
                    if walk.unreadable(seq, e.to_string()) {
                        return Ok(walk.finish());
                    }
                    continue;
                }
            };
            // The batch's header holds the first prev_hash; the rest are the
            // hashes of the records before, in the same value.
            let stored_prev = match view.prev_hash_of(i) {
                Ok(prev) => prev,
                Err(_) => GENESIS_HASH,
            };
            if walk.event(seq, stored_prev, canonical, stored_hash, &nodes) {
                return Ok(walk.finish());
            }
        }
    }
    Ok(walk.finish())
}
