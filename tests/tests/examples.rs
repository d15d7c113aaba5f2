//! The examples in `examples/` (Python with the OpenTelemetry SDK, Node.js
//! with `@opentelemetry/sdk-logs`) run against a real auditrail, pointed at
//! it only through the standard `OTEL_EXPORTER_OTLP_*` variables, as a user
//! would; the events they audited are read back with their canonical fields.
//!
//! Python is the project's venv (`scripts/python-venv`), the Node modules are
//! `npm ci --prefix examples/node`: `scripts/test` installs both. A missing
//! one fails the test, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use auditrail_tests::{python_venv, Server, Setup};
use serde_json::Value;

const TENANT: &str = "studio";
const TOKEN: &str = "studio-writer-token-0123456789";

/// A server that takes writes only with [`TOKEN`] (tenant [`TENANT`]), so
/// the examples must send the token from `OTEL_EXPORTER_OTLP_HEADERS`.
fn server() -> Server {
    Server::start_setup(Setup {
        tables: &format!(
            "[[receiver.tokens]]\ntenant = \"{TENANT}\"\ntoken_env = \"STUDIO_TOKEN\"\n"
        ),
        env: &[("STUDIO_TOKEN", TOKEN)],
        ..Setup::default()
    })
}

fn examples_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// `node app.js ARGS` in examples/node, whose modules must be installed.
fn node_app(args: &[&str]) -> Command {
    let dir = examples_dir("node");
    let installed = dir.join("node_modules/@opentelemetry/sdk-logs/package.json");
    assert!(
        installed.exists(),
        "no Node modules in {}: run `npm ci --prefix examples/node` (scripts/test does)",
        dir.display()
    );
    let mut command = Command::new("node");
    command.current_dir(&dir).arg("app.js").args(args);
    command
}

/// `python app.py ARGS` in examples/python, with the venv's Python.
fn python_app(args: &[&str]) -> Command {
    let mut command = Command::new(python_venv());
    command
        .current_dir(examples_dir("python"))
        .arg("app.py")
        .args(args);
    command
}

/// Runs an example app with `env` as its only OTEL_* variables: its exit
/// status, its stderr, and the JSON line it printed per action.
fn run(mut app: Command, env: &[(&str, &str)], output_dir: &Path) -> (bool, String, Vec<Value>) {
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        app.env_remove(key);
    }
    let output = app
        .envs(env.iter().copied())
        .env("NANO_BANANA_OUTPUT", output_dir)
        .output()
        .unwrap_or_else(|e| panic!("running {app:?}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let steps = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{app:?} printed {line:?} ({e}); stderr:\n{stderr}"))
        })
        .collect();
    (output.status.success(), stderr, steps)
}

/// An event as the admin API returns it, with its attributes parsed.
struct Stored {
    event: Value,
    attributes: Value,
}

impl Stored {
    /// Checks `fields` (canonical field names, or `attributes.<key>`) have
    /// the values given.
    fn expect(&self, fields: &[(&str, &str)]) {
        for (name, want) in fields {
            let got = match name.strip_prefix("attributes.") {
                Some(key) => &self.attributes[key],
                None => &self.event[*name],
            };
            assert_eq!(got.as_str(), Some(*want), "{name} of {}", self.event);
        }
    }

    fn duration_ms(&self) -> Option<u64> {
        self.attributes["duration_ms"].as_u64()
    }
}

/// The stored event of an action, found by the trace id the app printed
/// (each action has its own span).
async fn event_of(server: &Server, step: &Value, stderr: &str) -> Stored {
    let trace_id = step["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace_id.len(), 32, "{step}");
    let events = server
        .events_as(TOKEN, &format!("trace_id={trace_id}"))
        .await;
    assert_eq!(
        events.len(),
        1,
        "one audit event for {step}, got {events:?}; the app's stderr:\n{stderr}"
    );
    let event = events.into_iter().next().unwrap();
    let attributes = match &event["attributes"] {
        Value::String(text) => serde_json::from_str(text).expect("attributes are JSON"),
        other => other.clone(),
    };
    Stored { event, attributes }
}

/// What differs between the two examples' sessions.
struct Session<'a> {
    /// The client's User-Agent, recorded as `device.name`.
    device: &'a str,
    /// The class of the error a refused generation raises.
    error_type: &'a str,
}

