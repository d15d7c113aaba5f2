//! cutfs against its model, through a real mount: what a cut keeps and what
//! it drops, for data, sizes and names, and the injected failures.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use auditrail_cutfs::{fs::default_staging, Mount};

/// A backing directory and a place for the mount's files.
struct Setup {
    _tmp: tempfile::TempDir,
    backing: PathBuf,
    runs: PathBuf,
    mounts: usize,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().join("backing");
        let runs = tmp.path().join("runs");
        fs::create_dir_all(&backing).unwrap();
        Setup {
            backing,
            runs,
            mounts: 0,
            _tmp: tmp,
        }
    }

    fn mount(&mut self) -> Mount {
        self.mounts += 1;
        let work = self.runs.join(self.mounts.to_string());
        fs::create_dir_all(&work).unwrap();
        Mount::start(Path::new(env!("CARGO_BIN_EXE_cutfs")), &self.backing, &work)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A file in the backing directory, as a machine would find it after
    /// the cut.
    fn after(&self, name: &str) -> Option<Vec<u8>> {
        match fs::read(self.backing.join(name)) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn write_new(path: &Path, bytes: &[u8]) -> File {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f
}

#[test]
fn data_without_fsync_is_gone_after_a_cut() {
    let mut s = Setup::new();
    fs::write(s.backing.join("log"), b"durable").unwrap();
    let m = s.mount();
    let path = m.mountpoint().join("log");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b" and volatile").unwrap();
    drop(f); // close makes nothing durable
    assert_eq!(fs::read(&path).unwrap(), b"durable and volatile");
    m.cut().unwrap();
    assert_eq!(s.after("log").unwrap(), b"durable");
}

#[test]
fn fsynced_data_stays() {
    let mut s = Setup::new();
    fs::write(s.backing.join("log"), b"one").unwrap();
    let m = s.mount();
    let f = OpenOptions::new()
        .write(true)
        .open(m.mountpoint().join("log"))
        .unwrap();
    f.write_all_at(b"two, fsync'd", 3).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(b"three, fdatasync'd", 15).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"four, lost", 33).unwrap();
    m.cut().unwrap();
    assert_eq!(
        s.after("log").unwrap(),
        b"onetwo, fsync'dthree, fdatasync'd"
    );
}

#[test]
fn sync_file_range_makes_nothing_durable() {
    let mut s = Setup::new();
    fs::write(s.backing.join("log"), b"").unwrap();
    let m = s.mount();
    let f = OpenOptions::new()
        .write(true)
        .open(m.mountpoint().join("log"))
        .unwrap();
    f.write_all_at(&[7u8; 8192], 0).unwrap();
    // What sled 0.34's flush does.
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open fd; the call only reads its arguments.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 8192, flags) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    m.cut().unwrap();
    assert_eq!(s.after("log").unwrap(), b"");
}

#[test]
fn a_new_file_needs_its_directory_fsynced() {
    let mut s = Setup::new();
    let m = s.mount();
    let synced_file_only = write_new(&m.mountpoint().join("orphan"), b"data");
    synced_file_only.sync_all().unwrap();
    m.cut().unwrap();
    assert_eq!(s.after("orphan"), None, "no directory fsync, no name");

    let m = s.mount();
    let f = write_new(&m.mountpoint().join("kept"), b"data");
    f.sync_all().unwrap();
    fsync_dir(m.mountpoint());
    // A name made durable before its data: the file survives, empty.
    write_new(&m.mountpoint().join("empty"), b"never fsync'd");
    fsync_dir(m.mountpoint());
    m.cut().unwrap();
    assert_eq!(s.after("kept").unwrap(), b"data");
    assert_eq!(s.after("empty").unwrap(), b"");
}

#[test]
fn a_new_directory_needs_its_parent_fsynced() {
    let mut s = Setup::new();
    let m = s.mount();
    let dir = m.mountpoint().join("spool");
    fs::create_dir(&dir).unwrap();
    write_new(&dir.join("db"), b"x").sync_all().unwrap();
    fsync_dir(&dir);
    m.cut().unwrap();
    assert_eq!(
        s.after("spool/db"),
        None,
        "the directory itself was never linked"
    );
    assert!(!s.backing.join("spool").exists());

    let m = s.mount();
    let dir = m.mountpoint().join("spool");
    fs::create_dir(&dir).unwrap();
    write_new(&dir.join("db"), b"x").sync_all().unwrap();
    fsync_dir(&dir);
    fsync_dir(m.mountpoint());
    m.cut().unwrap();
    assert_eq!(s.after("spool/db").unwrap(), b"x");

    // The order of the two directory fsyncs does not matter.
    let m = s.mount();
    let dir = m.mountpoint().join("later");
    fs::create_dir(&dir).unwrap();
    fsync_dir(m.mountpoint());
    write_new(&dir.join("f"), b"y").sync_all().unwrap();
    fsync_dir(&dir);
    m.cut().unwrap();
    assert_eq!(s.after("later/f").unwrap(), b"y");
}

