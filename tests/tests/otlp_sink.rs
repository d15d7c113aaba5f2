//! The OTLP forward sink, into a second, real auditrail: every event
//! arrives with its id, trace context and attributes; `kill -9` of the
//! forwarder during delivery and the downstream down for a while lose
//! nothing and (the downstream deduplicating by `log.record.uid`) double
//! nothing; a record the downstream rejects (`partial_success`) is
//! dead-lettered while the rest of its batch arrives. Over gRPC and HTTP.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use auditrail_tests::otlp;
use auditrail_tests::sinks::{
    assert_each_once, assert_no_dead_letters, client, kill_9_then_outage, numbered_batch, send,
};
use auditrail_tests::{eventually_within, Server};
use serde_json::Value;

/// Span ids of this file's events start with this byte.
const SPAN: u8 = 0x07;

fn forward_to(url: &str, protocol: &str) -> String {
    format!(
        "[[sinks]]\nname = \"upstream\"\ntype = \"otlp\"\nurl = \"{url}\"\nprotocol = \"{protocol}\"\n\n[sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\ntimeout = \"3s\"\n"
    )
}

/// The downstream's events by id (once `n` have arrived, or 60 s passed).
async fn downstream_events(downstream: &Server, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = downstream.events("limit=0").await;
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn forwards_every_event_with_its_context(protocol: &str) {
    let downstream = Server::start();
    let url = match protocol {
        "grpc" => downstream.grpc_url(),
        _ => format!("http://{}", downstream.http),
    };
    let forwarder = Server::start_with("", &forward_to(&url, protocol));
    let mut grpc = client(&forwarder).await;
    let (request, ids) = numbered_batch(SPAN, &format!("fwd-{protocol}"), 200);
    send(&mut grpc, request).await;

    let events = downstream_events(&downstream, 200).await;
    assert_eq!(events.len(), 200, "every event, once");
    let by_id: HashMap<&str, &Value> = events
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap(), e))
        .collect();
    let upstream: HashMap<String, Value> = forwarder
        .events("limit=0")
        .await
        .into_iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_owned(), e))
        .collect();
    for (uid, trace) in &ids {
        let down = by_id
            .get(uid.as_str())
            .unwrap_or_else(|| panic!("{uid} missing"));
        let up = &upstream[uid];
        assert_eq!(down["trace_id"], trace.as_str());
        for field in [
            "span_id",
            "trace_flags",
            "time_unix_nano",
            "service_name",
            "event_name",
            "actor_id",
            "outcome",
            "body",
            "attributes",
            "resource_attributes",
            "scope_name",
            "severity_number",
        ] {
            assert_eq!(down[field], up[field], "{uid}: {field}");
        }
    }
    assert_no_dead_letters(&forwarder, "upstream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_every_event_with_its_context_over_grpc() {
    forwards_every_event_with_its_context("grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_every_event_with_its_context_over_http() {
    forwards_every_event_with_its_context("http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_a_downstream_outage_lose_and_double_nothing() {
    let down_dir = tempfile::tempdir().unwrap();
    let downstream = std::cell::RefCell::new(Server::start_in(down_dir.path(), "", ""));
    let config = forward_to(&downstream.borrow().grpc_url(), "grpc");
    let dir = tempfile::tempdir().unwrap();
    let (forwarder, acked) = kill_9_then_outage(
        dir.path(),
        &config,
        SPAN,
        || {
            downstream.borrow_mut().terminate();
        },
        // Back on the same ports and spool.
        || downstream.borrow_mut().restart(),
    )
    .await;
    let downstream = downstream.into_inner();
    let events = downstream_events(&downstream, acked.len()).await;
    assert_each_once(
        "the downstream auditrail",
        &acked,
        events.iter().map(|e| e["event_id"].as_str().unwrap()),
    );
    drop(forwarder);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_the_downstream_rejects_is_dead_lettered_and_the_rest_arrive() {
    let downstream = Server::start_with_receiver("max_event_bytes = \"8KiB\"");
    let forwarder = Server::start_with("", &forward_to(&downstream.grpc_url(), "grpc"));
    let mut grpc = client(&forwarder).await;
    let (trace, _) = otlp::trace_id(7_000_001);
    let records = (0..8)
        .map(|i| {
            let body = if i == 5 {
                "x".repeat(20_000)
            } else {
                format!("small {i}")
            };
            otlp::record(
                &format!("rej-{i}"),
                trace,
                [SPAN, 2, 0, 0, 0, 0, 0, i + 1],
                &body,
                vec![],
            )
        })
        .collect();
    // The forwarder takes the big one (its own limit is 1 MiB).
    send(&mut grpc, otlp::request("imagegen-ui", records)).await;

    eventually_within(
        Duration::from_secs(30),
        "the rejected record is dead-lettered",
        || async {
            forwarder
                .metric("auditrail_sink_dead_lettered_events_total{sink=\"upstream\"}")
                .await
                == 1.0
        },
    )
    .await;
    // The seven, the tombstone the forwarder's dead letter left (forwarded
    // too), and the downstream's own tombstones of each request that held
    // the rejected record (the forwarder narrows it down by resending).
    let dead_lettered = |e: &Value| {
        e["event_name"] == "auditrail.tombstone"
            && e["attributes"].as_str().unwrap().contains("dead_lettered")
    };
    eventually_within(
        Duration::from_secs(30),
        "the forwarded tombstone",
        || async {
            downstream
                .events("limit=0")
                .await
                .iter()
                .any(&dead_lettered)
        },
    )
    .await;
    let all = downstream.events("limit=0").await;
    let (internal, events): (Vec<&Value>, Vec<&Value>) =
        all.iter().partition(|e| e["service_name"] == "auditrail");
    assert_eq!(
        internal.iter().filter(|e| dead_lettered(e)).count(),
        1,
        "{all:#?}"
    );
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let expected: HashSet<String> = (0..8)
        .filter(|i| *i != 5)
        .map(|i| format!("rej-{i}"))
        .collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect());
    assert_eq!(
        events.len(),
        7,
        "the records resent while narrowing down are stored once"
    );
    let letters = forwarder.dead_letters(Some("upstream")).await;
    assert!(letters.to_string().contains("rej-5"), "{letters}");
    assert!(
        letters.to_string().contains("max_event_bytes"),
        "the reason names the limit: {letters}"
    );
}
