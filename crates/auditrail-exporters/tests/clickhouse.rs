//! The ClickHouse sink against two real engines, no mocks:
//!
//! * Debian's packaged clickhouse-server 18.16, started (and installed when
//!   missing) by `scripts/clickhouse-server` on 127.0.0.1:18123;
//! * ClickHouse 26.x as chdb behind `tests/python/chdb_http.py`, ClickHouse's
//!   HTTP interface in front of the in-process engine; each test starts its
//!   own on a free port with a temporary data directory.
//!
//! Both are started by `auditrail_tests::clickhouse`, which the end-to-end
//! tests (tests/tests/clickhouse_sink.rs) share.
//!
//! A test that cannot start an engine fails with the reason; none is
//! skipped. Every test works in its own database (or its own chdb), so they
//! run in parallel.

use std::sync::Arc;
use std::time::Duration;

use auditrail_exporters::sinks::clickhouse::{ClickhouseConfig, ClickhouseSink};
use auditrail_exporters::{ErrorClass, ExportError, Exporter, SinkContext, SinkKind};
use auditrail_model::{AuditEvent, Outcome};
use auditrail_tests::clickhouse::{count, legacy_url, num, query, select, unique_name, Chdb};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Sinks and events

fn context() -> SinkContext {
    SinkContext {
        name: "warehouse".into(),
        retention: Duration::from_secs(7 * 86_400),
    }
}

/// A sink from its `[[sinks]]` keys, the way the config file builds it.
fn build(toml_text: &str) -> Arc<dyn Exporter> {
    let kind: SinkKind = toml::from_str(toml_text).expect("a valid sink config");
    assert_eq!(kind.type_name(), "clickhouse");
    kind.build(&context()).expect("the sink builds")
}

/// The sink type itself (the keys without `type`), for its `execute`.
fn concrete(toml_text: &str) -> ClickhouseSink {
    let config: ClickhouseConfig = toml::from_str(toml_text).expect("a valid sink config");
    ClickhouseSink::new(&config, &context()).expect("the sink builds")
}

/// 2026-01-01T00:00:00Z.
const BASE_NANOS: u64 = 1_767_225_600_000_000_000;

/// Realistic events of one node: trace context, attributes of every JSON
/// kind, times with nanoseconds.
fn events(node: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<AuditEvent> {
    const NAMES: [&str; 4] = [
        "image.generate",
        "user.login",
        "model_config.update",
        "history.clear",
    ];
    seqs.into_iter()
        .map(|seq| {
            let time = BASE_NANOS + seq * 1_000_000_001 + 123_456_789;
            let actor = format!("user-{}", seq % 7);
            let target = format!("s3://images/{seq}.png");
            let outcome = if seq % 5 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let attributes = json!({
                "audit.outcome": outcome.as_str(),
                "audit.target": target,
                "duration_ms": 1200 + seq,
                "gen_ai.request.model": "nano-banana",
                "ok": seq % 5 != 0,
                "prompt": format!("a cat in a \"hat\" #{seq} ✓"),
                "ratio": 0.25,
                "tags": ["portrait", "hd"],
                "user.id": actor,
            });
            AuditEvent {
                node: node.into(),
                seq,
                event_id: format!("{:032x}", u128::from(seq) * 0x9e37_79b9_7f4a_7c15),
                time_unix_nano: time,
                observed_time_unix_nano: time + 17,
                received_time_unix_nano: time + 2_000_000,
                tenant: "acme".into(),
                service_name: if seq % 2 == 0 { "image-ui" } else { "dify-api" }.into(),
                event_name: NAMES[(seq % 4) as usize].into(),
                severity_number: 9,
                severity_text: "INFO".into(),
                actor_id: actor,
                actor_name: "Ada Lovelace".into(),
                client_address: "203.0.113.7".into(),
                outcome,
                target,
                trace_id: format!("{:032x}", 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128 + u128::from(seq)),
                span_id: format!("{:016x}", 0x00f0_67aa_0ba9_02b7u64 + seq),
                trace_flags: 1,
                body: format!("generated image {seq} for \"a cat in a hat\""),
                attributes: attributes.to_string(),
                resource_attributes:
                    r#"{"deployment.environment":"prod","service.name":"image-ui","service.version":"1.4.2"}"#
                        .into(),
                scope_name: "auditrail-sdk".into(),
                prev_hash: [seq as u8; 32],
                hash: [seq.wrapping_add(1) as u8; 32],
            }
        })
        .collect()
}

/// The attributes as a ClickHouse `Map(String, String)` shows them: string
/// values as they are, others as their JSON text.
fn as_string_map(json_text: &str) -> Value {
    let object: serde_json::Map<String, Value> = serde_json::from_str(json_text).unwrap();
    Value::Object(
        object
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Value::String(text))
            })
            .collect(),
    )
}

