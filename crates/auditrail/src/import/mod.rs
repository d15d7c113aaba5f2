//! `auditrail import`: existing audit logs into a running auditrail, with
//! their original times, through the normal durable path (OTLP to its
//! receiver, acknowledged after the fsync).
//!
//! Sources: JSON lines with a field mapping (`json_lines.rs`; the seeds'
//! Dify stdout and the seed uploader's NDJSON queue), and the rows of a
//! MySQL table (`mysql.rs`; the seed uploader's table). `mapping.rs` turns
//! a source record into an event, `time.rs` reads its time, `send.rs`
//! sends batches and reads the receiver's answer record by record.
//!
//! Importing is idempotent: each record's `log.record.uid` is derived from
//! the source (a line's content and how many identical lines came before
//! it; a table row's key), and the receiver stores each id of a tenant
//! once, so importing the same file again, or a file that has grown since,
//! stores every record once.

mod json_lines;
mod mapping;
mod mysql;
mod send;
mod time;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use auditrail_exporters::sinks::otlp::Protocol;
use auditrail_model::id::RECORD_UID_ATTRIBUTE;
use auditrail_model::AuditEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use mapping::Preset;

/// The scope name of every imported record: which records came from an
/// import, in every store (`scope_name`).
pub const SCOPE_NAME: &str = "auditrail.import";

/// Where the records come from: exactly one of these.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Input {
    /// A file of JSON objects, one a line (an app's stdout log, e.g.
    /// Dify's with --preset dify), mapped by --preset, --mapping, --map
    /// and --set.
    #[arg(long = "json-lines", value_name = "FILE")]
    json_lines: Option<PathBuf>,
    /// The seed uploader's NDJSON queue: one row of its table a line, as
    /// JSON with the table's column names (mapped by --preset seed-table
    /// unless told otherwise).
    #[arg(long = "ndjson-queue", value_name = "FILE")]
    ndjson_queue: Option<PathBuf>,
    /// A MySQL/MariaDB database (mysql://user:password@host:3306/db) whose
    /// --table to import, row by row (mapped by --preset seed-table unless
    /// told otherwise).
    #[arg(long, value_name = "URL")]
    mysql: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProtocolArg {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf (port 4318).
    Http,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    input: Input,
    /// With --mysql: the table.
    #[arg(long, default_value = "nano_banana_user_use_log")]
    table: String,
    /// With --mysql: the table's integer key, which orders the pages and
    /// identifies each row across imports.
    #[arg(long = "id-column", default_value = "id")]
    id_column: String,
    /// With --mysql: start after this key (the summary of an import that
    /// stopped says where it got to; importing from the start again is
    /// safe too, only slower).
    #[arg(long = "after-id", default_value_t = 0)]
    after_id: i64,
    /// The field mapping to start from: `dify` (Dify's JSON log lines) or
    /// `seed-table` (the seed uploader's table rows; the default for
    /// --ndjson-queue and --mysql).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// A TOML file: `preset = "..."`, a `[map]` table of TARGET = "FIELD"
    /// and a `[set]` table of TARGET = "VALUE" (see docs/migration.md).
    #[arg(long, value_name = "FILE")]
    mapping: Option<PathBuf>,
    /// TARGET=FIELD: fill TARGET (time, event_name, severity, body,
    /// service_name, actor_id, actor_name, client_address, outcome, target,
    /// trace_id, span_id, attributes.KEY, resource_attributes.KEY) from the
    /// record's FIELD (a key, or a dotted path into nested objects).
    /// Repeatable; overrides the preset and the file. Fields not mapped are
    /// kept as attributes of their own name.
    #[arg(long = "map", value_name = "TARGET=FIELD")]
    map: Vec<String>,
    /// TARGET=VALUE: the same VALUE in every record (e.g.
    /// service_name=chatbot). Repeatable.
    #[arg(long = "set", value_name = "TARGET=VALUE")]
    set: Vec<String>,
    /// The time zone of times written without one (MySQL DATETIME,
    /// `2024-05-01 12:00:00`): an IANA name (Asia/Shanghai), UTC, local, or
    /// an offset (+08:00). Times with an offset or Z, and Unix times, are
    /// exact whatever this says.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Part of every record's id: give two sources whose records may be
    /// identical (two hosts' logs) different ids here. The same source must
    /// keep the same one, or it is imported twice.
    #[arg(long = "source-id", default_value = "")]
    source_id: String,
    /// The auditrail receiver to send to.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: ProtocolArg,
    /// The environment variable holding a writer token
    /// (`[[receiver.tokens]]`): the records are the tenant's.
    #[arg(long = "token-env", value_name = "VAR")]
    token_env: Option<String>,
    /// Records per request.
    #[arg(long = "batch-size", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch_size: u64,
    /// How long to keep sending a batch while the receiver is unreachable
    /// or busy before the import stops.
    #[arg(long = "retry-for", default_value = "30s", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// No progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// One record read from a source, or why it could not be read.
pub struct Item {
    /// Where it was: `FILE:LINE`, `TABLE id=N`.
    origin: String,
    /// What makes it the same record in every import: hashed into its id.
    identity: Vec<u8>,
    record: Result<Map<String, Value>, String>,
}

/// The next records of a source, and how far through the source they are
/// (in the unit of [`Source::total`]).
pub struct Page {
    items: Vec<Item>,
    position: u64,
}

trait Source {
    /// The source's name in messages.
    fn label(&self) -> String;
    /// Its size for the progress bar: bytes of a file, rows of a table.
    fn total(&self) -> u64;
    /// Up to `max` records; `None` at the end.
    async fn next_page(&mut self, max: usize) -> anyhow::Result<Option<Page>>;
}

/// The record's `log.record.uid`: a digest of its identity.
fn record_uid(identity: &[u8]) -> String {
    format!("import-{}", &hex::encode(Sha256::digest(identity))[..32])
}

#[derive(Debug, Default)]
struct Summary {
    read: u64,
    imported: u64,
    rejected: u64,
    bad: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} read, {} imported, {} rejected by the server, {} bad",
            self.read, self.imported, self.rejected, self.bad
        )
    }
}

