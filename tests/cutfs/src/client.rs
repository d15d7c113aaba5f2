//! Running `cutfs` from a test: [`Mount`] starts the binary as its own
//! process (a FUSE server inside the test process could deadlock against
//! the kernel when a test thread blocks in the mount), waits for the mount,
//! sends commands, and cuts and cleans up on drop, also when a test panics.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::control::Command;
use crate::fs::default_staging;

/// What went wrong with a mount; the messages carry cutfs's log.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("cutfs exited ({status}) before the mount was up:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("cutfs did not answer within {0:?}:\n{1}")]
    Timeout(Duration, String),
    #[error("control socket: {0}")]
    Control(#[from] std::io::Error),
    #[error("cutfs refused {command}: {answer}")]
    Refused { command: Command, answer: String },
}

/// A running cutfs mount. Dropping it cuts the power (and, if cutfs does
/// not exit, kills it and detaches the mount), so no mount is left behind.
pub struct Mount {
    child: Option<Child>,
    backing: PathBuf,
    mountpoint: PathBuf,
    control: PathBuf,
    log: PathBuf,
}

const PATIENCE: Duration = Duration::from_secs(30);

impl Mount {
    /// Mounts `backing` with the cutfs `binary`; the mountpoint, the control
    /// socket and the log go into `workdir` (a fresh directory).
    pub fn start(binary: &Path, backing: &Path, workdir: &Path) -> Result<Mount, MountError> {
        let mountpoint = workdir.join("mnt");
        let control = workdir.join("control.sock");
        let log = workdir.join("cutfs.log");
        std::fs::create_dir_all(&mountpoint)?;
        let log_file = std::fs::File::create(&log)?;
        let child = Process::new(binary)
            .arg("--backing")
            .arg(backing)
            .arg("--mountpoint")
            .arg(&mountpoint)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|source| MountError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let mut mount = Mount {
            child: Some(child),
            backing: backing.canonicalize()?,
            mountpoint,
            control,
            log,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = mount
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                mount.child = None;
                return Err(MountError::Exited {
                    status,
                    log: mount.log(),
                });
            }
            if mount.command(Command::Ping).is_ok() && is_mounted(&mount.mountpoint) {
                return Ok(mount);
            }
            if Instant::now() > deadline {
                return Err(MountError::Timeout(PATIENCE, mount.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The cutfs process id (to signal it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// What cutfs printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one command; the answer after `ok`.
    pub fn command(&self, command: Command) -> Result<String, MountError> {
        let mut conn = UnixStream::connect(&self.control)?;
        conn.set_read_timeout(Some(PATIENCE))?;
        writeln!(conn, "{command}")?;
        let mut answer = String::new();
        BufReader::new(conn).read_line(&mut answer)?;
        let answer = answer.trim_end();
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim_start().to_owned()),
            None => Err(MountError::Refused {
                command,
                answer: answer.to_owned(),
            }),
        }
    }

    /// The next `n` fsync/fdatasync/fsyncdir calls fail with EIO.
    pub fn fail_next_fsyncs(&self, n: u64) -> Result<(), MountError> {
        self.command(Command::FailFsync(n)).map(drop)
    }

    /// Writes that would grow the files past `bytes` in total get ENOSPC
    /// (`None` lifts the limit).
    pub fn set_capacity(&self, bytes: Option<u64>) -> Result<(), MountError> {
        self.command(Command::Enospc(bytes)).map(drop)
    }

    /// cutfs's counters, e.g. `fsyncs=3 fsyncdirs=1 ...`.
    pub fn stats(&self) -> Result<String, MountError> {
        self.command(Command::Stats)
    }

    /// Cuts the power: everything not durable is gone, the mount with it,
    /// and `backing` holds what a machine would find after a reboot.
    pub fn cut(mut self) -> Result<(), MountError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), MountError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // A cutfs that is exiting already (a signal, an unmount) may no
        // longer answer: its exit is what counts.
        let _ = self.command(Command::Cut);
        let mut outcome = Ok(());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                outcome = Err(MountError::Timeout(PATIENCE, self.log()));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Last resorts, for a cutfs that died or hung: `umount -l`, and the
        // staging directory it would have removed (never durable data: all
        // of that is hard-linked into the backing directory).
        if is_mounted(&self.mountpoint) {
            detach(&self.mountpoint);
        }
        let staging = default_staging(&self.backing);
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        outcome
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("cutfs at {}: {e}", self.mountpoint.display());
        }
    }
}

/// Whether something is mounted at `path` (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|m| m.replace("\\040", " ").as_bytes() == want)
    })
}

fn detach(mountpoint: &Path) {
    let _ = Process::new("umount").arg("-l").arg(mountpoint).status();
}