fn assert_misconfigured(result: Result<(), ExportError>, kind: &str, needles: &[&str]) {
    let error = result.expect_err("expected a Misconfigured error");
    assert_eq!(error.class, ErrorClass::Misconfigured, "{error}");
    assert_eq!(error.kind, kind, "{error}");
    for needle in needles {
        assert!(error.message.contains(needle), "{needle:?} in: {error}");
    }
}

/// A chdb of the test's own with a fresh database: the engine (stopped
/// when dropped), its URL and the database's name.
async fn chdb_with_database() -> (Chdb, String, String) {
    let ch = Chdb::start();
    let url = ch.url();
    let db = unique_name();
    query(&url, &format!("CREATE DATABASE {db}")).await;
    (ch, url, db)
}

// ---------------------------------------------------------------------------
// Tests

/// (1) The canonical table on a modern engine: rows match field by field,
/// and a retried batch adds nothing, which with merges stopped only the
/// deduplication token can explain.
#[tokio::test(flavor = "multi_thread")]
async fn modern_auditrail_rows_match_and_a_retry_adds_none() {
    // `_ch`, not `_`: the engine must run until the test ends.
    let (_ch, url, db) = chdb_with_database().await;
    let url = url.as_str();
    let config =
        format!("type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\nttl = \"400d\"\n");
    let sink = build(&config);
    sink.prepare().await.expect("prepare creates the table");

    let created = select(
        url,
        &format!("SELECT create_table_query FROM system.tables WHERE database = '{db}' AND name = 'audit_events'"),
    )
    .await;
    let ddl = created[0]["create_table_query"]
        .as_str()
        .unwrap()
        .to_owned();
    for needle in [
        "`time` DateTime64(9, 'UTC')",
        "`attributes` Map(LowCardinality(String), String)",
        "`node` LowCardinality(String)",
        "INDEX idx_trace_id trace_id TYPE bloom_filter GRANULARITY 4",
        "INDEX idx_actor_id actor_id TYPE bloom_filter GRANULARITY 4",
        "ENGINE = ReplacingMergeTree",
        "ORDER BY (service_name, event_name, time, node, seq)",
        "TTL toDateTime(intDiv(received_time_unix_nano, 1000000000)) + toIntervalSecond(34560000)",
        "non_replicated_deduplication_window = 1000",
    ] {
        assert!(ddl.contains(needle), "{needle:?} in {ddl}");
    }
    query(url, &format!("SYSTEM STOP MERGES {db}.audit_events")).await;

    let batch = events("node-a", 1..=300);
    sink.export(&batch).await.expect("export");
    let rows = select(
        url,
        &format!(
            "SELECT *, toUnixTimestamp64Nano(time) AS time_ns FROM {db}.audit_events ORDER BY seq"
        ),
    )
    .await;
    assert_eq!(rows.len(), batch.len());
    assert_eq!(rows[0]["time"], "2026-01-01 00:00:01.123456790");
    for (row, e) in rows.iter().zip(&batch) {
        assert_eq!(row["node"], e.node.as_str());
        assert_eq!(num(&row["seq"]), e.seq);
        assert_eq!(row["event_id"], e.event_id.as_str());
        let time = row["time"].as_str().unwrap();
        assert_eq!(
            time.split_once('.').map(|(_, f)| f.len()),
            Some(9),
            "{time}"
        );
        assert_eq!(
            num(&row["time_ns"]),
            e.time_unix_nano,
            "time keeps its nanoseconds"
        );
        assert_eq!(num(&row["time_unix_nano"]), e.time_unix_nano);
        assert_eq!(
            num(&row["observed_time_unix_nano"]),
            e.observed_time_unix_nano
        );
        assert_eq!(
            num(&row["received_time_unix_nano"]),
            e.received_time_unix_nano
        );
        assert_eq!(row["tenant"], e.tenant.as_str());
        assert_eq!(row["service_name"], e.service_name.as_str());
        assert_eq!(row["event_name"], e.event_name.as_str());
        assert_eq!(row["severity_number"], e.severity_number);
        assert_eq!(row["severity_text"], e.severity_text.as_str());
        assert_eq!(row["actor_id"], e.actor_id.as_str());
        assert_eq!(row["actor_name"], e.actor_name.as_str());
        assert_eq!(row["client_address"], e.client_address.as_str());
        assert_eq!(row["outcome"], e.outcome.as_str());
        assert_eq!(row["target"], e.target.as_str());
        assert_eq!(row["trace_id"], e.trace_id.as_str());
        assert_eq!(row["span_id"], e.span_id.as_str());
        assert_eq!(row["trace_flags"], e.trace_flags);
        assert_eq!(row["body"], e.body.as_str());
        assert_eq!(row["attributes"], as_string_map(&e.attributes));
        assert_eq!(
            row["resource_attributes"],
            as_string_map(&e.resource_attributes)
        );
        assert_eq!(row["scope_name"], e.scope_name.as_str());
        assert_eq!(row["prev_hash"], hex::encode(e.prev_hash));
        assert_eq!(row["hash"], hex::encode(e.hash));
    }
    assert_eq!(rows[2]["attributes"]["duration_ms"], "1203");
    assert_eq!(rows[2]["attributes"]["tags"], r#"["portrait","hd"]"#);
    assert_eq!(rows[4]["attributes"]["ok"], "false");

    // The retry: merges are stopped, so no collapsing can hide a duplicate.
    sink.export(&batch).await.expect("retry");
    let plain_count = format!("SELECT count() FROM {db}.audit_events");
    assert_eq!(
        count(url, &plain_count).await,
        300,
        "a retry must add no rows"
    );
    // ClickHouse also drops a block whose bytes it has seen; a re-send of
    // the same events in other bytes (another encoding after an upgrade, a
    // changed field) is caught by the token alone, which names the set.
    let mut respelled = batch.clone();
    respelled[0].body = "the same events, other bytes".into();
    sink.export(&respelled)
        .await
        .expect("re-send in other bytes");
    assert_eq!(count(url, &plain_count).await, 300, "the token dropped it");
    let first = select(
        url,
        &format!("SELECT body FROM {db}.audit_events WHERE seq = 1"),
    )
    .await;
    assert_eq!(first[0]["body"], batch[0].body.as_str());

    // New events still go in; a restarted sink retrying the first batch
    // (same token) adds nothing either.
    sink.export(&events("node-a", 301..=310))
        .await
        .expect("next batch");
    let restarted = build(&config);
    restarted
        .prepare()
        .await
        .expect("our own table passes the shape check");
    restarted.export(&batch).await.expect("retry after restart");
    assert_eq!(count(url, &plain_count).await, 310);
    assert_eq!(
        count(
            url,
            &format!("SELECT uniqExact(node, seq) FROM {db}.audit_events")
        )
        .await,
        310
    );
}

/// (2) The OTel schema: rows land in an `otel_logs` table as the Collector's
/// exporter creates it, and in one made by an older Collector.
#[tokio::test(flavor = "multi_thread")]
async fn otel_schema_fills_otel_logs_tables() {
    // `_ch`, not `_`: the engine must run until the test ends.
    let (_ch, url, db) = chdb_with_database().await;
    let url = url.as_str();
    let sink = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\ntable = \"otel_logs\"\nschema = \"otel\"\ncompression = \"none\"\n"
    ));
    sink.prepare().await.expect("prepare creates otel_logs");
    let types: Vec<(String, String)> = select(
        url,
        &format!(
            "SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'otel_logs'"
        ),
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r["name"].as_str().unwrap().into(),
            r["type"].as_str().unwrap().into(),
        )
    })
    .collect();
    for (name, ty) in [
        ("Timestamp", "DateTime64(9)"),
        ("TimestampTime", "DateTime"),
        ("TraceFlags", "UInt8"),
        ("SeverityNumber", "UInt8"),
        ("ResourceAttributes", "Map(LowCardinality(String), String)"),
        ("LogAttributes", "Map(LowCardinality(String), String)"),
        ("EventName", "String"),
    ] {
        assert!(
            types.contains(&(name.into(), ty.into())),
            "{name} {ty} in {types:?}"
        );
    }

    let batch = events("node-b", 1..=120);
    sink.export(&batch).await.expect("export");
    sink.export(&batch).await.expect("retry");
    let rows = select(
        url,
        &format!(
            "SELECT toUnixTimestamp64Nano(Timestamp) AS ns, toString(Timestamp) AS ts, toUnixTimestamp(TimestampTime) AS secs, \
             TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber, ServiceName, Body, ResourceAttributes, \
             ScopeName, LogAttributes, EventName \
             FROM {db}.otel_logs ORDER BY toUInt64(LogAttributes['auditrail.seq'])"
        ),
    )
    .await;
    assert_eq!(
        rows.len(),
        batch.len(),
        "one row per event, the retry included"
    );
    assert_eq!(rows[0]["ts"], "2026-01-01 00:00:01.123456790");
    for (row, e) in rows.iter().zip(&batch) {
        assert_eq!(num(&row["ns"]), e.time_unix_nano);
        assert_eq!(num(&row["secs"]), e.time_unix_nano / 1_000_000_000);
        assert_eq!(row["TraceId"], e.trace_id.as_str());
        assert_eq!(row["SpanId"], e.span_id.as_str());
        assert_eq!(row["TraceFlags"], 1);
        assert_eq!(row["SeverityText"], "INFO");
        assert_eq!(row["SeverityNumber"], 9);
        assert_eq!(row["ServiceName"], e.service_name.as_str());
        assert_eq!(row["Body"], e.body.as_str());
        assert_eq!(row["ScopeName"], "auditrail-sdk");
        assert_eq!(row["EventName"], e.event_name.as_str());
        assert_eq!(
            row["ResourceAttributes"],
            as_string_map(&e.resource_attributes)
        );
        let mut expected = as_string_map(&e.attributes);
        let extra = expected.as_object_mut().unwrap();
        extra.insert("auditrail.node".into(), json!(e.node));
        extra.insert("auditrail.seq".into(), json!(e.seq.to_string()));
        extra.insert("auditrail.event_id".into(), json!(e.event_id));
        extra.insert("auditrail.tenant".into(), json!(e.tenant));
        assert_eq!(row["LogAttributes"], expected);
    }

    // A table made by an early Collector version: wider ints, no scope
    // columns, no EventName, no deduplication window. It must exist, and
    // is written as it is.
    query(
        url,
        &format!(
            "CREATE TABLE {db}.old_logs (
                Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
                TraceId String CODEC(ZSTD(1)),
                SpanId String CODEC(ZSTD(1)),
                TraceFlags UInt32 CODEC(ZSTD(1)),
                SeverityText LowCardinality(String) CODEC(ZSTD(1)),
                SeverityNumber Int32 CODEC(ZSTD(1)),
                ServiceName LowCardinality(String) CODEC(ZSTD(1)),
                Body String CODEC(ZSTD(1)),
                ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
                LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
                INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1
            ) ENGINE MergeTree()
            PARTITION BY toDate(Timestamp)
            ORDER BY (ServiceName, SeverityText, toUnixTimestamp(Timestamp), TraceId)
            SETTINGS index_granularity=8192, ttl_only_drop_parts = 1"
        ),
    )
    .await;
    let old = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\ntable = \"old_logs\"\nschema = \"otel\"\ncreate_table = false\n"
    ));
    old.prepare()
        .await
        .expect("an older Collector table is accepted");
    old.export(&batch[..10])
        .await
        .expect("export into the old table");
    let rows = select(
        url,
        &format!("SELECT TraceFlags, SeverityNumber, LogAttributes['auditrail.seq'] AS seq FROM {db}.old_logs ORDER BY toUInt64(seq)"),
    )
    .await;
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0]["SeverityNumber"], 9);
    assert_eq!(rows[9]["seq"], "10");
}

