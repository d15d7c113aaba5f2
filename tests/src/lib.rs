//! Test harness for auditrail's end-to-end tests: starts the real binary on
//! free ports with its own spool directory, and talks to it the ways users
//! do (OTel SDKs, OTLP requests, the admin API and the CLI).

pub mod clickhouse;
pub mod cluster;
pub mod cutfs;
pub mod elasticsearch;
pub mod kafka;
pub mod load;
pub mod mysql;
pub mod nats;
pub mod oidc;
pub mod ottl;
pub mod rsyslog;
pub mod sinks;
pub mod splunk;
pub mod tenants;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The auditrail binary, built once per test process with the tests'
/// profile, so a test never runs a stale binary.
///
/// `AUDITRAIL_BIN=/path/to/auditrail` runs the tests against that binary
/// instead (e.g. an older build, to see a new test fail on the old code).
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("AUDITRAIL_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_binary("auditrail", "auditrail"),
    })
}

/// Builds `bin` of `package` with the tests' profile and returns its path.
///
/// It is built into its own target dir (`target/e2e`): a `cargo build -p
/// auditrail` in the shared target dir can resolve features differently from
/// the workspace build and relink `target/debug/auditrail` while another
/// test process is running it.
pub fn build_binary(package: &str, bin: &str) -> PathBuf {
    build_target(package, "--bin", bin, "")
}

/// Builds `example` of `package` (e.g. the SDK's example service) as
/// [`build_binary`] builds a binary, and returns its path.
pub fn build_example(package: &str, example: &str) -> PathBuf {
    build_target(package, "--example", example, "examples")
}

/// `cargo build -p package {kind} name` into `target/e2e`: the path of the
/// executable, in `subdir` of the profile's directory.
fn build_target(package: &str, kind: &str, bin: &str, subdir: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile> → target
    let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
    let target = profile_dir.parent().expect("target dir");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let e2e = target.join("e2e");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package, kind, bin, "--target-dir"]);
    build.arg(&e2e);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    let path = e2e
        .join(if release { "release" } else { "debug" })
        .join(subdir)
        .join(bin);
    assert!(path.exists(), "no binary at {}", path.display());
    path
}

/// Every file under `dir` with its bytes, sorted by path: to compare a
/// directory before and after, or to search the raw bytes of a store.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

/// `auditrail check-config` of the file `config`, with each variable of
/// `vars` set in its environment (to a value long enough for an HMAC key,
/// which redaction keys need): what it printed when it refuses the file.
pub fn check_config(config: &Path, vars: impl IntoIterator<Item = String>) -> Result<(), String> {
    let mut command = Command::new(binary());
    command.arg("check-config").arg(config).stdin(Stdio::null());
    for var in vars {
        command.env(var, "from-the-environment-0123456789abcdef");
    }
    let out = command.output().expect("running auditrail check-config");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// The exit status of `child` once it has exited, which also empties
/// `child`; `None` while it runs (or when there is none).
pub fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    let status = child.as_mut()?.try_wait().ok().flatten()?;
    *child = None;
    Some(status)
}

/// A running `auditrail serve`.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    spool: PathBuf,
    pub config_path: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    log_path: PathBuf,
    /// The environment the server was started with, for restarts.
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

/// What a test's server starts with beyond the harness's defaults: keys
/// for its `[receiver]`, `[admin]` and `[spool]` tables, further tables
/// (`[[receiver.tokens]]`, `[[sinks]]`, ...), and environment variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup<'a> {
    pub receiver: &'a str,
    pub admin: &'a str,
    pub spool: &'a str,
    pub tables: &'a str,
    pub env: &'a [(&'a str, &'a str)],
}

impl Server {
    /// Starts a server in a fresh directory with `setup`.
    pub fn start_setup(setup: Setup) -> Server {
        Server::in_temp_dir(|dir| {
            Server::try_start(dir, &dir.join("spool"), setup).unwrap_or_else(|log| panic!("{log}"))
        })
    }

