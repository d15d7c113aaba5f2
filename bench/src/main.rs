//! `auditrail-bench`: a load generator for durable OTLP/gRPC ingest.
//!
//! N concurrent gRPC clients each send requests of B log records of about
//! S bytes (each with a unique `log.record.uid`, so dedup does not shortcut
//! anything), either as fast as acknowledgements allow or at a fixed total
//! rate. Each request's latency is the time to its acknowledgement, which
//! auditrail sends only after fsync. Prints events/s, ack latency
//! percentiles and, given the server's pid and spool dir, RSS and disk bytes
//! per event.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The generator shares the machine with the server; a faster allocator
/// leaves more of it to the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// OTLP/gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Records per request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Approximate encoded size of one record, in bytes.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// How long to send.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Total events per second across all clients; 0 = as fast as acks come.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Server pid, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Server spool dir, to report disk bytes per event.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Distinguishes the uids of separate runs against one spool.
    #[arg(long, default_value = "run")]
    run_id: String,
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        key_strindex: 0,
    }
}

/// Words the prompts are made of: what an image-generation UI's users type.
/// Each record gets its own sequence of them, so the bodies compress like
/// real prompt text (zstd: about 3x), not like a run of one byte.
const PROMPT_WORDS: &[&str] = &[
    "a",
    "the",
    "of",
    "in",
    "at",
    "on",
    "with",
    "and",
    "under",
    "over",
    "lighthouse",
    "cliff",
    "dusk",
    "dawn",
    "portrait",
    "woman",
    "man",
    "child",
    "dog",
    "cat",
    "dragon",
    "castle",
    "forest",
    "river",
    "mountain",
    "city",
    "street",
    "neon",
    "rain",
    "snow",
    "fog",
    "sunset",
    "golden",
    "hour",
    "cinematic",
    "lighting",
    "photorealistic",
    "oil",
    "painting",
    "watercolor",
    "sketch",
    "anime",
    "style",
    "studio",
    "ghibli",
    "cyberpunk",
    "steampunk",
    "baroque",
    "minimalist",
    "4k",
    "8k",
    "ultra",
    "detailed",
    "sharp",
    "focus",
    "bokeh",
    "wide",
    "angle",
    "lens",
    "35mm",
    "85mm",
    "macro",
    "shot",
    "close-up",
    "aerial",
    "view",
    "isometric",
    "octane",
    "render",
    "unreal",
    "engine",
    "volumetric",
    "light",
    "soft",
    "shadows",
    "vivid",
    "colors",
    "pastel",
    "muted",
    "palette",
    "trending",
    "artstation",
    "by",
    "greg",
    "rutkowski",
    "alphonse",
    "mucha",
    "moebius",
    "red",
    "blue",
    "green",
    "purple",
    "silver",
    "ancient",
    "futuristic",
    "abandoned",
    "haunted",
    "cozy",
    "cabin",
    "interior",
    "kitchen",
    "spaceship",
    "robot",
    "knight",
    "samurai",
    "wizard",
    "tower",
    "ocean",
    "waves",
    "storm",
    "clouds",
    "stars",
    "galaxy",
    "nebula",
    "moon",
    "desert",
    "dunes",
    "jungle",
    "temple",
    "ruins",
    "market",
    "crowd",
    "night",
    "morning",
    "reflection",
    "glass",
    "marble",
    "wooden",
    "bridge",
    "train",
    "station",
    "vintage",
    "poster",
    "logo",
    "icon",
    "flat",
    "design",
    "no",
    "text",
    "negative",
    "blurry",
    "lowres",
    "extra",
    "fingers",
    "deformed",
    "watermark",
    "signature",
];

/// A prompt of about `bytes` bytes, different for every `seed`.
fn prompt(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut text = String::with_capacity(bytes + 16);
    text.push_str("generate image: ");
    while text.len() < bytes {
        // xorshift64: cheap, and the same prompt for the same seed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(PROMPT_WORDS[(state % PROMPT_WORDS.len() as u64) as usize]);
        text.push(if state.is_multiple_of(7) { ',' } else { ' ' });
    }
    text
}

fn request(args: &Args, client: usize, n: u64) -> ExportLogsServiceRequest {
    // ~200 bytes of attributes and ids; the body pads to record_bytes.
    let body_bytes = args.record_bytes.saturating_sub(220);
    let seed = (client as u64) << 40 ^ n << 16;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let records = (0..args.batch)
        .map(|i| LogRecord {
            time_unix_nano: now,
            observed_time_unix_nano: now,
            severity_number: 9,
            severity_text: "INFO".into(),
            event_name: "image.generate".into(),
            body: Some(AnyValue {
                value: Some(Value::StringValue(prompt(seed ^ i as u64, body_bytes))),
            }),
            attributes: vec![
                kv(
                    "log.record.uid",
                    &format!("{}-{client}-{n}-{i}", args.run_id),
                ),
                kv("user.id", &format!("user-{}", i % 97)),
                kv("client.address", "203.0.113.9"),
                kv("audit.outcome", "success"),
                kv("audit.target", "model/sdxl"),
            ],
            trace_id: ((n as u128) << 64 | (client as u128) << 32 | i as u128 | 1)
                .to_be_bytes()
                .to_vec(),
            span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
            flags: 1,
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "bench-imagegen")],
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let per_client_interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.clients as f64 / args.rate as f64)
    });
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut grpc = LogsServiceClient::connect(args.endpoint.clone())
                .await
                .context("connecting")?
                .max_encoding_message_size(64 << 20);
            let mut latencies = Vec::new();
            let mut events = 0u64;
            // Stagger the clients over one interval, so a fixed rate is a
            // steady stream rather than all clients firing at the same instant.
            let mut next_send = Instant::now()
                + per_client_interval.map_or(Duration::ZERO, |every| {
                    every * client as u32 / args.clients as u32
                });
            let mut n = 0u64;
            while Instant::now() < deadline {
                if let Some(every) = per_client_interval {
                    tokio::time::sleep_until(next_send.into()).await;
                    next_send += every;
                }
                let req = request(&args, client, n);
                n += 1;
                let sent = Instant::now();
                let answer = grpc
                    .export(req)
                    .await
                    .context("export failed")?
                    .into_inner();
                latencies.push(sent.elapsed());
                let rejected = answer.partial_success.map_or(0, |p| p.rejected_log_records);
                anyhow::ensure!(rejected == 0, "{rejected} records rejected");
                events += args.batch as u64;
            }
            anyhow::Ok((events, latencies))
        }));
    }
    let mut events = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (e, l) = task.await??;
        events += e;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "clients={} batch={} record_bytes={} rate={} duration={:.1}s",
        args.clients,
        args.batch,
        args.record_bytes,
        if args.rate == 0 {
            "max".to_string()
        } else {
            args.rate.to_string()
        },
        elapsed.as_secs_f64()
    );
    println!("events acked:      {events}");
    println!(
        "durable ingest:    {:.0} events/s",
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "ack latency:       p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap()),
        latencies.len()
    );
    if let Some(pid) = args.server_pid {
        println!(
            "server RSS:        {} MiB (peak {} MiB)",
            status_kib(pid, "VmRSS")? / 1024,
            status_kib(pid, "VmHWM")? / 1024
        );
    }
    if let Some(dir) = &args.data_dir {
        let bytes = dir_bytes(dir)?;
        println!("spool on disk:     {} MiB", bytes >> 20);
        println!(
            "spool bytes/event: {:.0} (all events in the spool: pass --data-dir of a fresh spool)",
            bytes as f64 / events.max(1) as f64
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