/// (3) Debian's 18.16: the legacy mapping, gzip and plain bodies, and a
/// retry that leaves one row per (node, seq) once ReplacingMergeTree has
/// collapsed it.
#[tokio::test(flavor = "multi_thread")]
async fn legacy_server_gets_the_legacy_mapping_and_retries_collapse() {
    let url = legacy_url();
    let version = query(url, "SELECT version()").await;
    assert!(version.starts_with("18.16"), "{version}");
    let db = unique_name();
    query(url, &format!("CREATE DATABASE {db}")).await;
    let config =
        format!("type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\nttl = \"30d\"\n");
    let sink = build(&config);
    sink.prepare()
        .await
        .expect("prepare creates the legacy table");
    let types: Vec<(String, String)> = select(
        url,
        &format!("SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'audit_events'"),
    )
    .await
    .into_iter()
    .map(|r| (r["name"].as_str().unwrap().into(), r["type"].as_str().unwrap().into()))
    .collect();
    assert_eq!(types.len(), 26);
    for (name, ty) in [
        ("time", "DateTime('UTC')"),
        ("attributes", "String"),
        ("resource_attributes", "String"),
        ("node", "String"),
        ("seq", "UInt64"),
        ("severity_number", "Int32"),
    ] {
        assert!(
            types.contains(&(name.into(), ty.into())),
            "{name} {ty} in {types:?}"
        );
    }
    let engine = select(
        url,
        &format!("SELECT engine, sorting_key FROM system.tables WHERE database = '{db}' AND name = 'audit_events'"),
    )
    .await;
    assert_eq!(engine[0]["engine"], "ReplacingMergeTree");
    assert_eq!(
        engine[0]["sorting_key"],
        "service_name, event_name, time, node, seq"
    );

    let batch = events("node-c", 1..=200);
    sink.export(&batch).await.expect("export (gzip)");
    let rows = select(
        url,
        &format!("SELECT * FROM {db}.audit_events ORDER BY seq"),
    )
    .await;
    assert_eq!(rows.len(), 200);
    assert_eq!(rows[0]["time"], "2026-01-01 00:00:01", "whole seconds");
    for (row, e) in rows.iter().zip(&batch) {
        assert_eq!(num(&row["seq"]), e.seq);
        assert_eq!(
            num(&row["time_unix_nano"]),
            e.time_unix_nano,
            "exact time kept"
        );
        assert_eq!(
            row["attributes"],
            e.attributes.as_str(),
            "canonical JSON text"
        );
        assert_eq!(row["resource_attributes"], e.resource_attributes.as_str());
        assert_eq!(row["trace_id"], e.trace_id.as_str());
        assert_eq!(row["body"], e.body.as_str());
        assert_eq!(row["hash"], hex::encode(e.hash));
    }

    // Retry: no tokens on 18.16, so the copy is collapsed by the engine.
    sink.export(&batch).await.expect("retry");
    assert_eq!(
        count(url, &format!("SELECT count() FROM {db}.audit_events FINAL")).await,
        200
    );
    query(url, &format!("OPTIMIZE TABLE {db}.audit_events FINAL")).await;
    assert_eq!(
        count(url, &format!("SELECT count() FROM {db}.audit_events")).await,
        200
    );

    // Uncompressed bodies work too.
    let plain = build(&format!("{config}compression = \"none\"\n"));
    plain.prepare().await.expect("prepare again");
    plain
        .export(&events("node-c", 201..=250))
        .await
        .expect("export (no compression)");
    assert_eq!(
        count(url, &format!("SELECT count() FROM {db}.audit_events FINAL")).await,
        250
    );

    // The otel schema needs Map and DateTime64.
    let otel = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\ntable = \"otel_logs\"\nschema = \"otel\"\n"
    ));
    assert_misconfigured(
        otel.prepare().await,
        "schema",
        &["otel schema needs ClickHouse >= 22.3", "18.16"],
    );
    query(url, &format!("DROP DATABASE {db}")).await;
}

