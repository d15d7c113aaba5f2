//! The tables: their DDL for each schema and server generation, and the
//! check that an existing table can take auditrail's rows, which also
//! decides how each column is written. An existing table is never altered:
//! a difference is reported at start-up for the operator to resolve.

use serde::Deserialize;

use super::quote_ident;
use super::rows::{Plan, TimeFormat, Write};
use crate::fields::Field;

/// `non_replicated_deduplication_window` of the tables auditrail creates:
/// how many recent inserts a non-replicated MergeTree remembers by
/// deduplication token. Without it such a table ignores the tokens.
pub(super) const DEDUP_WINDOW: u32 = 1000;

/// A server's `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Version {
    pub major: u32,
    pub minor: u32,
}

/// The first version with everything the modern mapping uses: DateTime64,
/// Map, TTL, skip indexes, `insert_deduplication_token` and
/// `non_replicated_deduplication_window`.
pub(super) const MODERN: Version = Version {
    major: 22,
    minor: 3,
};

impl Version {
    /// Parses `SELECT version()`: `26.9.2.1`, `18.16.1`.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts
            .next()?
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()?;
        Some(Version { major, minor })
    }

    pub fn is_modern(self) -> bool {
        self >= MODERN
    }
}

/// A row of `system.columns`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(super) struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `""`, `DEFAULT`, `MATERIALIZED`, `ALIAS` or `EPHEMERAL`.
    #[serde(default)]
    pub default_kind: String,
}

impl Column {
    /// Whether an INSERT may name this column.
    fn insertable(&self) -> bool {
        !matches!(
            self.default_kind.as_str(),
            "MATERIALIZED" | "ALIAS" | "EPHEMERAL"
        )
    }
}

/// The row of `system.tables` that matters here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(super) struct TableInfo {
    pub engine: String,
    pub engine_full: String,
    pub sorting_key: String,
}

/// Column types without blanks, as compared (`DateTime64(9, 'UTC')` and
/// `DateTime64(9,'UTC')` are the same type).
fn norm(ty: &str) -> String {
    ty.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The type of a canonical column in the table auditrail creates.
pub(super) fn canonical_type(field: Field, modern: bool) -> &'static str {
    match field {
        Field::Node
        | Field::Tenant
        | Field::ServiceName
        | Field::EventName
        | Field::SeverityText
        | Field::Outcome
        | Field::ScopeName => {
            if modern {
                "LowCardinality(String)"
            } else {
                "String"
            }
        }
        Field::Seq
        | Field::TimeUnixNano
        | Field::ObservedTimeUnixNano
        | Field::ReceivedTimeUnixNano => "UInt64",
        Field::Time => {
            if modern {
                "DateTime64(9, 'UTC')"
            } else {
                "DateTime('UTC')"
            }
        }
        Field::SeverityNumber => "Int32",
        Field::TraceFlags => "UInt32",
        Field::Attributes | Field::ResourceAttributes => {
            if modern {
                "Map(LowCardinality(String), String)"
            } else {
                "String"
            }
        }
        Field::EventId
        | Field::ActorId
        | Field::ActorName
        | Field::ClientAddress
        | Field::Target
        | Field::TraceId
        | Field::SpanId
        | Field::Body
        | Field::PrevHash
        | Field::Hash => "String",
    }
}

