//! The syslog sink end to end: the real `auditrail serve` delivering into a
//! real rsyslog (`auditrail_tests::rsyslog`, one daemon per test on its own
//! ports) over TCP, TLS with certificates the test makes, and UDP, with
//! events sent over OTLP/gRPC.
//!
//! rsyslog writes each message it receives as one line, without escaping
//! anything itself, so these tests see exactly what the sink sent.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use auditrail_tests::rsyslog::{Listener, Rsyslog};
use auditrail_tests::sinks::{
    assert_none_missing, client, kill_9_then_outage, next_trace_id, numbered_batch, send,
    sink_counter, sink_status, tail,
};
use auditrail_tests::{otlp, Server};
use serde_json::Value;

/// How long a sink may take to deliver, on a loaded two-core machine.
const DELIVERY: Duration = Duration::from_secs(60);
/// The first byte of the span ids of this file's events.
const SPAN: u8 = 0x5b;

/// A `[[sinks]]` table of type syslog; `keys` are added as they are.
fn sink(name: &str, url: &str, keys: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\ntype = \"syslog\"\nurl = \"{url}\"\n{keys}\n\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n\n"
    )
}

// ---------------------------------------------------------------------------

/// A body with everything that breaks lines, fields or terminals.
const HOSTILE_BODY: &str =
    "line one\nline two\r\nbar | eq = back \\ bracket ] quote \" nul \0 ansi \x1b[31mred\x1b[0m tab\t é 漢字 🙂";

/// The same body as each format must write it (by hand, not by the code
/// under test): rfc5424's MSG escapes `\` and control characters...
const BODY_IN_MSG: &str = "line one\\nline two\\r\\nbar | eq = back \\\\ bracket ] quote \" nul \\u0000 ansi \\u001b[31mred\\u001b[0m tab\\t é 漢字 🙂";
/// ...and a CEF extension value `=`.
const BODY_IN_CEF: &str = "line one\\nline two\\r\\nbar | eq \\= back \\\\ bracket ] quote \" nul \\u0000 ansi \\u001b[31mred\\u001b[0m tab\\t é 漢字 🙂";

