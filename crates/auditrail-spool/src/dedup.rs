//! Deduplication by event id, within a tenant.
//!
//! Every retained event's 128-bit dedup key lives in an in-memory set, so the
//! check on the ingest path is a lookup in memory and never a disk read. The
//! keys are also persisted, one sled value per batch in the `ids` tree (key:
//! the batch's first seq, value: its events' keys in seq order), which is
//! what rebuilds the set at start-up: 16 bytes read per retained event.
//!
//! Why not one sled key per event: measured here, a random-key sled insert
//! costs about 10 µs of CPU, which alone would cap ingest far below target.
//!
//! The set keeps the whole 16-byte key (a shorter fingerprint could call a
//! new event a duplicate and drop it after acknowledging it), in a table of
//! its own rather than a `HashSet`: `hashbrown` doubles its table and keeps
//! it at most 7/8 full, so a set of 16-byte keys takes 17 bytes a slot at
//! between 7/16 and 7/8 load, 19.4 to 38.9 bytes per key (28.5 at 10 M
//! keys). Here the keys are split by their first byte into 256 shards, each
//! an open-addressing table with linear probing in Robin Hood order (a
//! lookup stops as soon as it passes where the key would be), rebuilt to
//! 70% load when it passes 85% (growing) or drops below 67% (as retention
//! removes keys): 18.8 to 23.9 bytes per key, and a rebuild copies 1/256 of
//! the set, not all of it, so the writer never stalls on one big rehash.

use auditrail_model::id::dedup_key;

use crate::batch::BatchView;
use crate::{seq_key, SpoolError};

const SHARDS: usize = 256;
/// A shard grows when a key would fill it past this many thousandths...
const MAX_LOAD: usize = 850;
/// ...or shrinks (as retention removes keys) below this many...
const MIN_LOAD: usize = 670;
/// ...to this load.
const TARGET_LOAD: usize = 700;
const MIN_SLOTS: usize = 16;

/// The slots a shard needs to hold `len` keys at `TARGET_LOAD`.
fn slots_for(len: usize) -> usize {
    (len * 1000 / TARGET_LOAD + 1).max(MIN_SLOTS)
}

/// One shard: `slots` holds keys, 0 meaning empty (the key 0 itself is
/// kept aside, in `DedupSet::has_zero`).
#[derive(Default)]
struct Shard {
    slots: Box<[u128]>,
    len: usize,
}

impl Shard {
    /// Where `key` belongs in `n` slots: its low 64 bits (uniform: keys are
    /// SHA-256 prefixes) scaled to `0..n`. The shard is chosen by the top
    /// byte, so the two do not correlate.
    fn home(key: u128, n: usize) -> usize {
        ((key as u64 as u128 * n as u128) >> 64) as usize
    }

    /// How far the key in slot `i` is from its home.
    fn distance(&self, key: u128, i: usize) -> usize {
        let n = self.slots.len();
        (i + n - Self::home(key, n)) % n
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: u128) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mut i = Self::home(key, n);
        let mut d = 0;
        loop {
            let k = self.slots[i];
            if k == key {
                return Some(i);
            }
            // Robin Hood order: a key sits no closer to its home than any
            // key it passed, so once the keys here are closer to theirs than
            // `key` would be, `key` is not in the table.
            if k == 0 || self.distance(k, i) < d {
                return None;
            }
            i = (i + 1) % n;
            d += 1;
        }
    }

    /// Places a key known to be absent.
    fn place(&mut self, mut key: u128) {
        let n = self.slots.len();
        let mut i = Self::home(key, n);
        let mut d = 0;
        loop {
            let k = self.slots[i];
            if k == 0 {
                self.slots[i] = key;
                self.len += 1;
                return;
            }
            let kd = self.distance(k, i);
            if kd < d {
                // The key here is closer to home: it moves on instead.
                self.slots[i] = key;
                key = k;
                d = kd;
            }
            i = (i + 1) % n;
            d += 1;
        }
    }

    fn insert(&mut self, key: u128) -> bool {
        if self.find(key).is_some() {
            return false;
        }
        if (self.len + 1) * 1000 > self.slots.len() * MAX_LOAD {
            self.resize(slots_for(self.len + 1));
        }
        self.place(key);
        true
    }

    fn remove(&mut self, key: u128) {
        let Some(mut i) = self.find(key) else {
            return;
        };
        let n = self.slots.len();
        // Backward shift: the keys after it that are not at home move one
        // slot back, which keeps the Robin Hood order without tombstones.
        loop {
            let j = (i + 1) % n;
            let k = self.slots[j];
            if k == 0 || self.distance(k, j) == 0 {
                self.slots[i] = 0;
                break;
            }
            self.slots[i] = k;
            i = j;
        }
        self.len -= 1;
        if self.len * 1000 < n * MIN_LOAD && n > MIN_SLOTS {
            self.resize(slots_for(self.len));
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0u128; slots].into_boxed_slice());
        self.len = 0;
        for key in old.iter().copied().filter(|&k| k != 0) {
            self.place(key);
        }
    }
}

