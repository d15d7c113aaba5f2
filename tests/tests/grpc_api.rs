//! auditrail's own gRPC API (`proto/auditrail/v1`), called with the client
//! generated from the .proto files (`auditrail-api`) against the real
//! binary, on the OTLP/gRPC port: Query with every filter and paging, Tail
//! following what real OTel SDK clients send, Verify, dead letters listed
//! and replayed against a real MariaDB, and the admin API's auth rules.

use std::time::{Duration, Instant};

use auditrail_api::v1::audit_service_client::AuditServiceClient;
use auditrail_api::v1::{
    tail_request, Event, EventFilter, ListDeadLettersRequest, QueryRequest, QueryResponse,
    ReplayDeadLettersRequest, TailRequest, TailResponse, VerifyRequest,
};
use auditrail_tests::mysql::{Database, SinkToml};
use auditrail_tests::otlp::{attr, int, record, request, string};
use auditrail_tests::tenants::{ACME, ENV, GLOBEX, OPERATOR, OPERATOR_KEY, TOKENS};
use auditrail_tests::{eventually, sinks, Server, Setup};
use opentelemetry::logs::{AnyValue, LogRecord as _};
use opentelemetry_otlp::{LogExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

type Client = AuditServiceClient<Channel>;

const WRONG: &str = "not-a-token-at-all-000000";

/// How long a tail may take to hand over an event it follows.
const FOLLOW_WITHIN: Duration = Duration::from_secs(20);

async fn client(server: &Server) -> Client {
    AuditServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting to the gRPC API")
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn call<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a metadata value"),
        );
    }
    request
}

fn query(filter: EventFilter, limit: Option<u32>, after_seq: Option<u64>) -> QueryRequest {
    QueryRequest {
        filter: Some(filter),
        limit,
        after_seq,
    }
}

async fn query_as(
    api: &mut Client,
    token: Option<&str>,
    request: QueryRequest,
) -> Result<QueryResponse, tonic::Status> {
    api.query(call(request, token))
        .await
        .map(tonic::Response::into_inner)
}

/// The events of one page, which must be answered.
async fn events(api: &mut Client, filter: EventFilter) -> Vec<Event> {
    query_as(api, None, query(filter.clone(), None, None))
        .await
        .unwrap_or_else(|e| panic!("Query {filter:?}: {e}"))
        .events
}

fn bodies(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.body.as_str()).collect()
}

/// Exports `request` over OTLP/gRPC as `token`'s tenant (or without one).
async fn export(server: &Server, token: Option<&str>, request: ExportLogsServiceRequest) {
    let mut otlp = LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting over OTLP/gRPC");
    otlp.export(call(request, token))
        .await
        .expect("the export is acknowledged");
}

/// One event of service `imagegen-ui` with these fields and a fresh trace.
fn audit_event(
    uid: &str,
    name: &str,
    actor: &str,
    outcome: &str,
    target: &str,
    body: &str,
) -> ExportLogsServiceRequest {
    let (trace, _) = sinks::next_trace_id();
    request(
        "imagegen-ui",
        vec![record(
            uid,
            trace,
            [0xa7, 0, 0, 0, 0, 0, 0, 1],
            body,
            vec![
                attr("event.name", string(name)),
                attr("user.id", string(actor)),
                attr("audit.outcome", string(outcome)),
                attr("audit.target", string(target)),
                attr("image.count", int(2)),
            ],
        )],
    )
}

/// Emits one event named `name` with `body` through the real Rust OTel SDK
/// (OTLP/gRPC, inside a span), as `token`'s tenant if given.
async fn emit(server: &Server, name: &'static str, body: &'static str, token: Option<&str>) {
    let endpoint = server.grpc_url();
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use opentelemetry_otlp::WithTonicConfig;
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(token) = token {
            metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let exporter = LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_metadata(metadata)
            .build()
            .expect("building the OTLP/gRPC log exporter");
        sinks::emit_in_span(exporter, |record| {
            record.set_event_name(name);
            record.set_body(AnyValue::from(body));
            record.add_attribute("user.id", "carol");
        });
    })
    .await
    .expect("emitting through the SDK");
}

/// The next event of a tail, within [`FOLLOW_WITHIN`].
async fn next_event(stream: &mut Streaming<TailResponse>) -> Event {
    let message = tokio::time::timeout(FOLLOW_WITHIN, stream.message())
        .await
        .expect("the tail hands over an event in time")
        .expect("the tail goes on")
        .expect("the tail is still open");
    message.event.expect("a tail message holds an event")
}

