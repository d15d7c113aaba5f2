//! Hostile requests: what one request, and all requests together, may cost
//! is bounded, and a request over a bound is refused with the limit named,
//! storing nothing. Over OTLP/HTTP and OTLP/gRPC.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use auditrail_tests::otlp::{record, request, trace_id};
use auditrail_tests::{grpc_export_raw, grpc_frame, Server};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn records(prefix: &str, n: usize, body_bytes: usize) -> Vec<LogRecord> {
    (0..n)
        .map(|i| {
            record(
                &format!("{prefix}-{i}"),
                trace_id(i as u64).0,
                [7; 8],
                &"b".repeat(body_bytes),
                vec![],
            )
        })
        .collect()
}

async fn post(
    server: &Server,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(server.http_logs_url())
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.send().await.expect("the server answers")
}

async fn post_status(server: &Server, encoding: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let resp = post(server, PROTOBUF, encoding, body).await;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    // Error bodies are google.rpc.Status; its message is field 2, readable as text.
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The ids of the events stored from what was sent (not the tombstones
/// the trail writes for what it refused).
async fn stored_ids(server: &Server) -> Vec<String> {
    let mut ids: Vec<String> = server
        .events("limit=0")
        .await
        .iter()
        .filter(|e| e["service_name"] != "auditrail")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The server's peak resident memory (VmHWM), in bytes.
fn peak_rss(server: &Server) -> u64 {
    let pid = server.pid().expect("server running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// The request of issue 7: one 100 KB resource attribute and 10,000 tiny
/// records, ~449 KB of OTLP/JSON that used to become 1 GB of events.
fn amplification_json() -> String {
    let record = r#"{"body":{"stringValue":"login"}}"#;
    let records = vec![record; 10_000].join(",");
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"amplifier"}}}},{{"key":"padding","value":{{"stringValue":"{}"}}}}]}},"scopeLogs":[{{"logRecords":[{records}]}}]}}]}}"#,
        "p".repeat(100_000)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_amplification_request_is_refused_naming_the_limit() {
    let server = Server::start();
    let json = amplification_json();
    assert!(
        (400_000..500_000).contains(&json.len()),
        "{} bytes",
        json.len()
    );
    let spool_before = dir_bytes(&server.spool_dir());

    let resp = post(&server, JSON, None, json.clone().into_bytes()).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("max_request_expansion"), "{text}");

    let request: ExportLogsServiceRequest = serde_json::from_str(&json).unwrap();
    let err = LogsServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .export(request)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_request_expansion"), "{err:?}");

    assert!(stored_ids(&server).await.is_empty(), "nothing stored");
    assert_eq!(server.metric("auditrail_stored_events_total").await, 0.0);
    assert_eq!(
        server
            .metric("auditrail_refused_requests_total{reason=\"max_request_expansion\"}")
            .await,
        2.0
    );
    let grown = dir_bytes(&server.spool_dir()).saturating_sub(spool_before);
    assert!(grown < 16 << 20, "the spool grew by {grown} bytes");
    let peak = peak_rss(&server);
    assert!(
        peak < 400 << 20,
        "the server's peak RSS was {} MiB",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn records_per_request_and_event_size_are_limited() {
    let server =
        Server::start_with_receiver("max_records_per_request = 100\nmax_event_bytes = \"4KiB\"");

    let (status, text) = post_status(
        &server,
        None,
        request("svc", records("many", 101, 10)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("max_records_per_request (100)") && text.contains("101"),
        "{text}"
    );
    let err = LogsServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .export(request("svc", records("many", 101, 10)))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_records_per_request"), "{err:?}");

    let (status, text) = post_status(
        &server,
        None,
        request("svc", records("ok", 100, 10)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // One record too large is rejected alone; the others are stored.
    let mut three = records("size", 3, 10);
    three[1] = record(
        "size-big",
        trace_id(1).0,
        [7; 8],
        &"x".repeat(10_000),
        vec![],
    );
    let resp = post(
        &server,
        PROTOBUF,
        None,
        request("svc", three).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let answer = ExportLogsServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    let partial = answer.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("log_records[1]")
            && partial
                .error_message
                .contains("max_event_bytes (4096 bytes)"),
        "{}",
        partial.error_message
    );
    let ids = stored_ids(&server).await;
    assert_eq!(ids.len(), 102, "100 + the two small records");
    assert!(ids.contains(&"size-0".to_string()) && ids.contains(&"size-2".to_string()));
    assert!(!ids
        .iter()
        .any(|id| id.starts_with("many") || id == "size-big"));
    assert_eq!(
        server
            .metric("auditrail_rejected_events_total{reason=\"event_too_large\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("auditrail_refused_requests_total{reason=\"max_records_per_request\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_in_flight_are_backpressure_not_loss() {
    let server = Server::start_with_receiver(
        "max_request_bytes = \"1MiB\"\nmax_in_flight_bytes = \"1MiB\"\nretry_after = \"1s\"",
    );
    // Alone, a request of 300 records of ~1 KiB fits the budget (it needs
    // ~0.8 MiB); two at once do not.
    let batch = |client: usize, n: usize| {
        request("svc", records(&format!("c{client}-r{n}"), 300, 1000)).encode_to_vec()
    };
    let (status, text) = post_status(&server, None, batch(99, 0)).await;
    assert_eq!(status, 200, "alone it fits: {text}");

    // A request that could never fit is 413, not "retry later".
    let (status, text) = post_status(
        &server,
        None,
        request("svc", records("huge", 900, 1000)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("max_in_flight_bytes"), "{text}");

    // Concurrent clients; a 429 is retried until it is taken.
    let mut tasks = Vec::new();
    for client in 0..8 {
        let url = server.http_logs_url();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut refused = 0;
            for n in 0..6 {
                let body = batch(client, n);
                loop {
                    let resp = http
                        .post(&url)
                        .header("content-type", PROTOBUF)
                        .body(body.clone())
                        .send()
                        .await
                        .expect("answer");
                    match resp.status().as_u16() {
                        200 => break,
                        429 => {
                            let retry = resp.headers().get("retry-after").cloned();
                            let text = resp.text().await.unwrap();
                            assert_eq!(
                                retry.as_ref().and_then(|v| v.to_str().ok()),
                                Some("1"),
                                "{text}"
                            );
                            assert!(text.contains("max_in_flight_bytes"), "{text}");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
                    }
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    assert!(
        refused > 0,
        "8 concurrent clients never exceeded a budget of one request"
    );
    let ids = stored_ids(&server).await;
    assert_eq!(ids.len(), 300 + 8 * 6 * 300, "every accepted event, once");
    assert_eq!(
        server
            .metric("auditrail_refused_requests_total{reason=\"max_in_flight_bytes\"}")
            .await,
        (refused + 1) as f64
    );
}

/// ~220 KiB; alone it needs ~540 KiB of the in-flight budget.
fn small(prefix: &str, n: usize) -> Vec<u8> {
    request("svc", records(&format!("{prefix}-{n}"), 200, 1000)).encode_to_vec()
}

/// Posts small requests until one is not taken (or 20 s pass); its answer.
async fn until_refused(server: &Server, prefix: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        let answer = post_status(server, None, small(prefix, n)).await;
        if answer.0 != 200 || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Posts small requests until one is taken.
async fn until_accepted(server: &Server, prefix: &str) {
    let mut n = 0;
    auditrail_tests::eventually(&format!("{prefix}: a small request is taken again"), || {
        n += 1;
        let answer = post_status(server, None, small(prefix, n));
        async move { answer.await.0 == 200 }
    })
    .await;
}

/// Before this test's fix, bodies being read were not counted at all: any
/// number of connections could each hold up to `max_request_bytes`.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_being_read_hold_the_in_flight_budget() {
    let server = Server::start_with_receiver(
        "max_request_bytes = \"1MiB\"\nmax_in_flight_bytes = \"1MiB\"\nbody_read_timeout = \"60s\"\nretry_after = \"1s\"",
    );
    let (status, text) = post_status(&server, None, small("alone", 0)).await;
    assert_eq!(status, 200, "alone it fits: {text}");

    // A slow HTTP client promises 900 KiB and sends ten bytes of it.
    let mut slow_http = tokio::net::TcpStream::connect(server.http).await.unwrap();
    slow_http
        .write_all(
            b"POST /v1/logs HTTP/1.1\r\nHost: auditrail\r\ncontent-type: application/x-protobuf\r\ncontent-length: 921600\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let (status, text) = until_refused(&server, "held-1").await;
    assert_eq!(status, 429, "the promised body holds the budget: {text}");
    assert!(text.contains("max_in_flight_bytes"), "{text}");
    let grpc = LogsServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .export(request("svc", records("grpc-meanwhile", 200, 1000)))
        .await;
    let status = grpc.expect_err("gRPC shares the budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_in_flight_bytes"),
        "{status:?}"
    );

    // The client goes away: its bytes come back.
    drop(slow_http);
    until_accepted(&server, "released-1").await;

    // A stalled gRPC call holds what it has sent of its message.
    let mut frame = grpc_frame(false, &vec![0; 900 << 10]);
    frame.truncate(700 << 10);
    let grpc_stalled = {
        let url = server.grpc_url();
        let body = tonic::body::Body::new(Stalled(Some(Bytes::from(frame))));
        tokio::spawn(async move { grpc_export_raw(&url, None, body).await })
    };
    // Until all of it has arrived, a small request might take the room it
    // needs to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, text) = until_refused(&server, "held-2").await;
    assert_eq!(
        status, 429,
        "the stalled gRPC message holds the budget: {text}"
    );
    grpc_stalled.abort();
    until_accepted(&server, "released-2").await;
    assert!(
        server
            .metric("auditrail_refused_requests_total{reason=\"max_in_flight_bytes\"}")
            .await
            >= 3.0
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A request split in two, each half its own gzip member.
fn two_members(request: &ExportLogsServiceRequest) -> Vec<u8> {
    let bytes = request.encode_to_vec();
    let (a, b) = bytes.split_at(bytes.len() / 2);
    [gzip(a), gzip(b)].concat()
}

fn two_zstd_frames(request: &ExportLogsServiceRequest) -> Vec<u8> {
    let bytes = request.encode_to_vec();
    let (a, b) = bytes.split_at(bytes.len() / 2);
    [
        zstd::stream::encode_all(a, 1).unwrap(),
        zstd::stream::encode_all(b, 1).unwrap(),
    ]
    .concat()
}

fn with_trailing_junk(mut compressed: Vec<u8>) -> Vec<u8> {
    compressed.extend_from_slice(b"trailing bytes that are no gzip member");
    compressed
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_bodies_are_read_whole_or_refused() {
    let server = Server::start();
    let req = |prefix: &str| request("svc", records(prefix, 2, 50));

    let (status, text) = post_status(&server, Some("gzip"), two_members(&req("http-gz"))).await;
    assert_eq!(status, 200, "every gzip member is read: {text}");
    let (status, text) =
        post_status(&server, Some("zstd"), two_zstd_frames(&req("http-zstd"))).await;
    assert_eq!(status, 200, "every zstd frame is read: {text}");
    let (status, text) = post_status(
        &server,
        Some("gzip"),
        with_trailing_junk(gzip(&req("http-gz-junk").encode_to_vec())),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("gzip body does not decompress"), "{text}");
    let (status, text) = post_status(
        &server,
        Some("zstd"),
        with_trailing_junk(
            zstd::stream::encode_all(&req("http-zstd-junk").encode_to_vec()[..], 1).unwrap(),
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("zstd body does not decompress"), "{text}");

    let grpc = |encoding: &'static str, payload: Vec<u8>| {
        let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(grpc_frame(
            true, &payload,
        ))));
        let url = server.grpc_url();
        async move { grpc_export_raw(&url, Some(encoding), body).await }
    };
    let status = grpc("gzip", two_members(&req("grpc-gz"))).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = grpc("zstd", two_zstd_frames(&req("grpc-zstd"))).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = grpc(
        "gzip",
        with_trailing_junk(gzip(&req("grpc-gz-junk").encode_to_vec())),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("gzip"), "{status:?}");

    let ids = stored_ids(&server).await;
    let expected: Vec<String> = ["grpc-gz", "grpc-zstd", "http-gz", "http-zstd"]
        .iter()
        .flat_map(|p| [format!("{p}-0"), format!("{p}-1")])
        .collect();
    assert_eq!(
        ids, expected,
        "the whole of each good body, none of a bad one"
    );
}

/// A request body that sends its first bytes and then nothing, forever.
struct Stalled(Option<Bytes>);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(bytes) => Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
            None => Poll::Pending,
        }
    }
}

/// Reads from `stream` until the peer closes it (or resets it), or
/// `within` passes; returns what arrived, or None if it is still open.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_and_others_are_served() {
    let server = Server::start_with_receiver(
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"2s\"\nkeepalive_interval = \"5s\"\nkeepalive_timeout = \"2s\"",
    );
    // The server may take its time (the machine is shared), but not forever.
    let within = Duration::from_secs(30);
    let started = Instant::now();

    // Half a request head, then silence.
    let mut half_head = tokio::net::TcpStream::connect(server.http).await.unwrap();
    half_head
        .write_all(b"POST /v1/logs HTTP/1.1\r\nHost: auditrail\r\ncontent-type: appl")
        .await
        .unwrap();
    // A whole head, a tenth of the promised body, then silence.
    let mut half_body = tokio::net::TcpStream::connect(server.http).await.unwrap();
    half_body
        .write_all(
            b"POST /v1/logs HTTP/1.1\r\nHost: auditrail\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"resourceLo",
        )
        .await
        .unwrap();
    // A connection to the gRPC port that never says a word (no HTTP/2
    // preface: neither HTTP/2 nor TCP keepalive would ever close it).
    let mut silent_grpc = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    // Half a gRPC message, then silence.
    let mut frame = grpc_frame(
        false,
        &request("svc", records("stalled", 1, 10)).encode_to_vec(),
    );
    frame.truncate(frame.len() / 2);
    let grpc_stalled = {
        let url = server.grpc_url();
        let body = tonic::body::Body::new(Stalled(Some(Bytes::from(frame))));
        tokio::spawn(async move { grpc_export_raw(&url, None, body).await })
    };

    // Meanwhile others are served.
    let (status, text) = post_status(
        &server,
        None,
        request("svc", records("meanwhile-http", 1, 10)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    LogsServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .export(request("svc", records("meanwhile-grpc", 1, 10)))
        .await
        .expect("a prompt client is served while slow ones wait");

    let answer = read_until_closed(&mut half_head, within).await;
    assert!(
        answer.is_some(),
        "a client that never finished its headers still holds its connection after {within:?}"
    );
    assert!(
        read_until_closed(&mut silent_grpc, within).await.is_some(),
        "a connection that never sent its HTTP/2 preface is still open after {within:?}"
    );
    let answer = read_until_closed(&mut half_body, within)
        .await
        .unwrap_or_else(|| {
            panic!(
                "a client that never finished its body still holds its connection after {within:?}"
            )
        });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");

    let status = tokio::time::timeout(within, grpc_stalled)
        .await
        .expect("a stalled gRPC call is ended by the server")
        .unwrap();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(status.message().contains("body_read_timeout"), "{status:?}");
    assert!(started.elapsed() < within * 2);

    let ids = stored_ids(&server).await;
    assert_eq!(ids, ["meanwhile-grpc-0", "meanwhile-http-0"]);
    assert_eq!(
        server
            .metric("auditrail_refused_requests_total{reason=\"timeout\"}")
            .await,
        3.0,
        "the HTTP body, the gRPC call and the silent gRPC connection that timed out"
    );
}
