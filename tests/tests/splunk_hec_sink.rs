//! The `splunk_hec` sink end to end: a real `auditrail serve` fed by OTLP
//! (the Rust OTel SDK and numbered gRPC batches) delivering into the HEC
//! protocol double (`auditrail-hec-double`: no real Splunk can be
//! installed here; its header cites the Splunk docs it follows).
//!
//! What each test tries to break: an event counts as delivered only once
//! HEC's indexer acknowledgement says so (not on the 200); an ack that
//! never comes means a resend, not a loss (Vector marks it Rejected and
//! drops it); an ack endpoint that refuses is loud, at start and at
//! runtime (Vector falls back to the 200); busy and throttled answers are
//! waited out; invalid data goes to the dead letters; `kill -9` and an
//! outage lose nothing; `acknowledgements = false` delivers on the 200.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use auditrail_tests::sinks::{
    client, emit_sink_event, kill_9_then_outage, numbered_batch, send, sink_counter, sink_status,
    tail, wait_caught_up,
};
use auditrail_tests::splunk::{double, sink_toml, wait_indexed, Refusal, TOKEN};
use auditrail_tests::{eventually_within, Server};
use opentelemetry::logs::AnyValue;

/// The first byte of the span ids of this file's events.
const SPAN: u8 = 0xfa;
const CATCH_UP: Duration = Duration::from_secs(60);
const TOKEN_ENV: &str = "AUDITRAIL_TEST_HEC_TOKEN";

fn start(sinks: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in_env(dir.path(), "", sinks, &[(TOKEN_ENV, TOKEN)]);
    (dir, server)
}

/// Sends `n` numbered events (uids `{prefix}-{i}`) in one request; returns
/// uid → trace id.
async fn send_numbered(server: &Server, prefix: &str, n: usize) -> HashMap<String, String> {
    let mut client = client(server).await;
    let (request, ids) = numbered_batch(SPAN, prefix, n);
    send(&mut client, request).await;
    ids.into_iter().collect()
}

