//! Detection rules, silence alarms, tombstones and operator actions, end to
//! end: the real `auditrail serve`, events sent over OTLP/gRPC, and what
//! the trail then holds, read back through the admin API. The alert
//! webhook's far side runs inside the test (it is the user's own service).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditrail_tests::otlp::{attr, record, request, string};
use auditrail_tests::sinks::{client, next_trace_id, Client};
use auditrail_tests::{cli, eventually_within, Server, Setup};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

/// What the alert webhook received.
type Posts = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver on a free port: answers `status` to every POST and
/// keeps the bodies. Returns its URL.
async fn webhook(status: StatusCode) -> (String, Posts) {
    // `/hook` answers `status`; `/refuse` always 400.
    let posts = Posts::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(posts): State<Posts>, Json(body): Json<Value>| async move {
                    posts.lock().unwrap().push(body);
                    status
                },
            ),
        )
        // A far side that refuses whatever it is sent.
        .route(
            "/refuse",
            axum::routing::post(|_body: axum::body::Bytes| async { StatusCode::BAD_REQUEST }),
        )
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posts)
}

async fn send_event(
    client: &mut Client,
    service: &str,
    uid: &str,
    name: &str,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) {
    let mut r = record(uid, next_trace_id().0, [0xde; 8], "body", attributes);
    r.event_name = name.into();
    let response = client
        .export(request(service, vec![r]))
        .await
        .expect("export is acknowledged")
        .into_inner();
    assert!(response.partial_success.is_none(), "{response:?}");
}

fn actor(id: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    attr("user.id", string(id))
}

fn attrs(event: &Value) -> Value {
    event["attributes"]
        .as_str()
        .map(|text| serde_json::from_str(text).expect("attributes are JSON"))
        .unwrap_or_else(|| event["attributes"].clone())
}

async fn events_named(server: &Server, name: &str) -> Vec<Value> {
    server.events(&format!("event={name}&limit=1000")).await
}

const RULES: &str = r#"
[[detection.rules]]
name = "image-delete-burst"
event = "image.delete"
group_by = "actor"
threshold = 3
window = "1m"

[[detection.rules]]
name = "history-cleared"
event = "history.clear"
threshold = 0
window = "1m"
"#;

