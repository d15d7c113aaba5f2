//! ClickHouse for the sink tests, two real engines and no mocks:
//!
//! - [`legacy_url`]: Debian's packaged clickhouse-server 18.16, started (and
//!   installed when missing) by `scripts/clickhouse-server` on
//!   127.0.0.1:18123, once per test process; shared by every test.
//! - [`Chdb`]: ClickHouse 26.x as chdb behind `tests/python/chdb_http.py`
//!   (ClickHouse's HTTP interface in front of the in-process engine), one
//!   per test on a free port with a temporary data directory, which a test
//!   may `kill -9` and start again on the same data and port.
//! - [`Database`]: a database of the test's own on either, dropped again when
//!   the test ends (and, on the shared server, when a later test finds its
//!   test process gone).
//! - [`sink`]: the `[[sinks]]` table of a clickhouse sink.
//!
//! A test that cannot start an engine fails with the reason; none is
//! skipped, so a broken setup never passes as green.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mysql::{toml_string, SinkToml};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

/// Runs a repo script and returns the last line of its stdout; panics with
/// its output when it fails.
fn run_script(script: &str) -> String {
    run_script_with(script, &[])
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{script} printed nothing"))
        .trim()
        .to_owned()
}

/// Runs a repo script with `args` and returns its whole stdout; panics with
/// its output when it fails.
pub(crate) fn run_script_with(script: &str, args: &[&str]) -> String {
    let output = Command::new(repo_root().join(script))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "{script} failed ({}), so the test cannot run:\n{}\n{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout.into_owned()
}

/// The 18.16 server's URL (`http://127.0.0.1:18123`), started once per
/// test process by `scripts/clickhouse-server` (which does nothing when it
/// already answers).
pub fn legacy_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| run_script("scripts/clickhouse-server"))
}

/// The venv python with chdb (`scripts/python-venv`).
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| run_script("scripts/python-venv"))
}

/// A modern engine: chdb behind `tests/python/chdb_http.py`, on a free port
/// and a temporary data directory. Killed when dropped.
pub struct Chdb {
    child: Option<Child>,
    port: u16,
    data: tempfile::TempDir,
    /// One log per start, so a restart does not hide why the last one died.
    starts: u32,
}

impl Chdb {
    /// Starts a fresh engine; panics with its log when it does not come up.
    pub fn start() -> Chdb {
        let mut chdb = Chdb {
            child: None,
            port: crate::free_port(),
            data: tempfile::tempdir().expect("a temporary directory"),
            starts: 0,
        };
        chdb.restart();
        chdb
    }

    /// `http://127.0.0.1:<port>`; the same across restarts.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.data
            .path()
            .join(format!("chdb_http-{}.log", self.starts))
    }

    /// The log (stderr) of the current or last start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Starts the front (again) on the same data directory and port, and
    /// waits until it says `ready` (chdb loads in a few seconds; up to two
    /// minutes on a loaded machine).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "chdb_http.py is still running");
        self.starts += 1;
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/python/chdb_http.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--data")
            .arg(self.data.path().join("db"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tests/python/chdb_http.py: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(_) => continue,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "chdb_http.py did not become ready on port {} ({e}); the modern ClickHouse engine is needed \
                         (scripts/python-venv installs chdb):\n{}",
                        self.port,
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL: the engine goes away mid-whatever, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A database name no other test uses: `auditrail_t_<pid>_<n>`.
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "auditrail_t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A ClickHouse error answer: the HTTP status and the body.
#[derive(Debug, Clone)]
pub struct QueryError {
    pub status: Option<u16>,
    pub text: String,
}

impl QueryError {
    /// Whether the server named exception `code` (`Code: 60.` ...).
    pub fn is_code(&self, code: u32) -> bool {
        self.text.contains(&format!("Code: {code}."))
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "HTTP {status}: {}", self.text.trim()),
            None => write!(f, "{}", self.text),
        }
    }
}

/// Runs `sql` over HTTP (outside the sink), with a 60 s deadline.
pub async fn try_query(url: &str, sql: &str) -> Result<String, QueryError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            // Under 18.16's keep_alive_timeout (3 s).
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client")
    });
    let response = client
        .post(url)
        .body(sql.to_owned())
        .send()
        .await
        .map_err(|e| QueryError {
            status: None,
            text: e.to_string(),
        })?;
    let status = response.status();
    let text = response.text().await.map_err(|e| QueryError {
        status: Some(status.as_u16()),
        text: e.to_string(),
    })?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(QueryError {
            status: Some(status.as_u16()),
            text,
        })
    }
}

