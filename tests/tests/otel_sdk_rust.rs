//! The real Rust OpenTelemetry SDK (`opentelemetry-otlp`) sends audit events
//! over gRPC, HTTP/protobuf and HTTP/JSON from inside a span; each event is
//! found again by its trace id with the canonical fields filled in.

use auditrail_tests::{sinks, Server};
use opentelemetry::logs::{AnyValue, LogRecord as _, Severity};
use opentelemetry_otlp::{LogExporter, Protocol, WithExportConfig};

/// Emits one `image.generate` event inside a fresh span and returns the
/// span's (trace id, span id) in hex.
fn emit_in_span(exporter: LogExporter, actor: &'static str, prompt: &str) -> (String, String) {
    sinks::emit_in_span(exporter, |record| {
        record.set_severity_number(Severity::Info);
        record.set_body(AnyValue::from(prompt.to_owned()));
        record.add_attribute("user.id", actor);
        record.add_attribute("client.address", "198.51.100.4");
        record.add_attribute("audit.outcome", "success");
        record.add_attribute("audit.target", "model/sdxl");
        record.add_attribute("image.count", 2_i64);
    })
}

async fn assert_found(server: &Server, trace_id: &str, span_id: &str, actor: &str, prompt: &str) {
    let events = server.events(&format!("trace_id={trace_id}")).await;
    assert_eq!(
        events.len(),
        1,
        "exactly one event for trace {trace_id}: {events:?}"
    );
    let e = &events[0];
    assert_eq!(e["span_id"], span_id);
    assert_eq!(e["trace_flags"], 1, "sampled");
    assert_eq!(e["event_name"], "image.generate");
    assert_eq!(e["actor_id"], actor);
    assert_eq!(e["client_address"], "198.51.100.4");
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["target"], "model/sdxl");
    assert_eq!(e["service_name"], "imagegen-ui");
    assert_eq!(e["scope_name"], "audit");
    assert_eq!(e["body"], prompt);
    assert_eq!(e["severity_number"], 9);
    assert_eq!(e["node"], "test-node");
    assert!(e["attributes"]
        .as_str()
        .unwrap()
        .contains(r#""image.count":2"#));
    assert_eq!(e["event_id"].as_str().unwrap().len(), 32, "content-hash id");
    assert_eq!(
        e["trace_url"],
        format!("http://tempo.example/trace/{trace_id}")
    );
    // And through the query filters a user would type.
    let by_actor = server
        .events(&format!("actor={actor}&event=image.generate&since=1h"))
        .await;
    assert_eq!(by_actor.len(), 1, "{by_actor:?}");
    let by_text = server.events(&format!("text={}", &prompt[..12])).await;
    assert_eq!(by_text.len(), 1, "{by_text:?}");
}

const TRACE_URL: &str = "[query]\ntrace_url = \"http://tempo.example/trace/{trace_id}\"";

/// Emits one event through `exporter` (built on a blocking thread, as the
/// SDK's HTTP client wants) and checks that it arrived.
async fn round_trip(
    server: &Server,
    exporter: impl FnOnce() -> LogExporter + Send + 'static,
    actor: &'static str,
    prompt: &'static str,
) {
    let (trace, span) =
        tokio::task::spawn_blocking(move || emit_in_span(exporter(), actor, prompt))
            .await
            .unwrap();
    assert_found(server, &trace, &span, actor, prompt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_exporter() {
    let server = Server::start_with("", TRACE_URL);
    let url = server.grpc_url();
    let exporter = move || {
        LogExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .build()
            .unwrap()
    };
    round_trip(&server, exporter, "alice", "a lighthouse in a storm, grpc").await;
}

fn http_exporter(url: String, protocol: Protocol) -> impl FnOnce() -> LogExporter + Send {
    move || {
        LogExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(url)
            .build()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_protobuf_exporter() {
    let server = Server::start_with("", TRACE_URL);
    let exporter = http_exporter(server.http_logs_url(), Protocol::HttpBinary);
    round_trip(
        &server,
        exporter,
        "bob",
        "a city at night in the rain, protobuf",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_json_exporter() {
    let server = Server::start_with("", TRACE_URL);
    let exporter = http_exporter(server.http_logs_url(), Protocol::HttpJson);
    round_trip(
        &server,
        exporter,
        "carol",
        "a portrait of a cat as a judge, json",
    )
    .await;
}
