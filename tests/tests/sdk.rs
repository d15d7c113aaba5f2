//! The Rust SDK (`auditrail-sdk`) against a real auditrail: events from
//! `emit` and `emit_durable` are stored with the canonical fields and the
//! trace context of OpenTelemetry and `tracing` spans; `emit_durable` fails
//! closed (auditrail down, hung, refusing the token, rejecting the event,
//! pushing back) and nothing is stored then; the SDK's example axum service
//! audits its requests and refuses a deletion it cannot audit.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use auditrail_sdk::{Auditor, DurableError, Outcome};
use auditrail_tests::tls::TestPki;
use auditrail_tests::{build_example, eventually, eventually_within, free_port, Server, Setup};
use opentelemetry::trace::{TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const ACME: &str = "acme-writer-token-3c7e1a9f5b";
const OPERATOR: &str = "operator-token-8d2b6f0a4e";

/// A server where acme writes with its token and the operator reads
/// everything; `receiver` keys and further `tables` added.
fn server_with(receiver: &str, tables: &str) -> Server {
    Server::start_setup(Setup {
        receiver,
        admin: "token_env = \"OPERATOR_TOKEN\"",
        tables: &format!(
            "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\n{tables}"
        ),
        env: &[("OPERATOR_TOKEN", OPERATOR), ("ACME_TOKEN", ACME)],
        ..Setup::default()
    })
}

/// acme's auditor for `server`, as a service would build it.
fn auditor(server: &Server) -> Auditor {
    Auditor::builder()
        .endpoint(server.grpc_url())
        .token(ACME)
        .service_name("imagegen-ui")
        .build()
        .expect("an auditor")
}

/// The events matching `query`, read as the operator.
async fn events(server: &Server, query: &str) -> Vec<Value> {
    server.events_as(OPERATOR, query).await
}

/// The single event of `trace_id`.
async fn the_event_of(server: &Server, trace_id: &str) -> Value {
    let found = events(server, &format!("trace_id={trace_id}")).await;
    assert_eq!(found.len(), 1, "one event in trace {trace_id}: {found:?}");
    found.into_iter().next().expect("one")
}

/// An event's attributes (JSON text in the admin API) as an object.
fn attributes(event: &Value) -> Value {
    serde_json::from_str(event["attributes"].as_str().expect("attributes text"))
        .expect("attributes are JSON")
}

/// The trace and span id of `cx`'s span, in hex.
fn ids(cx: &Context) -> (String, String) {
    let span = cx.span();
    let span = span.span_context();
    assert!(span.is_valid(), "a span to record events in");
    (span.trace_id().to_string(), span.span_id().to_string())
}

/// A context holding a new span of the OpenTelemetry SDK.
fn otel_span(name: &'static str) -> Context {
    let tracer = SdkTracerProvider::builder().build().tracer("sdk-test");
    Context::current_with_span(tracer.start(name))
}

#[tokio::test(flavor = "multi_thread")]
async fn emitted_events_are_stored_with_canonical_fields_in_their_span() {
    let server = server_with("", "");
    let auditor = auditor(&server);

    // emit_durable, in an OpenTelemetry span.
    let cx = otel_span("delete-image");
    let (trace_id, span_id) = ids(&cx);
    let event = {
        let _in_span = cx.attach();
        auditor
            .event("image.delete")
            .actor("u-42", "Alice")
            .client("198.51.100.4")
            .outcome(Outcome::Success)
            .target("outputs/cat.png")
            .attr("gen_ai.request.model", "sdxl")
            .body("a cat as a judge, deleted")
    };
    event.emit_durable().await.expect("stored durably");
    // Acknowledged means stored: the event is there without waiting.
    let e = the_event_of(&server, &trace_id).await;
    assert_eq!(e["event_id"], event.event_uid(), "log.record.uid");
    assert_eq!(e["span_id"], span_id);
    assert_eq!(e["trace_flags"], 1);
    assert_eq!(e["event_name"], "image.delete");
    assert_eq!(e["actor_id"], "u-42");
    assert_eq!(e["actor_name"], "Alice");
    assert_eq!(e["client_address"], "198.51.100.4");
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["target"], "outputs/cat.png");
    assert_eq!(e["body"], "a cat as a judge, deleted");
    assert_eq!(e["service_name"], "imagegen-ui");
    assert_eq!(e["scope_name"], auditrail_sdk::SCOPE_NAME);
    assert_eq!(e["tenant"], "acme", "the token's tenant");
    assert_eq!(e["severity_number"], 9);
    assert_eq!(attributes(&e)["gen_ai.request.model"], "sdxl");

    // Sending the same event again (as after a lost answer) stores nothing new.
    event
        .emit_durable()
        .await
        .expect("the resend is acknowledged");
    the_event_of(&server, &trace_id).await;

    // emit, batched, in another span.
    let cx = otel_span("generate-image");
    let (trace_id, span_id) = ids(&cx);
    let event = {
        let _in_span = cx.attach();
        auditor
            .event("image.generate")
            .actor_id("u-7")
            .outcome(Outcome::Failure)
            .target("outputs/dog.png")
            .body("a dog in a spacesuit, batched")
    };
    let uid = event.event_uid().to_owned();
    event.emit();
    // The flush returns once the export is answered: stored by then.
    auditor.flush().await.expect("flushed");
    let e = the_event_of(&server, &trace_id).await;
    assert_eq!(e["event_id"], uid);
    assert_eq!(e["span_id"], span_id);
    assert_eq!(e["event_name"], "image.generate");
    assert_eq!(e["actor_id"], "u-7");
    assert_eq!(e["outcome"], "failure");
    assert_eq!(e["target"], "outputs/dog.png");
    assert_eq!(e["tenant"], "acme");
    auditor.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_take_the_trace_context_of_tracing_spans() {
    let server = server_with("", "");
    let auditor = auditor(&server);
    // With context activation (tracing-opentelemetry's default) the span is
    // in OpenTelemetry's current context too; without it, only the tracing
    // span has it.
    for activation in [true, false] {
        let tracer = SdkTracerProvider::builder().build().tracer("sdk-test");
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_context_activation(activation),
        );
        let _subscriber = tracing::subscriber::set_default(subscriber);
        let span = tracing::info_span!("update-model-config");
        let (trace_id, span_id) = ids(&span.context());

        async {
            assert_eq!(
                Context::current().has_active_span(),
                activation,
                "what this round tests"
            );
            auditor
                .event("model_config.update")
                .actor_id("admin")
                .target("models/sdxl")
                .emit_durable()
                .await
                .expect("stored durably");
        }
        .instrument(span.clone())
        .await;
        span.in_scope(|| auditor.event("dataset.read").actor_id("admin").emit());
        auditor.flush().await.expect("flushed");

        let mut found = events(&server, &format!("trace_id={trace_id}")).await;
        found.sort_by_key(|e| e["event_name"].as_str().map(str::to_owned));
        let names: Vec<_> = found.iter().map(|e| &e["event_name"]).collect();
        assert_eq!(
            names,
            ["dataset.read", "model_config.update"],
            "activation {activation}"
        );
        for e in &found {
            assert_eq!(e["span_id"], span_id, "activation {activation}: {e}");
        }
    }
}

