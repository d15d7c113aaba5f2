//! Scale-out, for real (docs/scaling.md): two auditrail nodes, each with its
//! own spool, seq and chain, feeding a ClickHouse cluster of two replicas of
//! one shard (Debian's ClickHouse 18.16 and ZooKeeper 3.8, started by
//! scripts/clickhouse-cluster), with the tables the page shows.
//!
//! Under load from OTLP clients spread over both nodes, one ClickHouse
//! replica is killed with SIGKILL and started again, then one auditrail
//! node; at the end the Distributed table holds every event any node
//! acknowledged, exactly once per `(node, seq)`, each node's seqs without a
//! gap. A client retry that lands on the other node is kept by both, and
//! the page's one-row-per-`event_id` queries show it once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditrail_tests::clickhouse::{count, num, query, select, sink};
use auditrail_tests::cluster::{sql_blocks, Cluster, ClusterDatabase};
use auditrail_tests::load::batch;
use auditrail_tests::{eventually_within, Server};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;

const NODES: [&str; 2] = ["node-a", "node-b"];
/// gRPC clients per node, and the pause between one's requests: a load
/// both nodes take on two shared cores while the cluster catches up.
const CLIENTS_PER_NODE: usize = 2;
const RECORDS_PER_REQUEST: usize = 64;
const PAUSE: Duration = Duration::from_millis(15);

/// Node `i`'s config: its own id and spool, its sink on replica `i + 1`'s
/// local replicated table, as docs/scaling.md points them.
fn node_config(
    i: usize,
    url: &str,
    database: &str,
    spool: &std::path::Path,
) -> impl Fn(u16, u16, u16) -> String {
    let sink = sink("warehouse", url, database)
        .set("table", "\"audit_events\"")
        .set("create_table", "false")
        // Small batches: many blocks for the replicas to deduplicate.
        .delivery("max_events", "2000")
        .delivery("linger", "\"100ms\"")
        // Back within a second of the replica's return.
        .delivery("backoff_max", "\"1s\"")
        .to_string();
    let node = NODES[i];
    let spool = spool.display().to_string();
    move |grpc, http, admin| {
        format!(
            "[node]\nid = \"{node}\"\n\n[receiver]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nhttp_addr = \"127.0.0.1:{http}\"\n\n\
             [admin]\naddr = \"127.0.0.1:{admin}\"\nrecord_requests = false\n\n[spool]\ndir = \"{spool}\"\n\n{sink}"
        )
    }
}

/// What the clients of one node saw acknowledged.
type Acked = Arc<Mutex<HashSet<String>>>;

