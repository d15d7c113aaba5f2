//! The ClickHouse sink, over HTTP: the interface every ClickHouse
//! deployment exposes (a single server, a cluster behind a load balancer,
//! ClickHouse Cloud, chproxy), with no native-protocol client to keep in
//! step with the server.
//!
//! Each batch is one `INSERT ... FORMAT RowBinary` POST, gzip-compressed
//! by default (`rows.rs`). Writes are idempotent two ways:
//!
//! * the insert carries an `insert_deduplication_token` naming the exact
//!   set of events in the batch (`{node}:{first}-{last}:{count}:{hash}`), so
//!   a retried batch is dropped by the server as a whole. Non-replicated
//!   tables honour tokens only with `non_replicated_deduplication_window`,
//!   which the tables auditrail creates set;
//! * the `auditrail` table is a ReplacingMergeTree whose sorting key ends
//!   in `(node, seq)`, so a row sent twice (a retry after the token window
//!   has passed, or on an old server with no tokens) collapses when parts
//!   merge; `SELECT ... FINAL` shows the collapsed view before then.
//!
//! Errors are read from the response (the exception code, from the
//! `X-ClickHouse-Exception-Code` header or the body) and classified in
//! `errors.rs`: retried, fatal setup problems, or data to dead-letter.
//!
//! # Schemas
//!
//! `schema = "auditrail"` (default): the canonical columns, named as in the
//! design note. `schema = "otel"`: the OpenTelemetry Collector contrib
//! ClickHouse exporter's `otel_logs` table, so Grafana's ClickHouse plugin
//! and dashboards built for it work unchanged; `Timestamp` = `time`, `Body`
//! = `body`, `LogAttributes` = `attributes`, `ResourceAttributes` =
//! `resource_attributes`, `ServiceName`, `SeverityText`, `SeverityNumber`,
//! `TraceId`, `SpanId`, `TraceFlags`, `ScopeName`, `EventName` from their
//! canonical fields. That table has no place for node and seq, so
//! `LogAttributes` also gets `auditrail.node`, `auditrail.seq`,
//! `auditrail.event_id` and `auditrail.tenant`; its engine is a plain
//! MergeTree, so there the tokens alone keep retries from doubling rows.
//! Tables made by older Collector versions (fewer columns, wider ints) are
//! accepted; the columns they lack are not written.
//!
//! # Servers before 22.3: the legacy mapping
//!
//! `SELECT version()` decides. Debian still packages ClickHouse 18.16
//! (2018), which has no DateTime64, Map, TTL, skip indexes or deduplication
//! tokens (it rejects unknown settings with code 115). Against a server
//! older than 22.3 the `auditrail` table is created with:
//!
//! | column | 22.3 and later | before 22.3 |
//! |---|---|---|
//! | `time` | `DateTime64(9, 'UTC')` | `DateTime('UTC')`: whole seconds; the exact time stays in `time_unix_nano` |
//! | `attributes`, `resource_attributes` | `Map(LowCardinality(String), String)`: string values as they are, others as their JSON text | `String`: the canonical JSON object |
//! | `node`, `tenant`, `service_name`, `event_name`, `severity_text`, `outcome`, `scope_name` | `LowCardinality(String)` | `String` |
//! | skip indexes | bloom filters on `trace_id` and `actor_id` | none |
//! | `TTL` | from `ttl`, when set | none (`ttl` is ignored with a warning) |
//! | retries | deduplication token, and ReplacingMergeTree | ReplacingMergeTree only: a re-sent row exists twice until a merge, so count with `FINAL` (or after `OPTIMIZE TABLE ... FINAL`) |
//!
//! Both mappings are accepted for an existing table, column by column, so a
//! table created on an old server keeps working after an upgrade. The
//! `otel` schema needs 22.3 or later.
//!
//! # What auditrail does not do
//!
//! It creates the table when it is absent (`create_table`), never the
//! database, and never alters an existing table: a table with another
//! shape is reported at start-up, with what differs.

