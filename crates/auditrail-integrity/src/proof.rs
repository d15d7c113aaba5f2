//! Proof files: what `auditrail prove` writes and `auditrail verify
//! --proof` checks, offline, with the public key alone.
//!
//! JSON, one object:
//!
//! * `{"type":"inclusion", "seq", "leaf_index", "event", "hashes",
//!   "checkpoint"}`: the event's canonical bytes (`event`, base64) are leaf
//!   `leaf_index` of the tree the signed `checkpoint` states; `hashes` is the
//!   RFC 9162 audit path (hex, leaf's sibling first).
//! * `{"type":"consistency", "old_checkpoint", "new_checkpoint", "hashes"}`:
//!   the newer signed tree extends the older one (RFC 9162 consistency
//!   proof): history was only appended to.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::merkle::{self, Hash, ProofError};
use crate::note::VerifierKey;

/// A proof file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Proof {
    Inclusion(InclusionProof),
    Consistency(ConsistencyProof),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub seq: u64,
    pub leaf_index: u64,
    /// The event's canonical bytes, base64.
    pub event: String,
    /// The audit path, hex.
    pub hashes: Vec<String>,
    /// The signed note of the checkpoint the path leads to.
    pub checkpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old_checkpoint: String,
    pub new_checkpoint: String,
    pub hashes: Vec<String>,
}

/// Why a proof file does not prove what it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofCheckError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Proof(#[from] ProofError),
    #[error("malformed proof: {0}")]
    Malformed(String),
    #[error("seq {seq} is not leaf {leaf_index} of a tree whose first seq is {first_seq}")]
    SeqMismatch {
        seq: u64,
        leaf_index: u64,
        first_seq: u64,
    },
    #[error("the two checkpoints are of different logs: {old:?} and {new:?}")]
    DifferentOrigins { old: String, new: String },
}

pub fn hashes_to_hex(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn hashes_from_hex(hashes: &[String]) -> Result<Vec<Hash>, ProofCheckError> {
    hashes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or_else(|| ProofCheckError::Malformed(format!("{h:?} is not a hex SHA-256")))
        })
        .collect()
}

impl InclusionProof {
    /// The event's canonical bytes.
    pub fn event_bytes(&self) -> Result<Vec<u8>, ProofCheckError> {
        B64.decode(&self.event)
            .map_err(|_| ProofCheckError::Malformed("`event` is not base64".into()))
    }

    /// Checks the checkpoint's signature by `key` and the path from the
    /// event to its root; returns the checkpoint.
    pub fn verify(&self, key: &VerifierKey) -> Result<Checkpoint, ProofCheckError> {
        let checkpoint = Checkpoint::open(&self.checkpoint, key)?;
        if checkpoint.first_seq.checked_add(self.leaf_index) != Some(self.seq) {
            return Err(ProofCheckError::SeqMismatch {
                seq: self.seq,
                leaf_index: self.leaf_index,
                first_seq: checkpoint.first_seq,
            });
        }
        let leaf = merkle::leaf_hash(&self.event_bytes()?);
        merkle::verify_inclusion(
            self.leaf_index,
            checkpoint.size,
            &leaf,
            &hashes_from_hex(&self.hashes)?,
            &checkpoint.root,
        )?;
        Ok(checkpoint)
    }
}

impl ConsistencyProof {
    /// Checks both signatures by `key` and that the newer tree extends the
    /// older; returns both checkpoints.
    pub fn verify(&self, key: &VerifierKey) -> Result<(Checkpoint, Checkpoint), ProofCheckError> {
        let old = Checkpoint::open(&self.old_checkpoint, key)?;
        let new = Checkpoint::open(&self.new_checkpoint, key)?;
        if old.origin != new.origin {
            return Err(ProofCheckError::DifferentOrigins {
                old: old.origin,
                new: new.origin,
            });
        }
        merkle::verify_consistency(
            old.size,
            new.size,
            &old.root,
            &new.root,
            &hashes_from_hex(&self.hashes)?,
        )?;
        Ok((old, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Frontier, NodeSource};
    use crate::note::SignerKey;
    use std::collections::HashMap;
    use std::convert::Infallible;

    struct Store(HashMap<(u8, u64), Hash>);
    impl NodeSource for Store {
        type Error = Infallible;
        fn node(&self, level: u8, index: u64) -> Result<Hash, Infallible> {
            Ok(self.0[&(level, index)])
        }
    }

    fn events(n: u64) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("event {i}").into_bytes()).collect()
    }

