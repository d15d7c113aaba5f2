//! Power cuts for end-to-end tests: a [`CutFs`] mount (see the
//! `auditrail-cutfs` crate) keeps only what was fsync'd, and `cut` drops
//! the rest, as pulling the plug does.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use auditrail_cutfs::Mount;

/// The cutfs binary, built once per test process like [`crate::binary`].
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::build_binary("auditrail-cutfs", "cutfs"))
}

/// A mounted cutfs over a backing directory. Dropping it cuts the power and
/// unmounts, also when the test panics.
pub struct CutFs {
    mount: Mount,
    _work: tempfile::TempDir,
}

impl CutFs {
    /// Mounts `backing` (a directory that exists); panics with cutfs's log
    /// if the mount does not come up.
    pub fn mount(backing: &Path) -> CutFs {
        let work = tempfile::tempdir().expect("temp dir for the mount");
        let mount =
            Mount::start(binary(), backing, work.path()).unwrap_or_else(|e| panic!("cutfs: {e}"));
        CutFs { mount, _work: work }
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        self.mount.mountpoint()
    }

    /// The directory that holds what is durable.
    pub fn backing(&self) -> &Path {
        self.mount.backing()
    }

    /// Cuts the power: everything not fsync'd is gone and the mount with it.
    pub fn cut(self) {
        let CutFs { mount, _work } = self;
        mount.cut().unwrap_or_else(|e| panic!("cutting: {e}"));
    }

    /// The next `n` fsync/fdatasync/directory fsync calls fail with EIO and
    /// make nothing durable.
    pub fn fail_next_fsyncs(&self, n: u64) {
        self.mount
            .fail_next_fsyncs(n)
            .unwrap_or_else(|e| panic!("cutfs fail-fsync: {e}"));
    }

    /// Writes that would grow the files past `bytes` in total get ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.mount
            .set_capacity(bytes)
            .unwrap_or_else(|e| panic!("cutfs enospc: {e}"));
    }

    /// cutfs's counters (fsyncs, directory fsyncs, dirty bytes, ...).
    pub fn stats(&self) -> String {
        self.mount
            .stats()
            .unwrap_or_else(|e| panic!("cutfs stats: {e}"))
    }

    /// What cutfs logged.
    pub fn log(&self) -> String {
        self.mount.log()
    }
}

/// The directories of a power-cut test: a backing directory for cutfs and a
/// work directory for the server (config, log), both under one temp dir.
pub struct CutDirs {
    pub backing: PathBuf,
    pub work: PathBuf,
    _tmp: tempfile::TempDir,
}

impl CutDirs {
    pub fn new() -> CutDirs {
        let tmp = tempfile::tempdir().expect("temp dir");
        let backing = tmp.path().join("backing");
        let work = tmp.path().join("server");
        std::fs::create_dir_all(&backing).expect("backing dir");
        std::fs::create_dir_all(&work).expect("server dir");
        CutDirs {
            backing,
            work,
            _tmp: tmp,
        }
    }
}

impl Default for CutDirs {
    fn default() -> Self {
        CutDirs::new()
    }
}
