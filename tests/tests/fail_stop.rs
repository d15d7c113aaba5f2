//! A failed fsync is fail-stop (PostgreSQL's lesson of 2018), end to end:
//! the spool lives on a cutfs mount told to fail the next fsyncs with EIO.
//! The request the failed fsync covered gets an error, not an ack; later
//! requests are refused, the client's resend of that request too (it must
//! not be acknowledged as a "duplicate" of events that never became
//! durable); `/readyz` says why; and after a restart the server takes
//! events again.

use auditrail_tests::cutfs::{CutDirs, CutFs};
use auditrail_tests::load::{batch, Stored};
use auditrail_tests::{eventually, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_fsync_refuses_appends_until_a_restart() {
    let dirs = CutDirs::new();
    let (backing, work) = (&dirs.backing, &dirs.work);
    let fs = CutFs::mount(backing);
    let spool = fs.mountpoint().join("spool");
    let mut server = Server::try_start_at(work, &spool, "", "", &[]).unwrap();
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();

    let (before_ids, before) = batch("before-", 0, 0, 10);
    grpc.export(before).await.expect("a healthy spool acks");

    // The disk starts failing: every fsync from now on returns EIO.
    fs.fail_next_fsyncs(1_000_000);
    let (covered_ids, covered) = batch("covered-", 0, 0, 10);
    let refused = grpc
        .export(covered.clone())
        .await
        .expect_err("a request whose fsync failed must not be acknowledged");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // The client resends: still an error, not a "duplicate" ack.
    let resent = grpc
        .export(covered.clone())
        .await
        .expect_err("the resend of a request whose fsync failed must not be acknowledged");
    assert_eq!(resent.code(), Code::Unavailable, "{resent:?}");
    // Nothing else is taken either, over HTTP neither.
    let (_, other) = batch("other-", 0, 0, 1);
    let http = reqwest::Client::new()
        .post(server.http_logs_url())
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&other))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status().as_u16(), 503);

    let (status, body) = server.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["spool"]["accepting"], false, "{body}");
    let reason = body["spool"]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("fsync"), "{body}");
    assert!(
        server
            .metric("auditrail_spool_errors_total{op=\"fsync\"}")
            .await
            >= 1.0
    );
    assert!(
        server.log().contains("spool stopped"),
        "the log must say it: {}",
        server.log()
    );

    // Shutting down while the disk still fails: an error exit, not a panic
    // (sled's own final `sync_all().unwrap()` fails too) and not a hang.
    let status = server.terminate();
    assert!(
        status.code().is_some_and(|code| code != 0 && code != 101),
        "{status}: {}",
        server.log()
    );
    // The disk is fixed; the operator restarts auditrail.
    fs.fail_next_fsyncs(0);
    let server = Server::try_start_at(work, &spool, "", "", &[]).unwrap();
    let (status, body) = server.readyz().await;
    assert_eq!(status, 200, "{body}");
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    grpc.export(covered)
        .await
        .expect("after a restart the resend is taken");
    let (after_ids, after) = batch("after-", 0, 0, 10);
    grpc.export(after)
        .await
        .expect("after a restart appends work");
    eventually("every acknowledged event is stored once", || async {
        let stored = Stored::of(&server).await;
        let acked: std::collections::HashSet<String> = before_ids
            .iter()
            .chain(&covered_ids)
            .chain(&after_ids)
            .cloned()
            .collect();
        stored.missing(&acked).is_empty() && stored.doubled().is_empty()
    })
    .await;
}
