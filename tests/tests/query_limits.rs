//! What one query may cost, end to end: the page size cap, the scan budget
//! (an error for a newest-N query, a resumable stop in seq order), the bound
//! on concurrent queries, `limit=0` streaming as the scan finds events (and
//! the CLI continuing past each request's budget), and a `table` output that
//! no event can forge lines in.

use std::process::Output;
use std::time::Duration;

use auditrail_tests::otlp::{attr, record, request, string, trace_id};
use auditrail_tests::{cli, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stores `count` events (bodies of about `body_bytes`), seqs 1..=count, in
/// requests (so spool batches) of up to 500 records; every 10th body holds
/// `needle`.
async fn store(server: &Server, count: usize, body_bytes: usize) {
    let mut grpc = LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting to the receiver")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let pad = "z".repeat(body_bytes);
    for start in (0..count).step_by(500) {
        let records = (start..count.min(start + 500))
            .map(|i| {
                let needle = if i % 10 == 0 { "needle" } else { "hay" };
                record(
                    &format!("ev-{i}"),
                    trace_id(i as u64).0,
                    [1; 8],
                    &format!("{needle} {i} {pad}"),
                    vec![attr("user.id", string(format!("user{}", i % 7)))],
                )
            })
            .collect();
        grpc.export(request("imagegen", records))
            .await
            .expect("export accepted");
    }
}

/// `GET /v1/events?{query}`: the status, the `Retry-After` header and the body.
async fn get(server: &Server, query: &str) -> (u16, Option<String>, String) {
    let response = reqwest::get(format!("{}/v1/events?{query}", server.admin_url()))
        .await
        .expect("GET /v1/events");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.text().await.unwrap())
}

