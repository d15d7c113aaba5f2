//! Event ids stored but not yet in the dedup index.
//!
//! The writer consults this before the index, so a resend that arrives while
//! the original is still waiting for the indexer is recognised too.

use std::collections::{HashMap, VecDeque};

#[derive(Default)]
pub(crate) struct RecentIds {
    by_key: HashMap<[u8; 16], u64>,
    in_seq_order: VecDeque<([u8; 16], u64)>,
}

impl RecentIds {
    pub(crate) fn get(&self, key: &[u8; 16]) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    pub(crate) fn insert(&mut self, key: [u8; 16], seq: u64) {
        self.by_key.insert(key, seq);
        self.in_seq_order.push_back((key, seq));
    }

    /// Drops the ids the index now holds.
    pub(crate) fn forget_through(&mut self, seq: u64) {
        while let Some(&(key, s)) = self.in_seq_order.front() {
            if s > seq {
                break;
            }
            self.in_seq_order.pop_front();
            if self.by_key.get(&key) == Some(&s) {
                self.by_key.remove(&key);
            }
        }
    }

    /// Undoes inserts above `seq` (a batch that could not be written).
    pub(crate) fn forget_after(&mut self, seq: u64) {
        while let Some(&(key, s)) = self.in_seq_order.back() {
            if s <= seq {
                break;
            }
            self.in_seq_order.pop_back();
            self.by_key.remove(&key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.in_seq_order.len()
    }
}