/// (4) An existing table with another shape is reported, never altered;
/// a missing table with `create_table = false` too.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_of_another_shape_is_reported() {
    // `_ch`, not `_`: the engine must run until the test ends.
    let (_ch, url, db) = chdb_with_database().await;
    let url = url.as_str();
    query(
        url,
        &format!(
            "CREATE TABLE {db}.audit_events (node String, seq UInt64, event_id String, time DateTime64(3), \
             attributes String) ENGINE = MergeTree ORDER BY seq"
        ),
    )
    .await;
    let sink = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\n"
    ));
    assert_misconfigured(
        sink.prepare().await,
        "schema",
        &[
            "never alters",
            "column `time` is DateTime64(3) (expected DateTime64(9, 'UTC') or DateTime('UTC'))",
            "column `hash` is missing",
            "engine is MergeTree",
            "sorting key is (seq)",
        ],
    );
    let columns = count(
        url,
        &format!(
            "SELECT count() FROM system.columns WHERE database = '{db}' AND table = 'audit_events'"
        ),
    )
    .await;
    assert_eq!(columns, 5, "the table was not altered");

    let absent = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\ntable = \"absent\"\ncreate_table = false\n"
    ));
    assert_misconfigured(
        absent.prepare().await,
        "schema",
        &["`absent` does not exist and create_table = false"],
    );

    // The same on the legacy server.
    let legacy = legacy_url();
    let db = unique_name();
    query(legacy, &format!("CREATE DATABASE {db}")).await;
    query(
        legacy,
        &format!(
            "CREATE TABLE {db}.audit_events (node String, seq UInt32, time DateTime) \
             ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(time) ORDER BY (node, seq)"
        ),
    )
    .await;
    let sink = build(&format!(
        "type = \"clickhouse\"\nurl = \"{legacy}\"\ndatabase = \"{db}\"\n"
    ));
    assert_misconfigured(
        sink.prepare().await,
        "schema",
        &[
            "column `seq` is UInt32 (expected UInt64)",
            "column `time` is DateTime (expected",
        ],
    );
    query(legacy, &format!("DROP DATABASE {db}")).await;
}

