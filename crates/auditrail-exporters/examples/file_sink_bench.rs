//! Throughput of the file sink's writes: events/s through `export`, each
//! batch fdatasync'd (and the directory fsync'd when a segment is made),
//! as the delivery loop drives it with its default batch (20,000 events).
//! Events are about 1 KiB of canonical JSON, like `auditrail-bench`'s.
//!
//! ```sh
//! cargo run --release -p auditrail-exporters --example file_sink_bench -- [DIR] [EVENTS] [RUNS]
//! ```
//!
//! DIR (default: a temporary directory under the current one, so on the
//! disk a spool would use) gets one fresh sub-directory per run. Prints
//! each run and the median; then how long compressing the closed segments
//! took (that runs in the background, off the write path).

use std::time::{Duration, Instant, SystemTime};

use auditrail_exporters::sinks::file::{FileConfig, FileSink};
use auditrail_exporters::{Exporter, SinkContext};
use auditrail_model::{AuditEvent, Outcome};

const BATCH: usize = 20_000;

fn event(seq: u64) -> AuditEvent {
    AuditEvent {
        node: "bench-node".into(),
        seq,
        event_id: format!("{seq:032x}"),
        time_unix_nano: 1_780_000_000_000_000_000 + seq,
        observed_time_unix_nano: 1_780_000_000_000_000_000 + seq,
        received_time_unix_nano: 1_780_000_000_000_000_000 + seq,
        tenant: "default".into(),
        service_name: "imagegen-ui".into(),
        event_name: "image.generate".into(),
        severity_number: 9,
        severity_text: "INFO".into(),
        actor_id: format!("user-{}", seq % 977),
        actor_name: "Alice Liddell".into(),
        client_address: "198.51.100.4".into(),
        outcome: Outcome::Success,
        target: format!("outputs/2026/12/01/{seq}.png"),
        trace_id: format!("{:032x}", seq * 7919),
        span_id: format!("{:016x}", seq * 31),
        trace_flags: 1,
        body: format!("prompt {seq}: a lighthouse in a storm, oil on canvas, dramatic light, seed {seq}, 4 images at 1024x1024, negative prompt: blurry, low quality, watermark"),
        attributes: format!(r#"{{"audit.target":"outputs/2026/12/01/{seq}.png","client.address":"198.51.100.4","duration_ms":1234,"gen_ai.request.model":"sdxl-1.0","gen_ai.response.finish_reasons":["stop"],"image.count":4,"image.height":1024,"image.width":1024,"session.id":"s-{}","user.id":"user-{}"}}"#, seq % 5000, seq % 977),
        resource_attributes: r#"{"deployment.environment":"prod","host.name":"web-3","service.name":"imagegen-ui","service.version":"2.14.1"}"#.into(),
        scope_name: "audit".into(),
        prev_hash: [0x11; 32],
        hash: [0x22; 32],
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map_or_else(|| std::env::current_dir().unwrap(), Into::into);
    let total: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("EVENTS"));
    let runs: usize = args.next().map_or(3, |n| n.parse().expect("RUNS"));
    let batches: Vec<Vec<AuditEvent>> = (1..=total)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|seqs| seqs.iter().map(|&s| event(s)).collect())
        .collect();
    let line = auditrail_exporters::encoding::event_json(&batches[0][0]).len();
    println!("{total} events of {line} bytes of JSON, batches of {BATCH}");
    // What the encoding alone costs, without any file.
    let started = Instant::now();
    let mut buffer = Vec::with_capacity(BATCH * line);
    for batch in &batches {
        buffer.clear();
        for event in batch {
            auditrail_exporters::encoding::write_event_json(event, &mut buffer);
        }
    }
    let encode = started.elapsed();
    println!(
        "encoding alone: {encode:.2?} = {:.0} events/s",
        total as f64 / encode.as_secs_f64()
    );
    let mut rates = Vec::new();
    for run in 1..=runs {
        let dir = tempfile::tempdir_in(&base).expect("a directory to write in");
        let config: FileConfig =
            toml::from_str(&format!("path = {:?}", dir.path().display().to_string())).unwrap();
        let context = SinkContext {
            name: "bench".into(),
            retention: Duration::from_secs(86_400),
        };
        let sink = FileSink::new(&config, &context).unwrap();
        sink.prepare().await.unwrap();
        let started = Instant::now();
        for batch in &batches {
            sink.export(batch).await.unwrap();
        }
        let took = started.elapsed();
        let rate = total as f64 / took.as_secs_f64();
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        println!("run {run}: {took:.2?} = {rate:.0} events/s ({} batches, each fdatasync'd; {segments} segments)", batches.len());
        rates.push(rate);
        let started = Instant::now();
        sink.maintain(SystemTime::now()).await.unwrap();
        let bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!("       compressing the closed segments (zstd, in the background in a server) took {:.2?}; {:.1} bytes per event on disk after", started.elapsed(), bytes as f64 / total as f64);
    }
    rates.sort_by(f64::total_cmp);
    println!("median of {runs}: {:.0} events/s", rates[rates.len() / 2]);
}
