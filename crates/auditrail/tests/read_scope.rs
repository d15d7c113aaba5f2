//! The read handlers honour the caller's scope, as the admin API's
//! authentication decides it: with a tenant's token a reader sees only its
//! own events and dead letters, whatever it asks for; with the operator's,
//! everything.

use std::sync::Arc;
use std::time::Duration;

use auditrail::admin::{router, AdminState};
use auditrail::admin_auth::AdminAuth;
use auditrail::events_api::{Queries, QueryLimits};
use auditrail_auth::tokens::TokenSet;
use auditrail_auth::{Access, Authenticator};
use auditrail_exporters::Pipeline;
use auditrail_model::AuditEvent;
use auditrail_spool::{Spool, SpoolConfig};
use serde_json::Value;

fn event(n: u64, tenant: &str) -> AuditEvent {
    AuditEvent {
        event_id: format!("{tenant}-{n}"),
        time_unix_nano: n,
        received_time_unix_nano: n,
        tenant: tenant.into(),
        actor_id: "alice".into(),
        event_name: "image.generate".into(),
        body: format!("prompt {n} of {tenant}"),
        attributes: "{}".into(),
        resource_attributes: "{}".into(),
        ..Default::default()
    }
}

const ACME: &str = "acme-reader-token-1234";
const OPERATOR: &str = "operator-token-1234";

/// Serves the admin router over `spool`, behind its authentication with a
/// token for acme and one for the operator; returns its base URL.
async fn serve(spool: Arc<Spool>, pipeline: Arc<Pipeline>) -> String {
    let state = AdminState {
        spool,
        pipeline,
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        trace_url: None,
        queries: Arc::new(Queries::new(QueryLimits::default())),
        verifier: None,
        record_requests: true,
    };
    let mut tokens = TokenSet::new();
    tokens
        .add(ACME, Access::Tenant("acme".into()), "acme")
        .unwrap();
    tokens.add(OPERATOR, Access::Operator, "operator").unwrap();
    let auth = AdminAuth {
        authenticator: Arc::new(Authenticator::new(tokens, None)),
        required: true,
        loopback_listener: true,
        allow_unauthenticated: false,
        listener: "admin",
    };
    let app = router(state, auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// `GET url` with the bearer token that follows it after a space.
async fn get(url_and_token: String) -> Value {
    let (url, token) = url_and_token.rsplit_once(' ').unwrap();
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

fn tenants_of(page: &Value, key: &str, tenant_of: fn(&Value) -> &Value) -> Vec<String> {
    let mut tenants: Vec<String> = page[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {page}"))
        .iter()
        .map(|e| tenant_of(e).as_str().unwrap().to_owned())
        .collect();
    tenants.dedup();
    tenants
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_scope_narrows_every_read_whatever_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(SpoolConfig::new(dir.path(), "node-a")).unwrap());
    let pipeline = Arc::new(
        Pipeline::start(spool.clone(), &[], Duration::from_secs(3600))
            .await
            .unwrap(),
    );
    let events: Vec<AuditEvent> = (1..=30)
        .map(|n| event(n, if n % 3 == 0 { "acme" } else { "globex" }))
        .collect();
    spool.append(events.clone()).await.unwrap();
    let stored = spool.query(&Default::default()).unwrap();
    for e in stored.iter().filter(|e| e.seq % 5 == 0) {
        spool.dead_letter("warehouse", e, "rejected", 1).unwrap();
    }

    let base = serve(spool.clone(), pipeline.clone()).await;
    // Each URL below is followed by the token it is read with.
    let event_tenant: fn(&Value) -> &Value = |e| &e["tenant"];
    let letter_tenant: fn(&Value) -> &Value = |l| &l["event"]["tenant"];

    for query in [
        "",
        "limit=0",
        "after_seq=0&limit=5",
        "actor=alice&limit=0",
        "tenant=acme",
    ] {
        let page = get(format!("{base}/v1/events?{query} {ACME}")).await;
        assert_eq!(
            tenants_of(&page, "events", event_tenant),
            ["acme"],
            "{query}"
        );
    }
    let all = get(format!("{base}/v1/events?limit=0 {ACME}")).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 10);
    // Asking for another tenant gets nothing, not an error.
    for query in [
        "tenant=globex",
        "tenant=globex&limit=0",
        "tenant=&after_seq=0&limit=3",
    ] {
        let page = get(format!("{base}/v1/events?{query} {ACME}")).await;
        assert_eq!(page["events"], Value::Array(vec![]), "{query}");
        assert_eq!(page["complete"], true);
    }
    assert_eq!(
        tenants_of(
            &get(format!("{base}/v1/dead-letters {ACME}")).await,
            "dead_letters",
            letter_tenant
        ),
        ["acme"]
    );
    let other = get(format!("{base}/v1/dead-letters?tenant=globex {ACME}")).await;
    assert_eq!(other["dead_letters"], Value::Array(vec![]));

    // The operator: everything, and the tenant filter is the caller's choice.
    let page = get(format!("{base}/v1/events?limit=0 {OPERATOR}")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 30);
    // The trail's record of each admin request so far: tenant `auditrail`,
    // which no tenant's reader saw, shown when asked for.
    let page = get(format!(
        "{base}/v1/events?event=auditrail.admin.request&limit=0 {OPERATOR}"
    ))
    .await;
    assert!(!page["events"].as_array().unwrap().is_empty());
    assert_eq!(tenants_of(&page, "events", event_tenant), ["auditrail"]);
    let page = get(format!(
        "{base}/v1/events?event=auditrail.admin.request&limit=0 {ACME}"
    ))
    .await;
    assert_eq!(page["events"], Value::Array(vec![]));
    let page = get(format!("{base}/v1/events?tenant=globex&limit=0 {OPERATOR}")).await;
    assert_eq!(tenants_of(&page, "events", event_tenant), ["globex"]);
    assert_eq!(page["events"].as_array().unwrap().len(), 20);
    let letters = get(format!("{base}/v1/dead-letters {OPERATOR}")).await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 6);
    let letters = get(format!(
        "{base}/v1/dead-letters?tenant=globex&sink=warehouse {OPERATOR}"
    ))
    .await;
    assert_eq!(
        tenants_of(&letters, "dead_letters", letter_tenant),
        ["globex"]
    );
}
