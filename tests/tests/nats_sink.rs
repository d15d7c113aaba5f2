//! The NATS JetStream sink against a real nats-server of the test's own:
//! each event arrives once, with its id as `Nats-Msg-Id`, on its templated
//! subject; `kill -9` during delivery and the server down for a while lose
//! and double nothing (JetStream drops resends inside the duplicate
//! window); an event over the server's max_payload, or over the stream's
//! own max_msg_size, is dead-lettered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use auditrail_tests::nats::{
    create_stream_with_max_msg_size, stream_messages, NatsServer, StreamMessage,
};
use auditrail_tests::sinks::{
    assert_each_once, assert_no_dead_letters, client, kill_9_then_outage, numbered_batch,
    poison_between_two, send, wait_dead_lettered,
};
use auditrail_tests::Server;

/// Span ids of this file's events start with this byte.
const SPAN: u8 = 0x4e;
const STREAM: &str = "AUDIT";

fn sink(nats: &NatsServer) -> String {
    format!(
        "[[sinks]]\nname = \"bus\"\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"audit.{{tenant}}.{{service_name}}\"\nstream = \"{STREAM}\"\n\n[sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\ntimeout = \"3s\"\n",
        nats.url()
    )
}

/// Waits until the stream holds `n` messages (or more); returns them.
async fn wait_for_messages(nats: &NatsServer, n: usize, within: Duration) -> Vec<StreamMessage> {
    let deadline = Instant::now() + within;
    loop {
        let messages = stream_messages(&nats.url(), STREAM).await;
        if messages.len() >= n || Instant::now() > deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_arrives_once_on_its_subject_with_its_id() {
    let nats = NatsServer::start(None);
    let server = Server::start_with("", &sink(&nats));
    let mut grpc = client(&server).await;
    let (request, ids) = numbered_batch(SPAN, "once", 300);
    send(&mut grpc, request).await;

    let messages = wait_for_messages(&nats, 300, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 300, "every event, once");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &messages {
        *counts.entry(m.msg_id.as_str()).or_insert(0) += 1;
    }
    for (uid, trace) in &ids {
        assert_eq!(counts.get(uid.as_str()), Some(&1), "{uid}");
        let m = messages.iter().find(|m| &m.msg_id == uid).unwrap();
        assert_eq!(m.subject, "audit.default.imagegen-ui");
        assert_eq!(m.payload["event_id"], uid.as_str());
        assert_eq!(m.payload["trace_id"], trace.as_str());
        assert_eq!(
            m.payload["attributes"]["user.id"].as_str().map(|s| &s[..5]),
            Some("user-")
        );
        assert_eq!(m.payload["hash"].as_str().map(str::len), Some(64));
    }
    assert_no_dead_letters(&server, "bus").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_and_an_outage_lose_and_double_nothing() {
    let nats = std::cell::RefCell::new(NatsServer::start(None));
    let dir = tempfile::tempdir().unwrap();
    let config = sink(&nats.borrow());
    let (server, acked) = kill_9_then_outage(
        dir.path(),
        &config,
        SPAN,
        || nats.borrow_mut().stop(),
        || nats.borrow_mut().restart(),
    )
    .await;
    let nats = nats.into_inner();
    let messages = wait_for_messages(&nats, acked.len(), Duration::from_secs(60)).await;
    // By the event id in the payload, not the header: a missing header
    // shows as doubles.
    assert_each_once(
        "the stream",
        &acked,
        messages
            .iter()
            .map(|m| m.payload["event_id"].as_str().unwrap_or_default()),
    );
    assert!(
        messages
            .iter()
            .all(|m| m.payload["event_id"] == m.msg_id.as_str()),
        "every message's Nats-Msg-Id is its event id"
    );
    drop(server);
}

/// One small event, one of `huge_bytes`, one small: the huge one is
/// dead-lettered (with a reason holding `why`), the others delivered.
async fn huge_event_is_dead_lettered(nats: &NatsServer, huge_bytes: usize, why: &str) {
    let server = Server::start_with("", &sink(nats));
    let mut grpc = client(&server).await;
    send(&mut grpc, poison_between_two(SPAN, 9_000_001, huge_bytes)).await;
    wait_dead_lettered(&server, "bus", 1).await;
    // The two small ones, and the tombstone the dead letter left.
    let messages = wait_for_messages(nats, 3, Duration::from_secs(30)).await;
    let (tombstones, sent): (Vec<&StreamMessage>, Vec<&StreamMessage>) = messages
        .iter()
        .partition(|m| m.payload["event_name"] == "auditrail.tombstone");
    let ids: HashSet<&str> = sent.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["small-1", "small-2"]));
    assert_eq!(tombstones.len(), 1, "{messages:?}");
    let letters = server.dead_letters(Some("bus")).await;
    assert!(
        letters.to_string().contains(why),
        "the dead letter says why ({why}): {letters}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_max_payload_is_dead_lettered_and_the_rest_delivered() {
    let nats = NatsServer::start(Some(16 * 1024));
    huge_event_is_dead_lettered(&nats, 40_000, "max_payload").await;
}

/// The stream refuses what the server would carry: its answer (JetStream
/// error 10054) is a refusal of that event, not an outage to wait out.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_the_streams_max_msg_size_is_dead_lettered_and_the_rest_delivered() {
    let nats = NatsServer::start(None);
    create_stream_with_max_msg_size(&nats.url(), STREAM, "audit.>", 8 * 1024).await;
    huge_event_is_dead_lettered(&nats, 20_000, "max_msg_size").await;
}