fn ids(sent: &HashMap<String, String>) -> HashSet<String> {
    sent.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_is_indexed_with_its_metadata_once_acknowledged() {
    let hec = double(|k| k.allowed_indexes = vec!["audit".into()]);
    let sinks = sink_toml(
        &hec,
        TOKEN_ENV,
        "index = \"audit\"\nsourcetype = \"auditrail:test\"\nsource = \"imagegen\"",
    );
    let (_dir, server) = start(&sinks);

    // One event through the real OTel SDK, inside a span...
    let time = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    let grpc = server.grpc_url();
    let (trace_id, span_id) = tokio::task::spawn_blocking(move || {
        emit_sink_event(
            grpc,
            time,
            "generated 2 images of a cat",
            ("log.record.uid", AnyValue::from("sdk-event-1")),
        )
    })
    .await
    .unwrap();
    // ...and numbered ones.
    let sent = send_numbered(&server, "meta", 200).await;
    let mut wanted = ids(&sent);
    wanted.insert("sdk-event-1".into());
    wait_indexed(&hec, &wanted, &server, CATCH_UP).await;
    wait_caught_up(&server, "splunk", wanted.len(), CATCH_UP).await;

    let (given, polls) = {
        let books = hec.books();
        for id in &wanted {
            assert_eq!(
                books.copies(id),
                1,
                "{id} indexed once (no fault, no resend)"
            );
        }
        assert_eq!(books.indexed.len(), wanted.len(), "nothing else indexed");
        for indexed in &books.indexed {
            assert_eq!(indexed.index.as_deref(), Some("audit"));
            assert_eq!(indexed.sourcetype.as_deref(), Some("auditrail:test"));
            assert_eq!(indexed.source.as_deref(), Some("imagegen"));
            assert_eq!(indexed.host.as_deref(), Some("test-node"));
            let json = indexed.json.as_ref().unwrap();
            let event = &json["event"];
            assert_eq!(event["event_id"], indexed.event_id.as_str());
            if let Some(trace) = sent.get(&indexed.event_id) {
                assert_eq!(event["trace_id"], trace.as_str(), "{json}");
                assert_eq!(json["fields"]["trace_id"], trace.as_str(), "{json}");
            }
        }
        let sdk = books
            .indexed
            .iter()
            .find(|e| e.event_id == "sdk-event-1")
            .and_then(|e| e.json.clone())
            .unwrap();
        eprintln!("the SDK's event as indexed: {sdk}");
        assert_eq!(
            sdk["time"].to_string(),
            "1795000000.123",
            "epoch seconds with ms"
        );
        assert_eq!(sdk["event"]["trace_id"], trace_id.as_str());
        assert_eq!(sdk["event"]["span_id"], span_id.as_str());
        assert_eq!(sdk["event"]["body"], "generated 2 images of a cat");
        assert_eq!(sdk["event"]["actor_id"], "alice");
        assert_eq!(sdk["event"]["attributes"]["audit.target"], "model/sdxl");
        assert_eq!(
            sdk["fields"],
            serde_json::json!({
                "event_id": "sdk-event-1", "tenant": "default", "service_name": "imagegen-ui",
                "event_name": "image.generate", "outcome": "success", "actor_id": "alice",
                "trace_id": trace_id, "span_id": span_id,
            })
        );

        // One channel, a GUID, on every request; the token checked on each
        // (a wrong one is 401/403, and none was).
        let channels: HashSet<_> = books.requests.iter().map(|r| r.channel.clone()).collect();
        assert_eq!(channels.len(), 1, "{channels:?}");
        let channel = channels.into_iter().next().flatten().expect("a channel");
        assert_eq!(channel.len(), 36, "{channel}");
        assert!(
            books.requests.iter().all(|r| r.status == 200),
            "{:?}",
            books.requests
        );
        // Acks were polled, and every ack id given out was reported true.
        let given: Vec<u64> = books.event_requests().filter_map(|r| r.ack_id).collect();
        let acked: HashSet<u64> = books.ack_queries().flat_map(|r| r.acked.clone()).collect();
        assert!(!given.is_empty());
        assert!(
            given.iter().all(|id| acked.contains(id)),
            "given {given:?}, acked {acked:?}"
        );
        assert_eq!(books.unreported_acks(), 0);
        (given, books.ack_queries().count())
    };
    let (batches, _) = sink_counter(
        &server,
        "auditrail_sink_acknowledged_batches_total",
        "splunk",
    )
    .await;
    eprintln!(
        "{} events in {} requests, {polls} ack queries, {batches} batches acknowledged",
        wanted.len(),
        given.len()
    );
    assert_eq!(batches, given.len() as f64);
}

/// The cursor stays before a batch that HEC took (200, ackId) and even
/// indexed, until the ack query says true.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_counts_as_delivered_only_once_its_ack_comes() {
    let hec = double(|k| k.hold_acks = true);
    let sinks = sink_toml(&hec, TOKEN_ENV, "ack_timeout = \"60s\"");
    let (_dir, server) = start(&sinks);
    let sent = send_numbered(&server, "late", 100).await;
    wait_indexed(&hec, &ids(&sent), &server, CATCH_UP).await;

    // Indexed, asked about again and again, not acknowledged: not delivered.
    eventually_within(CATCH_UP, "the sink asks about its ack ids", || async {
        hec.books().ack_queries().count() >= 5
    })
    .await;
    // (/readyz's lag is published every second.)
    eventually_within(CATCH_UP, "/readyz shows the lag", || async {
        sink_status(&server, "splunk").await.1["lag_events"] == 100
    })
    .await;
    let (_, status) = sink_status(&server, "splunk").await;
    eprintln!("indexed, ack held: {status}");
    assert_eq!(status["cursor"], 0, "{status}");
    assert_eq!(status["lag_events"], 100, "{status}");
    let (delivered, _) =
        sink_counter(&server, "auditrail_sink_delivered_events_total", "splunk").await;
    assert_eq!(delivered, 0.0);
    assert!(hec.books().ack_queries().all(|q| q.acked.is_empty()));

    // The ack comes, after 3 more queries about each id: then delivered.
    let polled = hec_polls_so_far(&hec);
    hec.knobs(|k| {
        k.hold_acks = false;
        k.ack_after_polls = polled + 3;
    });
    wait_caught_up(&server, "splunk", 100, CATCH_UP).await;
    let books = hec.books();
    assert!(books.ack_queries().any(|q| !q.acked.is_empty()));
    assert_eq!(books.unreported_acks(), 0);
    for id in sent.keys() {
        assert_eq!(
            books.copies(id),
            1,
            "{id}: no resend while the ack was late"
        );
    }
}

