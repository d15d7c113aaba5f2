//! Opening a spool without writing to it, for `verify` and `spool check`.
//!
//! sled has no read-only mode: opening a database may truncate a torn log
//! tail, rewrite its `conf` file, collect blobs and write a snapshot, and
//! the spool's own recovery rewrites missing dedup runs. A check must not
//! change what it checks, so [`ReadOnlySpool`] opens a scratch copy
//! instead, made while holding a shared lock on sled's `db` file, so that a
//! server cannot start on the spool (sled takes that lock exclusively)
//! while it is copied. The copy costs disk space and time in proportion to
//! the spool's size; it lives in the system's temp dir (`TMPDIR`) and is
//! removed when the [`ReadOnlySpool`] is dropped.

use std::fs::{self, File, TryLockError};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use auditrail_integrity::VerifierKey;

use crate::durable::DB_FILE;
use crate::verify::{Problem, ProblemKind, VerifyReport};
use crate::watermark::{self, Previous, WATERMARK_FILE};
use crate::{Spool, SpoolConfig, SpoolError};

/// A spool opened from a scratch copy: reads see the spool as it was when
/// it was opened, and nothing is ever written to the original.
pub struct ReadOnlySpool {
    // Declared before `_scratch`, so it is closed before the copy goes.
    spool: Spool,
    /// What the original's durable watermark said.
    watermark: Previous,
    copy: PathBuf,
    copied_bytes: u64,
    _scratch: tempfile::TempDir,
}

impl ReadOnlySpool {
    /// Copies the spool in `dir` and opens the copy.
    ///
    /// Fails with [`SpoolError::NotFound`] or [`SpoolError::NotASpool`]
    /// when there is no spool there (it never creates one), and with
    /// [`SpoolError::Locked`] while a server has it open.
    pub fn open(dir: &Path) -> Result<ReadOnlySpool, SpoolError> {
        check_is_spool(dir)?;
        let db_path = dir.join(DB_FILE);
        let db = File::open(&db_path).map_err(|e| io_error(&db_path, e))?;
        match db.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.to_owned())),
            Err(TryLockError::Error(e)) => return Err(io_error(&db_path, e)),
        }
        let scratch = tempfile::Builder::new()
            .prefix("auditrail-spool-copy-")
            .tempdir()
            .map_err(|e| SpoolError::Storage(format!("creating a scratch directory: {e}")))?;
        let copy = scratch.path().join("spool");
        let copied_bytes = copy_tree(dir, &copy)?;
        drop(db);
        // The watermark's check would refuse a spool that lost acknowledged
        // events; a check must open it anyway and report the loss.
        let watermark = watermark::read(dir).map_err(|e| io_error(&dir.join(WATERMARK_FILE), e))?;
        let _ = fs::remove_file(copy.join(WATERMARK_FILE));
        // The node id only matters for writing events, which nobody does here.
        let spool = Spool::open(SpoolConfig::new(&copy, "reader"))?;
        Ok(ReadOnlySpool {
            spool,
            watermark,
            copy,
            copied_bytes,
            _scratch: scratch,
        })
    }

    /// [`Spool::verify`] (signatures checked with `key`), plus what the durable watermark proves: events
    /// acknowledged as durable that the spool no longer holds are missing.
    pub fn verify(&self, key: Option<&VerifierKey>) -> Result<VerifyReport, SpoolError> {
        let mut report = self.spool.verify(key)?;
        let last = report.highest_seq.unwrap_or(self.spool.stats().last_seq);
        // The newest checkpoint may have said so already.
        let known = report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Missing && p.seq == last + 1);
        match &self.watermark {
            Previous::Seq(acked) if *acked > last && !known => report.problems.push(Problem {
                seq: last + 1,
                kind: ProblemKind::Missing,
                count: acked - last,
                detail: format!(
                    "seq {}..{acked} were acknowledged as durable ({WATERMARK_FILE} says so) but are gone",
                    last + 1
                ),
            }),
            Previous::Damaged(why) => report.problems.push(Problem {
                seq: last,
                kind: ProblemKind::Unreadable,
                count: 0,
                detail: format!("the durable watermark {WATERMARK_FILE} is unreadable: {why}"),
            }),
            _ => {}
        }
        Ok(report)
    }

    /// Where the scratch copy is (it goes when this is dropped).
    pub fn copy_dir(&self) -> &Path {
        &self.copy
    }

    /// How many bytes the scratch copy took.
    pub fn copied_bytes(&self) -> u64 {
        self.copied_bytes
    }
}

impl Deref for ReadOnlySpool {
    type Target = Spool;

    fn deref(&self) -> &Spool {
        &self.spool
    }
}

/// `Ok` when `dir` holds a spool (sled's `db` file): a reader pointed at a
/// wrong path gets an error instead of a new, empty spool.
pub fn check_is_spool(dir: &Path) -> Result<(), SpoolError> {
    if !dir.is_dir() {
        return Err(SpoolError::NotFound(dir.to_owned()));
    }
    if !dir.join(DB_FILE).is_file() {
        return Err(SpoolError::NotASpool(dir.to_owned()));
    }
    Ok(())
}

fn io_error(path: &Path, e: io::Error) -> SpoolError {
    SpoolError::Storage(format!("{}: {e}", path.display()))
}

/// Copies regular files and directories under `from` to `to`; returns the
/// bytes copied. sled keeps nothing else there (no links, no sockets).
fn copy_tree(from: &Path, to: &Path) -> Result<u64, SpoolError> {
    fs::create_dir_all(to).map_err(|e| io_error(to, e))?;
    let mut bytes = 0;
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(from.to_owned(), to.to_owned())];
    while let Some((src, dst)) = stack.pop() {
        for entry in fs::read_dir(&src).map_err(|e| io_error(&src, e))? {
            let entry = entry.map_err(|e| io_error(&src, e))?;
            let path = entry.path();
            let target = dst.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
            if kind.is_dir() {
                fs::create_dir(&target).map_err(|e| io_error(&target, e))?;
                stack.push((path, target));
            } else if kind.is_file() {
                bytes += fs::copy(&path, &target).map_err(|e| io_error(&path, e))?;
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_foreign_directory_is_an_error_not_a_new_spool() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            ReadOnlySpool::open(&missing),
            Err(SpoolError::NotFound(_))
        ));
        assert!(!missing.exists(), "nothing was created");
        assert!(matches!(
            ReadOnlySpool::open(dir.path()),
            Err(SpoolError::NotASpool(_))
        ));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
