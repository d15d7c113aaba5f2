//! Deduplication by event id, within a tenant.
//!
//! Every retained event's 128-bit dedup key lives in an in-memory set, so the
//! check on the ingest path is a hash lookup and never a disk read. The keys
//! are also persisted, one sled value per batch in the `ids` tree (key: the
//! batch's first seq, value: its events' keys in seq order), which is what
//! rebuilds the set at start-up: 16 bytes read per retained event.
//!
//! Why not one sled key per event: measured here, a random-key sled insert
//! costs about 10 µs of CPU, which alone would cap ingest far below target.
//! The price of this layout is memory, about 20 bytes per retained event.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use auditrail_model::id::dedup_key;

use crate::batch::BatchView;
use crate::{seq_key, SpoolError};

/// Dedup keys are SHA-256 prefixes: already uniformly distributed, so the
/// hasher just takes 64 of their bits instead of hashing them again.
#[derive(Default)]
pub(crate) struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

#[derive(Default)]
pub(crate) struct DedupSet {
    keys: HashSet<u128, BuildHasherDefault<PrehashedKey>>,
}

impl DedupSet {
    /// Returns false when the key was already there.
    pub(crate) fn insert(&mut self, key: u128) -> bool {
        self.keys.insert(key)
    }

    pub(crate) fn remove(&mut self, key: u128) {
        self.keys.remove(&key);
    }

    pub(crate) fn remove_run(&mut self, run: &[u8]) {
        for key in run.chunks_exact(16) {
            self.keys.remove(&key_from_bytes(key));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// An event's dedup key: its id within its tenant (see [`dedup_key`]).
pub(crate) fn event_key(event: &auditrail_model::AuditEvent) -> u128 {
    u128::from_be_bytes(dedup_key(&event.tenant, &event.event_id))
}

fn key_from_bytes(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(bytes.try_into().expect("16 bytes"))
}

/// Rebuilds the set from the `ids` tree. A batch whose run is missing (a
/// crash between the two inserts of one commit, before its fsync) gets its
/// run recomputed from its events.
pub(crate) fn recover(batches: &sled::Tree, ids: &sled::Tree) -> Result<DedupSet, SpoolError> {
    let mut set = DedupSet::default();
    for item in ids.iter() {
        let (_, run) = item?;
        for key in run.chunks_exact(16) {
            set.insert(key_from_bytes(key));
        }
    }
    let after = ids
        .last()?
        .map(|(k, _)| crate::seq_from_bytes(&k) + 1)
        .unwrap_or(0);
    for item in batches.range(seq_key(after)..) {
        let (key, value) = item?;
        let view = BatchView::parse(&value)?;
        let mut run = Vec::with_capacity(view.count() * 16);
        for i in 0..view.count() {
            let key = event_key(&view.event(i)?);
            set.insert(key);
            run.extend_from_slice(&key.to_be_bytes());
        }
        ids.insert(key, run)?;
    }
    Ok(set)
}
