//! `verify` and `spool check` as an operator runs them on a stopped
//! server's spool: they say what they covered, never write to the spool,
//! name what is damaged, and exit 0 (intact), 1 (damage) or 2 (could not
//! check).

use std::path::{Path, PathBuf};

use auditrail_tests::load::incompressible_text;
use auditrail_tests::otlp::{attr, record, request, string};
use auditrail_tests::{cli, files_under, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;

/// A stopped server's spool holding three requests of 3,000 events of
/// ~1 KiB each: each commit is one batch value large enough for sled to
/// keep it in a blob file of its own.
async fn spool_with_blobs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "", "");
    let mut client = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    for r in 0..3 {
        let records = (0..3000)
            .map(|i| {
                record(
                    &format!("r{r}-{i}"),
                    [0; 16],
                    [0; 8],
                    &format!("prompt {i}: {}", incompressible_text(1000)),
                    vec![attr("user.id", string("alice"))],
                )
            })
            .collect();
        client.export(request("svc", records)).await.unwrap();
    }
    assert!(server.terminate().success());
    let spool = server.spool_dir();
    (dir, spool)
}

fn run(args: &[&str]) -> (i32, String) {
    let out = cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exited"), text)
}

fn blobs(spool: &Path) -> Vec<PathBuf> {
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(spool.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Blob files are named by log position: the lowest was written first.
    blobs.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    blobs
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_and_check_say_what_they_covered_and_change_nothing() {
    let (_dir, spool) = spool_with_blobs().await;
    let spool_arg = spool.to_str().unwrap();
    assert_eq!(blobs(&spool).len(), 3, "one blob file per commit");
    let before = files_under(&spool);

    let (code, out) = run(&["verify", "--data-dir", spool_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 9000 events, seq 1..9000"), "{out}");
    assert!(out.contains("starts at genesis"), "{out}");
    assert!(out.contains("chain intact"), "{out}");

    let (code, out) = run(&["spool", "check", "--data-dir", spool_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9000 retained, seq 1..9000"), "{out}");
    assert!(out.contains("spool ok"), "{out}");

    assert!(
        before == files_under(&spool),
        "verify or check wrote to the spool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_spool_is_a_usage_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-spool");
    for args in [
        vec!["verify", "--data-dir"],
        vec!["spool", "check", "--data-dir"],
    ] {
        let mut args = args.clone();
        args.push(missing.to_str().unwrap());
        let (code, out) = run(&args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains("does not exist"), "{out}");
        assert!(!missing.exists(), "{args:?} created the spool");
    }
    // A directory that holds no spool is no spool either.
    let (code, out) = run(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not a spool"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_blob_is_named_as_missing_events() {
    let (_dir, spool) = spool_with_blobs().await;
    let spool_arg = spool.to_str().unwrap();
    // The first commit's blob (seq 1..3000) disappears behind the spool's back.
    std::fs::remove_file(&blobs(&spool)[0]).unwrap();

    let (code, out) = run(&["verify", "--data-dir", spool_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN: seq 1: missing: seq 1..3000 absent"),
        "{out}"
    );
    let (code, out) = run(&["spool", "check", "--data-dir", spool_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED: tree ids"), "{out}");
    assert!(out.contains("DAMAGED: chain: seq 1: missing"), "{out}");
}
