//! A real rsyslog (Debian's `rsyslogd`, installed by `scripts/test`) for the
//! syslog sink tests: each [`Rsyslog`] is its own `rsyslogd -n` with a
//! generated config, listening on a free port (plain TCP, TLS through the
//! gtls driver with certificates from [`TestPki`], or UDP), and writing
//! every message it receives as one line into files in its own directory:
//! `raw.log` (the message as received) and `parsed.log` (rsyslog's RFC 5424
//! fields as one JSON object per line).
//!
//! rsyslog is told not to escape control characters on receipt
//! (`parser.escapeControlCharactersOnReceive="off"`), so what the files
//! hold is what the sink sent: a raw newline from the sink would split a
//! line here, rather than be hidden by rsyslog's own `#012` escaping.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// What an [`Rsyslog`] listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `imtcp`, with RFC 6587 octet-counted framing (rsyslog's default).
    Tcp,
    /// `imtcp` with the gtls driver: TLS, and a client certificate signed
    /// by the test CA required (`x509/certvalid`).
    Tls,
    /// `imudp`.
    Udp,
}

/// A CA, a server certificate for `localhost` / 127.0.0.1 and a client
/// certificate, as PEM files in a directory (from [`crate::tls::TestPki`]).
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn generate(dir: &Path) -> TestPki {
        let pki = crate::tls::TestPki::generate(dir);
        let client = pki.client("client", "auditrail-sink", &["auditrail-sink"]);
        TestPki {
            ca: pki.ca,
            server_cert: pki.server_cert,
            server_key: pki.server_key,
            client_cert: client.cert,
            client_key: client.key,
        }
    }
}

/// A running `rsyslogd -n` of a test's own.
pub struct Rsyslog {
    pub dir: tempfile::TempDir,
    pub listener: Listener,
    /// The port the sink sends to.
    pub port: u16,
    /// A plain TCP port that shows the daemon is up (for UDP and TLS,
    /// whose port cannot be probed as simply).
    probe_port: u16,
    config: PathBuf,
    child: Option<Child>,
    pub pki: Option<TestPki>,
}

/// The rsyslogd binary; panics, saying how to get it, when it is missing.
fn rsyslogd() -> &'static str {
    const BIN: &str = "/usr/sbin/rsyslogd";
    assert!(
        Path::new(BIN).exists(),
        "{BIN} not found: the syslog sink tests need a real rsyslog. Install Debian's `rsyslog` and `rsyslog-gnutls` (scripts/test does: apt-get install rsyslog rsyslog-gnutls)"
    );
    BIN
}

impl Rsyslog {
    /// Starts rsyslog listening on a free port (messages up to 64 KiB, the
    /// sink's default cap over TCP).
    pub fn start(listener: Listener) -> Rsyslog {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = (listener == Listener::Tls).then(|| TestPki::generate(dir.path()));
        let port = free_port();
        let probe_port = if listener == Listener::Tcp {
            port
        } else {
            free_port()
        };
        let config = dir.path().join("rsyslog.conf");
        let mut rsyslog = Rsyslog {
            dir,
            listener,
            port,
            probe_port,
            config,
            child: None,
            pki,
        };
        std::fs::write(&rsyslog.config, rsyslog.config_text()).expect("writing rsyslog.conf");
        rsyslog.resume();
        rsyslog
    }

    fn config_text(&self) -> String {
        let dir = self.dir.path().display();
        let mut text = format!(
            "global(workDirectory=\"{dir}\" maxMessageSize=\"64k\" parser.escapeControlCharactersOnReceive=\"off\"{tls})\n",
            tls = match &self.pki {
                Some(pki) => format!(
                    " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{}\" defaultNetstreamDriverCertFile=\"{}\" defaultNetstreamDriverKeyFile=\"{}\"",
                    pki.ca.display(),
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
                None => String::new(),
            }
        );
        text.push_str("module(load=\"imtcp\")\n");
        match self.listener {
            Listener::Tcp => {}
            Listener::Tls => text.push_str(&format!(
                "input(type=\"imtcp\" port=\"{}\" ruleset=\"out\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"x509/certvalid\")\n",
                self.port
            )),
            Listener::Udp => text.push_str(&format!(
                "module(load=\"imudp\")\ninput(type=\"imudp\" port=\"{}\" ruleset=\"out\")\n",
                self.port
            )),
        }
        text.push_str(&format!(
            "input(type=\"imtcp\" port=\"{}\" ruleset=\"out\")\n",
            self.probe_port
        ));
        text.push_str(&format!(
            r#"template(name="raw" type="string" string="%rawmsg%\n")
template(name="parsed" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
ruleset(name="out") {{
  action(type="omfile" file="{dir}/raw.log" template="raw")
  action(type="omfile" file="{dir}/parsed.log" template="parsed")
}}
"#
        ));
        text
    }

    /// The sink's `url` for this listener.
    pub fn url(&self) -> String {
        let scheme = match self.listener {
            Listener::Tcp => "tcp",
            Listener::Tls => "tls",
            Listener::Udp => "udp",
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts (again) the stopped daemon, on the same ports and files.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is already running");
        let log = std::fs::File::create(self.dir.path().join("rsyslogd.out")).expect("log file");
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&self.config)
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting rsyslogd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.probe_port)).is_err() {
            if let Some(status) = crate::exited(&mut self.child) {
                panic!(
                    "rsyslogd exited at start ({status}):\n{}",
                    self.daemon_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd does not listen on {} after 20s:\n{}",
                self.probe_port,
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon (SIGTERM, as an operator's restart would), waiting
    /// for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("waiting for rsyslogd").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// rsyslogd's own output (its errors, e.g. a TLS handshake refused).
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.out")).unwrap_or_default()
    }

    /// Every message received, as rsyslog wrote it: one per line.
    pub fn raw_lines(&self) -> Vec<String> {
        lines(&self.dir.path().join("raw.log"))
    }

    /// Waits until rsyslog has written at least `want` lines, for at most
    /// `within`; the lines. The failure shows the lines, rsyslogd's output
    /// and the tail of `server`'s log.
    pub async fn wait_lines(
        &self,
        want: usize,
        within: Duration,
        server: &crate::Server,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.raw_lines();
            if lines.len() >= want {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {want} lines in rsyslog after {within:?}:\n{}\nrsyslogd:\n{}\nserver log (tail):\n{}",
                lines.len(),
                lines.join("\n"),
                self.daemon_log(),
                crate::sinks::tail(&server.log())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for exactly `want` lines: after they are there, a moment more
    /// in which no further line may appear.
    pub async fn exactly_lines(
        &self,
        want: usize,
        within: Duration,
        server: &crate::Server,
    ) -> Vec<String> {
        self.wait_lines(want, within, server).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lines = self.raw_lines();
        assert_eq!(
            lines.len(),
            want,
            "one line per event, no more:\n{}",
            lines.join("\n")
        );
        lines
    }

    /// rsyslog's RFC 5424 fields of every message received, one object
    /// per line (`pri`, `timestamp`, `hostname`, `app_name`, `procid`,
    /// `msgid`, `structured_data`, `msg`).
    pub fn parsed(&self) -> Vec<Value> {
        lines(&self.dir.path().join("parsed.log"))
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("rsyslog wrote a line that is not JSON ({e}): {line:?}")
                })
            })
            .collect()
    }
}

/// The complete lines of a file that may not exist yet (a line still being
/// written, without its newline, is left for later).
fn lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8(bytes).expect("rsyslog wrote UTF-8");
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    if complete.is_empty() && !text.starts_with('\n') {
        return Vec::new();
    }
    complete.split('\n').map(str::to_owned).collect()
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
