//! The `auditrail` binary: the command line. Config, wiring of the spool,
//! receivers and admin API into one process, and the commands themselves
//! live in the `auditrail` library (`lib.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use auditrail::config::Config;
use auditrail::{client, dead_letters, hash, serve, sinks, spool_check};

/// Ingest allocates and frees many small strings per event, and sled many
/// buffers per batch; measured here, mimalloc does that work faster than the
/// system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// auditrail: a durable, verifiable audit-log pipeline on OpenTelemetry.
#[derive(Parser)]
#[command(name = "auditrail", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive OTLP logs and store them durably (the embedded default
    /// without --config: gRPC 127.0.0.1:4317, HTTP 127.0.0.1:4318, admin
    /// 127.0.0.1:8686, spool ./auditrail-data).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Find stored events.
    Query {
        #[command(flatten)]
        read: client::ReadArgs,
    },
    /// Print the latest events, then follow new ones.
    Tail {
        #[command(flatten)]
        read: client::ReadArgs,
        /// How often to look for new events.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        every: Duration,
    },
    /// Re-walk the hash chain of a stopped server's spool, read-only.
    /// Exit 0: intact; 1: tampering found (each problem names its seq and
    /// kind); 2: the spool could not be checked.
    Verify {
        /// The spool directory.
        #[arg(long = "data-dir", default_value = "auditrail-data")]
        data_dir: PathBuf,
    },
    /// Look after a stopped server's spool.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Events that sinks permanently rejected: list them, or replay them.
    #[command(subcommand)]
    DeadLetter(dead_letters::DeadLetterCommand),
    /// Sinks removed from the config: forget what the spool keeps of them.
    #[command(subcommand)]
    Sink(sinks::SinkCommand),
    /// Check a config file and say what is wrong with it, if anything
    /// (redaction keys are read, to find a missing one before `serve` does).
    CheckConfig { file: PathBuf },
    /// Print what VALUE is stored as under the tenant's HMAC keys
    /// (`[[redaction.keys]]`), newest version first, one per line: search
    /// for each (`query --actor ...` or `--text ...`) to find the events of
    /// a value no one stored in clear.
    Hash {
        /// The config that names the keys (they are read from its
        /// key_env / key_file).
        #[arg(long)]
        config: PathBuf,
        /// The tenant whose keys hashed the value.
        #[arg(long)]
        tenant: String,
        /// The value, exactly as sent; `-` reads it from stdin (one trailing
        /// newline removed), which keeps it out of shell history.
        value: String,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Diagnose the spool, read-only: sled's files, the trees, the chain.
    /// Exit 0: healthy; 1: damage found (named by file or tree); 2: the
    /// spool could not be checked.
    Check {
        /// The spool directory.
        #[arg(long = "data-dir", default_value = "auditrail-data")]
        data_dir: PathBuf,
    },
}

/// Exit code of a check that could not be carried out (usage, a missing
/// spool, a spool in use), as opposed to one that found damage (1).
const CANNOT_CHECK: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    };
    match command {
        Command::Serve { config } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            runtime()?.block_on(serve::run(config))?;
        }
        Command::Query { read } => runtime()?.block_on(client::query(read))?,
        Command::Tail { read, every } => runtime()?.block_on(client::tail(read, every))?,
        Command::DeadLetter(command) => runtime()?.block_on(dead_letters::run(command))?,
        Command::Sink(command) => runtime()?.block_on(sinks::run(command))?,
        Command::Verify { data_dir } => match client::verify(data_dir) {
            Ok(true) => {}
            Ok(false) => return Ok(ExitCode::FAILURE),
            Err(e) => return Ok(cannot_check(e)),
        },
        Command::Spool(SpoolCommand::Check { data_dir }) => match spool_check::run(&data_dir) {
            Ok(spool_check::Verdict::Healthy) => {}
            Ok(spool_check::Verdict::Damaged) => return Ok(ExitCode::FAILURE),
            Err(e) => return Ok(cannot_check(e)),
        },
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            config
                .redaction
                .redactor(&config.capture)
                .with_context(|| format!("{}", file.display()))?;
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok (node {}, gRPC {}, HTTP {}, admin {}, spool {}, {} sink(s))",
                file.display(),
                config.node_id(),
                config.receiver.grpc_addr,
                config.receiver.http_addr,
                config.admin.addr,
                config.spool.dir.display(),
                config.sinks.len()
            );
        }
        Command::Hash {
            config,
            tenant,
            value,
        } => hash::run(&config, &tenant, &value)?,
        Command::Version => println!("auditrail {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(ExitCode::SUCCESS)
}

fn cannot_check(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(CANNOT_CHECK)
}
