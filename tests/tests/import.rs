//! `auditrail import` end to end: the real binary importing the seeds'
//! existing logs (Dify's JSON lines, the uploader's NDJSON queue, its MySQL
//! table on the real MariaDB) into a real `auditrail serve`, and the events
//! read back from its admin API.

use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use auditrail_tests::mysql::{text, Database, SinkToml};
use auditrail_tests::sinks::{client, send, wait_caught_up};
use auditrail_tests::{binary, free_port, otlp, Server, Setup};
use serde_json::Value;

/// 2024-05-01T12:00:00Z.
const NOON: u64 = 1_714_564_800_000_000_000;
const SECOND: u64 = 1_000_000_000;

/// Runs `auditrail import ARGS --endpoint <server>`.
fn import(server: &Server, args: &[&str]) -> Output {
    import_to(&server.grpc_url(), args)
}

fn import_to(endpoint: &str, args: &[&str]) -> Output {
    import_with_env(endpoint, args, &[])
}

fn import_with_env(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(binary())
        .arg("import")
        .args(args)
        .args(["--endpoint", endpoint])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running auditrail import")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The exit code, with the output in the message when it is not `want`.
fn assert_exit(output: &Output, want: i32) {
    assert_eq!(
        output.status.code(),
        Some(want),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

fn write_lines(path: &Path, lines: &[&str]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

/// The imported events the server holds, oldest first.
async fn imported(server: &Server) -> Vec<Value> {
    let mut events: Vec<Value> = server
        .events("limit=0")
        .await
        .into_iter()
        .filter(|e| e["scope_name"] == "auditrail.import")
        .collect();
    events.sort_by_key(|e| e["time_unix_nano"].as_u64());
    events
}

fn times(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["time_unix_nano"].as_u64().unwrap())
        .collect()
}

/// The summary line says `want`.
fn assert_summary(output: &Output, want: &str) {
    assert!(stdout(output).contains(want), "{}", stdout(output));
}

/// An event's attributes as an object (the admin API has them as text).
fn attributes(event: &Value) -> Value {
    match &event["attributes"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    }
}

const DIFY: [&str; 3] = [
    r#"{"level":"INFO","time":"2024-05-01T12:00:00.250Z","message":"chat message sent","method":"POST","path":"/v1/chat-messages","status":200,"user_id":"u-alice","app_id":"app-1"}"#,
    r#"{"level":"ERROR","time":"2024-05-01T20:00:01+08:00","message":"workflow run failed","method":"POST","path":"/v1/workflows/run","status":500,"user_id":"u-bob","app_id":"app-2"}"#,
    r#"{"level":"WARNING","time":"2024-05-01 12:00:02","message":"dataset read denied","method":"GET","path":"/v1/datasets/42","status":403,"user_id":"u-alice","app_id":"app-1"}"#,
];

#[tokio::test(flavor = "multi_thread")]
async fn dify_json_lines_keep_their_times_and_fields() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dify.log");
    write_lines(&log, &DIFY);

    let output = import(
        &server,
        &["--json-lines", log.to_str().unwrap(), "--preset", "dify"],
    );
    assert_exit(&output, 0);
    assert_summary(
        &output,
        "3 read, 3 imported, 0 rejected by the server, 0 bad",
    );

    let events = imported(&server).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(
        times(&events),
        [NOON + 250_000_000, NOON + SECOND, NOON + 2 * SECOND]
    );

    let first = &events[0];
    assert_eq!(first["event_name"], "api.request");
    assert_eq!(first["service_name"], "dify");
    assert_eq!(first["actor_id"], "u-alice");
    assert_eq!(first["outcome"], "success");
    assert_eq!(first["body"], "chat message sent");
    assert_eq!(first["severity_text"], "INFO");
    assert_eq!(first["severity_number"], 9);
    let attrs = attributes(first);
    assert_eq!(attrs["http.request.method"], "POST");
    assert_eq!(attrs["url.path"], "/v1/chat-messages");
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(attrs["dify.app_id"], "app-1");
    assert_eq!(attrs["audit.import.source"], "json-lines");
    assert_eq!(attrs["audit.import.origin"], format!("{}:1", log.display()));

    assert_eq!(events[1]["outcome"], "failure");
    assert_eq!(events[1]["actor_id"], "u-bob");
    assert_eq!(events[1]["severity_number"], 17);
    assert_eq!(events[2]["outcome"], "failure");
    assert_eq!(attributes(&events[2])["url.path"], "/v1/datasets/42");
}

#[tokio::test(flavor = "multi_thread")]
async fn importing_again_stores_each_record_once() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dify.log");
    write_lines(&log, &DIFY[..2]);
    let args = ["--json-lines", log.to_str().unwrap(), "--preset", "dify"];
    assert_exit(&import(&server, &args), 0);
    assert_exit(&import(&server, &args), 0);
    assert_eq!(imported(&server).await.len(), 2);

    // The log grew, with a line identical to an earlier one: a second
    // request of the same second, which is a record of its own.
    write_lines(&log, &[DIFY[2], DIFY[0]]);
    let output = import(&server, &args);
    assert_exit(&output, 0);
    assert_summary(&output, "4 read, 4 imported");
    let events = imported(&server).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|id| id.starts_with("import-")), "{ids:?}");

    assert_exit(&import(&server, &args), 0);
    assert_eq!(imported(&server).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_lines_are_named_and_the_rest_is_imported() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dify.log");
    write_lines(
        &log,
        &[
            DIFY[0],
            r#"{"level":"INFO","time":"2024-05-01T12:00:0"#,
            r#"{"level":"INFO","message":"no time here","status":200}"#,
            "",
            // An outcome the receiver refuses: a rejection it names.
            r#"{"time":"2024-05-01T12:00:03Z","message":"odd","audit.outcome":"maybe"}"#,
            r#"{"time":"last tuesday","message":"x"}"#,
            DIFY[1],
        ],
    );
    let output = import(
        &server,
        &["--json-lines", log.to_str().unwrap(), "--preset", "dify"],
    );
    assert_exit(&output, 1);
    let errors = stderr(&output);
    let at = |line: u32| format!("{}:{line}: ", log.display());
    assert!(errors.contains(&format!("{}not JSON", at(2))), "{errors}");
    assert!(
        errors.contains(&format!(
            "{}no time: the record has no field \"time\"",
            at(3)
        )),
        "{errors}"
    );
    assert!(
        errors.contains(&format!(
            "{}rejected by the server: audit.outcome must be success, failure or unknown",
            at(5)
        )),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{}time: \"last tuesday\" is not a time", at(6))),
        "{errors}"
    );
    assert_summary(
        &output,
        "6 read, 2 imported, 1 rejected by the server, 3 bad",
    );
    let events = imported(&server).await;
    let bodies: Vec<&str> = events.iter().map(|e| e["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["chat message sent", "workflow run failed"]);
}

/// Rows of the seed's table as its uploader's queue holds them: the
/// column names as keys, `created_at` as the app wrote it (here, local
/// time in Shanghai).
const QUEUE: [&str; 2] = [
    r#"{"user_name":"alice","device_name":"alice-mbp","prompt":"a banana in a spacesuit","result_path":"outputs/2024-05-01/banana.png","status":"success","error_message":null,"model":"gemini-2.5-flash-image","duration_ms":8421,"finish_reason":"STOP","created_at":"2024-05-01 20:00:00.125"}"#,
    r#"{"user_name":"bob","device_name":null,"prompt":"a lighthouse in a storm","result_path":null,"status":"failed","error_message":"quota exceeded","model":"gemini-2.5-flash-image","duration_ms":312,"finish_reason":null,"created_at":"2024-05-01 20:00:05"}"#,
];

#[tokio::test(flavor = "multi_thread")]
async fn the_uploaders_ndjson_queue_becomes_image_events() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue.ndjson");
    write_lines(&queue, &QUEUE);
    let args = [
        "--ndjson-queue",
        queue.to_str().unwrap(),
        "--timezone",
        "Asia/Shanghai",
    ];
    let output = import(&server, &args);
    assert_exit(&output, 0);
    assert_exit(&import(&server, &args), 0);

    let events = imported(&server).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let (alice, bob) = (&events[0], &events[1]);
    assert_eq!(alice["time_unix_nano"], NOON + 125_000_000);
    assert_eq!(bob["time_unix_nano"], NOON + 5 * SECOND);
    assert_eq!(alice["event_name"], "image.generate");
    assert_eq!(alice["actor_name"], "alice");
    assert_eq!(alice["body"], "a banana in a spacesuit");
    assert_eq!(alice["target"], "outputs/2024-05-01/banana.png");
    assert_eq!(alice["outcome"], "success");
    let attrs = attributes(alice);
    assert_eq!(attrs["device.name"], "alice-mbp");
    assert_eq!(attrs["gen_ai.request.model"], "gemini-2.5-flash-image");
    assert_eq!(attrs["duration_ms"], 8421);
    assert_eq!(attrs["gen_ai.response.finish_reasons"], "STOP");
    assert_eq!(attrs["audit.import.source"], "ndjson-queue");
    assert_eq!(bob["outcome"], "failure");
    assert_eq!(attributes(bob)["error.message"], "quota exceeded");
    assert_eq!(bob["target"], "");
}

