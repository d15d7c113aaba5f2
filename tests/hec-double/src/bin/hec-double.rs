//! The HEC protocol double as a process of its own, for
//! `scripts/bench-sinks`: `hec-double --addr 127.0.0.1:28088 --token T
//! [--no-acks]`. It keeps counts, not events; `GET /double/stats` says how
//! many it indexed (copies and distinct event ids).

use auditrail_hec_double::{books, serve, Knobs};

fn main() {
    let mut knobs = Knobs {
        keep_events: false,
        ..Knobs::default()
    };
    let mut addr = "127.0.0.1:28088".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--addr" => addr = value("--addr"),
            "--token" => knobs.token = value("--token"),
            "--no-acks" => knobs.acks = false,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| usage(&format!("binding {addr}: {e}")));
        eprintln!(
            "hec-double listening on http://{addr} (acks: {})",
            knobs.acks
        );
        serve(listener, books(knobs)).await;
    });
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "hec-double: {problem}\nusage: hec-double [--addr HOST:PORT] [--token TOKEN] [--no-acks]"
    );
    std::process::exit(2);
}
