//! Redaction before the spool, end to end (issue 10, "Redaction"): events
//! carrying a known set of secrets (e-mail addresses, `sk-` API keys, phone
//! numbers, IPv4 and IPv6 addresses, user ids and names, a bearer token, a
//! prompt) are sent by the real Rust and Python OTel SDKs, as a tenant with
//! a token, to a server with redaction rules, capture settings, a MySQL
//! sink and a file sink. Then the raw bytes of every file of the spool and
//! of the file sink, every column of every SQL row and the server's log
//! are searched: no secret is anywhere in clear, while a marker sent
//! beside them is found in each (so the search could find them). HMAC'd
//! values equal what `auditrail hash` prints, and `auditrail query` finds
//! the user by it; a capped body and a body dropped by the `metadata`
//! level carry `audit.truncated_bytes` with the size as sent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use auditrail_tests::mysql::{text, Database, SinkToml};
use auditrail_tests::sinks::{assert_no_dead_letters, emit_in_span, wait_caught_up};
use auditrail_tests::{binary, eventually_within, files_under, python_venv, Server, Setup};
use opentelemetry::logs::{AnyValue, LogRecord as _, Severity};
use opentelemetry_otlp::{LogExporter, WithExportConfig, WithTonicConfig};
use serde_json::Value;
use sqlx::{Column, Row};

/// How long a sink may take to deliver, on a loaded two-core machine.
const DELIVERY: Duration = Duration::from_secs(90);

const ACME_TOKEN: &str = "acme-writer-token-0123456789abcdef";
const OPERATOR: &str = "operator-token-0123456789abcdef";
/// Key version 1 comes from the environment, version 2 from a file.
const KEY_V1: &str = "v1-key-material-0123456789abcdef0123456789abcdef";
const KEY_V2: &str = "v2-key-material-fedcba9876543210fedcba9876543210";

/// Sent beside the secrets, kept by every rule: found in every store, it
/// shows that the search for the secrets looks where they would be.
const MARKER: &str = "marker-kept-in-clear-4471";

const USER_ID: &str = "alice-7f3e";
const USER_NAME: &str = "Alice Liddell";
const EMAIL: &str = "alice.liddell@example.com";
const API_KEY: &str = "sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUv";
const PHONE: &str = "+1 415 555 0134";
const IPV4: &str = "203.0.113.77";
const IPV6: &str = "2001:db8::7";
const BEARER: &str = "Bearer eyJhbGciOiJIUzI1NiJ9.secret-session";
/// Python's client always sends `client.address` 203.0.113.7.
const PY_IPV4: &str = "203.0.113.7";
const PY_USER_ID: &str = "bob-93c1";
const PY_EMAIL: &str = "bob@example.org";
const PY_PHONE: &str = "+44 20 7946 0958";
const PY_API_KEY: &str = "sk-AbCdEf0123456789GhIjKlMnOpQrStUvWxYz0123";
const PROMPT_SECRET: &str = "carol@example.net";
/// Inside the capped body, past the cap.
const TAIL_SECRET: &str = "dave.tail@example.com";

const SECRETS: &[&str] = &[
    USER_ID,
    USER_NAME,
    "Liddell",
    EMAIL,
    API_KEY,
    PHONE,
    IPV4,
    IPV6,
    BEARER,
    PY_IPV4,
    PY_USER_ID,
    PY_EMAIL,
    PY_PHONE,
    PY_API_KEY,
    PROMPT_SECRET,
    TAIL_SECRET,
];

/// The capped body's size as sent.
const BIG_BODY: usize = 100_000;
const CAP: usize = 4096;

fn config_tables(key_file: &Path, db_url: &str, archive: &Path) -> String {
    let mysql = SinkToml::new("warehouse", db_url);
    format!(
        r#"
[[receiver.tokens]]
tenant = "acme"
token_env = "REDACT_ACME_TOKEN"

[[redaction.keys]]
tenant = "acme"
version = 1
key_env = "REDACT_ACME_HMAC_V1"

[[redaction.keys]]
tenant = "acme"
version = 2
key_file = {key_file:?}

[[redaction.rules]]
name = "user-ids"
attributes = ["user.id", "enduser.id"]
action = "hmac"

[[redaction.rules]]
attributes = ["user.name"]
action = "mask"
keep_prefix = 1

[[redaction.rules]]
attributes = ["http.request.header.authorization"]
action = "drop"

[[redaction.rules]]
name = "pii"
body = true
attributes = ["*"]
action = "regex"
patterns = ["email", "api_key", "phone", "ip"]

[capture]
level = "full"

[[capture.overrides]]
event = "chat.completion"
max_body_bytes = "{CAP}B"

[[capture.overrides]]
event = "chat.private"
level = "metadata"

{mysql}
[[sinks]]
name = "archive"
type = "file"
path = {archive:?}
compression = "none"
"#
    )
}