/// A burst over the threshold fires once per key, an event under it never,
/// `threshold = 0` fires on the first event; each alert is an event in the
/// trail, with the rule, key, count, window and the triggering ids, and a
/// POST to the webhook. A restart reads the window back and neither stores
/// nor posts an alert twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_exactly_when_over_their_threshold_and_once_per_burst() {
    let (url, posts) = webhook(StatusCode::OK).await;
    let tables = format!("[detection]\nwebhook_url = \"{url}\"\n{RULES}");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "", &tables);
    let mut c = client(&server).await;

    // alice: 3 deletes, at the threshold: nothing.
    for i in 0..3 {
        send_event(
            &mut c,
            "imagegen-ui",
            &format!("a-{i}"),
            "image.delete",
            vec![actor("alice")],
        )
        .await;
    }
    // Other events of alice's do not count.
    send_event(
        &mut c,
        "imagegen-ui",
        "a-gen",
        "image.generate",
        vec![actor("alice")],
    )
    .await;
    // bob: 5 deletes: one alert, at the 4th.
    for i in 0..5 {
        send_event(
            &mut c,
            "imagegen-ui",
            &format!("b-{i}"),
            "image.delete",
            vec![actor("bob")],
        )
        .await;
    }
    send_event(
        &mut c,
        "dify-api",
        "h-1",
        "history.clear",
        vec![actor("carol")],
    )
    .await;

    eventually_within(
        Duration::from_secs(20),
        "two alerts stored and posted",
        || async {
            events_named(&server, "auditrail.alert").await.len() == 2
                && posts.lock().unwrap().len() == 2
        },
    )
    .await;
    // Time for a wrong third one to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = events_named(&server, "auditrail.alert").await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let bob = alerts
        .iter()
        .find(|a| attrs(a)["auditrail.rule"] == "image-delete-burst")
        .expect("bob's burst");
    let a = attrs(bob);
    assert_eq!(a["auditrail.key"], "bob");
    assert_eq!(a["auditrail.group_by"], "actor");
    assert_eq!(a["auditrail.count"], 4);
    assert_eq!(a["auditrail.threshold"], 3);
    assert_eq!(a["auditrail.window"], "1m");
    assert_eq!(
        a["auditrail.triggering_event_ids"],
        serde_json::json!(["b-0", "b-1", "b-2", "b-3"])
    );
    assert_eq!(bob["service_name"], "auditrail");
    assert_eq!(bob["severity_text"], "WARN");
    let history = alerts
        .iter()
        .find(|a| attrs(a)["auditrail.rule"] == "history-cleared")
        .expect("history.clear fires at once");
    assert_eq!(
        attrs(history)["auditrail.triggering_event_ids"],
        serde_json::json!(["h-1"])
    );
    {
        let posts = posts.lock().unwrap();
        let rules: Vec<&Value> = posts
            .iter()
            .map(|p| &p["attributes"]["auditrail.rule"])
            .collect();
        assert!(
            rules.contains(&&Value::from("image-delete-burst")),
            "{posts:#?}"
        );
        assert!(
            rules.contains(&&Value::from("history-cleared")),
            "{posts:#?}"
        );
        assert!(posts
            .iter()
            .all(|p| p["event_name"] == "auditrail.alert" && p["seq"].as_u64() > Some(0)));
    }
    let fired = server
        .metric("auditrail_alerts_fired_total{rule=\"image-delete-burst\"}")
        .await;
    assert_eq!(fired, 1.0);

    // A restart reads the last windows back: the same alerts fire again,
    // and are neither stored nor posted twice.
    server.terminate();
    server.restart();
    let mut c = client(&server).await;
    send_event(
        &mut c,
        "imagegen-ui",
        "after-restart",
        "image.generate",
        vec![actor("dave")],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events_named(&server, "auditrail.alert").await.len(), 2);
    assert_eq!(posts.lock().unwrap().len(), 2);

    // bob's window still holds his 5 deletes: one more is the same burst.
    send_event(
        &mut c,
        "imagegen-ui",
        "b-5",
        "image.delete",
        vec![actor("bob")],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events_named(&server, "auditrail.alert").await.len(), 2);
}

/// A declared service that sends nothing for longer than its max silence
/// raises `auditrail.silence` and the gauge; its next event raises the
/// recovery. A service that keeps sending raises nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_service_raises_a_silence_and_recovers() {
    let tables = r#"
[[silence]]
service = "uploader"
max_silence = "3s"

[[silence]]
service = "chatty"
max_silence = "1h"
"#;
    let server = Server::start_with("", tables);
    let mut c = client(&server).await;
    send_event(&mut c, "uploader", "u-1", "file.upload", vec![actor("svc")]).await;
    send_event(&mut c, "chatty", "c-1", "chat", vec![actor("svc")]).await;
    assert_eq!(
        server
            .metric("auditrail_service_silent{service=\"uploader\"}")
            .await,
        0.0
    );

    eventually_within(
        Duration::from_secs(15),
        "the uploader's silence",
        || async { !events_named(&server, "auditrail.silence").await.is_empty() },
    )
    .await;
    let silences = events_named(&server, "auditrail.silence").await;
    assert_eq!(silences.len(), 1, "{silences:#?}");
    let a = attrs(&silences[0]);
    assert_eq!(a["auditrail.service"], "uploader");
    assert_eq!(a["auditrail.max_silence"], "3s");
    assert_eq!(silences[0]["outcome"], "failure");
    assert_eq!(
        server
            .metric("auditrail_service_silent{service=\"uploader\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("auditrail_service_silent{service=\"chatty\"}")
            .await,
        0.0
    );

    send_event(&mut c, "uploader", "u-2", "file.upload", vec![actor("svc")]).await;
    eventually_within(
        Duration::from_secs(10),
        "the uploader's recovery",
        || async {
            !events_named(&server, "auditrail.silence.recovered")
                .await
                .is_empty()
        },
    )
    .await;
    let recovered = events_named(&server, "auditrail.silence.recovered").await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(attrs(&recovered[0])["auditrail.service"], "uploader");
    assert!(attrs(&recovered[0])["auditrail.silent_seconds"].as_u64() >= Some(3));
    assert_eq!(
        server
            .metric("auditrail_service_silent{service=\"uploader\"}")
            .await,
        0.0
    );
    // Only the one silence: chatty never was.
    assert_eq!(events_named(&server, "auditrail.silence").await.len(), 1);
}

