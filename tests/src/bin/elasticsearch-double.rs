//! The Elasticsearch / OpenSearch protocol double
//! (`auditrail_tests::elasticsearch`) as a process of its own, for
//! `scripts/bench-sinks`: the sink under test and the double then share
//! the machine's cores as a real cluster would, and the double's own cost
//! (parsing and mapping-checking every document on one lock) bounds what
//! the benchmark can measure.
//!
//! ```sh
//! elasticsearch-double 127.0.0.1:19200 [--opensearch] [--keep-sources]
//! curl -s 127.0.0.1:19200/_count     # {"count":N,...}
//! ```
//!
//! By default it keeps only each document's `(index, _id)` and
//! `auditrail.node`/`seq`, not its source, so a backlog of millions fits.

use std::net::SocketAddr;

use auditrail_tests::elasticsearch::{router, shared, Flavor};

fn main() {
    let mut addr: Option<SocketAddr> = None;
    let mut flavor = Flavor::Elasticsearch;
    let mut keep_sources = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--opensearch" => flavor = Flavor::OpenSearch,
            "--keep-sources" => keep_sources = true,
            other => match other.parse() {
                Ok(a) if addr.is_none() => addr = Some(a),
                _ => {
                    eprintln!("usage: elasticsearch-double ADDR [--opensearch] [--keep-sources]");
                    std::process::exit(2);
                }
            },
        }
    }
    let Some(addr) = addr else {
        eprintln!("usage: elasticsearch-double ADDR [--opensearch] [--keep-sources]");
        std::process::exit(2);
    };
    let cluster = shared(flavor);
    cluster.lock().expect("cluster lock").keep_sources = keep_sources;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        eprintln!("elasticsearch-double ({flavor:?}) listening on {addr}");
        axum::serve(listener, router(cluster))
            .await
            .expect("serving");
    });
}
