//! Durability under `kill -9`: every acknowledged event is there exactly once
//! after a restart, seqs stay gap-free and the hash chain stays intact.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditrail_tests::{cli, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

fn batch(client: usize, n: usize, size: usize) -> (Vec<String>, ExportLogsServiceRequest) {
    let ids: Vec<String> = (0..size).map(|i| format!("c{client}-{n}-{i}")).collect();
    let records = ids
        .iter()
        .map(|id| LogRecord {
            time_unix_nano: 1,
            body: Some(AnyValue {
                value: Some(Value::StringValue(format!(
                    "prompt for {id}: {}",
                    "z".repeat(300)
                ))),
            }),
            attributes: vec![KeyValue {
                key: "log.record.uid".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue(id.clone())),
                }),
                key_strindex: 0,
            }],
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (ids, request)
}

/// Loads the server from `clients` concurrent gRPC clients until it dies;
/// returns the ids whose export was acknowledged.
async fn load_until_killed(
    server: &mut Server,
    clients: usize,
    kill_after: Duration,
) -> HashSet<String> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let url = server.grpc_url();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut grpc = LogsServiceClient::connect(url).await.expect("connect");
            for n in 0.. {
                let (ids, request) = batch(client, n, 64);
                match grpc.export(request).await {
                    Ok(_) => acked.lock().unwrap().extend(ids),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(kill_after).await;
    server.kill9();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = HashSet::new();
    for round in 0..3 {
        let mut server = Server::start_in(dir.path(), "", "");
        let acked =
            load_until_killed(&mut server, 4, Duration::from_millis(700 + 300 * round)).await;
        assert!(
            acked.len() > 500,
            "round {round}: the load should get going, got {}",
            acked.len()
        );
        all_acked.extend(acked);
    }

    let mut server = Server::start_in(dir.path(), "", "");
    let events = server.events("limit=0").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *count.entry(e["event_id"].as_str().unwrap()).or_default() += 1;
    }
    let missing: Vec<_> = all_acked
        .iter()
        .filter(|id| !count.contains_key(id.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?} (of {})",
        all_acked.len()
    );
    let doubled: Vec<_> = count.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    let mut seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seqs are gap-free"
    );

    // Clients resend what they could not confirm: stored once all the same.
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    let (_, resend) = batch(0, 0, 64);
    grpc.export(resend).await.unwrap();
    assert_eq!(server.events("limit=0").await.len(), events.len());

    assert!(server.terminate().success());
    let verify = cli(&["verify", "--data-dir", server.spool_dir().to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify: {out}");
    assert!(out.contains("chain intact"), "{out}");
}
