//! The MySQL sink as a library, against the real MariaDB (a database of the
//! test's own on 127.0.0.1:3306, see `auditrail_tests::mysql`): daily
//! partitions across simulated day changes, exports that are idempotent,
//! and the error classes the delivery loop acts on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auditrail_exporters::sinks::mysql::{MysqlConfig, MysqlSink};
use auditrail_exporters::{ErrorClass, Exporter, SinkContext};
use auditrail_model::AuditEvent;
use auditrail_tests::mysql::{text, Database};
use sqlx::Row;

const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// A sink on `db`'s `audit_events`, with more TOML keys in `extra`.
fn sink(db: &Database, extra: &str) -> MysqlSink {
    let toml = format!("url = \"{}\"\n{extra}", db.url());
    let config: MysqlConfig = toml::from_str(&toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
    let context = SinkContext {
        name: "warehouse".into(),
        retention: Duration::from_secs(7 * 86_400),
    };
    MysqlSink::new(&config, &context).expect("sink")
}

/// An event as the spool would hand it over, at `time_unix_nano`.
fn event(seq: u64, time_unix_nano: u64) -> AuditEvent {
    AuditEvent {
        node: "lib-node".into(),
        seq,
        event_id: format!("ev-{seq}"),
        time_unix_nano,
        observed_time_unix_nano: time_unix_nano,
        received_time_unix_nano: time_unix_nano,
        tenant: "default".into(),
        service_name: "imagegen-ui".into(),
        event_name: "image.generate".into(),
        actor_id: format!("user-{}", seq % 3),
        body: format!("prompt {seq}"),
        attributes: format!(r#"{{"n":{seq}}}"#),
        resource_attributes: r#"{"service.name":"imagegen-ui"}"#.into(),
        trace_id: format!("{seq:032x}"),
        span_id: format!("{seq:016x}"),
        trace_flags: 1,
        hash: [seq as u8; 32],
        ..AuditEvent::default()
    }
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `pYYYYMMDD` of a day counted from the Unix epoch.
fn day_partition(day: u64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp((day * 86_400) as i64)
        .unwrap()
        .date();
    format!(
        "p{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// (name, upper bound) of each partition of `audit_events`, in order.
async fn partitions(db: &Database) -> Vec<(String, String)> {
    db.rows(
        "SELECT CAST(PARTITION_NAME AS CHAR) AS name, CAST(PARTITION_DESCRIPTION AS CHAR) AS bound \
         FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'audit_events' \
         ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .await
    .iter()
    .map(|row| {
        (
            text(row, "name").expect("a partitioned table"),
            text(row, "bound").unwrap_or_default(),
        )
    })
    .collect()
}

/// The seqs stored in one partition.
async fn seqs_in(db: &Database, partition: &str) -> Vec<u64> {
    db.rows(&format!(
        "SELECT seq FROM audit_events PARTITION (`{partition}`) ORDER BY seq"
    ))
    .await
    .iter()
    .map(|row| row.get::<u64, _>("seq"))
    .collect()
}

async fn all_seqs(db: &Database) -> Vec<u64> {
    db.rows("SELECT seq FROM audit_events ORDER BY seq")
        .await
        .iter()
        .map(|row| row.get::<u64, _>("seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_partitions_across_a_day_change() {
    let db = Database::create().await;
    let sink = sink(&db, "[partitions]\ndays_ahead = 2\nretention = \"3d\"");
    let now = SystemTime::now();
    let today = now_unix_nano() / DAY_NS;
    sink.prepare()
        .await
        .expect("prepare creates the partitioned table");

    let names = |parts: &[(String, String)]| -> Vec<String> {
        parts.iter().map(|(name, _)| name.clone()).collect()
    };
    let parts = partitions(&db).await;
    assert_eq!(
        names(&parts),
        [
            "p_before".to_string(),
            day_partition(today),
            day_partition(today + 1),
            day_partition(today + 2),
            "p_future".to_string(),
        ],
        "{parts:?}"
    );
    assert_eq!(parts[0].1, (today * DAY_NS).to_string(), "{parts:?}");
    assert_eq!(parts[1].1, ((today + 1) * DAY_NS).to_string(), "{parts:?}");
    assert_eq!(parts[4].1, "MAXVALUE", "{parts:?}");
    // Preparing again (a restart) keeps the table as it is.
    sink.prepare().await.expect("prepare again");
    assert_eq!(partitions(&db).await, parts);

    // A day later: the next day's partition is split off p_future.
    let done = sink
        .maintain_partitions(now + Duration::from_secs(86_400))
        .await
        .expect("maintenance");
    assert_eq!(done.created, [day_partition(today + 3)]);
    assert!(done.dropped.is_empty(), "{done:?}");
    let again = sink
        .maintain_partitions(now + Duration::from_secs(86_400))
        .await
        .expect("maintenance");
    assert!(
        again.created.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
    let parts = partitions(&db).await;
    assert_eq!(parts.len(), 6, "{parts:?}");
    assert_eq!(parts[4].0, day_partition(today + 3));
    assert_eq!(parts[4].1, ((today + 4) * DAY_NS).to_string());

    // Events of every day, including the edges of a day, 1970 and 2100,
    // all have a partition.
    let year_2100 = 4_102_444_800 * 1_000_000_000 + 5;
    let events = vec![
        event(1, DAY_NS + 1),
        event(2, (today - 1) * DAY_NS + DAY_NS / 2),
        event(3, today * DAY_NS),
        event(4, (today + 1) * DAY_NS - 1),
        event(5, (today + 1) * DAY_NS + DAY_NS / 2),
        event(6, (today + 2) * DAY_NS + 7),
        event(7, (today + 3) * DAY_NS),
        event(8, (today + 4) * DAY_NS + 123_456_789),
        event(9, year_2100),
    ];
    sink.export(&events)
        .await
        .expect("every time has a partition");
    sink.export(&events)
        .await
        .expect("the same batch again (a retry)");
    assert_eq!(
        all_seqs(&db).await,
        (1..=9).collect::<Vec<_>>(),
        "stored once"
    );
    assert_eq!(seqs_in(&db, "p_before").await, [1, 2]);
    assert_eq!(seqs_in(&db, &day_partition(today)).await, [3, 4]);
    assert_eq!(seqs_in(&db, &day_partition(today + 1)).await, [5]);
    assert_eq!(seqs_in(&db, &day_partition(today + 2)).await, [6]);
    assert_eq!(seqs_in(&db, &day_partition(today + 3)).await, [7]);
    assert_eq!(seqs_in(&db, "p_future").await, [8, 9]);
    let times = db
        .rows(
            "SELECT seq, time_unix_nano, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', `time`) AS us \
             FROM audit_events ORDER BY seq",
        )
        .await;
    for (row, event) in times.iter().zip(&events) {
        assert_eq!(row.get::<u64, _>("time_unix_nano"), event.time_unix_nano);
        assert_eq!(
            row.get::<i64, _>("us"),
            (event.time_unix_nano / 1000) as i64,
            "`time` of seq {}",
            event.seq
        );
    }

    // Then day by day, as the hourly maintenance sees it: each day the
    // next one is split off p_future (taking its rows along), and days
    // wholly older than 3 days are dropped with their rows.
    let mut created = Vec::new();
    let mut dropped = Vec::new();
    for days in 2..=5 {
        let done = sink
            .maintain_partitions(now + Duration::from_secs(days * 86_400))
            .await
            .expect("maintenance");
        created.push(done.created);
        dropped.push(done.dropped);
    }
    assert_eq!(
        created,
        (today + 4..=today + 7)
            .map(|day| vec![day_partition(day)])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        dropped,
        [
            vec![],
            vec!["p_before".to_string()],
            vec![day_partition(today)],
            vec![day_partition(today + 1)],
        ]
    );
    let parts = partitions(&db).await;
    let mut expected: Vec<String> = (today + 2..=today + 7).map(day_partition).collect();
    expected.push("p_future".into());
    assert_eq!(names(&parts), expected, "{parts:?}");
    assert_eq!(all_seqs(&db).await, [6, 7, 8, 9], "kept rows stay");
    assert_eq!(seqs_in(&db, &day_partition(today + 4)).await, [8]);
    assert_eq!(seqs_in(&db, "p_future").await, [9]);

    // Old and new times still insert after the drop: an event older than
    // every partition goes to the first one that is left.
    sink.export(&[event(10, DAY_NS), event(11, (today + 6) * DAY_NS + 1)])
        .await
        .expect("inserts after maintenance");
    assert_eq!(seqs_in(&db, &day_partition(today + 2)).await, [6, 10]);
    assert_eq!(seqs_in(&db, &day_partition(today + 6)).await, [11]);
}

#[tokio::test(flavor = "multi_thread")]
async fn exporting_the_same_events_twice_stores_them_once() {
    let db = Database::create().await;
    let sink = sink(&db, "");
    sink.prepare().await.expect("prepare creates the table");
    let now = now_unix_nano();
    let events: Vec<AuditEvent> = (1..=60).map(|seq| event(seq, now + seq)).collect();
    sink.export(&events[..50]).await.expect("first export");
    sink.export(&events[..50]).await.expect("the same again");
    // Overlapping: a retry of a batch split differently.
    sink.export(&events[40..])
        .await
        .expect("overlapping export");
    assert_eq!(all_seqs(&db).await, (1..=60).collect::<Vec<_>>());
    let row = &db
        .rows("SELECT event_id, body, attributes, hash FROM audit_events WHERE seq = 42")
        .await[0];
    assert_eq!(text(row, "event_id").as_deref(), Some("ev-42"));
    assert_eq!(text(row, "body").as_deref(), Some("prompt 42"));
    assert_eq!(text(row, "attributes").as_deref(), Some(r#"{"n":42}"#));
    assert_eq!(text(row, "hash"), Some(hex::encode([42u8; 32])));
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_rows_are_permanent_and_a_missing_table_is_misconfigured() {
    let db = Database::create().await;
    let sink = sink(&db, "");
    sink.prepare().await.expect("prepare creates the table");
    let now = now_unix_nano();

    // A target longer than TEXT holds: strict mode refuses it, and the
    // whole batch (one transaction) is left out.
    let mut poison = event(2, now);
    poison.target = "x".repeat(70_000);
    let batch = [event(1, now), poison, event(3, now)];
    let error = sink.export(&batch).await.expect_err("a value too long");
    assert_eq!(error.class, ErrorClass::Permanent, "{error}");
    assert_eq!(error.kind, "data", "{error}");
    assert!(error.message.contains("1406"), "{error}");
    assert_eq!(
        db.count("audit_events").await,
        0,
        "the batch is rolled back"
    );
    // The rest of the batch on its own is fine (what splitting finds).
    sink.export(&[event(1, now), event(3, now)])
        .await
        .expect("the good records");
    assert_eq!(all_seqs(&db).await, [1, 3]);

    // Attributes that are not JSON: MariaDB's JSON check refuses them.
    let mut bad_json = event(4, now);
    bad_json.attributes = "{not json".into();
    let error = sink.export(&[bad_json]).await.expect_err("invalid JSON");
    assert_eq!(error.class, ErrorClass::Permanent, "{error}");

    // No table: no record is to blame.
    db.execute("DROP TABLE audit_events").await;
    let error = sink.export(&[event(5, now)]).await.expect_err("no table");
    assert_eq!(error.class, ErrorClass::Misconfigured, "{error}");
    assert_eq!(error.kind, "schema", "{error}");
    assert!(error.message.contains("1146"), "{error}");
}

/// Retention counts from when auditrail received an event, as the spool's
/// does: an event its sender stamped a year ago, arriving today, stays
/// for the whole retention. A table partitioned by the sender's clock
/// (made by an earlier auditrail) keeps taking rows, but its retention
/// drops nothing and says why.
#[tokio::test(flavor = "multi_thread")]
async fn partition_retention_counts_from_receive_time() {
    let db = Database::create().await;
    let config = "[partitions]\ndays_ahead = 2\nretention = \"30d\"";
    let warehouse = sink(&db, config);
    warehouse.prepare().await.expect("prepare");
    let now = SystemTime::now();
    let day = |n: u64| now + Duration::from_secs(n * 86_400);
    // The table has been in use for 40 days: the days before the last 30
    // are dropped, day by day.
    for n in 1..=40 {
        warehouse
            .maintain_partitions(day(n))
            .await
            .expect("maintenance");
    }
    // Then an event arrives that its sender stamped a year ago.
    let arrived = now_unix_nano() + 40 * DAY_NS;
    let today = arrived / DAY_NS;
    let mut late = event(1, arrived - 365 * DAY_NS);
    late.received_time_unix_nano = arrived;
    let mut fresh = event(2, arrived);
    fresh.received_time_unix_nano = arrived;
    warehouse
        .export(&[late.clone(), fresh.clone()])
        .await
        .expect("export");
    assert_eq!(seqs_in(&db, &day_partition(today)).await, [1, 2]);
    for n in [41, 42, 69] {
        warehouse
            .maintain_partitions(day(n))
            .await
            .expect("maintenance");
        assert_eq!(
            all_seqs(&db).await,
            [1, 2],
            "an event stamped a year ago is kept {} days after it arrived",
            n - 40
        );
    }
    // Once its receive day is past retention it goes, like any other.
    warehouse
        .maintain_partitions(day(72))
        .await
        .expect("maintenance");
    assert_eq!(all_seqs(&db).await, Vec::<u64>::new());

    // A table an earlier version made: ranged by the sender's clock.
    let old = Database::create().await;
    let old_today = now_unix_nano() / DAY_NS;
    let old_sink = sink(&old, config);
    old_sink.prepare().await.expect("prepare");
    old.execute("ALTER TABLE audit_events REMOVE PARTITIONING")
        .await;
    old.execute(
        "ALTER TABLE audit_events DROP PRIMARY KEY, ADD PRIMARY KEY (`node`, `seq`, `time_unix_nano`)",
    )
    .await;
    old.execute(&format!(
        "ALTER TABLE audit_events PARTITION BY RANGE (`time_unix_nano`) (PARTITION p_before VALUES LESS THAN ({}), \
         PARTITION {} VALUES LESS THAN ({}), PARTITION p_future VALUES LESS THAN MAXVALUE)",
        old_today * DAY_NS,
        day_partition(old_today),
        (old_today + 1) * DAY_NS
    ))
    .await;
    let old_sink = sink(&old, config);
    old_sink.prepare().await.expect("an old table still passes");
    old_sink
        .export(&[late, fresh])
        .await
        .expect("and takes rows");
    let error = old_sink
        .maintain_partitions(day(1))
        .await
        .expect_err("retention by the sender's clock is refused");
    assert_eq!(error.class, ErrorClass::Misconfigured, "{error}");
    for needle in [
        "partitioned by `time_unix_nano`",
        "sender's clock",
        "retention drops nothing",
    ] {
        assert!(error.message.contains(needle), "{needle:?} in {error}");
    }
    assert_eq!(all_seqs(&old).await, [1, 2], "nothing dropped");
    let parts = partitions(&old).await;
    assert!(
        parts
            .iter()
            .any(|(name, _)| *name == day_partition(old_today + 3)),
        "days are still split off ahead: {parts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn highest_seq_answers_per_node_for_canonical_and_mapped_tables() {
    use auditrail_exporters::HeldSeq;
    let db = Database::create().await;
    let canonical = sink(&db, "");
    canonical.prepare().await.unwrap();
    assert_eq!(
        canonical.highest_seq("lib-node").await.unwrap(),
        HeldSeq::Highest(0)
    );
    let now = now_unix_nano();
    canonical
        .export(&[event(7, now), event(12, now), event(9, now)])
        .await
        .unwrap();
    assert_eq!(
        canonical.highest_seq("lib-node").await.unwrap(),
        HeldSeq::Highest(12)
    );
    assert_eq!(
        canonical.highest_seq("other-node").await.unwrap(),
        HeldSeq::Highest(0)
    );

    // A legacy table whose seq is text: compared as a number (10 > 9).
    db.execute(
        "CREATE TABLE legacy (who VARCHAR(64), n VARCHAR(20), prompt TEXT, UNIQUE KEY (who, n))",
    )
    .await;
    let mapped = sink(
        &db,
        "table = \"legacy\"\n[columns]\nwho = \"node\"\nn = \"seq\"\nprompt = \"body\"\n",
    );
    mapped.prepare().await.unwrap();
    mapped
        .export(&[event(9, now), event(10, now)])
        .await
        .unwrap();
    assert_eq!(
        mapped.highest_seq("lib-node").await.unwrap(),
        HeldSeq::Highest(10)
    );

    // Without columns mapped from both node and seq, it cannot tell.
    let unmapped = sink(&db, "table = \"legacy\"\n[columns]\nprompt = \"body\"\n");
    unmapped.prepare().await.unwrap();
    assert_eq!(
        unmapped.highest_seq("lib-node").await.unwrap(),
        HeldSeq::NotTracked
    );
}
