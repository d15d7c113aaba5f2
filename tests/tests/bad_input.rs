//! Bad input gets a clear error that names the problem, changes nothing, and
//! leaves the server up: over OTLP/HTTP and OTLP/gRPC.

use std::io::Write;

use auditrail_tests::{grpc_export_raw, grpc_frame, Server};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use tonic::Code;

fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn record(uid: &str) -> LogRecord {
    LogRecord {
        attributes: vec![KeyValue {
            key: "log.record.uid".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(uid.into())),
            }),
            key_strindex: 0,
        }],
        body: Some(AnyValue {
            value: Some(Value::StringValue("x".repeat(200))),
        }),
        ..Default::default()
    }
}

/// A body nested `depth` arrays deep.
fn deeply_nested(depth: usize) -> LogRecord {
    let mut value = AnyValue {
        value: Some(Value::StringValue("bottom".into())),
    };
    for _ in 0..depth {
        value = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![value],
            })),
        };
    }
    LogRecord {
        body: Some(value),
        ..Default::default()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn post(
    server: &Server,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(server.http_logs_url())
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn stored(server: &Server) -> usize {
    server.events("limit=0").await.len()
}

/// The ids of the events stored from what was sent (not the trail's own
/// tombstones: [`tombstone_reasons`]).
async fn stored_ids(server: &Server) -> Vec<String> {
    server
        .events("limit=0")
        .await
        .iter()
        .filter(|e| e["service_name"] != "auditrail")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `auditrail.reasons` of each tombstone a request left.
async fn tombstone_reasons(server: &Server) -> Vec<serde_json::Value> {
    server
        .events("event=auditrail.tombstone&limit=0")
        .await
        .iter()
        .map(|e| {
            let attributes: serde_json::Value =
                serde_json::from_str(e["attributes"].as_str().unwrap()).unwrap();
            attributes["auditrail.reasons"].clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_bad_requests_are_named_and_change_nothing() {
    let server = Server::start();
    let json = "application/json";
    let proto = "application/x-protobuf";

    // (what, expected status, content type, content encoding, body, a word the error must contain)
    type Case = (
        &'static str,
        u16,
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage protobuf",
            400,
            proto,
            None,
            b"\xff\xff\xff\xff not protobuf".to_vec(),
            "protobuf",
        ),
        (
            "truncated protobuf",
            400,
            proto,
            None,
            {
                let mut b = request(vec![record("t1")]).encode_to_vec();
                b.truncate(b.len() - 5);
                b
            },
            "protobuf",
        ),
        (
            "malformed JSON",
            400,
            json,
            None,
            br#"{"resourceLogs": [ {"#.to_vec(),
            "JSON",
        ),
        (
            "JSON of the wrong shape",
            400,
            json,
            None,
            br#"{"resourceLogs": "nope"}"#.to_vec(),
            "JSON",
        ),
        (
            "JSON with a bad trace id hex",
            400,
            json,
            None,
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}"#.to_vec(),
            "column 61",
        ),
        (
            "broken gzip",
            400,
            proto,
            Some("gzip"),
            b"this is not gzip".to_vec(),
            "gzip",
        ),
        (
            "broken zstd",
            400,
            proto,
            Some("zstd"),
            b"this is not zstd either".to_vec(),
            "zstd",
        ),
        (
            "unknown encoding",
            415,
            proto,
            Some("br"),
            b"x".to_vec(),
            "content encoding",
        ),
        (
            "wrong content type",
            415,
            "text/plain",
            None,
            b"hello".to_vec(),
            "content type",
        ),
        (
            "oversized body",
            413,
            proto,
            None,
            vec![0u8; 17 << 20],
            "max_request_bytes",
        ),
        (
            "gzip bomb",
            413,
            proto,
            Some("gzip"),
            gzip(&vec![0u8; 17 << 20]),
            "after decompression",
        ),
        (
            "absurd nesting (protobuf)",
            400,
            proto,
            None,
            request(vec![deeply_nested(200)]).encode_to_vec(),
            "recursion",
        ),
        (
            "absurd nesting (JSON)",
            400,
            json,
            None,
            {
                let mut body =
                    String::from(r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"#);
                body.push_str(&r#"{"arrayValue":{"values":["#.repeat(200));
                body.push_str(r#"{"stringValue":"x"}"#);
                body.push_str(&"]}}".repeat(200));
                body.push_str("}]}]}]}");
                body.into_bytes()
            },
            "recursion",
        ),
    ];
    for (what, want_status, content_type, encoding, body, want_text) in cases {
        let (status, text) = post(&server, content_type, encoding, body).await;
        assert_eq!(status, want_status, "{what}: {text}");
        assert!(
            text.to_lowercase().contains(&want_text.to_lowercase()),
            "{what}: the error should name {want_text:?}, got {text}"
        );
    }
    assert_eq!(stored(&server).await, 0, "no bad request stored anything");

    let (status, text) = post(&server, json, None, b"{}".to_vec()).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "{}"),
        "an empty export is fine"
    );

    // Traces and metrics: an explicit refusal, not a bare 404.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", server.http))
        .header("content-type", proto)
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("traces are not served here"));

    assert!(
        server
            .metric("auditrail_refused_requests_total{reason=\"malformed\"}")
            .await
            >= 8.0
    );
    assert!(
        server
            .metric("auditrail_refused_requests_total{reason=\"too_large\"}")
            .await
            >= 2.0
    );
    assert!(reqwest::get(format!("{}/healthz", server.admin_url()))
        .await
        .unwrap()
        .status()
        .is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn http_partial_success_names_the_bad_record_and_keeps_the_rest() {
    let server = Server::start();
    let mut bad = record("bad");
    bad.trace_id = vec![1; 15];
    let body = request(vec![record("good-1"), bad, record("good-2")]).encode_to_vec();
    let (status, text) = post(&server, "application/json", None, Vec::new()).await;
    assert_eq!(status, 400, "an empty body is not JSON: {text}");
    let resp = reqwest::Client::new()
        .post(server.http_logs_url())
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer =
        opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(
            resp.bytes().await.unwrap(),
        )
        .unwrap();
    let partial = answer.partial_success.expect("partial_success is set");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("log_records[1]")
            && partial.error_message.contains("trace_id must be 16 bytes"),
        "{}",
        partial.error_message
    );
    let ids = stored_ids(&server).await;
    assert_eq!(ids, ["good-1", "good-2"]);
    assert_eq!(
        tombstone_reasons(&server).await,
        [serde_json::json!(["invalid_trace_id=1"])]
    );
    assert_eq!(
        server
            .metric("auditrail_rejected_events_total{reason=\"invalid_trace_id\"}")
            .await,
        1.0
    );
}

/// Sends one raw gRPC frame to LogsService/Export and returns the status.
async fn raw_grpc(
    server: &Server,
    compressed: bool,
    encoding: Option<&str>,
    payload: Vec<u8>,
) -> tonic::Status {
    let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(grpc_frame(
        compressed, &payload,
    ))));
    grpc_export_raw(&server.grpc_url(), encoding, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_bad_requests_get_the_right_codes() {
    let server = Server::start();

    let status = raw_grpc(&server, false, None, b"\xff\xff\xff\xffjunk".to_vec()).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");

    let status = raw_grpc(&server, true, Some("gzip"), b"not gzip at all".to_vec()).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decompress"), "{status:?}");

    let status = raw_grpc(
        &server,
        false,
        None,
        request(vec![deeply_nested(200)]).encode_to_vec(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("recursion"), "{status:?}");

    let status = raw_grpc(&server, false, None, vec![0u8; 17 << 20]).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    let bomb = gzip(
        &request(vec![LogRecord {
            body: Some(AnyValue {
                value: Some(Value::StringValue("0".repeat(17 << 20))),
            }),
            ..Default::default()
        }])
        .encode_to_vec(),
    );
    let status = raw_grpc(&server, true, Some("gzip"), bomb).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // A well-formed zstd-compressed request is accepted.
    let mut client = LogsServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Zstd);
    let mut bad = record("bad");
    bad.span_id = vec![1; 3];
    let answer = client
        .export(request(vec![record("z-1"), bad]))
        .await
        .expect("accepted")
        .into_inner();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("span_id must be 8 bytes"),
        "{}",
        partial.error_message
    );

    let traces = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(traces.code(), Code::Unimplemented);
    assert!(traces.message().contains("traces are not served here"));

    let ids = stored_ids(&server).await;
    assert_eq!(
        ids,
        ["z-1"],
        "only the good record of the good request was stored"
    );
    // ...and the trail says what was refused.
    assert_eq!(
        tombstone_reasons(&server).await,
        [serde_json::json!(["invalid_span_id=1"])]
    );
}
