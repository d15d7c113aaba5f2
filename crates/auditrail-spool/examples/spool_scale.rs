//! Queries and restart of a spool that holds millions of events (issue 12).
//!
//! ```text
//! cargo build --release -p auditrail-spool --example spool_scale
//! target/release/examples/spool_scale build DIR 10000000   # fills DIR through Spool::append
//! target/release/examples/spool_scale index DIR             # waits for the full-text index to catch up
//! target/release/examples/spool_scale measure DIR           # 3 rounds: open, dedup memory, queries
//! ```
//!
//! `build` appends ~1 KiB events (a few thousand actors, one busy service
//! account with a tenth of the events, a trace id on 30% of them in runs of
//! 5, bodies of words) through the spool's public API, 8 appends in flight
//! so that group commits fill up, then waits for the indexes to catch up.
//! `measure` opens the spool three times (median reported) and, each time,
//! times `Spool::open` (what a restart waits for), the bytes allocated while
//! opening it (a counting allocator: the dedup set, with sled's cache held to
//! 8 MiB so that it does not blur the figure) and the RSS it added, then the
//! queries of the issue's targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auditrail_model::AuditEvent;
use auditrail_spool::{Filter, Spool, SpoolConfig};

/// Counts the bytes live on the heap, so that what opening a spool keeps
/// in memory is measured rather than computed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The actor of a tenth of the events: a query with many matches.
const BUSY_ACTOR: &str = "svc-batch";
/// The actor of one event in a million: a query with few matches.
const RARE_ACTOR: &str = "auditor-7";
/// In the body of one event in a million.
const RARE_WORD: &str = "zanzibarite";
/// In no event.
const ABSENT_WORD: &str = "qqxyzzyqq";
const ACTORS: u64 = 3000;
const WORDS: &[&str] = &[
    "login",
    "logout",
    "granted",
    "denied",
    "session",
    "token",
    "refresh",
    "password",
    "reset",
    "policy",
    "role",
    "admin",
    "viewer",
    "editor",
    "bucket",
    "object",
    "download",
    "upload",
    "delete",
    "create",
    "update",
    "invoice",
    "payment",
    "refund",
    "order",
    "customer",
    "account",
    "billing",
    "export",
    "import",
    "report",
    "dashboard",
    "cluster",
    "node",
    "deploy",
    "rollback",
    "secret",
    "rotate",
    "key",
    "certificate",
    "expired",
    "renewed",
    "firewall",
    "rule",
    "network",
    "subnet",
    "gateway",
    "request",
    "response",
    "timeout",
    "retry",
    "quota",
    "limit",
    "exceeded",
    "approved",
    "rejected",
    "pending",
    "review",
    "ticket",
    "incident",
    "alert",
    "acknowledged",
    "resolved",
    "escalated",
    "from",
    "the",
    "with",
    "after",
    "before",
    "by",
    "for",
    "on",
    "via",
];

/// splitmix64: a fast, reproducible stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The trace id of trace number `n` (5 consecutive traced events share one).
fn trace_id(n: u64) -> String {
    let mut rng = Rng(n ^ 0x0074_7261_6365);
    format!("{:016x}{:016x}", rng.next(), rng.next())
}

fn event(i: u64, rng: &mut Rng, now: u64) -> AuditEvent {
    let r = rng.next();
    let actor = if i % 1_000_000 == 500_000 {
        RARE_ACTOR.to_owned()
    } else if r.is_multiple_of(10) {
        BUSY_ACTOR.to_owned()
    } else {
        format!("user-{}", (r >> 8) % ACTORS)
    };
    let mut body = String::with_capacity(700);
    while body.len() < 600 {
        let w = rng.next();
        body.push_str(WORDS[(w % WORDS.len() as u64) as usize]);
        body.push(' ');
        if w.is_multiple_of(7) {
            body.push_str(&format!("#{} ", (w >> 16) % 1_000_000));
        }
    }
    if i % 1_000_000 == 250_000 {
        body.push_str(RARE_WORD);
    }
    let trace = if (i / 5) % 10 < 3 {
        trace_id(i / 5)
    } else {
        String::new()
    };
    AuditEvent {
        event_id: format!("{:016x}-{i}", r),
        time_unix_nano: now + i * 1000,
        observed_time_unix_nano: now + i * 1000,
        received_time_unix_nano: now,
        tenant: "default".into(),
        service_name: format!("service-{}", r % 12),
        event_name: ["user.login", "object.read", "object.write", "role.grant"]
            [(r >> 4) as usize % 4]
            .into(),
        severity_number: 9,
        severity_text: "INFO".into(),
        actor_id: actor,
        actor_name: String::new(),
        client_address: format!("10.{}.{}.{}", r % 256, (r >> 8) % 256, (r >> 16) % 256),
        target: format!("bucket/{}/object-{}", r % 100, (r >> 20) % 100_000),
        trace_id: trace,
        span_id: format!("{:016x}", rng.next()),
        body,
        attributes: format!(
            r#"{{"http.method":"GET","http.route":"/api/v1/items/{}","user_agent":"Mozilla/5.0 (X11; Linux x86_64) client/{}"}}"#,
            r % 100_000,
            r % 97
        ),
        resource_attributes: r#"{"host.name":"web-3","service.version":"1.4.2"}"#.into(),
        scope_name: "audit".into(),
        ..Default::default()
    }
}