/// Sends one event durably to `endpoint`, waiting at most `timeout`: the
/// error (there must be one) and how long it took to come.
async fn durable_failure(endpoint: String, timeout: Duration) -> (DurableError, Duration) {
    let auditor = Auditor::builder()
        .endpoint(endpoint)
        .durable_timeout(timeout)
        .build()
        .expect("an auditor");
    let started = Instant::now();
    let err = auditor
        .event("image.delete")
        .emit_durable()
        .await
        .expect_err("no auditrail, no ack");
    (err, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_durable_fails_closed_when_auditrail_is_down_or_hung() {
    // Nothing listens: refused at once.
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let (err, took) = durable_failure(nothing, Duration::from_secs(5)).await;
    assert!(matches!(err, DurableError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("refused"),
        "names the cause: {err}"
    );
    assert!(err.is_retryable());
    assert!(
        took < Duration::from_secs(2),
        "a refused connection fails without waiting for the timeout: {took:?}"
    );

    // A port that takes connections and never answers (a hung host): the
    // timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let hung = format!("http://{}", listener.local_addr().expect("its address"));
    let timeout = Duration::from_millis(700);
    let (err, took) = durable_failure(hung, timeout).await;
    assert!(matches!(err, DurableError::Timeout { .. }), "{err:?}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_durable_reports_what_auditrail_refuses_and_nothing_is_stored() {
    let server = server_with("max_event_bytes = \"1KiB\"", "");

    // A login event sent with `token` (none when `None`), and its refusal.
    let refused = |token: Option<&'static str>| {
        let mut builder = Auditor::builder().endpoint(server.grpc_url());
        if let Some(token) = token {
            builder = builder.token(token);
        }
        async move {
            builder
                .build()
                .expect("an auditor")
                .event("user.login")
                .actor_id("mallory")
                .emit_durable()
                .await
                .expect_err("refused")
        }
    };

    // A wrong token, and none.
    for token in [Some("not-a-writer-token"), None] {
        let err = refused(token).await;
        assert!(
            matches!(err, DurableError::Unauthenticated { .. }),
            "{token:?}: {err:?}"
        );
        assert!(!err.is_retryable());
    }

    // The operator's token reads; it writes no events.
    let err = refused(Some(OPERATOR)).await;
    assert!(
        matches!(err, DurableError::PermissionDenied { .. }),
        "{err:?}"
    );

    // An event over max_event_bytes: rejected in partial_success.
    let auditor = auditor(&server);
    let err = auditor
        .event("image.generate")
        .actor_id("bob")
        .body("x".repeat(4096))
        .emit_durable()
        .await
        .expect_err("rejected");
    match &err {
        DurableError::Rejected { reason } => {
            assert!(
                reason.contains("max_event_bytes"),
                "names the limit: {reason}"
            )
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!err.is_retryable());

    for actor in ["mallory", "bob"] {
        let stored = events(&server, &format!("actor={actor}")).await;
        assert!(stored.is_empty(), "nothing of {actor} stored: {stored:?}");
    }
    // The same auditor's next, fine event goes in.
    auditor
        .event("image.generate")
        .actor_id("bob")
        .body("small")
        .emit_durable()
        .await
        .expect("a fine event is stored");
    assert_eq!(events(&server, "actor=bob").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_durable_reports_backpressure_with_the_retry_hint() {
    let server = server_with(
        "",
        "[receiver.rate_limit]\nevents_per_second = 1\nburst = \"1s\"\n",
    );
    let auditor = auditor(&server);
    let mut refused = None;
    for i in 0..5 {
        let actor = format!("caller-{i}");
        let event = auditor.event("api.request").actor_id(actor.clone());
        if let Err(err) = event.emit_durable().await {
            refused = Some((actor, event, err));
            break;
        }
    }
    let (actor, event, err) = refused.expect("1 event/s: refused within 5 events");
    let DurableError::Backpressure {
        retry_after: Some(after),
        ..
    } = err
    else {
        panic!("expected Backpressure with a retry hint, got {err:?}");
    };
    assert!(err.is_retryable());
    assert!(after <= Duration::from_secs(2), "{after:?}");
    assert!(
        events(&server, &format!("actor={actor}")).await.is_empty(),
        "refused, so not stored"
    );
    // Retried after the hint, the same event goes in.
    tokio::time::sleep(after).await;
    event.emit_durable().await.expect("accepted after the hint");
    let stored = events(&server, &format!("actor={actor}")).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["event_id"], event.event_uid());
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_durable_over_tls_trusts_the_given_ca_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(dir.path());
    let server = server_with(
        "",
        &format!(
            "[receiver.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    );
    let endpoint = format!("https://localhost:{}", server.grpc.port());
    let ca = std::fs::read(&pki.ca).expect("the CA");
    let trusting = Auditor::builder()
        .endpoint(&endpoint)
        .ca_certificate(ca)
        .token(ACME)
        .build()
        .expect("an auditor");
    trusting
        .event("user.login")
        .actor_id("tls-user")
        .emit_durable()
        .await
        .expect("stored over TLS");
    assert_eq!(events(&server, "actor=tls-user").await.len(), 1);

    // Without the CA, only public roots are trusted: the test CA is not.
    let untrusting = Auditor::builder()
        .endpoint(&endpoint)
        .token(ACME)
        .build()
        .expect("an auditor");
    let err = untrusting
        .event("user.login")
        .actor_id("tls-user")
        .emit_durable()
        .await
        .expect_err("an unknown issuer");
    assert!(matches!(err, DurableError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// The SDK's example service, running; killed when dropped.
struct ExampleService {
    child: Child,
    log: PathBuf,
    url: String,
}

impl ExampleService {
    /// Starts `examples/axum_service.rs` writing to `server` with acme's
    /// token, and waits until it listens.
    async fn start(server: &Server, dir: &std::path::Path) -> ExampleService {
        let port = free_port();
        let log = dir.join("axum_service.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(build_example("auditrail-sdk", "axum_service"))
            .env("AUDITRAIL_ENDPOINT", server.grpc_url())
            .env("AUDITRAIL_TOKEN", ACME)
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDIT_TIMEOUT_MS", "2000")
            // Batches every 100ms: the test waits less.
            .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting the example service");
        let service = ExampleService {
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        };
        eventually("the example service listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        service
    }

    /// `method path` as user `user`, with `traceparent` if given: the
    /// status and the body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &str,
        traceparent: Option<&str>,
    ) -> (u16, String) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .header("x-user-id", user)
            .body(format!("a prompt for {path}"));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExampleService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_axum_example_audits_its_requests_and_refuses_unaudited_deletes() {
    use reqwest::Method;
    let mut server = server_with("", "");
    let dir = tempfile::tempdir().expect("temp dir");
    let service = ExampleService::start(&server, dir.path()).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let calls = [
        (
            Method::PUT,
            "/images/cat",
            "alice",
            Some(traceparent.as_str()),
            201,
        ),
        (Method::GET, "/images/cat", "bob", None, 200),
        (Method::GET, "/nowhere", "bob", None, 404),
        (Method::DELETE, "/images/cat", "alice", None, 204),
        (Method::GET, "/images/cat", "alice", None, 404),
        (Method::PUT, "/images/dog", "carol", None, 201),
    ];
    for (method, path, user, traceparent, expected) in calls.clone() {
        let (status, body) = service.call(method.clone(), path, user, traceparent).await;
        assert_eq!(
            status,
            expected,
            "{method} {path}: {body}\n{}",
            service.log()
        );
    }

    // Every request is an http.request event (batched, so: eventually).
    let requests = "service=imagegen-api&event=http.request";
    eventually("an http.request event per request", || async {
        events(&server, requests).await.len() == calls.len()
    })
    .await;
    let mut found = events(&server, requests).await;
    found.sort_by_key(|e| e["seq"].as_u64());
    for (e, (method, path, user, _, status)) in found.iter().zip(&calls) {
        let attrs = attributes(e);
        assert_eq!(attrs["http.request.method"], method.as_str(), "{e}");
        assert_eq!(attrs["http.response.status_code"], *status, "{e}");
        assert_eq!(e["actor_id"], *user, "{e}");
        assert_eq!(e["target"], *path, "{e}");
        assert_eq!(e["client_address"], "127.0.0.1", "{e}");
        assert_eq!(e["tenant"], "acme");
        let outcome = if *status < 400 { "success" } else { "failure" };
        assert_eq!(e["outcome"], outcome, "{e}");
        let route = if *path == "/nowhere" {
            Value::Null
        } else {
            Value::from("/images/{id}")
        };
        assert_eq!(attrs["http.route"], route, "{e}");
        assert_eq!(e["trace_id"].as_str().map(str::len), Some(32), "{e}");
    }
    // The caller's trace goes on in the service: its request, and the
    // image.generate event of its handler, carry the caller's trace id.
    let in_trace = events(&server, &format!("trace_id={trace_id}")).await;
    let mut names: Vec<_> = in_trace.iter().map(|e| e["event_name"].clone()).collect();
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, ["http.request", "image.generate"], "{in_trace:?}");

    // The durable deletion record.
    let deletes = events(&server, "event=image.delete").await;
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["actor_id"], "alice");
    assert_eq!(deletes[0]["target"], "images/cat");

    // auditrail down: the deletion is refused and the image kept.
    server.kill9();
    let (status, body) = service
        .call(Method::DELETE, "/images/dog", "carol", None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("could not be audited"), "{body}");
    let (status, _) = service
        .call(Method::GET, "/images/dog", "carol", None)
        .await;
    assert_eq!(status, 200, "the image is still there");

    // auditrail back: the deletion goes through, audited.
    server.restart();
    eventually_within(
        Duration::from_secs(15),
        "the deletion once auditrail is back",
        || async {
            service
                .call(Method::DELETE, "/images/dog", "carol", None)
                .await
                .0
                == 204
        },
    )
    .await;
    let deletes = events(&server, "event=image.delete&actor=carol").await;
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["target"], "images/dog");
}