/// Runs the import. Exit 0: every record read was imported (or was
/// already stored); 1: the import finished, but some records were bad or
/// rejected (each was named on stderr); 2: it could not finish (the
/// receiver or the source could not be reached, a usage error).
pub async fn run(args: ImportArgs) -> ExitCode {
    let mut summary = Summary::default();
    let mut resume = None;
    let result = import(args, &mut summary, &mut resume).await;
    match result {
        Ok(label) => {
            println!("{label}: {summary}");
            if summary.rejected + summary.bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if summary.read > 0 {
                let resume = resume
                    .map(|id: i64| format!("; to go on from there: --after-id {id}"))
                    .unwrap_or_default();
                println!(
                    "stopped: {summary}; importing again is safe (records already imported are stored once){resume}"
                );
            }
            ExitCode::from(2)
        }
    }
}

async fn import(
    args: ImportArgs,
    summary: &mut Summary,
    resume: &mut Option<i64>,
) -> anyhow::Result<String> {
    let zone = time::parse_zone(&args.timezone).map_err(|e| anyhow::anyhow!("--timezone: {e}"))?;
    let table_rows = args.input.ndjson_queue.is_some() || args.input.mysql.is_some();
    let preset = args.preset.or(table_rows.then_some(Preset::SeedTable));
    // A mapping file names its own preset.
    let preset = if args.mapping.is_some() && args.preset.is_none() {
        None
    } else {
        preset
    };
    let mapping = mapping::Mapping::build(preset, args.mapping.as_deref(), &args.map, &args.set)?;
    let token = match &args.token_env {
        None => None,
        Some(name) => Some(crate::client::token_from_env(name)?),
    };
    let protocol = match args.protocol {
        ProtocolArg::Grpc => Protocol::Grpc,
        ProtocolArg::Http => Protocol::Http,
    };
    let sender = send::Sender::new(&args.endpoint, protocol, token, args.retry_for)?;
    sender.check().await?;
    let run = Run {
        mapping,
        zone,
        sender,
        batch_size: args.batch_size as usize,
        quiet: args.quiet,
    };
    if let Some(path) = &args.input.json_lines {
        let mut source = json_lines::JsonLines::open(path, &args.source_id)?;
        run.from(&mut source, "json-lines", summary).await?;
        Ok(source.label())
    } else if let Some(path) = &args.input.ndjson_queue {
        let mut source = json_lines::JsonLines::open(path, &args.source_id)?;
        run.from(&mut source, "ndjson-queue", summary).await?;
        Ok(source.label())
    } else {
        let url = args
            .input
            .mysql
            .as_deref()
            .expect("clap requires one input");
        let mut source = mysql::MysqlTable::open(
            url,
            &args.table,
            &args.id_column,
            args.after_id,
            &args.source_id,
        )
        .await?;
        let result = run.from(&mut source, "mysql", summary).await;
        *resume = Some(source.last_id());
        result?;
        Ok(format!(
            "{} (up to {} {})",
            source.label(),
            args.id_column,
            source.last_id()
        ))
    }
}

