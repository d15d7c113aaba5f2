//! `auditrail spool check`: a read-only diagnosis of a spool.
//!
//! Two passes. The file pass looks at sled's files as they are on disk,
//! before anything opens them, so that a file sled would choke on (an empty
//! `conf`, a torn blob) is named even when sled cannot open the spool. The
//! content pass runs on an opened (scratch) copy: every batch decodes, the
//! dedup runs match their batches, the index watermark, cursors and dead
//! letters are within what is stored, and the hash chain is intact.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::batch::BatchView;
use crate::durable::{BLOB_DIR, CONF_FILE, DB_FILE};
use crate::opening::MIN_BLOB_LEN;
use crate::{index, seq_from_bytes, Shared, SpoolError};

/// One thing found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file, or the sled tree (`tree batches`), it was found in.
    pub place: String,
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.what)
    }
}

/// What the file pass saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileScan {
    pub db_bytes: u64,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub snapshots: usize,
    /// Files that look damaged. A torn blob can also be the leftover of a
    /// write that was never acknowledged, which sled removes when it opens
    /// the spool; the content pass tells the two apart.
    pub suspicious: Vec<Finding>,
    /// Oddities that are known to be harmless.
    pub notes: Vec<Finding>,
}

/// sled's `conf` holds its storage parameters and a CRC; sled reads a file
/// of 8 bytes or less as absent (and then writes its own defaults).
const MIN_CONF: u64 = 9;

/// The file pass over the spool directory `dir`. Reads only.
pub fn scan_files(dir: &Path) -> Result<FileScan, SpoolError> {
    crate::read_only::check_is_spool(dir)?;
    let mut scan = FileScan::default();
    let stat = |path: &Path| {
        fs::metadata(path).map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))
    };
    scan.db_bytes = stat(&dir.join(DB_FILE))?.len();
    let conf = dir.join(CONF_FILE);
    match fs::metadata(&conf) {
        // Safe: the spool always opens sled with the same fixed settings, and
        // sled writes them to a new `conf` when it finds none.
        Ok(meta) if meta.len() < MIN_CONF => scan.notes.push(finding(
            &conf,
            format!(
                "is {} bytes (torn when it was created); sled writes it again from the spool's fixed settings",
                meta.len()
            ),
        )),
        Ok(_) => {}
        Err(e) => scan
            .suspicious
            .push(finding(&conf, format!("cannot be read: {e}"))),
    }
    for entry in
        fs::read_dir(dir).map_err(|e| SpoolError::Storage(format!("{}: {e}", dir.display())))?
    {
        let entry = entry.map_err(|e| SpoolError::Storage(e.to_string()))?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            scan.snapshots += 1;
        }
    }
    let blobs = dir.join(BLOB_DIR);
    if blobs.is_dir() {
        for entry in fs::read_dir(&blobs)
            .map_err(|e| SpoolError::Storage(format!("{}: {e}", blobs.display())))?
        {
            let path = entry
                .map_err(|e| SpoolError::Storage(e.to_string()))?
                .path();
            scan.blobs += 1;
            match blob_damage(&path) {
                Ok((len, None)) => scan.blob_bytes += len,
                Ok((len, Some(damage))) => {
                    scan.blob_bytes += len;
                    scan.suspicious.push(finding(&path, damage));
                }
                Err(e) => scan
                    .suspicious
                    .push(finding(&path, format!("cannot be read: {e}"))),
            }
        }
    }
    Ok(scan)
}

fn finding(path: &Path, what: impl Into<String>) -> Finding {
    Finding {
        place: path.display().to_string(),
        what: what.into(),
    }
}

/// The blob's length, and what is wrong with it, if anything.
fn blob_damage(path: &PathBuf) -> std::io::Result<(u64, Option<String>)> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    // sled's blob files start with a CRC-32 of the rest (a kind byte, then
    // the data): see sled's `pagecache/blob_io.rs`.
    if len < MIN_BLOB_LEN {
        return Ok((len, Some(format!("is {len} bytes: empty or torn"))));
    }
    // Little-endian CRC-32 of the kind byte and the data, as sled writes it.
    let expected = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if expected != crc32fast::hash(&bytes[4..]) {
        return Ok((len, Some("fails its CRC check: torn or damaged".into())));
    }
    Ok((len, None))
}

/// The content pass: findings about the opened spool's trees.
pub(crate) fn check_trees(shared: &Shared) -> Result<Vec<Finding>, SpoolError> {
    let mut findings = Vec::new();
    let tree = |name: &str, what: String| Finding {
        place: format!("tree {name}"),
        what,
    };
    for item in shared.batches.iter() {
        let (key, value) = item?;
        let first = seq_from_bytes(&key);
        let view = match BatchView::parse(&value) {
            Ok(view) => view,
            Err(e) => {
                findings.push(tree("batches", format!("batch at seq {first}: {e}")));
                continue;
            }
        };
        if view.first_seq != first {
            findings.push(tree(
                "batches",
                format!(
                    "key says seq {first}, the batch inside says {}",
                    view.first_seq
                ),
            ));
        }
        match shared.ids.get(&key)? {
            Some(run) if run.len() == view.count() * 16 => {}
            Some(run) => findings.push(tree(
                "ids",
                format!(
                    "batch at seq {first} has {} events but {} dedup keys",
                    view.count(),
                    run.len() / 16
                ),
            )),
            None => findings.push(tree(
                "ids",
                format!("batch at seq {first} has no dedup keys"),
            )),
        }
    }
    for item in shared.ids.iter() {
        let (key, _) = item?;
        if !shared.batches.contains_key(&key)? {
            findings.push(tree(
                "ids",
                format!(
                    "dedup keys for seq {} whose batch is gone",
                    seq_from_bytes(&key)
                ),
            ));
        }
    }
    let stored_last = shared.last_seq.load(std::sync::atomic::Ordering::Acquire);
    if let Some(watermark) = shared.idx.get(index::WATERMARK_KEY)? {
        let indexed = seq_from_bytes(&watermark);
        if indexed > stored_last {
            findings.push(tree(
                "idx",
                format!("indexed up to seq {indexed}, past the last stored seq {stored_last}"),
            ));
        }
    }
    for item in shared.cursors.iter() {
        let (name, value) = item?;
        let cursor = seq_from_bytes(&value);
        if value.len() != 8 || cursor > stored_last {
            findings.push(tree(
                "cursors",
                format!(
                    "sink {:?} is at seq {cursor}, past the last stored seq {stored_last}",
                    String::from_utf8_lossy(&name)
                ),
            ));
        }
    }
    for item in shared.dead_letters.iter() {
        let (key, value) = item?;
        if let Err(e) = serde_json::from_slice::<crate::DeadLetter>(&value) {
            findings.push(tree(
                "dead_letters",
                format!(
                    "entry {:?} does not decode: {e}",
                    String::from_utf8_lossy(&key)
                ),
            ));
        }
    }
    Ok(findings)
}
