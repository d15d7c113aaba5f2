//! The disk fills up under load. The spool lives on a cutfs mount whose
//! writes fail with ENOSPC past a capacity. Requests that could not be made
//! durable get errors, never acks; nothing acknowledged is lost or
//! corrupted; and once there is space again (after a restart: sled keeps an
//! I/O error for the rest of the process, so the spool fail-stops), ingest
//! comes back on the same spool.

use std::collections::HashSet;

use auditrail_tests::cutfs::{CutDirs, CutFs};
use auditrail_tests::load::{batch, Stored};
use auditrail_tests::{cli, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use tonic::Code;

/// Room for the spool's files: a few of sled's 8 MiB segments.
const CAPACITY: u64 = 40 << 20;
/// More requests than could ever fit, so the loop ends by itself.
const MOST_REQUESTS: usize = 4000;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_what_it_cannot_store_and_loses_nothing_acknowledged() {
    let dirs = CutDirs::new();
    let fs = CutFs::mount(&dirs.backing);
    fs.set_capacity(Some(CAPACITY));
    let spool = fs.mountpoint().join("spool");
    let mut server = Server::try_start_at(&dirs.work, &spool, "", "", &[]).unwrap();
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();

    let mut acked = HashSet::new();
    let mut refused = Vec::new();
    for n in 0..MOST_REQUESTS {
        let (ids, request) = batch("fill-", 0, n, 64);
        match grpc.export(request).await {
            Ok(_) => acked.extend(ids),
            Err(status) => {
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
    server.kill9();

    // Space again: the operator freed the disk and restarts auditrail.
    fs.set_capacity(None);
    let server = Server::try_start_at(&dirs.work, &spool, "", "", &[])
        .unwrap_or_else(|log| panic!("the spool must open after a full disk:\n{log}"));
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

    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    let (_, after) = batch("after-", 0, 0, 64);
    grpc.export(after)
        .await
        .expect("with space again, ingest comes back");
    let total = Stored::of(&server).await.len();
    drop(server);
    let verify = cli(&["verify", "--data-dir", spool.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify: {out}");
    assert!(out.contains(&format!("checked {total} events")), "{out}");
}
