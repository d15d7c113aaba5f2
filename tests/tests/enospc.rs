//! The disk fills up under load. The spool lives on a cutfs mount whose
//! writes fail with ENOSPC past a capacity. Requests that could not be made
//! durable get errors, never acks; nothing acknowledged is lost or
//! corrupted; and once there is space again, ingest comes back by itself,
//! without a restart: the spool reopens (see crates/auditrail-spool/src/recovery.rs).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use auditrail_tests::cutfs::{CutDirs, CutFs};
use auditrail_tests::load::{batch, Stored};
use auditrail_tests::{cli, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use tonic::Code;

/// Room for the spool's files: a few of sled's 8 MiB segments.
const CAPACITY: u64 = 40 << 20;
/// More requests than could ever fit, so the loop ends by itself.
const MOST_REQUESTS: usize = 4000;
/// What the operator frees: room for the reopen and the requests after it.
const FREED: u64 = 48 << 20;
/// Requests sent once there is space again.
const REFILL_REQUESTS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_what_it_cannot_store_loses_nothing_and_comes_back_when_space_frees() {
    let dirs = CutDirs::new();
    let fs = CutFs::mount(&dirs.backing);
    fs.set_capacity(Some(CAPACITY));
    let spool = fs.mountpoint().join("spool");
    let mut server = Server::try_start_at(&dirs.work, &spool, "", "", &[]).unwrap();
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();

    let mut acked = HashSet::new();
    let mut refused = Vec::new();
    let mut refused_at = 0;
    for n in 0..MOST_REQUESTS {
        let (ids, request) = batch("fill-", 0, n, 64);
        match grpc.export(request).await {
            Ok(_) => acked.extend(ids),
            Err(status) => {
                if refused.is_empty() {
                    refused_at = n;
                }
                refused.push(status);
                if refused.len() >= 3 {
                    break;
                }
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "{} events fitted in {CAPACITY} bytes: the disk never filled",
        acked.len()
    );
    assert!(!acked.is_empty(), "nothing fitted before the disk filled");
    for status in &refused {
        assert!(
            matches!(status.code(), Code::Unavailable | Code::ResourceExhausted),
            "a request the full disk could not take gets a retryable error: {status:?}"
        );
    }
    eprintln!(
        "{} events acknowledged before the disk filled; then {:?}",
        acked.len(),
        refused[0]
    );
    let (status, body) = server.readyz().await;
    assert_eq!(status, 503, "a full disk makes the node unready: {body}");
    assert!(
        body["spool"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "and says why: {body}"
    );
    // Still full: the spool stays stopped, and says so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = server.readyz().await;
    assert_eq!(status, 503, "no reopen while the disk is still full");

    // Space again: the operator freed some disk. No restart.
    fs.set_capacity(Some(CAPACITY + FREED));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = server.readyz().await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with space again the spool never reopened: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = Stored::of(&server).await;
    let missing = stored.missing(&acked);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    assert!(stored.doubled().is_empty(), "{:?}", stored.doubled());
    assert!(stored.seqs_gap_free());

    // Ingest is back, resends of what was refused included.
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    for n in 0..REFILL_REQUESTS {
        let (ids, request) = batch("after-", 0, n, 64);
        grpc.export(request)
            .await
            .expect("with space again, ingest comes back without a restart");
        acked.extend(ids);
    }
    let (refused_ids, resend) = batch("fill-", 0, refused_at, 64);
    grpc.export(resend)
        .await
        .expect("a refused request, sent again");
    acked.extend(refused_ids);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("auditrail_spool_reopens_total 1"),
        "the reopen is counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("spool"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // And it all holds across a restart: every acknowledged event once, the
    // chain intact.
    server.kill9();
    let server = Server::try_start_at(&dirs.work, &spool, "", "", &[])
        .unwrap_or_else(|log| panic!("the spool must open after the reopen:\n{log}"));
    let stored = Stored::of(&server).await;
    assert!(stored.missing(&acked).is_empty());
    assert!(stored.doubled().is_empty(), "{:?}", stored.doubled());
    assert!(stored.seqs_gap_free());
    let total = stored.len();
    drop(server);
    let verify = cli(&["verify", "--data-dir", spool.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify: {out}");
    assert!(out.contains(&format!("checked {total} events")), "{out}");
}
