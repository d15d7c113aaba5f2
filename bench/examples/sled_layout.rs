//! Measures sled layouts for group-committed batches, the experiment behind
//! the spool's layout (docs/spool.md). Run:
//! `cargo run --release -p auditrail-bench --example sled_layout`
//!
//! Each variant appends batches of `EVENTS` ~1 KiB events with increasing
//! keys and a flush (fsync) after each batch, for a fixed time, then prints
//! events/s. Reads of the tree in between mimic the indexer.

use std::time::{Duration, Instant};

const EVENTS: usize = 512;
const EVENT_BYTES: usize = 1100;

fn run(name: &str, segment_size: Option<usize>, chunk_events: usize, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sled::Config::new()
        .path(dir.path())
        .cache_capacity(256 << 20);
    if let Some(size) = segment_size {
        config = config.segment_size(size);
    }
    let db = config.open().unwrap();
    let tree = db.open_tree("batches").unwrap();
    let payload = vec![0x5au8; chunk_events * EVENT_BYTES];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seq: u64 = 1;
    let mut events = 0usize;
    let started = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..EVENTS / chunk_events {
            let mut value = payload.clone();
            value[..8].copy_from_slice(&seq.to_be_bytes());
            tree.insert(seq.to_be_bytes(), value).unwrap();
            seq += chunk_events as u64;
        }
        db.flush().unwrap();
        // The indexer reads what was just written.
        let _ = tree.range(..=(seq - 1).to_be_bytes()).next_back();
        events += EVENTS;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "{name:<48} {rate:>10.0} events/s  ({} MiB on disk)",
        db.size_on_disk().unwrap() >> 20
    );
}

fn main() {
    let secs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    run(
        "one value per batch, default 512 KiB segments",
        None,
        EVENTS,
        secs,
    );
    run(
        "one value per batch, 8 MiB segments",
        Some(8 << 20),
        EVENTS,
        secs,
    );
    run("64-event chunks, default segments", None, 64, secs);
    run("16-event chunks, default segments", None, 16, secs);
    run("64-event chunks, 8 MiB segments", Some(8 << 20), 64, secs);
}