mod errors;
mod read;
mod rows;
mod schema;

use std::io::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;

use crate::{
    node_of_origin, BySeq, ErrorClass, ExportError, Exporter, HeldSeq, ReadBack, SignedCheckpoint,
    SinkContext, Walk,
};
use rows::Plan;
use schema::{Column, TableInfo, Version};

/// `type = "clickhouse"`.
///
/// ```toml
/// [[sinks]]
/// name = "analytics"
/// type = "clickhouse"
/// url = "http://127.0.0.1:8123"
/// database = "audit"
/// table = "audit_events"
/// user = "auditrail"
/// password_env = "CLICKHOUSE_PASSWORD"
/// ttl = "400d"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickhouseConfig {
    /// The HTTP interface: `http://host:8123`, or `https://host:8443`.
    pub url: String,
    /// Must exist: auditrail creates tables, not databases.
    #[serde(default = "default_database")]
    pub database: String,
    /// For `schema = "otel"` set it to the Collector's table, usually
    /// `otel_logs`.
    #[serde(default = "default_table")]
    pub table: String,
    #[serde(default)]
    pub schema: Schema,
    /// Sent as `X-ClickHouse-User`; the server's `default` user when unset.
    pub user: Option<String>,
    /// An environment variable holding the password, sent as
    /// `X-ClickHouse-Key`.
    pub password_env: Option<String>,
    /// Of request bodies.
    #[serde(default)]
    pub compression: Compression,
    /// Create the table when it does not exist; when false a missing table
    /// is a start-up error.
    #[serde(default = "default_true")]
    pub create_table: bool,
    /// A `TTL` for the table auditrail creates (`"400d"`), counted from when
    /// auditrail received each event (`received_time_unix_nano`), as the
    /// spool's retention is. None by default, whatever the spool's
    /// retention: a warehouse usually keeps events longer than the local
    /// spool. Not applied to an existing table, nor on servers before 22.3;
    /// refused with `schema = "otel"`, whose table has no receive time.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Where signed checkpoints go (`schema = "auditrail"` only; created
    /// when absent, with the events table).
    #[serde(default = "default_checkpoint_table")]
    pub checkpoint_table: String,
}

fn default_checkpoint_table() -> String {
    "audit_checkpoints".into()
}

fn default_database() -> String {
    "default".into()
}

fn default_table() -> String {
    "audit_events".into()
}

fn default_true() -> bool {
    true
}

/// The shape of the table (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    /// The canonical columns.
    #[default]
    Auditrail,
    /// The OpenTelemetry Collector's `otel_logs` table.
    Otel,
}

impl Schema {
    fn as_str(self) -> &'static str {
        match self {
            Schema::Auditrail => "auditrail",
            Schema::Otel => "otel",
        }
    }
}

/// Of request bodies (`Content-Encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Every ClickHouse version reads it (zstd needs a newer server).
    #[default]
    Gzip,
    None,
}