    /// Starts a server in `dir` with `setup`: the reason and the server's
    /// log if it does not come up.
    pub fn try_start_setup(dir: &Path, setup: Setup) -> Result<Server, String> {
        Server::try_start(dir, &dir.join("spool"), setup)
    }

    /// Starts a server in a fresh directory with the test defaults.
    pub fn start() -> Server {
        Server::start_with("", "")
    }

    /// Starts a server in a fresh directory. `spool_keys` are added to the
    /// `[spool]` table, `extra_tables` after it (e.g. `[query]` with keys).
    pub fn start_with(spool_keys: &str, extra_tables: &str) -> Server {
        Server::in_temp_dir(|dir| Server::start_in(dir, spool_keys, extra_tables))
    }

    /// A server started by `start` in a fresh directory, removed with it.
    fn in_temp_dir(start: impl FnOnce(&Path) -> Server) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut server = start(tmp.path());
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `dir`, reusing the spool there if there is one.
    pub fn start_in(dir: &Path, spool_keys: &str, extra_tables: &str) -> Server {
        Server::start_in_env(dir, spool_keys, extra_tables, &[])
    }

    /// [`Server::start_in`] with extra environment variables for the server.
    pub fn start_in_env(
        dir: &Path,
        spool_keys: &str,
        extra_tables: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let setup = Setup {
            spool: spool_keys,
            tables: extra_tables,
            env,
            ..Setup::default()
        };
        Server::try_start(dir, &dir.join("spool"), setup).unwrap_or_else(|log| panic!("{log}"))
    }

    /// Starts a server in a fresh directory with `admin_keys` added to its
    /// `[admin]` table (the query limits), `extra_tables` after the rest.
    pub fn start_with_admin(admin_keys: &str, extra_tables: &str) -> Server {
        Server::start_setup(Setup {
            admin: admin_keys,
            tables: extra_tables,
            ..Setup::default()
        })
    }

    /// Starts a server in a fresh directory with `receiver_keys` added to
    /// its `[receiver]` table (limits, timeouts).
    pub fn start_with_receiver(receiver_keys: &str) -> Server {
        Server::in_temp_dir(|dir| {
            let setup = Setup {
                receiver: receiver_keys,
                ..Setup::default()
            };
            Server::try_start(dir, &dir.join("spool"), setup).unwrap_or_else(|log| panic!("{log}"))
        })
    }

    /// Starts a server whose config and log are in `dir` and whose spool is
    /// `spool` (e.g. on a cutfs mount, whose contents a cut may drop); the
    /// reason and the server's log if it does not come up.
    pub fn try_start_at(
        dir: &Path,
        spool: &Path,
        spool_keys: &str,
        extra_tables: &str,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let setup = Setup {
            spool: spool_keys,
            tables: extra_tables,
            env,
            ..Setup::default()
        };
        Server::try_start(dir, spool, setup)
    }

    fn try_start(dir: &Path, spool: &Path, setup: Setup) -> Result<Server, String> {
        Server::start_retrying(|first| Server::spawn_on(dir, spool, setup, first))
    }

