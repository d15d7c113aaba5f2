//! The command line as an operator uses it: check-config, the embedded
//! default, query and tail against a server or a stopped spool, verify,
//! SIGTERM, and the disk quota's backpressure.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use auditrail_tests::{binary, cli, eventually, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use serde_json::{json, Value};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An OTLP/JSON export body with one record per (actor, event, body).
fn otlp_json(records: &[(&str, &str, &str)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(actor, event, body)| {
            json!({
                "eventName": event,
                "body": {"stringValue": body},
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "attributes": [{"key": "user.id", "value": {"stringValue": actor}}]
            })
        })
        .collect();
    json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "imagegen"}}]},
        "scopeLogs": [{"logRecords": records}]
    }]})
}

async fn send_json(server: &Server, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.http_logs_url())
        .json(body)
        .send()
        .await
        .expect("sending")
}

/// `--help` speaks to users: what auditrail does and where to start, not
/// the crate's doc comment.
#[test]
fn help_says_what_auditrail_does() {
    let out = cli(&["--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    assert!(
        help.starts_with("auditrail: who did what, when, from where"),
        "{help}"
    );
    assert!(help.contains("auditrail serve --config"), "{help}");
    assert!(!help.contains("pipeline wiring"), "{help}");
}

#[test]
fn check_config_names_problems_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[receiver]\nmax_request_bytes = \"8MiB\"\n[spool]\nretention = \"30d\"\n",
    )
    .unwrap();
    let out = cli(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"));

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[spool]\nretention = \"30d\"\nmax_dsk = \"1GiB\"\n").unwrap();
    let out = cli(&["check-config", typo.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("max_dsk") && err.contains("line 3"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[receiver]\ngrpc_addr = \"localhost\"\n").unwrap();
    let out = cli(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));

    // A sink type's own checks run too (as `serve` runs them at start-up),
    // without connecting to its far side.
    let sink = dir.path().join("sink.toml");
    std::fs::write(
        &sink,
        "[[sinks]]\nname = \"search\"\ntype = \"elasticsearch\"\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = cli(&["check-config", sink.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("sink \"search\"") && err.contains("index"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_tail_and_verify_as_an_operator_would() {
    let mut server = Server::start_with(
        "",
        "[query]\ntrace_url = \"http://jaeger:16686/trace/{trace_id}\"",
    );
    let resp = send_json(
        &server,
        &otlp_json(&[
            ("alice", "image.generate", "a city at night"),
            ("alice", "image.delete", "removed image 17"),
            ("bob", "image.generate", "a red fox"),
        ]),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let admin = server.admin_url();

    let out = cli(&[
        "query",
        "--admin",
        &admin,
        "--since",
        "1h",
        "--actor",
        "alice",
        "--event",
        "image.generate",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["body"], "a city at night");
    assert_eq!(
        lines[0]["trace_url"],
        "http://jaeger:16686/trace/5b8efff798038103d269b633813fc60c"
    );

    let out = cli(&["query", "--admin", &admin, "--text", "city"]);
    let table = stdout(&out);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(
        table.contains("a city at night") && !table.contains("red fox"),
        "{table}"
    );

    let out = cli(&["query", "--admin", &admin, "--outcome", "maybe"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--outcome"));

    // tail prints what is there, then follows.
    let mut tail = Command::new(binary())
        .args([
            "tail", "--admin", &admin, "--format", "json", "--every", "100ms", "--actor", "carol",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_json(
        &server,
        &otlp_json(&[
            ("carol", "user.login", "carol logged in"),
            ("dan", "user.login", "dan"),
        ]),
    )
    .await;
    let line = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    let followed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(followed["actor_id"], "carol");
    tail.kill().unwrap();
    let _ = tail.wait();

    // SIGTERM: exit 0, then the stopped spool is readable and verifiable.
    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        server.log()
    );
    let spool = server.spool_dir();
    let spool = spool.to_str().unwrap();
    let out = cli(&[
        "query",
        "--data-dir",
        spool,
        "--limit",
        "0",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 5);
    let out = cli(&[
        "query",
        "--data-dir",
        spool,
        "--actor",
        "bob",
        "--format",
        "json",
    ]);
    assert_eq!(stdout(&out).lines().count(), 1);
    let out = cli(&["verify", "--data-dir", spool]);
    assert!(
        out.status.success() && stdout(&out).contains("checked 5 events"),
        "{}",
        stdout(&out)
    );
}

/// "Who generated or deleted this file?": `--target` finds every event
/// about one file (or, with `prefix*`, a folder), in the CLI and the API,
/// and `--format csv` hands the answer to a spreadsheet.
#[tokio::test(flavor = "multi_thread")]
async fn who_acted_on_this_file() {
    let server = Server::start();
    let record = |actor: &str, event: &str, target: &str| {
        json!({
            "eventName": event,
            "body": {"stringValue": format!("{event} by {actor}, \"quoted\"\nsecond line")},
            "attributes": [
                {"key": "user.id", "value": {"stringValue": actor}},
                {"key": "audit.target", "value": {"stringValue": target}}
            ]
        })
    };
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "imagegen"}}]},
        "scopeLogs": [{"logRecords": [
            record("alice", "image.generate", "outputs/alice/1.png"),
            record("bob", "image.delete", "outputs/alice/1.png"),
            record("alice", "image.generate", "outputs/alice/2.png"),
            record("alice", "image.generate", "outputs/alice-old/3.png"),
            record("carol", "image.generate", "outputs/carol/1.png"),
        ]}]
    }]});
    assert_eq!(send_json(&server, &body).await.status().as_u16(), 200);
    let admin = server.admin_url();
    let query = |args: &[&str]| {
        let mut all = vec!["query", "--admin", &admin, "--format", "json"];
        all.extend_from_slice(args);
        let out = cli(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["actor_id"].as_str().unwrap(),
                    e["event_name"].as_str().unwrap(),
                    e["target"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };

    assert_eq!(
        query(&["--target", "outputs/alice/1.png"]),
        [
            "alice image.generate outputs/alice/1.png",
            "bob image.delete outputs/alice/1.png"
        ]
    );
    assert_eq!(
        query(&["--target", "outputs/alice/*"]),
        [
            "alice image.generate outputs/alice/1.png",
            "bob image.delete outputs/alice/1.png",
            "alice image.generate outputs/alice/2.png"
        ]
    );
    assert!(query(&["--target", "outputs/alice"]).is_empty());
    assert_eq!(
        query(&["--target", "outputs/*", "--actor", "carol"]),
        ["carol image.generate outputs/carol/1.png"]
    );

    // The API takes the same word.
    let page: Value = reqwest::Client::new()
        .get(format!("{admin}/v1/events"))
        .query(&[("target", "outputs/alice/*"), ("event", "image.delete")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["actor_id"], "bob");

    // CSV: a header, then one row per event, whatever the body holds.
    let out = cli(&[
        "query",
        "--admin",
        &admin,
        "--target",
        "outputs/alice/*",
        "--format",
        "csv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|c| c == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[1][column("actor_id")], "bob");
    assert_eq!(&rows[1][column("target")], "outputs/alice/1.png");
    assert_eq!(
        &rows[1][column("body")],
        "image.delete by bob, \"quoted\"\nsecond line"
    );
    assert!(rows[1][column("time")].ends_with('Z'));

    // Nothing matched: still a sheet with its header.
    let out = cli(&[
        "query", "--admin", &admin, "--target", "nowhere", "--format", "csv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("time,node,seq,event_id"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_server_keeps_its_spool_to_itself() {
    let server = Server::start();
    let out = cli(&["query", "--data-dir", server.spool_dir().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another process"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_quota_means_429_and_resource_exhausted_never_loss() {
    let server = Server::start_with("max_disk = \"64KiB\"", "");
    // Random text: the spool compresses what it stores.
    let big = auditrail_tests::load::incompressible_text(4000);
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..200 {
        let resp = send_json(
            &server,
            &otlp_json(&[("alice", "image.generate", &format!("{i} {big}"))]),
        )
        .await;
        match resp.status().as_u16() {
            200 => accepted += 1,
            429 => {
                refused = Some((
                    resp.headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    resp.text().await.unwrap(),
                ));
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let (retry_after, body) = refused.expect("the quota is reached within 200 requests of 4 KiB");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert!(body.contains("quota"), "{body}");
    assert!(accepted > 0);

    let status = LogsServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .export(ExportLogsServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("quota"));

    let ready = reqwest::get(format!("{}/readyz", server.admin_url()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    // Everything acknowledged before the quota is still there.
    assert_eq!(server.events("limit=0").await.len(), accepted);
}

/// `auditrail serve` with no config: the embedded default on the standard
/// ports, with its spool in ./auditrail-data.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .arg("serve")
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the default ports answer", || async {
        reqwest::get("http://127.0.0.1:8686/healthz")
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let resp = reqwest::Client::new()
        .post("http://127.0.0.1:4318/v1/logs")
        .json(&otlp_json(&[("zoe", "history.clear", "cleared")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    LogsServiceClient::connect("http://127.0.0.1:4317")
        .await
        .expect("gRPC on 4317");
    let out = cli(&["query", "--actor", "zoe", "--format", "json"]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stderr(&out));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    assert!(dir.path().join("auditrail-data").is_dir());
}

/// Events received longer ago than `retention` are removed by the periodic
/// retention pass; newer ones stay.
#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_old_events() {
    let server = Server::start_with("retention = \"2s\"\ngc_interval = \"200ms\"", "");
    send_json(&server, &otlp_json(&[("old", "user.login", "long ago")])).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send_json(&server, &otlp_json(&[("new", "user.login", "just now")])).await;
    eventually("the old event expires", || async {
        server.events("actor=old").await.is_empty()
    })
    .await;
    assert_eq!(
        server.events("actor=new").await.len(),
        1,
        "the new event stays"
    );
    assert!(server.metric("auditrail_spool_expired_events_total").await >= 1.0);
}