fn error_of(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_over_max_page_size_is_400_naming_the_key() {
    let server = Server::start_with_admin("max_page_size = 50", "");
    store(&server, 3, 10).await;
    let (status, _, body) = get(&server, "limit=51").await;
    assert_eq!(status, 400, "{body}");
    let error = error_of(&body);
    for needed in ["max_page_size = 50", "limit=51", "after_seq", "limit=0"] {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
    let (status, _, body) = get(&server, "limit=51&after_seq=0").await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = get(&server, "limit=50").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.events("limit=50").await.len(), 3);

    let out = cli(&["query", "--admin", &server.admin_url(), "--limit", "51"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("max_page_size = 50"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"bad_request\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_query_over_the_scan_budget_is_a_clear_error_over_http_and_the_cli() {
    let server = Server::start_with_admin("max_scan_events = 1000", "");
    store(&server, 3000, 50).await;

    // Newest-N: it cannot know the newest matches without reading all 3,000.
    let (status, _, body) = get(&server, "text=no-such-text&limit=10").await;
    assert_eq!(status, 422, "{body}");
    let error = error_of(&body);
    for needed in [
        "examined 1000 stored events",
        "max_scan_events = 1000",
        "--since",
        "--actor",
        "--limit 0",
    ] {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
    let out = cli(&[
        "query",
        "--admin",
        &server.admin_url(),
        "--text",
        "no-such-text",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("422"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("max_scan_events = 1000"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    // A text that the newest batch (of 500) holds ten times is found within
    // the budget: older batches cannot hold newer matches.
    let (status, _, body) = get(&server, "text=needle&limit=10").await;
    assert_eq!(status, 200, "{body}");

    // In seq order it is no error: the page says where to continue.
    let (status, _, body) = get(&server, "text=needle&after_seq=0&limit=1000").await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["complete"], false, "{page}");
    assert_eq!(page["stopped_by"], "max_scan_events");
    assert_eq!(page["next_after_seq"], 1000);
    assert_eq!(page["events"].as_array().unwrap().len(), 100);
    assert!(page["error"].as_str().unwrap().contains("after_seq=1000"));

    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"budget_exceeded\"}")
            .await,
        3.0
    );
    assert!(
        server.log().contains("query refused") && server.log().contains("max_scan_events"),
        "a refused query is logged:\n{}",
        server.log()
    );
}

/// Reads a response body until it holds `lines` whole lines.
async fn read_lines(response: &mut reqwest::Response, buf: &mut Vec<u8>, lines: usize) {
    while buf.iter().filter(|&&b| b == b'\n').count() < lines {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("the next chunk within 30 s")
            .expect("reading the stream")
            .expect("the stream ended early");
        buf.extend_from_slice(&chunk);
    }
}

/// 50,000 events of about 600 bytes: a 35 MB answer, far more than the
/// socket buffers hold, so a scan that streams is held back by a client
/// that stops reading.
const MANY: usize = 50_000;

#[tokio::test(flavor = "multi_thread")]
async fn limit_0_streams_every_event_once_in_seq_order_as_the_scan_finds_it() {
    let server = Server::start_with_admin("max_concurrent_queries = 1", "");
    store(&server, MANY, 400).await;

    let mut response = reqwest::get(format!("{}/v1/events?limit=0", server.admin_url()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut body = Vec::new();
    // The head, and the first event's line (ended when the second is sent).
    read_lines(&mut response, &mut body, 2).await;
    let first = String::from_utf8_lossy(&body).into_owned();
    assert!(first.starts_with("{\"events\":[\n{"), "{first}");

    // The client stops reading. The scan has not finished: it is held back
    // by the full channel and socket buffers. (An answer built in memory
    // before it is sent would have finished its scan, and counted it,
    // before its first byte.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"streamed\"}")
            .await,
        0.0,
        "the scan finished before the client read more than its first line"
    );
    assert_eq!(
        server.metric("auditrail_query_events_examined_count").await,
        0.0
    );

    // The stream holds the only slot: a second query is refused, with a hint.
    let (status, retry_after, refused) = get(&server, "limit=10").await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        error_of(&refused).contains("max_concurrent_queries = 1"),
        "{refused}"
    );
    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"busy\"}")
            .await,
        1.0
    );

    // The CLI waits as Retry-After says and asks again.
    let admin = server.admin_url();
    let waiting = tokio::task::spawn_blocking(move || {
        cli(&[
            "query", "--admin", &admin, "--limit", "5", "--format", "json",
        ])
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The rest: every event exactly once, in seq order, in one JSON document.
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        MANY + 2,
        "one line per event, a head and an end"
    );
    for (i, line) in lines[1..=MANY].iter().enumerate() {
        assert_eq!(line.ends_with(','), i + 1 < MANY, "line {i}");
    }
    let page: Value = serde_json::from_str(&text).expect("the stream is one JSON document");
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=MANY as u64).collect::<Vec<_>>());
    assert_eq!(page["complete"], true);
    assert_eq!(page["next_after_seq"], MANY as u64);
    assert!(lines.last().unwrap().starts_with("],\"last_seq\":"));
    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"streamed\"}")
            .await,
        1.0
    );

    let out = waiting.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 5);
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));

    // The slot is free again once the stream has ended.
    let (status, _, body) = get(&server, "limit=10").await;
    assert_eq!(status, 200, "{body}");

    // A client that goes away stops the scan and frees its slot.
    let mut response = reqwest::get(format!("{}/v1/events?limit=0", server.admin_url()))
        .await
        .unwrap();
    read_lines(&mut response, &mut Vec::new(), 2).await;
    drop(response);
    auditrail_tests::eventually("the slot of a dropped stream is freed", || async {
        get(&server, "limit=1").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_client_stops_reading_ends_at_the_timeout_and_frees_its_slot() {
    let server = Server::start_with_admin("max_concurrent_queries = 1\nquery_timeout = \"3s\"", "");
    // 40 MB in 4,000 events: far more than the socket buffers.
    store(&server, 4000, 10_000).await;
    let mut response = reqwest::get(format!("{}/v1/events?limit=0", server.admin_url()))
        .await
        .unwrap();
    let mut body = Vec::new();
    read_lines(&mut response, &mut body, 2).await;
    let (status, _, _) = get(&server, "limit=1").await;
    assert_eq!(status, 429, "the stream holds the only slot");
    // The client reads nothing more; the timeout ends the scan and frees
    // the slot.
    let held = std::time::Instant::now();
    auditrail_tests::eventually("the slot of a stalled stream is freed", || async {
        get(&server, "limit=1").await.0 == 200
    })
    .await;
    assert!(
        held.elapsed() > Duration::from_millis(1500),
        "freed only at the timeout, after {:?}",
        held.elapsed()
    );
    // What was sent is a valid answer that says where to continue.
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let page: Value = serde_json::from_slice(&body).expect("one JSON document");
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() < 4000, "it stopped early");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(page["complete"], false);
    assert_eq!(page["stopped_by"], "query_timeout", "{}", page["error"]);
    assert_eq!(page["next_after_seq"], seqs.len() as u64);
    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"timeout\"}")
            .await,
        1.0
    );
}