/// (5) A database that does not exist, and credentials the server refuses,
/// are start-up errors naming the problem.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_database_and_bad_credentials_are_misconfigured() {
    let ch = Chdb::start();
    let modern = ch.url();
    for url in [modern.as_str(), legacy_url()] {
        let sink = build(&format!(
            "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"no_such_db_for_auditrail\"\n"
        ));
        assert_misconfigured(
            sink.prepare().await,
            "schema",
            &[
                "database `no_such_db_for_auditrail` does not exist",
                "CREATE DATABASE",
            ],
        );
    }

    // chdb_http.py has no users; the 18.16 server checks them.
    let url = legacy_url();
    let unknown = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\nuser = \"nobody_here\"\n"
    ));
    assert_misconfigured(
        unknown.prepare().await,
        "auth",
        &["code 192", "nobody_here", "check `user`"],
    );
    let var = format!("AUDITRAIL_TEST_CLICKHOUSE_PASSWORD_{}", std::process::id());
    std::env::set_var(&var, "not-the-password");
    let wrong = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\nuser = \"default\"\npassword_env = \"{var}\"\n"
    ));
    assert_misconfigured(
        wrong.prepare().await,
        "auth",
        &["code 193", "Wrong password"],
    );

    // A refused connection is not a setup error: the server may come back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let down = build(&format!(
        "type = \"clickhouse\"\nurl = \"http://127.0.0.1:{port}\"\n"
    ));
    let error = down.prepare().await.unwrap_err();
    assert_eq!(
        (error.class, error.kind),
        (ErrorClass::Retryable, "connection"),
        "{error}"
    );
}

