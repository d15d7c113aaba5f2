//! The real Python OpenTelemetry SDK (`opentelemetry-sdk` and
//! `opentelemetry-exporter-otlp` from PyPI) sends audit events through the
//! stdlib `logging` module over gRPC and HTTP.
//!
//! The venv comes from `scripts/python-venv` (which `scripts/test` runs); its
//! python is taken from `AUDITRAIL_PYTHON`, else `target/pyvenv/bin/python`.
//! A missing venv fails the test: it is never skipped.

use std::path::PathBuf;
use std::process::Command;

use auditrail_tests::{python_venv, Server};
use serde_json::Value;

fn send(protocol: &str, endpoint: &str, actor: &str, uid_prefix: &str, count: u32) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/send_audit.py");
    let output = Command::new(python_venv())
        .arg(script)
        .args(["--protocol", protocol, "--endpoint", endpoint])
        .args([
            "--service",
            "dify-api",
            "--actor",
            actor,
            "--event",
            "dataset.read",
        ])
        .args(["--body", "read dataset contracts-2026 for a city plan"])
        .args(["--count", &count.to_string(), "--uid-prefix", uid_prefix])
        .output()
        .expect("running the Python client");
    assert!(
        output.status.success(),
        "Python SDK export failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints one JSON line")
}

async fn check(server: &Server, sent: &Value, actor: &str, uid_prefix: &str, count: usize) {
    let trace_id = sent["trace_id"].as_str().unwrap();
    let events = server.events(&format!("trace_id={trace_id}")).await;
    assert_eq!(events.len(), count, "{events:?}");
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..count).map(|i| format!("{uid_prefix}-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "log.record.uid becomes the event id");
    for e in &events {
        assert_eq!(e["actor_id"], actor);
        assert_eq!(
            e["event_name"], "dataset.read",
            "from the event.name attribute"
        );
        assert_eq!(e["service_name"], "dify-api");
        assert_eq!(e["span_id"], sent["span_id"]);
        assert_eq!(e["outcome"], "success");
        assert_eq!(e["severity_text"], "INFO");
        assert_eq!(e["body"], "read dataset contracts-2026 for a city plan");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_over_grpc_and_http() {
    let server = Server::start();
    let grpc = send("grpc", &server.grpc_url(), "dave", "py-grpc", 3);
    check(&server, &grpc, "dave", "py-grpc", 3).await;
    let http = send("http", &server.http_logs_url(), "erin", "py-http", 2);
    check(&server, &http, "erin", "py-http", 2).await;

    // A resend of the same records (same uids) is acknowledged, stored once.
    let again = send("http", &server.http_logs_url(), "erin", "py-http", 2);
    assert_ne!(again["trace_id"], http["trace_id"]);
    let all = server.events("actor=erin").await;
    assert_eq!(all.len(), 2, "resent uids are not stored twice: {all:?}");
    assert_eq!(server.metric("auditrail_duplicate_events_total").await, 2.0);
}
