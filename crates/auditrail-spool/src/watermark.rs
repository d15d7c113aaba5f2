//! The durable watermark: the highest seq the spool has acknowledged, kept
//! outside sled so that a spool which lost acknowledged events refuses to
//! start instead of starting without them.
//!
//! sled ends its log at the first record it cannot read. A log record whose
//! blob file came back empty after a power cut would silently cut off
//! everything after it, and sled would open a shorter (or empty) database
//! as if nothing had happened. With the barrier's ordering (blobs before the
//! log) that cannot happen to acknowledged data, but this file checks it:
//! the barrier records here what it has just made durable, fsync'd before
//! the ack, and `Spool::open` compares it with what sled recovered.
//!
//! Format (file `durable_seq` in the spool directory, 16 bytes, overwritten
//! in place): the seq (u64 big-endian), then the first 8 bytes of its
//! SHA-256, so that a torn or foreign file is recognised. The write is far
//! smaller than a sector, which disks write whole.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub(crate) const WATERMARK_FILE: &str = "durable_seq";

pub(crate) struct Watermark {
    file: File,
    path: PathBuf,
    recorded: u64,
}

/// What the file said when the spool was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Previous {
    /// No file (a new spool, or one from before the watermark existed).
    None,
    Seq(u64),
    /// Neither empty nor valid.
    Damaged(String),
}

fn encode(seq: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..].copy_from_slice(&Sha256::digest(seq.to_be_bytes())[..8]);
    out
}

fn decode(bytes: &[u8]) -> Previous {
    match bytes.len() {
        // Created but never written before a cut: nothing was acknowledged.
        0 => Previous::None,
        16 => {
            let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            if encode(seq) == bytes {
                Previous::Seq(seq)
            } else {
                Previous::Damaged("its checksum does not match".into())
            }
        }
        n => Previous::Damaged(format!("it is {n} bytes, not 16")),
    }
}

/// What the watermark of the spool in `dir` says, without opening it for
/// writing.
pub(crate) fn read(dir: &Path) -> io::Result<Previous> {
    match std::fs::read(dir.join(WATERMARK_FILE)) {
        Ok(bytes) => Ok(decode(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Previous::None),
        Err(e) => Err(e),
    }
}

impl Watermark {
    /// Opens (or creates) the watermark of the spool in `dir`.
    pub(crate) fn open(dir: &Path) -> io::Result<(Watermark, Previous)> {
        let path = dir.join(WATERMARK_FILE);
        let previous = read(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let recorded = match previous {
            Previous::Seq(seq) => seq,
            _ => 0,
        };
        Ok((
            Watermark {
                file,
                path,
                recorded,
            },
            previous,
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Records that every seq up to `seq` is durable, durably. Never moves
    /// back; a call that would not move it costs nothing.
    pub(crate) fn record(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.recorded {
            return Ok(());
        }
        self.file.write_all_at(&encode(seq), 0)?;
        self.file.sync_data()?;
        self.recorded = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_never_move_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, previous) = Watermark::open(dir.path()).unwrap();
        assert_eq!(previous, Previous::None);
        w.record(7).unwrap();
        w.record(3).unwrap();
        drop(w);
        let (_, previous) = Watermark::open(dir.path()).unwrap();
        assert_eq!(previous, Previous::Seq(7));
    }

    #[test]
    fn an_empty_file_is_no_watermark_and_garbage_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(WATERMARK_FILE), b"").unwrap();
        assert_eq!(Watermark::open(dir.path()).unwrap().1, Previous::None);
        let mut bad = encode(9);
        bad[0] ^= 1;
        std::fs::write(dir.path().join(WATERMARK_FILE), bad).unwrap();
        assert!(matches!(
            Watermark::open(dir.path()).unwrap().1,
            Previous::Damaged(_)
        ));
        std::fs::write(dir.path().join(WATERMARK_FILE), b"xyz").unwrap();
        assert!(matches!(
            Watermark::open(dir.path()).unwrap().1,
            Previous::Damaged(_)
        ));
    }
}