/// (6) A row ClickHouse cannot store blames the batch (Permanent, so the
/// delivery loop splits it and dead-letters that event), on both engines.
#[tokio::test(flavor = "multi_thread")]
async fn rows_the_server_rejects_are_permanent() {
    // Modern: a time past DateTime64(9)'s range (2262) is a valid u64 of
    // nanoseconds but no storable time. RowBinary carries no text for the
    // server to refuse, so the sink refuses it, naming the event.
    let ch = Chdb::start();
    let url = ch.url();
    let url = url.as_str();
    let db = unique_name();
    query(url, &format!("CREATE DATABASE {db}")).await;
    let sink = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\n"
    ));
    sink.prepare().await.expect("prepare");
    let mut batch = events("node-d", 1..=20);
    batch[7].time_unix_nano = u64::MAX; // year 2554
    let error = sink.export(&batch).await.expect_err("the sink rejects it");
    assert_eq!(error.class, ErrorClass::Permanent, "{error}");
    assert_eq!(error.kind, "data");
    assert!(error.message.contains("node-d/8"), "{error}");
    assert!(error.message.contains("past 2262-04-11"), "{error}");
    assert_eq!(
        count(url, &format!("SELECT count() FROM {db}.audit_events")).await,
        0,
        "an insert is all or nothing"
    );
    // What the delivery loop does next: the rest goes through.
    let poison = batch.remove(7);
    sink.export(&batch[..7]).await.expect("the first half");
    sink.export(&batch[7..]).await.expect("the second half");
    assert!(sink.export(&[poison]).await.is_err());
    assert_eq!(
        count(url, &format!("SELECT count() FROM {db}.audit_events")).await,
        19
    );

    // 18.16 sends no exception-code header, and a parse error with HTTP
    // 500: the code in the body decides.
    let legacy = legacy_url();
    let db = unique_name();
    query(legacy, &format!("CREATE DATABASE {db}")).await;
    let sink = concrete(&format!("url = \"{legacy}\"\ndatabase = \"{db}\"\n"));
    sink.prepare().await.expect("prepare");
    let error = sink
        .execute(&format!(
            "INSERT INTO {db}.audit_events (seq) FORMAT JSONEachRow\n{{\"seq\":\"not a number\"}}\n"
        ))
        .await
        .expect_err("a malformed row");
    assert_eq!(error.class, ErrorClass::Permanent, "{error}");
    assert!(
        error.message.contains("code 27") || error.message.contains("code 72"),
        "{error}"
    );
    let error = sink
        .execute(&format!("INSERT INTO {db}.audit_events (severity_number) FORMAT JSONEachRow\n{{\"severity_number\":\"9x\"}}\n"))
        .await
        .expect_err("a malformed number");
    assert_eq!(error.class, ErrorClass::Permanent, "{error}");
    let error = sink
        .execute(&format!("SELECT * FROM {db}.nope"))
        .await
        .expect_err("an unknown table");
    assert_eq!(
        (error.class, error.kind),
        (ErrorClass::Misconfigured, "schema"),
        "{error}"
    );
    assert!(error.message.contains("code 60"), "{error}");

    // A table dropped under a running sink is created again.
    query(legacy, &format!("DROP TABLE {db}.audit_events")).await;
    let error = sink
        .export(&events("node-d", 1..=3))
        .await
        .expect_err("the table is gone");
    assert_eq!(error.class, ErrorClass::Misconfigured, "{error}");
    sink.export(&events("node-d", 1..=3))
        .await
        .expect("the next attempt re-creates the table");
    assert_eq!(
        count(
            legacy,
            &format!("SELECT count() FROM {db}.audit_events FINAL")
        )
        .await,
        3
    );
    query(legacy, &format!("DROP DATABASE {db}")).await;
}

