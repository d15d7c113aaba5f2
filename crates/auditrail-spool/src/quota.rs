//! The disk quota: what `[spool] max_disk` admits.
//!
//! Appends are admitted by the spool's *live* bytes: the batch values and
//! dedup runs the trees hold now. Not by the size of sled's files: sled 0.34
//! reuses the segments that retention frees, but it shrinks its `db` file
//! only when the freed segments are at its end, so a quota on file size
//! could stay reached for ever after retention emptied the spool (issue 7 D).
//!
//! The live count is exact across restarts without reading the spool: `meta`
//! holds it together with the key range `[low, high]` of the batches it
//! counts. The writer inserts a batch before it counts it, and retention
//! uncounts a batch before it removes it; sled recovers a prefix of its log,
//! so after a crash the batches a lost `meta` update missed lie outside
//! `[low, high]`, and [`DiskQuota::open`] reads just those few to correct it.
//!
//! sled's own files still get a hard ceiling ([`file_ceiling`]), so that
//! index keys, sled's overhead and fragmented segments cannot grow the disk
//! without bound either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::batch::BatchHeader;
use crate::{seq_from_bytes, seq_key, SpoolError};

/// `meta` key: live bytes ‖ low key ‖ high key, each u64 big-endian.
const LIVE_BYTES: &[u8] = b"live_bytes";

/// What a batch counts against the quota: its value, as its length once
/// decompressed (`batch::uncompressed_len`), and its dedup run (16 bytes
/// per event, see `dedup.rs`).
pub(crate) fn batch_bytes(value_len: usize, events: usize) -> u64 {
    (value_len + 16 * events) as u64
}

/// The most sled's files may take for a quota of `max_disk` bytes of live
/// data: twice the quota plus eight of sled's segments. Beyond the live
/// bytes, the files hold the indexes, sled's page headers, and segments
/// that are free or partly filled; and they grow a segment at a time, so
/// whole segments dominate small quotas. Measured in `tests/quota.rs`, in
/// rounds of filling to the quota and letting retention free it:
///
/// * max_disk 24 MiB, events of ~400 bytes, 12 rounds: files 64 to 88 MiB
///   (the ceiling is 112 MiB);
/// * max_disk 1 GiB, events of ~2 KiB, 8 rounds: files 1.21 to 1.53 x
///   max_disk (the ceiling is 2.06 x).
///
/// In neither did the files grow over the rounds (sled reuses freed
/// segments, and sometimes shrinks). Reaching the ceiling means sled is not
/// reusing space; appends are refused until the files shrink.
pub(crate) fn file_ceiling(max_disk: u64, segment_size: u64) -> u64 {
    max_disk
        .saturating_mul(2)
        .saturating_add(segment_size.saturating_mul(8))
}

/// Which batches the live count covers, and how many bytes they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counted {
    live: u64,
    /// Lowest batch key counted; batches below it were uncounted.
    low: u64,
    /// Highest batch key counted (0: none yet).
    high: u64,
}

