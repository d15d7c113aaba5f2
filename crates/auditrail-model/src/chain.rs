//! The hash chain that makes a node's spool tamper-evident.
//!
//! `hash(n) = SHA-256(hash(n-1) ‖ canonical_bytes(n))` in `seq` order, with
//! [`GENESIS_HASH`] standing in for the hash before a node's first event.
//! Because `seq` and `node` are inside the canonical bytes, reordering,
//! removing or inserting an event breaks every later link.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first event a node ever stores.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// One step of the chain.
pub fn chain_hash(prev_hash: &Hash, canonical_bytes: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical_bytes);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_depends_on_previous_hash_and_bytes() {
        let a = chain_hash(&GENESIS_HASH, b"one");
        let b = chain_hash(&a, b"two");
        assert_ne!(a, b);
        assert_ne!(b, chain_hash(&GENESIS_HASH, b"two"));
        assert_ne!(a, chain_hash(&GENESIS_HASH, b"onf"));
        // Known answer: SHA-256 of 32 zero bytes followed by "one".
        let mut input = vec![0u8; 32];
        input.extend_from_slice(b"one");
        let expected: Hash = Sha256::digest(&input).into();
        assert_eq!(a, expected);
    }
}
