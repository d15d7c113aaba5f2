//! The layout of one group-committed batch: one sled value holding every
//! event that one group commit stored.
//!
//! One value per batch instead of one key per event is what makes durable
//! ingest fast: sled's cost is per key and per flush, not per byte.
//!
//! ```text
//! u8       layout version (1)
//! u32      count
//! u64      first_seq
//! u64      max received_time_unix_nano in the batch (drives retention)
//! [u8;32]  prev_hash of the first event
//! records: canonical bytes ‖ hash (32 bytes)
//! u32 × count  end offset of each record, relative to the first record
//! ```
//!
//! The offset table comes last so that the value is built in place, in one
//! buffer, without copying the records once more at the end.

use auditrail_model::{AuditEvent, Hash};

use crate::SpoolError;

const LAYOUT_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 8 + 8 + 32;

/// Accumulates events into a batch value.
pub(crate) struct BatchBuilder {
    first_seq: u64,
    max_received: u64,
    ends: Vec<u32>,
    /// The value under construction: header (count and max_received are
    /// filled in by `finish`), then the records.
    buf: Vec<u8>,
}

impl BatchBuilder {
    /// `expected_bytes` sizes the buffer, so that it need not grow (and copy
    /// itself) while events are added.
    pub(crate) fn new(first_seq: u64, prev_hash: Hash, expected_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + expected_bytes);
        buf.push(LAYOUT_VERSION);
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&first_seq.to_be_bytes());
        buf.extend_from_slice(&0u64.to_be_bytes());
        buf.extend_from_slice(&prev_hash);
        debug_assert_eq!(buf.len(), HEADER_LEN);
        BatchBuilder {
            first_seq,
            max_received: 0,
            ends: Vec::new(),
            buf,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of encoded records so far.
    pub(crate) fn byte_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Adds an event whose `seq`, `node` and `prev_hash` are already set;
    /// returns its chain hash.
    pub(crate) fn push(&mut self, event: &AuditEvent) -> Hash {
        let start = self.buf.len();
        event.write_canonical_bytes(&mut self.buf);
        let hash = auditrail_model::chain_hash(&event.prev_hash, &self.buf[start..]);
        self.buf.extend_from_slice(&hash);
        let end = u32::try_from(self.byte_len()).expect("a batch stays below 4 GiB");
        self.ends.push(end);
        self.max_received = self.max_received.max(event.received_time_unix_nano);
        hash
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        let mut buf = self.buf;
        buf[1..5].copy_from_slice(&(self.ends.len() as u32).to_be_bytes());
        buf[13..21].copy_from_slice(&self.max_received.to_be_bytes());
        buf.reserve_exact(self.ends.len() * 4);
        for end in &self.ends {
            buf.extend_from_slice(&end.to_be_bytes());
        }
        debug_assert_eq!(&buf[5..13], &self.first_seq.to_be_bytes());
        buf
    }
}

/// A stored batch, read in place.
pub(crate) struct BatchView<'a> {
    bytes: &'a [u8],
    count: usize,
    pub(crate) first_seq: u64,
    pub(crate) max_received: u64,
    prev_hash: Hash,
}

impl<'a> BatchView<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, SpoolError> {
        let corrupt = |what: &str| SpoolError::Corrupt(format!("batch {what}"));
        if bytes.len() < HEADER_LEN {
            return Err(corrupt("header is truncated"));
        }
        if bytes[0] != LAYOUT_VERSION {
            return Err(corrupt(&format!("has unknown layout {}", bytes[0])));
        }
        let count = u32::from_be_bytes(bytes[1..5].try_into().expect("4")) as usize;
        let view = BatchView {
            bytes,
            count,
            first_seq: u64::from_be_bytes(bytes[5..13].try_into().expect("8")),
            max_received: u64::from_be_bytes(bytes[13..21].try_into().expect("8")),
            prev_hash: bytes[21..53].try_into().expect("32"),
        };
        let table_len = count
            .checked_mul(4)
            .filter(|&n| HEADER_LEN + n <= bytes.len());
        let Some(table_len) = table_len else {
            return Err(corrupt(&format!("at seq {} is truncated", view.first_seq)));
        };
        let records_len = bytes.len() - HEADER_LEN - table_len;
        if count > 0 && view.end(count - 1) != records_len {
            return Err(corrupt(&format!(
                "at seq {} has a bad offset table",
                view.first_seq
            )));
        }
        Ok(view)
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + self.count as u64 - 1
    }

    fn end(&self, i: usize) -> usize {
        let at = self.bytes.len() - (self.count - i) * 4;
        u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4")) as usize
    }

    /// The raw record `i`: canonical bytes and the stored hash.
    pub(crate) fn record(&self, i: usize) -> Result<(&'a [u8], Hash), SpoolError> {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        let end = self.end(i);
        let base = HEADER_LEN;
        if start + 32 > end || base + end > self.bytes.len() - self.count * 4 {
            return Err(SpoolError::Corrupt(format!(
                "record at seq {} has bad bounds",
                self.first_seq + i as u64
            )));
        }
        let record = &self.bytes[base + start..base + end];
        let (canonical, hash) = record.split_at(record.len() - 32);
        Ok((canonical, hash.try_into().expect("32")))
    }

    /// The chain hash that precedes record `i`.
    pub(crate) fn prev_hash_of(&self, i: usize) -> Result<Hash, SpoolError> {
        if i == 0 {
            Ok(self.prev_hash)
        } else {
            Ok(self.record(i - 1)?.1)
        }
    }

    /// Record `i` as an event, with its chain hashes filled in.
    pub(crate) fn event(&self, i: usize) -> Result<AuditEvent, SpoolError> {
        let (canonical, hash) = self.record(i)?;
        let mut event = AuditEvent::from_canonical_bytes(canonical).map_err(|e| {
            SpoolError::Corrupt(format!("event at seq {}: {e}", self.first_seq + i as u64))
        })?;
        event.hash = hash;
        event.prev_hash = self.prev_hash_of(i)?;
        Ok(event)
    }

    pub(crate) fn last_hash(&self) -> Result<Hash, SpoolError> {
        self.prev_hash_of(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_chain() {
        let mut builder = BatchBuilder::new(10, [7; 32], 0);
        let mut prev = [7; 32];
        for seq in 10..13 {
            let event = AuditEvent {
                seq,
                event_id: format!("e{seq}"),
                received_time_unix_nano: seq * 100,
                prev_hash: prev,
                ..Default::default()
            };
            prev = builder.push(&event);
        }
        let bytes = builder.finish();
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!((view.first_seq, view.last_seq(), view.count()), (10, 12, 3));
        assert_eq!(view.max_received, 1200);
        let second = view.event(1).unwrap();
        assert_eq!(second.event_id, "e11");
        assert_eq!(second.prev_hash, view.event(0).unwrap().hash);
        assert_eq!(view.last_hash().unwrap(), prev);
        assert!(BatchView::parse(&bytes[..bytes.len() - 1]).is_err());
    }
}
