//! The Kafka sink against a real Kafka-protocol broker: a `tansu` of the
//! test's own, or the Apache Kafka broker that `AUDITRAIL_TEST_KAFKA`
//! names. Each event arrives once, keyed by its event id, as its canonical
//! JSON, on the topic its tenant and service render, in the partition the
//! Java client would pick for its key; `kill -9` during delivery and then
//! the broker unreachable lose nothing, and only the crash (a new producer
//! session) may add copies, which are byte-identical to the first (so a
//! consumer deduplicating on the key sees each event once); an event over
//! `max_message_bytes` is dead-lettered while its neighbours arrive.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditrail_tests::kafka::{
    java_partition, read_topics, wait_for_records, KafkaBroker, KafkaRecord,
};
use auditrail_tests::otlp;
use auditrail_tests::sinks::{
    assert_each_once, assert_no_dead_letters, client, kill_9_then_outage, numbered_batch,
    poison_between_two, send, sink_counter, sink_status, start_sending, tail, wait_dead_lettered,
    Load,
};
use auditrail_tests::{eventually_within, Server};

/// Span ids of this file's events start with this byte.
const SPAN: u8 = 0x6b;

/// The sink's table: topics `<prefix>.<tenant>.<service>`, 3 partitions.
fn sink(broker: &KafkaBroker, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"stream\"\ntype = \"kafka\"\nurl = \"kafka://{}\"\ntopic = \"{}.{{tenant}}.{{service_name}}\"\npartitions = 3\n{extra}\n\n[sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\ntimeout = \"3s\"\n",
        broker.bootstrap, broker.prefix
    )
}

