//! The MySQL / MariaDB sink (sqlx).
//!
//! By default it writes the canonical table, creating it when absent (see
//! `schema.rs`), with optional daily partitions (`partitions.rs`). With
//! `[sinks.columns]` it writes into an existing (legacy) table instead, each
//! column taken from a canonical field or an attribute.
//!
//! Each batch is one transaction of multi-row INSERTs. Rows are idempotent
//! by the table's unique key on `(node, seq)`: a batch sent again after a
//! crash or a timeout changes nothing (`ON DUPLICATE KEY UPDATE` a no-op).
//! Sessions run in strict mode, so a value the table cannot hold is an
//! error that dead-letters its record, never a silent truncation.

mod errors;
mod partitions;
mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use serde::Deserialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::{ConnectOptions, Connection, Executor, MySql, MySqlPool, QueryBuilder};
use time::PrimitiveDateTime;

use crate::fields::{utc, Field, Source, Value};
use crate::{
    node_of_origin, BySeq, ExportError, Exporter, HeldSeq, ReadBack, SignedCheckpoint, SinkContext,
    Walk,
};
use errors::classify;
pub use partitions::{Maintenance, PartitionConfig};

/// `type = "mysql"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://user[:password]@host[:port]/database`. Keep the password
    /// out of it with `${VAR}` or `password_env`.
    pub url: String,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    #[serde(default = "default_table")]
    pub table: String,
    /// Legacy mapping: target column → `canonical_field`,
    /// `attributes.<key>` or `resource_attributes.<key>`. The table must
    /// exist; auditrail does not create or alter it.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    pub partitions: Option<PartitionConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Where signed checkpoints go (canonical table only; created when
    /// absent).
    #[serde(default = "default_checkpoint_table")]
    pub checkpoint_table: String,
}

fn default_table() -> String {
    "audit_events".into()
}

fn default_checkpoint_table() -> String {
    "audit_checkpoints".into()
}

/// The default delivery concurrency (4), plus one for partition upkeep and
/// one to spare.
fn default_max_connections() -> u32 {
    6
}

/// `[sinks.tls]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    /// CA certificate (PEM) for `verify_ca` / `verify_identity`.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that require them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    Disabled,
    #[default]
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// Writes batches into one MySQL / MariaDB table.
pub struct MysqlSink {
    options: MySqlConnectOptions,
    pool: MySqlPool,
    table: String,
    /// Target column and where its value comes from, in insert order.
    columns: Vec<(String, Source)>,
    legacy: bool,
    partitions: Option<PartitionConfig>,
    /// Whether the table has a unique key that makes re-sent rows no-ops.
    upsert: AtomicBool,
    checkpoint_table: String,
}

/// Rows per INSERT statement: MySQL allows 65,535 placeholders.
const MAX_PLACEHOLDERS: usize = 65_535;
/// Above this, longer statements stop paying off and only cost memory.
const MAX_ROWS_PER_STATEMENT: usize = 2_000;

pub(super) fn quote(identifier: &str) -> String {
    format!("`{}`", identifier.replace('`', "``"))
}

