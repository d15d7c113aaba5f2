//! The durability barrier: what turns sled's `flush` into an fsync.
//!
//! sled 0.34.7 makes its log "stable" with `sync_file_range`, which flushes
//! neither the device cache nor the file's size, writes values (and leaves)
//! over a quarter of the segment size to files under `blobs/` that it never
//! fsyncs, and creates `conf`, `db`, `blobs/` and `snap.*` without fsyncing
//! their directory entries. After a power cut any of those can be gone.
//!
//! [`SyncBarrier::sync`] runs after every `sled::Db::flush` and, before it
//! returns, makes durable:
//! 1. every blob file (and any other file in the spool directory) created or
//!    written since the last barrier, with `fsync`;
//! 2. the directories whose entries changed (`blobs/`, the spool directory);
//! 3. sled's log (`db`), with `fdatasync` through a descriptor of our own:
//!    fsync acts on the inode, so it covers what sled wrote through its own;
//! 4. the watermark (see `watermark.rs`): the highest seq now durable.
//!
//! Blobs and directories go first: the log points at blobs, so a log that is
//! durable while a blob it points at is not would make sled fail at start-up.
//!
//! New files are found with inotify on the spool directory and `blobs/`. The
//! kernel queues an event inside the syscall that caused it (`creat`,
//! `close`, `rename`), so once `flush` has returned, every file it (or an
//! insert before it) wrote is in the queue. A queue overflow means events
//! were lost; the barrier then falls back to syncing every file and both
//! directories. [`SyncBarrier::open`] does that full sync once, so a spool
//! created (or torn and repaired by sled) before the watch existed starts
//! durable, including the entries of the directories created for it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::failstop::{FailedOp, Recovery};
use crate::watermark::{Previous, Watermark};

/// The spool's own files that sled keeps, relative to the spool directory.
pub(crate) const DB_FILE: &str = "db";
pub(crate) const CONF_FILE: &str = "conf";
pub(crate) const BLOB_DIR: &str = "blobs";

/// Which watched directory a change happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Where {
    /// The spool directory itself (`db`, `conf`, `snap.*`).
    Spool,
    /// `blobs/`.
    Blobs,
}

/// One change the barrier must make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A file was created or finished being written: sync its data.
    Written(Where, OsString),
    /// An entry was added, renamed or removed: sync the directory.
    Entries(Where),
    /// Events were lost: sync everything.
    Overflow,
}

/// The bookkeeping of the barrier, apart from any I/O: which files and
/// directories are owed a sync. Kept separate so it can be tested alone.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    files: BTreeSet<(Where, OsString)>,
    dirs: BTreeSet<Where>,
    everything: bool,
}

/// What one barrier has to do, in the order it must be done.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Sync every file of both directories (events were lost).
    pub(crate) everything: bool,
    pub(crate) files: Vec<(Where, OsString)>,
    pub(crate) dirs: Vec<Where>,
}

impl Pending {
    pub(crate) fn note(&mut self, change: Change) {
        match change {
            Change::Written(Where::Spool, name) if name == DB_FILE => {
                // The log is fdatasync'd by every barrier anyway.
            }
            Change::Written(place, name) => {
                self.files.insert((place, name));
            }
            Change::Entries(place) => {
                self.dirs.insert(place);
            }
            Change::Overflow => self.everything = true,
        }
    }

    /// Takes what is owed; after a full sync the single files are moot.
    pub(crate) fn take(&mut self) -> Plan {
        let pending = std::mem::take(self);
        if pending.everything {
            return Plan {
                everything: true,
                files: Vec::new(),
                dirs: vec![Where::Blobs, Where::Spool],
            };
        }
        Plan {
            everything: false,
            files: pending.files.into_iter().collect(),
            // blobs/ before the spool directory: `blobs` itself is an entry
            // of the spool directory only once, at creation, when both are
            // synced by the full sync of `open`.
            dirs: pending.dirs.into_iter().rev().collect(),
        }
    }
}

/// What a barrier synced (for tests and debugging).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Synced {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) dirs: Vec<PathBuf>,
}