/// The most queries the double has seen about any one id (the knob counts
/// per id).
fn hec_polls_so_far(hec: &auditrail_tests::splunk::HecDouble) -> u32 {
    let books = hec.books();
    let mut per_id: HashMap<&str, u32> = HashMap::new();
    for query in books.ack_queries() {
        for id in &query.ids {
            *per_id.entry(id.as_str()).or_default() += 1;
        }
    }
    per_id.values().copied().max().unwrap_or(0)
}

/// HEC takes the first request and gives an ack id, but its events are
/// lost and the ack never comes: after `ack_timeout` the batch is sent
/// again, and indexed.
#[tokio::test(flavor = "multi_thread")]
async fn an_ack_that_never_comes_means_a_resend_not_a_loss() {
    let hec = double(|k| k.lose_first = 1);
    let sinks = sink_toml(&hec, TOKEN_ENV, "ack_timeout = \"2s\"");
    let (_dir, server) = start(&sinks);
    let sent = send_numbered(&server, "lost", 50).await;
    wait_indexed(&hec, &ids(&sent), &server, CATCH_UP).await;
    wait_caught_up(&server, "splunk", 50, CATCH_UP).await;

    {
        let books = hec.books();
        let requests: Vec<_> = books.event_requests().cloned().collect();
        let first = &requests[0];
        let lost_id = first.ack_id.expect("an ack id for the lost request");
        let acked: Vec<u64> = books.ack_queries().flat_map(|q| q.acked.clone()).collect();
        assert!(
            !acked.contains(&lost_id),
            "the lost request was never acknowledged"
        );
        // Its events were sent again, no sooner than the ack timeout.
        for id in &first.ids {
            let again = requests[1..]
                .iter()
                .find(|r| r.ids.contains(id))
                .unwrap_or_else(|| panic!("{id} never sent again: {requests:?}"));
            let waited = again.at - first.at;
            assert!(waited >= Duration::from_secs(2), "resent after {waited:?}");
            assert_eq!(books.copies(id), 1, "{id}: lost once, indexed once");
        }
    }
    let timeouts = server
        .metric("auditrail_sink_ack_timeouts_total{sink=\"splunk\"}")
        .await;
    eprintln!("ack timeouts: {timeouts}");
    assert!(timeouts >= 1.0, "{}", server.metrics_text().await);
}

