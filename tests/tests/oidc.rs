//! OIDC end to end: JWTs from a stand-in issuer (keys and tokens the test
//! makes, its JWKS served on loopback) for writers and for people on the
//! admin API. Expired tokens and tokens with a bad signature get 401 and
//! store nothing; claims map to a tenant or to the operator.

use std::time::Duration;

use auditrail_tests::oidc::{Alg, TestIssuer, AUDIENCE};
use auditrail_tests::otlp::{attr, record, request, string, trace_id};
use auditrail_tests::{Server, Setup};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use serde_json::{json, Value};

const OPERATOR: &str = "operator-token-3e5f7a9c1b";

/// A server that takes the issuer's JWTs: `tenant` claims name tenants,
/// the `audit-admins` group is the operator. `jwks` is `jwks_url = ...` or
/// `jwks_file = ...`.
fn oidc_server(issuer: &TestIssuer, jwks: &str) -> Server {
    Server::start_setup(Setup {
        admin: "token_env = \"OPERATOR_TOKEN\"",
        tables: &format!(
            "[oidc]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n{jwks}\ntenant_claim = \"tenant\"\n\
             [[oidc.roles]]\nclaim = \"groups\"\nvalue = \"audit-admins\"\noperator = true\n",
            issuer.issuer()
        ),
        env: &[("OPERATOR_TOKEN", OPERATOR)],
        ..Setup::default()
    })
}

fn event(uid: &str) -> ExportLogsServiceRequest {
    request(
        "imagegen-ui",
        vec![record(
            uid,
            trace_id(11).0,
            [5; 8],
            "an event",
            vec![attr("user.id", string("alice"))],
        )],
    )
}

async fn post(server: &Server, token: &str, uid: &str) -> u16 {
    reqwest::Client::new()
        .post(server.http_logs_url())
        .header("content-type", "application/x-protobuf")
        .bearer_auth(token)
        .body(event(uid).encode_to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn grpc(server: &Server, token: &str, uid: &str) -> tonic::Code {
    let mut client = LogsServiceClient::connect(server.grpc_url()).await.unwrap();
    let mut request = tonic::Request::new(event(uid));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match client.export(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

fn uids(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["tenant"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_with_expired_or_forged_jwts_get_401_and_store_nothing() {
    let issuer = TestIssuer::start();
    let server = oidc_server(&issuer, &format!("jwks_url = \"{}\"", issuer.jwks_url()));
    let svc = json!({"sub": "svc-imagegen", "tenant": "acme"});
    let hour = Duration::from_secs(3600);
    for alg in [Alg::RS256, Alg::ES256] {
        let expired = issuer.expired_token(svc.clone(), alg);
        let forged = issuer.foreign_token(svc.clone(), alg);
        let other_audience = issuer.token(
            json!({"sub": "svc", "tenant": "acme", "aud": "someone-else"}),
            alg,
            hour,
        );
        let no_tenant = issuer.token(json!({"sub": "svc-nobody"}), alg, hour);
        for (what, token) in [
            ("expired", &expired),
            ("bad signature", &forged),
            ("wrong audience", &other_audience),
            ("maps to no tenant", &no_tenant),
        ] {
            assert_eq!(post(&server, token, "refused").await, 401, "{what} {alg:?}");
            assert_eq!(
                grpc(&server, token, "refused").await,
                tonic::Code::Unauthenticated,
                "{what} {alg:?}"
            );
        }
        let admin = issuer.token(
            json!({"sub": "alice", "groups": ["audit-admins"]}),
            alg,
            hour,
        );
        assert_eq!(
            post(&server, &admin, "refused").await,
            403,
            "the operator writes nothing"
        );
    }
    assert_eq!(
        server.events_as(OPERATOR, "limit=0").await,
        Vec::<Value>::new()
    );
    for reason in [
        "jwt_expired",
        "jwt_bad_signature",
        "jwt_wrong_audience",
        "unmapped",
    ] {
        let sample =
            format!(r#"auditrail_auth_failures_total{{listener="otlp",reason="{reason}"}}"#);
        assert!(server.metric(&sample).await >= 4.0, "{sample}");
    }
    // A valid token writes as its tenant, over both transports.
    let rs = issuer.token(svc.clone(), Alg::RS256, hour);
    let es = issuer.token(
        json!({"sub": "svc-b", "tenant": "globex"}),
        Alg::ES256,
        hour,
    );
    assert_eq!(post(&server, &rs, "by-rs256").await, 200);
    assert_eq!(grpc(&server, &es, "by-es256").await, tonic::Code::Ok);
    assert_eq!(
        uids(&server.events_as(OPERATOR, "limit=0").await),
        [
            ("acme".to_owned(), "by-rs256".to_owned()),
            ("globex".to_owned(), "by-es256".to_owned())
        ]
    );
}

/// People log in at the issuer: an auditor in `audit-admins` reads every
/// tenant, a team member reads its tenant; stale or forged tokens read
/// nothing. The keys come from a file here.
#[tokio::test(flavor = "multi_thread")]
async fn people_read_the_admin_api_with_their_oidc_tokens() {
    let issuer = TestIssuer::start();
    let server = oidc_server(
        &issuer,
        &format!("jwks_file = \"{}\"", issuer.jwks_file().display()),
    );
    let hour = Duration::from_secs(3600);
    let acme_writer = issuer.token(json!({"sub": "svc-a", "tenant": "acme"}), Alg::ES256, hour);
    let globex_writer = issuer.token(
        json!({"sub": "svc-g", "tenant": "globex"}),
        Alg::ES256,
        hour,
    );
    assert_eq!(post(&server, &acme_writer, "a-1").await, 200);
    assert_eq!(post(&server, &globex_writer, "g-1").await, 200);

    let auditor = issuer.token(
        json!({"sub": "alice", "email": "alice@example.com", "groups": ["staff", "audit-admins"]}),
        Alg::RS256,
        hour,
    );
    let member = issuer.token(json!({"sub": "bob", "tenant": "globex"}), Alg::RS256, hour);
    assert_eq!(server.events_as(&auditor, "limit=0").await.len(), 2);
    assert_eq!(
        uids(&server.events_as(&member, "limit=0&tenant=acme").await),
        Vec::<(String, String)>::new()
    );
    assert_eq!(
        uids(&server.events_as(&member, "limit=0").await),
        [("globex".to_owned(), "g-1".to_owned())]
    );
    for token in [
        issuer.expired_token(
            json!({"sub": "alice", "groups": ["audit-admins"]}),
            Alg::RS256,
        ),
        issuer.foreign_token(
            json!({"sub": "alice", "groups": ["audit-admins"]}),
            Alg::ES256,
        ),
    ] {
        let (status, body) = server.admin_get("/v1/events", Some(&token)).await;
        assert_eq!(status, 401, "{body}");
    }
    // Only the operator changes state.
    let (status, _) = server
        .admin_call(
            reqwest::Method::POST,
            "/v1/dead-letters/replay",
            Some(&member),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .admin_call(
            reqwest::Method::POST,
            "/v1/dead-letters/replay",
            Some(&auditor),
        )
        .await;
    assert_eq!(status, 200);
    // The CLI carries the person's token from an environment variable.
    let out = std::process::Command::new(auditrail_tests::binary())
        .args(["query", "--format", "json", "--admin", &server.admin_url()])
        .args(["--token-env", "OIDC_TOKEN"])
        .env("OIDC_TOKEN", &member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(uids(&lines), [("globex".to_owned(), "g-1".to_owned())]);
}
