//! Durability under `kill -9`: every acknowledged event is there exactly once
//! after a restart, seqs stay gap-free and the hash chain stays intact.

use std::collections::HashSet;
use std::time::Duration;

use auditrail_tests::load::{batch, load_until_killed, Stored};
use auditrail_tests::{cli, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = HashSet::new();
    for round in 0..3 {
        let mut server = Server::start_in(dir.path(), "", "");
        let acked = load_until_killed(
            &mut server,
            &format!("r{round}-"),
            4,
            Duration::from_millis(700 + 300 * round),
        )
        .await;
        assert!(
            acked.len() > 500,
            "round {round}: the load should get going, got {}",
            acked.len()
        );
        all_acked.extend(acked);
    }

    let mut server = Server::start_in(dir.path(), "", "");
    let stored = Stored::of(&server).await;
    let missing = stored.missing(&all_acked);
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {} of {}, e.g. {:?}",
        missing.len(),
        all_acked.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled = stored.doubled();
    assert!(
        doubled.is_empty(),
        "stored twice: {:?}",
        &doubled[..doubled.len().min(5)]
    );
    assert!(stored.seqs_gap_free(), "seqs are gap-free");

    // Clients resend what they could not confirm: stored once all the same.
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    let (_, resend) = batch("r0-", 0, 0, 64);
    grpc.export(resend).await.unwrap();
    assert_eq!(Stored::of(&server).await.len(), stored.len());

    assert!(server.terminate().success());
    let verify = cli(&["verify", "--data-dir", server.spool_dir().to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify: {out}");
    assert!(out.contains("chain intact"), "{out}");
}