impl MysqlSink {
    pub fn new(config: &MysqlConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let mut options = MySqlConnectOptions::from_str(&config.url)
            .map_err(|e| misconfigured(format!("url: {e}")))?;
        if options.get_database().is_none() {
            return Err(misconfigured(
                "url names no database (mysql://user@host:3306/DATABASE)".into(),
            ));
        }
        if let Some(var) = &config.password_env {
            let password = std::env::var(var).map_err(|_| {
                misconfigured(format!(
                    "password_env: environment variable {var} is not set"
                ))
            })?;
            options = options.password(&password);
        }
        options = options
            .ssl_mode(match config.tls.mode {
                TlsMode::Disabled => MySqlSslMode::Disabled,
                TlsMode::Preferred => MySqlSslMode::Preferred,
                TlsMode::Required => MySqlSslMode::Required,
                TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
                TlsMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
            })
            .charset("utf8mb4")
            .disable_statement_logging();
        if let Some(ca) = &config.tls.ca {
            options = options.ssl_ca(ca);
        }
        if let Some(cert) = &config.tls.cert {
            options = options.ssl_client_cert(cert);
        }
        if let Some(key) = &config.tls.key {
            options = options.ssl_client_key(key);
        }

        let legacy = !config.columns.is_empty();
        let columns: Vec<(String, Source)> = if legacy {
            if config.partitions.is_some() {
                return Err(misconfigured(
                    "[sinks.partitions] applies to the canonical table, not to a mapped legacy table".into(),
                ));
            }
            config
                .columns
                .iter()
                .map(|(column, source)| {
                    Source::parse(source)
                        .map(|s| (column.clone(), s))
                        .map_err(|e| misconfigured(format!("columns.{column}: {e}")))
                })
                .collect::<Result<_, _>>()?
        } else {
            Field::ALL
                .into_iter()
                .map(|f| (f.name().to_owned(), Source::Field(f)))
                .collect()
        };

        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Strict mode whatever the server's default: a value that
                    // does not fit must fail (and be dead-lettered), not be
                    // silently truncated.
                    conn.execute(
                        "SET SESSION sql_mode = IF(@@SESSION.sql_mode = '', 'STRICT_ALL_TABLES', \
                         CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES'))",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        let _ = context;
        Ok(MysqlSink {
            options,
            pool,
            table: config.table.clone(),
            columns,
            legacy,
            partitions: config.partitions.clone(),
            upsert: AtomicBool::new(!legacy),
            checkpoint_table: config.checkpoint_table.clone(),
        })
    }

    /// Runs one maintenance pass at `now` (what the delivery loop does
    /// hourly); public so that a day change can be tested.
    pub async fn maintain_partitions(&self, now: SystemTime) -> Result<Maintenance, ExportError> {
        match &self.partitions {
            Some(config) => partitions::maintain(&self.pool, &self.table, config, now).await,
            None => Ok(Maintenance::default()),
        }
    }

    async fn prepare_canonical(&self) -> Result<(), ExportError> {
        sqlx::query(&schema::create_checkpoint_table(&self.checkpoint_table))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        match schema::columns(&self.pool, &self.table).await? {
            None => {
                let clause = self
                    .partitions
                    .as_ref()
                    .map(|p| partitions::initial(p, SystemTime::now()));
                let ddl = schema::create_table(&self.table, clause.as_deref());
                sqlx::query(&ddl)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
                tracing::info!(table = %self.table, partitioned = clause.is_some(), "created the audit table");
                Ok(())
            }
            Some(existing) => {
                let keys = schema::unique_keys(&self.pool, &self.table).await?;
                let problems = schema::drift(&existing, &keys);
                if problems.is_empty() {
                    return Ok(());
                }
                Err(ExportError::misconfigured(
                    "schema",
                    format!(
                        "table `{}` exists but does not have auditrail's shape, and auditrail never alters a table: {}. \
                         Migrate it, point `table` elsewhere, or map its columns with [sinks.columns]",
                        self.table,
                        problems.join("; ")
                    ),
                ))
            }
        }
    }

    async fn prepare_legacy(&self) -> Result<(), ExportError> {
        let Some(existing) = schema::columns(&self.pool, &self.table).await? else {
            return Err(ExportError::misconfigured(
                "schema",
                format!(
                    "table `{}` does not exist; with [sinks.columns] auditrail writes into an existing table and does not create one",
                    self.table
                ),
            ));
        };
        let mut problems: Vec<String> = self
            .columns
            .iter()
            .filter(|(column, _)| !existing.contains_key(column))
            .map(|(column, _)| format!("mapped column `{column}` does not exist"))
            .collect();
        problems.extend(
            existing
                .iter()
                .filter(|(name, c)| c.required && !self.columns.iter().any(|(m, _)| m == *name))
                .map(|(name, _)| {
                    format!("column `{name}` is NOT NULL without a default but is not mapped")
                }),
        );
        if !problems.is_empty() {
            return Err(ExportError::misconfigured(
                "schema",
                format!(
                    "table `{}` cannot take the mapped rows: {}",
                    self.table,
                    problems.join("; ")
                ),
            ));
        }
        let source_of = |column: &String| {
            self.columns
                .iter()
                .find(|(c, _)| c == column)
                .map(|(_, s)| s)
        };
        let identifies = |key: &Vec<String>| {
            let sources: Vec<_> = key.iter().map(source_of).collect();
            if sources.iter().any(Option::is_none) {
                return false;
            }
            let has = |f: Field| sources.contains(&Some(&Source::Field(f)));
            has(Field::EventId) || (has(Field::Node) && has(Field::Seq))
        };
        let keys = schema::unique_keys(&self.pool, &self.table).await?;
        let idempotent = keys.iter().any(identifies);
        if !idempotent {
            tracing::warn!(
                table = %self.table,
                "the legacy table has no unique key on a column mapped from `event_id` (or from `node` and `seq`), \
                 so a batch re-sent after a crash or timeout can store rows twice; add one for exactly-once rows"
            );
        }
        self.upsert.store(idempotent, Ordering::Relaxed);
        Ok(())
    }

    /// The columns holding `node` and `seq`: the canonical ones, or those a
    /// legacy mapping takes from them (`None` when it maps not both).
    fn node_and_seq_columns(&self) -> Option<(&str, &str)> {
        let column_of = |field: Field| {
            self.columns
                .iter()
                .find(|(_, source)| *source == Source::Field(field))
                .map(|(column, _)| column.as_str())
        };
        Some((column_of(Field::Node)?, column_of(Field::Seq)?))
    }

    fn insert_sql_parts(&self) -> (String, String) {
        let names: Vec<String> = self.columns.iter().map(|(c, _)| quote(c)).collect();
        let prefix = format!("INSERT INTO {} ({}) ", quote(&self.table), names.join(", "));
        let suffix = if self.upsert.load(Ordering::Relaxed) {
            // A no-op update: the row is already there.
            format!(" ON DUPLICATE KEY UPDATE {0} = {0}", names[0])
        } else {
            String::new()
        };
        (prefix, suffix)
    }
}

/// A clearer word for the start-up errors operators hit most.
fn with_hint(mut error: ExportError) -> ExportError {
    let hint = match error.kind {
        "auth" => " (check the user and password: `url` or `password_env`)",
        "schema" if error.message.contains("Unknown database") => " (create the database first)",
        _ => "",
    };
    error.message.push_str(hint);
    error
}

#[async_trait]
impl Exporter for MysqlSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        // One plain connection first: it reports a refused connection, a bad
        // password or a missing database as itself, where the pool would
        // retry until its timeout.
        let conn = self
            .options
            .connect()
            .await
            .map_err(|e| with_hint(classify(e)))?;
        let _ = conn.close().await;
        if self.legacy {
            self.prepare_legacy().await
        } else {
            self.prepare_canonical().await
        }
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        let rows_per_statement =
            (MAX_PLACEHOLDERS / self.columns.len()).min(MAX_ROWS_PER_STATEMENT);
        let (prefix, suffix) = self.insert_sql_parts();
        let mut tx = self.pool.begin().await.map_err(classify)?;
        for chunk in events.chunks(rows_per_statement) {
            let mut insert: QueryBuilder<MySql> = QueryBuilder::new(&prefix);
            insert.push_values(chunk, |mut row, event| {
                for (_, source) in &self.columns {
                    match source.value(event) {
                        Value::Null => row.push_bind(None::<String>),
                        Value::Str(s) | Value::Json(s) => row.push_bind(s),
                        Value::Owned(s) => row.push_bind(s),
                        Value::U64(n) => row.push_bind(n),
                        Value::I64(n) => row.push_bind(n),
                        Value::Time(ns) => {
                            let t = utc(ns);
                            row.push_bind(PrimitiveDateTime::new(t.date(), t.time()))
                        }
                    };
                }
            });
            insert.push(&suffix);
            insert
                .build()
                .persistent(true)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn highest_seq(&self, node: &str) -> Result<HeldSeq, ExportError> {
        let Some((node_column, seq_column)) = self.node_and_seq_columns() else {
            return Ok(HeldSeq::NotTracked);
        };
        // The canonical primary key starts with (node, seq): one index
        // probe. A legacy column may be text, hence the cast there.
        let seq = if self.legacy {
            format!("CAST({} AS UNSIGNED)", quote(seq_column))
        } else {
            quote(seq_column)
        };
        let sql = format!(
            "SELECT MAX({seq}) FROM {} WHERE {} = ?",
            quote(&self.table),
            quote(node_column)
        );
        let highest: Option<u64> = sqlx::query_scalar(&sql)
            .bind(node)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(HeldSeq::Highest(highest.unwrap_or(0)))
    }

    async fn maintain(&self, now: SystemTime) -> Result<(), ExportError> {
        let done = self.maintain_partitions(now).await?;
        if !done.created.is_empty() || !done.dropped.is_empty() {
            tracing::info!(table = %self.table, created = ?done.created, dropped = ?done.dropped, "partitions maintained");
        }
        Ok(())
    }

    fn maintenance_interval(&self) -> Option<Duration> {
        self.partitions.as_ref().map(|_| Duration::from_secs(3600))
    }

    fn holds_checkpoints(&self) -> bool {
        !self.legacy
    }

    async fn export_checkpoints(
        &self,
        checkpoints: &[SignedCheckpoint],
    ) -> Result<(), ExportError> {
        let mut insert: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "INSERT INTO {} (`node`, `origin`, `tree_size`, `first_seq`, `last_seq`, \
             `root_hash`, `chain_hash`, `signed_at_unix_nano`, `note`) ",
            quote(&self.checkpoint_table)
        ));
        insert.push_values(checkpoints, |mut row, signed| {
            let c = &signed.checkpoint;
            row.push_bind(node_of_origin(&c.origin))
                .push_bind(&c.origin)
                .push_bind(c.size)
                .push_bind(c.first_seq)
                .push_bind(c.last_seq())
                .push_bind(hex::encode(c.root))
                .push_bind(hex::encode(c.chain))
                .push_bind(c.time_unix_nano)
                .push_bind(&signed.note);
        });
        // Stored once: the same checkpoint sent again is a no-op.
        insert.push(" ON DUPLICATE KEY UPDATE `origin` = `origin`");
        insert.build().execute(&self.pool).await.map_err(classify)?;
        Ok(())
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        (!self.legacy).then_some(self as &dyn ReadBack)
    }
}