fn acme_exporter(grpc_url: String) -> LogExporter {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "authorization",
        format!("Bearer {ACME_TOKEN}").parse().unwrap(),
    );
    LogExporter::builder()
        .with_tonic()
        .with_endpoint(grpc_url)
        .with_metadata(metadata)
        .build()
        .expect("OTLP log exporter")
}

/// The Rust SDK's events: every kind of secret, and a body over the cap.
fn send_with_rust_sdk(grpc_url: String) {
    emit_in_span(acme_exporter(grpc_url.clone()), |record| {
        record.set_event_name("user.login");
        record.set_severity_number(Severity::Info);
        record.set_body(AnyValue::from(format!(
            "{MARKER}: login by {EMAIL} with key {API_KEY}, phone {PHONE}, from {IPV4} via {IPV6}"
        )));
        record.add_attribute("user.id", USER_ID);
        record.add_attribute("user.name", USER_NAME);
        record.add_attribute("client.address", IPV4);
        record.add_attribute("http.request.header.authorization", BEARER);
        record.add_attribute("note", format!("{MARKER} reach me at {EMAIL}"));
        record.add_attribute("audit.outcome", "success");
    });
    emit_in_span(acme_exporter(grpc_url), |record| {
        record.set_event_name("chat.completion");
        let mut body = format!("{MARKER} prompt from {EMAIL}: ");
        while body.len() < BIG_BODY / 2 {
            body.push_str("draw a lighthouse over a city at night. ");
        }
        body.push_str(TAIL_SECRET);
        while body.len() < BIG_BODY {
            body.push('.');
        }
        body.truncate(BIG_BODY);
        record.set_body(AnyValue::from(body));
        record.add_attribute("user.id", USER_ID);
    });
}