fn config(dir: &str, cache_bytes: u64) -> SpoolConfig {
    let mut config = SpoolConfig::new(dir, "bench");
    config.max_disk_bytes = 1 << 40;
    config.retention = Duration::from_secs(365 * 24 * 3600);
    config.cache_bytes = cache_bytes;
    config
}

fn wait_indexed(spool: &Spool) {
    let started = Instant::now();
    loop {
        let stats = spool.stats();
        if stats.indexed_seq >= stats.last_seq {
            eprintln!("indexed after {:.1?}", started.elapsed());
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn build(dir: &str, total: u64) {
    let spool = std::sync::Arc::new(Spool::open(config(dir, 256 << 20)).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let start = spool.stats().last_seq;
    let chunk = 2048u64;
    let in_flight = 8u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..in_flight {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(lane);
            let mut next = start + lane * chunk;
            while next < start + total {
                let end = (next + chunk).min(start + total);
                let events = (next..end).map(|i| event(i, &mut rng, now)).collect();
                spool.append(events).await.unwrap();
                next += in_flight * chunk;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "appended {total} events in {secs:.1} s ({:.0} events/s)",
        total as f64 / secs
    );
    wait_indexed(&spool);
    let spool = std::sync::Arc::into_inner(spool).unwrap();
    eprintln!("{:?}", spool.stats());
    spool.close().unwrap();
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn measure(dir: &str) {
    let queries: Vec<(&str, Filter)> = vec![
        (
            "--actor (few matches) --limit 10",
            Filter {
                actor: Some(RARE_ACTOR.into()),
                limit: 10,
                ..Default::default()
            },
        ),
        (
            "--actor (1/10 of events) --limit 10",
            Filter {
                actor: Some(BUSY_ACTOR.into()),
                limit: 10,
                ..Default::default()
            },
        ),
        (
            "--actor user-17 --limit 10",
            Filter {
                actor: Some("user-17".into()),
                limit: 10,
                ..Default::default()
            },
        ),
        (
            "--trace-id (5 matches)",
            Filter {
                trace_id: Some(trace_id(1_000_001)),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "--text rare word --limit 10",
            Filter {
                text: Some(RARE_WORD.into()),
                limit: 10,
                ..Default::default()
            },
        ),
        (
            "--text no match --limit 10",
            Filter {
                text: Some(ABSENT_WORD.into()),
                limit: 10,
                ..Default::default()
            },
        ),
    ];
    let rounds = 3;
    let mut open_s = Vec::new();
    let mut heap = Vec::new();
    let mut rss = Vec::new();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); queries.len()];
    let mut events = 0;
    for round in 0..rounds {
        let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
        let started = Instant::now();
        let spool = Spool::open(config(dir, 8 << 20)).unwrap();
        open_s.push(started.elapsed().as_secs_f64());
        heap.push((LIVE.load(Ordering::Relaxed) - heap0) as f64);
        rss.push(rss_bytes().saturating_sub(rss0) as f64);
        events = spool.stats().events;
        for (i, (name, filter)) in queries.iter().enumerate() {
            let started = Instant::now();
            let found = spool.query(filter).unwrap();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            times[i].push(ms);
            eprintln!("round {round}: {name}: {} found in {ms:.1} ms", found.len());
        }
        spool.close().unwrap();
        drop(spool);
    }
    let per_event = |v: f64| v / events.max(1) as f64;
    println!("events retained: {events}");
    println!(
        "open (ready): median {:.2} s of {:?}",
        median(open_s.clone()),
        open_s
    );
    let h = median(heap);
    let r = median(rss);
    println!(
        "heap kept by open: median {:.1} MB = {:.1} B/event; RSS added: {:.1} MB = {:.1} B/event",
        h / 1e6,
        per_event(h),
        r / 1e6,
        per_event(r)
    );
    for (i, (name, _)) in queries.iter().enumerate() {
        println!(
            "{name}: median {:.1} ms of {:?}",
            median(times[i].clone()),
            times[i]
        );
    }
}

fn main() {
    // The spool's own log, e.g. where opening it spent its time.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "auditrail_spool=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("build") => {
            let total = args.get(3).map_or(10_000_000, |n| n.parse().unwrap());
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(build(&args[2], total));
        }
        Some("measure") => measure(&args[2]),
        Some("index") => {
            // Waits for the full-text index to cover the spool (after an
            // upgrade, or with the index removed: how long a rebuild takes).
            let spool = Spool::open(config(&args[2], 256 << 20)).unwrap();
            let started = Instant::now();
            loop {
                let stats = spool.stats();
                if stats.fulltext_seq >= stats.last_seq {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!(
                "full-text index caught up with {} events in {:.1?}",
                spool.stats().events,
                started.elapsed()
            );
            spool.close().unwrap();
        }
        _ => eprintln!("usage: spool_scale build DIR [EVENTS] | measure DIR"),
    }
}
