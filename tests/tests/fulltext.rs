//! The spool's full-text index from outside: `kill -9` right after the acks
//! (before the index committed them, and again with the index gone), and
//! `--text`, `--trace-id` and `--actor` still find every acknowledged match
//! at once, then through the index once it has caught up.

use auditrail_tests::otlp::{attr, record, request, string, trace_id};
use auditrail_tests::{cli, eventually, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;

/// What each query must find: (query string, CLI arguments, matching uids).
fn queries(rounds: u64) -> Vec<(String, Vec<String>, Vec<String>)> {
    let uids = |f: &dyn Fn(u64) -> bool| -> Vec<String> {
        (0..rounds * 200)
            .filter(|&i| f(i))
            .map(|i| format!("ft-{i}"))
            .collect()
    };
    vec![
        (
            // A part of a word, in the body.
            "text=nzibar&limit=0".into(),
            vec!["--text".into(), "nzibar".into()],
            uids(&|i| i % 50 == 7),
        ),
        (
            // A part of an attribute value.
            "text=ngapor&limit=0".into(),
            vec!["--text".into(), "ngapor".into()],
            uids(&|i| i % 40 == 3),
        ),
        (
            format!("trace_id={}&limit=0", trace_id(9).1),
            vec!["--trace-id".into(), trace_id(9).1],
            uids(&|i| i / 10 == 9),
        ),
    ]
}

async fn send(server: &Server, round: u64) {
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    for chunk in 0..4 {
        let records = (0..50)
            .map(|j| {
                let i = round * 200 + chunk * 50 + j;
                let body = if i % 50 == 7 {
                    format!("event {i}: zanzibarite spotted")
                } else {
                    format!("event {i}: nothing to see")
                };
                let city = if i % 40 == 3 { "Singapore" } else { "Paris" };
                record(
                    &format!("ft-{i}"),
                    trace_id(i / 10).0,
                    [1; 8],
                    &body,
                    vec![attr("city", string(city))],
                )
            })
            .collect();
        // Answered only once durable: acknowledged.
        grpc.export(request("shop", records)).await.unwrap();
    }
}

async fn check(server: &Server, rounds: u64) {
    for (query, args, want) in queries(rounds) {
        let mut got: Vec<String> = server
            .events(&query)
            .await
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want, "{query}");
        let mut cli_args = vec!["query", "--admin"];
        let admin = server.admin_url();
        cli_args.push(&admin);
        cli_args.extend(args.iter().map(String::as_str));
        cli_args.extend(["--limit", "0", "--format", "json"]);
        let out = cli(&cli_args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(lines, want.len(), "auditrail query {args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_matches_are_found_after_kill_9_before_the_index_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "", "");
    send(&server, 0).await;
    // Committed by the index: the first round.
    eventually("the full-text index catches up", || async {
        server.metric("auditrail_spool_fulltext_lag_events").await == 0.0
    })
    .await;
    send(&server, 1).await;
    // At once after the acks: the index commits about once a second.
    server.kill9();
    server.restart();
    check(&server, 2).await;

    // The index gone altogether: rebuilt, and meanwhile the queries scan.
    send(&server, 2).await;
    server.kill9();
    std::fs::remove_dir_all(server.spool_dir().join("fulltext")).unwrap();
    server.restart();
    check(&server, 3).await;
    eventually("the rebuilt index catches up", || async {
        server.metric("auditrail_spool_fulltext_lag_events").await == 0.0
    })
    .await;
    check(&server, 3).await;
    assert!(server.terminate().success());
}