/// What an import keeps while it runs.
struct Run {
    mapping: mapping::Mapping,
    zone: jiff::tz::TimeZone,
    sender: send::Sender,
    batch_size: usize,
    quiet: bool,
}

impl Run {
    async fn from(
        &self,
        source: &mut impl Source,
        kind: &str,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let bar = if self.quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar =
                ProgressBar::with_draw_target(Some(source.total()), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {percent:>3}% {msg} (eta {eta})")
                    .expect("a valid template"),
            );
            bar
        };
        // Problems go above the bar, which stays at the bottom.
        let report = |line: String| bar.suspend(|| eprintln!("{line}"));
        while let Some(page) = source.next_page(self.batch_size).await? {
            summary.read += page.items.len() as u64;
            let mut events = Vec::with_capacity(page.items.len());
            // (place in the page, origin) of each event.
            let mut origins = Vec::with_capacity(page.items.len());
            // (place in the page, message), reported in the source's order.
            let mut problems = Vec::new();
            for (place, item) in page.items.into_iter().enumerate() {
                let event = match &item.record {
                    Ok(record) => self.event(record, &item, kind),
                    Err(problem) => Err(problem.clone()),
                };
                match event {
                    Ok(event) => {
                        events.push(event);
                        origins.push((place, item.origin));
                    }
                    Err(problem) => {
                        summary.bad += 1;
                        problems.push((place, format!("{}: {problem}", item.origin)));
                    }
                }
            }
            let sent = self.sender.send(&events).await;
            let refused = match sent {
                Ok(refused) => refused,
                Err(e) => {
                    problems.sort();
                    problems.into_iter().for_each(|(_, line)| report(line));
                    let from = origins.first().map_or("", |(_, origin)| origin.as_str());
                    return Err(e.context(format!("sending the records from {from} on")));
                }
            };
            for (at, reason) in &refused {
                let (place, origin) = &origins[*at];
                problems.push((
                    *place,
                    format!("{origin}: rejected by the server: {reason}"),
                ));
            }
            problems.sort();
            problems.into_iter().for_each(|(_, line)| report(line));
            summary.rejected += refused.len() as u64;
            summary.imported += (events.len() - refused.len()) as u64;
            bar.set_position(page.position);
            bar.set_message(format!("{} imported", summary.imported));
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// The event of one record, with its id and where it came from.
    fn event(
        &self,
        record: &Map<String, Value>,
        item: &Item,
        kind: &str,
    ) -> Result<AuditEvent, String> {
        let mut event = self.mapping.apply(record, &self.zone)?;
        event.event_id = record_uid(&item.identity);
        event.scope_name = SCOPE_NAME.into();
        let mut attributes: Map<String, Value> =
            serde_json::from_str(&event.attributes).expect("apply writes an object");
        // The id is the import's, so a second import finds it again; a uid
        // the source had is kept under another name.
        if let Some(uid) = attributes.remove(RECORD_UID_ATTRIBUTE) {
            attributes.insert("audit.import.original_uid".into(), uid);
        }
        attributes.insert("audit.import.source".into(), kind.into());
        attributes.insert("audit.import.origin".into(), item.origin.clone().into());
        event.attributes = Value::Object(attributes).to_string();
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_fit_the_receivers_rule() {
        let uid = record_uid(b"line\0\x000\0{\"a\":1}");
        assert_eq!(uid, record_uid(b"line\0\x000\0{\"a\":1}"));
        assert_ne!(uid, record_uid(b"line\0\x001\0{\"a\":1}"));
        assert_eq!(uid.len(), "import-".len() + 32);
        auditrail_model::id::check_record_uid(&uid).unwrap();
    }
}
