//! Load for the crash tests: concurrent gRPC clients that record which ids
//! were acknowledged, and a check of what a restarted server holds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

use crate::Server;

/// `len` random letters and digits. The spool compresses its batches, so
/// test load that must take real space (blob files, full disks, quotas)
/// cannot be one repeated byte, which shrinks a hundredfold.
pub fn incompressible_text(len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Request `n` of `client`: `size` records whose `log.record.uid`s are
/// `{prefix}c{client}-{n}-{i}` (so each names its record), and those ids.
pub fn batch(
    prefix: &str,
    client: usize,
    n: usize,
    size: usize,
) -> (Vec<String>, ExportLogsServiceRequest) {
    let ids: Vec<String> = (0..size)
        .map(|i| format!("{prefix}c{client}-{n}-{i}"))
        .collect();
    let records = ids
        .iter()
        .map(|id| LogRecord {
            time_unix_nano: 1,
            body: Some(AnyValue {
                value: Some(Value::StringValue(format!(
                    "prompt for {id}: {}",
                    incompressible_text(300)
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

/// Loads the server from `clients` concurrent gRPC clients (64 records per
/// request, ids from [`batch`] with `prefix`), kills it with SIGKILL after
/// `kill_after`, and returns the ids whose export was acknowledged.
pub async fn load_until_killed(
    server: &mut Server,
    prefix: &str,
    clients: usize,
    kill_after: Duration,
) -> HashSet<String> {
    load_until_killed_with(server, prefix, clients, 64, kill_after).await
}

/// [`load_until_killed`] with `records` records per request.
pub async fn load_until_killed_with(
    server: &mut Server,
    prefix: &str,
    clients: usize,
    records: usize,
    kill_after: Duration,
) -> HashSet<String> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let url = server.grpc_url();
        let acked = acked.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut grpc = LogsServiceClient::connect(url).await.expect("connect");
            for n in 0.. {
                let (ids, request) = batch(&prefix, client, n, records);
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

/// What a server holds, as `GET /v1/events?limit=0` lists it.
pub struct Stored {
    count: HashMap<String, usize>,
    seqs: Vec<u64>,
}

impl Stored {
    pub async fn of(server: &Server) -> Stored {
        let events = server.events("limit=0").await;
        let mut count: HashMap<String, usize> = HashMap::new();
        for e in &events {
            let id = e["event_id"].as_str().expect("event_id is a string");
            *count.entry(id.to_owned()).or_default() += 1;
        }
        let mut seqs: Vec<u64> = events
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq is a number"))
            .collect();
        seqs.sort_unstable();
        Stored { count, seqs }
    }

    /// How many events are stored.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The acknowledged ids that are not stored.
    pub fn missing<'a>(&self, acked: &'a HashSet<String>) -> Vec<&'a String> {
        acked
            .iter()
            .filter(|id| !self.count.contains_key(id.as_str()))
            .collect()
    }

    /// Ids stored more than once, with their counts.
    pub fn doubled(&self) -> Vec<(&str, usize)> {
        self.count
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.as_str(), *n))
            .collect()
    }

    /// Whether the seqs are exactly 1..=len.
    pub fn seqs_gap_free(&self) -> bool {
        self.seqs.iter().copied().eq(1..=self.seqs.len() as u64)
    }
}