impl Counted {
    fn encode(&self) -> [u8; 24] {
        let mut out = [0; 24];
        out[..8].copy_from_slice(&self.live.to_be_bytes());
        out[8..16].copy_from_slice(&self.low.to_be_bytes());
        out[16..].copy_from_slice(&self.high.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Counted, SpoolError> {
        if bytes.len() != 24 {
            return Err(SpoolError::Corrupt(format!(
                "meta live_bytes has {} bytes, expected 24",
                bytes.len()
            )));
        }
        Ok(Counted {
            live: seq_from_bytes(&bytes[..8]),
            low: seq_from_bytes(&bytes[8..16]),
            high: seq_from_bytes(&bytes[16..]),
        })
    }

    /// A batch with key `key` was inserted.
    fn add(&mut self, key: u64, bytes: u64) {
        self.live = self.live.saturating_add(bytes);
        self.high = self.high.max(key);
    }

    /// The oldest batch is about to be removed; `next_key` is the key after it.
    fn remove(&mut self, next_key: u64, bytes: u64) {
        self.live = self.live.saturating_sub(bytes);
        self.low = self.low.max(next_key);
    }
}

/// The quota's state, shared by the writer, the flusher and retention.
pub(crate) struct DiskQuota {
    max_disk: u64,
    ceiling: u64,
    /// The live count and the range it covers, written to `meta` under this
    /// lock so that the stored value is always the newest.
    counted: Mutex<Counted>,
    live: AtomicU64,
    /// sled's files as last measured, plus what was written since.
    files: AtomicU64,
    unmeasured: AtomicU64,
    checked: Mutex<Instant>,
}

impl DiskQuota {
    /// Recovers the live count from `meta`, correcting it by the batches
    /// outside the range it covers (after a crash: the last commit's, or the
    /// one retention was removing). A spool without the key (new, or from
    /// before it existed) is counted in full once.
    pub(crate) fn open(
        meta: &sled::Tree,
        batches: &sled::Tree,
        max_disk: u64,
        segment_size: u64,
    ) -> Result<DiskQuota, SpoolError> {
        let stored = meta
            .get(LIVE_BYTES)?
            .map(|v| Counted::decode(&v))
            .transpose()?;
        let mut counted = stored.unwrap_or_default();
        let outside: Box<dyn Iterator<Item = _>> = match stored {
            Some(c) => Box::new(
                batches
                    .range(..seq_key(c.low))
                    // Never both ranges: `low` passes `high` once retention
                    // has removed everything.
                    .chain(batches.range(seq_key(c.high.saturating_add(1).max(c.low))..)),
            ),
            None => Box::new(batches.iter()),
        };
        for item in outside {
            let (key, value) = item?;
            let header = BatchHeader::parse(&value)?;
            counted.add(
                seq_from_bytes(&key),
                batch_bytes(crate::batch::uncompressed_len(&value), header.count),
            );
            counted.low = counted.low.min(seq_from_bytes(&key));
        }
        if batches.is_empty() {
            counted.live = 0;
        }
        if stored != Some(counted) {
            meta.insert(LIVE_BYTES, &counted.encode())?;
        }
        Ok(DiskQuota {
            max_disk,
            ceiling: file_ceiling(max_disk, segment_size),
            live: AtomicU64::new(counted.live),
            counted: Mutex::new(counted),
            files: AtomicU64::new(0),
            unmeasured: AtomicU64::new(0),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// Counts a batch the writer has just inserted under `key`.
    pub(crate) fn inserted(
        &self,
        meta: &sled::Tree,
        key: u64,
        bytes: u64,
    ) -> Result<(), SpoolError> {
        self.unmeasured.fetch_add(bytes, Ordering::Relaxed);
        self.update(meta, |c| c.add(key, bytes))
    }

    /// Uncounts the oldest batch before retention removes it; `next_key`
    /// is the first key after it.
    pub(crate) fn removing(
        &self,
        meta: &sled::Tree,
        next_key: u64,
        bytes: u64,
    ) -> Result<(), SpoolError> {
        self.update(meta, |c| c.remove(next_key, bytes))
    }

    fn update(
        &self,
        meta: &sled::Tree,
        change: impl FnOnce(&mut Counted),
    ) -> Result<(), SpoolError> {
        let mut counted = self.counted.lock().expect("quota lock");
        let mut next = *counted;
        change(&mut next);
        meta.insert(LIVE_BYTES, &next.encode())?;
        *counted = next;
        self.live.store(next.live, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// sled's files as last measured plus the bytes written since: a
    /// conservative estimate that needs no syscall per commit.
    pub(crate) fn file_bytes(&self) -> u64 {
        self.files.load(Ordering::Relaxed) + self.unmeasured.load(Ordering::Relaxed)
    }

    pub(crate) fn over(&self) -> bool {
        self.live_bytes() >= self.max_disk || self.file_bytes() >= self.ceiling
    }

    pub(crate) fn error(&self) -> SpoolError {
        SpoolError::QuotaExceeded {
            used: self.live_bytes(),
            limit: self.max_disk,
            file_bytes: self.file_bytes(),
            file_limit: self.ceiling,
        }
    }

    /// Re-reads the size of sled's files, at most once a second (ten times
    /// while over quota, to notice freed space soon): it walks the spool's
    /// directory, which is too slow to do for every commit.
    pub(crate) fn refresh(&self, db: &sled::Db) {
        let mut checked = self.checked.lock().expect("disk check lock");
        let every = if self.over() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if checked.elapsed() < every {
            return;
        }
        *checked = Instant::now();
        drop(checked);
        self.measure(db);
    }

    pub(crate) fn measure(&self, db: &sled::Db) {
        let written_before = self.unmeasured.swap(0, Ordering::Relaxed);
        match db.size_on_disk() {
            Ok(bytes) => self.files.store(bytes, Ordering::Relaxed),
            Err(e) => {
                self.unmeasured.fetch_add(written_before, Ordering::Relaxed);
                tracing::warn!(error = %e, "could not measure spool size");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, db)
    }

    fn batch(first_seq: u64, events: u64) -> Vec<u8> {
        let mut builder = crate::batch::BatchBuilder::new(first_seq, [0; 32], 1024);
        for seq in first_seq..first_seq + events {
            builder.push(&auditrail_model::AuditEvent {
                seq,
                event_id: format!("e{seq}"),
                ..Default::default()
            });
        }
        builder.finish()
    }

    fn put(quota: &DiskQuota, meta: &sled::Tree, batches: &sled::Tree, first: u64, n: u64) -> u64 {
        let value = batch(first, n);
        let bytes = batch_bytes(crate::batch::uncompressed_len(&value), n as usize);
        batches.insert(seq_key(first), value).unwrap();
        quota.inserted(meta, first, bytes).unwrap();
        bytes
    }

    #[test]
    fn live_bytes_follow_inserts_and_removals_and_gate_admission() {
        let (_dir, db) = db();
        let (meta, batches) = (db.open_tree("meta").unwrap(), db.open_tree("b").unwrap());
        let quota = DiskQuota::open(&meta, &batches, 10_000, 0).unwrap();
        quota.files.store(10, Ordering::Relaxed);
        let a = put(&quota, &meta, &batches, 1, 5);
        let b = put(&quota, &meta, &batches, 6, 5);
        assert_eq!(quota.live_bytes(), a + b);
        assert!(!quota.over());
        // Filling to the quota refuses; removing the oldest admits again.
        let mut next = 11;
        while !quota.over() {
            put(&quota, &meta, &batches, next, 5);
            next += 5;
        }
        assert!(quota.live_bytes() >= 10_000);
        let mut oldest = 1;
        while quota.over() {
            let value = batches.get(seq_key(oldest)).unwrap().unwrap();
            quota
                .removing(
                    &meta,
                    oldest + 5,
                    batch_bytes(crate::batch::uncompressed_len(&value), 5),
                )
                .unwrap();
            batches.remove(seq_key(oldest)).unwrap();
            oldest += 5;
        }
        assert!(quota.live_bytes() < 10_000);
        assert!(oldest < next, "admitted again before the spool was empty");
        // A reopen recomputes nothing when meta is current.
        let again = DiskQuota::open(&meta, &batches, 10_000, 0).unwrap();
        assert_eq!(again.live_bytes(), quota.live_bytes());
    }

    /// The live bytes a fresh open finds.
    fn reopened(meta: &sled::Tree, batches: &sled::Tree) -> u64 {
        DiskQuota::open(meta, batches, u64::MAX, 0)
            .unwrap()
            .live_bytes()
    }

    #[test]
    fn a_lost_meta_update_is_corrected_at_open() {
        let (_dir, db) = db();
        let (meta, batches) = (db.open_tree("meta").unwrap(), db.open_tree("b").unwrap());
        let quota = DiskQuota::open(&meta, &batches, u64::MAX, 0).unwrap();
        let a = put(&quota, &meta, &batches, 1, 3);
        let b = put(&quota, &meta, &batches, 4, 3);
        // A crash kept a batch the writer had not counted yet...
        let value = batch(7, 2);
        let c = batch_bytes(crate::batch::uncompressed_len(&value), 2);
        batches.insert(seq_key(7), value).unwrap();
        assert_eq!(reopened(&meta, &batches), a + b + c);
        // ...or retention uncounted the oldest batch but did not remove it.
        let quota = DiskQuota::open(&meta, &batches, u64::MAX, 0).unwrap();
        quota.removing(&meta, 4, a).unwrap();
        assert_eq!(reopened(&meta, &batches), a + b + c);
        // Retention's next pass uncounts and removes it for good.
        let quota = DiskQuota::open(&meta, &batches, u64::MAX, 0).unwrap();
        quota.removing(&meta, 4, a).unwrap();
        batches.remove(seq_key(1)).unwrap();
        assert_eq!(reopened(&meta, &batches), b + c);
    }

    #[test]
    fn a_spool_without_the_key_is_counted_in_full_and_an_empty_one_is_zero() {
        let (_dir, db) = db();
        let (meta, batches) = (db.open_tree("meta").unwrap(), db.open_tree("b").unwrap());
        assert_eq!(
            DiskQuota::open(&meta, &batches, 1, 0).unwrap().live_bytes(),
            0
        );
        meta.remove(LIVE_BYTES).unwrap();
        let value = batch(1, 4);
        let bytes = batch_bytes(crate::batch::uncompressed_len(&value), 4);
        batches.insert(seq_key(1), value).unwrap();
        assert_eq!(
            DiskQuota::open(&meta, &batches, 1, 0).unwrap().live_bytes(),
            bytes
        );
    }

    #[test]
    fn sled_files_over_the_ceiling_refuse_even_with_little_live_data() {
        let (_dir, db) = db();
        let (meta, batches) = (db.open_tree("meta").unwrap(), db.open_tree("b").unwrap());
        let quota = DiskQuota::open(&meta, &batches, 100, 10).unwrap();
        assert_eq!(quota.ceiling, 280);
        quota.files.store(279, Ordering::Relaxed);
        assert!(!quota.over());
        quota.files.store(280, Ordering::Relaxed);
        assert!(quota.over());
        assert!(matches!(
            quota.error(),
            SpoolError::QuotaExceeded {
                used: 0,
                limit: 100,
                file_bytes: 280,
                file_limit: 280
            }
        ));
    }

    #[test]
    fn meta_value_of_the_wrong_length_is_named() {
        let (_dir, db) = db();
        let (meta, batches) = (db.open_tree("meta").unwrap(), db.open_tree("b").unwrap());
        meta.insert(LIVE_BYTES, &[1, 2, 3]).unwrap();
        let err = DiskQuota::open(&meta, &batches, 1, 0).err().unwrap();
        assert!(matches!(err, SpoolError::Corrupt(_)), "{err:?}");
    }
}