/// Makes everything sled has written to a spool directory durable.
pub(crate) struct SyncBarrier {
    dir: PathBuf,
    db: File,
    /// `None` when inotify is unavailable (e.g. the per-user limit of
    /// instances is reached): then every barrier syncs every file.
    watch: Option<Watch>,
    pending: Pending,
    buffer: Vec<u8>,
    watermark: Watermark,
    /// The watermark as it was found when the spool was opened.
    previous: Previous,
    /// Makes the next barrier fail with this kind of error, as a failing
    /// (or full) disk would.
    #[cfg(test)]
    pub(crate) inject_failure: Option<io::ErrorKind>,
}

struct Watch {
    inotify: Inotify,
    spool: WatchDescriptor,
    blobs: WatchDescriptor,
}

impl Watch {
    fn start(dir: &Path) -> io::Result<Watch> {
        let inotify = Inotify::init()?;
        let mask = WatchMask::CREATE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::DONT_FOLLOW
            | WatchMask::ONLYDIR;
        let spool = inotify.watches().add(dir, mask)?;
        let blobs = inotify.watches().add(dir.join(BLOB_DIR), mask)?;
        Ok(Watch {
            inotify,
            spool,
            blobs,
        })
    }
}

/// Entry changes that need the directory synced.
fn entry_mask() -> EventMask {
    EventMask::CREATE | EventMask::MOVED_TO | EventMask::MOVED_FROM | EventMask::DELETE
}

impl SyncBarrier {
    /// Watches `dir` (a spool sled has opened), then syncs all of it once,
    /// and the entry of every directory in `created` (directories created
    /// for the spool, outermost first) in its parent.
    pub(crate) fn open(dir: &Path, created: &[PathBuf]) -> io::Result<SyncBarrier> {
        let watch = match Watch::start(dir) {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no inotify for the spool: every commit will fsync every spool file (slower, as durable)"
                );
                None
            }
        };
        let db = File::open(dir.join(DB_FILE))?;
        let (watermark, previous) = Watermark::open(dir)?;
        let mut barrier = SyncBarrier {
            dir: dir.to_owned(),
            db,
            watch,
            pending: Pending::default(),
            buffer: vec![0; 64 << 10],
            watermark,
            previous,
            #[cfg(test)]
            inject_failure: None,
        };
        barrier.pending.note(Change::Overflow);
        barrier.sync(0)?;
        for created_dir in created {
            if let Some(parent) = created_dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(barrier)
    }

    /// Makes durable everything written so far (call it after sled's
    /// `flush`), then records that seqs up to `durable_seq` (all inserted
    /// before that flush) are durable. On error nothing may be taken as
    /// durable, and the spool must stop: the kernel may have dropped the
    /// pages that failed.
    pub(crate) fn sync(&mut self, durable_seq: u64) -> io::Result<Synced> {
        self.drain_events()?;
        let plan = self.pending.take();
        let mut synced = Synced::default();
        // No retry on error: what failed is not owed again, because the
        // spool stops (a second fsync could "succeed" on dropped pages).
        self.carry_out(&plan, &mut synced)?;
        self.watermark.record(durable_seq)?;
        Ok(synced)
    }

    /// The watermark found at open, and its file.
    pub(crate) fn previous_watermark(&self) -> (&Previous, &Path) {
        (&self.previous, self.watermark.path())
    }

    fn carry_out(&self, plan: &Plan, synced: &mut Synced) -> io::Result<()> {
        if plan.everything {
            for place in [Where::Blobs, Where::Spool] {
                for entry in std::fs::read_dir(self.path_of(place))? {
                    let entry = entry?;
                    if entry.file_type()?.is_file() {
                        sync_file(&entry.path(), synced)?;
                    }
                }
            }
        }
        for (place, name) in &plan.files {
            sync_file(&self.path_of(*place).join(name), synced)?;
        }
        for place in &plan.dirs {
            let path = self.path_of(*place);
            sync_dir(&path)?;
            synced.dirs.push(path);
        }
        #[cfg(test)]
        if let Some(kind) = self.inject_failure {
            return Err(io::Error::new(kind, "injected fsync failure"));
        }
        self.db.sync_data()?;
        synced.files.push(self.dir.join(DB_FILE));
        Ok(())
    }

    fn path_of(&self, place: Where) -> PathBuf {
        match place {
            Where::Spool => self.dir.clone(),
            Where::Blobs => self.dir.join(BLOB_DIR),
        }
    }

    /// Moves every queued inotify event into `pending`.
    fn drain_events(&mut self) -> io::Result<()> {
        let Some(watch) = &mut self.watch else {
            self.pending.note(Change::Overflow);
            return Ok(());
        };
        loop {
            let events = match watch.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    self.pending.note(Change::Overflow);
                    continue;
                }
                let place = if event.wd == watch.blobs {
                    Where::Blobs
                } else if event.wd == watch.spool {
                    Where::Spool
                } else {
                    continue;
                };
                if event.mask.intersects(entry_mask()) {
                    self.pending.note(Change::Entries(place));
                }
                let is_file = !event.mask.contains(EventMask::ISDIR);
                let wrote = event
                    .mask
                    .intersects(EventMask::CREATE | EventMask::CLOSE_WRITE | EventMask::MOVED_TO);
                if let (true, true, Some(name)) = (is_file, wrote, event.name) {
                    self.pending
                        .note(Change::Written(place, name.to_os_string()));
                }
                if event.mask.contains(EventMask::IGNORED) {
                    // The watched directory itself went away: nothing sled
                    // does removes it, so treat it as lost events.
                    self.pending.note(Change::Overflow);
                }
            }
        }
    }
}