/// A gRPC client of `grpc_url` sending requests of fresh ids until `stop`,
/// through the node's restarts: a failed request is not acknowledged (and
/// not sent again), a refused connection is tried again.
async fn client(grpc_url: String, prefix: String, n: usize, acked: Acked, stop: Arc<AtomicBool>) {
    let mut request = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut grpc) = LogsServiceClient::connect(grpc_url.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let (ids, body) = batch(&prefix, n, request, RECORDS_PER_REQUEST);
            request += 1;
            match grpc.export(body).await {
                Ok(_) => acked.lock().unwrap().extend(ids),
                Err(_) => break, // the node went away: connect again
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
}

/// One OTLP request of one record with `uid` to `server`; panics unless it
/// is acknowledged.
async fn send_uid(server: &Server, uid: &str) {
    let (_, mut body) = batch("cross", 0, 0, 1);
    let attributes = &mut body.resource_logs[0].scope_logs[0].log_records[0].attributes;
    attributes[0].value = Some(auditrail_tests::otlp::string(uid));
    LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connect")
        .export(body)
        .await
        .unwrap_or_else(|e| panic!("{uid} to {}: {e}", server.grpc_url()));
}

/// Waits until `server`'s sink has confirmed every event of its spool.
async fn delivered(server: &Server, within: Duration) {
    eventually_within(within, "the sink to confirm every stored event", || async {
        let last = server.metric("auditrail_spool_last_seq").await;
        let cursor = server
            .metric("auditrail_sink_cursor{sink=\"warehouse\"}")
            .await;
        last > 0.0 && cursor == last
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_feed_a_replicated_cluster_through_faults() {
    let started = Instant::now();
    let cluster = Cluster::start();
    let database = ClusterDatabase::create(&cluster).await;
    let db = database.name().to_owned();
    let dist = format!("{db}.audit_events_all");

    let deduplicated_before = deduplicated_blocks(&cluster, 2).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes: Vec<Server> = (0..2)
        .map(|i| {
            let spool = dirs[i].path().join("spool");
            let config = node_config(i, cluster.url(i + 1), &db, &spool);
            Server::start_config(dirs[i].path(), &spool, &[], config)
                .unwrap_or_else(|log| panic!("{} did not start:\n{log}", NODES[i]))
        })
        .collect();

    // Load, spread over both nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: [Acked; 2] = Default::default();
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for n in 0..CLIENTS_PER_NODE {
            clients.push(tokio::spawn(client(
                node.grpc_url(),
                format!("{}-", NODES[i]),
                n,
                acked[i].clone(),
                stop.clone(),
            )));
        }
    }
    let acked_now = |i: usize| acked[i].lock().unwrap().len();

    // The faults, during the load. Replica 1 (node-a's) dies and comes back:
    // node-a keeps acknowledging into its spool meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.kill9(1);
    let before_down = acked_now(0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        acked_now(0) > before_down,
        "node-a stopped acknowledging while its replica was down"
    );
    cluster.restart(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // node-b dies in the middle of delivering and comes back on its spool.
    nodes[1].kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes[1].restart();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acked: Vec<HashSet<String>> = acked.iter().map(|a| a.lock().unwrap().clone()).collect();
    eprintln!(
        "acknowledged: node-a {}, node-b {} ({:?} into the test)",
        acked[0].len(),
        acked[1].len(),
        started.elapsed()
    );

    // A client retry that lands on the other node: kept by both.
    let uid = format!("cross-node-retry-{db}");
    send_uid(&nodes[0], &uid).await;
    send_uid(&nodes[1], &uid).await;

    for node in &nodes {
        delivered(node, Duration::from_secs(60)).await;
    }
    // Both replicas have every part (the killed one fetched what it missed).
    for n in 1..=2 {
        query(
            cluster.url(n),
            &format!("SYSTEM SYNC REPLICA {db}.audit_events"),
        )
        .await;
    }
    let per_replica: Vec<u64> = replica_counts(&cluster, &db).await;
    assert_eq!(
        per_replica[0], per_replica[1],
        "the replicas hold different (node, seq) sets after SYNC REPLICA"
    );

    // Exactly once per (node, seq), with docs/scaling.md's own query.
    let blocks = sql_blocks("docs/scaling.md");
    let docs_query = |marker: &str| {
        let block = blocks
            .iter()
            .find(|b| b.starts_with(marker))
            .unwrap_or_else(|| panic!("docs/scaling.md has no ```sql block `{marker}`"));
        database.localize(block)
    };
    let per_node = select(
        cluster.url(1),
        &docs_query("-- exactly once per (node, seq)"),
    )
    .await;
    assert_eq!(per_node.len(), 2, "{per_node:?}");
    let raw = count(cluster.url(1), &format!("SELECT count() FROM {dist}")).await;
    for (i, row) in per_node.iter().enumerate() {
        let node = &nodes[i];
        assert_eq!(row["node"], NODES[i]);
        let (rows, seqs, first, last) = (
            num(&row["rows"]),
            num(&row["seqs"]),
            num(&row["first"]),
            num(&row["last"]),
        );
        let spool_last = node.metric("auditrail_spool_last_seq").await as u64;
        assert_eq!(
            (rows, seqs, first, last),
            (spool_last, spool_last, 1, spool_last),
            "{}: rows, distinct seqs, first and last seq in the table: each seq of the spool once, no gap",
            NODES[i]
        );
        // No seq names two events.
        let mixed = count(
            cluster.url(1),
            &format!(
                "SELECT count() FROM (SELECT seq FROM {dist} WHERE node = '{}' GROUP BY seq HAVING uniqExact(event_id) > 1)",
                NODES[i]
            ),
        )
        .await;
        assert_eq!(mixed, 0, "{}: seqs with two event ids", NODES[i]);
        // Every acknowledged event is there.
        let stored: HashSet<String> = query(
            cluster.url(2),
            &format!(
                "SELECT DISTINCT event_id FROM {dist} WHERE node = '{}'",
                NODES[i]
            ),
        )
        .await
        .lines()
        .map(str::to_owned)
        .collect();
        let missing: Vec<_> = acked[i].difference(&stored).take(5).collect();
        assert!(
            missing.is_empty(),
            "{}: acknowledged events missing from the cluster, e.g. {missing:?}",
            NODES[i]
        );
    }
    let collapsed: u64 = per_node.iter().map(|r| num(&r["rows"])).sum();
    eprintln!(
        "rows: {collapsed} after FINAL, {raw} before (resends not yet merged: {}); \
         blocks dropped as resends: replica 1 {} (since its restart), replica 2 {}",
        raw - collapsed,
        deduplicated_blocks(&cluster, 1).await,
        deduplicated_blocks(&cluster, 2).await - deduplicated_before
    );

    // The retry on the other node: one row on each node...
    let copies = select(
        cluster.url(1),
        &format!("SELECT node FROM {dist} FINAL WHERE event_id = '{uid}' ORDER BY node"),
    )
    .await;
    let copies: Vec<&str> = copies.iter().map(|r| r["node"].as_str().unwrap()).collect();
    assert_eq!(copies, NODES, "the cross-node retry, by node");
    // ...and once in each of the page's one-row-per-event_id queries.
    let events = acked[0].len() + acked[1].len() + 1;
    for marker in [
        "-- one row per event_id: the copy received first",
        "-- one row per event_id: by aggregation",
    ] {
        let sql = docs_query(marker);
        let shown = select(
            cluster.url(2),
            &format!("SELECT node FROM ({sql}) WHERE event_id = '{uid}'"),
        )
        .await;
        assert_eq!(shown.len(), 1, "{marker}: {shown:?}");
        assert_eq!(shown[0]["node"], "node-a", "{marker}: the first copy");
        let (rows, ids) = {
            let r = &select(
                cluster.url(2),
                &format!("SELECT count() AS rows, uniqExact(event_id) AS ids FROM ({sql})"),
            )
            .await[0];
            (num(&r["rows"]), num(&r["ids"]))
        };
        assert_eq!(rows, ids, "{marker}: one row per event_id");
        assert!(
            rows as usize >= events,
            "{marker}: {rows} rows for {events} acknowledged ids"
        );
    }
    eprintln!("done in {:?}", started.elapsed());
}

/// `uniqExact((node, seq))` of each replica's local table.
async fn replica_counts(cluster: &Cluster, db: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for n in 1..=2 {
        counts.push(
            count(
                cluster.url(n),
                &format!("SELECT uniqExact(node, seq) FROM {db}.audit_events"),
            )
            .await,
        );
    }
    counts
}

/// Inserted blocks replica `n` dropped as copies of a block the table
/// holds (ProfileEvent `DuplicatedInsertedBlocks`, counted since the server
/// started; the servers are shared, so only a difference says something).
async fn deduplicated_blocks(cluster: &Cluster, n: usize) -> u64 {
    count(
        cluster.url(n),
        "SELECT sum(value) FROM system.events WHERE event = 'DuplicatedInsertedBlocks'",
    )
    .await
}
