//! The filesystem: an in-memory view of the backing directory plus what was
//! written since the last fsync, and the rules that move changes into the
//! backing directory (see the crate doc for the model).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::extents::Extents;

/// How long the kernel may cache attributes and entries. Every change goes
/// through this filesystem, which answers each with the new attributes, so
/// the cache cannot go stale.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// Counters, for `stats` and for tests that want to see what a program did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub fsyncs: u64,
    pub fsyncdirs: u64,
    pub failed_fsyncs: u64,
    pub writes: u64,
    pub bytes_made_durable: u64,
}

struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Meta {
    fn new(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    fn from_disk(m: &fs::Metadata) -> Meta {
        let time = |secs: i64, nanos: i64| {
            SystemTime::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.max(0) as u32)
        };
        Meta {
            perm: (m.mode() & 0o7777) as u16,
            uid: m.uid(),
            gid: m.gid(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A regular file: its durable contents are the staging file
/// `staging/<ino>`; everything else is in memory.
struct FileState {
    /// The size a reader sees now.
    size: u64,
    /// The staging file's length (the durable size).
    durable_len: u64,
    /// Durable bytes at or past this offset were cut off by a truncation
    /// since the last fsync and read as zeros (or as dirty bytes).
    valid_len: u64,
    dirty: Extents,
}

struct DirState {
    /// The names a reader sees now.
    entries: BTreeMap<OsString, u64>,
    /// The names as they were at this directory's last fsync: what a power
    /// cut leaves, once this directory itself is durably linked.
    durable: BTreeMap<OsString, u64>,
    /// Where this directory durably lives (parent and name); `None` for the
    /// root, which is the backing directory itself, and for a directory no
    /// parent's fsync has linked yet.
    durable_parent: Option<(u64, OsString)>,
}

impl FileState {
    /// A file whose durable contents are `len` bytes, with no changes.
    fn durable(len: u64) -> FileState {
        FileState {
            size: len,
            durable_len: len,
            valid_len: len,
            dirty: Extents::default(),
        }
    }
}

impl DirState {
    fn new(durable_parent: Option<(u64, OsString)>) -> DirState {
        DirState {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            durable_parent,
        }
    }
}

enum Body {
    File(FileState),
    Dir(DirState),
}

struct Inode {
    meta: Meta,
    body: Body,
}

/// Everything the filesystem knows, behind one lock (requests are short;
/// the longest is an fsync writing its dirty bytes to the staging file).
pub struct State {
    backing: PathBuf,
    staging: PathBuf,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    fail_fsyncs: u64,
    capacity: Option<u64>,
    /// The sum of every file's current size, for the ENOSPC capacity.
    used: u64,
    /// Set by a cut: from then on every request fails and nothing changes.
    stopped: bool,
    pub stats: Stats,
}

/// Why the backing directory cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: only regular files and directories can be served")]
    Unsupported(PathBuf),
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl State {
    /// Serves `backing`, keeping durable file contents in `staging` (a
    /// fresh directory on the same filesystem, so files can be hard-linked
    /// between the two).
    pub fn load(backing: &Path, staging: &Path) -> Result<State, LoadError> {
        match fs::remove_dir_all(staging) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(staging)(e)),
        }
        fs::create_dir_all(staging).map_err(at(staging))?;
        let root_meta = fs::metadata(backing).map_err(at(backing))?;
        if !root_meta.is_dir() {
            return Err(LoadError::Unsupported(backing.to_owned()));
        }
        let mut state = State {
            backing: backing.to_owned(),
            staging: staging.to_owned(),
            inodes: HashMap::new(),
            next_ino: ROOT + 1,
            fail_fsyncs: 0,
            capacity: None,
            used: 0,
            stopped: false,
            stats: Stats::default(),
        };
        state.inodes.insert(
            ROOT,
            Inode {
                meta: Meta::from_disk(&root_meta),
                body: Body::Dir(DirState::new(None)),
            },
        );
        state.load_dir(ROOT, backing)?;
        Ok(state)
    }

    fn load_dir(&mut self, dir: u64, path: &Path) -> Result<(), LoadError> {
        let mut names = BTreeMap::new();
        for entry in fs::read_dir(path).map_err(at(path))? {
            let entry = entry.map_err(at(path))?;
            let child_path = entry.path();
            let meta = fs::symlink_metadata(&child_path).map_err(at(&child_path))?;
            let ino = self.next_ino;
            self.next_ino += 1;
            let body = if meta.is_dir() {
                Body::Dir(DirState::new(Some((dir, entry.file_name()))))
            } else if meta.is_file() {
                let staged = self.staged(ino);
                fs::hard_link(&child_path, &staged).map_err(at(&staged))?;
                self.used += meta.len();
                Body::File(FileState::durable(meta.len()))
            } else {
                return Err(LoadError::Unsupported(child_path));
            };
            self.inodes.insert(
                ino,
                Inode {
                    meta: Meta::from_disk(&meta),
                    body,
                },
            );
            if meta.is_dir() {
                self.load_dir(ino, &child_path)?;
            }
            names.insert(entry.file_name(), ino);
        }
        let d = self.dir_mut(dir).expect("just made");
        d.entries = names.clone();
        d.durable = names;
        Ok(())
    }

    fn staged(&self, ino: u64) -> PathBuf {
        self.staging.join(ino.to_string())
    }

    pub fn fail_next_fsyncs(&mut self, n: u64) {
        self.fail_fsyncs = n;
    }

    pub fn set_capacity(&mut self, bytes: Option<u64>) {
        self.capacity = bytes;
    }

    /// Dirty bytes held in memory, over all files.
    pub fn dirty_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| match &i.body {
                Body::File(f) => f.dirty.len_bytes(),
                Body::Dir(_) => 0,
            })
            .sum()
    }

    /// The power cut: nothing changes any more. The backing directory
    /// already holds exactly what was made durable; the staging directory
    /// only held that data for files that have durable names there too
    /// (hard links), so removing it loses nothing durable.
    pub fn stop(&mut self) {
        self.stopped = true;
        if let Err(e) = fs::remove_dir_all(&self.staging) {
            eprintln!("cutfs: removing {}: {e}", self.staging.display());
        }
    }

    fn dir(&self, ino: u64) -> Result<&DirState, Errno> {
        match self.inodes.get(&ino).map(|i| &i.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirState, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileState, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::File(f)) => Ok(f),
            Some(Body::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &inode.body {
            Body::File(f) => (FileType::RegularFile, f.size, 1),
            Body::Dir(_) => (FileType::Directory, 0, 2),
        };
        let m = &inode.meta;
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: m.atime,
            mtime: m.mtime,
            ctime: m.ctime,
            crtime: m.ctime,
            kind,
            perm: m.perm,
            nlink,
            uid: m.uid,
            gid: m.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn live(&self) -> Result<(), Errno> {
        if self.stopped {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn new_inode(
        &mut self,
        parent: u64,
        name: &OsStr,
        body: Body,
        meta: Meta,
    ) -> Result<u64, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        if matches!(body, Body::File(_)) {
            // The durable contents of a new file: empty, like a file whose
            // name survived a cut but whose data did not.
            fs::File::create(self.staged(ino)).map_err(|e| errno(&e))?;
        }
        self.next_ino += 1;
        self.inodes.insert(ino, Inode { meta, body });
        let now = SystemTime::now();
        let p = self.inodes.get_mut(&parent).expect("checked");
        p.meta.mtime = now;
        p.meta.ctime = now;
        if let Body::Dir(d) = &mut p.body {
            d.entries.insert(name.to_owned(), ino);
        }
        Ok(ino)
    }

    fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let f = match self.inodes.get(&ino).map(|i| &i.body) {
            Some(Body::File(f)) => f,
            Some(Body::Dir(_)) => return Err(Errno::EISDIR),
            None => return Err(Errno::ENOENT),
        };
        if offset >= f.size {
            return Ok(Vec::new());
        }
        let len = (f.size - offset).min(u64::from(size));
        let mut buf = vec![0u8; len as usize];
        let durable_end = (offset + len).min(f.valid_len).min(f.durable_len);
        if durable_end > offset {
            let staged = fs::File::open(self.staged(ino)).map_err(|e| errno(&e))?;
            staged
                .read_exact_at(&mut buf[..(durable_end - offset) as usize], offset)
                .map_err(|e| errno(&e))?;
        }
        f.dirty.overlay(offset, &mut buf);
        Ok(buf)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let (capacity, used) = (self.capacity, self.used);
        let f = self.file_mut(ino)?;
        let new_size = f.size.max(offset + data.len() as u64);
        let growth = new_size - f.size;
        if capacity.is_some_and(|c| used + growth > c) {
            return Err(Errno::ENOSPC);
        }
        f.dirty.write(offset, data);
        f.size = new_size;
        self.used += growth;
        self.stats.writes += 1;
        let now = SystemTime::now();
        let meta = &mut self.inodes.get_mut(&ino).expect("checked").meta;
        meta.mtime = now;
        meta.ctime = now;
        Ok(())
    }

    fn set_size(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let (capacity, used) = (self.capacity, self.used);
        let f = self.file_mut(ino)?;
        if size > f.size && capacity.is_some_and(|c| used + (size - f.size) > c) {
            return Err(Errno::ENOSPC);
        }
        let old = f.size;
        if size < f.size {
            f.dirty.truncate(size);
            f.valid_len = f.valid_len.min(size);
        }
        f.size = size;
        self.used = self.used + size - old;
        Ok(())
    }

    /// Takes one injected failure, if any are pending.
    fn take_failure(&mut self) -> bool {
        if self.fail_fsyncs > 0 {
            self.fail_fsyncs -= 1;
            self.stats.failed_fsyncs += 1;
            true
        } else {
            false
        }
    }

    fn fsync_file(&mut self, ino: u64) -> Result<(), Errno> {
        self.file_mut(ino)?;
        self.stats.fsyncs += 1;
        if self.take_failure() {
            // Like Linux after a failed writeback: the dirty data is gone
            // for good; what remains is what was durable before.
            let f = self.file_mut(ino)?;
            f.dirty.take();
            let old = f.size;
            f.size = f.durable_len;
            f.valid_len = f.durable_len;
            let durable = f.size;
            self.used = self.used + durable - old;
            return Err(Errno::EIO);
        }
        let staged_path = self.staged(ino);
        let f = self.file_mut(ino)?;
        if f.dirty.is_empty() && f.valid_len == f.durable_len && f.size == f.durable_len {
            return Ok(());
        }
        let staged = fs::OpenOptions::new()
            .write(true)
            .open(&staged_path)
            .map_err(|e| errno(&e))?;
        let io = |e: io::Error| errno(&e);
        if f.valid_len < f.durable_len {
            staged.set_len(f.valid_len).map_err(io)?;
        }
        let mut bytes = 0;
        for (start, data) in f.dirty.take() {
            staged.write_all_at(&data, start).map_err(io)?;
            bytes += data.len() as u64;
        }
        staged.set_len(f.size).map_err(io)?;
        f.durable_len = f.size;
        f.valid_len = f.size;
        self.stats.bytes_made_durable += bytes;
        Ok(())
    }

    /// Where `ino` (a directory) durably is in the backing directory, if a
    /// chain of fsync'd directories links it to the root.
    fn durable_path(&self, ino: u64) -> Option<PathBuf> {
        if ino == ROOT {
            return Some(self.backing.clone());
        }
        let (parent, name) = self.dir(ino).ok()?.durable_parent.clone()?;
        Some(self.durable_path(parent)?.join(name))
    }

    fn is_dir(&self, ino: u64) -> bool {
        self.dir(ino).is_ok()
    }

    /// Makes the durable entries of `dir` (and, below it, of every
    /// directory they name) exist at `path`.
    fn materialize(&self, dir: u64, path: &Path) -> io::Result<()> {
        let Ok(d) = self.dir(dir) else { return Ok(()) };
        for (name, child) in &d.durable {
            let target = path.join(name);
            if self.is_dir(*child) {
                fs::create_dir(&target)?;
                self.materialize(*child, &target)?;
            } else {
                fs::hard_link(self.staged(*child), &target)?;
            }
        }
        Ok(())
    }

    fn fsync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        self.dir(ino)?;
        self.stats.fsyncdirs += 1;
        if self.take_failure() {
            return Err(Errno::EIO);
        }
        self.commit_dir(ino).map_err(|e| {
            eprintln!("cutfs: making directory inode {ino} durable: {e}");
            errno(&e)
        })
    }

    /// The directory's current entries become its durable ones, and the
    /// backing directory is changed to match (when this directory is
    /// durably reachable).
    fn commit_dir(&mut self, ino: u64) -> io::Result<()> {
        let d = self.dir(ino).expect("checked");
        let current = d.entries.clone();
        let old = d.durable.clone();
        let path = self.durable_path(ino);
        for (name, child) in &old {
            if current.get(name) == Some(child) {
                continue;
            }
            if let Some(p) = &path {
                let target = p.join(name);
                if self.is_dir(*child) {
                    fs::remove_dir_all(&target)?;
                } else {
                    fs::remove_file(&target)?;
                }
            }
            if let Ok(c) = self.dir_mut(*child) {
                if c.durable_parent.as_ref() == Some(&(ino, name.clone())) {
                    c.durable_parent = None;
                }
            }
        }
        for (name, child) in &current {
            if old.get(name) == Some(child) {
                continue;
            }
            let target = path.as_ref().map(|p| p.join(name));
            if !self.is_dir(*child) {
                if let Some(t) = &target {
                    fs::hard_link(self.staged(*child), t)?;
                }
                continue;
            }
            // A directory that is durably linked elsewhere (a rename whose
            // old parent was not fsync'd yet) moves here.
            let elsewhere = self.dir(*child).expect("dir").durable_parent.clone();
            let from = elsewhere
                .as_ref()
                .and_then(|(p, n)| Some(self.durable_path(*p)?.join(n)));
            if let Some((p, n)) = &elsewhere {
                self.dir_mut(*p).expect("dir").durable.remove(n);
            }
            self.dir_mut(*child).expect("dir").durable_parent = Some((ino, name.clone()));
            match (from, &target) {
                (Some(from), Some(to)) => fs::rename(from, to)?,
                (Some(from), None) => fs::remove_dir_all(from)?,
                (None, Some(to)) => {
                    fs::create_dir(to)?;
                    self.materialize(*child, to)?;
                }
                (None, None) => {}
            }
        }
        self.dir_mut(ino).expect("checked").durable = current;
        Ok(())
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (self.dir(ino), want_dir) {
            (Ok(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Ok(_), false) => return Err(Errno::EISDIR),
            (Err(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if let Ok(existing) = self.lookup(new_parent, new_name) {
            if existing == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (self.is_dir(ino), self.dir(existing)) {
                (true, Ok(d)) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                (true, Err(_)) => return Err(Errno::ENOTDIR),
                (false, Ok(_)) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        // A directory may not move below itself.
        let mut up = self.is_dir(ino).then_some(new_parent);
        while let Some(p) = up {
            if p == ino {
                return Err(Errno::EINVAL);
            }
            up = self.parent_of(p);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        Ok(())
    }

    /// The current parent of a directory (a linear search: renames of
    /// directories are rare).
    fn parent_of(&self, dir: u64) -> Option<u64> {
        self.inodes
            .iter()
            .find_map(|(ino, inode)| match &inode.body {
                Body::Dir(d) if d.entries.values().any(|c| *c == dir) => Some(*ino),
                _ => None,
            })
    }
}

/// The FUSE side: each request takes the state lock and answers.
pub struct CutFs {
    state: Arc<Mutex<State>>,
}

impl CutFs {
    pub fn new(state: Arc<Mutex<State>>) -> CutFs {
        CutFs { state }
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.live()?;
        Ok(s)
    }

    fn entry(&self, reply: ReplyEntry, f: impl FnOnce(&mut State) -> Result<u64, Errno>) {
        let result = self.state().and_then(|mut s| {
            let ino = f(&mut s)?;
            s.attr(ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(&self, reply: ReplyEmpty, f: impl FnOnce(&mut State) -> Result<(), Errno>) {
        match self.state().and_then(|mut s| f(&mut s)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for CutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, |s| s.lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().and_then(|s| s.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.state().and_then(|mut s| {
            if let Some(size) = size {
                s.set_size(ino.0, size)?;
            }
            let meta = &mut s.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.meta;
            let time = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            if let Some(mode) = mode {
                meta.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                meta.uid = uid;
            }
            if let Some(gid) = gid {
                meta.gid = gid;
            }
            if let Some(t) = atime {
                meta.atime = time(t);
            }
            if let Some(t) = mtime {
                meta.mtime = time(t);
            }
            meta.ctime = SystemTime::now();
            s.attr(ino.0)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let meta = Meta::new((mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        let body = Body::Dir(DirState::new(None));
        self.entry(reply, |s| s.new_inode(parent.0, name, body, meta));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |s| s.unlink(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |s| s.unlink(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |s| {
            s.rename(parent.0, name, newparent.0, newname, flags)
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // One name per file keeps the model small; sled does not link.
        reply.error(Errno::ENOTSUP);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().and_then(|mut s| s.file_mut(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::ENOTSUP);
            return;
        }
        let meta = Meta::new((mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        let body = Body::File(FileState::durable(0));
        let result = self.state().and_then(|mut s| {
            let ino = s.new_inode(parent.0, name, body, meta)?;
            s.attr(ino)
        });
        match result {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().and_then(|s| s.read(ino.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().and_then(|mut s| s.write(ino.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync makes the size durable too (it is needed to read the
        // data back), so both are one operation here.
        self.empty(reply, |s| s.fsync_file(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().and_then(|s| s.dir(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = self.state().and_then(|s| {
            let d = s.dir(ino.0)?;
            let mut all = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in &d.entries {
                let kind = if s.is_dir(*child) {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                all.push((*child, kind, name.clone()));
            }
            Ok(all)
        });
        match listing {
            Ok(all) => {
                for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |s| s.fsync_dir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = match self.state() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let (blocks, free) = match s.capacity {
            Some(c) => (c / 4096, c.saturating_sub(s.used) / 4096),
            None => (1 << 30, 1 << 29),
        };
        reply.statfs(blocks, free, free, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes (the kernel asks for security labels).
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Only plain preallocation (mode 0): it extends the size, volatile
        // like any other size change.
        if mode != 0 {
            return reply.error(Errno::ENOTSUP);
        }
        self.empty(reply, |s| {
            let size = s.file_mut(ino.0)?.size;
            if offset + length > size {
                s.set_size(ino.0, offset + length)?;
            }
            Ok(())
        });
    }
}

/// The staging directory used when none is given: beside the backing
/// directory, so it is on the same filesystem (hard links need that).
pub fn default_staging(backing: &Path) -> PathBuf {
    let name = backing
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    backing.with_file_name(format!(".{name}.cutfs-staging"))
}