#[async_trait]
impl ReadBack for MysqlSink {
    async fn nodes(&self) -> Result<Vec<String>, ExportError> {
        let sql = format!(
            "SELECT DISTINCT CAST(`node` AS CHAR) FROM {} ORDER BY 1",
            quote(&self.table)
        );
        sqlx::query_scalar(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn events(
        &self,
        node: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, ExportError> {
        // Every column as text, as stored: a JSON column's text is what
        // MariaDB keeps byte for byte.
        let fields: Vec<Field> = Field::stored().collect();
        let columns: Vec<String> = fields
            .iter()
            .map(|f| format!("CAST({} AS CHAR)", quote(f.name())))
            .collect();
        // The order of the primary key, so that each page is an index range
        // and not a sort of every row after it: (node, seq), or (node, seq,
        // received_time_unix_nano) when partitioned, where two rows can share
        // a seq.
        let order = match self.partitions {
            Some(_) => "`seq`, `received_time_unix_nano`",
            None => "`seq`",
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE `node` = ? AND `seq` > ? ORDER BY {order} LIMIT ?",
            columns.join(", "),
            quote(&self.table)
        );
        let rows = sqlx::query(&sql)
            .bind(node)
            .bind(after)
            .bind(limit as u64)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let mut event = AuditEvent::default();
                for (i, field) in fields.iter().enumerate() {
                    let text: Option<String> = sqlx::Row::try_get(row, i).map_err(classify)?;
                    field
                        .set(&mut event, text.unwrap_or_default())
                        .map_err(|e| ExportError::permanent("read_back", e))?;
                }
                Ok(event)
            })
            .collect()
    }

    async fn checkpoints(&self, node: &str) -> Result<Vec<String>, ExportError> {
        let sql = format!(
            "SELECT CAST(`note` AS CHAR) FROM {} WHERE `node` = ? ORDER BY `first_seq`, `tree_size`",
            quote(&self.checkpoint_table)
        );
        sqlx::query_scalar(&sql)
            .bind(node)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn walk<'a>(&'a self, node: &str) -> Result<Box<dyn Walk + 'a>, ExportError> {
        Ok(Box::new(BySeq::new(self, node)))
    }
}
