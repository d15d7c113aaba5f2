//! Tests that try to get in: writers without a tenant's credential, a
//! tenant that claims another's `log.record.uid` in advance or names another
//! tenant in its payload, readers and state changes on the admin API
//! without the right token, a web page reaching a loopback admin API, and
//! token rotation by SIGHUP.

use std::time::Duration;

use auditrail_tests::otlp::{attr, record, request, string, trace_id};
use auditrail_tests::tenants::{ACME, ENV, GLOBEX, OPERATOR, OPERATOR_KEY, TOKENS};
use auditrail_tests::{cli, eventually, sinks, Server, Setup};
use opentelemetry::logs::{AnyValue, LogRecord as _, Severity};
use opentelemetry_otlp::{
    LogExporter, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use serde_json::Value;

/// A server where acme and globex write with their tokens and the operator
/// reads everything.
fn tenants_server(receiver: &str, tables: &str) -> Server {
    Server::start_setup(Setup {
        receiver,
        admin: OPERATOR_KEY,
        tables: &format!("{TOKENS}\n{tables}"),
        env: ENV,
        ..Setup::default()
    })
}

/// POSTs `request` as OTLP/protobuf with `authorization` (a whole header
/// value) if given: the status, the `WWW-Authenticate` header and the body.
async fn post_logs(
    server: &Server,
    authorization: Option<&str>,
    request: &ExportLogsServiceRequest,
) -> (u16, Option<String>) {
    let mut post = reqwest::Client::new()
        .post(server.http_logs_url())
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec());
    if let Some(value) = authorization {
        post = post.header("authorization", value);
    }
    let response = post.send().await.expect("POST /v1/logs");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), challenge)
}

/// Exports `request` over gRPC with `authorization` metadata if given.
async fn grpc_export(
    server: &Server,
    authorization: Option<&str>,
    request: ExportLogsServiceRequest,
) -> Result<(), tonic::Status> {
    let mut client = LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting over gRPC");
    let mut request = tonic::Request::new(request);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    client.export(request).await.map(|_| ())
}