/// Which writes a completed sync covered, for writers that do not wait for
/// a sync of their own (the checkpoints ride on the group commits).
///
/// A sync takes a ticket before sled's flush starts; a write made before a
/// ticket was taken is durable once that ticket's sync has completed.
#[derive(Debug, Default)]
pub(crate) struct SyncTickets {
    started: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl SyncTickets {
    fn start(&self) -> u64 {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }

    fn done(&self, ticket: u64) {
        self.done
            .fetch_max(ticket, std::sync::atomic::Ordering::AcqRel);
    }

    /// The ticket whose sync covers what was written before this call.
    pub(crate) fn next(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Acquire) + 1
    }

    /// Whether the sync of `ticket` (or a later one) has completed.
    pub(crate) fn covered(&self, ticket: u64) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire) >= ticket
    }
}

impl crate::Shared {
    /// sled's flush, then the barrier: on `Ok`, everything written to the
    /// spool so far survives a power cut. On `Err` the spool has stopped.
    pub(crate) fn sync(&self) -> Result<(), crate::SpoolError> {
        self.failure.check()?;
        // Whatever was written before this ticket was taken is covered by
        // this sync (see `SyncTickets`).
        let ticket = self.syncs.start();
        // Every seq up to here was inserted before the flush below.
        let inserted = self.last_seq.load(std::sync::atomic::Ordering::Acquire);
        if let Err(e) = self.db.flush() {
            return Err(self.failure.fail(
                FailedOp::Fsync,
                format!("sled flush: {e}"),
                Recovery::of_sled(&e),
            ));
        }
        let synced = crate::failstop::lock(&self.barrier).sync(inserted);
        match synced {
            Ok(_) => {
                self.syncs.done(ticket);
                Ok(())
            }
            Err(e) => {
                let recovery = Recovery::of_kind(e.kind());
                Err(self.failure.fail(FailedOp::Fsync, e, recovery))
            }
        }
    }
}