/// `identifier` quoted for ClickHouse SQL.
fn quote_ident(identifier: &str) -> String {
    format!("`{}`", identifier.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `text` as a ClickHouse string literal.
fn quote_str(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What `prepare` found out, which every insert uses.
#[derive(Debug)]
struct Prepared {
    /// `INSERT INTO db.table (columns) FORMAT RowBinary`.
    insert_sql: String,
    plan: Plan,
    /// URL settings sent with every insert.
    settings: Vec<(&'static str, &'static str)>,
    /// Whether the server knows `insert_deduplication_token`.
    tokens: bool,
}

/// Writes batches into one ClickHouse table over HTTP.
pub struct ClickhouseSink {
    client: reqwest::Client,
    url: Url,
    user: Option<String>,
    password: Option<String>,
    database: String,
    table: String,
    schema: Schema,
    compression: Compression,
    create_table: bool,
    ttl_seconds: Option<u64>,
    checkpoint_table: String,
    prepared: RwLock<Option<Arc<Prepared>>>,
}

impl ClickhouseSink {
    pub fn new(config: &ClickhouseConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let url = Url::parse(&config.url).map_err(|e| misconfigured(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(misconfigured(format!(
                "url: {} is not an http:// or https:// URL (the sink uses ClickHouse's HTTP interface, port 8123 or 8443)",
                config.url
            )));
        }
        if config.database.is_empty()
            || config.table.is_empty()
            || config.checkpoint_table.is_empty()
        {
            return Err(misconfigured(
                "database, table and checkpoint_table must not be empty".into(),
            ));
        }
        let password = match &config.password_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                misconfigured(format!(
                    "password_env: environment variable {var} is not set"
                ))
            })?),
            None => None,
        };
        let ttl_seconds = match config.ttl {
            Some(ttl) if ttl.as_secs() == 0 => {
                return Err(misconfigured("ttl must be at least 1s".into()))
            }
            ttl => ttl.map(|t| t.as_secs()),
        };
        if config.schema == Schema::Otel && ttl_seconds.is_some() {
            return Err(misconfigured(
                "ttl: the otel_logs table has no receive time, and a TTL by its Timestamp would count from the sender's clock \
                 (an event stamped a year ago would expire the day it arrives); remove `ttl`, or use schema = \"auditrail\", \
                 whose TTL counts from received_time_unix_nano"
                    .into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Below the server's keep_alive_timeout (3 s on older servers),
            // so a pooled connection is not reused just as the server
            // closes it.
            .pool_idle_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .user_agent(concat!("auditrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| misconfigured(format!("HTTP client: {e}")))?;
        let _ = context;
        Ok(ClickhouseSink {
            client,
            url,
            user: config.user.clone(),
            password,
            database: config.database.clone(),
            table: config.table.clone(),
            schema: config.schema,
            compression: config.compression,
            create_table: config.create_table,
            ttl_seconds,
            checkpoint_table: config.checkpoint_table.clone(),
            prepared: RwLock::new(None),
        })
    }

    /// Runs one statement (the SQL in the request body) with the sink's
    /// URL and credentials, and returns the response body: for tooling and
    /// tests. Errors are classified as for inserts.
    pub async fn execute(&self, sql: &str) -> Result<String, ExportError> {
        self.send(&[], sql.as_bytes().to_vec(), false).await
    }

    /// One POST; the response body when it succeeded.
    async fn send(
        &self,
        params: &[(&str, &str)],
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<String, ExportError> {
        let mut url = self.url.clone();
        if !params.is_empty() {
            let mut query = url.query_pairs_mut();
            for (key, value) in params {
                query.append_pair(key, value);
            }
        }
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "text/plain; charset=UTF-8")
            .body(body);
        if gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(user) = &self.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let response = request.send().await.map_err(errors::transport)?;
        let status = response.status().as_u16();
        let header_code = response
            .headers()
            .get("X-ClickHouse-Exception-Code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = response.text().await.map_err(errors::transport)?;
        if status == 200 && header_code.is_none() {
            Ok(text)
        } else {
            Err(errors::classify(status, header_code, &text))
        }
    }

    /// Rows of a `FORMAT JSONEachRow` query.
    async fn rows<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, ExportError> {
        let text = self.execute(sql).await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| {
                    ExportError::retryable(
                        "server",
                        format!("unexpected answer from ClickHouse ({e}): {line}"),
                    )
                })
            })
            .collect()
    }

    fn qualified(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.database),
            quote_ident(&self.table)
        )
    }

    fn qualified_checkpoints(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.database),
            quote_ident(&self.checkpoint_table)
        )
    }

    /// Creates the checkpoint table when absent (`create_table`), or says
    /// how to when it may not.
    async fn prepare_checkpoint_table(&self) -> Result<(), ExportError> {
        let ddl = schema::create_checkpoints(&self.database, &self.checkpoint_table);
        if self.create_table {
            self.execute(&ddl).await?;
            return Ok(());
        }
        let exists = self
            .execute(&format!(
                "SELECT count() FROM system.tables WHERE database = {} AND name = {}",
                quote_str(&self.database),
                quote_str(&self.checkpoint_table)
            ))
            .await?;
        if exists.trim() == "0" {
            tracing::warn!(table = %self.qualified_checkpoints(),
                "the checkpoint table does not exist and create_table = false: signed checkpoints wait in the spool \
                 (and `verify --sink` cannot check this sink) until it is created: {ddl}");
        }
        Ok(())
    }

    async fn columns(&self) -> Result<Vec<Column>, ExportError> {
        self.rows(&format!(
            "SELECT name, type, default_kind FROM system.columns WHERE database = {} AND table = {} FORMAT JSONEachRow",
            quote_str(&self.database),
            quote_str(&self.table)
        ))
        .await
    }

    async fn table_info(&self) -> Result<TableInfo, ExportError> {
        let rows: Vec<TableInfo> = self
            .rows(&format!(
                "SELECT engine, engine_full, sorting_key FROM system.tables WHERE database = {} AND name = {} FORMAT JSONEachRow",
                quote_str(&self.database),
                quote_str(&self.table)
            ))
            .await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    async fn database_exists(&self) -> Result<bool, ExportError> {
        let text = self
            .execute(&format!(
                "SELECT count() FROM system.databases WHERE name = {}",
                quote_str(&self.database)
            ))
            .await?;
        Ok(text.trim() != "0")
    }

    fn current(&self) -> Option<Arc<Prepared>> {
        self.prepared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_current(&self, prepared: Option<Arc<Prepared>>) {
        *self.prepared.write().unwrap_or_else(|e| e.into_inner()) = prepared;
    }

    async fn prepare_table(&self) -> Result<Prepared, ExportError> {
        let answer = self.execute("SELECT version()").await.map_err(with_hint)?;
        let version_text = answer.trim();
        let version = Version::parse(version_text).ok_or_else(|| {
            ExportError::misconfigured(
                "config",
                format!(
                    "{} answered `SELECT version()` with {version_text:?}; is `url` ClickHouse's HTTP interface?",
                    self.url
                ),
            )
        })?;
        let modern = version.is_modern();
        if self.schema == Schema::Otel && !modern {
            return Err(ExportError::misconfigured(
                "schema",
                format!(
                    "otel schema needs ClickHouse >= 22.3 (Map, DateTime64), and the server at {} is {version_text}; \
                     use schema = \"auditrail\", which has a legacy mapping for older servers",
                    self.url
                ),
            ));
        }
        if !self.database_exists().await? {
            return Err(ExportError::misconfigured(
                "schema",
                format!(
                    "database {} does not exist on the ClickHouse server at {}; create it (CREATE DATABASE {}) \
                     or set `database`: auditrail creates its table, not the database",
                    quote_ident(&self.database),
                    self.url,
                    quote_ident(&self.database)
                ),
            ));
        }

        let mut columns = self.columns().await?;
        if columns.is_empty() {
            if !self.create_table {
                return Err(ExportError::misconfigured(
                    "schema",
                    format!(
                        "table {} does not exist and create_table = false",
                        self.qualified()
                    ),
                ));
            }
            if !modern && self.ttl_seconds.is_some() {
                tracing::warn!(table = %self.qualified(), version = version_text,
                    "`ttl` is ignored by the legacy mapping (ClickHouse before 22.3); drop old monthly partitions yourself");
            }
            let ddl = match self.schema {
                Schema::Auditrail => {
                    schema::create_auditrail(&self.database, &self.table, modern, self.ttl_seconds)
                }
                Schema::Otel => schema::create_otel(&self.database, &self.table),
            };
            self.execute(&ddl).await?;
            tracing::info!(table = %self.qualified(), schema = self.schema.as_str(), version = version_text,
                legacy = !modern, "created the ClickHouse table");
            columns = self.columns().await?;
        }
        if self.schema == Schema::Auditrail {
            self.prepare_checkpoint_table().await?;
        }
        let info = self.table_info().await?;
        if self.schema == Schema::Auditrail && schema::ttl_by_receive_time(&info) == Some(false) {
            tracing::warn!(table = %self.qualified(),
                "the table's TTL counts from `time`, the sender's clock (made by an earlier auditrail): an event stamped long ago \
                 expires as soon as it arrives. auditrail never alters a table; to fix: ALTER TABLE {} MODIFY TTL {} + INTERVAL <retention>",
                self.qualified(), schema::RECEIVED_TIME);
        }
        let plan = match self.schema {
            Schema::Auditrail => schema::auditrail_plan(&columns, &info),
            Schema::Otel => schema::otel_plan(&columns),
        }
        .map_err(|problems| {
            ExportError::misconfigured(
                "schema",
                format!(
                    "table {} exists but does not have the shape of the `{}` schema, and auditrail never alters a table: {}. \
                     Migrate it, or point `table` elsewhere",
                    self.qualified(),
                    self.schema.as_str(),
                    problems.join("; ")
                ),
            )
        })?;

        let mut settings = Vec::new();
        if modern {
            // Synchronous, so that a confirmed insert is in a part and
            // tokens apply whatever the user profile says.
            settings.push(("async_insert", "0"));
            settings.push(("insert_deduplicate", "1"));
            if schema::deduplicates(&info) == Some(false) {
                let consequence = match self.schema {
                    Schema::Auditrail => "a re-sent batch leaves duplicate rows until ReplacingMergeTree merges them (count with FINAL)",
                    Schema::Otel => "a re-sent batch is stored twice",
                };
                tracing::warn!(table = %self.qualified(),
                    "the table ignores insert deduplication tokens, so {consequence}; to fix: ALTER TABLE {} MODIFY SETTING non_replicated_deduplication_window = {}",
                    self.qualified(), schema::DEDUP_WINDOW);
            }
        } else {
            tracing::info!(table = %self.qualified(), version = version_text,
                "ClickHouse before 22.3: no insert deduplication tokens; re-sent rows collapse when ReplacingMergeTree merges (count with FINAL)");
        }
        Ok(Prepared {
            insert_sql: plan.insert_sql(&self.database, &self.table),
            plan,
            settings,
            tokens: modern,
        })
    }
}

/// A clearer word for the start-up errors operators hit most.
fn with_hint(mut error: ExportError) -> ExportError {
    if error.kind == "auth" {
        error
            .message
            .push_str(" (check `user` and the password in `password_env`)");
    }
    error
}

/// Runs CPU-bound work (encoding, compressing a batch) without stalling
/// the other tasks of a multi-threaded runtime.
fn cpu<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Rows are handed to the compressor in pieces of this size: small enough
/// to be compressed while still in cache, large enough that each call does
/// real work.
const ENCODE_CHUNK: usize = 256 << 10;

/// The request body of `events`: RowBinary, gzip-compressed (level 1:
/// rows still shrink several times, at a speed that keeps up with the
/// target rate) when `compress`.
fn body(plan: &rows::Plan, events: &[AuditEvent], compress: bool) -> Result<Vec<u8>, ExportError> {
    // A first guess from the first events, so that the buffer is not
    // regrown (and its pages faulted in again) several times per batch.
    let row_estimate: usize = events
        .iter()
        .take(16)
        .map(|e| 400 + e.body.len() + e.attributes.len() + e.resource_attributes.len())
        .max()
        .unwrap_or(0);
    let estimate = row_estimate.saturating_mul(events.len()).min(1 << 30);
    if !compress {
        let mut out = Vec::with_capacity(estimate);
        plan.encode(events, ENCODE_CHUNK, |piece| out.extend_from_slice(piece))?;
        return Ok(out);
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(estimate / 6 + 64),
        flate2::Compression::fast(),
    );
    plan.encode(events, ENCODE_CHUNK, |piece| {
        encoder
            .write_all(piece)
            .expect("compressing into a Vec cannot fail")
    })?;
    Ok(encoder
        .finish()
        .expect("compressing into a Vec cannot fail"))
}

#[async_trait]
impl Exporter for ClickhouseSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        let prepared = self.prepare_table().await?;
        self.set_current(Some(Arc::new(prepared)));
        Ok(())
    }

    async fn highest_seq(&self, node: &str) -> Result<HeldSeq, ExportError> {
        // max() of no rows is 0 in ClickHouse, which is "none held".
        let (seq, node_column) = match self.schema {
            Schema::Auditrail => ("seq", "node"),
            Schema::Otel => (
                "toUInt64OrZero(LogAttributes['auditrail.seq'])",
                "LogAttributes['auditrail.node']",
            ),
        };
        let answer = self
            .execute(&format!(
                "SELECT max({seq}) FROM {} WHERE {node_column} = {}",
                self.qualified(),
                quote_str(node)
            ))
            .await?;
        answer.trim().parse().map(HeldSeq::Highest).map_err(|_| {
            ExportError::retryable(
                "server",
                format!("unexpected answer from ClickHouse to max(seq): {answer:?}"),
            )
        })
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        if events.is_empty() {
            return Ok(());
        }
        let prepared = match self.current() {
            Some(prepared) => prepared,
            None => {
                self.prepare().await?;
                self.current()
                    .ok_or_else(|| ExportError::retryable("schema", "not prepared"))?
            }
        };
        // Each piece touches few enough partitions for one INSERT; a retry
        // of the batch resends every piece, and the ones stored already are
        // dropped by their tokens (or collapse in the ReplacingMergeTree).
        for piece in rows::split_by_day(events) {
            self.insert(&prepared, &piece).await?;
        }
        Ok(())
    }

    fn holds_checkpoints(&self) -> bool {
        self.schema == Schema::Auditrail
    }

    /// Inserts the checkpoints the table does not hold yet: one sent again
    /// is not stored twice (and the table's ReplacingMergeTree, keyed by
    /// `(origin, tree_size)`, would collapse it anyway).
    async fn export_checkpoints(
        &self,
        checkpoints: &[SignedCheckpoint],
    ) -> Result<(), ExportError> {
        let key = |origin: &str, size: u64| format!("{origin} {size}");
        let sizes: Vec<String> = checkpoints
            .iter()
            .map(|c| c.checkpoint.size.to_string())
            .collect();
        #[derive(serde::Deserialize)]
        struct Held {
            k: String,
        }
        let held: Vec<Held> = self
            .rows(&format!(
                "SELECT concat(origin, ' ', toString(tree_size)) AS k FROM {} WHERE tree_size IN ({}) \
                 FORMAT JSONEachRow",
                self.qualified_checkpoints(),
                sizes.join(", ")
            ))
            .await?;
        let mut body = Vec::new();
        for signed in checkpoints {
            let c = &signed.checkpoint;
            if held.iter().any(|h| h.k == key(&c.origin, c.size)) {
                continue;
            }
            serde_json::to_writer(
                &mut body,
                &serde_json::json!({
                    "node": node_of_origin(&c.origin),
                    "origin": c.origin,
                    "tree_size": c.size,
                    "first_seq": c.first_seq,
                    "last_seq": c.last_seq(),
                    "root_hash": hex::encode(c.root),
                    "chain_hash": hex::encode(c.chain),
                    "signed_at_unix_nano": c.time_unix_nano,
                    "note": signed.note,
                }),
            )
            .expect("JSON into a Vec");
            body.push(b'\n');
        }
        if body.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {} (node, origin, tree_size, first_seq, last_seq, root_hash, chain_hash, \
             signed_at_unix_nano, note) FORMAT JSONEachRow",
            self.qualified_checkpoints()
        );
        self.send(&[("query", &sql)], body, false).await?;
        Ok(())
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        (self.schema == Schema::Auditrail).then_some(self as &dyn ReadBack)
    }
}

