//! `format = "ocsf"` end to end: events sent through the real Rust OTel
//! SDK reach the file sink (and NATS JetStream, and a real rsyslog) of the
//! real `auditrail serve` as OCSF 1.5.0 events, one a line, classed by
//! event name (the defaults and the sink's own rules), with their trace
//! ids.
//!
//! Every line is judged by the real OCSF schema too:
//! `tests/python/validate_ocsf.py` with `pydantic-ocsf` from PyPI (the
//! venv of `scripts/python-venv`, which `scripts/test` runs; its python is
//! `AUDITRAIL_PYTHON`, else `target/pyvenv/bin/python`). A missing venv
//! fails the test: it is never skipped.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use auditrail_tests::nats::{stream_messages, NatsServer};
use auditrail_tests::rsyslog::{Listener, Rsyslog};
use auditrail_tests::sinks::{
    assert_no_dead_letters, client, emit_in_span, grpc_log_exporter, numbered_batch, send, tail,
    wait_caught_up,
};
use auditrail_tests::{binary, python_venv, Server};
use opentelemetry::logs::{AnyValue, LogRecord as _, Severity};
use serde_json::Value;

/// Span ids of this file's numbered events start with this byte.
const SPAN: u8 = 0x0c;
const CATCH_UP: Duration = Duration::from_secs(60);

/// Runs the OCSF validator over `lines`; panics with its report unless
/// every line is a valid OCSF 1.5.0 event.
fn assert_valid_ocsf(lines: &[String]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/validate_ocsf.py");
    let mut child = Command::new(python_venv())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the OCSF validator");
    {
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            stdin.write_all(line.as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "not valid OCSF 1.5.0 (pydantic-ocsf must be in the venv: scripts/python-venv installs it): {}\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["valid"], lines.len(), "{report}");
}

/// Every complete line of the segments in `dir` (plain ones: the test
/// never rotates).
fn lines_in(dir: &Path) -> Vec<String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "ndjson"));
    paths.sort();
    let mut lines = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        lines.extend(complete.lines().map(str::to_owned));
    }
    lines
}

async fn wait_lines(dir: &Path, n: usize, server: &Server) -> Vec<String> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let lines = lines_in(dir);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines after {CATCH_UP:?}\n{}",
            lines.len(),
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file sink in OCSF with two rules of its own: an exact name whose
/// default would be `api_activity`/`other`, and a prefix the defaults do
/// not know.
fn file_sink(name: &str, dir: &Path) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\ntype = \"file\"\npath = {:?}\n\n\
         [sinks.format.ocsf.events]\n\
         \"workflow.run\" = {{ class = \"api_activity\", activity = \"create\" }}\n\
         \"kb.*\" = {{ class = \"datastore_activity\", activity = \"query\" }}\n\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"1s\"\n",
        dir.display().to_string()
    )
}

/// What each event name must become: (class_uid, activity_id).
const EXPECTED: &[(&str, u64, u64)] = &[
    ("user.login", 3002, 1),
    ("user.logout", 3002, 2),
    ("image.generate", 6003, 1),
    ("model_config.update", 6003, 3),
    ("history.clear", 6003, 4),
    ("api.request", 6003, 99),
    ("dataset.read", 6005, 1),
    ("file.upload", 6006, 1),
    ("auditrail.tombstone", 1008, 99),
    ("workflow.run", 6003, 1),
    ("kb.lookup", 6005, 4),
];

/// A body and attributes that try to break a line: newlines, CR, NUL,
/// quotes, an ANSI escape, CEF and SD delimiters, non-ASCII text.
const HOSTILE: &str = "line one\nline two\r\n\0 \"quoted\" \\ | = ] \u{1b}[31mred\u{1b}[0m 猫 🐈";