/// A request with a rejected record leaves a tombstone in the same append,
/// with the count and reasons; a sink that rejects events leaves one
/// tombstone per dead letter (and none for a rejected tombstone, so a sink
/// that rejects everything does not loop); a replay leaves one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_loss_leaves_a_tombstone() {
    let (url, _posts) = webhook(StatusCode::OK).await;
    let url = url.replace("/hook", "/refuse");
    let tables = format!(
        "[[sinks]]\nname = \"refuser\"\ntype = \"webhook\"\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\"\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\n"
    );
    let server = Server::start_setup(Setup {
        tables: &tables,
        env: &[("HOOK_SECRET", "whsec_detection")],
        ..Setup::default()
    });
    let mut c = client(&server).await;

    let good = record("good-1", next_trace_id().0, [1; 8], "ok", vec![]);
    let mut bad = record("bad-1", next_trace_id().0, [2; 8], "bad", vec![]);
    bad.trace_id = vec![1, 2, 3];
    let response = c
        .export(request("dify-api", vec![good, bad]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.partial_success.unwrap().rejected_log_records, 1);

    eventually_within(
        Duration::from_secs(30),
        "three dead-letter tombstones",
        || async {
            events_named(&server, "auditrail.tombstone")
                .await
                .iter()
                .filter(|t| {
                    attrs(t)["auditrail.tombstone.kind"] == serde_json::json!(["dead_lettered"])
                })
                .count()
                >= 1
        },
    )
    .await;
    let tombstones = events_named(&server, "auditrail.tombstone").await;
    let rejected: Vec<&Value> = tombstones
        .iter()
        .filter(|t| attrs(t)["auditrail.tombstone.kind"] == serde_json::json!(["rejected"]))
        .collect();
    assert_eq!(rejected.len(), 1, "{tombstones:#?}");
    let a = attrs(rejected[0]);
    assert_eq!(a["auditrail.rejected_records"], 1);
    assert_eq!(a["auditrail.stored_records"], 1);
    assert_eq!(
        a["auditrail.reasons"],
        serde_json::json!(["invalid_trace_id=1"])
    );
    assert_eq!(rejected[0]["tenant"], "default");

    // good-1 is dead-lettered: one tombstone names it. The tombstones
    // themselves are refused too, and leave none of their own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tombstones = events_named(&server, "auditrail.tombstone").await;
    let dead: Vec<Value> = tombstones
        .iter()
        .filter(|t| attrs(t)["auditrail.tombstone.kind"] == serde_json::json!(["dead_lettered"]))
        .map(attrs)
        .collect();
    let named: Vec<&str> = dead
        .iter()
        .map(|a| a["auditrail.event_id"].as_str().unwrap())
        .collect();
    assert!(named.contains(&"good-1"), "{dead:#?}");
    assert!(
        dead.iter()
            .all(|a| a["auditrail.event_name"] != "auditrail.tombstone"),
        "a tombstone of a tombstone: {dead:#?}"
    );
    assert!(dead.iter().all(|a| a["auditrail.sink"] == "refuser"));

    let (status, answer) = server
        .admin_call(
            reqwest::Method::POST,
            "/v1/dead-letters/replay?sink=refuser",
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let marked = answer["marked"].as_u64().unwrap();
    assert!(marked >= 2);
    let replays: Vec<Value> = events_named(&server, "auditrail.tombstone")
        .await
        .iter()
        .map(attrs)
        .filter(|a| a["auditrail.tombstone.kind"] == serde_json::json!(["dead_letter_replay"]))
        .collect();
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0]["auditrail.count"], marked);
    assert_eq!(replays[0]["auditrail.sink"], "refuser");
}

