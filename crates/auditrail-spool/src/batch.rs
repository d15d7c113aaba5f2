//! The layout of one group-committed batch: one sled value holding every
//! event that one group commit stored.
//!
//! One value per batch instead of one key per event is what makes durable
//! ingest fast: sled's cost is per key and per flush, not per byte.
//!
//! ```text
//! u8       layout version (2; 1 in spools written before compression)
//! u32      count
//! u64      first_seq
//! u64      max received_time_unix_nano in the batch (drives retention)
//! [u8;32]  prev_hash of the first event
//! [u8;32]  hash of the last event                 (layout 2 only)
//! u32      length of the body once decompressed  (layout 2 only)
//! body     layout 1: as it is; layout 2: one zstd frame of it
//!
//! body:
//! records: canonical bytes ‖ hash (32 bytes)
//! u32 × count  end offset of each record, relative to the first record
//! ```
//!
//! Layout 2 compresses the body because every byte of it is written and
//! fsync'd before the ack, and written again when sled rewrites the value:
//! audit events (JSON attributes, prompt text, repeated names) shrink about
//! threefold, at one zstd pass on the writer thread. The header stays plain,
//! with the last hash in it, so that opening a spool, retention and the
//! quota read a batch's seqs, times and chain ends without decompressing.
//!
//! The offset table comes last so that the body is built in place, in one
//! buffer, without copying the records once more at the end.

use std::borrow::Cow;

use auditrail_model::{AuditEvent, Hash};

use crate::SpoolError;

const PLAIN_LAYOUT: u8 = 1;
const COMPRESSED_LAYOUT: u8 = 2;
/// version, count, first_seq, max_received, prev_hash.
const COMMON_HEADER_LEN: usize = 1 + 4 + 8 + 8 + 32;
/// The common header, then the last hash and the body's plain length.
const COMPRESSED_HEADER_LEN: usize = COMMON_HEADER_LEN + 32 + 4;
/// A body above this is not one the writer made (it cuts near 4 MiB plus one
/// event): refuse it rather than allocate what a damaged length asks for.
const MAX_PLAIN_BODY: usize = 1 << 30;

/// zstd's fastest regular level. Measured against 3 in docs/benchmarks.md
/// (issue 12): the ratio is nearly the same on audit events, and the writer
/// thread is on the ack path.
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    /// One zstd context per thread (the writer's), reused for every batch.
    /// The frame carries zstd's content checksum, so a damaged body is an
    /// error when it is read, not different events.
    static COMPRESSOR: std::cell::RefCell<zstd::bulk::Compressor<'static>> = {
        let mut compressor =
            zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a zstd context for a valid level");
        compressor
            .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .expect("zstd takes the checksum flag");
        std::cell::RefCell::new(compressor)
    };
}

/// Accumulates events into a batch value.
pub(crate) struct BatchBuilder {
    first_seq: u64,
    prev_hash: Hash,
    last_hash: Hash,
    max_received: u64,
    ends: Vec<u32>,
    /// The plain body under construction: the records, then (in `finish`)
    /// the offset table.
    body: Vec<u8>,
}