/// `n` events with hostile bodies and attributes; returns uid → trace id.
async fn send_hostile(server: &Server, n: usize) -> HashMap<String, String> {
    let mut sent = HashMap::new();
    let records = (0..n)
        .map(|i| {
            let uid = format!("hostile-{i}");
            let (trace, trace_hex) = next_trace_id();
            sent.insert(uid.clone(), trace_hex);
            otlp::record(
                &uid,
                trace,
                [SPAN, 0, 0, 0, 0, 0, 0, i as u8 + 1],
                HOSTILE_BODY,
                vec![
                    otlp::attr("event.name", otlp::string("image.generate")),
                    otlp::attr("user.id", otlp::string("mallory\"] [x@1 y=\"z")),
                    otlp::attr("user.name", otlp::string("Mallory | CEF:0|x=y\\")),
                    otlp::attr("audit.outcome", otlp::string("failure")),
                    otlp::attr("audit.target", otlp::string("model\nconfig\r\n\0")),
                    otlp::attr(
                        "client.address",
                        otlp::string(if i % 2 == 0 {
                            "198.51.100.4"
                        } else {
                            "gateway.internal"
                        }),
                    ),
                ],
            )
        })
        .collect();
    send(
        &mut client(server).await,
        otlp::request("imagegen-ui", records),
    )
    .await;
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_arrive_one_per_line_escaped_in_every_format() {
    let rfc5424 = Rsyslog::start(Listener::Tcp);
    let cef = Rsyslog::start(Listener::Tcp);
    let json = Rsyslog::start(Listener::Tcp);
    let sinks = [
        sink("siem-rfc5424", &rfc5424.url(), ""),
        sink("siem-cef", &cef.url(), "format = \"cef\""),
        sink(
            "siem-json",
            &json.url(),
            "format = \"json\"\nfacility = \"local3\"",
        ),
    ]
    .concat();
    let server = Server::start_with("", &sinks);
    let n = 6;
    let sent = send_hostile(&server, n).await;

    // rfc5424: the canonical fields in structured data, the body as MSG.
    let lines = rfc5424.exactly_lines(n, DELIVERY, &server).await;
    let parsed = rfc5424.parsed();
    assert_eq!(parsed.len(), n);
    let mut seen = HashSet::new();
    for (line, fields) in lines.iter().zip(&parsed) {
        assert!(!line.chars().any(char::is_control), "{line:?}");
        // severity warning (a failure), facility authpriv: 10 * 8 + 4.
        assert!(line.starts_with("<84>1 "), "{line}");
        assert_eq!(fields["pri"], "84");
        assert_eq!(fields["hostname"], "test-node");
        assert_eq!(fields["app_name"], "imagegen-ui");
        assert_eq!(fields["procid"], "-");
        assert_eq!(fields["msgid"], "image.generate");
        assert_eq!(fields["msg"], BODY_IN_MSG, "{line}");
        let sd = fields["structured_data"].as_str().unwrap();
        assert!(
            sd.starts_with("[auditrail@32473 node=\"test-node\" seq=\""),
            "{sd}"
        );
        assert!(
            sd.ends_with("\"]"),
            "rsyslog found the end of the SD element: {sd}"
        );
        assert!(
            sd.contains(" actor_id=\"mallory\\\"\\] [x@1 y=\\\"z\" "),
            "{sd}"
        );
        assert!(
            sd.contains(" actor_name=\"Mallory | CEF:0|x=y\\\\\" "),
            "{sd}"
        );
        assert!(
            sd.contains(" target=\"model\\nconfig\\r\\n\\u0000\" "),
            "{sd}"
        );
        assert!(sd.contains(" outcome=\"failure\" "), "{sd}");
        let uid = sd
            .split(" event_id=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("event_id in SD");
        let trace = &sent[uid];
        assert!(sd.contains(&format!(" trace_id=\"{trace}\" ")), "{sd}");
        seen.insert(uid.to_owned());
    }
    assert_eq!(seen.len(), n);

    // cef: one CEF line as MSG, values escaped for CEF.
    cef.exactly_lines(n, DELIVERY, &server).await;
    let mut seen = HashSet::new();
    for fields in cef.parsed() {
        let msg = fields["msg"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!(
                "CEF:0|auditrail|auditrail|{}|image.generate|image.generate|6|rt=",
                env!("CARGO_PKG_VERSION")
            )),
            "{msg}"
        );
        assert_eq!(fields["structured_data"], "-");
        assert!(msg.ends_with(&format!(" msg={BODY_IN_CEF}")), "{msg}");
        assert!(
            msg.contains(" suser=Mallory | CEF:0|x\\=y\\\\ suid=mallory\"] [x@1 y\\=\"z "),
            "{msg}"
        );
        assert!(
            msg.contains(" request=model\\nconfig\\r\\n\\u0000 "),
            "{msg}"
        );
        assert!(msg.contains(" outcome=failure "), "{msg}");
        assert!(msg.contains(" dvchost=test-node "), "{msg}");
        assert!(msg.contains(" act=image.generate "), "{msg}");
        assert!(
            msg.contains(" src=198.51.100.4 ")
                || msg.contains(" cs5Label=client_address cs5=gateway.internal "),
            "{msg}"
        );
        let uid = msg
            .split(" externalId=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .expect("externalId");
        assert!(
            msg.contains(&format!(" cs1Label=trace_id cs1={} ", sent[uid])),
            "{msg}"
        );
        seen.insert(uid.to_owned());
    }
    assert_eq!(seen.len(), n);

    // json: the canonical event as MSG, exact after JSON decoding.
    json.exactly_lines(n, DELIVERY, &server).await;
    let mut seen = HashSet::new();
    for fields in json.parsed() {
        // local3 (19) * 8 + warning (4).
        assert_eq!(fields["pri"], "156");
        let event: Value = serde_json::from_str(fields["msg"].as_str().unwrap()).expect("JSON MSG");
        assert_eq!(event["body"], HOSTILE_BODY);
        assert_eq!(event["actor_id"], "mallory\"] [x@1 y=\"z");
        assert_eq!(event["target"], "model\nconfig\r\n\0");
        assert_eq!(event["attributes"]["user.name"], "Mallory | CEF:0|x=y\\");
        let uid = event["event_id"].as_str().unwrap();
        assert_eq!(event["trace_id"], sent[uid].as_str());
        seen.insert(uid.to_owned());
    }
    assert_eq!(seen.len(), n);
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_client_certificate_into_rsyslog() {
    let rsyslog = Rsyslog::start(Listener::Tls);
    let pki = rsyslog.pki.as_ref().unwrap();
    // The certificate names localhost (and 127.0.0.1): verified by name.
    let url = rsyslog.url().replace("127.0.0.1", "localhost");
    let keys = format!(
        "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let server = Server::start_with("", &sink("siem-tls", &url, &keys));
    let (request, ids) = numbered_batch(SPAN, "tls", 50);
    send(&mut client(&server).await, request).await;
    let lines = rsyslog.exactly_lines(50, DELIVERY, &server).await;
    let seen: HashSet<String> = lines
        .iter()
        .filter_map(|l| sd_value(l, "event_id"))
        .collect();
    for (uid, trace) in &ids {
        let line = lines
            .iter()
            .find(|l| sd_value(l, "event_id").as_deref() == Some(uid.as_str()))
            .unwrap_or_else(|| panic!("{uid} missing"));
        assert_eq!(sd_value(line, "trace_id").as_deref(), Some(trace.as_str()));
    }
    assert_eq!(seen.len(), 50);

    // Without the client certificate rsyslog refuses the handshake: the
    // sink is unhealthy, saying why, and its events wait in the spool. (On
    // an existing spool, so `serve` starts with the sink unreachable.)
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    drop(Server::start_in(dir.path(), "", ""));
    let no_client_cert = format!("tls_ca_file = \"{}\"", pki.ca.display());
    let server = Server::start_in(dir.path(), "", &sink("siem-tls", &url, &no_client_cert));
    let (request, _) = numbered_batch(SPAN, "tls-refused", 5);
    send(&mut client(&server).await, request).await;
    let deadline = Instant::now() + DELIVERY;
    loop {
        let (_, status) = sink_status(&server, "siem-tls").await;
        let error = status["last_error"].as_str().unwrap_or_default();
        if status["healthy"] == false
            // The 5, and the config change that added the sink.
            && status["lag_events"] == 6
            && error.contains("client certificate")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rsyslog.raw_lines().len(),
        50,
        "nothing written into a refused connection"
    );
    drop(server);

    // A CA that did not sign the server's certificate: refused as well.
    let other = auditrail_tests::rsyslog::TestPki::generate(dir.path());
    let wrong_ca = keys.replace(
        &pki.ca.display().to_string(),
        &other.ca.display().to_string(),
    );
    let (status, log) = Server::start_expecting_exit(
        dir.path(),
        "",
        &sink("siem-tls", &url, &wrong_ca),
        &[],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(log.contains("tls:") && log.contains("certificate"), "{log}");
}

/// The distinct `event_id`s in rsyslog's lines and how many lines there
/// are, once `done` holds for the ids or [`DELIVERY`] has passed (the
/// caller's assertions then say what is missing).
async fn wait_for_event_ids(
    rsyslog: &Rsyslog,
    done: impl Fn(&HashSet<String>) -> bool,
) -> (HashSet<String>, usize) {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let lines = rsyslog.raw_lines();
        let seen: HashSet<String> = lines
            .iter()
            .filter_map(|l| sd_value(l, "event_id"))
            .collect();
        if done(&seen) || Instant::now() > deadline {
            return (seen, lines.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of SD-PARAM `name` in a raw rfc5424 line (values these tests
/// look up hold nothing that needs escaping).
fn sd_value(line: &str, name: &str) -> Option<String> {
    let rest = line.split(&format!(" {name}=\"")).nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn udp_one_datagram_per_event_and_an_oversized_event_is_dead_lettered() {
    let rsyslog = Rsyslog::start(Listener::Udp);
    let server = Server::start_with(
        "",
        &sink(
            "siem-udp",
            &rsyslog.url(),
            "format = \"json\"\nmax_message_bytes = 1500",
        ),
    );
    let (mut request, ids) = numbered_batch(SPAN, "udp", 20);
    let big_uid = ids[7].0.clone();
    let records = &mut request.resource_logs[0].scope_logs[0].log_records;
    records[7].body = Some(otlp::string("x".repeat(3000)));
    send(&mut client(&server).await, request).await;

    // The 19 that fit, and the tombstone of the one dead-lettered.
    let lines = rsyslog.exactly_lines(20, DELIVERY, &server).await;
    let events: Vec<Value> = lines
        .iter()
        .map(|line| {
            let json = &line[line.find(" - {").expect("JSON MSG") + 3..];
            serde_json::from_str(json).expect("one JSON event per datagram")
        })
        .collect();
    let (tombstones, sent): (Vec<&Value>, Vec<&Value>) = events
        .iter()
        .partition(|e| e["event_name"] == "auditrail.tombstone");
    assert_eq!(tombstones.len(), 1, "{events:?}");
    assert!(tombstones[0]["attributes"].to_string().contains(&big_uid));
    let delivered: HashSet<String> = sent
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered.len(), 19);
    assert!(!delivered.contains(&big_uid));

    let deadline = Instant::now() + DELIVERY;
    while sink_status(&server, "siem-udp").await.1["dead_letters"] != 1 {
        assert!(
            Instant::now() < deadline,
            "no dead letter:\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = server.dead_letters(None).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["event_id"], big_uid.as_str());
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("message_too_large") && reason.contains("max_message_bytes = 1500"),
        "{reason}"
    );
    let (datagrams, samples) = sink_counter(
        &server,
        "auditrail_syslog_udp_datagrams_sent_total",
        "siem-udp",
    )
    .await;
    assert_eq!(datagrams, 20.0, "{samples:?}");
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rsyslog_down_for_a_while_then_every_event_arrives() {
    let mut rsyslog = Rsyslog::start(Listener::Tcp);
    let server = Server::start_with("", &sink("siem", &rsyslog.url(), ""));
    let mut sent: HashMap<String, String> = HashMap::new();
    let mut client = client(&server).await;
    let (request, ids) = numbered_batch(SPAN, "before", 100);
    sent.extend(ids);
    send(&mut client, request).await;
    rsyslog.wait_lines(100, DELIVERY, &server).await;

    // The sink's connection stays open across the stop: the next batch
    // must find out it is dead rather than write into it.
    rsyslog.stop();
    for round in 0..4 {
        let (request, ids) = numbered_batch(SPAN, &format!("during-{round}"), 50);
        sent.extend(ids);
        send(&mut client, request).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + DELIVERY;
    loop {
        let (_, status) = sink_status(&server, "siem").await;
        // (Not a lag of 200: a sink that wrote into the dead connection
        // would count those events as delivered, and the check below is
        // what must catch that.)
        if status["healthy"] == false && status["lag_events"].as_u64() > Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink does not see rsyslog down: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    rsyslog.resume();

    let (seen, lines) = wait_for_event_ids(&rsyslog, |seen| seen.len() >= sent.len()).await;
    assert_none_missing(&sent, &seen);
    eprintln!(
        "{} events, {lines} lines ({} duplicates, allowed: at-least-once)",
        sent.len(),
        lines - seen.len()
    );
    let (_, status) = sink_status(&server, "siem").await;
    assert_eq!(status["dead_letters"], 0, "{status}");
}

/// `kill -9` while the sink delivers, then rsyslog down while auditrail
/// restarts and takes more: every acknowledged event arrives (at least
/// once: syslog has no acknowledgement, so doubles are allowed and counted).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_and_an_outage_lose_nothing() {
    let rsyslog = std::cell::RefCell::new(Rsyslog::start(Listener::Tcp));
    let dir = tempfile::tempdir().unwrap();
    let config = sink("siem", &rsyslog.borrow().url(), "");
    let (server, acked) = kill_9_then_outage(
        dir.path(),
        &config,
        SPAN,
        || rsyslog.borrow_mut().stop(),
        || rsyslog.borrow_mut().resume(),
    )
    .await;
    let rsyslog = rsyslog.into_inner();
    let (seen, lines) = wait_for_event_ids(&rsyslog, |seen| acked.is_subset(seen)).await;
    let missing: Vec<&String> = acked.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never reached rsyslog, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "{} events, {lines} lines ({} doubles, allowed: at-least-once)",
        acked.len(),
        lines.saturating_sub(seen.len())
    );
    drop(server);
}
