//! A checkpoint: a signed statement of a node's tree size and root, in the
//! C2SP `tlog-checkpoint` format, plus auditrail's extension lines.
//!
//! ```text
//! auditrail/<node>/<spool id>        origin: which node's spool
//! 2000                               tree size: leaves covered
//! <base64 root hash>                 MTH of those leaves
//! first-seq 1                        the seq of leaf 0
//! chain <hex>                        hash-chain `hash` of the last covered event
//! previous 1500                      tree size of the checkpoint before (0: first)
//! time 1796300000000000000           when it was signed (unix ns)
//! ```
//!
//! `previous` links the checkpoints into a list, so a removed checkpoint is
//! found without knowing how often the node signs.
//!
//! Leaf `i` is the event with seq `first-seq + i`. The `chain` line ties the
//! spool's older per-event hash chain to the signature as well, so a sink's
//! rows can be checked link by link up to a signed point.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::merkle::Hash;
use crate::note::{self, NoteError, SignerKey, VerifierKey};

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The seq of leaf 0.
    pub first_seq: u64,
    /// The chain `hash` of the event with seq `first_seq + size - 1`
    /// (all zeros for an empty tree).
    pub chain: Hash,
    /// The tree size of the checkpoint signed before this one (0: none).
    pub previous: u64,
    pub time_unix_nano: u64,
}

/// Why a checkpoint could not be read or trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
}

impl Checkpoint {
    /// The origin line of a node's spool.
    pub fn origin_of(node: &str, spool_id: &str) -> String {
        // An origin holds no spaces or '+' (C2SP tlog-checkpoint).
        let clean = |s: &str| s.replace(|c: char| c.is_whitespace() || c == '+', "_");
        format!("auditrail/{}/{}", clean(node), clean(spool_id))
    }

    /// The seq of the last event covered (`first_seq - 1` when empty).
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.size).saturating_sub(1)
    }

    /// The note's text: what the signature covers.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\nfirst-seq {}\nchain {}\nprevious {}\ntime {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.first_seq,
            hex::encode(self.chain),
            self.previous,
            self.time_unix_nano
        )
    }

    /// The signed note.
    pub fn sign(&self, key: &SignerKey) -> Result<String, CheckpointError> {
        Ok(key.sign(&self.text())?)
    }

    /// Checks the signature by `key`, then reads the checkpoint.
    pub fn open(note: &str, key: &VerifierKey) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_text(note::open(note, key)?)
    }

    /// Reads a checkpoint's text without checking any signature (to show
    /// what a note claims, next to the reason it is not trusted).
    pub fn parse_unverified(note: &str) -> Result<Checkpoint, CheckpointError> {
        let text = match note.find("\n\n") {
            Some(at) => &note[..at + 1],
            None => note,
        };
        Checkpoint::parse_text(text)
    }

    fn parse_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        use CheckpointError::Malformed;
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or(Malformed("no origin line"))?;
        let size = lines
            .next()
            .and_then(decimal)
            .ok_or(Malformed("the tree size is not a decimal number"))?;
        let root = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| Hash::try_from(b).ok())
            .ok_or(Malformed("the root hash is not 32 bytes of base64"))?;
        let (mut first_seq, mut chain, mut previous, mut time) = (None, None, None, None);
        for line in lines {
            match line.split_once(' ') {
                Some(("first-seq", v)) => first_seq = decimal(v),
                Some(("chain", v)) => {
                    chain = hex::decode(v).ok().and_then(|b| Hash::try_from(b).ok())
                }
                Some(("previous", v)) => previous = decimal(v),
                Some(("time", v)) => time = decimal(v),
                // Lines of a later version are covered by the signature
                // but not understood; they are not an error.
                _ => {}
            }
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            first_seq: first_seq.ok_or(Malformed("no valid first-seq line"))?,
            chain: chain.ok_or(Malformed("no valid chain line"))?,
            previous: previous.ok_or(Malformed("no valid previous line"))?,
            time_unix_nano: time.ok_or(Malformed("no valid time line"))?,
        })
    }
}

/// A decimal without sign or leading zeros (as tlog-checkpoint requires).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            origin: Checkpoint::origin_of("node 1", "ab12"),
            size: 2000,
            root: [7; 32],
            first_seq: 1,
            chain: [9; 32],
            previous: 1500,
            time_unix_nano: 1_796_300_000_000_000_000,
        }
    }

    #[test]
    fn signs_and_opens() {
        let key = SignerKey::generate("auditrail-node1").unwrap();
        let note = sample().sign(&key).unwrap();
        assert!(note.starts_with("auditrail/node_1/ab12\n2000\n"));
        assert_eq!(Checkpoint::open(&note, &key.verifier()).unwrap(), sample());
        assert_eq!(Checkpoint::parse_unverified(&note).unwrap(), sample());
        assert_eq!(sample().last_seq(), 2000);
    }

    #[test]
    fn a_forged_or_edited_checkpoint_fails() {
        let key = SignerKey::generate("auditrail-node1").unwrap();
        let note = sample().sign(&key).unwrap();
        let edited = note.replacen("\n2000\n", "\n1999\n", 1);
        assert!(matches!(
            Checkpoint::open(&edited, &key.verifier()),
            Err(CheckpointError::Note(NoteError::BadSignature { .. }))
        ));
        // Signed by a key of the same name that is not the auditor's.
        let impostor = SignerKey::generate("auditrail-node1").unwrap();
        let forged = sample().sign(&impostor).unwrap();
        assert!(Checkpoint::open(&forged, &key.verifier()).is_err());
    }

    #[test]
    fn malformed_texts_are_named() {
        for (text, want) in [("o\n01\nAAAA\n", "decimal"), ("o\n5\nAAAA\n", "root hash")] {
            let err = Checkpoint::parse_unverified(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