async fn tail(
    api: &mut Client,
    token: Option<&str>,
    filter: EventFilter,
    start: Option<tail_request::Start>,
) -> Result<Streaming<TailResponse>, tonic::Status> {
    let request = TailRequest {
        filter: Some(filter),
        start,
    };
    api.tail(call(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn imagegen() -> EventFilter {
    EventFilter {
        service: Some("imagegen-ui".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn query_takes_every_filter_and_pages_in_seq_order() {
    let server = Server::start_setup(Setup {
        admin: "record_requests = true",
        tables: "[query]\ntrace_url = \"http://tempo.example/trace/{trace_id}\"",
        ..Setup::default()
    });
    for i in 0..6 {
        let (name, outcome) = match i {
            4 | 5 => ("image.delete", "success"),
            3 => ("image.generate", "failure"),
            _ => ("image.generate", "success"),
        };
        let actor = if i % 2 == 0 { "alice" } else { "bob" };
        let secret = if i == 2 { " with a secret-word" } else { "" };
        export(
            &server,
            None,
            audit_event(
                &format!("q-{i}"),
                name,
                actor,
                outcome,
                &format!("outputs/{actor}/{i}.png"),
                &format!("prompt {i}{secret}"),
            ),
        )
        .await;
    }
    let mut api = client(&server).await;

    // Each filter, as GET /v1/events and `auditrail query` take it. A page
    // without after_seq is the newest N, oldest first.
    let filter = |f: fn(&mut EventFilter)| {
        let mut filter = imagegen();
        f(&mut filter);
        filter
    };
    let all = events(&mut api, imagegen()).await;
    assert_eq!(
        bodies(&all),
        [
            "prompt 0",
            "prompt 1",
            "prompt 2 with a secret-word",
            "prompt 3",
            "prompt 4",
            "prompt 5"
        ]
    );
    let alice = events(&mut api, filter(|f| f.actor = Some("alice".into()))).await;
    assert_eq!(
        bodies(&alice),
        ["prompt 0", "prompt 2 with a secret-word", "prompt 4"]
    );
    let deleted = events(&mut api, filter(|f| f.event = Some("image.delete".into()))).await;
    assert_eq!(bodies(&deleted), ["prompt 4", "prompt 5"]);
    let failed = events(&mut api, filter(|f| f.outcome = Some("failure".into()))).await;
    assert_eq!(bodies(&failed), ["prompt 3"]);
    let text = events(&mut api, filter(|f| f.text = Some("secret-word".into()))).await;
    assert_eq!(bodies(&text), ["prompt 2 with a secret-word"]);
    let recent_bob = events(
        &mut api,
        filter(|f| {
            f.since = Some("1h".into());
            f.actor = Some("bob".into());
        }),
    )
    .await;
    assert_eq!(bodies(&recent_bob), ["prompt 1", "prompt 3", "prompt 5"]);
    let future = events(
        &mut api,
        filter(|f| f.since = Some("2999-01-01T00:00:00Z".into())),
    )
    .await;
    assert!(future.is_empty(), "{future:?}");
    let bob_files = events(
        &mut api,
        filter(|f| f.target = Some("outputs/bob/*".into())),
    )
    .await;
    assert_eq!(bodies(&bob_files), ["prompt 1", "prompt 3", "prompt 5"]);
    let one_file = events(
        &mut api,
        filter(|f| f.target = Some("outputs/alice/2.png".into())),
    )
    .await;
    assert_eq!(bodies(&one_file), ["prompt 2 with a secret-word"]);
    let other_tenant = events(&mut api, filter(|f| f.tenant = Some("globex".into()))).await;
    assert!(other_tenant.is_empty(), "{other_tenant:?}");
    let trace_id = all[3].trace_id.clone();
    let mut by_trace = imagegen();
    by_trace.trace_id = Some(trace_id.clone());
    let by_trace = events(&mut api, by_trace).await;
    assert_eq!(bodies(&by_trace), ["prompt 3"]);

    // The canonical fields, with the attributes as a JSON object and as
    // the exact text the hash covers.
    let e = &by_trace[0];
    assert_eq!(
        (
            e.node.as_str(),
            e.tenant.as_str(),
            e.event_id.as_str(),
            e.event_name.as_str(),
            e.actor_id.as_str(),
            e.outcome.as_str(),
            e.target.as_str(),
            e.service_name.as_str(),
        ),
        (
            "test-node",
            "default",
            "q-3",
            "image.generate",
            "bob",
            "failure",
            "outputs/bob/3.png",
            "imagegen-ui"
        )
    );
    assert_eq!(
        e.trace_url,
        format!("http://tempo.example/trace/{trace_id}")
    );
    assert_eq!((e.hash.len(), e.prev_hash.len()), (64, 64), "{e:?}");
    assert_eq!(e.prev_hash, all[2].hash, "the chain links the events");
    let attributes = &e.attributes.as_ref().expect("attributes").fields;
    use prost_types::value::Kind;
    assert_eq!(
        attributes["user.id"].kind,
        Some(Kind::StringValue("bob".into()))
    );
    assert_eq!(attributes["image.count"].kind, Some(Kind::NumberValue(2.0)));
    assert!(
        e.attributes_json.contains(r#""image.count":2,"#),
        "{}",
        e.attributes_json
    );
    let resource = &e.resource_attributes.as_ref().expect("resource").fields;
    assert_eq!(
        resource["service.name"].kind,
        Some(Kind::StringValue("imagegen-ui".into()))
    );

    // Paging in seq order: each page goes on from the last one's
    // next_after_seq, without a gap or a repeat, to a complete end.
    let mut paged = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = query_as(&mut api, None, query(imagegen(), Some(4), Some(after)))
            .await
            .expect("a page");
        let end = page.end.expect("a page end");
        pages += 1;
        let last_page = page.events.len() < 4;
        paged.extend(page.events);
        assert!(end.complete && end.next_after_seq > after, "{end:?}");
        after = end.next_after_seq;
        if last_page {
            break;
        }
        assert!(pages < 10, "paging does not end: {end:?}");
    }
    assert_eq!(pages, 2, "6 events, 4 a page");
    let seqs: Vec<u64> = paged.iter().map(|e| e.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in seq order, none twice");
    assert_eq!(bodies(&paged), bodies(&all));
    // Newest N.
    let newest = query_as(&mut api, None, query(imagegen(), Some(2), None))
        .await
        .unwrap();
    assert_eq!(bodies(&newest.events), ["prompt 4", "prompt 5"]);

    // Bad requests name what is wrong.
    for (request, says) in [
        (query(imagegen(), Some(0), None), "limit"),
        (query(imagegen(), Some(5000), None), "max_page_size"),
        (
            query(filter(|f| f.outcome = Some("maybe".into())), None, None),
            "outcome",
        ),
        (
            query(filter(|f| f.trace_id = Some("xyz".into())), None, None),
            "trace-id",
        ),
        (
            query(filter(|f| f.since = Some("yesterday".into())), None, None),
            "since",
        ),
    ] {
        let refused = query_as(&mut api, None, request.clone()).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{request:?}: {refused:?}"
        );
        assert!(refused.message().contains(says), "{request:?}: {refused:?}");
    }

    // Each call is in the trail, as an admin HTTP request would be.
    let recorded = events(
        &mut api,
        EventFilter {
            event: Some("auditrail.admin.request".into()),
            text: Some("secret-word".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let r = &recorded[0];
    assert_eq!(
        (r.actor_id.as_str(), r.target.as_str(), r.outcome.as_str()),
        ("anonymous", "/auditrail.v1.AuditService/Query", "success")
    );
    assert!(r.client_address == "127.0.0.1", "{r:?}");
    let attributes = &r.attributes.as_ref().unwrap().fields;
    assert_eq!(
        attributes["rpc.method"].kind,
        Some(Kind::StringValue("Query".into()))
    );
    assert_eq!(
        attributes["rpc.grpc.status_code"].kind,
        Some(Kind::NumberValue(0.0))
    );
    let refusals = events(
        &mut api,
        EventFilter {
            event: Some("auditrail.admin.request".into()),
            outcome: Some("failure".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(refusals.len(), 5, "the five bad requests: {refusals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_follows_what_sdk_clients_send_after_it_starts() {
    let mut server = Server::start();
    let mut api = client(&server).await;
    emit(&server, "image.generate", "stored before the tail", None).await;
    let generated = EventFilter {
        event: Some("image.generate".into()),
        ..Default::default()
    };
    let mut follow = tail(&mut api, None, generated.clone(), None)
        .await
        .expect("a tail");
    // What does not match is passed over; what does arrives as it is
    // stored, and only what was stored after the tail started.
    emit(&server, "image.delete", "not followed", None).await;
    emit(&server, "image.generate", "followed", None).await;
    let first = next_event(&mut follow).await;
    assert_eq!(
        (
            first.body.as_str(),
            first.event_name.as_str(),
            first.actor_id.as_str()
        ),
        ("followed", "image.generate", "carol")
    );
    assert_eq!(first.trace_id.len(), 32, "the SDK's span: {first:?}");
    emit(&server, "image.generate", "followed too", None).await;
    assert_eq!(next_event(&mut follow).await.body, "followed too");

    // A backlog first, then what follows.
    let mut with_backlog = tail(
        &mut api,
        None,
        generated.clone(),
        Some(tail_request::Start::Backlog(2)),
    )
    .await
    .expect("a tail with a backlog");
    assert_eq!(next_event(&mut with_backlog).await.body, "followed");
    assert_eq!(next_event(&mut with_backlog).await.body, "followed too");
    // Resumed after a seq: everything above it, in seq order.
    let mut resumed = tail(
        &mut api,
        None,
        generated.clone(),
        Some(tail_request::Start::AfterSeq(0)),
    )
    .await
    .expect("a resumed tail");
    for body in ["stored before the tail", "followed", "followed too"] {
        assert_eq!(next_event(&mut resumed).await.body, body);
    }
    emit(&server, "image.generate", "the last one", None).await;
    for stream in [&mut follow, &mut with_backlog, &mut resumed] {
        assert_eq!(next_event(stream).await.body, "the last one");
    }

    // A bad filter fails the call itself.
    let refused = tail(
        &mut api,
        None,
        EventFilter {
            outcome: Some("maybe".into()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // A shutdown ends the tails at once, with where to resume; they do not
    // hold it for the drain timeout.
    let stopping = Instant::now();
    assert!(server.terminate().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "the shutdown took {:?}",
        stopping.elapsed()
    );
    let ended = tokio::time::timeout(FOLLOW_WITHIN, follow.message())
        .await
        .expect("the tail ends")
        .expect_err("with an error");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("after_seq"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_answers_intact_and_is_recorded() {
    let server = Server::start();
    for i in 0..5 {
        export(
            &server,
            None,
            audit_event(
                &format!("v-{i}"),
                "image.generate",
                "alice",
                "success",
                "x",
                "p",
            ),
        )
        .await;
    }
    let mut api = client(&server).await;
    let verified = api
        .verify(VerifyRequest { pubkey: None })
        .await
        .expect("verify runs")
        .into_inner();
    assert!(verified.intact, "{}", verified.report);
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    assert_eq!(
        (verified.events, verified.first_seq, verified.last_seq),
        (5, 1, 5),
        "{}",
        verified.report
    );
    assert!(
        verified.summary.starts_with("5 events: 5 valid"),
        "{}",
        verified.summary
    );
    assert!(
        verified.report.contains("chain intact"),
        "{}",
        verified.report
    );

    let recorded = events(
        &mut api,
        EventFilter {
            event: Some("auditrail.verify".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (recorded[0].actor_id.as_str(), recorded[0].outcome.as_str()),
        ("anonymous", "success")
    );

    let refused = api
        .verify(VerifyRequest {
            pubkey: Some("not a key".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("pubkey"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_credentials_each_caller_gets_what_the_admin_api_gives_it() {
    let server = Server::start_setup(Setup {
        admin: OPERATOR_KEY,
        tables: TOKENS,
        env: ENV,
        ..Setup::default()
    });
    let tenant_event =
        |tenant: &str| audit_event(tenant, "image.generate", "alice", "success", "x", tenant);
    export(&server, Some(ACME), tenant_event("acme")).await;
    export(&server, Some(GLOBEX), tenant_event("globex")).await;
    let mut api = client(&server).await;

    // No token, or a wrong one: UNAUTHENTICATED, for every method.
    for token in [None, Some(WRONG)] {
        let refused = query_as(&mut api, token, query(imagegen(), None, None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = tail(&mut api, token, imagegen(), None).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = api
            .verify(call(VerifyRequest { pubkey: None }, token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = api
            .list_dead_letters(call(ListDeadLettersRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }

    // A tenant's token reads only its tenant, whatever it asks for.
    let tenants_seen = |page: QueryResponse| -> Vec<String> {
        page.events.into_iter().map(|e| e.tenant).collect()
    };
    let acme = query_as(&mut api, Some(ACME), query(imagegen(), None, None))
        .await
        .unwrap();
    assert_eq!(tenants_seen(acme), ["acme"]);
    let mut asks_globex = imagegen();
    asks_globex.tenant = Some("globex".into());
    let acme = query_as(&mut api, Some(ACME), query(asks_globex.clone(), None, None))
        .await
        .unwrap();
    assert_eq!(tenants_seen(acme), Vec::<String>::new());
    let all = query_as(&mut api, Some(OPERATOR), query(imagegen(), None, None))
        .await
        .unwrap();
    assert_eq!(tenants_seen(all), ["acme", "globex"]);
    let globex = query_as(&mut api, Some(OPERATOR), query(asks_globex, None, None))
        .await
        .unwrap();
    assert_eq!(tenants_seen(globex), ["globex"]);

    // A tenant's tail follows only its tenant's events.
    let mut acme_tail = tail(&mut api, Some(ACME), imagegen(), None).await.unwrap();
    emit(&server, "image.generate", "globex's", Some(GLOBEX)).await;
    emit(&server, "image.generate", "acme's", Some(ACME)).await;
    let followed = next_event(&mut acme_tail).await;
    assert_eq!(
        (followed.body.as_str(), followed.tenant.as_str()),
        ("acme's", "acme")
    );

    // Verify and replay are the operator's.
    let refused = api
        .verify(call(VerifyRequest { pubkey: None }, Some(ACME)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = api
        .replay_dead_letters(call(ReplayDeadLettersRequest { sink: None }, Some(ACME)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("operator"), "{refused:?}");
    let verified = api
        .verify(call(VerifyRequest { pubkey: None }, Some(OPERATOR)))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{}", verified.report);
    let replayed = api
        .replay_dead_letters(call(
            ReplayDeadLettersRequest { sink: None },
            Some(OPERATOR),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.marked, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_per_sink_and_tenant_and_replayed_by_the_operator() {
    let db = Database::create().await;
    let sink = SinkToml::new("warehouse", &db.url())
        .delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .delivery("backoff_max", "\"1s\"");
    let server = Server::start_setup(Setup {
        admin: OPERATOR_KEY,
        tables: &format!("{TOKENS}\n{sink}"),
        env: ENV,
        ..Setup::default()
    });
    // acme's second event names a target longer than the TEXT column
    // holds: the sink rejects it for good, and dead-letters it.
    let long_target = "t".repeat(70_000);
    for (uid, target) in [
        ("fits", "a.png"),
        ("too-long", long_target.as_str()),
        ("fits-too", "b.png"),
    ] {
        let event = audit_event(uid, "image.generate", "alice", "success", target, uid);
        export(&server, Some(ACME), event).await;
    }
    sinks::wait_dead_lettered(&server, "warehouse", 1).await;
    let mut api = client(&server).await;
    let lister = api.clone();
    let list = |token: &'static str, sink: Option<&str>| {
        let request = ListDeadLettersRequest {
            sink: sink.map(str::to_owned),
            tenant: None,
        };
        let mut api = lister.clone();
        async move {
            api.list_dead_letters(call(request, Some(token)))
                .await
                .unwrap_or_else(|e| panic!("ListDeadLetters as {token}: {e}"))
                .into_inner()
                .dead_letters
        }
    };

    let letters = list(OPERATOR, Some("warehouse")).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let event = letter.event.as_ref().expect("the dead letter's event");
    assert_eq!(
        (
            letter.sink.as_str(),
            event.event_id.as_str(),
            event.tenant.as_str()
        ),
        ("warehouse", "too-long", "acme")
    );
    assert_eq!(letter.seq, event.seq);
    assert!(letter.reason.contains("target"), "{}", letter.reason);
    assert!(!letter.replay_queued);
    assert!(list(OPERATOR, Some("elsewhere")).await.is_empty());
    // A tenant sees its own events' dead letters, and only those.
    assert_eq!(list(ACME, None).await.len(), 1);
    assert!(list(GLOBEX, None).await.is_empty());

    // Replay is the operator's. Once the column takes the target, the
    // replayed event is delivered and its dead letter is gone.
    let refused = api
        .replay_dead_letters(call(ReplayDeadLettersRequest { sink: None }, Some(ACME)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(list(OPERATOR, None).await.len(), 1, "nothing was replayed");
    db.execute("ALTER TABLE audit_events MODIFY target MEDIUMTEXT")
        .await;
    let replay = ReplayDeadLettersRequest {
        sink: Some("warehouse".into()),
    };
    let marked = api
        .replay_dead_letters(call(replay, Some(OPERATOR)))
        .await
        .expect("the operator replays")
        .into_inner()
        .marked;
    assert_eq!(marked, 1);
    eventually("the replayed event is delivered", || async {
        list(OPERATOR, None).await.is_empty()
            && db
                .scalar::<i64>("SELECT COUNT(*) FROM audit_events WHERE event_id = 'too-long'")
                .await
                == 1
    })
    .await;
    // The trail says who replayed what.
    let tombstones = query_as(
        &mut api,
        Some(OPERATOR),
        query(
            EventFilter {
                event: Some("auditrail.tombstone".into()),
                text: Some("replayed".into()),
                ..Default::default()
            },
            None,
            None,
        ),
    )
    .await
    .unwrap()
    .events;
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    assert_eq!(tombstones[0].actor_id, "token admin (operator)");
}
