//! `auditrail spool check`: diagnoses a stopped server's spool without
//! writing to it, and names the file or tree where something is wrong.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use auditrail_spool::{scan_files, ReadOnlySpool};

/// What the check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Damaged,
}

/// Runs both passes and prints what it found. `Err` when the spool could not
/// be checked at all (no such directory, in use by a server).
pub fn run(dir: &Path) -> anyhow::Result<Verdict> {
    let mut out = std::io::stdout().lock();
    let files = scan_files(dir).with_context(|| format!("checking spool {}", dir.display()))?;
    writeln!(
        out,
        "files: db {} bytes, {} blob file(s) of {} bytes, {} snapshot(s)",
        files.db_bytes, files.blobs, files.blob_bytes, files.snapshots
    )?;
    for note in &files.notes {
        writeln!(out, "note: {note}")?;
    }
    let mut problems = 0;
    let spool = match ReadOnlySpool::open(dir) {
        Ok(spool) => spool,
        Err(auditrail_spool::SpoolError::Locked(path)) => {
            anyhow::bail!(
                "spool {} is in use by a running server; stop it first",
                path.display()
            )
        }
        Err(e) => {
            for finding in &files.suspicious {
                writeln!(out, "DAMAGED: {finding}")?;
            }
            writeln!(out, "DAMAGED: the spool does not open: {e}")?;
            return Ok(Verdict::Damaged);
        }
    };
    // A torn file that sled dropped on opening was an unacknowledged write;
    // one it still holds is damage.
    for finding in &files.suspicious {
        if Path::new(&finding.place).exists() && spool_still_has(dir, &spool, &finding.place) {
            writeln!(out, "DAMAGED: {finding}")?;
            problems += 1;
        } else {
            writeln!(
                out,
                "note: {finding} (sled discards it on opening: a write that was never acknowledged)"
            )?;
        }
    }
    let stats = spool.stats();
    writeln!(
        out,
        "events: {} retained, seq {}..{}, indexed to {}",
        stats.events, stats.first_seq, stats.last_seq, stats.indexed_seq
    )?;
    for finding in spool.check_trees()? {
        writeln!(out, "DAMAGED: {finding}")?;
        problems += 1;
    }
    let report = spool.verify(None)?;
    for problem in &report.problems {
        writeln!(out, "DAMAGED: chain: {problem}")?;
        problems += 1;
    }
    for (sink, cursor) in spool.cursors()? {
        writeln!(
            out,
            "sink {sink:?}: cursor {cursor}, {} dead letter(s)",
            spool.dead_letter_count(&sink)
        )?;
    }
    if problems == 0 {
        writeln!(out, "spool ok")?;
        Ok(Verdict::Healthy)
    } else {
        writeln!(out, "{problems} problem(s) found")?;
        Ok(Verdict::Damaged)
    }
}

/// Whether the opened copy still holds the file at `place` (a path under
/// `dir`): sled removes the blobs of writes it did not recover.
fn spool_still_has(dir: &Path, spool: &ReadOnlySpool, place: &str) -> bool {
    match Path::new(place).strip_prefix(dir) {
        Ok(relative) => spool.copy_dir().join(relative).exists(),
        Err(_) => true,
    }
}