#[test]
fn unlink_and_rename_are_volatile_until_the_directory_fsync() {
    let mut s = Setup::new();
    fs::write(s.backing.join("a"), b"A").unwrap();
    fs::write(s.backing.join("gone"), b"G").unwrap();
    fs::create_dir(s.backing.join("sub")).unwrap();
    let m = s.mount();
    let root = m.mountpoint().to_owned();
    fs::rename(root.join("a"), root.join("b")).unwrap();
    fs::remove_file(root.join("gone")).unwrap();
    assert!(!root.join("a").exists());
    m.cut().unwrap();
    assert_eq!(s.after("a").unwrap(), b"A");
    assert_eq!(s.after("b"), None);
    assert_eq!(s.after("gone").unwrap(), b"G");

    let m = s.mount();
    let root = m.mountpoint().to_owned();
    fs::rename(root.join("a"), root.join("b")).unwrap();
    fs::remove_file(root.join("gone")).unwrap();
    fsync_dir(&root);
    m.cut().unwrap();
    assert_eq!(s.after("a"), None);
    assert_eq!(s.after("b").unwrap(), b"A");
    assert_eq!(s.after("gone"), None);

    // Across directories: the new parent's fsync links the new name, the
    // old parent's fsync removes the old one.
    let m = s.mount();
    let root = m.mountpoint().to_owned();
    fs::rename(root.join("b"), root.join("sub/c")).unwrap();
    fsync_dir(&root.join("sub"));
    m.cut().unwrap();
    assert_eq!(s.after("b").unwrap(), b"A");
    assert_eq!(s.after("sub/c").unwrap(), b"A");

    // The replace-by-rename idiom: write a temp file, fsync, rename over,
    // fsync the directory.
    let m = s.mount();
    let root = m.mountpoint().to_owned();
    write_new(&root.join("b.tmp"), b"new A").sync_all().unwrap();
    fs::rename(root.join("b.tmp"), root.join("b")).unwrap();
    fsync_dir(&root);
    m.cut().unwrap();
    assert_eq!(s.after("b").unwrap(), b"new A");
    assert_eq!(s.after("b.tmp"), None);
}

#[test]
fn a_renamed_directory_moves_with_its_durable_contents() {
    let mut s = Setup::new();
    fs::create_dir_all(s.backing.join("a/d")).unwrap();
    fs::write(s.backing.join("a/d/f"), b"F").unwrap();
    fs::create_dir(s.backing.join("b")).unwrap();
    let m = s.mount();
    let root = m.mountpoint().to_owned();
    assert_eq!(
        fs::rename(root.join("a"), root.join("a/d/x"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL),
        "a directory cannot move below itself"
    );
    fs::rename(root.join("a/d"), root.join("b/d")).unwrap();
    write_new(&root.join("b/d/g"), b"G").sync_all().unwrap();
    fsync_dir(&root.join("b/d"));
    m.cut().unwrap();
    assert_eq!(
        s.after("a/d/f").unwrap(),
        b"F",
        "no parent fsync'd: still in a"
    );
    // d's own fsync made g durable in d, which durably is still a/d.
    assert_eq!(s.after("a/d/g").unwrap(), b"G");
    assert!(!s.backing.join("b/d").exists());

    let m = s.mount();
    let root = m.mountpoint().to_owned();
    fs::rename(root.join("a/d"), root.join("b/d")).unwrap();
    fsync_dir(&root.join("b"));
    m.cut().unwrap();
    assert_eq!(s.after("b/d/f").unwrap(), b"F");
    assert_eq!(s.after("b/d/g").unwrap(), b"G");
    assert!(!s.backing.join("a/d").exists(), "one directory, one place");
}

#[test]
fn size_changes_are_volatile_until_fsync() {
    let mut s = Setup::new();
    fs::write(s.backing.join("f"), vec![b'd'; 100]).unwrap();
    let m = s.mount();
    let path = m.mountpoint().join("f");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(10).unwrap();
    f.write_all_at(b"tail", 96).unwrap();
    let now = fs::read(&path).unwrap();
    assert_eq!(now.len(), 100);
    assert_eq!(&now[..10], &[b'd'; 10]);
    assert!(
        now[10..96].iter().all(|b| *b == 0),
        "truncated bytes read as zeros"
    );
    assert_eq!(&now[96..], b"tail");
    f.set_len(200).unwrap();
    drop(f);
    m.cut().unwrap();
    assert_eq!(
        s.after("f").unwrap(),
        vec![b'd'; 100],
        "no fsync: the old contents"
    );

    let m = s.mount();
    let path = m.mountpoint().join("f");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(10).unwrap();
    f.write_all_at(b"tail", 96).unwrap();
    f.sync_data().unwrap();
    f.set_len(5).unwrap();
    drop(f);
    m.cut().unwrap();
    let after = s.after("f").unwrap();
    assert_eq!(after.len(), 100);
    assert_eq!(&after[..10], &[b'd'; 10]);
    assert!(after[10..96].iter().all(|b| *b == 0));
    assert_eq!(&after[96..], b"tail");
}

#[test]
fn a_failed_fsync_is_eio_and_drops_the_dirty_data() {
    let mut s = Setup::new();
    fs::write(s.backing.join("f"), b"durable").unwrap();
    let m = s.mount();
    let root = m.mountpoint().to_owned();
    let f = OpenOptions::new().write(true).open(root.join("f")).unwrap();
    f.write_all_at(b" lost", 7).unwrap();
    m.fail_next_fsyncs(2).unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    write_new(&root.join("new"), b"n");
    let e = File::open(&root).unwrap().sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "directory fsync: {e}");
    // Like Linux: the retried fsync succeeds, but the bytes are gone.
    f.sync_all().unwrap();
    assert!(m.stats().unwrap().contains("failed_fsyncs=2"));
    m.cut().unwrap();
    assert_eq!(s.after("f").unwrap(), b"durable");
    assert_eq!(s.after("new"), None);
}