fn seqs_of_json_lines(out: &str) -> Vec<u64> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_streams_every_event_once_across_scan_budgets() {
    let mut server = Server::start_with_admin("max_scan_events = 1000", "");
    store(&server, 3500, 50).await;
    let admin = server.admin_url();

    let out = cli(&[
        "query", "--admin", &admin, "--limit", "0", "--format", "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        seqs_of_json_lines(&stdout(&out)),
        (1..=3500).collect::<Vec<_>>()
    );
    // It took four requests, each stopped at the budget but the last.
    assert_eq!(
        server
            .metric("auditrail_queries_total{result=\"budget_exceeded\"}")
            .await,
        3.0
    );

    // Filtered, and in the table format.
    let out = cli(&[
        "query", "--admin", &admin, "--limit", "0", "--text", "needle",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 1 + 350, "{table}");

    // The tenant filter: every event is the default tenant's (no auth).
    let out = cli(&[
        "query", "--admin", &admin, "--limit", "0", "--tenant", "default", "--format", "json",
    ]);
    assert_eq!(stdout(&out).lines().count(), 3500);
    let out = cli(&[
        "query", "--admin", &admin, "--limit", "0", "--tenant", "other", "--format", "json",
    ]);
    assert!(
        out.status.success() && stdout(&out).is_empty(),
        "{}",
        stdout(&out)
    );

    // A stopped server's spool streams the same way.
    assert!(server.terminate().success());
    let spool = server.spool_dir();
    let out = cli(&[
        "query",
        "--data-dir",
        spool.to_str().unwrap(),
        "--limit",
        "0",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        seqs_of_json_lines(&stdout(&out)),
        (1..=3500).collect::<Vec<_>>()
    );
}

/// Every character that could forge or disguise a line.
const HOSTILE: &str =
    "a\r\nFORGED 1970-01-01 0 admin.delete\0b\x1b[31mred\x1b[0m\u{202e}cba\u{2028}\u{7f}\u{9b}";

fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn table_output_cannot_be_forged_by_what_events_hold() {
    let server = Server::start_with(
        "",
        "[query]\ntrace_url = \"http://jaeger:16686/trace/{trace_id}\"\n",
    );
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    let records: Vec<LogRecord> = (0..3)
        .map(|i| LogRecord {
            event_name: format!("{HOSTILE}{i}"),
            ..record(
                &format!("hostile-{i}"),
                trace_id(i).0,
                [2; 8],
                HOSTILE,
                vec![
                    attr("user.id", string(HOSTILE)),
                    attr("user.name", string(HOSTILE)),
                    attr("client.address", string(HOSTILE)),
                    attr("audit.target", string(HOSTILE)),
                ],
            )
        })
        .collect();
    grpc.export(request(HOSTILE, records)).await.unwrap();
    let stored = server.events("").await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[0]["actor_id"], HOSTILE, "stored as sent");

    for args in [&["--limit", "10"][..], &["--limit", "0"][..]] {
        let mut command = vec!["query", "--admin"];
        let admin = server.admin_url();
        command.push(&admin);
        command.extend_from_slice(args);
        let out = cli(&command);
        assert!(out.status.success(), "{}", stderr(&out));
        let table = stdout(&out);
        let lines: Vec<&str> = table.split('\n').collect();
        assert_eq!(
            lines.len(),
            1 + 3 + 1,
            "a header, one line per event: {table:?}"
        );
        assert_eq!(lines.last(), Some(&""), "ends with its last newline");
        for line in &lines {
            assert!(!line.chars().any(is_forbidden), "raw control in {line:?}");
        }
        for line in &lines[1..4] {
            assert!(
                line.contains("a\\r\\nFORGED") && line.contains("\\u{1b}[31mred"),
                "the escapes show what is there: {line}"
            );
            assert!(line.contains("\\u{202e}cba\\u{2028}"), "{line}");
        }
    }
}
