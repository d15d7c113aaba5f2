//! All at once: one config sends the same stream to MySQL, ClickHouse,
//! rsyslog, a webhook receiver and NATS. Stopping any one far side holds
//! back only its own sink: while it is down the other four deliver every
//! new event, and once it is back it catches up. At the end each far side
//! holds every event (MySQL, ClickHouse and NATS exactly once; syslog and
//! the webhook at least once).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditrail_tests::clickhouse::{self, Chdb};
use auditrail_tests::mysql::{self, PrivateMariaDb, SinkToml};
use auditrail_tests::nats::{stream_messages, NatsServer};
use auditrail_tests::rsyslog::{Listener, Rsyslog};
use auditrail_tests::sinks::{client, send_batch, sink_status, wait_caught_up};
use auditrail_tests::{free_port, Server};

/// The first byte of the span ids of this file's events.
const SPAN: u8 = 0xa1;
/// How long a sink may take to catch up on a loaded two-core machine.
const WITHIN: Duration = Duration::from_secs(90);
const SINKS: [&str; 5] = ["warehouse", "analytics", "siem", "hook", "bus"];

fn delivery(sink: SinkToml) -> SinkToml {
    sink.delivery("linger", "\"20ms\"")
        .delivery("backoff_initial", "\"50ms\"")
        .delivery("backoff_max", "\"500ms\"")
        .delivery("timeout", "\"5s\"")
}

/// A webhook receiver that takes every batch and notes its event ids; in
/// a runtime of its own, so that stopping it refuses connections.
struct Hook {
    addr: SocketAddr,
    ids: Arc<Mutex<HashSet<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Hook {
    fn start() -> Hook {
        let mut hook = Hook {
            addr: ([127, 0, 0, 1], free_port()).into(),
            ids: Arc::default(),
            runtime: None,
        };
        hook.resume();
        hook
    }

    fn resume(&mut self) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ids = self.ids.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| async move {
                let mut ids = ids.lock().unwrap();
                for line in body.lines() {
                    let event: serde_json::Value = serde_json::from_str(line).unwrap();
                    ids.insert(event["event_id"].as_str().unwrap().to_owned());
                }
                "ok"
            }),
        );
        let listener = {
            let _inside = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(self.addr).unwrap();
            socket.listen(1024).unwrap()
        };
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        self.runtime = Some(runtime);
    }

    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_far_side_down_holds_back_only_its_own_sink() {
    let mut mariadb = PrivateMariaDb::start().await;
    let warehouse = mysql::Database::create_on(&mariadb.server_url()).await;
    let mut chdb = Chdb::start();
    let analytics = clickhouse::Database::create(&chdb.url()).await;
    let mut rsyslog = Rsyslog::start(Listener::Tcp);
    let mut hook = Hook::start();
    let mut nats = NatsServer::start(None);

    let config = [
        delivery(SinkToml::new("warehouse", &warehouse.url())).to_string(),
        delivery(clickhouse::sink(
            "analytics",
            analytics.url(),
            analytics.name(),
        ))
        .to_string(),
        delivery(SinkToml::of_type("syslog", "siem", &rsyslog.url()).set("format", "\"json\""))
            .to_string(),
        delivery(
            SinkToml::of_type("webhook", "hook", &format!("http://{}/hook", hook.addr))
                .set("secret_env", "\"ALL_SINKS_HOOK_SECRET\""),
        )
        .to_string(),
        delivery(SinkToml::of_type("nats", "bus", &nats.url()).set("stream", "\"AUDIT\""))
            .to_string(),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in_env(
        dir.path(),
        "",
        &config,
        &[("ALL_SINKS_HOOK_SECRET", "all-sinks-secret")],
    );
    let mut grpc = client(&server).await;
    let mut sent = std::collections::HashMap::new();
    let mut total = send_batch(&mut grpc, &mut sent, SPAN, "all", 5).await;
    for sink in SINKS {
        wait_caught_up(&server, sink, total, WITHIN).await;
    }

    for down in SINKS {
        match down {
            "warehouse" => mariadb.stop().await,
            "analytics" => chdb.kill9(),
            "siem" => rsyslog.stop(),
            "hook" => hook.stop(),
            _ => nats.stop(),
        }
        total = send_batch(&mut grpc, &mut sent, SPAN, &format!("{down}-down"), 5).await;
        for sink in SINKS.iter().filter(|s| **s != down) {
            wait_caught_up(&server, sink, total, WITHIN).await;
        }
        let (_, status) = sink_status(&server, down).await;
        assert!(
            status["cursor"].as_u64() < Some(total as u64),
            "{down}'s far side is down, yet its sink delivered everything: {status}"
        );
        match down {
            "warehouse" => mariadb.restart().await,
            "analytics" => chdb.restart(),
            "siem" => rsyslog.resume(),
            "hook" => hook.resume(),
            _ => nats.restart(),
        }
        wait_caught_up(&server, down, total, WITHIN).await;
    }

    let ids: HashSet<String> = sent.keys().cloned().collect();
    assert_eq!(
        warehouse.count("audit_events").await,
        total as i64,
        "MySQL: each once"
    );
    assert_eq!(
        analytics.count("audit_events", "FINAL").await,
        total as u64,
        "ClickHouse: each once"
    );
    let messages = stream_messages(&nats.url(), "AUDIT").await;
    assert_eq!(messages.len(), total, "NATS: each once");
    let in_syslog: HashSet<String> = rsyslog
        .raw_lines()
        .iter()
        .filter_map(|line| {
            let json = &line[line.find('{')?..];
            let event: serde_json::Value = serde_json::from_str(json).ok()?;
            Some(event["event_id"].as_str()?.to_owned())
        })
        .collect();
    assert!(
        ids.is_subset(&in_syslog),
        "syslog: every event, at least once"
    );
    assert!(
        ids.is_subset(&hook.ids.lock().unwrap()),
        "webhook: every event, at least once"
    );
}