/// The types an existing canonical column may have, and how each is
/// written: the modern and the legacy mapping are both accepted, so a table
/// created on an old server keeps working after the server is upgraded.
fn accepted(field: Field) -> Vec<(&'static str, Write)> {
    const STRINGS: [&str; 2] = ["String", "LowCardinality(String)"];
    match field {
        Field::Time => vec![
            ("DateTime64(9, 'UTC')", Write::Time(TimeFormat::Nanos)),
            ("DateTime('UTC')", Write::Time(TimeFormat::Seconds)),
        ],
        Field::Attributes | Field::ResourceAttributes => vec![
            ("Map(LowCardinality(String), String)", Write::Map(field)),
            ("Map(String, String)", Write::Map(field)),
            ("String", Write::JsonText(field)),
        ],
        _ => match canonical_type(field, false) {
            "String" => STRINGS.map(|t| (t, Write::Field(field))).to_vec(),
            other => vec![(other, Write::Field(field))],
        },
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the canonical table: the modern mapping
/// (ClickHouse >= 22.3) or the legacy one (see the module documentation of
/// the sink).
pub(super) fn create_auditrail(
    database: &str,
    table: &str,
    modern: bool,
    ttl_seconds: Option<u64>,
) -> String {
    let mut lines: Vec<String> = Field::ALL
        .into_iter()
        .map(|f| {
            format!(
                "    {} {}",
                quote_ident(f.name()),
                canonical_type(f, modern)
            )
        })
        .collect();
    if modern {
        lines.push("    INDEX idx_trace_id trace_id TYPE bloom_filter GRANULARITY 4".into());
        lines.push("    INDEX idx_actor_id actor_id TYPE bloom_filter GRANULARITY 4".into());
    }
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (\n{}\n) ENGINE = ReplacingMergeTree\n\
         PARTITION BY toYYYYMM(time)\n\
         ORDER BY (service_name, event_name, time, node, seq)",
        quote_ident(database),
        quote_ident(table),
        lines.join(",\n")
    );
    if modern {
        if let Some(seconds) = ttl_seconds {
            sql.push_str(&format!(
                "\nTTL {RECEIVED_TIME} + INTERVAL {seconds} SECOND"
            ));
        }
        sql.push_str(&format!(
            "\nSETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
        ));
    }
    sql
}

/// `CREATE TABLE IF NOT EXISTS` for the signed checkpoints: one row per
/// checkpoint, kept once per `(origin, tree_size)` by the
/// ReplacingMergeTree (ClickHouse has no unique key). The same on 18.16 and
/// later servers.
pub(super) fn create_checkpoints(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (\n\
         \x20   `node` String,\n\
         \x20   `origin` String,\n\
         \x20   `tree_size` UInt64,\n\
         \x20   `first_seq` UInt64,\n\
         \x20   `last_seq` UInt64,\n\
         \x20   `root_hash` String,\n\
         \x20   `chain_hash` String,\n\
         \x20   `signed_at_unix_nano` UInt64,\n\
         \x20   `note` String\n\
         ) ENGINE = ReplacingMergeTree\n\
         ORDER BY (origin, tree_size)",
        quote_ident(database),
        quote_ident(table)
    )
}

/// When auditrail received the event, as a `DateTime`: what the `TTL` of
/// the tables auditrail creates counts from, as the spool's retention does
/// (never `time`, the sender's clock, which may be a year back for an event
/// that arrived today).
pub(super) const RECEIVED_TIME: &str = "toDateTime(intDiv(received_time_unix_nano, 1000000000))";

/// Whether a table's `TTL` (in `engine_full`) counts from the receive
/// time; `None` when it has no TTL.
pub(super) fn ttl_by_receive_time(info: &TableInfo) -> Option<bool> {
    let (_, ttl) = info.engine_full.split_once(" TTL ")?;
    Some(ttl.contains("received_time_unix_nano"))
}

/// `CREATE TABLE IF NOT EXISTS` for the OpenTelemetry Collector's
/// ClickHouse exporter's `otel_logs` table, as that exporter creates it
/// (exporter/clickhouseexporter/internal/sqltemplates/logs_table.sql), plus
/// the deduplication window that makes retries idempotent.
///
/// It takes no `TTL`: the table has no receive time, and a TTL by
/// `TimestampTime` would count from the sender's clock.
pub(super) fn create_otel(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime DEFAULT toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    EventName String CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = MergeTree
PARTITION BY toDate(TimestampTime)
PRIMARY KEY (ServiceName, TimestampTime)
ORDER BY (ServiceName, TimestampTime, Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = {DEDUP_WINDOW}",
        quote_ident(database),
        quote_ident(table),
    )
}