/// A token without indexer acknowledgement: `serve` refuses to start,
/// saying so. Switched off at runtime: the sink fails loudly and counts
/// nothing as delivered until it is back.
#[tokio::test(flavor = "multi_thread")]
async fn an_ack_endpoint_that_refuses_is_loud_never_a_silent_downgrade() {
    // At start.
    let hec = double(|k| k.acks = false);
    let sinks = sink_toml(&hec, TOKEN_ENV, "");
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = Server::start_expecting_exit(
        dir.path(),
        "",
        &sinks,
        &[(TOKEN_ENV, TOKEN)],
        Duration::from_secs(30),
    );
    eprintln!("ack disabled at start:\n{log}");
    assert!(!status.success(), "{log}");
    let error = log
        .lines()
        .find(|l| l.contains("ACK is disabled"))
        .unwrap_or_else(|| panic!("no error naming the ack endpoint:\n{log}"));
    assert!(
        error.contains("\"splunk\" (splunk_hec)"),
        "names the sink: {error}"
    );
    assert!(
        error.contains("/services/collector/ack"),
        "names the endpoint: {error}"
    );
    assert!(
        error.contains("acknowledgements = false"),
        "says what to do: {error}"
    );
    assert_eq!(log.matches("ACK is disabled").count(), 1, "{log}");
    assert!(hec.books().indexed.is_empty(), "nothing sent");

    // At runtime: delivering, then the token's acknowledgement goes off.
    let hec = double(|_| {});
    let (_dir, server) = start(&sink_toml(&hec, TOKEN_ENV, "ack_timeout = \"2s\""));
    let before = send_numbered(&server, "on", 20).await;
    wait_caught_up(&server, "splunk", 20, CATCH_UP).await;
    hec.knobs(|k| k.acks = false);
    let during = send_numbered(&server, "off", 20).await;
    eventually_within(CATCH_UP, "/readyz shows the failing sink", || async {
        let (_, status) = sink_status(&server, "splunk").await;
        status["healthy"] == false
    })
    .await;
    // Several ack timeouts' worth: HEC's 200s (without ackId) and its
    // refusing ack endpoint never count as delivery.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (code, status) = sink_status(&server, "splunk").await;
    eprintln!("acknowledgement switched off: {status}");
    assert_eq!(code, 200, "a failing sink does not make the node unready");
    assert_eq!(status["healthy"], false, "{status}");
    assert_eq!(status["cursor"], 20, "{status}");
    assert_eq!(status["lag_events"], 20, "{status}");
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("without an ackId") || error.contains("ACK is disabled"),
        "{status}"
    );
    let (delivered, _) =
        sink_counter(&server, "auditrail_sink_delivered_events_total", "splunk").await;
    assert_eq!(delivered, 20.0);
    let (errors, samples) = sink_counter(&server, "auditrail_sink_errors_total", "splunk").await;
    assert!(errors >= 1.0, "{samples:?}");
    let log = server.log();
    assert!(log.contains("without an ackId"), "{}", tail(&log));
    assert!(
        !log.contains("Acknowledging based on"),
        "no silent downgrade"
    );

    // Back on: it catches up.
    hec.knobs(|k| k.acks = true);
    wait_caught_up(&server, "splunk", 40, CATCH_UP).await;
    let mut all = ids(&before);
    all.extend(ids(&during));
    wait_indexed(&hec, &all, &server, CATCH_UP).await;
}

/// 503 "Server is busy" (code 9) with `Retry-After`, and a gateway's 429,
/// for a while: each retry waits as told, and the sink catches up.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_server_is_waited_out() {
    let hec = double(|k| {
        for _ in 0..3 {
            k.refuse_next.push_back(Refusal::busy(Some("1")));
        }
        k.refuse_next.push_back(Refusal::throttled(None));
        k.refuse_next.push_back(Refusal::busy(None));
    });
    let (_dir, server) = start(&sink_toml(&hec, TOKEN_ENV, ""));
    let sent = send_numbered(&server, "busy", 100).await;
    wait_caught_up(&server, "splunk", 100, CATCH_UP).await;
    wait_indexed(&hec, &ids(&sent), &server, CATCH_UP).await;

    {
        let books = hec.books();
        let requests: Vec<_> = books.event_requests().cloned().collect();
        let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
        eprintln!("answers: {statuses:?}");
        assert_eq!(&statuses[..5], [503, 503, 503, 429, 503]);
        for pair in requests[..4].windows(2).take(3) {
            let waited = pair[1].at - pair[0].at;
            assert!(
                waited >= Duration::from_secs(1),
                "Retry-After: 1 honoured: {waited:?}"
            );
        }
        for id in sent.keys() {
            assert_eq!(books.copies(id), 1, "{id}");
        }
    }
    let (_, samples) = sink_counter(&server, "auditrail_sink_errors_total", "splunk").await;
    eprintln!("{samples:?}");
    let count = |kind: &str| -> f64 {
        samples
            .iter()
            .filter(|s| s.contains(&format!("kind=\"{kind}\"")))
            .filter_map(|s| s.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("busy"), 4.0, "{samples:?}");
    assert_eq!(count("throttled"), 1.0, "{samples:?}");
}

