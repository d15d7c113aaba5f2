//! The bytes of one file that were written but not yet fsync'd: a set of
//! non-overlapping byte ranges over the durable contents.
//!
//! Writes to a file are mostly appends, so a write that touches or continues
//! a range grows that range in place: a segment written in many pieces stays
//! one range, and an fsync costs only the bytes that changed.

use std::collections::BTreeMap;

/// Dirty ranges, keyed by their first offset. Invariant: ranges neither
/// overlap nor touch (touching ranges are merged), and none is empty.
#[derive(Debug, Default, Clone)]
pub struct Extents {
    ranges: BTreeMap<u64, Vec<u8>>,
}

fn end(start: u64, data: &[u8]) -> u64 {
    start + data.len() as u64
}

impl Extents {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes held (for statistics).
    pub fn len_bytes(&self) -> u64 {
        self.ranges.values().map(|v| v.len() as u64).sum()
    }

    /// Records `data` at `offset`, replacing whatever dirty bytes were there.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let write_end = end(offset, data);
        // The ranges that overlap or touch [offset, write_end) form one run
        // of consecutive keys: walk back from the last one starting at or
        // before write_end.
        let touching: Vec<u64> = self
            .ranges
            .range(..=write_end)
            .rev()
            .take_while(|(start, bytes)| end(**start, bytes) >= offset)
            .map(|(start, _)| *start)
            .collect();
        let (base_start, mut buf) = match touching.last() {
            Some(&first) if first <= offset => (first, self.ranges.remove(&first).unwrap()),
            _ => (offset, Vec::new()),
        };
        let mut merged_end = write_end.max(end(base_start, &buf));
        let mut tails = Vec::new();
        for start in touching.iter().rev() {
            if let Some(bytes) = self.ranges.remove(start) {
                let range_end = end(*start, &bytes);
                if range_end > write_end {
                    let keep_from = (write_end - start) as usize;
                    tails.push((write_end, bytes[keep_from..].to_vec()));
                    merged_end = merged_end.max(range_end);
                }
            }
        }
        buf.resize((merged_end - base_start) as usize, 0);
        let at = (offset - base_start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        for (tail_start, tail) in tails {
            let at = (tail_start - base_start) as usize;
            buf[at..at + tail.len()].copy_from_slice(&tail);
        }
        self.ranges.insert(base_start, buf);
    }

    /// Forgets every dirty byte at or past `size` (a truncation).
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.ranges.range(size..).map(|(s, _)| *s).collect();
        for start in beyond {
            self.ranges.remove(&start);
        }
        if let Some((start, bytes)) = self.ranges.range_mut(..size).next_back() {
            if end(*start, bytes) > size {
                bytes.truncate((size - start) as usize);
            }
        }
    }

    /// Copies the dirty bytes that fall in `[offset, offset + buf.len())`
    /// over `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let buf_end = offset + buf.len() as u64;
        let first = self
            .ranges
            .range(..=offset)
            .next_back()
            .map_or(offset, |(s, _)| *s);
        for (start, bytes) in self.ranges.range(first..buf_end) {
            let from = offset.max(*start);
            let to = buf_end.min(end(*start, bytes));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
    }

    /// Takes every dirty range out, in offset order.
    pub fn take(&mut self) -> BTreeMap<u64, Vec<u8>> {
        std::mem::take(&mut self.ranges)
    }

    #[cfg(test)]
    fn check_invariant(&self) {
        let mut last_end = None;
        for (start, bytes) in &self.ranges {
            assert!(!bytes.is_empty(), "empty range at {start}");
            if let Some(e) = last_end {
                assert!(
                    *start > e,
                    "range at {start} touches or overlaps one ending at {e}"
                );
            }
            last_end = Some(end(*start, bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..200, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u64..240).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        /// Against a model: a plain byte vector plus a "dirty" flag per byte.
        #[test]
        fn matches_a_byte_model(ops in proptest::collection::vec(op(), 0..40)) {
            let mut extents = Extents::default();
            let mut model: Vec<Option<u8>> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(offset, data) => {
                        extents.write(offset, &data);
                        let need = offset as usize + data.len();
                        if model.len() < need && !data.is_empty() {
                            model.resize(need, None);
                        }
                        for (i, b) in data.iter().enumerate() {
                            model[offset as usize + i] = Some(*b);
                        }
                    }
                    Op::Truncate(size) => {
                        extents.truncate(size);
                        model.truncate(size as usize);
                    }
                }
                extents.check_invariant();
            }
            let mut seen = vec![0xAAu8; 260];
            extents.overlay(0, &mut seen);
            for (i, b) in seen.iter().enumerate() {
                let expected = model.get(i).copied().flatten().unwrap_or(0xAA);
                prop_assert_eq!(*b, expected, "byte {}", i);
            }
            let dirty = model.iter().filter(|b| b.is_some()).count() as u64;
            prop_assert_eq!(extents.len_bytes(), dirty);
            // A window in the middle reads the same bytes.
            let mut window = vec![0xAAu8; 50];
            extents.overlay(37, &mut window);
            prop_assert_eq!(&window[..], &seen[37..87]);
        }
    }

    #[test]
    fn appends_stay_one_range() {
        let mut extents = Extents::default();
        for i in 0..1000u64 {
            extents.write(i * 10, &[1; 10]);
        }
        assert_eq!(extents.ranges.len(), 1);
        assert_eq!(extents.len_bytes(), 10_000);
    }
}