/// A database holding the seed's table (bench/examples/seed_uploader.rs)
/// with three rows, as its uploader left them.
async fn seed_table() -> Database {
    let db = Database::create().await;
    db.execute(
        "CREATE TABLE nano_banana_user_use_log (
            id BIGINT AUTO_INCREMENT PRIMARY KEY,
            user_name VARCHAR(64), device_name VARCHAR(128), prompt TEXT,
            result_path VARCHAR(512), status VARCHAR(16), error_message TEXT,
            model VARCHAR(64), duration_ms INT, finish_reason VARCHAR(32),
            created_at DATETIME(6))",
    )
    .await;
    db.execute(
        "INSERT INTO nano_banana_user_use_log
            (user_name, device_name, prompt, result_path, status, error_message, model, duration_ms, finish_reason, created_at)
         VALUES
            ('alice', 'alice-mbp', 'a banana in a spacesuit', 'outputs/banana.png', 'success', NULL, 'gemini-2.5-flash-image', 8421, 'STOP', '2024-05-01 12:00:00.125000'),
            ('bob', NULL, 'a lighthouse in a storm', NULL, 'failed', 'quota exceeded', 'gemini-2.5-flash-image', 312, NULL, '2024-05-01 12:00:05'),
            ('alice', 'alice-mbp', 'a banana in a spacesuit', 'outputs/banana-2.png', 'success', NULL, 'gemini-2.5-flash-image', 7000, 'STOP', '2024-05-01 12:00:09')",
    )
    .await;
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn the_uploaders_mysql_table_is_imported_row_by_row() {
    let db = seed_table().await;
    let server = Server::start();
    let url = db.url();
    // Two rows a page: the third is on a page of its own.
    let args = ["--mysql", url.as_str(), "--batch-size", "2"];
    let output = import(&server, &args);
    assert_exit(&output, 0);
    assert_summary(
        &output,
        "nano_banana_user_use_log (up to id 3): 3 read, 3 imported",
    );

    let events = imported(&server).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(
        times(&events),
        [NOON + 125_000_000, NOON + 5 * SECOND, NOON + 9 * SECOND]
    );
    assert_eq!(events[0]["actor_name"], "alice");
    assert_eq!(events[0]["target"], "outputs/banana.png");
    assert_eq!(attributes(&events[0])["duration_ms"], 8421);
    assert_eq!(
        attributes(&events[0])["audit.import.origin"],
        "nano_banana_user_use_log id=1"
    );
    assert_eq!(events[1]["outcome"], "failure");
    assert_eq!(attributes(&events[1])["error.message"], "quota exceeded");

    // Again, and from a later id: nothing new is stored.
    assert_exit(&import(&server, &args), 0);
    let output = import(&server, &["--mysql", url.as_str(), "--after-id", "2"]);
    assert_exit(&output, 0);
    assert_summary(&output, "1 read, 1 imported");
    assert_eq!(imported(&server).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_is_down_stops_the_import_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dify.log");
    write_lines(&log, &DIFY);
    let started = Instant::now();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let output = import_to(
        &endpoint,
        &["--json-lines", log.to_str().unwrap(), "--preset", "dify"],
    );
    assert_exit(&output, 2);
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!(
            "cannot reach auditrail's OTLP receiver at {endpoint}"
        )),
        "{errors}"
    );
    assert!(errors.contains("is `auditrail serve` running?"), "{errors}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// docs/migration.md, "Keep the legacy table during the switch": the
/// legacy table, written by a mysql sink with `[sinks.columns]`, gets the
/// new events, but not the imported history it already holds a second
/// time, once its rows carry the ids the import gives them.
#[tokio::test(flavor = "multi_thread")]
async fn the_legacy_table_gets_new_events_but_not_its_own_history_again() {
    let db = seed_table().await;
    // The SQL of docs/migration.md.
    db.execute("ALTER TABLE nano_banana_user_use_log ADD COLUMN event_id VARCHAR(128) UNIQUE")
        .await;
    db.execute(
        "UPDATE nano_banana_user_use_log SET event_id = CONCAT('import-', LEFT(SHA2(CONCAT('mysql', \
         CHAR(0), '', CHAR(0), 'nano_banana_user_use_log', CHAR(0), id), 256), 32))",
    )
    .await;
    let mut legacy = SinkToml::new("legacy", &db.url())
        .set("table", "\"nano_banana_user_use_log\"")
        .delivery("linger", "\"20ms\"");
    for (column, source) in [
        ("event_id", "event_id"),
        ("user_name", "actor_name"),
        ("device_name", "attributes.device.name"),
        ("prompt", "body"),
        ("result_path", "target"),
        ("status", "outcome"),
        ("error_message", "attributes.error.message"),
        ("model", "attributes.gen_ai.request.model"),
        ("duration_ms", "attributes.duration_ms"),
        ("finish_reason", "attributes.gen_ai.response.finish_reasons"),
        ("created_at", "time"),
    ] {
        legacy = legacy.column(column, source);
    }
    let server = Server::start_with("", &legacy.to_string());
    let url = db.url();
    assert_exit(&import(&server, &["--mysql", url.as_str()]), 0);

    // The app, now on its OTel SDK, generates one more image.
    let record = otlp::record(
        "new-image-1",
        otlp::trace_id(1).0,
        [7; 8],
        "a cat on the moon",
        vec![
            otlp::attr("user.name", otlp::string("carol")),
            otlp::attr("audit.outcome", otlp::string("success")),
        ],
    );
    send(
        &mut client(&server).await,
        otlp::request("nano-banana", vec![record]),
    )
    .await;
    wait_caught_up(&server, "legacy", 4, Duration::from_secs(60)).await;

    let users: Vec<String> = db
        .rows("SELECT user_name FROM nano_banana_user_use_log ORDER BY id")
        .await
        .iter()
        .map(|row| text(row, "user_name").unwrap_or_default())
        .collect();
    assert_eq!(users, ["alice", "bob", "alice", "carol"]);
}

/// With writer tokens, an import without one is refused with a hint, and
/// one with `--token-env` stores the records as that tenant's (here over
/// OTLP/HTTP; the other tests use gRPC).
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_token_makes_the_records_its_tenants() {
    const TOKEN: &str = "acme-import-token-5e1f9c";
    let server = Server::start_setup(Setup {
        tables: "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n",
        env: &[("ACME_TOKEN", TOKEN)],
        ..Setup::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dify.log");
    write_lines(&log, &DIFY);
    let endpoint = format!("http://{}", server.http);
    let args = [
        "--json-lines",
        log.to_str().unwrap(),
        "--preset",
        "dify",
        "--protocol",
        "http",
    ];

    let output = import_to(&endpoint, &args);
    assert_exit(&output, 2);
    assert!(stderr(&output).contains("401"), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--token-env VAR"),
        "{}",
        stderr(&output)
    );

    let mut with_token = args.to_vec();
    with_token.extend(["--token-env", "IMPORT_TOKEN"]);
    let output = import_with_env(&endpoint, &with_token, &[("IMPORT_TOKEN", TOKEN)]);
    assert_exit(&output, 0);
    let events = server.events_as(TOKEN, "limit=0").await;
    let imported: Vec<&Value> = events
        .iter()
        .filter(|e| e["scope_name"] == "auditrail.import")
        .collect();
    assert_eq!(imported.len(), 3, "{events:#?}");
    assert!(imported.iter().all(|e| e["tenant"] == "acme"));
}