/// How rows go into an existing canonical table, or what keeps it from
/// taking them.
pub(super) fn auditrail_plan(columns: &[Column], info: &TableInfo) -> Result<Plan, Vec<String>> {
    let mut problems = Vec::new();
    let mut plan = Vec::new();
    for field in Field::ALL {
        let accepted = accepted(field);
        let expected = accepted
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
            .join(" or ");
        let Some(column) = columns.iter().find(|c| c.name == field.name()) else {
            problems.push(format!(
                "column `{}` is missing (expected {expected})",
                field.name()
            ));
            continue;
        };
        if !column.insertable() {
            problems.push(format!(
                "column `{}` is {} and cannot be written",
                field.name(),
                column.default_kind
            ));
            continue;
        }
        let actual = norm(&column.ty);
        match accepted.iter().find(|(t, _)| norm(t) == actual) {
            Some((_, write)) => plan.push((field.name().to_owned(), *write)),
            None => problems.push(format!(
                "column `{}` is {} (expected {expected})",
                field.name(),
                column.ty
            )),
        }
    }
    problems.extend(engine_problems(info));
    if problems.is_empty() {
        Ok(Plan::new(plan))
    } else {
        Err(problems)
    }
}

/// Whether the canonical table's engine collapses a retried row.
fn engine_problems(info: &TableInfo) -> Vec<String> {
    // A Distributed table (or one whose engine the server did not report)
    // is checked through the local tables it writes to, not here.
    if info.engine.is_empty() || info.engine == "Distributed" {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if !info.engine.ends_with("ReplacingMergeTree") {
        problems.push(format!(
            "engine is {}, but a ReplacingMergeTree is needed so that re-sent rows collapse",
            info.engine
        ));
    }
    let key: Vec<&str> = info
        .sorting_key
        .split(',')
        .map(|k| k.trim().trim_matches('`'))
        .collect();
    if !key.ends_with(&["node", "seq"]) {
        problems.push(format!(
            "sorting key is ({}), but it must end in (node, seq) so that re-sent rows collapse",
            info.sorting_key
        ));
    }
    problems
}

/// Columns of the OTel logs table auditrail writes, and whether a table
/// must have them (older Collector versions created fewer columns).
const OTEL_COLUMNS: [(&str, bool); 16] = [
    ("Timestamp", true),
    ("TraceId", true),
    ("SpanId", true),
    ("TraceFlags", true),
    ("SeverityText", true),
    ("SeverityNumber", true),
    ("ServiceName", true),
    ("Body", true),
    ("ResourceSchemaUrl", false),
    ("ResourceAttributes", true),
    ("ScopeSchemaUrl", false),
    ("ScopeName", false),
    ("ScopeVersion", false),
    ("ScopeAttributes", false),
    ("LogAttributes", true),
    ("EventName", false),
];

/// What an OTel column of type `ty` receives, or the types it may have.
fn otel_write(name: &str, ty: &str) -> Result<Write, &'static str> {
    let t = norm(ty);
    let string = t == "String" || t == "LowCardinality(String)";
    let map = t == "Map(LowCardinality(String),String)" || t == "Map(String,String)";
    let ok = |good: bool, write: Write, expected: &'static str| {
        if good {
            Ok(write)
        } else {
            Err(expected)
        }
    };
    const STRING: &str = "String or LowCardinality(String)";
    const MAP: &str = "Map(LowCardinality(String), String)";
    match name {
        // Any zone: RowBinary carries the instant, and the zone only
        // changes how the column shows it.
        "Timestamp" => match t.strip_prefix("DateTime64(9") {
            Some(")") => Ok(Write::Time(TimeFormat::Nanos)),
            Some(zoned) if zoned.starts_with(",'") && zoned.ends_with("')") => {
                Ok(Write::Time(TimeFormat::Nanos))
            }
            _ => Err("DateTime64(9)"),
        },
        "TraceFlags" => match t.as_str() {
            "UInt8" => Ok(Write::TraceFlagsU8),
            "UInt32" => Ok(Write::Field(Field::TraceFlags)),
            _ => Err("UInt8 or UInt32"),
        },
        "SeverityNumber" => match t.as_str() {
            "UInt8" => Ok(Write::SeverityU8),
            "Int32" => Ok(Write::Field(Field::SeverityNumber)),
            _ => Err("UInt8 or Int32"),
        },
        "TraceId" => ok(string, Write::Field(Field::TraceId), STRING),
        "SpanId" => ok(string, Write::Field(Field::SpanId), STRING),
        "SeverityText" => ok(string, Write::Field(Field::SeverityText), STRING),
        "ServiceName" => ok(string, Write::Field(Field::ServiceName), STRING),
        "Body" => ok(string, Write::Field(Field::Body), STRING),
        "ScopeName" => ok(string, Write::Field(Field::ScopeName), STRING),
        "EventName" => ok(string, Write::Field(Field::EventName), STRING),
        "ResourceSchemaUrl" | "ScopeSchemaUrl" | "ScopeVersion" => ok(string, Write::Empty, STRING),
        "ResourceAttributes" => ok(map, Write::Map(Field::ResourceAttributes), MAP),
        "ScopeAttributes" => ok(map, Write::EmptyMap, MAP),
        "LogAttributes" => ok(map, Write::LogAttributes, MAP),
        _ => Err("(not an OTel logs column)"),
    }
}