/// The canonical table read back (see `read.rs`). Rows are read without
/// `FINAL`, but `DISTINCT`: a batch stored twice (a retry the tokens did
/// not catch, on 18.16 always possible) shows once, as it will once the
/// ReplacingMergeTree merges, while a forged second row of a seq that
/// differs in anything shows as a second row. Once a merge has collapsed
/// two rows of the same sorting key (service, event name, time, node,
/// seq), only the last one inserted is left: a forged row of that key then
/// shows as the original modified, no longer as inserted.
#[async_trait]
impl ReadBack for ClickhouseSink {
    async fn nodes(&self) -> Result<Vec<String>, ExportError> {
        #[derive(serde::Deserialize)]
        struct Node {
            node: String,
        }
        let nodes: Vec<Node> = self
            .rows(&format!(
                "SELECT DISTINCT toString(node) AS node FROM {} ORDER BY node FORMAT JSONEachRow",
                self.qualified()
            ))
            .await?;
        Ok(nodes.into_iter().map(|n| n.node).collect())
    }

    async fn events(
        &self,
        node: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, ExportError> {
        let columns: Vec<String> = crate::fields::Field::stored()
            .map(|f| quote_ident(f.name()))
            .collect();
        let text = self
            .execute(&format!(
                "SELECT DISTINCT {} FROM {} WHERE node = {} AND seq > {after} \
                 ORDER BY seq, received_time_unix_nano LIMIT {limit} FORMAT JSONEachRow",
                columns.join(", "),
                self.qualified(),
                quote_str(node)
            ))
            .await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(read::row_event)
            .collect()
    }

    async fn checkpoints(&self, node: &str) -> Result<Vec<String>, ExportError> {
        #[derive(serde::Deserialize)]
        struct Note {
            note: String,
        }
        let notes: Vec<Note> = self
            .rows(&format!(
                "SELECT DISTINCT note, first_seq, tree_size FROM {} WHERE node = {} \
                 ORDER BY first_seq, tree_size FORMAT JSONEachRow",
                self.qualified_checkpoints(),
                quote_str(node)
            ))
            .await?;
        Ok(notes.into_iter().map(|n| n.note).collect())
    }

    async fn walk<'a>(&'a self, node: &str) -> Result<Box<dyn Walk + 'a>, ExportError> {
        Ok(Box::new(BySeq::new(self, node)))
    }
}

impl ClickhouseSink {
    /// One `INSERT` of `events`, with a token naming exactly them.
    async fn insert(&self, prepared: &Prepared, events: &[AuditEvent]) -> Result<(), ExportError> {
        let compress = self.compression == Compression::Gzip;
        let body = cpu(|| body(&prepared.plan, events, compress))?;
        let token = prepared.tokens.then(|| rows::dedup_token(events));
        let mut params: Vec<(&str, &str)> = vec![("query", &prepared.insert_sql)];
        params.extend(prepared.settings.iter().copied());
        if let Some(token) = &token {
            params.push(("insert_deduplication_token", token));
        }
        match self.send(&params, body, compress).await {
            Ok(_) => Ok(()),
            Err(error) => {
                if error.class == ErrorClass::Misconfigured && error.kind == "schema" {
                    // The table went away or changed under us: look again
                    // (and create it again) before the next batch.
                    self.set_current(None);
                }
                Err(error)
            }
        }
    }
}