/// `count` events of `node` from seq 1, `step_days` apart from 2000-01-01:
/// an honest backfill spanning more partitions than one INSERT may touch
/// (ClickHouse's `max_partitions_per_insert_block`, 100 by default).
fn spread(node: &str, count: u64, step_days: u64) -> Vec<AuditEvent> {
    const Y2000: u64 = 946_684_800_000_000_000;
    let mut batch = events(node, 1..=count);
    for e in &mut batch {
        e.time_unix_nano = Y2000 + (e.seq - 1) * step_days * 86_400_000_000_000 + e.seq;
        e.observed_time_unix_nano = e.time_unix_nano;
    }
    batch
}

/// (7) A batch whose times span more than 100 partitions (months in the
/// `auditrail` table, days in `otel_logs`) goes through, once, and a retry
/// of it adds nothing: each INSERT the sink sends touches at most 100
/// partitions and carries a token naming its own events.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spanning_more_partitions_than_an_insert_may_touch_goes_through() {
    // `_ch`, not `_`: the engine must run until the test ends.
    let (_ch, url, db) = chdb_with_database().await;
    let url = url.as_str();
    // The engine's own limit, so the test proves what it claims.
    let limit = select(
        url,
        "SELECT value FROM system.settings WHERE name = 'max_partitions_per_insert_block'",
    )
    .await;
    assert_eq!(limit[0]["value"], "100", "{limit:?}");

    for (table, schema, step_days, partitions) in [
        ("audit_events", "auditrail", 31, "uniqExact(toYYYYMM(time))"),
        ("otel_logs", "otel", 1, "uniqExact(toDate(TimestampTime))"),
    ] {
        let sink = build(&format!(
            "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\ntable = \"{table}\"\nschema = \"{schema}\"\n"
        ));
        sink.prepare().await.expect("prepare");
        query(url, &format!("SYSTEM STOP MERGES {db}.{table}")).await;
        let batch = spread("node-p", 250, step_days);
        tokio::time::timeout(Duration::from_secs(120), sink.export(&batch))
            .await
            .expect("an answer")
            .unwrap_or_else(|e| {
                panic!(
                    "{schema}: a batch over 250 partitions must go through: {e} ({:?})",
                    e.class
                )
            });
        let stats = select(
            url,
            &format!("SELECT count() AS rows, {partitions} AS partitions FROM {db}.{table}"),
        )
        .await;
        assert_eq!(num(&stats[0]["rows"]), 250, "{schema}: {stats:?}");
        assert_eq!(num(&stats[0]["partitions"]), 250, "{schema}: {stats:?}");
        sink.export(&batch).await.expect("retry");
        assert_eq!(
            count(url, &format!("SELECT count() FROM {db}.{table}")).await,
            250,
            "{schema}: a retry of the split batch adds nothing"
        );
    }
}

