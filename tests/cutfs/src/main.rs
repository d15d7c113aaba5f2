//! `cutfs`: mounts a directory through a filesystem that keeps only what was
//! fsync'd, and cuts the power on command (see the library's doc).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use auditrail_cutfs::{control::Command, fs::default_staging, CutFs, State};
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Mounts BACKING at MOUNTPOINT; what was not fsync'd is lost at a cut
/// (`cut` on the control socket, SIGTERM, SIGINT, SIGHUP or an unmount).
#[derive(Parser)]
#[command(name = "cutfs")]
struct Args {
    /// The directory that holds the durable state.
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount (an existing, empty directory).
    #[arg(long)]
    mountpoint: PathBuf,
    /// The unix socket to listen on for control commands.
    #[arg(long)]
    control: PathBuf,
    /// Where durable file contents are kept while mounted; on the same
    /// filesystem as BACKING. Default: `.NAME.cutfs-staging` beside it.
    #[arg(long)]
    staging: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(args) {
        Ok(never) => match never {},
        Err(message) => {
            eprintln!("cutfs: {message}");
            ExitCode::from(2)
        }
    }
}

enum Never {}

fn run(args: Args) -> Result<Never, String> {
    let backing = args
        .backing
        .canonicalize()
        .map_err(|e| format!("backing directory {}: {e}", args.backing.display()))?;
    let staging = args.staging.unwrap_or_else(|| default_staging(&backing));
    let state = State::load(&backing, &staging)
        .map_err(|e| format!("loading {}: {e}", backing.display()))?;
    let state = Arc::new(Mutex::new(state));

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("cutfs".into()),
        fuser::MountOption::Subtype("cutfs".into()),
    ];
    config.n_threads = Some(2);
    let session = fuser::Session::new(CutFs::new(state.clone()), &args.mountpoint, &config)
        .map_err(|e| format!("mounting at {}: {e}", args.mountpoint.display()))?;

    let (stop, stopped) = mpsc::channel::<String>();
    {
        let stop = stop.clone();
        thread::spawn(move || {
            let why = match session.run() {
                Ok(()) => "unmounted".to_owned(),
                Err(e) => format!("session ended: {e}"),
            };
            let _ = stop.send(why);
        });
    }
    {
        let stop = stop.clone();
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| format!("signal handlers: {e}"))?;
        thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = stop.send(format!("signal {signal}"));
            }
        });
    }
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control)
        .map_err(|e| format!("control socket {}: {e}", args.control.display()))?;
    {
        let state = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (state, stop) = (state.clone(), stop.clone());
                thread::spawn(move || serve(conn, &state, &stop));
            }
        });
    }

    let why = stopped.recv().unwrap_or_else(|_| "all senders gone".into());
    // Holding the lock to the end: no request changes anything after this.
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.stop();
    detach(&args.mountpoint);
    let _ = std::fs::remove_file(&args.control);
    eprintln!(
        "cutfs: cut ({why}); dropped {} dirty bytes; {:?}",
        s.dirty_bytes(),
        s.stats
    );
    std::process::exit(0)
}

/// `umount -l`: the mount disappears now; requests still in flight fail
/// once this process exits.
fn detach(mountpoint: &Path) {
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; umount2 touches no memory of ours.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            eprintln!("cutfs: unmounting {}: {e}", mountpoint.display());
        }
    }
}

fn serve(conn: UnixStream, state: &Mutex<State>, stop: &mpsc::Sender<String>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let answer = match line.parse::<Command>() {
            Err(e) => format!("error {e}"),
            Ok(Command::Cut) => {
                let _ = stop.send("cut command".into());
                "ok cutting".into()
            }
            Ok(command) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                match command {
                    Command::FailFsync(n) => {
                        s.fail_next_fsyncs(n);
                        "ok".into()
                    }
                    Command::Enospc(capacity) => {
                        s.set_capacity(capacity);
                        "ok".into()
                    }
                    Command::Stats => {
                        let st = s.stats;
                        format!(
                            "ok fsyncs={} fsyncdirs={} failed_fsyncs={} writes={} bytes_made_durable={} dirty_bytes={}",
                            st.fsyncs,
                            st.fsyncdirs,
                            st.failed_fsyncs,
                            st.writes,
                            st.bytes_made_durable,
                            s.dirty_bytes()
                        )
                    }
                    Command::Ping | Command::Cut => "ok".into(),
                }
            }
        };
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}