fn one_event(uid: &str, body: &str) -> ExportLogsServiceRequest {
    request(
        "imagegen-ui",
        vec![record(
            uid,
            trace_id(7).0,
            [1; 8],
            body,
            vec![attr("user.id", string("alice"))],
        )],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_without_a_tenants_credential_get_401_and_store_nothing() {
    let server = tenants_server("", "");
    let event = one_event("uid-refused", "must not be stored");
    let bearer_operator = format!("Bearer {OPERATOR}");
    for (authorization, expected) in [
        (None, 401),
        (Some("Bearer not-a-token-of-anyone-0000"), 401),
        (Some("Bearer "), 401),
        (Some("Basic YWNtZTphY21l"), 401),
        (Some(&format!("Bearer {ACME}x")[..]), 401),
        (Some(&bearer_operator[..]), 403),
    ] {
        let (status, challenge) = post_logs(&server, authorization, &event).await;
        assert_eq!(status, expected, "HTTP with {authorization:?}");
        if expected == 401 {
            assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="auditrail""#));
        }
        let status = grpc_export(&server, authorization, event.clone())
            .await
            .expect_err("gRPC must refuse");
        let code = if expected == 401 {
            tonic::Code::Unauthenticated
        } else {
            tonic::Code::PermissionDenied
        };
        assert_eq!(
            status.code(),
            code,
            "gRPC with {authorization:?}: {status:?}"
        );
    }
    // Nothing of any of them was stored.
    assert_eq!(
        server.events_as(OPERATOR, "limit=0").await,
        Vec::<Value>::new()
    );
    let (_, ready) = server.admin_get("/readyz", None).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(
        server
            .metric(r#"auditrail_auth_failures_total{listener="otlp",reason="missing"}"#)
            .await
            >= 2.0
    );
    assert!(
        server
            .metric(r#"auditrail_auth_failures_total{listener="otlp",reason="unknown_token"}"#)
            .await
            >= 4.0
    );
    // The right token is taken, over both transports.
    let (status, _) = post_logs(&server, Some(&format!("Bearer {ACME}")), &event).await;
    assert_eq!(status, 200);
    grpc_export(
        &server,
        Some(&format!("bearer {GLOBEX}")),
        one_event("uid-2", "stored"),
    )
    .await
    .expect("a tenant's token writes");
    let stored = server.events_as(OPERATOR, "limit=0").await;
    let tenants: Vec<&str> = stored
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
}

/// The real Rust OTel SDK, over gRPC (metadata) and HTTP (headers), with a
/// payload that names another tenant wherever it can: the event is the
/// token's tenant's.
#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_is_the_tokens_whatever_the_payload_says() {
    let server = tenants_server("", "");
    let grpc_url = server.grpc_url();
    let http_url = server.http_logs_url();
    tokio::task::spawn_blocking(move || {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {ACME}").parse().unwrap());
        let grpc = LogExporter::builder()
            .with_tonic()
            .with_endpoint(grpc_url)
            .with_metadata(metadata)
            .build()
            .unwrap();
        let http = LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_url)
            .with_headers([("authorization".to_owned(), format!("Bearer {ACME}"))].into())
            .build()
            .unwrap();
        for (exporter, body) in [(grpc, "over grpc"), (http, "over http")] {
            sinks::emit_in_span(exporter, |record| {
                record.set_severity_number(Severity::Info);
                record.set_body(AnyValue::from(body));
                record.add_attribute("user.id", "alice");
                record.add_attribute("tenant", "globex");
                record.add_attribute("auditrail.tenant", "globex");
            });
        }
    })
    .await
    .unwrap();
    let events = server.events_as(OPERATOR, "limit=0").await;
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        assert_eq!(event["tenant"], "acme", "{event}");
    }
}

/// Globex sends acme's next `log.record.uid` first; acme's real event must
/// still be stored, and acme's own resend of it is still a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_uid_claimed_in_advance_by_another_tenant_does_not_suppress_the_real_event() {
    let server = tenants_server("", "");
    let globex = format!("Bearer {GLOBEX}");
    let acme = format!("Bearer {ACME}");
    grpc_export(&server, Some(&globex), one_event("order-42", "squatted"))
        .await
        .unwrap();
    grpc_export(
        &server,
        Some(&acme),
        one_event("order-42", "the real event"),
    )
    .await
    .unwrap();
    let (status, _) = post_logs(
        &server,
        Some(&acme),
        &one_event("order-42", "the real event"),
    )
    .await;
    assert_eq!(status, 200, "a resend is acknowledged");
    let events = server.events_as(OPERATOR, "limit=0").await;
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["tenant"].as_str().unwrap(),
                e["event_id"].as_str().unwrap(),
                e["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("globex", "order-42", "squatted"),
            ("acme", "order-42", "the real event")
        ]
    );
    assert_eq!(server.metric("auditrail_duplicate_events_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_wants_the_right_token_for_each_thing() {
    let server = tenants_server("", "");
    use reqwest::Method;
    // Open: liveness; and for loopback clients, readiness and metrics.
    assert_eq!(server.admin_get("/healthz", None).await.0, 200);
    assert_eq!(server.admin_get("/readyz", None).await.0, 200);
    assert_eq!(server.admin_get("/metrics", None).await.0, 200);
    // Reads need a token.
    for path in ["/v1/events", "/v1/dead-letters"] {
        let (status, body) = server.admin_get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
        assert_eq!(
            server.admin_get(path, Some("guess-0000000000000")).await.0,
            401
        );
        assert_eq!(server.admin_get(path, Some(ACME)).await.0, 200, "{path}");
        assert_eq!(
            server.admin_get(path, Some(OPERATOR)).await.0,
            200,
            "{path}"
        );
    }
    // State changes need POST and the operator's token.
    let replay = "/v1/dead-letters/replay";
    assert_eq!(server.admin_call(Method::POST, replay, None).await.0, 401);
    let (status, body) = server.admin_call(Method::POST, replay, Some(ACME)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        server
            .admin_call(Method::GET, replay, Some(OPERATOR))
            .await
            .0,
        405
    );
    let (status, body) = server
        .admin_call(Method::POST, replay, Some(OPERATOR))
        .await;
    assert_eq!((status, &body["marked"]), (200, &Value::from(0)), "{body}");
    let forget = "/v1/sinks/gone/forget";
    assert_eq!(
        server
            .admin_call(Method::POST, forget, Some(GLOBEX))
            .await
            .0,
        403
    );
    assert!(
        server
            .metric(r#"auditrail_auth_failures_total{listener="admin",reason="not_operator"}"#)
            .await
            >= 2.0
    );
}

/// With no credential configured the admin API is open to local users, but
/// not to a web page in a local browser: neither through DNS rebinding nor
/// through a cross-site form.
#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_a_web_page_cannot_use_the_loopback_admin_api() {
    let server = Server::start();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.admin_url());
    let rebound = client
        .get(url("/v1/events"))
        .header("host", "attacker.example:8686")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    let text = rebound.text().await.unwrap();
    assert!(text.contains("loopback names"), "{text}");
    let local = client
        .get(url("/v1/events"))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(local.status().as_u16(), 200);
    let forged = client
        .post(url("/v1/dead-letters/replay"))
        .header("origin", "http://attacker.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", "session=stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let fetched = client
        .post(url("/v1/dead-letters/replay"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status().as_u16(), 403);
    let cli_like = client
        .post(url("/v1/dead-letters/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(cli_like.status().as_u16(), 200);
}

#[test]
fn a_listener_reachable_from_other_hosts_needs_auth_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auditrail.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[receiver]\ngrpc_addr = \"0.0.0.0:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n{extra}\n\
                 [admin]\naddr = \"127.0.0.1:{}\"\n[spool]\ndir = \"{}\"\n",
                auditrail_tests::free_port(),
                auditrail_tests::free_port(),
                auditrail_tests::free_port(),
                dir.path().join("spool").display()
            ),
        )
        .unwrap();
    };
    write("");
    let checked = cli(&["check-config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success());
    assert!(
        stderr.contains("receiver.grpc_addr") && stderr.contains("allow_unauthenticated = true"),
        "{stderr}"
    );
    let served = cli(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!served.status.success(), "serve must refuse to start");
    write("allow_unauthenticated = true");
    assert!(cli(&["check-config", config.to_str().unwrap()])
        .status
        .success());
}

/// `--token-env` on the CLI: the token goes in a header, never on the
/// command line; without it the CLI says what to do.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reads_with_the_token_an_environment_variable_holds() {
    let server = tenants_server("", "");
    grpc_export(
        &server,
        Some(&format!("Bearer {ACME}")),
        one_event("u-1", "hello"),
    )
    .await
    .unwrap();
    let admin = server.admin_url();
    let run = |args: &[&str], env: Option<(&str, &str)>| {
        let mut command = std::process::Command::new(auditrail_tests::binary());
        command.args(args).args(["--admin", &admin]);
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let refused = run(&["query", "--format", "json"], None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--token-env"),
        "{stderr}"
    );
    let ok = run(
        &["query", "--format", "json", "--token-env", "MY_TOKEN"],
        Some(("MY_TOKEN", OPERATOR)),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let line: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(line["body"], "hello");
    let listed = run(
        &["dead-letter", "list", "--token-env", "MY_TOKEN"],
        Some(("MY_TOKEN", ACME)),
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let unset = run(&["query", "--token-env", "NOT_SET_ANYWHERE"], None);
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert!(
        stderr.contains("NOT_SET_ANYWHERE") && stderr.contains("not set"),
        "{stderr}"
    );
}

/// Rotation without downtime: the new token is added to the token file,
/// SIGHUP, then the old one removed, SIGHUP.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_rotate_by_sighup_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("acme.token");
    let old = "acme-old-token-0f9e8d7c6b5a";
    let new = "acme-new-token-1a2b3c4d5e6f";
    std::fs::write(&file, format!("{old}\n")).unwrap();
    let tables = format!(
        "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_file = \"{}\"\n",
        file.display()
    );
    let server = Server::start_setup(Setup {
        admin: OPERATOR_KEY,
        tables: &tables,
        env: ENV,
        ..Setup::default()
    });
    let send = |token: &'static str, uid: &'static str| {
        let server = &server;
        async move {
            post_logs(
                server,
                Some(&format!("Bearer {token}")),
                &one_event(uid, "x"),
            )
            .await
            .0
        }
    };
    assert_eq!(send(old, "a").await, 200);
    assert_eq!(send(new, "b").await, 401);
    std::fs::write(&file, format!("# rotating\n{new}\n{old}\n")).unwrap();
    server.sighup();
    eventually("the new token is taken after SIGHUP", || async {
        send(new, "c").await == 200
    })
    .await;
    assert_eq!(send(old, "d").await, 200, "both during the rotation");
    std::fs::write(&file, format!("{new}\n")).unwrap();
    server.sighup();
    eventually(
        "the old token is refused after the second SIGHUP",
        || async { send(old, "e").await == 401 },
    )
    .await;
    // A broken reload keeps the tokens in force.
    std::fs::remove_file(&file).unwrap();
    server.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send(new, "f").await, 200);
    assert!(server.log().contains("reload failed"), "{}", server.log());
    let ids: Vec<String> = server
        .events_as(OPERATOR, "limit=0")
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    // ("e" may be stored too: it was sent until the old token was refused.)
    for id in ["a", "c", "d", "f"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    assert!(
        !ids.iter().any(|i| i == "b"),
        "b was sent before its token was valid: {ids:?}"
    );
}

/// Tenant globex asks for tenant acme's events every way a reader can —
/// by time, actor, trace id, text, tenant, a stream, paging, dead letters —
/// over HTTP and with the CLI, and gets nothing of acme's. Acme, and the
/// operator, see them (so the answers are not empty for another reason).
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_reads_nothing_of_another_tenants() {
    use auditrail_tests::nats::NatsServer;
    // NATS refuses messages over 16 KiB: acme's huge event is dead-lettered.
    let nats = NatsServer::start(Some(16 * 1024));
    let sink = format!(
        "[[sinks]]\nname = \"bus\"\ntype = \"nats\"\nurl = \"{}\"\nstream = \"AUDIT\"\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\n",
        nats.url()
    );
    let server = tenants_server("", &sink);
    let (acme_trace, acme_trace_hex) = trace_id(4242);
    let acme_events = request(
        "imagegen-ui",
        vec![
            record(
                "acme-1",
                acme_trace,
                [2; 8],
                "a lighthouse in acme's secret prompt",
                vec![attr("user.id", string("alice"))],
            ),
            record(
                "acme-huge",
                acme_trace,
                [3; 8],
                &"lighthouse ".repeat(4000),
                vec![attr("user.id", string("alice"))],
            ),
        ],
    );
    grpc_export(&server, Some(&format!("Bearer {ACME}")), acme_events)
        .await
        .unwrap();
    let globex_event = request(
        "globex-app",
        vec![record(
            "globex-1",
            trace_id(99).0,
            [4; 8],
            "globex's own",
            vec![attr("user.id", string("bob"))],
        )],
    );
    grpc_export(&server, Some(&format!("Bearer {GLOBEX}")), globex_event)
        .await
        .unwrap();
    sinks::wait_dead_lettered(&server, "bus", 1).await;

    let ids = |events: Vec<Value>| -> Vec<String> {
        events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    for query in [
        "since=1h".to_owned(),
        "actor=alice".to_owned(),
        format!("trace_id={acme_trace_hex}"),
        "text=lighthouse".to_owned(),
        "tenant=acme".to_owned(),
        "limit=0".to_owned(),
        "limit=0&text=lighthouse".to_owned(),
        "after_seq=0&limit=10".to_owned(),
        "service=imagegen-ui&since=1h&until=2099-01-01T00:00:00Z".to_owned(),
    ] {
        let seen = ids(server.events_as(GLOBEX, &query).await);
        assert!(
            seen.iter().all(|id| id == "globex-1"),
            "globex saw {seen:?} for {query}"
        );
        let acme_sees = ids(server.events_as(ACME, &query).await);
        assert!(
            acme_sees.iter().any(|id| id.starts_with("acme-")) || query.starts_with("after_seq"),
            "acme sees its own for {query}: {acme_sees:?}"
        );
        assert!(
            !acme_sees.contains(&"globex-1".to_owned()),
            "{query}: {acme_sees:?}"
        );
    }
    let dead = |token: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server.admin_get("/v1/dead-letters", Some(token)).await;
            assert_eq!(status, 200, "{body}");
            body["dead_letters"].as_array().unwrap().len()
        }
    };
    assert_eq!(dead(GLOBEX).await, 0);
    assert_eq!(dead(ACME).await, 1);
    assert_eq!(dead(OPERATOR).await, 1);
    let (_, other) = server
        .admin_get("/v1/dead-letters?tenant=acme&sink=bus", Some(GLOBEX))
        .await;
    assert_eq!(other["dead_letters"], serde_json::json!([]));

    // The same through the CLI, as users run it.
    let admin = server.admin_url();
    let cli_as = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(auditrail_tests::binary())
            .args(args)
            .args(["--admin", &admin, "--token-env", "READER_TOKEN"])
            .env("READER_TOKEN", token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [
        &["query", "--format", "json", "--actor", "alice"][..],
        &["query", "--format", "json", "--trace-id", &acme_trace_hex],
        &[
            "query",
            "--format",
            "json",
            "--text",
            "lighthouse",
            "--limit",
            "0",
        ],
        &[
            "query", "--format", "json", "--tenant", "acme", "--since", "1h",
        ],
        &["dead-letter", "list", "--format", "json"],
    ] {
        assert_eq!(cli_as(GLOBEX, args), "", "globex's CLI {args:?}");
        assert!(!cli_as(ACME, args).is_empty(), "acme's CLI {args:?}");
    }
}

/// `[admin] metrics_addr`: Prometheus and probes get `/metrics`, `/healthz`
/// and `/readyz` with no token on a listener of their own, which serves no
/// event; the admin listener still wants a token from off the host.
#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_listener_exposes_metrics_and_no_events() {
    let port = auditrail_tests::free_port();
    let admin =
        format!("token_env = \"AUDITRAIL_ADMIN_TOKEN\"\nmetrics_addr = \"127.0.0.1:{port}\"");
    let server = Server::start_setup(Setup {
        admin: &admin,
        tables: TOKENS,
        env: ENV,
        ..Setup::default()
    });
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move { reqwest::get(&url).await.unwrap().status().as_u16() }
    };
    eventually("the metrics listener answers", || async {
        get("/healthz").await == 200
    })
    .await;
    assert_eq!(get("/metrics").await, 200);
    assert_eq!(get("/readyz").await, 200);
    for path in ["/v1/events", "/v1/dead-letters"] {
        assert_eq!(get(path).await, 404, "{path} on the metrics listener");
    }
    assert_eq!(server.admin_get("/v1/events", None).await.0, 401);
}
