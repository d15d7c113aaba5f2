//! MariaDB / MySQL for the sink tests.
//!
//! - [`Database`]: a fresh database of its own on the shared server
//!   (`127.0.0.1:3306`, root without a password, or `AUDITRAIL_TEST_MYSQL`),
//!   dropped again when the test ends. Tests run in parallel, one process
//!   each, so every test works in its own database and never touches the
//!   server itself.
//! - [`PrivateMariaDb`]: a MariaDB server of the test's own, on a temporary
//!   data dir and a free port, that the test may stop, hang (SIGSTOP) and
//!   restart.
//! - [`SinkToml`]: the `[[sinks]]` table of a mysql sink (or, with
//!   [`SinkToml::of_type`], of another type: see `crate::clickhouse::sink`).
//!
//! A test fails loudly when the shared server is unreachable: skipping would
//! let a broken setup pass as green.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Connection, Executor, MySqlPool, Row};

use crate::free_port;

/// The shared server: `AUDITRAIL_TEST_MYSQL`, else root without a password
/// on 127.0.0.1:3306 (the development machine's MariaDB).
pub fn shared_server_url() -> String {
    std::env::var("AUDITRAIL_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A database name no other test process uses: `auditrail_t_<pid>_<n>`.
pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "auditrail_t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect_server(server_url: &str) -> Result<MySqlPool, sqlx::Error> {
    let options: MySqlConnectOptions = server_url.parse()?;
    // One plain connection first: it fails with the cause (refused, access
    // denied), where the pool would retry and say only that it timed out.
    options.connect().await?.close().await?;
    MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.disable_statement_logging())
        .await
}

/// A database of the test's own, dropped when this is dropped.
pub struct Database {
    name: String,
    server_url: String,
    pool: MySqlPool,
    /// Users made with [`Database::create_user`], dropped with it.
    users: std::sync::Mutex<Vec<String>>,
}

impl Database {
    /// A fresh database on the shared server. Panics, saying how to start
    /// it, when the server is unreachable.
    pub async fn create() -> Database {
        let server = shared_server_url();
        let admin =
            match tokio::time::timeout(Duration::from_secs(15), connect_server(&server)).await {
                Ok(Ok(pool)) => pool,
                Ok(Err(e)) => panic!("{}", unreachable(&server, &e.to_string())),
                Err(_) => panic!("{}", unreachable(&server, "no answer within 15s")),
            };
        drop_stale_databases(&admin).await;
        Database::create_with(&admin, &server).await
    }