/// fsyncs one file; a file removed since it was noted needs nothing.
fn sync_file(path: &Path, synced: &mut Synced) -> io::Result<()> {
    match File::open(path) {
        Ok(file) => {
            file.sync_all()?;
            synced.files.push(path.to_owned());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The directories that opening a spool at `dir` will create, outermost
/// first (their entries must be synced in their parents afterwards).
pub(crate) fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut missing: Vec<PathBuf> = absolute
        .ancestors()
        .take_while(|p| !p.exists())
        .map(Path::to_owned)
        .collect();
    missing.reverse();
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn name(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn pending_owes_each_written_file_once_and_never_the_log() {
        let mut p = Pending::default();
        p.note(Change::Written(Where::Blobs, name("17")));
        p.note(Change::Written(Where::Blobs, name("17")));
        p.note(Change::Written(Where::Spool, name(DB_FILE)));
        p.note(Change::Written(Where::Spool, name("snap.0001")));
        p.note(Change::Entries(Where::Blobs));
        p.note(Change::Entries(Where::Spool));
        let plan = p.take();
        assert_eq!(
            plan,
            Plan {
                everything: false,
                files: vec![
                    (Where::Spool, name("snap.0001")),
                    (Where::Blobs, name("17")),
                ],
                dirs: vec![Where::Blobs, Where::Spool],
            }
        );
        assert_eq!(p.take(), Plan::default(), "a plan is owed once");
    }

    #[test]
    fn overflow_owes_everything() {
        let mut p = Pending::default();
        p.note(Change::Written(Where::Blobs, name("3")));
        p.note(Change::Overflow);
        let plan = p.take();
        assert!(plan.everything);
        assert!(plan.files.is_empty());
        assert_eq!(plan.dirs, vec![Where::Blobs, Where::Spool]);
    }

    fn spool_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BLOB_DIR)).unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"log").unwrap();
        dir
    }

    #[test]
    fn open_syncs_every_file_then_only_what_changed() {
        let dir = spool_dir();
        std::fs::write(dir.path().join(BLOB_DIR).join("1"), b"old blob").unwrap();
        let mut barrier = SyncBarrier::open(dir.path(), &[]).unwrap();
        // Nothing changed since open: only the log.
        let synced = barrier.sync(0).unwrap();
        assert_eq!(synced.files, vec![dir.path().join(DB_FILE)]);
        assert!(synced.dirs.is_empty());

        // A new blob, written the way sled writes them.
        let blob = dir.path().join(BLOB_DIR).join("4096");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&blob)
            .unwrap();
        f.write_all(b"blob bytes").unwrap();
        drop(f);
        let synced = barrier.sync(0).unwrap();
        assert_eq!(synced.files, vec![blob, dir.path().join(DB_FILE)]);
        assert_eq!(synced.dirs, vec![dir.path().join(BLOB_DIR)]);

        // A snapshot renamed into place: the spool directory's entry.
        let tmp = dir.path().join("snap.01.generating");
        std::fs::write(&tmp, b"snap").unwrap();
        std::fs::rename(&tmp, dir.path().join("snap.01")).unwrap();
        let synced = barrier.sync(0).unwrap();
        assert!(synced.files.contains(&dir.path().join("snap.01")));
        assert_eq!(synced.dirs, vec![dir.path().to_owned()]);
    }

    #[test]
    fn without_inotify_every_barrier_syncs_everything() {
        let dir = spool_dir();
        let mut barrier = SyncBarrier::open(dir.path(), &[]).unwrap();
        barrier.watch = None;
        let blob = dir.path().join(BLOB_DIR).join("12");
        std::fs::write(&blob, b"x").unwrap();
        let synced = barrier.sync(0).unwrap();
        assert!(synced.files.contains(&blob), "{synced:?}");
        assert_eq!(
            synced.dirs,
            vec![dir.path().join(BLOB_DIR), dir.path().to_owned()]
        );
    }

    #[test]
    fn a_file_removed_before_the_barrier_is_skipped() {
        let dir = spool_dir();
        let mut barrier = SyncBarrier::open(dir.path(), &[]).unwrap();
        let blob = dir.path().join(BLOB_DIR).join("9");
        std::fs::write(&blob, b"x").unwrap();
        std::fs::remove_file(&blob).unwrap();
        let synced = barrier.sync(0).unwrap();
        assert_eq!(synced.files, vec![dir.path().join(DB_FILE)]);
        assert_eq!(synced.dirs, vec![dir.path().join(BLOB_DIR)]);
    }

    #[test]
    fn missing_dirs_lists_what_will_be_created_outermost_first() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/c");
        assert_eq!(
            missing_dirs(&dir),
            vec![root.path().join("a"), root.path().join("a/b"), dir.clone()]
        );
        std::fs::create_dir_all(&dir).unwrap();
        assert!(missing_dirs(&dir).is_empty());
    }
}
