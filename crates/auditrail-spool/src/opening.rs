//! Opening sled on a spool that may have been torn by a power cut.
//!
//! sled 0.34.7 panics at start-up on some damage (an empty blob file that
//! its log points at, for one) instead of returning an error. A panic here
//! is caught and, like sled's own corruption errors, turned into
//! [`SpoolError::CorruptFile`] naming the damaged file, found by inspecting
//! the directory. A spool is never opened past such damage, so it never
//! starts without data it had acknowledged.
//!
//! An empty or short `conf` (sled writes it without fsync) is safe to let
//! sled rewrite: sled then writes the parameters it was opened with, and the
//! spool always opens with the same ones (`SEGMENT_SIZE`, no compression),
//! the ones every spool was created with. The barrier fsyncs the rewrite.

use std::path::{Path, PathBuf};

use crate::durable::{BLOB_DIR, CONF_FILE, DB_FILE};
use crate::failstop::panic_message;
use crate::watermark::Previous;
use crate::SpoolError;

/// The smallest valid blob file: a CRC (4 bytes) and a kind byte.
pub(crate) const MIN_BLOB_LEN: u64 = 5;

/// What the spool directory held before sled opened it: sled removes blob
/// files past the end of the log it recovered, the torn ones among them, so
/// the evidence must be taken first.
pub(crate) struct Inspection {
    dir: PathBuf,
    short_blobs: Vec<(PathBuf, u64)>,
}

impl Inspection {
    pub(crate) fn of(dir: &Path) -> Inspection {
        let mut short_blobs: Vec<(PathBuf, u64)> = std::fs::read_dir(dir.join(BLOB_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let len = entry.metadata().ok()?.len();
                (len < MIN_BLOB_LEN).then(|| (entry.path(), len))
            })
            .collect();
        short_blobs.sort();
        Inspection {
            dir: dir.to_owned(),
            short_blobs,
        }
    }
}

pub(crate) fn open_sled(config: sled::Config, seen: &Inspection) -> Result<sled::Db, SpoolError> {
    let dir = &seen.dir;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(match e {
            sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                SpoolError::Locked(dir.to_owned())
            }
            // sled reports a held lock as an `Other` I/O error with only
            // its text to tell; there is no kind to match on.
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                SpoolError::Locked(dir.to_owned())
            }
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
                diagnose(seen, &e.to_string())
            }
            other => SpoolError::from(other),
        }),
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(dir = %dir.display(), panic = %message, "sled panicked opening the spool");
            Err(diagnose(seen, &format!("sled panicked: {message}")))
        }
    }
}

/// Refuses a spool in which sled recovered less than was acknowledged
/// (`last_seq` is what it recovered; see `watermark.rs`).
pub(crate) fn check_recovered(
    seen: &Inspection,
    watermark: (&Previous, &Path),
    last_seq: u64,
) -> Result<(), SpoolError> {
    match watermark.0 {
        Previous::Seq(acked) if last_seq < *acked => Err(diagnose(
            seen,
            &format!(
                "sled recovered events up to seq {last_seq}, but events up to seq \
                 {acked} were acknowledged as durable"
            ),
        )),
        Previous::Damaged(why) => Err(SpoolError::CorruptFile {
            path: watermark.1.to_owned(),
            reason: format!(
                "the durable watermark is unreadable: {why} (it may be removed \
                 to open the spool without the check)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Names the file that most likely made sled fail, or describes the
/// directory when no single file stands out.
fn diagnose(seen: &Inspection, failure: &str) -> SpoolError {
    let dir = &seen.dir;
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).ok();
    if let Some((path, len)) = seen.short_blobs.first() {
        let others = match seen.short_blobs.len() {
            1 => String::new(),
            n => format!(" ({} more blob files are as short)", n - 1),
        };
        return SpoolError::CorruptFile {
            path: path.clone(),
            reason: format!(
                "blob file is {len} bytes, shorter than any blob sled writes \
                 (torn by a crash or power cut?){others}; {failure}"
            ),
        };
    }
    let db = dir.join(DB_FILE);
    match size(&db) {
        None | Some(0) => SpoolError::CorruptFile {
            path: db,
            reason: format!("sled's log is missing or empty; {failure}"),
        },
        Some(db_len) => SpoolError::CorruptFile {
            path: db,
            reason: format!(
                "{failure} (log {db_len} bytes, conf {} bytes, no short blob file)",
                size(&dir.join(CONF_FILE)).unwrap_or(0)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_blob_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BLOB_DIR)).unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0; 100]).unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("100"), b"good blob").unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("200"), b"").unwrap();
        match diagnose(&Inspection::of(dir.path()), "boom") {
            SpoolError::CorruptFile { path, reason } => {
                assert_eq!(path, dir.path().join(BLOB_DIR).join("200"));
                assert!(reason.contains("0 bytes"), "{reason}");
                assert!(reason.contains("boom"), "{reason}");
            }
            other => panic!("expected CorruptFile, got {other:?}"),
        }
    }

    #[test]
    fn without_a_short_blob_the_log_is_named() {
        let dir = tempfile::tempdir().unwrap();
        match diagnose(&Inspection::of(dir.path()), "boom") {
            SpoolError::CorruptFile { path, .. } => assert_eq!(path, dir.path().join(DB_FILE)),
            other => panic!("expected CorruptFile, got {other:?}"),
        }
    }
}
