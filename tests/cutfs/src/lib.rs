//! cutfs: a FUSE filesystem for tests that keeps only what was made durable
//! when the power is cut (the approach of LazyFS, which Jepsen uses).
//!
//! `kill -9` tests cannot catch a program that acknowledges data before it
//! is on disk: the page cache outlives the process. cutfs holds everything
//! that was not made durable in its own memory instead, and a *cut* (the
//! `cut` control command, SIGTERM, SIGINT or any unmount) throws it away.
//!
//! # The model: strict POSIX, what a power cut leaves
//!
//! The mount serves a *backing directory* B. After a cut, B holds exactly
//! the durable state and is a plain directory tree that any program can
//! open directly (or that a new cutfs mount can serve again).
//!
//! * **File data** written through the mount is held in memory as dirty
//!   ranges over the file's durable contents. It reaches disk only when that
//!   file is fsync'd or fdatasync'd. Reads see the current (dirty) state.
//!   Size changes (truncate, extend, plain fallocate) are just as volatile.
//!   `close` makes nothing durable.
//! * **`sync_file_range`** has no FUSE request, so it makes nothing durable:
//!   it flushes neither the drive's cache nor the file's size, and is no
//!   durability barrier.
//! * **Names** (create, mkdir, unlink, rmdir, rename) are volatile until the
//!   directory holding the entry is fsync'd (`fsync` on a directory fd, FUSE
//!   `fsyncdir`). A new file whose directory was never fsync'd vanishes at a
//!   cut even if the file itself was fsync'd; a new directory's entries
//!   survive only if it is itself linked by a durable parent.
//! * Each file's durable contents live in a *staging file* outside B (in a
//!   sibling directory on the same filesystem); every durable name in B is a
//!   hard link to it. An fsync writes only the dirty ranges to the staging
//!   file; a directory fsync links, unlinks or moves names in B.
//! * **Failure injection**: `fail-fsync N` makes the next N fsync,
//!   fdatasync or directory fsync calls fail with EIO and make nothing
//!   durable; a failed file fsync also discards that file's dirty data (as
//!   Linux does after a writeback error, so a retried fsync "succeeds"
//!   without the lost bytes). `enospc BYTES` makes writes that would grow
//!   the files past BYTES in total fail with ENOSPC (`enospc off` lifts it).
//! * Not modelled: hard links through the mount (refused with ENOTSUP),
//!   symlinks and special files, torn writes within one write request, and
//!   durability of permissions and times (kept in memory only).
//!
//! # Control
//!
//! `cutfs --backing B --mountpoint M --control SOCK` mounts and listens on
//! the unix socket SOCK for one-line commands (`cut`, `fail-fsync N`,
//! `enospc BYTES|off`, `stats`, `ping`), each answered with one line (`ok
//! ...` or `error ...`). [`Mount`] runs the binary for tests and cuts it on
//! drop, so no test leaves a mount behind.

mod client;
pub mod control;
mod extents;
pub mod fs;

pub use client::{is_mounted, Mount, MountError};
pub use control::Command;
pub use extents::Extents;
pub use fs::{CutFs, LoadError, State, Stats};
