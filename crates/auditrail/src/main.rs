//! The `auditrail` binary: the command line. Config, wiring of the spool,
//! receivers and admin API into one process, and the commands themselves
//! live in the `auditrail` library (`lib.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use auditrail::config::Config;
use auditrail::{client, dead_letters, hash, import, integrity, serve, sinks, spool_check};

/// Ingest allocates and frees many small strings per event, and sled many
/// buffers per batch; measured here, mimalloc does that work faster than the
/// system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `auditrail --help` opens with: for users, not the crate's doc
/// comment (which `about` alone would print).
const ABOUT: &str = "auditrail: who did what, when, from where, and proof that the record is whole.\n\n\
Receives audit events as OTLP log records (from OpenTelemetry SDKs or a Collector), \
acknowledges each only once it is on disk, delivers it to every sink \
(MySQL, ClickHouse, syslog, Kafka, files, ...; exactly once where the sink allows it), \
and signs checkpoints that `verify` and `prove` check. Start with `auditrail serve --config auditrail.toml`; see README.md.";

#[derive(Parser)]
#[command(name = "auditrail", version, about = ABOUT)]
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
    /// Check that nothing was altered, removed, reordered or inserted:
    /// a stopped server's spool (its hash chain, Merkle tree and signed
    /// checkpoints), a sink read back (--config --sink), a file sink's
    /// segment files (--file), or a proof file, offline. Exit 0: intact; 1:
    /// tampering found (each problem names its seq and kind); 2: it could
    /// not be checked (usage, a missing or busy spool, a bad key).
    Verify {
        /// The spool directory (read-only; its server must be stopped).
        #[arg(
            long = "data-dir",
            default_value = "auditrail-data",
            conflicts_with = "proof"
        )]
        data_dir: PathBuf,
        /// The config naming the sink to check (with --sink).
        #[arg(long, requires = "sink")]
        config: Option<PathBuf>,
        /// Check this sink's rows and checkpoints, read back from it (the
        /// canonical table of a mysql or clickhouse sink, a file sink's
        /// segments); with --proof, the row the sink holds now for the
        /// proof's event instead of the proof's copy.
        #[arg(long, requires = "config")]
        sink: Option<String>,
        /// Segment files of a file sink (or directories of them), read
        /// directly: their events in file order, against the checkpoint
        /// lines among them. No config needed.
        #[arg(long, num_args = 1.., value_name = "PATH", conflicts_with_all = ["config", "sink", "proof"])]
        file: Vec<PathBuf>,
        /// Only this node's records (default: every node the sink or the
        /// files hold).
        #[arg(long)]
        node: Option<String>,
        /// A proof file from `auditrail prove`, checked offline.
        #[arg(long, requires = "pubkey")]
        proof: Option<PathBuf>,
        /// The auditor's copy of the verifier (public) key, or a file
        /// holding it (`auditrail keygen` writes KEY.pub). Without it
        /// checkpoints are compared but their signatures not checked.
        #[arg(long, value_name = "KEY|FILE")]
        pubkey: Option<String>,
        /// A running server's admin API: it verifies its own spool
        /// (`POST /v1/verify`, operator only) and the run is recorded in
        /// the trail. Checked with --pubkey, else the server's own key.
        #[arg(long, value_name = "URL", conflicts_with_all = ["config", "sink", "file", "proof"])]
        admin: Option<String>,
        /// With --admin: the environment variable holding the operator's
        /// bearer token.
        #[arg(long = "token-env", value_name = "VAR", requires = "admin")]
        token_env: Option<String>,
    },
    /// Write a new checkpoint signing key: FILE (secret, mode 0600, for
    /// `[integrity] key_file`) and FILE.pub (the verifier key, for
    /// auditors); prints the verifier key.
    Keygen {
        /// Where to write the signer key.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: PathBuf,
        /// The key's name, shown in every signature line.
        #[arg(long, default_value = "auditrail")]
        name: String,
    },
    /// Print a proof to check offline with `verify --proof`: that an event
    /// (`--seq` or `--event-id`) is in a signed checkpoint, or that a
    /// checkpoint extends an older one (`--from-size`).
    Prove {
        #[arg(long, conflicts_with_all = ["event_id", "from_size"], required_unless_present_any = ["event_id", "from_size"])]
        seq: Option<u64>,
        #[arg(long = "event-id", conflicts_with = "from_size")]
        event_id: Option<String>,
        /// A consistency proof from the checkpoint of this tree size.
        #[arg(long = "from-size")]
        from_size: Option<u64>,
        /// Against the checkpoint of this tree size (default: the newest).
        #[arg(long)]
        size: Option<u64>,
        /// Write the proof here instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        at: client::Location,
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
    /// Turn existing audit logs into events, with their original times,
    /// through a running auditrail's receiver: JSON lines with a field
    /// mapping (--json-lines, e.g. Dify's stdout with --preset dify), the
    /// seed uploader's NDJSON queue (--ndjson-queue) or its MySQL table
    /// (--mysql). Importing again stores nothing twice. Exit 0: all
    /// imported; 1: some records bad or rejected (each named on stderr);
    /// 2: the import could not finish.
    Import(import::ImportArgs),
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
        Command::Verify {
            data_dir,
            config,
            sink,
            file,
            node,
            proof,
            pubkey,
            admin,
            token_env,
        } => {
            let key = match pubkey.as_deref().map(integrity::read_verifier).transpose() {
                Ok(key) => key,
                Err(e) => return Ok(cannot_check(e)),
            };
            if let Some(admin) = admin {
                let at = client::Location {
                    admin,
                    data_dir: None,
                    token_env,
                    ca_file: None,
                    client_cert: None,
                    client_key: None,
                };
                return Ok(
                    match runtime()?.block_on(integrity::verify_live(at, key.as_ref())) {
                        Ok(true) => ExitCode::SUCCESS,
                        Ok(false) => ExitCode::FAILURE,
                        Err(e) => cannot_check(e),
                    },
                );
            }
            let verdict = match (proof, &key, config, sink) {
                (Some(proof), Some(key), Some(config), Some(sink)) => integrity::read_proof(&proof)
                    .and_then(|proof| {
                        let config = Config::load(&config)?;
                        let proof = runtime()?
                            .block_on(integrity::with_row_from_sink(proof, &config, &sink))?;
                        integrity::verify_proof(proof, key)
                    }),
                (Some(proof), Some(key), _, _) => integrity::read_proof(&proof)
                    .and_then(|proof| integrity::verify_proof(proof, key)),
                (_, _, Some(config), Some(sink)) => Config::load(&config)
                    .map_err(anyhow::Error::from)
                    .and_then(|config| {
                        runtime()?.block_on(integrity::verify_sink(
                            &config,
                            &sink,
                            node.as_deref(),
                            key.as_ref(),
                        ))
                    }),
                _ if !file.is_empty() => runtime().and_then(|runtime| {
                    runtime.block_on(integrity::verify_files(
                        &file,
                        node.as_deref(),
                        key.as_ref(),
                    ))
                }),
                _ => integrity::verify_spool(&data_dir, key.as_ref()),
            };
            match verdict {
                Ok(true) => {}
                Ok(false) => return Ok(ExitCode::FAILURE),
                Err(e) => return Ok(cannot_check(e)),
            }
        }
        Command::Keygen { out, name } => integrity::keygen(&name, &out)?,
        Command::Prove {
            seq,
            event_id,
            from_size,
            size,
            out,
            at,
        } => runtime()?.block_on(integrity::prove_command(
            at,
            integrity::ProveParams {
                seq,
                event_id,
                from_size,
                size,
            },
            out,
        ))?,
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
            // Each sink's own checks (ranges, keys that go together), as
            // `serve` makes them at start-up; building connects to nothing.
            runtime()?.block_on(async {
                for sink in &config.sinks {
                    config
                        .build_sink(sink)
                        .with_context(|| format!("{}: sink {:?}", file.display(), sink.name))?;
                }
                anyhow::Ok(())
            })?;
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
        Command::Import(args) => return Ok(runtime()?.block_on(import::run(args))),
        Command::Version => println!("auditrail {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(ExitCode::SUCCESS)
}

fn cannot_check(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(CANNOT_CHECK)
}