    fn tree(events: &[Vec<u8>]) -> (Store, Frontier) {
        let mut nodes = HashMap::new();
        let mut frontier = Frontier::default();
        for e in events {
            frontier.push(merkle::leaf_hash(e), |l, i, h| {
                nodes.insert((l, i), *h);
            });
        }
        (Store(nodes), frontier)
    }

    fn checkpoint(store: &Store, size: u64) -> Checkpoint {
        Checkpoint {
            origin: "auditrail/n/s".into(),
            size,
            root: merkle::root(store, size).unwrap(),
            first_seq: 10,
            chain: [0; 32],
            previous: 0,
            time_unix_nano: 1,
        }
    }

    #[test]
    fn inclusion_round_trips_through_json_and_fails_when_changed() {
        let key = SignerKey::generate("k").unwrap();
        let e = events(13);
        let (store, _) = tree(&e);
        let proof = Proof::Inclusion(InclusionProof {
            seq: 15,
            leaf_index: 5,
            event: B64.encode(&e[5]),
            hashes: hashes_to_hex(&merkle::inclusion_proof(&store, 5, 13).unwrap()),
            checkpoint: checkpoint(&store, 13).sign(&key).unwrap(),
        });
        let json = serde_json::to_string(&proof).unwrap();
        let Proof::Inclusion(read) = serde_json::from_str(&json).unwrap() else {
            panic!("an inclusion proof")
        };
        assert_eq!(read.verify(&key.verifier()).unwrap().size, 13);
        // The row changed after the proof was made.
        let changed = InclusionProof {
            event: B64.encode(b"event 5, edited"),
            ..read.clone()
        };
        assert!(matches!(
            changed.verify(&key.verifier()),
            Err(ProofCheckError::Proof(ProofError::RootMismatch { .. }))
        ));
        // The claimed seq is not the leaf's.
        let moved = InclusionProof {
            seq: 16,
            ..read.clone()
        };
        assert!(matches!(
            moved.verify(&key.verifier()),
            Err(ProofCheckError::SeqMismatch { .. })
        ));
        // Another key.
        let other = SignerKey::generate("k").unwrap().verifier();
        assert!(read.verify(&other).is_err());
    }

    #[test]
    fn consistency_proves_append_only() {
        let key = SignerKey::generate("k").unwrap();
        let e = events(21);
        let (store, _) = tree(&e);
        let proof = ConsistencyProof {
            old_checkpoint: checkpoint(&store, 6).sign(&key).unwrap(),
            new_checkpoint: checkpoint(&store, 21).sign(&key).unwrap(),
            hashes: hashes_to_hex(&merkle::consistency_proof(&store, 6, 21).unwrap()),
        };
        let (old, new) = proof.verify(&key.verifier()).unwrap();
        assert_eq!((old.size, new.size), (6, 21));
        // A history rewritten below the old size: the same proof shape
        // from the forged tree does not connect to the old signed root.
        let mut forged = e.clone();
        forged[2] = b"rewritten".to_vec();
        let (fstore, _) = tree(&forged);
        let rewritten = ConsistencyProof {
            new_checkpoint: checkpoint(&fstore, 21).sign(&key).unwrap(),
            hashes: hashes_to_hex(&merkle::consistency_proof(&fstore, 6, 21).unwrap()),
            ..proof
        };
        assert!(rewritten.verify(&key.verifier()).is_err());
    }
}