/// Runs `sql` over HTTP (outside the sink); panics on an error.
pub async fn query(url: &str, sql: &str) -> String {
    try_query(url, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows of a query, as JSON objects.
pub async fn select(url: &str, sql: &str) -> Vec<Value> {
    query(url, &format!("{sql} FORMAT JSONEachRow"))
        .await
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON row"))
        .collect()
}

/// The one number a query returns (`SELECT count() ...`).
pub async fn count(url: &str, sql: &str) -> u64 {
    let text = query(url, sql).await;
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {text:?} is not a count ({e})"))
}

/// A UInt64 from JSON output (quoted by default) or a number.
pub fn num(value: &Value) -> u64 {
    match value {
        Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} is not a number: {e}")),
        other => other
            .as_u64()
            .unwrap_or_else(|| panic!("{other} is not a number")),
    }
}

/// A database of the test's own on a ClickHouse server, dropped (best
/// effort) when this is dropped.
pub struct Database {
    url: String,
    name: String,
}

impl Database {
    /// `CREATE DATABASE` of a fresh name on the server at `url`. On the
    /// shared 18.16 server, first drops the test databases whose test
    /// process is gone.
    pub async fn create(url: &str) -> Database {
        if url == legacy_url() {
            static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
            CLEANED.get_or_init(|| drop_stale_databases(url)).await;
        }
        Database::create_named(url, &unique_name()).await
    }

    /// `CREATE DATABASE name` on the server at `url` (the same name on each
    /// replica of a cluster, see `cluster.rs`).
    pub async fn create_named(url: &str, name: &str) -> Database {
        query(url, &format!("CREATE DATABASE {name}")).await;
        Database {
            url: url.to_owned(),
            name: name.to_owned(),
        }
    }

    /// On the 18.16 server.
    pub async fn legacy() -> Database {
        Database::create(legacy_url()).await
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `name.table`.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    /// `count()` of `table` (with ` FINAL` etc. in `modifiers`), or `None`
    /// while the table does not exist (or the server is unreachable).
    pub async fn try_count(&self, table: &str, modifiers: &str) -> Option<u64> {
        let sql = format!("SELECT count() FROM {} {modifiers}", self.table(table));
        match try_query(&self.url, &sql).await {
            Ok(text) => Some(
                text.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{sql}: {text:?} ({e})")),
            ),
            Err(e) if e.is_code(60) || e.status.is_none() => None,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// `(event_id, trace_id, seq)` of every row of `table` with `modifiers`
    /// (`FINAL`: as ReplacingMergeTree collapses them), in seq order.
    pub async fn stored_rows(&self, table: &str, modifiers: &str) -> Vec<crate::sinks::StoredRow> {
        let sql = format!(
            "SELECT event_id, trace_id, seq FROM {} {modifiers} ORDER BY seq",
            self.table(table)
        );
        select(&self.url, &sql)
            .await
            .iter()
            .map(|row| crate::sinks::StoredRow {
                event_id: row["event_id"].as_str().expect("event_id").to_owned(),
                trace_id: row["trace_id"].as_str().expect("trace_id").to_owned(),
                seq: num(&row["seq"]),
            })
            .collect()
    }

    /// `count()` of `table` with `modifiers` (e.g. `FINAL`); panics when
    /// the table does not exist.
    pub async fn count(&self, table: &str, modifiers: &str) -> u64 {
        count(
            &self.url,
            &format!("SELECT count() FROM {} {modifiers}", self.table(table)),
        )
        .await
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort and bounded: on a runtime of its own, since the
        // test's may be gone or busy.
        let url = self.url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(15), try_query(&url, &sql)).await;
            });
        });
        let _ = dropper.join();
    }
}

/// Drops `auditrail_t_<pid>_*` databases whose test process is gone (a test
/// that panicked in a way that skipped its drop, or was killed).
pub(crate) async fn drop_stale_databases(url: &str) {
    let Ok(names) = try_query(
        url,
        "SELECT name FROM system.databases WHERE name LIKE 'auditrail\\\\_t\\\\_%'",
    )
    .await
    else {
        return;
    };
    for name in names.lines().map(str::trim) {
        let gone = name
            .strip_prefix("auditrail_t_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = try_query(url, &format!("DROP DATABASE IF EXISTS {name}")).await;
        }
    }
}

/// The `[[sinks]]` table of a clickhouse sink writing into `database`.
///
/// ```
/// let toml = auditrail_tests::clickhouse::sink("analytics", "http://127.0.0.1:8123", "audit")
///     .set("schema", "\"otel\"")
///     .delivery("max_events", "200")
///     .to_string();
/// assert!(toml.contains("type = \"clickhouse\"\n"));
/// assert!(toml.contains("database = \"audit\"\nschema = \"otel\"\n"));
/// ```
pub fn sink(name: &str, url: &str, database: &str) -> SinkToml {
    SinkToml::of_type("clickhouse", name, url).set("database", &toml_string(database))
}