fn topic(broker: &KafkaBroker, service: &str) -> String {
    format!("{}.default.{service}", broker.prefix)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_arrives_once_keyed_by_its_id_on_its_topic() {
    let broker = KafkaBroker::start().await;
    let server = Server::start_with("", &sink(&broker, ""));
    let mut grpc = client(&server).await;
    let (ui, mut ids) = numbered_batch(SPAN, "ui", 200);
    send(&mut grpc, ui).await;
    // A second service: a second topic from the same template.
    let (mut api, api_ids) = numbered_batch(SPAN, "api", 100);
    api.resource_logs[0].resource.as_mut().unwrap().attributes =
        vec![otlp::attr("service.name", otlp::string("billing api"))];
    send(&mut grpc, api).await;
    let api_uids: HashSet<String> = api_ids.iter().map(|(uid, _)| uid.clone()).collect();
    ids.extend(api_ids);

    // "billing api" has a space, which a topic name cannot.
    let topics = [topic(&broker, "imagegen-ui"), topic(&broker, "billing_api")];
    let records = wait_for_records(&broker, &topics, 300, Duration::from_secs(60)).await;
    assert_eq!(
        records.len(),
        300,
        "every event, once; server log:\n{}",
        tail(&server.log())
    );
    let by_key: HashMap<&str, &KafkaRecord> = records.iter().map(|r| (r.key.as_str(), r)).collect();
    assert_eq!(by_key.len(), 300, "no key twice");
    let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "keys spread over the 3 partitions: {partitions:?}"
    );
    for (uid, trace) in &ids {
        let r = by_key
            .get(uid.as_str())
            .unwrap_or_else(|| panic!("no record keyed {uid}"));
        let want_topic = if api_uids.contains(uid) {
            &topics[1]
        } else {
            &topics[0]
        };
        assert_eq!(&r.topic, want_topic, "{uid}");
        assert_eq!(r.payload["event_id"], uid.as_str(), "key = event id");
        assert_eq!(r.payload["trace_id"], trace.as_str());
        assert_eq!(r.payload["tenant"], "default");
        assert_eq!(r.payload["event_name"], "image.generate");
        assert_eq!(
            r.payload["attributes"]["user.id"].as_str().map(|s| &s[..5]),
            Some("user-"),
            "attributes as an object"
        );
        assert_eq!(r.payload["hash"].as_str().map(str::len), Some(64));
        assert!(r.payload["seq"].as_u64().is_some_and(|s| s >= 1));
        assert_eq!(
            r.partition,
            java_partition(uid.as_bytes(), 3),
            "{uid}: the partition a Java producer picks for this key"
        );
    }
    // The canonical event, as `query --format json` and the file sink have it.
    let stored = server.events("limit=0").await;
    let first = stored
        .iter()
        .find(|e| e["event_id"] == "ui-0")
        .expect("ui-0 in the spool");
    for field in [
        "node",
        "seq",
        "time_unix_nano",
        "span_id",
        "body",
        "prev_hash",
    ] {
        assert_eq!(by_key["ui-0"].payload[field], first[field], "{field}");
    }
    assert_no_dead_letters(&server, "stream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_and_an_outage_lose_nothing_and_only_the_crash_doubles() {
    let broker = KafkaBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A short export timeout, well inside the outage: the delivery loop
    // gives up on batches librdkafka still holds and sends them again.
    let config = sink(&broker, "").replace("timeout = \"3s\"", "timeout = \"500ms\"");
    let (server, mut acked) = kill_9_then_outage(
        dir.path(),
        &config,
        SPAN,
        || broker.go_down(),
        || broker.come_back(),
    )
    .await;
    // That outage began before the restarted server had connected, so no
    // export was in flight when it did. A second one, cut while round 2 is
    // being delivered: exports with records in librdkafka's hands time out
    // and are sent again.
    let load = Arc::new(Mutex::new(Load::default()));
    let (_, mut before) = sink_status(&server, "stream").await;
    let mut round = 2;
    let mut sending = start_sending(&server, &load, SPAN, round, 2000);
    // Cut when part of a round is delivered and part is not. A round the
    // sink took whole between two looks (a quick machine) proves nothing:
    // then another round is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, status) = sink_status(&server, "stream").await;
        if status["cursor"].as_u64() > before["cursor"].as_u64()
            && status["lag_events"].as_u64() > Some(0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "round {round} was never seen being delivered: {status}"
        );
        if sending.is_finished() && status["lag_events"] == 0 {
            sending.await.unwrap();
            before = status;
            round += 1;
            sending = start_sending(&server, &load, SPAN, round, 2000);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.go_down();
    sending.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.come_back();
    acked.extend(load.lock().unwrap().acked.iter().cloned());

    // Once the cursor has passed every event, the topic holds all it
    // will: copies from the crash included.
    eventually_within(Duration::from_secs(90), "the sink catches up", || async {
        let (_, status) = sink_status(&server, "stream").await;
        status["lag_events"] == 0 && status["healthy"] == true
    })
    .await;
    let topics = [topic(&broker, "imagegen-ui")];
    let records = read_topics(&broker.bootstrap, &topics).await;

    // Each event at least once, and every copy of it the same record.
    let mut copies: HashMap<&str, Vec<&KafkaRecord>> = HashMap::new();
    for r in &records {
        assert_eq!(r.payload["event_id"], r.key.as_str(), "key = event id");
        copies.entry(r.key.as_str()).or_default().push(r);
    }
    let distinct: Vec<&str> = copies.keys().copied().collect();
    assert_each_once("the topic (deduplicated on the key)", &acked, distinct);
    for (key, list) in &copies {
        assert!(
            list.iter().all(|r| r.raw == list[0].raw),
            "{key}: the copies differ"
        );
    }
    // Rounds 1 and 2 went to the restarted server only, through the
    // outages: one producer session, whose retries and the delivery loop's
    // resends must not double anything. Only round 0 (delivered by the
    // killed process, then again from its last cursor flush) may have copies.
    let doubled: Vec<&&str> = copies
        .iter()
        .filter(|(_, list)| list.len() > 1)
        .map(|(key, _)| key)
        .collect();
    let doubled_after_crash: Vec<&&&str> =
        doubled.iter().filter(|k| !k.starts_with("r0-")).collect();
    assert!(
        doubled_after_crash.is_empty(),
        "{} events sent after the crash are stored twice, e.g. {:?}",
        doubled_after_crash.len(),
        &doubled_after_crash[..doubled_after_crash.len().min(5)]
    );
    // The outage was felt: exports failed and were sent again, and those
    // resends reused what librdkafka held instead of producing anew.
    let (errors, samples) = sink_counter(&server, "auditrail_sink_errors_total", "stream").await;
    let resends = server
        .metric("auditrail_kafka_resends_deduplicated_total{sink=\"stream\"}")
        .await;
    if broker.is_tansu() {
        assert!(
            errors > 0.0,
            "no export failed during the outage: {samples:?}"
        );
        assert!(resends > 0.0, "no batch was sent again during the outage");
    }
    eprintln!(
        "kill -9 and outage: {} events acknowledged, {} records; {} events of the killed process's last second stored twice; {errors} failed exports ({samples:?}), {resends} resent events deduplicated by the sink",
        acked.len(),
        records.len(),
        doubled.len()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_max_message_bytes_is_dead_lettered_and_the_rest_delivered() {
    let broker = KafkaBroker::start().await;
    let server = Server::start_with("", &sink(&broker, "max_message_bytes = \"16KiB\""));
    let mut grpc = client(&server).await;
    send(&mut grpc, poison_between_two(SPAN, 9_100_001, 40_000)).await;
    wait_dead_lettered(&server, "stream", 1).await;
    let topics = [topic(&broker, "imagegen-ui")];
    let records = wait_for_records(&broker, &topics, 2, Duration::from_secs(30)).await;
    let mut keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["small-1", "small-2"], "each neighbour once");
    let letters = server.dead_letters(Some("stream")).await;
    assert!(
        letters.to_string().contains("max_message_bytes"),
        "the dead letter says why: {letters}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_without_create_topics_stops_start_up() {
    // Nor may the broker create it (Apache Kafka does by default, when a
    // producer asks for a topic it does not have).
    let broker = KafkaBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[sinks]]\nname = \"stream\"\ntype = \"kafka\"\nurl = \"{}\"\ntopic = \"{}-absent\"\ncreate_topics = false\n[sinks.librdkafka]\n\"allow.auto.create.topics\" = false\n",
        broker.bootstrap, broker.prefix
    );
    let (status, log) =
        Server::start_expecting_exit(dir.path(), "", &config, &[], Duration::from_secs(60));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("does not exist, and create_topics = false"),
        "the error names the problem:\n{log}"
    );
}