/// The Python SDK's events: secrets in the body and attributes of a
/// `dataset.read`, and a `chat.private` whose body and prompt the
/// `metadata` level drops.
fn send_with_python_sdk(grpc_url: &str) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/send_audit.py");
    let private_body = format!("{MARKER} my private question, mail {PROMPT_SECRET}");
    let runs = [
        (
            "dataset.read",
            format!("{MARKER} read by {PY_EMAIL}, call {PY_PHONE}, key {PY_API_KEY}"),
            vec![format!("contact={PY_EMAIL}")],
        ),
        (
            "chat.private",
            private_body.clone(),
            vec![format!("gen_ai.prompt=tell {PROMPT_SECRET} the plan")],
        ),
    ];
    for (event, body, attrs) in runs {
        let mut command = Command::new(python_venv());
        command
            .arg(&script)
            .args(["--protocol", "grpc", "--endpoint", grpc_url])
            .args(["--service", "dify-api", "--actor", PY_USER_ID])
            .args(["--event", event, "--body", &body])
            .args(["--header", &format!("authorization=Bearer {ACME_TOKEN}")]);
        for attr in attrs {
            command.args(["--attr", &attr]);
        }
        let output = command.output().expect("running the Python client");
        assert!(
            output.status.success(),
            "Python SDK export failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    vec![private_body]
}

/// `auditrail hash` as an investigator runs it: the lines it prints. The
/// value is given once as an argument and once on stdin (`-`, with a
/// newline after it), which must print the same.
fn auditrail_hash(config: &Path, value: &str) -> Vec<String> {
    let run = |arg: &str, stdin: Option<String>| {
        let mut child = Command::new(binary())
            .args(["hash", "--config"])
            .arg(config)
            .args(["--tenant", "acme", arg])
            .env("REDACT_ACME_HMAC_V1", KEY_V1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running auditrail hash");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "auditrail hash: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let lines = run(value, None);
    assert_eq!(run("-", Some(format!("{value}\n"))), lines, "from stdin");
    lines
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// No secret in any of `stores` (name, bytes), and the marker in at least
/// one of them.
fn assert_no_secret(what: &str, stores: &[(String, Vec<u8>)]) {
    for (name, bytes) in stores {
        for secret in SECRETS {
            assert!(
                !holds(bytes, secret),
                "{what}: {secret:?} in clear in {name}"
            );
        }
    }
    assert!(
        stores.iter().any(|(_, bytes)| holds(bytes, MARKER)),
        "{what}: the marker is in none of {:?}, so the search proves nothing",
        stores.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}

/// An event's attributes (the admin API gives them as canonical JSON text).
fn attrs(event: &Value) -> serde_json::Map<String, Value> {
    match &event["attributes"] {
        Value::String(json) => serde_json::from_str(json).expect("attributes are JSON"),
        Value::Object(map) => map.clone(),
        other => panic!("attributes: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_spool_the_sql_rows_or_the_file_sink_in_clear() {
    let db = Database::create().await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("acme-v2.key");
    std::fs::write(&key_file, format!("{KEY_V2}\n")).unwrap();
    let archive = keys.path().join("archive");
    let tables = config_tables(&key_file, &db.url(), &archive);
    let server = Server::start_setup(Setup {
        admin: "token_env = \"REDACT_OPERATOR_TOKEN\"",
        tables: &tables,
        env: &[
            ("REDACT_ACME_TOKEN", ACME_TOKEN),
            ("REDACT_OPERATOR_TOKEN", OPERATOR),
            ("REDACT_ACME_HMAC_V1", KEY_V1),
        ],
        ..Setup::default()
    });

    let grpc_url = server.grpc_url();
    tokio::task::spawn_blocking(move || send_with_rust_sdk(grpc_url))
        .await
        .unwrap();
    let private_bodies = send_with_python_sdk(&server.grpc_url());
    let all = server.events_as(OPERATOR, "limit=0").await;
    // What was sent, and the tombstones of what `max_body_bytes` cut.
    let (tombstones, events): (Vec<Value>, Vec<Value>) = all
        .into_iter()
        .partition(|e| e["event_name"] == "auditrail.tombstone");
    assert_eq!(events.len(), 4, "{events:#?}");
    assert!(
        tombstones
            .iter()
            .all(|t| t["attributes"].as_str().unwrap().contains("\"truncated\"")),
        "{tombstones:#?}"
    );
    let by_event = |name: &str| {
        events
            .iter()
            .find(|e| e["event_name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {events:#?}"))
    };

    // HMAC'd values are what `auditrail hash` prints, newest key first.
    let hashes = auditrail_hash(&server.config_path, USER_ID);
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    assert!(hashes[0].starts_with("hmac-sha256:v2:"), "{hashes:?}");
    assert!(hashes[1].starts_with("hmac-sha256:v1:"), "{hashes:?}");
    let login = by_event("user.login");
    assert_eq!(login["tenant"], "acme");
    assert_eq!(login["actor_id"], hashes[0].as_str());
    assert_eq!(attrs(login)["user.id"], hashes[0].as_str());
    assert_eq!(login["actor_name"], "A************");
    assert_eq!(login["client_address"], "[redacted:ipv4]");
    assert!(!attrs(login).contains_key("http.request.header.authorization"));
    assert_eq!(
        login["body"],
        format!(
            "{MARKER}: login by [redacted:email] with key [redacted:api_key], phone \
             [redacted:phone], from [redacted:ipv4] via [redacted:ipv6]"
        )
    );
    let py_hashes = auditrail_hash(&server.config_path, PY_USER_ID);
    let read = by_event("dataset.read");
    assert_eq!(read["actor_id"], py_hashes[0].as_str());
    assert_eq!(read["client_address"], "[redacted:ipv4]");
    assert_eq!(attrs(read)["contact"], "[redacted:email]");

    // The investigator's search: the hash finds the user's events.
    let found = Command::new(binary())
        .args(["query", "--admin", &server.admin_url()])
        .args(["--token-env", "REDACT_OPERATOR_TOKEN", "--format", "json"])
        .args(["--actor", &hashes[0]])
        .env("REDACT_OPERATOR_TOKEN", OPERATOR)
        .stdin(Stdio::null())
        .output()
        .expect("running auditrail query");
    assert!(found.status.success(), "{found:?}");
    let found: Vec<Value> = String::from_utf8(found.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut names: Vec<&str> = found
        .iter()
        .map(|e| e["event_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["chat.completion", "user.login"]);

    // The capped body: cut to the cap, its size as sent recorded.
    let chat = by_event("chat.completion");
    let body = chat["body"].as_str().unwrap();
    assert!(body.len() <= CAP && body.len() > CAP - 4, "{}", body.len());
    assert!(body.starts_with(&format!("{MARKER} prompt from [redacted:email]: ")));
    assert_eq!(attrs(chat)["audit.truncated_bytes"], BIG_BODY);
    // The metadata level: no body, no prompt, their sizes recorded.
    let private = by_event("chat.private");
    assert_eq!(private["body"], "");
    assert_eq!(
        attrs(private)["audit.truncated_bytes"],
        private_bodies[0].len()
    );
    assert_eq!(
        attrs(private)["audit.truncated_attributes"],
        serde_json::json!({"gen_ai.prompt": format!("tell {PROMPT_SECRET} the plan").len()})
    );

    wait_caught_up(&server, "warehouse", 4, DELIVERY).await;
    wait_caught_up(&server, "archive", 4, DELIVERY).await;
    assert_no_dead_letters(&server, "warehouse").await;

    // The 4 and the tombstones of what the cap cut (the admin API wants a
    // token, so wait_caught_up could not count them).
    let want = 4 + tombstones.len() as i64;
    eventually_within(DELIVERY, "the tombstones in MySQL", || async {
        db.count("audit_events").await == want
    })
    .await;
    // Every column of every row, as the database returns it.
    let rows = db.rows("SELECT * FROM audit_events ORDER BY seq").await;
    assert_eq!(rows.len() as i64, want);
    let sql: Vec<(String, Vec<u8>)> = rows
        .iter()
        .flat_map(|row| {
            row.columns().iter().map(move |column| {
                let value = row
                    .try_get_unchecked::<Option<Vec<u8>>, _>(column.ordinal())
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (format!("audit_events.{}", column.name()), value)
            })
        })
        .collect();
    assert_no_secret("MySQL rows", &sql);
    let capped = rows
        .iter()
        .find(|r| text(r, "event_name").as_deref() == Some("chat.completion"))
        .unwrap();
    let row_attrs: Value = serde_json::from_str(&text(capped, "attributes").unwrap()).unwrap();
    assert_eq!(row_attrs["audit.truncated_bytes"], BIG_BODY);
    assert_eq!(
        text(capped, "actor_id").as_deref(),
        Some(hashes[0].as_str())
    );

    let archive_files: Vec<(String, Vec<u8>)> = files_under(&archive)
        .into_iter()
        .map(|(p, b)| (p.display().to_string(), b))
        .collect();
    assert_no_secret("file sink", &archive_files);

    let log = server.log().into_bytes();
    for secret in SECRETS {
        assert!(!holds(&log, secret), "the server's log holds {secret:?}");
    }

    // The redactions counted by rule and action, the cuts by reason.
    let metrics = server.metrics_text().await;
    let counter = |name: &str, labels: &[&str]| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let redactions = "auditrail_redactions_total";
    assert_eq!(
        counter(redactions, &["rule=\"user-ids\"", "action=\"hmac\""]),
        4.0,
        "{metrics}"
    );
    // Login: 5 in the body, 1 in client.address, 1 in note; dataset.read:
    // 3 in the body, 1 in client.address, 1 in contact; chat.completion:
    // 2 in the body; chat.private: 1 in client.address.
    assert_eq!(
        counter(redactions, &["rule=\"pii\"", "action=\"regex\""]),
        15.0,
        "{metrics}"
    );
    let truncated = "auditrail_truncated_values_total";
    assert_eq!(counter(truncated, &["reason=\"max_body_bytes\""]), 1.0);
    assert_eq!(counter(truncated, &["reason=\"metadata\""]), 2.0);

    // The spool, last: stopped, so sled has written everything it holds.
    let spool = server.spool_dir();
    let mut server = server;
    assert!(server.terminate().success());
    let spool_files: Vec<(String, Vec<u8>)> = files_under(&spool)
        .into_iter()
        .map(|(p, b)| (p.display().to_string(), with_zstd_frames_opened(b)))
        .collect();
    assert_no_secret("spool", &spool_files);
}

/// `bytes` followed by what every zstd frame in them decompresses to. The
/// spool stores each batch body as a zstd frame, inside sled's log or a
/// blob file, so a search of the raw bytes would find neither a secret nor
/// the marker: every place a frame may start (its magic number) is tried.
fn with_zstd_frames_opened(bytes: Vec<u8>) -> Vec<u8> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut out = bytes.clone();
    for (at, _) in bytes.windows(4).enumerate().filter(|(_, w)| *w == MAGIC) {
        let Ok(mut frame) = zstd::stream::read::Decoder::new(&bytes[at..]) else {
            continue;
        };
        // A false start or a frame cut by the file's end stops with an
        // error; whatever it gave until then is searched too.
        let mut chunk = [0u8; 64 << 10];
        while let Ok(n @ 1..) = std::io::Read::read(&mut frame, &mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
    }
    out
}

/// A key that cannot be read stops `check-config` and `serve`, naming the
/// key and the variable: redaction is never silently off.
#[test]
fn a_missing_key_stops_check_config_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let tables =
        "[[redaction.keys]]\ntenant = \"*\"\nversion = 1\nkey_env = \"REDACT_UNSET_KEY\"\n\n\
                  [[redaction.rules]]\nattributes = [\"user.id\"]\naction = \"hmac\"\n";
    let config = dir.path().join("check.toml");
    std::fs::write(&config, tables).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&config)
        .env_remove("REDACT_UNSET_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("redaction.keys[0]") && stderr.contains("REDACT_UNSET_KEY"),
        "{stderr}"
    );

    let (status, log) =
        Server::start_expecting_exit(dir.path(), "", tables, &[], Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        log.contains("redaction.keys[0]") && log.contains("REDACT_UNSET_KEY"),
        "{log}"
    );
}