impl BatchBuilder {
    /// `expected_bytes` sizes the buffer, so that it need not grow (and copy
    /// itself) while events are added.
    pub(crate) fn new(first_seq: u64, prev_hash: Hash, expected_bytes: usize) -> Self {
        BatchBuilder {
            first_seq,
            prev_hash,
            last_hash: prev_hash,
            max_received: 0,
            ends: Vec::new(),
            body: Vec::with_capacity(expected_bytes),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of encoded records so far, before compression.
    pub(crate) fn byte_len(&self) -> usize {
        self.body.len()
    }

    /// Adds an event whose `seq`, `node` and `prev_hash` are already set;
    /// returns its chain hash.
    pub(crate) fn push(&mut self, event: &AuditEvent) -> Hash {
        let start = self.body.len();
        event.write_canonical_bytes(&mut self.body);
        let hash = auditrail_model::chain_hash(&event.prev_hash, &self.body[start..]);
        self.body.extend_from_slice(&hash);
        let end = u32::try_from(self.byte_len()).expect("a batch stays below 4 GiB");
        self.ends.push(end);
        self.max_received = self.max_received.max(event.received_time_unix_nano);
        self.last_hash = hash;
        hash
    }

    /// The value to store: layout 2, the body compressed.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.body.reserve_exact(self.ends.len() * 4);
        for end in &self.ends {
            self.body.extend_from_slice(&end.to_be_bytes());
        }
        let plain_len = u32::try_from(self.body.len()).expect("a batch stays below 4 GiB");
        let mut value = Vec::with_capacity(
            COMPRESSED_HEADER_LEN + zstd::zstd_safe::compress_bound(self.body.len()),
        );
        self.put_common_header(&mut value, COMPRESSED_LAYOUT);
        value.extend_from_slice(&self.last_hash);
        value.extend_from_slice(&plain_len.to_be_bytes());
        // Into the spare capacity: compress_bound makes room for any input.
        let header = value.len();
        value.resize(value.capacity(), 0);
        let written = COMPRESSOR
            .with_borrow_mut(|compressor| {
                compressor.compress_to_buffer(&self.body, &mut value[header..])
            })
            .expect("compress_bound leaves room for any input");
        value.truncate(header + written);
        value
    }

    /// The value in layout 1 (uncompressed), as spools before layout 2
    /// stored it: for tests that read old spools.
    #[cfg(test)]
    pub(crate) fn finish_plain(mut self) -> Vec<u8> {
        let mut value = Vec::new();
        self.put_common_header(&mut value, PLAIN_LAYOUT);
        value.append(&mut self.body);
        for end in &self.ends {
            value.extend_from_slice(&end.to_be_bytes());
        }
        value
    }

    fn put_common_header(&self, value: &mut Vec<u8>, layout: u8) {
        value.push(layout);
        value.extend_from_slice(&(self.ends.len() as u32).to_be_bytes());
        value.extend_from_slice(&self.first_seq.to_be_bytes());
        value.extend_from_slice(&self.max_received.to_be_bytes());
        value.extend_from_slice(&self.prev_hash);
        debug_assert_eq!(value.len(), COMMON_HEADER_LEN);
    }
}

/// What a batch's header says, read without decompressing its body.
pub(crate) struct BatchHeader {
    pub(crate) count: usize,
    pub(crate) first_seq: u64,
    pub(crate) max_received: u64,
    pub(crate) prev_hash: Hash,
    /// Layout 2 keeps it in the header; layout 1 only at the end of its
    /// last record.
    last_hash: Option<Hash>,
    /// Layout 2: the body's length once decompressed.
    plain_len: Option<usize>,
}

impl BatchHeader {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, SpoolError> {
        if bytes.len() < COMMON_HEADER_LEN {
            return Err(corrupt("header is truncated"));
        }
        let (last_hash, plain_len) = match bytes[0] {
            PLAIN_LAYOUT => (None, None),
            COMPRESSED_LAYOUT if bytes.len() < COMPRESSED_HEADER_LEN => {
                return Err(corrupt("header is truncated"));
            }
            COMPRESSED_LAYOUT => {
                let at = COMMON_HEADER_LEN + 32;
                (
                    Some(bytes[COMMON_HEADER_LEN..at].try_into().expect("32")),
                    Some(u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize),
                )
            }
            other => return Err(corrupt(&format!("has unknown layout {other}"))),
        };
        Ok(BatchHeader {
            count: u32::from_be_bytes(bytes[1..5].try_into().expect("4")) as usize,
            first_seq: u64::from_be_bytes(bytes[5..13].try_into().expect("8")),
            max_received: u64::from_be_bytes(bytes[13..21].try_into().expect("8")),
            prev_hash: bytes[21..53].try_into().expect("32"),
            last_hash,
            plain_len,
        })
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + self.count as u64 - 1
    }

    /// The hash of the batch's last event (its `prev_hash` when empty).
    /// Decompresses nothing; a layout 1 batch is read in place.
    pub(crate) fn last_hash(&self, bytes: &[u8]) -> Result<Hash, SpoolError> {
        match self.last_hash {
            Some(hash) => Ok(hash),
            None => BatchView::parse(bytes)?.last_hash(),
        }
    }
}

/// How many bytes a stored value holds once decompressed (header included):
/// what the disk quota counts, so that `max_disk` bounds the events' own
/// size as it did before compression, and sled's files (indexes, dedup
/// runs, page headers: none of them compressed) stay within the ceiling
/// that `quota.rs` derives from it. A value too short to say counts as it
/// is.
pub(crate) fn uncompressed_len(value: &[u8]) -> usize {
    match BatchHeader::parse(value).map(|header| header.plain_len) {
        Ok(Some(plain_len)) => COMMON_HEADER_LEN + plain_len,
        _ => value.len(),
    }
}

fn corrupt(what: &str) -> SpoolError {
    SpoolError::Corrupt(format!("batch {what}"))
}

/// A stored batch, its body decompressed (layout 2) or read in place
/// (layout 1).
pub(crate) struct BatchView<'a> {
    /// The records, then the offset table.
    body: Cow<'a, [u8]>,
    count: usize,
    pub(crate) first_seq: u64,
    pub(crate) max_received: u64,
    prev_hash: Hash,
}