/// Operator actions are events: who queried what, a verify run and its
/// verdict, a changed config with its old and new hash, a rotated signing
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_are_recorded_in_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let key_a = dir.path().join("a.key");
    let key_b = dir.path().join("b.key");
    for key in [&key_a, &key_b] {
        let out = cli(&["keygen", "--out", key.to_str().unwrap(), "--name", "e2e"]);
        assert!(out.status.success(), "{out:?}");
    }
    let tables = |key: &std::path::Path| {
        format!(
            "[integrity]\nkey_file = \"{}\"\ncheckpoint_every = 5\n",
            key.display()
        )
    };
    let setup_a = tables(&key_a);
    let mut server = Server::try_start_setup(
        dir.path(),
        Setup {
            tables: &setup_a,
            admin: "record_requests = true",
            ..Setup::default()
        },
    )
    .unwrap();
    // The first start records nothing: there is no change yet.
    assert!(events_named(&server, "auditrail.config.changed")
        .await
        .is_empty());
    assert!(events_named(&server, "auditrail.key.rotated")
        .await
        .is_empty());
    let config_a = std::fs::read(dir.path().join("auditrail.toml")).unwrap();
    let first_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config_a));

    // Who asked for what. A query that does not ask for them leaves the
    // trail's records of queries out.
    let _ = server.events("actor=alice&limit=5").await;
    assert!(server.events("limit=100").await.is_empty());
    let requests = events_named(&server, "auditrail.admin.request").await;
    let asked = requests
        .iter()
        .map(attrs)
        .find(|a| a["url.query"] == "actor=alice&limit=5")
        .unwrap_or_else(|| panic!("the query is not recorded: {requests:#?}"));
    assert_eq!(asked["url.path"], "/v1/events");
    assert_eq!(asked["http.response.status_code"], 200);
    assert_eq!(asked["user.id"], "anonymous");
    assert_eq!(asked["client.address"], "127.0.0.1");

    // A verify run of the live spool, recorded with its verdict.
    let pubkey = std::fs::read_to_string(key_a.with_extension("pub")).unwrap();
    let out = cli(&[
        "verify",
        "--admin",
        &server.admin_url(),
        "--pubkey",
        pubkey.trim(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("chain intact"), "{stdout}");
    let runs = events_named(&server, "auditrail.verify").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(attrs(&runs[0])["auditrail.verify.intact"], "true");
    assert_eq!(runs[0]["outcome"], "success");

    // Restart with another config and key: both changes are recorded.
    server.terminate();
    let setup_b = format!(
        "{}\n[query]\ntrace_url = \"http://jaeger/trace/{{trace_id}}\"\n",
        tables(&key_b)
    );
    let server = Server::try_start_setup(
        dir.path(),
        Setup {
            tables: &setup_b,
            admin: "record_requests = true",
            ..Setup::default()
        },
    )
    .unwrap();
    let changes = events_named(&server, "auditrail.config.changed").await;
    assert_eq!(changes.len(), 1, "{changes:#?}");
    let change = attrs(&changes[0]);
    assert_eq!(
        change["auditrail.config.previous_sha256"],
        first_hash.as_str()
    );
    assert_ne!(change["auditrail.config.sha256"], first_hash.as_str());
    let rotations = events_named(&server, "auditrail.key.rotated").await;
    assert_eq!(rotations.len(), 1, "{rotations:#?}");
    let rotation = attrs(&rotations[0]);
    assert_eq!(rotation["auditrail.key.kind"], "signing");
    assert_eq!(rotation["auditrail.key.previous"], pubkey.trim());
    assert_ne!(rotation["auditrail.key.current"], pubkey.trim());
}