/// How rows go into an existing OTel logs table, or what keeps it from
/// taking them.
pub(super) fn otel_plan(columns: &[Column]) -> Result<Plan, Vec<String>> {
    let mut problems = Vec::new();
    let mut plan = Vec::new();
    for (name, required) in OTEL_COLUMNS {
        let Some(column) = columns.iter().find(|c| c.name == name) else {
            if required {
                problems.push(format!("column `{name}` is missing"));
            }
            continue;
        };
        if !column.insertable() {
            // Computed by the table itself (e.g. ServiceName MATERIALIZED
            // from ResourceAttributes['service.name']).
            continue;
        }
        match otel_write(name, &column.ty) {
            Ok(write) => plan.push((name.to_owned(), write)),
            Err(expected) => problems.push(format!(
                "column `{name}` is {} (expected {expected})",
                column.ty
            )),
        }
    }
    if problems.is_empty() {
        Ok(Plan::new(plan))
    } else {
        Err(problems)
    }
}

/// Whether the table honours `insert_deduplication_token`: replicated
/// tables do unless their window is 0; others need
/// `non_replicated_deduplication_window`. `None` when it cannot be told
/// from here (a Distributed table).
pub(super) fn deduplicates(info: &TableInfo) -> Option<bool> {
    let engine = info.engine.as_str();
    if !engine.contains("MergeTree") {
        return None;
    }
    let settings = info
        .engine_full
        .rfind(" SETTINGS ")
        .map(|at| &info.engine_full[at + 10..])
        .unwrap_or("");
    let setting = |name: &str| {
        settings.split(',').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('\''))
        })
    };
    let window = if engine.starts_with("Replicated") || engine.starts_with("Shared") {
        setting("replicated_deduplication_window").unwrap_or("100")
    } else {
        setting("non_replicated_deduplication_window").unwrap_or("0")
    };
    Some(window != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            default_kind: String::new(),
        }
    }

    fn canonical(modern: bool) -> Vec<Column> {
        Field::ALL
            .into_iter()
            .map(|f| column(f.name(), canonical_type(f, modern)))
            .collect()
    }

    fn replacing() -> TableInfo {
        TableInfo {
            engine: "ReplacingMergeTree".into(),
            engine_full: "ReplacingMergeTree PARTITION BY toYYYYMM(time) ORDER BY (service_name, event_name, time, node, seq) SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192".into(),
            sorting_key: "service_name, event_name, time, node, seq".into(),
        }
    }

    #[test]
    fn versions_parse() {
        let v = Version::parse("26.9.2.1\n").unwrap();
        assert_eq!(
            v,
            Version {
                major: 26,
                minor: 9
            }
        );
        assert!(v.is_modern());
        assert!(!Version::parse("18.16.1").unwrap().is_modern());
        assert!(!Version::parse("22.2.2.1").unwrap().is_modern());
        assert!(Version::parse("22.3.1.1").unwrap().is_modern());
        assert!(Version::parse("23.8-lts").unwrap().is_modern());
        assert_eq!(Version::parse("garbage"), None);
    }

    #[test]
    fn modern_ddl_has_the_promised_shape() {
        let ddl = create_auditrail("audit", "events", true, Some(86_400));
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS `audit`.`events` ("));
        for needle in [
            "`time` DateTime64(9, 'UTC')",
            "`node` LowCardinality(String)",
            "`attributes` Map(LowCardinality(String), String)",
            "`severity_number` Int32",
            "`trace_flags` UInt32",
            "INDEX idx_trace_id trace_id TYPE bloom_filter GRANULARITY 4",
            "INDEX idx_actor_id actor_id TYPE bloom_filter GRANULARITY 4",
            "ENGINE = ReplacingMergeTree",
            "ORDER BY (service_name, event_name, time, node, seq)",
            "TTL toDateTime(intDiv(received_time_unix_nano, 1000000000)) + INTERVAL 86400 SECOND",
            "SETTINGS non_replicated_deduplication_window = 1000",
        ] {
            assert!(ddl.contains(needle), "{needle} in {ddl}");
        }
        assert!(!create_auditrail("a", "b", true, None).contains("TTL"));
    }

    #[test]
    fn legacy_ddl_uses_only_what_18_16_has() {
        let ddl = create_auditrail("audit", "events", false, Some(86_400));
        for absent in [
            "DateTime64",
            "Map(",
            "LowCardinality",
            "TTL",
            "INDEX",
            "SETTINGS",
        ] {
            assert!(!ddl.contains(absent), "{absent} in {ddl}");
        }
        assert!(ddl.contains("`time` DateTime('UTC')"));
        assert!(ddl.contains("`attributes` String"));
        assert!(ddl.contains("ORDER BY (service_name, event_name, time, node, seq)"));
    }

    #[test]
    fn own_tables_pass_and_pick_their_encoding() {
        let plan = auditrail_plan(&canonical(true), &replacing()).unwrap();
        assert_eq!(plan.columns().len(), 26);
        assert!(plan
            .columns()
            .contains(&("time".into(), Write::Time(TimeFormat::Nanos))));
        assert!(plan
            .columns()
            .contains(&("attributes".into(), Write::Map(Field::Attributes))));
        let legacy = auditrail_plan(&canonical(false), &replacing()).unwrap();
        assert!(legacy
            .columns()
            .contains(&("time".into(), Write::Time(TimeFormat::Seconds))));
        assert!(legacy
            .columns()
            .contains(&("attributes".into(), Write::JsonText(Field::Attributes))));
        // Types as system.columns spells them.
        let mut spelled = canonical(true);
        spelled.iter_mut().find(|c| c.name == "time").unwrap().ty = "DateTime64(9,'UTC')".into();
        assert!(auditrail_plan(&spelled, &replacing()).is_ok());
    }

    #[test]
    fn replicated_tables_pass() {
        // docs/scaling.md: each node writes into a replica's local table.
        let replicated = TableInfo {
            engine: "ReplicatedReplacingMergeTree".into(),
            engine_full: "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/audit/audit_events', '{replica}') PARTITION BY toYYYYMM(time) ORDER BY (service_name, event_name, time, node, seq) SETTINGS index_granularity = 8192".into(),
            sorting_key: "service_name, event_name, time, node, seq".into(),
        };
        assert!(auditrail_plan(&canonical(false), &replicated).is_ok());
        let not_replacing = TableInfo {
            engine: "ReplicatedMergeTree".into(),
            ..replicated
        };
        let text = auditrail_plan(&canonical(false), &not_replacing)
            .unwrap_err()
            .join("; ");
        assert!(text.contains("engine is ReplicatedMergeTree"), "{text}");
    }

    #[test]
    fn drift_is_named() {
        let mut columns = canonical(true);
        columns.retain(|c| c.name != "hash");
        columns.iter_mut().find(|c| c.name == "time").unwrap().ty = "DateTime64(3)".into();
        columns.iter_mut().find(|c| c.name == "seq").unwrap().ty = "String".into();
        columns.push(column("extra", "String"));
        let info = TableInfo {
            engine: "MergeTree".into(),
            engine_full: "MergeTree ORDER BY seq".into(),
            sorting_key: "seq".into(),
        };
        let problems = auditrail_plan(&columns, &info).unwrap_err();
        let text = problems.join("; ");
        assert_eq!(problems.len(), 5, "{text}");
        assert!(text.contains("column `hash` is missing"), "{text}");
        assert!(
            text.contains(
                "column `time` is DateTime64(3) (expected DateTime64(9, 'UTC') or DateTime('UTC'))"
            ),
            "{text}"
        );
        assert!(
            text.contains("column `seq` is String (expected UInt64)"),
            "{text}"
        );
        assert!(text.contains("engine is MergeTree"), "{text}");
        assert!(text.contains("sorting key is (seq)"), "{text}");
        assert!(!text.contains("extra"), "{text}");
    }

    #[test]
    fn otel_tables_of_several_collector_versions_pass() {
        // Today's DDL.
        let current = [
            ("Timestamp", "DateTime64(9)"),
            ("TimestampTime", "DateTime"),
            ("TraceId", "String"),
            ("SpanId", "String"),
            ("TraceFlags", "UInt8"),
            ("SeverityText", "LowCardinality(String)"),
            ("SeverityNumber", "UInt8"),
            ("ServiceName", "LowCardinality(String)"),
            ("Body", "String"),
            ("ResourceSchemaUrl", "LowCardinality(String)"),
            ("ResourceAttributes", "Map(LowCardinality(String), String)"),
            ("ScopeSchemaUrl", "LowCardinality(String)"),
            ("ScopeName", "String"),
            ("ScopeVersion", "LowCardinality(String)"),
            ("ScopeAttributes", "Map(LowCardinality(String), String)"),
            ("LogAttributes", "Map(LowCardinality(String), String)"),
            ("EventName", "String"),
        ]
        .map(|(n, t)| column(n, t));
        let plan = otel_plan(&current).unwrap();
        assert_eq!(plan.columns().len(), 16, "all but TimestampTime");
        assert_eq!(
            plan.columns()[0],
            ("Timestamp".into(), Write::Time(TimeFormat::Nanos))
        );

        // An early DDL: wider ints, no scope or EventName columns.
        let mut early = [
            ("Timestamp", "DateTime64(9)"),
            ("TraceId", "String"),
            ("SpanId", "String"),
            ("TraceFlags", "UInt32"),
            ("SeverityText", "LowCardinality(String)"),
            ("SeverityNumber", "Int32"),
            ("ServiceName", "LowCardinality(String)"),
            ("Body", "String"),
            ("ResourceAttributes", "Map(LowCardinality(String), String)"),
            ("LogAttributes", "Map(String, String)"),
        ]
        .map(|(n, t)| column(n, t));
        early[6].default_kind = "MATERIALIZED".into();
        let plan = otel_plan(&early).unwrap();
        let names: Vec<_> = plan.columns().iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"ServiceName"), "materialized: {names:?}");
        assert!(plan
            .columns()
            .contains(&("TraceFlags".into(), Write::Field(Field::TraceFlags))));

        let broken = [column("Timestamp", "DateTime"), column("Body", "String")];
        let text = otel_plan(&broken).unwrap_err().join("; ");
        assert!(
            text.contains("column `Timestamp` is DateTime (expected DateTime64(9))"),
            "{text}"
        );
        assert!(text.contains("column `LogAttributes` is missing"), "{text}");
    }

    #[test]
    fn zoned_timestamps() {
        for ty in [
            "DateTime64(9)",
            "DateTime64(9, 'UTC')",
            "DateTime64(9, 'Europe/Berlin')",
        ] {
            assert_eq!(
                otel_write("Timestamp", ty),
                Ok(Write::Time(TimeFormat::Nanos)),
                "{ty}"
            );
        }
        for ty in ["DateTime64(3)", "DateTime64(9)x", "DateTime64(9, 'UTC"] {
            assert!(otel_write("Timestamp", ty).is_err(), "{ty}");
        }
    }

    #[test]
    fn deduplication_windows() {
        assert_eq!(deduplicates(&replacing()), Some(true));
        let plain = TableInfo {
            engine: "MergeTree".into(),
            engine_full: "MergeTree ORDER BY x SETTINGS index_granularity = 8192".into(),
            sorting_key: "x".into(),
        };
        assert_eq!(deduplicates(&plain), Some(false));
        let replicated = TableInfo {
            engine: "ReplicatedMergeTree".into(),
            engine_full: "ReplicatedMergeTree('/t', '{replica}') ORDER BY x SETTINGS non_replicated_deduplication_window = 0".into(),
            sorting_key: "x".into(),
        };
        assert_eq!(deduplicates(&replicated), Some(true));
        let off = TableInfo {
            engine_full: "ReplicatedMergeTree('/t', '{replica}') ORDER BY x SETTINGS replicated_deduplication_window = 0".into(),
            ..replicated
        };
        assert_eq!(deduplicates(&off), Some(false));
        let distributed = TableInfo {
            engine: "Distributed".into(),
            ..TableInfo::default()
        };
        assert_eq!(deduplicates(&distributed), None);
    }
}