pub(crate) struct DedupSet {
    shards: Vec<Shard>,
    has_zero: bool,
}

impl Default for DedupSet {
    fn default() -> Self {
        DedupSet::with_capacity(0)
    }
}

impl DedupSet {
    /// A set sized for about `keys` keys.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let per_shard = keys / SHARDS;
        DedupSet {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    slots: vec![0u128; slots_for(per_shard)].into_boxed_slice(),
                    len: 0,
                })
                .collect(),
            has_zero: false,
        }
    }

    fn shard(&mut self, key: u128) -> &mut Shard {
        &mut self.shards[(key >> 120) as usize]
    }

    /// Returns false when the key was already there.
    pub(crate) fn insert(&mut self, key: u128) -> bool {
        if key == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        self.shard(key).insert(key)
    }

    pub(crate) fn remove(&mut self, key: u128) {
        if key == 0 {
            self.has_zero = false;
        } else {
            self.shard(key).remove(key);
        }
    }

    pub(crate) fn remove_run(&mut self, run: &[u8]) {
        for key in run.chunks_exact(16) {
            self.remove(key_from_bytes(key));
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, key: u128) -> bool {
        if key == 0 {
            return self.has_zero;
        }
        self.shards[(key >> 120) as usize].find(key).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len).sum::<usize>() + usize::from(self.has_zero)
    }

    /// The bytes its tables take.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.slots.len() * 16)
            .sum::<usize>()
            + self.shards.capacity() * std::mem::size_of::<Shard>()
    }
}

/// An event's dedup key: its id within its tenant (see [`dedup_key`]).
pub(crate) fn event_key(event: &auditrail_model::AuditEvent) -> u128 {
    u128::from_be_bytes(dedup_key(&event.tenant, &event.event_id))
}

fn key_from_bytes(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(bytes.try_into().expect("16 bytes"))
}

/// About how many keys the `ids` tree holds: the seqs from its first batch
/// to the end of its last (seqs are gap-free, and retention removes whole
/// batches from the front).
fn expected_keys(ids: &sled::Tree) -> Result<usize, SpoolError> {
    let (Some((first, _)), Some((last, run))) = (ids.first()?, ids.last()?) else {
        return Ok(0);
    };
    let end = crate::seq_from_bytes(&last) + (run.len() / 16) as u64;
    Ok(usize::try_from(end.saturating_sub(crate::seq_from_bytes(&first))).unwrap_or(0))
}

/// Rebuilds the set from the `ids` tree. A batch whose run is missing (a
/// crash between the two inserts of one commit, before its fsync) gets its
/// run recomputed from its events.
pub(crate) fn recover(batches: &sled::Tree, ids: &sled::Tree) -> Result<DedupSet, SpoolError> {
    let mut set = DedupSet::with_capacity(expected_keys(ids)?);
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// Keys that crowd one shard and collide on their home slots: the
    /// probing, Robin Hood order and backward shift do all the work.
    fn crowded(i: u64) -> u128 {
        (7u128 << 120) | u128::from(i % 3) << 64 | u128::from(i / 3)
    }

    proptest! {
        #[test]
        fn it_agrees_with_a_hash_set(ops in proptest::collection::vec((any::<bool>(), 0u64..400, any::<bool>()), 1..2000)) {
            let mut set = DedupSet::default();
            let mut model = HashSet::new();
            for (insert, n, crowd) in ops {
                let key = if crowd { crowded(n) } else { u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) };
                if insert {
                    prop_assert_eq!(set.insert(key), model.insert(key));
                } else {
                    set.remove(key);
                    model.remove(&key);
                }
                prop_assert_eq!(set.len(), model.len());
            }
            for n in 0..400 {
                for key in [crowded(n), u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)] {
                    prop_assert_eq!(set.contains(key), model.contains(&key));
                }
            }
        }
    }

    #[test]
    fn zero_is_a_key_like_any_other() {
        let mut set = DedupSet::default();
        assert!(!set.contains(0));
        assert!(set.insert(0));
        assert!(!set.insert(0));
        assert_eq!(set.len(), 1);
        set.remove(0);
        assert!(!set.contains(0));
    }

    #[test]
    fn memory_stays_under_24_bytes_a_key_as_it_grows_and_shrinks() {
        let mut set = DedupSet::default();
        let key = |i: u64| u128::from_be_bytes(sha2_key(i));
        let mut worst: f64 = 0.0;
        for i in 0..400_000u64 {
            set.insert(key(i));
            if i >= 100_000 && i % 1000 == 0 {
                worst = worst.max(set.memory_bytes() as f64 / set.len() as f64);
            }
        }
        assert!(worst < 24.0, "{worst} bytes a key while growing");
        for i in 0..200_000u64 {
            set.remove(key(i));
        }
        let after = set.memory_bytes() as f64 / set.len() as f64;
        assert!(after < 24.0, "{after} bytes a key after removing half");
        for i in 0..400_000u64 {
            assert_eq!(set.contains(key(i)), i >= 200_000, "key {i}");
        }
    }

    fn sha2_key(i: u64) -> [u8; 16] {
        dedup_key("default", &format!("event-{i}"))
    }
}
