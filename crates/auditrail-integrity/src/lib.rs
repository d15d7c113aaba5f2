//! Tamper evidence an auditor can check offline, with nothing but the
//! public key: the RFC 9162 Merkle tree over a node's events
//! ([`merkle`]), checkpoints that sign its size and root ([`checkpoint`],
//! in the C2SP signed-note format of [`note`]), and the inclusion and
//! consistency proofs that tie an event, or an older checkpoint, to a
//! signed one ([`proof`]).
//!
//! [`audit`] walks a store's events (the spool's batches, a sink's rows)
//! against all of it, so that the spool, the sinks' verification and a
//! stand-alone verifier share one implementation.

pub mod audit;
pub mod checkpoint;
pub mod merkle;
pub mod note;
pub mod proof;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use merkle::{Frontier, Hash, NodeSource, ProofError};
pub use note::{NoteError, SignerKey, VerifierKey};
pub use proof::{ConsistencyProof, InclusionProof, Proof, ProofCheckError};
