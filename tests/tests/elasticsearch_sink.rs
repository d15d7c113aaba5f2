//! The Elasticsearch / OpenSearch sink against the protocol double
//! (`auditrail_tests::elasticsearch`, which says at its top what it
//! follows; no real cluster can be installed on these machines): each
//! event once under `<node>:<seq>` in its date index, with ECS fields; a
//! bulk answer with mixed items (429s sent again alone, a mapping error
//! dead-lettered, the rest delivered); whole requests refused for a while,
//! and answers lost after the cluster stored the batch (resends answer
//! 409, counted as stored); `kill -9` during delivery with the cluster
//! down afterwards; a data stream on OpenSearch; credentials refused at
//! start-up.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use auditrail_tests::elasticsearch::{shared, Double, Flavor, Shared};
use auditrail_tests::sinks::{
    assert_each_once, assert_no_dead_letters, client, emit_sink_event, kill_9_then_outage,
    numbered_batch, send, sink_counter, sink_status, tail, wait_caught_up,
};
use auditrail_tests::{eventually_within, free_port, otlp, Server};
use opentelemetry::logs::AnyValue;

/// The first byte of the span ids of this file's events.
const SPAN: u8 = 0xe5;
const CATCH_UP: Duration = Duration::from_secs(60);
/// `Basic base64("auditrail:es-e2e-pw")`.
const BASIC: &str = "Basic YXVkaXRyYWlsOmVzLWUyZS1wdw==";

fn addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// The sink's table: `target` is `index = ...` or `data_stream = ...`,
/// `extra` more keys of the sink.
fn sink(double: &Double, target: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"search\"\ntype = \"elasticsearch\"\nurl = \"{}\"\n{target}\n{extra}\ntimeout = \"3s\"\n\
         [sinks.delivery]\nmax_events = 100\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\ntimeout = \"4s\"\n",
        double.url()
    )
}