impl<'a> BatchView<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, SpoolError> {
        let header = BatchHeader::parse(bytes)?;
        let body = match header.last_hash {
            None => Cow::Borrowed(&bytes[COMMON_HEADER_LEN..]),
            Some(_) => Cow::Owned(decompress(&header, bytes)?),
        };
        BatchView::check(header, body)
    }

    /// A view that owns its body, to keep after the value is gone.
    /// A layout 1 body is copied; a layout 2 body is owned already.
    pub(crate) fn parse_owned(bytes: &[u8]) -> Result<BatchView<'static>, SpoolError> {
        let view = BatchView::parse(bytes)?;
        Ok(BatchView {
            body: Cow::Owned(view.body.into_owned()),
            count: view.count,
            first_seq: view.first_seq,
            max_received: view.max_received,
            prev_hash: view.prev_hash,
        })
    }

    fn check(header: BatchHeader, body: Cow<'_, [u8]>) -> Result<BatchView<'_>, SpoolError> {
        let view = BatchView {
            count: header.count,
            first_seq: header.first_seq,
            max_received: header.max_received,
            prev_hash: header.prev_hash,
            body,
        };
        let table_len = view.count.checked_mul(4).filter(|&n| n <= view.body.len());
        let Some(table_len) = table_len else {
            return Err(corrupt(&format!("at seq {} is truncated", view.first_seq)));
        };
        let records_len = view.body.len() - table_len;
        if view.count > 0 && view.end(view.count - 1) != records_len {
            return Err(corrupt(&format!(
                "at seq {} has a bad offset table",
                view.first_seq
            )));
        }
        // The header's copy of the last hash is what opening and retention
        // read instead of the body: it must be the body's.
        if let Some(hash) = header.last_hash {
            if view.last_hash()? != hash {
                return Err(corrupt(&format!(
                    "at seq {}: the last hash in its header is not its last record's",
                    view.first_seq
                )));
            }
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
        let at = self.body.len() - (self.count - i) * 4;
        u32::from_be_bytes(self.body[at..at + 4].try_into().expect("4")) as usize
    }

    /// The raw record `i`: canonical bytes and the stored hash.
    pub(crate) fn record(&self, i: usize) -> Result<(&[u8], Hash), SpoolError> {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        let end = self.end(i);
        if start + 32 > end || end > self.body.len() - self.count * 4 {
            return Err(SpoolError::Corrupt(format!(
                "record at seq {} has bad bounds",
                self.first_seq + i as u64
            )));
        }
        let record = &self.body[start..end];
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

/// Converting a stored value between the compressed layout and the plain
/// one, for tools and tests that edit stored events the way someone with
/// write access to the disk could (`verify`'s tamper tests). Nothing that
/// stores events uses it: only the writer makes batches.
pub mod raw {
    use super::*;

    /// The value in layout 1: header, records and offset table as they are.
    pub fn to_plain(value: &[u8]) -> Result<Vec<u8>, SpoolError> {
        let header = BatchHeader::parse(value)?;
        if header.last_hash.is_none() {
            return Ok(value.to_vec());
        }
        let mut plain = value[..COMMON_HEADER_LEN].to_vec();
        plain[0] = PLAIN_LAYOUT;
        plain.extend_from_slice(&decompress(&header, value)?);
        Ok(plain)
    }

    /// A layout 1 value compressed as the writer stores it, its header's
    /// last hash taken from its last record.
    pub fn from_plain(plain: &[u8]) -> Result<Vec<u8>, SpoolError> {
        let view = BatchView::parse(plain)?;
        let table = view.count * 4;
        let records = &plain[COMMON_HEADER_LEN..plain.len() - table];
        let builder = BatchBuilder {
            first_seq: view.first_seq,
            prev_hash: view.prev_hash,
            last_hash: view.last_hash()?,
            max_received: view.max_received,
            ends: plain[plain.len() - table..]
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().expect("4")))
                .collect(),
            body: records.to_vec(),
        };
        Ok(builder.finish())
    }
}

/// The plain body of a layout 2 value, checked against the length its
/// header gives.
fn decompress(header: &BatchHeader, bytes: &[u8]) -> Result<Vec<u8>, SpoolError> {
    let plain_len = header.plain_len.unwrap_or_default();
    if plain_len > MAX_PLAIN_BODY {
        return Err(corrupt(&format!(
            "at seq {} claims a body of {plain_len} bytes",
            header.first_seq
        )));
    }
    let body = zstd::bulk::decompress(&bytes[COMPRESSED_HEADER_LEN..], plain_len).map_err(|e| {
        corrupt(&format!(
            "at seq {} does not decompress: {e}",
            header.first_seq
        ))
    })?;
    if body.len() != plain_len {
        return Err(corrupt(&format!(
            "at seq {} decompresses to {} bytes, not {plain_len}",
            header.first_seq,
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three chained events with prompt-like bodies, from seq 10.
    fn builder() -> (BatchBuilder, Hash) {
        let mut builder = BatchBuilder::new(10, [7; 32], 0);
        let mut prev = [7; 32];
        for seq in 10..13 {
            let event = AuditEvent {
                seq,
                event_id: format!("e{seq}"),
                received_time_unix_nano: seq * 100,
                body: format!("generate image: a lighthouse on a cliff, take {seq}"),
                prev_hash: prev,
                ..Default::default()
            };
            prev = builder.push(&event);
        }
        (builder, prev)
    }

    fn check_round_trip(bytes: &[u8], last: Hash) {
        let view = BatchView::parse(bytes).unwrap();
        assert_eq!((view.first_seq, view.last_seq(), view.count()), (10, 12, 3));
        assert_eq!(view.max_received, 1200);
        let second = view.event(1).unwrap();
        assert_eq!(second.event_id, "e11");
        assert_eq!(second.prev_hash, view.event(0).unwrap().hash);
        assert_eq!(view.last_hash().unwrap(), last);
        let owned = BatchView::parse_owned(bytes).unwrap();
        assert_eq!(owned.event(2).unwrap(), view.event(2).unwrap());
        let header = BatchHeader::parse(bytes).unwrap();
        assert_eq!((header.first_seq, header.last_seq()), (10, 12));
        assert_eq!(header.max_received, 1200);
        assert_eq!(header.prev_hash, [7; 32]);
        assert_eq!(header.last_hash(bytes).unwrap(), last);
        assert!(BatchView::parse(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn round_trip_keeps_chain() {
        let (builder, last) = builder();
        let bytes = builder.finish();
        assert_eq!(bytes[0], COMPRESSED_LAYOUT);
        check_round_trip(&bytes, last);
    }

    #[test]
    fn batches_of_older_spools_are_read_as_they_are() {
        let (builder, last) = builder();
        let bytes = builder.finish_plain();
        assert_eq!(bytes[0], PLAIN_LAYOUT);
        check_round_trip(&bytes, last);
    }

    #[test]
    fn prompt_text_is_stored_in_fewer_bytes() {
        let mut builder = BatchBuilder::new(1, [0; 32], 0);
        let mut prev = [0; 32];
        let words = [
            "a",
            "lighthouse",
            "on",
            "cliff",
            "at",
            "dusk",
            "cinematic",
            "8k",
        ];
        for seq in 1..=500u64 {
            let body = (0..120)
                .map(|i| words[((seq * 31 + i * 7) % 8) as usize])
                .collect::<Vec<_>>()
                .join(" ");
            let event = AuditEvent {
                seq,
                event_id: format!("01JF{seq:022}"),
                body,
                attributes: r#"{"audit.outcome":"success","user.id":"user-17"}"#.into(),
                prev_hash: prev,
                ..Default::default()
            };
            prev = builder.push(&event);
        }
        let plain = builder.byte_len();
        let stored = builder.finish().len();
        assert!(
            stored * 2 < plain,
            "{stored} stored bytes for {plain} plain"
        );
    }

    #[test]
    fn a_damaged_body_is_named_not_trusted() {
        let (builder, _) = builder();
        let bytes = builder.finish();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0xff;
        let mut huge = bytes.clone();
        let at = COMPRESSED_HEADER_LEN - 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut short = bytes.clone();
        short[at..at + 4].copy_from_slice(&1u32.to_be_bytes());
        for damaged in [flipped, huge, short] {
            match BatchView::parse(&damaged) {
                Err(SpoolError::Corrupt(why)) => assert!(why.contains("seq 10"), "{why}"),
                Err(other) => panic!("not Corrupt: {other}"),
                Ok(_) => panic!("a damaged batch parsed"),
            }
        }
        let mut unknown = bytes;
        unknown[0] = 3;
        assert!(BatchHeader::parse(&unknown).is_err());
    }
}