/// Checks the events of a demo session: a mistyped password, a login, a
/// generation, a refused generation, and the delete of the generated image.
async fn check_session(server: &Server, steps: &[Value], stderr: &str, session: Session<'_>) {
    let actions: Vec<&str> = steps
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["login", "login", "generate", "generate", "delete"],
        "{steps:?}\n{stderr}"
    );
    let generated = steps[2]["path"].as_str().expect("a generated image");
    let refusal = steps[3]["error"].as_str().expect("a refused generation");
    assert!(refusal.contains("unsupported aspect ratio"), "{refusal}");

    let mut events = Vec::new();
    for step in steps {
        let stored = event_of(server, step, stderr).await;
        // What every event of the session carries.
        let span_id = step["span_id"].as_str().expect("a span id");
        stored.expect(&[
            ("service_name", "nano-banana"),
            ("tenant", TENANT), // from the bearer token
            ("span_id", span_id),
            ("actor_id", "alice"),
            ("actor_name", "alice"),
            ("client_address", "127.0.0.1"),
            ("attributes.device.name", session.device),
        ]);
        let uid = stored.attributes["log.record.uid"]
            .as_str()
            .unwrap_or_default();
        assert!(uid.len() >= 32, "a log.record.uid: {}", stored.event);
        stored.expect(&[("event_id", uid)]);
        events.push(stored);
    }

    events[0].expect(&[
        ("event_name", "user.login"),
        ("outcome", "failure"),
        ("severity_text", "WARN"),
        ("attributes.error.message", "wrong user name or password"),
    ]);
    events[1].expect(&[
        ("event_name", "user.login"),
        ("outcome", "success"),
        ("severity_text", "INFO"),
    ]);
    assert_eq!(events[1].attributes.get("error.message"), None);
    events[2].expect(&[
        ("event_name", "image.generate"),
        ("outcome", "success"),
        ("severity_text", "INFO"),
        ("body", "a banana surfing a wave at sunset"),
        ("target", generated),
        ("attributes.gen_ai.request.model", "gemini-2.5-flash-image"),
        ("attributes.image.aspect_ratio", "16:9"),
    ]);
    assert!(events[2].duration_ms().is_some(), "{}", events[2].event);
    events[3].expect(&[
        ("event_name", "image.generate"),
        ("outcome", "failure"),
        ("severity_text", "WARN"),
        ("body", "a banana portrait"),
        ("target", ""), // nothing was made
        ("attributes.error.message", refusal),
        ("attributes.error.type", session.error_type),
        ("attributes.gen_ai.request.model", "gemini-2.5-flash-image"),
        ("attributes.image.aspect_ratio", "2:7"),
    ]);
    assert!(events[3].duration_ms().is_some(), "{}", events[3].event);
    events[4].expect(&[
        ("event_name", "image.delete"),
        ("outcome", "success"),
        ("target", generated), // the deleted file
        ("body", ""),
    ]);
    assert!(!Path::new(generated).exists(), "{generated} was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_example_audits_a_session() {
    let server = server();
    let output = tempfile::tempdir().expect("temp dir");
    // The SDK's default protocol (http/protobuf); it adds /v1/logs itself.
    let endpoint = format!("http://{}", server.http);
    let headers = format!("authorization=Bearer%20{TOKEN}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
    ];
    let app = python_app(&["--user-agent", "gradio-browser", "demo"]);
    let (ok, stderr, steps) = run(app, &env, output.path());
    assert!(ok, "the Python demo failed:\n{stderr}");
    let session = Session {
        device: "gradio-browser",
        error_type: "ValueError",
    };
    check_session(&server, &steps, &stderr, session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_example_over_grpc_records_a_failed_generation_and_exits_1() {
    let server = server();
    let output = tempfile::tempdir().expect("temp dir");
    let endpoint = server.grpc_url();
    let headers = format!("authorization=Bearer%20{TOKEN}");
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
    ];
    let prompt = "a banana in the style of 100% pop art";
    let args = [
        "--client-address",
        "198.51.100.23",
        "generate",
        "--user",
        "bob",
        "--prompt",
        prompt,
        "--model",
        "imagen-9",
    ];
    let (ok, stderr, steps) = run(python_app(&args), &env, output.path());
    assert!(!ok, "a failed generation fails the command: {steps:?}");
    assert_eq!(steps.len(), 1, "{steps:?}\n{stderr}");
    let error = steps[0]["error"].as_str().expect("the error shown");
    assert!(error.starts_with("unknown model 'imagen-9'"), "{error}");

    // Sent as the one-shot process exited; the actor from `acting_as`.
    let stored = event_of(&server, &steps[0], &stderr).await;
    stored.expect(&[
        ("event_name", "image.generate"),
        ("outcome", "failure"),
        ("actor_id", "bob"),
        ("actor_name", "bob"),
        ("client_address", "198.51.100.23"),
        ("attributes.device.name", "nano-banana-cli"),
        ("body", prompt),
        ("target", ""),
        ("attributes.error.type", "ValueError"),
        ("attributes.error.message", error),
        ("attributes.gen_ai.request.model", "imagen-9"),
        ("attributes.image.aspect_ratio", "1:1"), // the default
    ]);
    assert!(
        std::fs::read_dir(output.path()).map_or(true, |mut d| d.next().is_none()),
        "no image was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_example_audits_a_session_over_http_and_grpc() {
    let server = server();
    let headers = format!("authorization=Bearer%20{TOKEN}");
    let http = format!("http://{}", server.http);
    let grpc = server.grpc_url();
    // The exporters' default protocol (http/protobuf), then gRPC.
    let runs: [&[(&str, &str)]; 2] = [
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &http)],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &grpc),
        ],
    ];
    for env in runs {
        let output = tempfile::tempdir().expect("temp dir");
        let env: Vec<(&str, &str)> = [("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str())]
            .into_iter()
            .chain(env.iter().copied())
            .collect();
        let (ok, stderr, steps) = run(node_app(&["demo"]), &env, output.path());
        assert!(ok, "the Node demo failed ({env:?}):\n{stderr}");
        let statuses: Vec<&Value> = steps.iter().map(|s| &s["status"]).collect();
        assert_eq!(statuses, [401, 200, 201, 400, 204], "{steps:?}");
        let session = Session {
            device: "nano-banana-demo",
            error_type: "RequestError",
        };
        check_session(&server, &steps, &stderr, session).await;
    }
    let all = server.events_as(TOKEN, "service=nano-banana&limit=0").await;
    assert_eq!(all.len(), 10, "two sessions, nothing else: {all:?}");
}