/// (8) The same backfill on 18.16, whose monthly partitions the legacy
/// table uses.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spanning_many_months_goes_through_on_the_legacy_server() {
    let url = legacy_url();
    let db = unique_name();
    query(url, &format!("CREATE DATABASE {db}")).await;
    let sink = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\n"
    ));
    sink.prepare().await.expect("prepare");
    let batch = spread("node-p", 250, 31);
    sink.export(&batch)
        .await
        .unwrap_or_else(|e| panic!("a batch over 250 months must go through: {e}"));
    let stats = select(
        url,
        &format!(
            "SELECT count() AS rows, uniqExact(toYYYYMM(time)) AS partitions FROM {db}.audit_events FINAL"
        ),
    )
    .await;
    assert_eq!(num(&stats[0]["rows"]), 250, "{stats:?}");
    assert_eq!(num(&stats[0]["partitions"]), 250, "{stats:?}");
    query(url, &format!("DROP DATABASE {db}")).await;
}

/// (9) `ttl` counts from when auditrail received an event, as the spool's
/// retention does: an event its sender stamped a year ago, received today,
/// outlives a 30-day TTL's merge; one received 40 days ago does not. The
/// otel table has no receive time, so `ttl` is refused there.
#[tokio::test(flavor = "multi_thread")]
async fn ttl_counts_from_receive_time() {
    // `_ch`, not `_`: the engine must run until the test ends.
    let (_ch, url, db) = chdb_with_database().await;
    let url = url.as_str();
    let sink = build(&format!(
        "type = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{db}\"\nttl = \"30d\"\n"
    ));
    sink.prepare().await.expect("prepare");
    const DAY: u64 = 86_400_000_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut batch = events("node-t", 1..=2);
    // Stamped a year ago by its sender, received now: kept.
    batch[0].time_unix_nano = now - 365 * DAY;
    batch[0].received_time_unix_nano = now;
    // Stamped now, received 40 days ago (it waited in the spool): expired.
    batch[1].time_unix_nano = now;
    batch[1].received_time_unix_nano = now - 40 * DAY;
    sink.export(&batch).await.expect("export");
    query(url, &format!("OPTIMIZE TABLE {db}.audit_events FINAL")).await;
    let seqs = select(
        url,
        &format!("SELECT seq FROM {db}.audit_events ORDER BY seq"),
    )
    .await;
    assert_eq!(
        seqs.iter().map(|r| num(&r["seq"])).collect::<Vec<_>>(),
        vec![1],
        "the TTL counts from received_time_unix_nano"
    );

    let config: Result<ClickhouseConfig, _> = toml::from_str(&format!(
        "url = \"{url}\"\ndatabase = \"{db}\"\ntable = \"otel_logs\"\nschema = \"otel\"\nttl = \"30d\"\n"
    ));
    let error = ClickhouseSink::new(&config.expect("parses"), &context())
        .err()
        .expect("ttl with the otel schema is refused");
    assert_eq!(error.class, ErrorClass::Misconfigured, "{error}");
    assert!(error.message.contains("sender's clock"), "{error}");
}