    /// A fresh database on another server (a [`PrivateMariaDb`]).
    pub async fn create_on(server_url: &str) -> Database {
        let admin = connect_server(server_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {server_url}: {e}"));
        Database::create_with(&admin, server_url).await
    }

    async fn create_with(admin: &MySqlPool, server_url: &str) -> Database {
        let name = unique_name();
        admin
            .execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
            .await
            .expect("dropping a leftover test database");
        admin
            .execute(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4").as_str())
            .await
            .expect("creating the test database");
        admin.close().await;
        let url = format!("{server_url}/{name}");
        let pool = connect_server(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Database {
            name,
            server_url: server_url.to_owned(),
            pool,
            users: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `mysql://root@host:port/<name>`, for the sink's `url`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server_url, self.name)
    }

    /// Creates a user `auditrail_t_<pid>_<n>` (at 127.0.0.1 and localhost)
    /// with `password` and every privilege on this database; returns its
    /// name. It is dropped with the database.
    pub async fn create_user(&self, password: &str) -> String {
        let user = unique_name();
        self.users.lock().unwrap().push(user.clone());
        for host in USER_HOSTS {
            self.execute(&format!(
                "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'"
            ))
            .await;
            self.execute(&format!(
                "GRANT ALL ON `{}`.* TO '{user}'@'{host}'",
                self.name
            ))
            .await;
        }
        user
    }

    /// The URL of this database for another user (no password in it).
    pub fn url_as(&self, user: &str) -> String {
        let options: MySqlConnectOptions = self.server_url.parse().expect("server url");
        format!(
            "mysql://{user}@{}:{}/{}",
            options.get_host(),
            options.get_port(),
            self.name
        )
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    pub async fn execute(&self, sql: &str) {
        self.pool
            .execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The one value of a one-row, one-column query.
    pub async fn scalar<T>(&self, sql: &str) -> T
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, MySqlRow>,
    {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn rows(&self, sql: &str) -> Vec<MySqlRow> {
        sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `COUNT(*)` of `table`, or `None` while it does not exist.
    pub async fn try_count(&self, table: &str) -> Option<i64> {
        match sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{table}`"))
            .fetch_one(&self.pool)
            .await
        {
            Ok(n) => Some(n),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => None,
            Err(e) => panic!("counting {table}: {e}"),
        }
    }

    /// The rows of the canonical `table` that hold events a test sent: not
    /// the ones auditrail wrote about itself (ids `auditrail-…`:
    /// tombstones, config changes). `None` while the table does not exist.
    pub async fn try_count_sent(&self, table: &str) -> Option<i64> {
        let sql = format!("SELECT COUNT(*) FROM `{table}` WHERE event_id NOT LIKE 'auditrail-%'");
        match sqlx::query_scalar(&sql).fetch_one(&self.pool).await {
            Ok(n) => Some(n),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => None,
            // A legacy table without an event_id column: every row.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S22") => {
                self.try_count(table).await
            }
            Err(e) => panic!("counting {table}: {e}"),
        }
    }

    /// `COUNT(*)` of `table`.
    pub async fn count(&self, table: &str) -> i64 {
        self.try_count(table)
            .await
            .unwrap_or_else(|| panic!("table {table} does not exist"))
    }

    /// `SHOW CREATE TABLE`, to prove a table was left alone.
    /// `(event_id, trace_id, seq)` of every row of `table`, in seq order.
    pub async fn stored_rows(&self, table: &str) -> Vec<crate::sinks::StoredRow> {
        self.rows(&format!(
            "SELECT event_id, trace_id, seq FROM `{table}` ORDER BY seq"
        ))
        .await
        .iter()
        .map(|row| crate::sinks::StoredRow {
            event_id: text(row, "event_id").expect("event_id"),
            trace_id: text(row, "trace_id").expect("trace_id"),
            seq: row.get::<u64, _>("seq"),
        })
        .collect()
    }

    pub async fn show_create(&self, table: &str) -> String {
        let row = sqlx::query(&format!("SHOW CREATE TABLE `{table}`"))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("SHOW CREATE TABLE {table}: {e}"));
        text(&row, 1).expect("a CREATE TABLE statement")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort and bounded: the test's runtime may be gone or busy,
        // so this runs on a thread of its own with a runtime of its own.
        let server = self.server_url.clone();
        let name = self.name.clone();
        let users = std::mem::take(&mut *self.users.lock().unwrap());
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let work = async {
                    let options: MySqlConnectOptions = server.parse().ok()?;
                    let mut conn = options.connect().await.ok()?;
                    conn.execute("SET SESSION lock_wait_timeout = 10")
                        .await
                        .ok()?;
                    for user in users {
                        for host in USER_HOSTS {
                            let _ = conn
                                .execute(format!("DROP USER IF EXISTS '{user}'@'{host}'").as_str())
                                .await;
                        }
                    }
                    conn.execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
                        .await
                        .ok()?;
                    conn.close().await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(15), work).await;
            });
        });
        let _ = dropper.join();
    }
}

/// Where test users may connect from (TCP to 127.0.0.1 may resolve to
/// either, depending on the server's name resolution).
const USER_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// Drops test databases and users whose test process is gone (a test
/// killed before its `Database` was dropped), so they do not pile up.
async fn drop_stale_databases(admin: &MySqlPool) {
    let names: Vec<Vec<u8>> =
        match sqlx::query_scalar("SELECT CAST(SCHEMA_NAME AS BINARY) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'auditrail\\_t\\_%'")
            .fetch_all(admin)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    let users: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT CAST(User AS BINARY), CAST(Host AS BINARY) FROM mysql.user WHERE User LIKE 'auditrail\\_t\\_%'",
    )
    .fetch_all(admin)
    .await
    .unwrap_or_default();
    let stale = |name: &str| {
        name.strip_prefix("auditrail_t_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for (user, host) in users {
        let (Ok(user), Ok(host)) = (String::from_utf8(user), String::from_utf8(host)) else {
            continue;
        };
        if stale(&user) {
            let _ = admin
                .execute(format!("DROP USER IF EXISTS '{user}'@'{host}'").as_str())
                .await;
        }
    }
    for name in names {
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        if stale(&name) {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
                .await;
        }
    }
}

fn unreachable(server: &str, error: &str) -> String {
    format!(
        "MariaDB/MySQL is not reachable at {server} ({error}). The MySQL sink tests run against a real \
         server: root without a password on 127.0.0.1:3306 (or set AUDITRAIL_TEST_MYSQL). \
         scripts/test starts it; by hand: `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`"
    )
}

/// A text column by name or index, whatever its collation (sqlx refuses
/// `String` for `_bin` collations, which the protocol flags as binary).
pub fn text<I: sqlx::ColumnIndex<MySqlRow>>(row: &MySqlRow, column: I) -> Option<String> {
    row.try_get_unchecked::<Option<String>, _>(column)
        .expect("a text column")
}

/// A MariaDB server of the test's own, on a temporary data dir and a free
/// port, to stop, hang and restart. Killed when dropped.
pub struct PrivateMariaDb {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrivateMariaDb {
    /// Installs a data dir and starts the server on it.
    pub async fn start() -> PrivateMariaDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let install = tokio::task::spawn_blocking(move || {
            Command::new(mariadb_tool("mariadb-install-db"))
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--auth-root-authentication-method=normal",
                    "--user=root",
                    "--skip-test-db",
                ])
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("install task")
        .unwrap_or_else(|e| {
            panic!(
                "running mariadb-install-db (is MariaDB installed? scripts/test installs it): {e}"
            )
        });
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let mut server = PrivateMariaDb {
            dir,
            port: free_port(),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:<port>`, without a database.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }

    /// Starts the server (again) on the same data dir and port, and waits
    /// until it answers queries.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the private MariaDB is still running");
        let dir = self.dir.path();
        let child = Command::new(mariadb_tool("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting mariadbd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.server_url();
        loop {
            if let Some(status) = crate::exited(&mut self.child) {
                panic!(
                    "the private mariadbd exited at start ({status}):\n{}",
                    self.error_log()
                );
            }
            if let Ok(options) = url.parse::<MySqlConnectOptions>() {
                if let Ok(Ok(conn)) =
                    tokio::time::timeout(Duration::from_secs(2), options.connect()).await
                {
                    let _ = conn.close().await;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the private mariadbd did not answer within 60s:\n{}",
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, and waits until the server has shut down.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("the private MariaDB is running");
        signal(&child, libc::SIGCONT);
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().expect("waiting for mariadbd").is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the private mariadbd did not stop within 60s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the server keeps its connections open but answers nothing.
    pub fn hang(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGSTOP);
    }

    /// SIGCONT after [`PrivateMariaDb::hang`].
    pub fn resume(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGCONT);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// MariaDB's programs live in /usr/sbin and /usr/bin, which a test's PATH
/// may lack.
fn mariadb_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The `[[sinks]]` table of a mysql sink.
///
/// ```
/// # use auditrail_tests::mysql::SinkToml;
/// let toml = SinkToml::new("warehouse", "mysql://root@127.0.0.1:3306/audit")
///     .set("table", "\"audit_events\"")
///     .delivery("max_events", "200")
///     .to_string();
/// assert!(toml.contains("[sinks.delivery]\nmax_events = 200\n"));
/// ```
#[derive(Debug, Clone)]
pub struct SinkToml {
    kind: &'static str,
    name: String,
    keys: Vec<(String, String)>,
    tables: Vec<(&'static str, Vec<(String, String)>)>,
}

impl SinkToml {
    pub fn new(name: &str, url: &str) -> SinkToml {
        SinkToml::of_type("mysql", name, url)
    }

    /// A sink of type `kind` (`type = "<kind>"`).
    pub fn of_type(kind: &'static str, name: &str, url: &str) -> SinkToml {
        SinkToml {
            kind,
            name: name.to_owned(),
            keys: vec![("url".into(), toml_string(url))],
            tables: Vec::new(),
        }
    }

    /// A key of the sink table; `value` is TOML (`"\"text\""`, `4`).
    pub fn set(mut self, key: &str, value: &str) -> SinkToml {
        self.keys.push((key.into(), value.into()));
        self
    }

    fn sub(mut self, table: &'static str, key: &str, value: &str) -> SinkToml {
        let entry = match self.tables.iter().position(|(t, _)| *t == table) {
            Some(i) => &mut self.tables[i].1,
            None => {
                self.tables.push((table, Vec::new()));
                &mut self.tables.last_mut().expect("just pushed").1
            }
        };
        entry.push((key.into(), value.into()));
        self
    }

    /// A `[sinks.delivery]` key; `value` is TOML.
    pub fn delivery(self, key: &str, value: &str) -> SinkToml {
        self.sub("delivery", key, value)
    }

    /// A `[sinks.partitions]` key; `value` is TOML.
    pub fn partitions(self, key: &str, value: &str) -> SinkToml {
        self.sub("partitions", key, value)
    }

    /// `[sinks.columns] column = "source"`.
    pub fn column(self, column: &str, source: &str) -> SinkToml {
        self.sub("columns", &toml_string(column), &toml_string(source))
    }
}

impl fmt::Display for SinkToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[sinks]]")?;
        writeln!(f, "name = {}", toml_string(&self.name))?;
        writeln!(f, "type = {}", toml_string(self.kind))?;
        for (key, value) in &self.keys {
            writeln!(f, "{key} = {value}")?;
        }
        for (table, keys) in &self.tables {
            writeln!(f, "\n[sinks.{table}]")?;
            for (key, value) in keys {
                writeln!(f, "{key} = {value}")?;
            }
        }
        Ok(())
    }
}

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