/// Emits `name` through the real Rust OTel SDK inside a fresh span;
/// returns (trace id, span id).
fn emit(grpc_url: String, name: &'static str) -> (String, String) {
    emit_in_span(grpc_log_exporter(grpc_url), |record| {
        record.set_event_name(name);
        record.set_severity_number(Severity::Warn);
        record.set_severity_text("WARN");
        record.set_body(AnyValue::from(format!("{name}: {HOSTILE}")));
        record.add_attribute("user.id", "alice");
        record.add_attribute("user.name", "Alice Liddell");
        record.add_attribute("audit.outcome", "failure");
        record.add_attribute("audit.target", "datasets/contracts-2026");
        record.add_attribute("client.address", "198.51.100.4");
        record.add_attribute("note", HOSTILE);
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_sink_writes_valid_ocsf_classed_by_event_name_with_trace_ids() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("ocsf");
    let mut server = Server::start_in(dir.path(), "", &file_sink("siem", &archive));

    let mut sent: HashMap<String, (String, String)> = HashMap::new();
    for (name, _, _) in EXPECTED {
        let url = server.grpc_url();
        let ids = tokio::task::spawn_blocking(move || emit(url, name))
            .await
            .unwrap();
        sent.insert(name.to_string(), ids);
    }
    let lines = wait_lines(&archive, EXPECTED.len(), &server).await;
    assert_eq!(lines.len(), EXPECTED.len(), "one line per event");

    let mut seen = HashMap::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let name = v["metadata"]["event_code"].as_str().unwrap().to_owned();
        let &(_, class, activity) = EXPECTED
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("unexpected event {name}"));
        assert_eq!(
            (v["class_uid"].as_u64(), v["activity_id"].as_u64()),
            (Some(class), Some(activity)),
            "{name}: {line}"
        );
        assert_eq!(v["type_uid"].as_u64(), Some(class * 100 + activity));
        let (trace_id, span_id) = &sent[&name];
        assert_eq!(
            v["metadata"]["correlation_uid"],
            trace_id.as_str(),
            "{name}"
        );
        let canonical = &v["unmapped"]["auditrail"];
        assert_eq!(canonical["trace_id"], trace_id.as_str());
        assert_eq!(canonical["span_id"], span_id.as_str());
        assert_eq!(canonical["attributes"]["note"], HOSTILE);
        assert_eq!(canonical["node"], "test-node");
        assert_eq!(canonical["hash"].as_str().map(str::len), Some(64));
        if class == 6003 {
            assert_eq!(v["trace"]["uid"], trace_id.as_str(), "{name}");
        }
        assert_eq!(v["message"], format!("{name}: {HOSTILE}").as_str());
        assert_eq!(
            (v["status_id"].as_u64(), v["severity_id"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(v["metadata"]["product"]["name"], "auditrail");
        assert_eq!(v["metadata"]["version"], "1.5.0");
        seen.insert(name, canonical["seq"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), EXPECTED.len(), "each event once");
    assert_valid_ocsf(&lines);
    assert_no_dead_letters(&server, "siem").await;

    // Delivered again from the start (a renamed sink): the sink reads the
    // seq back from the last OCSF line and skips what it holds.
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "{}",
        tail(&server.log())
    );
    let mut server = Server::start_in(dir.path(), "", &file_sink("siem-again", &archive));
    wait_caught_up(&server, "siem-again", EXPECTED.len(), CATCH_UP).await;
    // Nothing written twice; one line more: the trail's record of the
    // config change that renamed the sink.
    let again = lines_in(&archive);
    assert_eq!(again.len(), lines.len() + 1);
    assert_eq!(again[..lines.len()], lines[..], "nothing written twice");
    let url = server.grpc_url();
    tokio::task::spawn_blocking(move || emit(url, "user.login"))
        .await
        .unwrap();
    let after = wait_lines(&archive, EXPECTED.len() + 2, &server).await;
    assert_eq!(after.len(), EXPECTED.len() + 2);
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "{}",
        tail(&server.log())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_carries_ocsf_with_the_event_id_as_msg_id() {
    const STREAM: &str = "OCSF";
    let nats = NatsServer::start(None);
    let sink = format!(
        "[[sinks]]\nname = \"bus\"\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"ocsf.{{event_name}}\"\nstream = \"{STREAM}\"\nformat = \"ocsf\"\n\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n",
        nats.url()
    );
    let server = Server::start_with("", &sink);
    let mut grpc = client(&server).await;
    let (request, ids) = numbered_batch(SPAN, "ocsf", 50);
    send(&mut grpc, request).await;

    let deadline = Instant::now() + CATCH_UP;
    let messages = loop {
        let messages = stream_messages(&nats.url(), STREAM).await;
        if messages.len() >= ids.len() || Instant::now() > deadline {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(messages.len(), ids.len(), "{}", tail(&server.log()));
    for (uid, trace) in &ids {
        let m = messages
            .iter()
            .find(|m| &m.msg_id == uid)
            .unwrap_or_else(|| panic!("{uid} is not in the stream"));
        assert_eq!(m.subject, "ocsf.image_generate");
        assert_eq!(m.payload["class_uid"], 6003);
        assert_eq!(m.payload["type_uid"], 600301);
        assert_eq!(m.payload["metadata"]["uid"], uid.as_str());
        assert_eq!(m.payload["trace"]["uid"], trace.as_str());
    }
    let lines: Vec<String> = messages.iter().map(|m| m.payload.to_string()).collect();
    assert_valid_ocsf(&lines);
    assert_no_dead_letters(&server, "bus").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_carries_one_ocsf_event_per_message_into_rsyslog() {
    let rsyslog = Rsyslog::start(Listener::Tcp);
    let sink = format!(
        "[[sinks]]\nname = \"siem\"\ntype = \"syslog\"\nurl = \"{}\"\n\n\
         [sinks.format.ocsf.events]\n\"workflow.run\" = {{ class = \"api_activity\", activity = \"create\" }}\n\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n",
        rsyslog.url()
    );
    let server = Server::start_with("", &sink);
    let names = ["user.login", "workflow.run", "dataset.read"];
    let mut sent = HashMap::new();
    for name in names {
        let url = server.grpc_url();
        let (trace, _) = tokio::task::spawn_blocking(move || emit(url, name))
            .await
            .unwrap();
        sent.insert(name, trace);
    }
    let deadline = Instant::now() + CATCH_UP;
    while rsyslog.parsed().len() < names.len() {
        assert!(Instant::now() < deadline, "{}", tail(&server.log()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rsyslog.raw_lines().len(), names.len(), "one line per event");
    let mut lines = Vec::new();
    for fields in rsyslog.parsed() {
        let msg = fields["msg"].as_str().unwrap();
        let v: Value = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
        let name = v["metadata"]["event_code"].as_str().unwrap();
        assert_eq!(
            fields["msgid"], name,
            "the header's MSGID is the event name"
        );
        let class = match name {
            "user.login" => 3002,
            "workflow.run" => 6003,
            "dataset.read" => 6005,
            other => panic!("unexpected {other}"),
        };
        assert_eq!(v["class_uid"], class, "{msg}");
        assert_eq!(v["metadata"]["correlation_uid"], sent[name].as_str());
        assert_eq!(v["message"], format!("{name}: {HOSTILE}").as_str());
        lines.push(msg.to_owned());
    }
    assert_valid_ocsf(&lines);
    assert_no_dead_letters(&server, "siem").await;
}

#[test]
fn check_config_rejects_an_unknown_class_or_activity_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = |rule: &str| {
        let path = dir.path().join("auditrail.toml");
        std::fs::write(
            &path,
            format!(
                "[[sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret_env = \"S\"\n\n\
                 [sinks.format.ocsf.events]\n{rule}\n"
            ),
        )
        .unwrap();
        // check-config builds the sink, which reads its secret.
        std::process::Command::new(binary())
            .arg("check-config")
            .arg(&path)
            .env("S", "a-webhook-secret-0123456789")
            .output()
            .expect("running auditrail check-config")
    };
    let good = config("\"image.generate\" = { class = \"api_activity\", activity = \"create\" }");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    for (rule, says) in [
        (
            "\"image.generate\" = { class = \"image_activity\", activity = \"create\" }",
            "format.ocsf.events.\"image.generate\": unknown class \"image_activity\"",
        ),
        (
            "\"user.login\" = { class = \"authentication\", activity = \"create\" }",
            "format.ocsf.events.\"user.login\": class authentication has no activity \"create\"",
        ),
    ] {
        let out = config(rule);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rule} was accepted");
        assert!(
            stderr.contains(says) && stderr.contains("sink \"siem\""),
            "{stderr}"
        );
    }
}