#[test]
fn writes_past_the_capacity_get_enospc() {
    let mut s = Setup::new();
    let m = s.mount();
    m.set_capacity(Some(10_000)).unwrap();
    let f = write_new(&m.mountpoint().join("f"), &[1; 8_000]);
    let e = f.write_all_at(&[2; 4_000], 8_000).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    f.write_all_at(&[3; 100], 0).unwrap(); // overwriting needs no space
    m.set_capacity(None).unwrap();
    f.write_all_at(&[2; 4_000], 8_000).unwrap();
}

/// A program that does everything right survives any cut: each record is
/// a new file, fsync'd, then its directory fsync'd, then "acknowledged".
#[test]
fn a_careful_program_loses_nothing_acknowledged() {
    let mut s = Setup::new();
    let mut acked = Vec::new();
    for round in 0..4 {
        let m = s.mount();
        let dir = m.mountpoint().join("records");
        if round == 0 {
            fs::create_dir(&dir).unwrap();
            fsync_dir(m.mountpoint());
        }
        let log = dir.join("log");
        let mut log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        fsync_dir(&dir);
        for i in 0..50 {
            let name = format!("r{round}-{i}");
            let f = write_new(&dir.join(&name), name.as_bytes());
            f.sync_all().unwrap();
            fsync_dir(&dir);
            writeln!(log_file, "{name}").unwrap();
            log_file.sync_data().unwrap();
            acked.push(name);
        }
        // Unacknowledged work in flight at the cut.
        write_new(&dir.join("in-flight"), b"x");
        writeln!(log_file, "not acked").unwrap();
        m.cut().unwrap();
        let lines = fs::read_to_string(s.backing.join("records/log")).unwrap();
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines, acked, "round {round}: the acknowledged log lines");
        for name in &acked {
            assert_eq!(
                s.after(&format!("records/{name}")).unwrap(),
                name.as_bytes()
            );
        }
        assert_eq!(s.after("records/in-flight"), None);
    }
}

#[test]
fn sigterm_and_drop_cut_too_and_leave_no_mount() {
    let mut s = Setup::new();
    let m = s.mount();
    write_new(&m.mountpoint().join("f"), b"x")
        .sync_all()
        .unwrap();
    let mountpoint = m.mountpoint().to_owned();
    drop(m);
    assert!(!auditrail_cutfs::is_mounted(&mountpoint));
    assert!(fs::read_dir(&mountpoint).unwrap().next().is_none());
    assert_eq!(s.after("f"), None);
    assert!(!default_staging(&s.backing).exists(), "staging removed");

    let m = s.mount();
    write_new(&m.mountpoint().join("g"), b"x")
        .sync_all()
        .unwrap();
    let mountpoint = m.mountpoint().to_owned();
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(m.pid().unwrap() as i32, libc::SIGTERM) };
    m.cut().unwrap();
    assert!(!auditrail_cutfs::is_mounted(&mountpoint));
    assert_eq!(s.after("g"), None);
    assert!(!default_staging(&s.backing).exists(), "staging removed");
}
