//! The control protocol: one command per line on a unix socket, one answer
//! line each (`ok ...` or `error ...`).

use std::fmt;
use std::str::FromStr;

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drop everything not durable, unmount and exit.
    Cut,
    /// The next N fsync/fdatasync/fsyncdir calls fail with EIO.
    FailFsync(u64),
    /// Writes past this many bytes in total fail with ENOSPC (`None`: no limit).
    Enospc(Option<u64>),
    /// Counters: `ok fsyncs=.. fsyncdirs=.. failed_fsyncs=.. writes=.. bytes_made_durable=.. dirty_bytes=..`.
    Stats,
    /// Answers `ok`: the mount is up.
    Ping,
}

/// A line that is no command.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown control command {0:?} (expected cut, fail-fsync N, enospc BYTES|off, stats or ping)"
)]
pub struct BadCommand(String);

impl FromStr for Command {
    type Err = BadCommand;

    fn from_str(line: &str) -> Result<Command, BadCommand> {
        let bad = || BadCommand(line.to_owned());
        let mut words = line.split_whitespace();
        let command = match (words.next(), words.next()) {
            (Some("cut"), None) => Command::Cut,
            (Some("stats"), None) => Command::Stats,
            (Some("ping"), None) => Command::Ping,
            (Some("fail-fsync"), Some(n)) => Command::FailFsync(n.parse().map_err(|_| bad())?),
            (Some("enospc"), Some("off")) => Command::Enospc(None),
            (Some("enospc"), Some(n)) => Command::Enospc(Some(n.parse().map_err(|_| bad())?)),
            _ => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(command)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Cut => write!(f, "cut"),
            Command::FailFsync(n) => write!(f, "fail-fsync {n}"),
            Command::Enospc(None) => write!(f, "enospc off"),
            Command::Enospc(Some(n)) => write!(f, "enospc {n}"),
            Command::Stats => write!(f, "stats"),
            Command::Ping => write!(f, "ping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::Cut,
            Command::FailFsync(3),
            Command::Enospc(None),
            Command::Enospc(Some(1 << 20)),
            Command::Stats,
            Command::Ping,
        ] {
            assert_eq!(c.to_string().parse::<Command>().unwrap(), c);
        }
        for bad in [
            "",
            "cut now",
            "fail-fsync",
            "fail-fsync x",
            "enospc -1",
            "reboot",
        ] {
            assert!(bad.parse::<Command>().is_err(), "{bad:?}");
        }
    }
}