/// `auditrail.event_id` of every stored document, one per copy.
fn stored_ids(cluster: &Shared) -> Vec<String> {
    let cluster = cluster.lock().unwrap();
    cluster
        .docs
        .values()
        .map(|d| {
            d.source.as_ref().unwrap()["auditrail"]["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Waits until the cluster holds every id of `ids`.
async fn wait_stored(cluster: &Shared, ids: &HashSet<String>, server: &Server) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let stored: HashSet<String> = stored_ids(cluster).into_iter().collect();
        let missing = ids.iter().filter(|id| !stored.contains(*id)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never stored:\n{}",
            ids.len(),
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids_of(sent: &[(String, String)]) -> HashSet<String> {
    sent.iter().map(|(uid, _)| uid.clone()).collect()
}

/// `audit-%Y.%m.%d` for `unix_nano`, computed apart from the sink's code.
fn daily_index(unix_nano: u64) -> String {
    let days = (unix_nano / 1_000_000_000 / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("audit-{y:04}.{m:02}.{d:02}")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_once_under_node_seq_in_its_date_index_with_ecs_fields() {
    let cluster = shared(Flavor::Elasticsearch);
    {
        let mut c = cluster.lock().unwrap();
        c.authorization = Some(BASIC.into());
        c.pipelines.insert("audit-enrich".into());
    }
    let double = Double::start(addr(), &cluster);
    let config = sink(
        &double,
        "index = \"audit-%Y.%m.%d\"",
        "username = \"auditrail\"\npassword_env = \"ES_E2E_PASSWORD\"\npipeline = \"audit-enrich\"\ncompression = \"gzip\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in_env(dir.path(), "", &config, &[("ES_E2E_PASSWORD", "es-e2e-pw")]);
    assert!(
        server.log().contains("connected to the cluster")
            && server.log().contains("distribution=elasticsearch"),
        "{}",
        server.log()
    );

    // One event through the real Rust OTel SDK, at a fixed time...
    // 2026-05-04T10:00:00.123456789Z
    let time_ns: u64 = 1_777_888_800_123_456_789;
    let url = server.grpc_url();
    let (trace_id, span_id) = tokio::task::spawn_blocking(move || {
        emit_sink_event(
            url,
            UNIX_EPOCH + Duration::from_nanos(time_ns),
            "a lighthouse in a storm, in Elasticsearch",
            ("gen_ai.request.model", AnyValue::from("sdxl-turbo")),
        )
    })
    .await
    .unwrap();
    // ...and 60 more, timed now.
    let mut client = client(&server).await;
    let (request, sent) = numbered_batch(SPAN, "ecs", 60);
    send(&mut client, request).await;
    wait_caught_up(&server, "search", 61, CATCH_UP).await;
    assert_no_dead_letters(&server, "search").await;

    let spooled = server.events(&format!("trace_id={trace_id}")).await;
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let event_id = spooled[0]["event_id"].as_str().unwrap().to_owned();
    let seq = spooled[0]["seq"].as_u64().unwrap();
    let c = cluster.lock().unwrap();
    let docs = c.docs_in("audit-2026.05.04");
    assert_eq!(docs.len(), 1, "the SDK event alone is dated 2026-05-04");
    let (id, doc) = docs[0];
    assert_eq!(id, format!("test-node:{seq}"));
    let d = doc.source.as_ref().unwrap();
    eprintln!("{}", serde_json::to_string_pretty(d).unwrap());
    assert_eq!(d["@timestamp"], "2026-05-04T10:00:00.123456789Z");
    assert_eq!(d["message"], "a lighthouse in a storm, in Elasticsearch");
    assert_eq!(d["event"]["id"], event_id.as_str());
    assert_eq!(d["event"]["action"], "image.generate");
    assert_eq!(d["event"]["outcome"], "success");
    assert_eq!(d["event"]["severity"], 9);
    assert_eq!(d["log"]["level"], "INFO");
    assert_eq!(d["user"]["id"], "alice");
    assert_eq!(d["user"]["name"], "Alice Liddell");
    assert_eq!(d["source"]["ip"], "198.51.100.4");
    assert_eq!(d["source"]["address"], "198.51.100.4");
    assert_eq!(d["trace"]["id"], trace_id.as_str());
    assert_eq!(d["span"]["id"], span_id.as_str());
    assert_eq!(d["service"]["name"], "imagegen-ui");
    let a = &d["auditrail"];
    assert_eq!(a["node"], "test-node");
    assert_eq!(a["seq"], seq);
    assert_eq!(a["event_id"], event_id.as_str());
    assert_eq!(a["tenant"], "default");
    assert_eq!(a["target"], "model/sdxl");
    assert_eq!(a["time_unix_nano"], time_ns);
    assert_eq!(a["scope_name"], "audit");
    assert_eq!(a["attributes"]["zoom"], 3);
    assert_eq!(a["attributes"]["image.count"], 2);
    assert_eq!(a["attributes"]["gen_ai.request.model"], "sdxl-turbo");
    assert_eq!(a["resource_attributes"]["service.name"], "imagegen-ui");
    assert_eq!(a["hash"], spooled[0]["hash"]);
    assert_eq!(a["prev_hash"], spooled[0]["prev_hash"]);

    // Every numbered event once, in the index of its own day, under its
    // (node, seq), with its trace id.
    let trace_of: HashMap<&str, &str> =
        sent.iter().map(|(u, t)| (u.as_str(), t.as_str())).collect();
    let mut seqs = Vec::new();
    for ((index, id), doc) in &c.docs {
        let d = doc.source.as_ref().unwrap();
        let a = &d["auditrail"];
        assert_eq!(index, &daily_index(a["time_unix_nano"].as_u64().unwrap()));
        assert_eq!(id, &format!("test-node:{}", a["seq"]));
        if let Some(trace) = trace_of.get(a["event_id"].as_str().unwrap()) {
            assert_eq!(d["trace"]["id"], *trace);
            assert!(
                d["user"]["id"].as_str().unwrap().starts_with("user-"),
                "{d}"
            );
        }
        seqs.push(a["seq"].as_u64().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=61).collect::<Vec<u64>>());
    drop(c);
    let mut all = ids_of(&sent);
    all.insert(event_id);
    assert_each_once(
        "the double",
        &all,
        stored_ids(&cluster).iter().map(String::as_str),
    );
    drop(double);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_bulk_answer_resends_the_throttled_and_dead_letters_the_mapping_error() {
    let cluster = shared(Flavor::Elasticsearch);
    let double = Double::start(addr(), &cluster);
    let config = sink(&double, "index = \"audit-%Y.%m.%d\"", "");
    let server = Server::start_with("", &config);
    let mut client = client(&server).await;

    // The first event maps auditrail.attributes.mood as a long.
    let mood = |uid: &str, value: opentelemetry_proto::tonic::common::v1::AnyValue| {
        otlp::record(
            uid,
            otlp::trace_id(9000 + uid.len() as u64).0,
            [SPAN, 1, 0, 0, 0, 0, 0, 1],
            "mood check",
            vec![
                otlp::attr("event.name", otlp::string("mood.check")),
                otlp::attr("mood", value),
            ],
        )
    };
    send(
        &mut client,
        otlp::request("moods", vec![mood("mood-first", otlp::int(3))]),
    )
    .await;
    wait_stored(&cluster, &HashSet::from(["mood-first".to_owned()]), &server).await;

    // Then 20 in one request, the 11th with a mood the mapping cannot
    // take, and the cluster's write queue full for the first five items.
    cluster.lock().unwrap().throttle_items = 5;
    let uids: Vec<String> = (0..20)
        .map(|i| {
            if i == 10 {
                "mood-poison".into()
            } else {
                format!("mood-{i}")
            }
        })
        .collect();
    let records = uids
        .iter()
        .map(|uid| {
            if uid == "mood-poison" {
                mood(uid, otlp::string("calm"))
            } else {
                mood(uid, otlp::int(4))
            }
        })
        .collect();
    send(&mut client, otlp::request("moods", records)).await;
    let good: HashSet<String> = uids
        .iter()
        .filter(|u| *u != "mood-poison")
        .cloned()
        .collect();
    wait_stored(&cluster, &good, &server).await;
    eventually_within(CATCH_UP, "the mapping error is dead-lettered", || async {
        let (_, status) = sink_status(&server, "search").await;
        status["dead_letters"] == 1
    })
    .await;
    wait_caught_up(&server, "search", 21, CATCH_UP).await;

    let letters = server.dead_letters(Some("search")).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["event_id"], "mood-poison");
    let reason = letters[0]["reason"].as_str().unwrap();
    eprintln!("dead letter: {reason}");
    assert!(
        reason.contains("HTTP 400 document_parsing_exception")
            && reason.contains("failed to parse field [auditrail.attributes.mood] of type [long]"),
        "{reason}"
    );

    {
        let c = cluster.lock().unwrap();
        // One answer held all three kinds of item, and only the throttled
        // ones were sent again, alone; the refused one never again.
        let mixed = c
            .bulks
            .iter()
            .position(|b| {
                let statuses: HashSet<u16> = b.items.iter().map(|(_, s)| *s).collect();
                statuses.contains(&429) && statuses.contains(&400) && statuses.contains(&201)
            })
            .unwrap_or_else(|| panic!("no mixed bulk answer: {:?}", c.bulks));
        let throttled: Vec<&String> = c.bulks[mixed]
            .items
            .iter()
            .filter(|(_, s)| *s == 429)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(throttled.len(), 5);
        // (The dead letter's tombstone may go in a bulk of its own between.)
        let next = c.bulks[mixed + 1..]
            .iter()
            .find(|b| b.items.iter().any(|(id, _)| throttled.contains(&id)))
            .unwrap_or_else(|| panic!("the throttled items were not sent again: {:?}", c.bulks));
        let resent: Vec<&String> = next.items.iter().map(|(id, _)| id).collect();
        assert_eq!(resent, throttled, "the throttled items alone, in order");
        assert!(next.items.iter().all(|(_, s)| *s == 201), "{next:?}");
        let poison_id = c.bulks[mixed]
            .items
            .iter()
            .find(|(_, s)| *s == 400)
            .map(|(id, _)| id.clone())
            .unwrap();
        let poison_sends = c
            .bulks
            .iter()
            .flat_map(|b| &b.items)
            .filter(|(id, _)| *id == poison_id)
            .count();
        assert_eq!(poison_sends, 1, "a refused document is not sent again");
    }
    let mut all = good.clone();
    all.insert("mood-first".into());
    assert_each_once(
        "the double",
        &all,
        stored_ids(&cluster).iter().map(String::as_str),
    );
    assert!(!stored_ids(&cluster).contains(&"mood-poison".to_owned()));

    let items = |result: &'static str| {
        let server = &server;
        async move {
            let text = server.metrics_text().await;
            text.lines()
                .find(|l| {
                    l.starts_with("auditrail_elasticsearch_items_total{")
                        && l.contains(&format!("result=\"{result}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    assert_eq!(items("throttled").await, 5.0);
    assert_eq!(items("rejected").await, 1.0);
    // The 20 good ones, and the tombstone of the rejected one.
    assert_eq!(items("stored").await, 21.0);
    let (dead, _) = sink_counter(
        &server,
        "auditrail_sink_dead_lettered_events_total",
        "search",
    )
    .await;
    assert_eq!(dead, 1.0);
    drop(double);
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_requests_refused_for_a_while_and_lost_answers_catch_up_once() {
    let cluster = shared(Flavor::Elasticsearch);
    let double = Double::start(addr(), &cluster);
    let config = sink(&double, "index = \"audit-%Y.%m.%d\"", "");
    let server = Server::start_with("", &config);
    let mut client = client(&server).await;

    // 429 with Retry-After: 1 twice, then 503 twice.
    {
        let mut c = cluster.lock().unwrap();
        for (status, retry_after) in [(429, "1"), (429, "1"), (503, "1"), (503, "")] {
            c.refusals.push_back((status, retry_after.into()));
        }
    }
    let (request, sent) = numbered_batch(SPAN, "busy", 40);
    send(&mut client, request).await;
    eventually_within(CATCH_UP, "/readyz shows the throttled sink", || async {
        let (code, status) = sink_status(&server, "search").await;
        assert_eq!(code, 200, "a failing sink does not make the node unready");
        status["healthy"] == false
    })
    .await;
    wait_stored(&cluster, &ids_of(&sent), &server).await;
    wait_caught_up(&server, "search", 40, CATCH_UP).await;
    {
        let c = cluster.lock().unwrap();
        let statuses: Vec<u16> = c.bulks.iter().map(|b| b.status).collect();
        assert_eq!(&statuses[..5], [429, 429, 503, 503, 200], "{statuses:?}");
        let waited = c.bulks[1].at - c.bulks[0].at;
        eprintln!("429 Retry-After: 1 → retried after {waited:?}");
        assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    }
    let (throttled, _) = sink_counter(&server, "auditrail_sink_errors_total", "search").await;
    assert!(throttled >= 4.0, "{throttled}");

    // The cluster stores the next two requests but their answers are
    // lost: the batch is sent again, every item answers 409, and counts
    // as stored, not as an error and not twice.
    cluster.lock().unwrap().lose_answers = 2;
    let (request, lost) = numbered_batch(SPAN, "lost", 30);
    send(&mut client, request).await;
    wait_caught_up(&server, "search", 70, CATCH_UP).await;
    assert_no_dead_letters(&server, "search").await;
    let conflicts = cluster
        .lock()
        .unwrap()
        .item_statuses()
        .iter()
        .filter(|s| **s == 409)
        .count();
    eprintln!("{conflicts} items answered 409 (already stored) on resends");
    assert!(
        conflicts >= 30,
        "every resent item meets its stored copy: {conflicts}"
    );
    let mut all = ids_of(&sent);
    all.extend(ids_of(&lost));
    assert_each_once(
        "the double",
        &all,
        stored_ids(&cluster).iter().map(String::as_str),
    );
    let text = server.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("auditrail_elasticsearch_items_total{")
                && l.contains("result=\"already_stored\"")),
        "{text}"
    );
    drop(double);
}

/// `kill -9` while the sink delivers, then the cluster down while
/// auditrail restarts and takes more: every acknowledged event stored
/// exactly once (resends of stored events answer 409).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_and_an_outage_store_each_event_once() {
    let cluster = shared(Flavor::Elasticsearch);
    let addr = addr();
    let double = std::cell::RefCell::new(Some(Double::start(addr, &cluster)));
    let url = format!("http://{addr}");
    let config = format!(
        "[[sinks]]\nname = \"search\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\nindex = \"audit-%Y.%m.%d\"\napi_key_env = \"ES_E2E_KEY\"\ntimeout = \"2s\"\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n"
    );
    // The restarted servers inherit it (kill_9_then_outage passes no env).
    std::env::set_var("ES_E2E_KEY", "e2e-key-id:e2e-key-secret");
    // base64("e2e-key-id:e2e-key-secret")
    cluster.lock().unwrap().authorization =
        Some("ApiKey ZTJlLWtleS1pZDplMmUta2V5LXNlY3JldA==".into());
    let dir = tempfile::tempdir().unwrap();
    let (server, acked) = kill_9_then_outage(
        dir.path(),
        &config,
        SPAN,
        || drop(double.borrow_mut().take()),
        || *double.borrow_mut() = Some(Double::start(addr, &cluster)),
    )
    .await;
    wait_stored(&cluster, &acked, &server).await;
    wait_caught_up(&server, "search", acked.len(), CATCH_UP).await;
    assert_each_once(
        "the double",
        &acked,
        stored_ids(&cluster).iter().map(String::as_str),
    );
    let c = cluster.lock().unwrap();
    assert_eq!(c.docs.len(), acked.len(), "nothing else stored");
    assert_eq!(c.unauthorized, 0);
    let conflicts = c.item_statuses().iter().filter(|s| **s == 409).count();
    eprintln!(
        "{} events stored once; {conflicts} resent items answered 409 and counted as stored",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_stream_on_opensearch_is_created_and_written_with_create() {
    let cluster = shared(Flavor::OpenSearch);
    // OpenSearch ships no logs-*-* template: this one is the operator's.
    cluster.lock().unwrap().data_stream_templates = vec!["logs-auditrail-*".into()];
    let double = Double::start(addr(), &cluster);
    let config = sink(&double, "data_stream = \"logs-auditrail-default\"", "");
    let server = Server::start_with("", &config);
    assert!(
        server.log().contains("distribution=opensearch"),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("created the data stream"),
        "{}",
        server.log()
    );
    let mut client = client(&server).await;
    let (request, sent) = numbered_batch(SPAN, "stream", 50);
    send(&mut client, request).await;
    wait_caught_up(&server, "search", 50, CATCH_UP).await;
    assert_no_dead_letters(&server, "search").await;
    let c = cluster.lock().unwrap();
    let backing = c.data_streams["logs-auditrail-default"].clone();
    assert!(
        backing.starts_with(".ds-logs-auditrail-default-"),
        "{backing}"
    );
    let docs = c.docs_in("logs-auditrail-default");
    assert_eq!(docs.len(), 50);
    for (id, doc) in &docs {
        let d = doc.source.as_ref().unwrap();
        assert!(d["@timestamp"].as_str().unwrap().ends_with('Z'), "{d}");
        assert_eq!(*id, format!("test-node:{}", d["auditrail"]["seq"]));
    }
    assert!(c.docs.keys().all(|(index, _)| *index == backing));
    drop(c);
    assert_each_once(
        "the data stream",
        &ids_of(&sent),
        stored_ids(&cluster).iter().map(String::as_str),
    );
    drop(double);
}

/// A wrong password, a missing data-stream template and a missing ingest
/// pipeline each stop `serve` at start with a message that says what to
/// fix; nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn misconfigurations_stop_serve_at_start_with_a_clear_message() {
    let cluster = shared(Flavor::Elasticsearch);
    cluster.lock().unwrap().authorization = Some(BASIC.into());
    let double = Double::start(addr(), &cluster);
    let cases = [
        (
            "username = \"auditrail\"\npassword_env = \"ES_E2E_WRONG\"",
            "index = \"audit-%Y.%m.%d\"",
            vec![
                "sink \"search\" (elasticsearch): auth:",
                "HTTP 401",
                "security_exception",
                "check username and password_env",
            ],
        ),
        (
            "username = \"auditrail\"\npassword_env = \"ES_E2E_PASSWORD\"",
            "data_stream = \"audit-stream\"",
            vec![
                "sink \"search\" (elasticsearch): data_stream:",
                "no matching index template found for data stream [audit-stream]",
            ],
        ),
        (
            "username = \"auditrail\"\npassword_env = \"ES_E2E_PASSWORD\"\npipeline = \"nope\"",
            "index = \"audit\"",
            vec![
                "sink \"search\" (elasticsearch): pipeline:",
                "ingest pipeline \"nope\" does not exist",
            ],
        ),
    ];
    for (auth, target, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (status, log) = Server::start_expecting_exit(
            dir.path(),
            "",
            &sink(&double, target, auth),
            &[("ES_E2E_WRONG", "guess"), ("ES_E2E_PASSWORD", "es-e2e-pw")],
            Duration::from_secs(30),
        );
        assert!(!status.success(), "{log}");
        eprintln!("{}", log.lines().last().unwrap_or_default());
        for text in expected {
            assert!(log.contains(text), "{text:?} not in:\n{log}");
        }
    }
    let c = cluster.lock().unwrap();
    assert!(c.unauthorized >= 1);
    assert!(c.docs.is_empty() && c.bulks.is_empty());
}

/// Documents are keyed by `(node, seq)`, so a wiped spool must not start
/// at seq 1 again: its events would meet the old `_id`s, answer 409 and be
/// taken as stored without ever being written. The new spool asks the
/// cluster for the highest seq of its node and starts after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_spool_starts_after_the_highest_seq_the_cluster_holds() {
    let cluster = shared(Flavor::Elasticsearch);
    let double = Double::start(addr(), &cluster);
    let config = sink(&double, "index = \"audit-%Y.%m.%d\"", "");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "", &config);
    let mut first = client(&server).await;
    let (request, before) = numbered_batch(SPAN, "before-wipe", 30);
    send(&mut first, request).await;
    wait_caught_up(&server, "search", 30, CATCH_UP).await;
    assert!(server.terminate().success());
    drop(first);

    std::fs::remove_dir_all(server.spool_dir()).unwrap();
    let server = Server::start_in(dir.path(), "", &config);
    assert!(
        server
            .log()
            .contains("the sink already holds events of this node"),
        "{}",
        server.log()
    );
    let mut client = client(&server).await;
    let (request, after) = numbered_batch(SPAN, "after-wipe", 20);
    send(&mut client, request).await;
    let mut all = ids_of(&before);
    all.extend(ids_of(&after));
    wait_stored(&cluster, &all, &server).await;
    assert_each_once(
        "the double",
        &all,
        stored_ids(&cluster).iter().map(String::as_str),
    );
    let c = cluster.lock().unwrap();
    let mut seqs: Vec<u64> = c.docs.values().filter_map(|d| d.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=50).collect::<Vec<u64>>(),
        "the new spool went on at 31"
    );
    assert_eq!(c.item_statuses().iter().filter(|s| **s == 409).count(), 0);
}
