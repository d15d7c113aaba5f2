//! Rate limits per tenant: a tenant that sends far over its rate is told to
//! slow down (429 / RESOURCE_EXHAUSTED with a retry hint), and another
//! tenant sending under its own rate at the same time is never refused.

use std::time::{Duration, Instant};

use auditrail_tests::otlp::{attr, record, request, string, trace_id};
use auditrail_tests::{Server, Setup};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

const ACME: &str = "acme-writer-token-6b2e8f0a4c";
const GLOBEX: &str = "globex-writer-token-9d1c3e5a7b";
const OPERATOR: &str = "operator-token-2f4a6c8e0d";
const RATE: u64 = 500;
const LOAD: Duration = Duration::from_secs(3);

fn batch(prefix: &str, n: usize) -> ExportLogsServiceRequest {
    let records = (0..n)
        .map(|i| {
            record(
                &format!("{prefix}-{i}"),
                trace_id(i as u64).0,
                [6; 8],
                "load",
                vec![attr("user.id", string("loader"))],
            )
        })
        .collect();
    request("loadgen", records)
}

/// Outcome of one POST: accepted, or refused with its Retry-After.
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(), Option<String>> {
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Ok(()),
        429 => Err(response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned())),
        other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_over_its_rate_is_refused_and_never_slows_another() {
    let server = Server::start_setup(Setup {
        admin: "token_env = \"OPERATOR_TOKEN\"",
        tables: &format!(
            "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\
             [[receiver.tokens]]\ntenant = \"globex\"\ntoken_env = \"GLOBEX_TOKEN\"\n\
             [receiver.rate_limit]\nevents_per_second = {RATE}\nburst = \"1s\"\n"
        ),
        env: &[
            ("ACME_TOKEN", ACME),
            ("GLOBEX_TOKEN", GLOBEX),
            ("OPERATOR_TOKEN", OPERATOR),
        ],
        ..Setup::default()
    });
    let url = server.http_logs_url();
    let client = reqwest::Client::new();
    let started = Instant::now();

    // Acme: four senders, each as fast as answers come, 100 events a request.
    let mut flood = Vec::new();
    for sender in 0..4 {
        let (client, url) = (client.clone(), url.clone());
        flood.push(tokio::spawn(async move {
            let (mut accepted, mut refused, mut hints) = (0u64, 0u64, Vec::new());
            let mut i = 0;
            while started.elapsed() < LOAD {
                let body = batch(&format!("acme-{sender}-{i}"), 100).encode_to_vec();
                match post(&client, &url, ACME, body).await {
                    Ok(()) => accepted += 100,
                    Err(hint) => {
                        refused += 1;
                        hints.push(hint);
                    }
                }
                i += 1;
            }
            (accepted, refused, hints)
        }));
    }
    // Globex: 50 events every 250 ms, 200/s, under its own rate.
    let mut globex_refused = 0;
    let mut globex_sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut i = 0;
    while started.elapsed() < LOAD {
        tick.tick().await;
        let body = batch(&format!("globex-{i}"), 50).encode_to_vec();
        match post(&client, &url, GLOBEX, body).await {
            Ok(()) => globex_sent += 50,
            Err(_) => globex_refused += 1,
        }
        i += 1;
    }
    let (mut acme_accepted, mut acme_refused, mut hints) = (0, 0, Vec::new());
    for sender in flood {
        let (a, r, h) = sender.await.unwrap();
        acme_accepted += a;
        acme_refused += r;
        hints.extend(h);
    }
    let elapsed = started.elapsed().as_secs_f64();

    assert_eq!(
        globex_refused, 0,
        "globex, under its rate, was refused while acme flooded"
    );
    assert!(
        acme_refused > 0,
        "acme sent far over its rate and was never refused"
    );
    assert!(
        hints.iter().all(|h| h
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1))),
        "every 429 carries a Retry-After in seconds: {hints:?}"
    );
    // The rate over the run, plus the one-second burst, plus one request of
    // slack for the edges.
    let allowed = (RATE as f64 * (elapsed + 1.0)) as u64 + 100;
    assert!(
        acme_accepted <= allowed,
        "acme got {acme_accepted} events in {elapsed:.1}s at {RATE}/s (at most {allowed})"
    );
    let stored = server.events_as(OPERATOR, "limit=0").await;
    let count = |tenant: &str| stored.iter().filter(|e| e["tenant"] == tenant).count() as u64;
    assert_eq!(count("globex"), globex_sent);
    assert_eq!(
        count("acme"),
        acme_accepted,
        "a refused request stores nothing"
    );
    assert!(
        server
            .metric(r#"auditrail_rate_limited_requests_total{tenant="acme"}"#)
            .await
            >= acme_refused as f64
    );
    assert_eq!(
        server
            .metric(r#"auditrail_rate_limited_requests_total{tenant="globex"}"#)
            .await,
        0.0
    );

    // Over gRPC: RESOURCE_EXHAUSTED with a RetryInfo detail.
    let mut grpc = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    let mut last = None;
    for n in 0..20 {
        let mut request = tonic::Request::new(batch(&format!("acme-grpc-{n}"), 400));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {ACME}").parse().unwrap());
        if let Err(status) = grpc.export(request).await {
            last = Some(status);
            break;
        }
    }
    let status = last.expect("acme's gRPC flood was never refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    use tonic_types::StatusExt;
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
}