    /// Starts what `spawn` starts (its argument: whether this is the first
    /// try) and waits until it listens.
    fn start_retrying(mut spawn: impl FnMut(bool) -> Server) -> Result<Server, String> {
        // A port free a moment ago may be taken by another test process
        // by the time the server binds it: then start again on others.
        let mut attempts = 0;
        loop {
            let mut server = spawn(attempts == 0);
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                // (Or two of the free ports were the same one.)
                Err(log)
                    if (log.contains("Address already in use") || log.contains("must differ"))
                        && attempts < 3 =>
                {
                    attempts += 1;
                }
                Err(log) => return Err(log),
            }
        }
    }

    /// Starts a server on a whole config of the test's own (such as a
    /// shipped config file with its addresses made local): `config` gets the
    /// gRPC, HTTP and admin ports to listen on and returns the file's text,
    /// whose spool directory must be `spool`. Tried again on other ports
    /// when one was taken meanwhile.
    pub fn start_config(
        dir: &Path,
        spool: &Path,
        env: &[(&str, &str)],
        config: impl Fn(u16, u16, u16) -> String,
    ) -> Result<Server, String> {
        Server::start_retrying(|_| {
            let ports = (free_port(), free_port(), free_port());
            let text = config(ports.0, ports.1, ports.2);
            Server::spawn_config(dir, spool, &text, ports, env)
        })
    }

    /// Runs `auditrail serve` on `dir` expecting it to refuse to start:
    /// returns its exit status and output once it exits, or panics if it is
    /// still running after `within`.
    pub fn start_expecting_exit(
        dir: &Path,
        spool_keys: &str,
        extra_tables: &str,
        env: &[(&str, &str)],
        within: Duration,
    ) -> (ExitStatus, String) {
        let setup = Setup {
            spool: spool_keys,
            tables: extra_tables,
            env,
            ..Setup::default()
        };
        let mut server = Server::spawn(dir, &dir.join("spool"), setup);
        let mut child = server.child.take().expect("just spawned");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                return (status, server.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "auditrail serve was expected to exit within {within:?} but kept running:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `auditrail serve` on `dir` (spool in `dir/spool`) without
    /// waiting for it to listen: for tests of what happens during start-up.
    pub fn spawn_starting(dir: &Path, spool_keys: &str, extra_tables: &str) -> Server {
        let setup = Setup {
            spool: spool_keys,
            tables: extra_tables,
            ..Setup::default()
        };
        Server::spawn(dir, &dir.join("spool"), setup)
    }

    /// Writes the config and starts the binary without waiting for it.
    fn spawn(dir: &Path, spool: &Path, setup: Setup) -> Server {
        Server::spawn_on(dir, spool, setup, true)
    }

    /// [`Server::spawn`]; with `same_ports`, on the ports of the config a
    /// server in `dir` had before, if there was one: a restart with the
    /// same setup then has the same config, as an operator's restart does
    /// (a changed config is an `auditrail.config.changed` event).
    fn spawn_on(dir: &Path, spool: &Path, setup: Setup, same_ports: bool) -> Server {
        let config_path = dir.join("auditrail.toml");
        let before = same_ports
            .then(|| std::fs::read_to_string(&config_path).ok())
            .flatten();
        let port_of = |key: &str| -> Option<u16> {
            let text = before.as_deref()?;
            let line = text.lines().find(|l| l.starts_with(key))?;
            line.trim_end_matches('"').rsplit(':').next()?.parse().ok()
        };
        let (grpc, http, admin) = match (
            port_of("grpc_addr"),
            port_of("http_addr"),
            port_of("addr = "),
        ) {
            (Some(g), Some(h), Some(a)) => (g, h, a),
            _ => (free_port(), free_port(), free_port()),
        };
        let Setup {
            receiver: receiver_keys,
            admin: admin_keys,
            spool: spool_keys,
            tables: extra_tables,
            env,
        } = setup;
        // The trail's record of each admin request would be one more event
        // in every test that reads the admin API, and a row in every sink
        // test's counts: off, unless a test's `[admin]` keys say otherwise
        // (tests/tests/detection.rs tests it; the product default is on).
        let record_requests = if admin_keys.contains("record_requests") {
            ""
        } else {
            "record_requests = false\n"
        };
        let config = format!(
            "[node]\nid = \"test-node\"\n\n[receiver]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nhttp_addr = \"127.0.0.1:{http}\"\n{receiver_keys}\n\n[admin]\naddr = \"127.0.0.1:{admin}\"\n{record_requests}{admin_keys}\n\n[spool]\ndir = \"{}\"\n{spool_keys}\n\n{extra_tables}\n",
            spool.display()
        );
        Server::spawn_config(dir, spool, &config, (grpc, http, admin), env)
    }

    /// Writes `config` to `dir/auditrail.toml` and starts the binary on it
    /// without waiting; `ports` are the gRPC, HTTP and admin ports it names.
    fn spawn_config(
        dir: &Path,
        spool: &Path,
        config: &str,
        (grpc, http, admin): (u16, u16, u16),
        env: &[(&str, &str)],
    ) -> Server {
        let config_path = dir.join("auditrail.toml");
        std::fs::write(&config_path, config).expect("writing config");
        let log_path = dir.join(format!("serve-{admin}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting auditrail serve");
        Server {
            child: Some(child),
            dir: dir.to_owned(),
            spool: spool.to_owned(),
            config_path,
            grpc: ([127, 0, 0, 1], grpc).into(),
            http: ([127, 0, 0, 1], http).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            log_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: None,
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.spool.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the server listens; the reason and its log if it does not.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = exited(&mut self.child) {
                return Err(format!(
                    "auditrail exited early ({status}):\n{}",
                    self.log()
                ));
            }
            if std::net::TcpStream::connect(self.admin).is_ok()
                && std::net::TcpStream::connect(self.grpc).is_ok()
                && std::net::TcpStream::connect(self.http).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "auditrail did not start within 30s:\n{}",
            self.log()
        ))
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http_logs_url(&self) -> String {
        format!("http://{}/v1/logs", self.http)
    }

    /// `GET /v1/events?{query}`: the events, as JSON objects. An answer
    /// in seq order that the server's scan budget ended early (`complete:
    /// false`) is continued from its `next_after_seq`, as a client would.
    pub async fn events(&self, query: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut url = format!("{}/v1/events?{query}", self.admin_url());
        loop {
            let page: Value = reqwest::get(&url)
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .json()
                .await
                .expect("events page is JSON");
            events.extend(
                page["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_else(|| panic!("no events in {page}")),
            );
            if page["complete"] != false {
                return events;
            }
            assert!(
                page["stopped_by"] != "error" && !query.contains("after_seq"),
                "GET {url} stopped early: {}",
                page["error"]
            );
            url = format!(
                "{}/v1/events?{query}&after_seq={}",
                self.admin_url(),
                page["next_after_seq"]
            );
        }
    }

    /// `GET /v1/dead-letters[?sink=…]`: the `dead_letters` array.
    pub async fn dead_letters(&self, sink: Option<&str>) -> Value {
        let mut url = format!("{}/v1/dead-letters", self.admin_url());
        if let Some(sink) = sink {
            url.push_str(&format!("?sink={sink}"));
        }
        let page: Value = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .expect("dead letters are JSON");
        page["dead_letters"].clone()
    }

    /// `GET {path}` on the admin API with `token` as the bearer token, if
    /// any: the status code and the body (JSON, or a string when it is not).
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.admin_call(reqwest::Method::GET, path, token).await
    }

    /// `{method} {path}` on the admin API with `token`, if any: the status
    /// code and the body (JSON, or a string when it is not).
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.admin_url());
        let mut request = reqwest::Client::new().request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("admin answer");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// `GET /v1/events?{query}` with `token`: the events, as JSON objects.
    pub async fn events_as(&self, token: &str, query: &str) -> Vec<Value> {
        let (status, page) = self
            .admin_get(&format!("/v1/events?{query}"), Some(token))
            .await;
        assert_eq!(status, 200, "GET /v1/events?{query}: {page}");
        page["events"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no events in {page}"))
    }

    /// SIGHUP: the server reloads its tokens, keys and certificates.
    pub fn sighup(&self) {
        let pid = self.pid().expect("server is running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
    }

    /// `GET /readyz`: the status code and the JSON body.
    pub async fn readyz(&self) -> (u16, Value) {
        let response = reqwest::get(format!("{}/readyz", self.admin_url()))
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        (status, response.json().await.expect("readyz is JSON"))
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// One sample's value from `/metrics`, e.g. `auditrail_stored_events_total`
    /// or `auditrail_rejected_events_total{reason="invalid_trace_id"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|line| {
                line.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaping");
        }
    }

    /// Starts the server again after [`Server::terminate`] or
    /// [`Server::kill9`]: the same config, so the same ports and spool.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting auditrail serve");
        self.child = Some(child);
        if let Err(log) = self.wait_ready() {
            panic!("auditrail did not start again:\n{log}");
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 40s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `body` (gRPC frames, see [`grpc_frame`]) to
/// LogsService/Export at `grpc_url` as it is, with `grpc-encoding` when given, and
/// returns the status the server answers.
pub async fn grpc_export_raw(
    grpc_url: &str,
    encoding: Option<&str>,
    body: tonic::body::Body,
) -> tonic::Status {
    use tower::{Service, ServiceExt};
    let mut channel = tonic::transport::Endpoint::from_shared(grpc_url.to_owned())
        .expect("gRPC URL")
        .connect()
        .await
        .expect("connecting");
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            grpc_url
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        req = req.header("grpc-encoding", e);
    }
    let req = req.body(body).expect("request");
    let resp = channel
        .ready()
        .await
        .expect("channel ready")
        .call(req)
        .await
        .expect("a response");
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        return status;
    }
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    tonic::Status::from_header_map(&trailers).expect("a grpc-status")
}

/// One gRPC length-prefixed message: the compressed flag, the length, the bytes.
pub fn grpc_frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![u8::from(compressed)];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Runs `auditrail ARGS` to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running auditrail")
}

/// The Python of the venv with the OTel SDK and the OCSF schema:
/// `$AUDITRAIL_PYTHON`, else `target/pyvenv` (both made by
/// `scripts/python-venv`, which `scripts/test` runs); panics, saying so,
/// when it is missing.
pub fn python_venv() -> PathBuf {
    let path = std::env::var_os("AUDITRAIL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python")
        });
    assert!(
        path.exists(),
        "no Python venv at {}: run scripts/python-venv (scripts/test does) or set AUDITRAIL_PYTHON",
        path.display()
    );
    path
}