/// An event HEC refuses as invalid data (400 code 6, with
/// `invalid-event-number`) goes to the dead letters; the rest of its batch
/// is indexed.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_data_goes_to_the_dead_letters_and_the_rest_is_indexed() {
    let hec = double(|k| k.poison_marker = Some("poison-".into()));
    let (_dir, server) = start(&sink_toml(&hec, TOKEN_ENV, ""));
    let mut client = client(&server).await;
    let mut sent = HashMap::new();
    for (prefix, n) in [("good1", 20), ("poison", 1), ("good2", 20)] {
        let (request, ids) = numbered_batch(SPAN, prefix, n);
        send(&mut client, request).await;
        sent.extend(ids);
    }
    let poison = "poison-0".to_string();
    let good: HashSet<String> = sent.keys().filter(|id| **id != poison).cloned().collect();
    wait_indexed(&hec, &good, &server, CATCH_UP).await;
    wait_caught_up(&server, "splunk", 41, CATCH_UP).await;

    // The poison event; and the tombstone that records it, which names it
    // (so the double refuses it too: a dead letter without a tombstone of
    // its own).
    let all_letters = server.dead_letters(Some("splunk")).await;
    let (tombstones, letters): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = all_letters
        .as_array()
        .unwrap()
        .iter()
        .partition(|l| l["event"]["event_name"] == "auditrail.tombstone");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(tombstones.len() <= 1, "{tombstones:?}");
    assert_eq!(letters[0]["event"]["event_id"], poison.as_str());
    let reason = letters[0]["reason"].as_str().unwrap();
    eprintln!("dead letter: {reason}");
    assert!(
        reason.contains("code 6") && reason.contains("Invalid data format"),
        "{reason}"
    );
    let books = hec.books();
    assert_eq!(books.copies(&poison), 0);
    let doubles = good.iter().filter(|id| books.copies(id) > 1).count();
    eprintln!(
        "{doubles} good events indexed twice (before the poison in a refused request, then resent)"
    );
}

/// `kill -9` while the sink delivers, then HEC down while auditrail
/// restarts and takes more: every acknowledged event is indexed at least
/// once (a batch indexed but not yet acknowledged at the kill is sent
/// again: HEC cannot deduplicate).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_and_an_outage_lose_nothing() {
    let hec = std::cell::RefCell::new(double(|k| k.keep_events = false));
    let url = hec.borrow().url();
    let sinks = format!(
        "[[sinks]]\nname = \"splunk\"\ntype = \"splunk_hec\"\nurl = \"{url}\"\ntoken_env = \"{TOKEN_ENV}_KILL\"\nack_poll_interval = \"100ms\"\nack_timeout = \"3s\"\n\
         [sinks.delivery]\nmax_events = 200\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n"
    );
    // The restarted servers inherit it (kill_9_then_outage passes no env);
    // no other test of this process reads this variable.
    std::env::set_var(format!("{TOKEN_ENV}_KILL"), TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let (server, acked) = kill_9_then_outage(
        dir.path(),
        &sinks,
        SPAN,
        || hec.borrow_mut().stop(),
        || hec.borrow_mut().restart(),
    )
    .await;
    let hec = hec.into_inner();
    wait_indexed(&hec, &acked, &server, CATCH_UP).await;
    let total = server.metric("auditrail_spool_last_seq").await as usize;
    wait_caught_up(&server, "splunk", total, CATCH_UP).await;
    let books = hec.books();
    let copies: usize = books.counts.values().sum();
    eprintln!(
        "{} events acknowledged by auditrail, {} distinct indexed, {copies} copies (at-least-once)",
        acked.len(),
        books.counts.len()
    );
}

/// `acknowledgements = false`: delivered on HEC's 200, no ack query, and
/// the log says what that means.
#[tokio::test(flavor = "multi_thread")]
async fn without_acknowledgements_the_200_is_delivery() {
    let hec = double(|k| k.acks = false);
    let (_dir, server) = start(&sink_toml(&hec, TOKEN_ENV, "acknowledgements = false"));
    let sent = send_numbered(&server, "plain", 100).await;
    wait_caught_up(&server, "splunk", 100, CATCH_UP).await;
    let books = hec.books();
    for id in sent.keys() {
        assert_eq!(books.copies(id), 1, "{id}");
    }
    assert_eq!(books.ack_queries().count(), 0, "no ack query");
    drop(books);
    let log = server.log();
    assert!(log.contains("acknowledgements = false"), "{}", tail(&log));
    assert!(log.contains("at-least-once"), "{}", tail(&log));
}