/// Waits until `check` returns true, or panics with `what`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(Duration::from_secs(20), what, check).await
}

/// [`eventually`] with a deadline of `within`.
pub async fn eventually_within<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// OTLP log requests built by hand, for tests that need exact control over
/// uids, trace ids and sizes (the SDK tests cover what real clients send).
pub mod otlp {
    use std::time::{SystemTime, UNIX_EPOCH};

    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    pub fn string(value: impl Into<String>) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }
    }

    pub fn int(value: i64) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }
    }

    pub fn array(values: Vec<AnyValue>) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
        }
    }

    pub fn attr(key: &str, value: AnyValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(value),
            key_strindex: 0,
        }
    }

    /// A distinct, valid (non-zero) trace id for each `n`, and its hex.
    pub fn trace_id(n: u64) -> ([u8; 16], String) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&0x5eed_0000_0000_0001u64.to_be_bytes());
        id[8..].copy_from_slice(&(n + 1).to_be_bytes());
        (id, hex::encode(id))
    }

    pub fn now_unix_nano() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    }

    /// A record with `log.record.uid` = `uid` (so its event_id is `uid`),
    /// the given trace context, body and further attributes, timed now.
    pub fn record(
        uid: &str,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        body: &str,
        mut attributes: Vec<KeyValue>,
    ) -> LogRecord {
        attributes.push(attr("log.record.uid", string(uid)));
        LogRecord {
            time_unix_nano: now_unix_nano(),
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(string(body)),
            attributes,
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            flags: 1,
            ..Default::default()
        }
    }

    /// One request holding `records`, from service `service_name`.
    pub fn request(service_name: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![attr("service.name", string(service_name))],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}
