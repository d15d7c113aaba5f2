//! Injection, end to end: events whose every text field carries an attack
//! go through the real `auditrail serve` into the real far sides, and are
//! read back there directly (issue 9, "Tests that try to get in").
//!
//! * **SQL.** Each event carries one SQL (or ClickHouse) injection attempt
//!   as the whole value of every text that reaches a database sink: event
//!   name, `user.id`, `user.name`, `client.address`, `audit.target`,
//!   `service.name`, severity text, scope name, body, attribute keys and
//!   values (nested too), resource attribute keys and values, and, as far
//!   as its rule (1-128 printable ASCII bytes) lets it, `log.record.uid`.
//!   Delivered to MariaDB and ClickHouse (Debian's 18.16 and 26.x as chdb),
//!   each into its usual table and into one whose own name is an attack,
//!   then read back with the databases' own clients: every table is still
//!   there with exactly the rows sent, and every column equals what was
//!   sent, byte for byte (attributes parsed and compared).
//! * **Log injection.** Events whose every text field holds CR, LF, CRLF
//!   followed by a forged syslog line, NUL, ANSI escapes (CSI, OSC), DEL,
//!   C1 controls, U+2028/U+2029 and the bidi controls (U+061C, U+200E,
//!   U+200F, U+202A-U+202E, U+2066-U+2069) go through the syslog sink in
//!   each format into a real rsyslogd, and through the file sink: each
//!   event is exactly one line, no line holds any of those characters raw,
//!   and every value comes back exactly (unescaped, or JSON-decoded).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use auditrail_tests::clickhouse::{self, legacy_url, Chdb};
use auditrail_tests::mysql::{text, Database, SinkToml};
use auditrail_tests::rsyslog::{Listener, Rsyslog};
use auditrail_tests::sinks::{assert_no_dead_letters, client, next_trace_id, send, wait_caught_up};
use auditrail_tests::{otlp, Server};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;

/// How long a sink may take to deliver, on a loaded two-core machine.
const DELIVERY: Duration = Duration::from_secs(90);
/// The first byte of the span ids of this file's events.
const SPAN: u8 = 0x1e;

// ---------------------------------------------------------------------------
// The hostile events

/// SQL and ClickHouse injection attempts, each the whole value of every
/// text field of one event.
fn sql_payloads() -> Vec<String> {
    let mut payloads: Vec<String> = [
        "'); DROP TABLE audit_events; --",
        "' OR '1'='1",
        "x' OR 1=1; DELETE FROM audit_events WHERE '1'='1",
        "\\'",
        "\\",
        "\\\\",
        "\"",
        "\"); DROP TABLE audit_events; --",
        "`; DROP TABLE audit_events; --",
        "`audit_events`",
        "100%_done",
        "%",
        "_",
        "nul\0byte",
        "\0",
        "\\N",
        "NULL",
        "null",
        "tab\there\nnewline\rreturn",
        "\\t\\n\\0\\\\N",
        "{name:String}",
        "{seq:UInt64} $1 ? :name @p",
        "FORMAT JSONEachRow",
        "x') FORMAT JSONEachRow\n{\"node\":\"forged\",\"seq\":\"999\"}\n",
        "\"}\n{\"node\":\"forged\",\"seq\":999,\"event_id\":\"forged\"}",
        "/*! DROP TABLE audit_events */ # -- ;",
        "0x27; SELECT SLEEP(5); --",
        "漢字 🙂 é Ω ü — \u{202e}txt.exe 'quoted'",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // A very long value holding the others, over 64 KiB in the attributes
    // (each payload is in them several times).
    let mut long = String::new();
    while long.len() < 20_000 {
        long.push_str(&payloads.join(" | "));
    }
    payloads.push(long);
    payloads
}

/// Log-injection attempts: each the whole value of every text field of one
/// event (the last one holds them all, with the characters the syslog
/// grammars reserve).
fn log_payloads() -> Vec<String> {
    let mut payloads: Vec<String> = [
        "line one\nline two",
        "carriage\rreturn",
        "crlf\r\n<13>1 2026-01-01T00:00:00Z forged-host forged-app - forged - a forged event",
        "\n",
        "nul\0byte",
        "ansi \u{1b}[31mred\u{1b}[0m \u{1b}]0;owned title\u{7} \u{1b}[2J\u{1b}[H cleared",
        "del\u{7f}ete",
        "c1: nel\u{85} csi\u{9b}31m osc\u{9d} st\u{9c}",
        "line\u{2028}separator paragraph\u{2029}separator",
        "bidi \u{61c}alm \u{200e}lrm \u{200f}rlm \u{202a}lre \u{202b}rle \u{202c}pdf \u{202d}lro \u{202e}rlo \u{2066}lri \u{2067}rli \u{2068}fsi \u{2069}pdi",
        "invoice_\u{202e}fdp.exe",
        "access granted\u{2067} \u{2066}// admin only",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut all = payloads.join(" ");
    all.push_str(" | pipe = equals ] bracket \" quote \\ backslash \\n not a newline");
    payloads.push(all);
    payloads
}

/// A characters of the text outputs may never hold raw: every control
/// character (C0, DEL, C1), the line and paragraph separators, and the
/// bidi controls (Trojan Source, CVE-2021-42574).
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{61c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// How long a text field may be in the canonical MySQL table.
#[derive(Clone, Copy)]
struct Limits {
    /// `VARCHAR(255)` columns.
    short: usize,
    /// `severity_text` is `VARCHAR(64)`.
    severity: usize,
}

/// No limits beyond the event size (syslog, file).
const UNLIMITED: Limits = Limits {
    short: usize::MAX,
    severity: usize::MAX,
};
/// MySQL's (in characters).
const SQL_LIMITS: Limits = Limits {
    short: 255,
    severity: 64,
};

/// The first `max` characters of `text`.
fn fit(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// What an event was sent with, field by field, as the canonical fields
/// must hold it.
#[derive(Debug, Clone)]
struct Expected {
    event_id: String,
    trace_id: String,
    service_name: String,
    event_name: String,
    severity_text: String,
    actor_id: String,
    actor_name: String,
    client_address: String,
    target: String,
    body: String,
    attributes: Value,
    resource_attributes: Value,
    scope_name: String,
}

impl Expected {
    /// The canonical text fields, by name (the names every sink uses).
    fn text_fields(&self) -> [(&'static str, &str); 11] {
        [
            ("event_id", &self.event_id),
            ("trace_id", &self.trace_id),
            ("service_name", &self.service_name),
            ("event_name", &self.event_name),
            ("severity_text", &self.severity_text),
            ("actor_id", &self.actor_id),
            ("actor_name", &self.actor_name),
            ("client_address", &self.client_address),
            ("target", &self.target),
            ("body", &self.body),
            ("scope_name", &self.scope_name),
        ]
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    otlp::attr(key, value)
}

fn kvlist(values: Vec<KeyValue>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList { values })),
    }
}

/// An AnyValue as the canonical JSON holds it (no doubles or bytes here).
fn json_of(value: &AnyValue) -> Value {
    match value.value.as_ref() {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::IntValue(n)) => Value::from(*n),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(json_of).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => object_of(&l.values),
        Some(other) => panic!("not used here: {other:?}"),
    }
}

fn object_of(pairs: &[KeyValue]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|kv| (kv.key.clone(), json_of(kv.value.as_ref().expect("a value"))))
            .collect(),
    )
}

/// One event (in a resource and scope of its own) whose every text field
/// is `payload`, cut to `limits`; `n` numbers it.
fn hostile(n: usize, payload: &str, limits: Limits) -> (ResourceLogs, Expected) {
    let short = fit(payload, limits.short);
    // log.record.uid: printable ASCII, 1-128 bytes, unique in the test.
    let printable: String = payload
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .collect();
    let uid = fit(&format!("inj-{n:02}-{printable}"), 128);
    let (trace, trace_hex) = next_trace_id();
    let nested = kvlist(vec![kv(
        payload,
        otlp::array(vec![
            otlp::string(payload),
            otlp::int(7),
            kvlist(vec![kv(payload, otlp::string(payload))]),
        ]),
    )]);
    let attributes = vec![
        kv("log.record.uid", otlp::string(uid.clone())),
        kv("user.id", otlp::string(short.clone())),
        kv("user.name", otlp::string(short.clone())),
        kv("client.address", otlp::string(short.clone())),
        kv("audit.target", otlp::string(payload)),
        kv("audit.outcome", otlp::string("failure")),
        kv(payload, otlp::string(payload)),
        kv("nested", nested),
    ];
    let resource_attributes = vec![
        kv("service.name", otlp::string(short.clone())),
        kv(payload, otlp::string(payload)),
    ];
    let severity_text = fit(payload, limits.severity);
    let record = LogRecord {
        time_unix_nano: otlp::now_unix_nano(),
        severity_number: 13,
        severity_text: severity_text.clone(),
        event_name: short.clone(),
        body: Some(otlp::string(payload)),
        attributes: attributes.clone(),
        trace_id: trace.to_vec(),
        span_id: vec![SPAN, 0, 0, 0, 0, 0, 0, n as u8 + 1],
        flags: 1,
        ..Default::default()
    };
    let expected = Expected {
        event_id: uid,
        trace_id: trace_hex,
        service_name: short.clone(),
        event_name: short.clone(),
        severity_text,
        actor_id: short.clone(),
        actor_name: short.clone(),
        client_address: short.clone(),
        target: payload.to_owned(),
        body: payload.to_owned(),
        attributes: object_of(&attributes),
        resource_attributes: object_of(&resource_attributes),
        scope_name: short.clone(),
    };
    let logs = ResourceLogs {
        resource: Some(Resource {
            attributes: resource_attributes,
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            scope: Some(InstrumentationScope {
                name: short,
                ..Default::default()
            }),
            log_records: vec![record],
            ..Default::default()
        }],
        ..Default::default()
    };
    (logs, expected)
}

/// Sends one hostile event per payload in one request (all accepted);
/// returns them by event id.
async fn send_hostile(
    server: &Server,
    payloads: &[String],
    limits: Limits,
) -> BTreeMap<String, Expected> {
    let (resource_logs, expected): (Vec<_>, Vec<_>) = payloads
        .iter()
        .enumerate()
        .map(|(n, p)| hostile(n, p, limits))
        .unzip();
    send(
        &mut client(server).await,
        ExportLogsServiceRequest { resource_logs },
    )
    .await;
    let expected: BTreeMap<String, Expected> = expected
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    assert_eq!(expected.len(), payloads.len(), "event ids are unique");
    expected
}

/// `actual` equals `want`; on a difference, says where, briefly (the long
/// payload would drown the message).
fn assert_same(store: &str, event_id: &str, field: &str, actual: &str, want: &str) {
    if actual == want {
        return;
    }
    let at = actual
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), w)| a != w)
        .map_or(actual.len().min(want.len()), |((i, _), _)| i);
    let around = |s: &str| -> String {
        let start = (0..=at.saturating_sub(40).min(s.len()))
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s[start..].chars().take(100).collect()
    };
    panic!(
        "{store}: event {:?}, `{field}` differs from what was sent (lengths {} and {}), from byte {at}:\n  stored: {:?}\n  sent:   {:?}",
        fit(event_id, 60),
        actual.len(),
        want.len(),
        around(actual),
        around(want)
    );
}

/// The attributes as a ClickHouse `Map(String, String)` holds them: string
/// values as they are, others as their (canonical, compact) JSON text.
fn as_string_map(value: &Value) -> Value {
    Value::Object(
        value
            .as_object()
            .expect("an object")
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), Value::String(text))
            })
            .collect(),
    )
}

/// A JSON text field, parsed.
fn parse_json(store: &str, field: &str, text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{store}: `{field}` is not JSON ({e}): {}", fit(text, 200)))
}

// ---------------------------------------------------------------------------
// SQL: MariaDB

/// A table name that is itself an injection attempt (the config is the
/// operator's, but quoting must hold whatever it says).
const HOSTILE_TABLE: &str = "audit`events'; DROP TABLE audit_events; --";

/// Starts a server with two SQL sinks made by `sink`: `name` into
/// `audit_events`, `odd-table` into [`HOSTILE_TABLE`]; sends the SQL
/// payloads as hostile events and waits until both sinks hold all of them,
/// none dead-lettered. The server, and what was sent by event id.
async fn deliver_sql_payloads(
    name: &str,
    sink: impl Fn(&str) -> SinkToml,
) -> (Server, BTreeMap<String, Expected>) {
    let into = |name: &str, table: &str| {
        sink(name)
            .set("table", &auditrail_tests::mysql::toml_string(table))
            .delivery("linger", "\"20ms\"")
            .delivery("backoff_initial", "\"50ms\"")
            .delivery("backoff_max", "\"1s\"")
            .to_string()
    };
    let config = [into(name, "audit_events"), into("odd-table", HOSTILE_TABLE)].join("\n");
    let server = Server::start_with("", &config);
    let sent = send_hostile(&server, &sql_payloads(), SQL_LIMITS).await;
    for sink in [name, "odd-table"] {
        wait_caught_up(&server, sink, sent.len(), DELIVERY).await;
        assert_no_dead_letters(&server, sink).await;
    }
    (server, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_injection_through_every_field_is_stored_as_data_in_mysql() {
    let db = Database::create().await;
    let (server, sent) =
        deliver_sql_payloads("warehouse", |name| SinkToml::new(name, &db.url())).await;

    let mut tables: Vec<String> = db
        .rows("SELECT CAST(TABLE_NAME AS CHAR) AS t FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME")
        .await
        .iter()
        .map(|row| text(row, "t").expect("a name"))
        .collect();
    tables.sort();
    // The sink's own two (events, checkpoints) and the hostile one.
    let mut want_tables = [HOSTILE_TABLE, "audit_events", "audit_checkpoints"];
    want_tables.sort();
    assert_eq!(tables, want_tables, "no table dropped or made");
    for table in ["audit_events", HOSTILE_TABLE] {
        let quoted = format!("`{}`", table.replace('`', "``"));
        let store = format!("MySQL {quoted}");
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {quoted}"))
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(count, sent.len() as i64, "{store}: exactly the rows sent");
        let rows = db
            .rows(&format!(
                "SELECT event_id, trace_id, service_name, event_name, severity_text, actor_id, actor_name, \
                 client_address, target, body, scope_name, outcome, \
                 CAST(attributes AS CHAR) AS attributes, CAST(resource_attributes AS CHAR) AS resource_attributes \
                 FROM {quoted} ORDER BY seq"
            ))
            .await;
        assert_eq!(rows.len(), sent.len());
        for row in &rows {
            let event_id = text(row, "event_id").expect("event_id");
            let want = sent
                .get(&event_id)
                .unwrap_or_else(|| panic!("{store}: a row for {event_id:?}, never sent"));
            for (field, value) in want.text_fields() {
                let stored = text(row, field).unwrap_or_else(|| panic!("{field} is NULL"));
                assert_same(&store, &event_id, field, &stored, value);
            }
            assert_eq!(text(row, "outcome").as_deref(), Some("failure"));
            for (field, value) in [
                ("attributes", &want.attributes),
                ("resource_attributes", &want.resource_attributes),
            ] {
                let stored = text(row, field).expect("not NULL");
                assert!(
                    parse_json(&store, field, &stored) == *value,
                    "{store}: event {event_id:?}: `{field}` differs from what was sent"
                );
            }
        }
    }
    // And a bound lookup finds each event by its exact hostile values.
    for want in sent.values() {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE actor_id = ? AND body = ? AND target = ?",
        )
        .bind(&want.actor_id)
        .bind(&want.body)
        .bind(&want.target)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(n, 1, "{:?}", fit(&want.event_id, 60));
    }
    drop(server);
}

// ---------------------------------------------------------------------------
// SQL: ClickHouse

/// `name` as a ClickHouse identifier.
fn ch_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `text` as a ClickHouse string literal.
fn ch_str(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Hostile events into two tables (one with a hostile name) of a database
/// of the test's own on the server at `url`, then read back over HTTP.
/// `maps`: whether the server is 22.3 or later (attributes as `Map`),
/// else the legacy mapping (attributes as JSON text).
async fn clickhouse_round(url: &str, maps: bool) {
    let db = clickhouse::Database::create(url).await;
    let (server, sent) =
        deliver_sql_payloads("analytics", |name| clickhouse::sink(name, url, db.name())).await;

    let tables: Vec<String> = clickhouse::select(
        url,
        &format!(
            "SELECT name FROM system.tables WHERE database = {} ORDER BY name",
            ch_str(db.name())
        ),
    )
    .await
    .iter()
    .map(|row| row["name"].as_str().expect("a name").to_owned())
    .collect();
    // The sink's own two (events, checkpoints) and the hostile one.
    let mut want_tables = vec![
        HOSTILE_TABLE.to_owned(),
        "audit_events".to_owned(),
        "audit_checkpoints".to_owned(),
    ];
    want_tables.sort();
    assert_eq!(tables, want_tables, "no table dropped or made");
    for table in ["audit_events", HOSTILE_TABLE] {
        let qualified = format!("{}.{}", ch_ident(db.name()), ch_ident(table));
        let store = format!("ClickHouse {qualified}");
        for modifiers in ["", "FINAL"] {
            assert_eq!(
                clickhouse::count(url, &format!("SELECT count() FROM {qualified} {modifiers}"))
                    .await,
                sent.len() as u64,
                "{store} {modifiers}: exactly the rows sent"
            );
        }
        let rows = clickhouse::select(
            url,
            &format!(
                "SELECT event_id, trace_id, service_name, event_name, severity_text, actor_id, actor_name, \
                 client_address, target, body, scope_name, outcome, attributes, resource_attributes \
                 FROM {qualified} FINAL ORDER BY seq"
            ),
        )
        .await;
        assert_eq!(rows.len(), sent.len());
        for row in &rows {
            let event_id = row["event_id"].as_str().expect("event_id");
            let want = sent
                .get(event_id)
                .unwrap_or_else(|| panic!("{store}: a row for {event_id:?}, never sent"));
            for (field, value) in want.text_fields() {
                let stored = row[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("{field}: {}", row[field]));
                assert_same(&store, event_id, field, stored, value);
            }
            assert_eq!(row["outcome"], "failure");
            for (field, value) in [
                ("attributes", &want.attributes),
                ("resource_attributes", &want.resource_attributes),
            ] {
                let (stored, want) = if maps {
                    (row[field].clone(), as_string_map(value))
                } else {
                    let text = row[field].as_str().expect("JSON text");
                    (parse_json(&store, field, text), value.clone())
                };
                assert!(
                    stored == want,
                    "{store}: event {event_id:?}: `{field}` differs from what was sent"
                );
            }
        }
    }
    // A lookup by the exact hostile values (as literals the test quotes).
    for want in sent.values() {
        let n = clickhouse::count(
            url,
            &format!(
                "SELECT count() FROM {}.audit_events FINAL WHERE actor_id = {} AND body = {} AND target = {}",
                ch_ident(db.name()),
                ch_str(&want.actor_id),
                ch_str(&want.body),
                ch_str(&want.target)
            ),
        )
        .await;
        assert_eq!(n, 1, "{:?}", fit(&want.event_id, 60));
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_injection_through_every_field_is_stored_as_data_in_clickhouse_18() {
    clickhouse_round(legacy_url(), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_injection_through_every_field_is_stored_as_data_in_clickhouse_26() {
    let chdb = Chdb::start();
    clickhouse_round(&chdb.url(), true).await;
}

// ---------------------------------------------------------------------------
// Log injection: syslog

/// Reverses the sinks' documented escaping (docs/sinks.md, "One event, one
/// line"), written here from the documentation rather than taken from the
/// code under test: `\\`, `\n`, `\r`, `\t`, `\uXXXX`, and a backslash
/// before each `reserved` character.
fn unescape(text: &str, reserved: &[char]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if reserved.contains(&c) {
                return Err(format!("a raw reserved {c:?}"));
            }
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16).map_err(|e| format!("\\u{hex}: {e}"))?;
                out.push(char::from_u32(code).ok_or(format!("\\u{hex}"))?);
            }
            Some(c) if reserved.contains(&c) => out.push(c),
            other => return Err(format!("unknown escape \\{other:?}")),
        }
    }
    Ok(out)
}

/// The syslog MSG of a message (after the six header fields and the
/// structured data, which is `-` in the cef and json formats).
fn syslog_msg_after_nil_sd(line: &str) -> &str {
    let mut rest = line;
    for _ in 0..6 {
        rest = &rest[rest.find(' ').expect("a header field") + 1..];
    }
    rest.strip_prefix("- ").expect("no structured data: `-`")
}

/// The SD-PARAMs (escaped) and the MSG of an rfc5424 message.
fn rfc5424_parts(line: &str) -> (Vec<(String, String)>, String) {
    let mut rest = line;
    for _ in 0..6 {
        rest = &rest[rest.find(' ').expect("a header field") + 1..];
    }
    let rest = rest.strip_prefix('[').expect("an SD element");
    let mut rest = &rest[rest.find(' ').expect("params")..];
    let mut params = Vec::new();
    while let Some(after) = rest.strip_prefix(' ') {
        let (name, value) = after.split_once("=\"").expect("name=\"");
        let bytes = value.as_bytes();
        let mut end = 0;
        while bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        params.push((name.to_owned(), value[..end].to_owned()));
        rest = &value[end + 1..];
    }
    let rest = rest.strip_prefix(']').expect("the SD element ends");
    (params, rest.strip_prefix(' ').unwrap_or("").to_owned())
}

/// The `key=value` pairs of a CEF extension (values still escaped): every
/// unescaped `=` ends a key, which starts after the last space before it.
fn cef_extension(extension: &str) -> HashMap<String, String> {
    let bytes = extension.as_bytes();
    let mut equals = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' => {
                equals.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let key_start = |eq: usize| extension[..eq].rfind(' ').map_or(0, |s| s + 1);
    let mut pairs = HashMap::new();
    for (n, &eq) in equals.iter().enumerate() {
        let key = &extension[key_start(eq)..eq];
        let end = equals
            .get(n + 1)
            .map_or(extension.len(), |&next| key_start(next) - 1);
        pairs.insert(key.to_owned(), extension[eq + 1..end].to_owned());
    }
    pairs
}

/// The header fields and extension of a CEF MSG.
fn cef_parts(msg: &str) -> (Vec<String>, HashMap<String, String>) {
    let bytes = msg.as_bytes();
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while fields.len() < 7 {
        match bytes[i] {
            b'\\' => i += 2,
            b'|' => {
                fields.push(msg[start..i].to_owned());
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    (fields, cef_extension(&msg[start..]))
}

/// No raw forbidden character in `line`; names the first one.
fn assert_clean(store: &str, line: &str) {
    if let Some((at, c)) = line.char_indices().find(|(_, c)| is_forbidden(*c)) {
        let start = (0..=at.saturating_sub(60))
            .rev()
            .find(|i| line.is_char_boundary(*i))
            .unwrap_or(0);
        panic!(
            "{store}: a raw U+{:04X} at byte {at} of a line: ...{:?}...",
            u32::from(c),
            line[start..].chars().take(120).collect::<String>()
        );
    }
}

/// The canonical event of a JSON line (the `json` format's object, or an
/// OCSF event's `unmapped.auditrail` with `message` as the body) matches
/// what was sent, field by field; returns its event id.
fn check_json_event(store: &str, value: &Value, sent: &BTreeMap<String, Expected>) -> String {
    let (canonical, body) = match value.get("unmapped") {
        Some(unmapped) => (&unmapped["auditrail"], value.get("message")),
        None => (value, value.get("body")),
    };
    let event_id = canonical["event_id"].as_str().expect("event_id").to_owned();
    let want = sent
        .get(&event_id)
        .unwrap_or_else(|| panic!("{store}: an event {event_id:?}, never sent"));
    for (field, text) in want.text_fields() {
        let stored = if field == "body" {
            body.and_then(Value::as_str).unwrap_or("")
        } else {
            canonical[field]
                .as_str()
                .unwrap_or_else(|| panic!("{store}: `{field}` is {}", canonical[field]))
        };
        assert_same(store, &event_id, field, stored, text);
    }
    assert_eq!(
        canonical["attributes"], want.attributes,
        "{store}: attributes of {event_id:?}"
    );
    assert_eq!(
        canonical["resource_attributes"], want.resource_attributes,
        "{store}: resource attributes of {event_id:?}"
    );
    event_id
}

fn syslog_sink(name: &str, url: &str, format: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\ntype = \"syslog\"\nurl = \"{url}\"\nformat = \"{format}\"\n\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n\n"
    )
}

/// Checks the lines one syslog format wrote for the hostile events:
/// clean, a printable header, and every value recovered exactly.
fn check_syslog_lines(
    store: &str,
    format: &str,
    lines: &[String],
    sent: &BTreeMap<String, Expected>,
) {
    let mut seen = Vec::new();
    for line in lines {
        assert_clean(store, line);
        // The header: printable ASCII tokens only.
        let header: Vec<&str> = line.splitn(7, ' ').take(6).collect();
        for token in &header {
            assert!(
                token.chars().all(|c| c.is_ascii_graphic()),
                "{store}: {token:?}"
            );
        }
        let event_id = match format {
            "rfc5424" => {
                let (params, msg) = rfc5424_parts(line);
                let params: HashMap<String, String> = params
                    .into_iter()
                    .map(|(k, v)| {
                        let v = unescape(&v, &['"', ']'])
                            .unwrap_or_else(|e| panic!("{store}: {k}: {e}"));
                        (k, v)
                    })
                    .collect();
                let event_id = params["event_id"].clone();
                let want = &sent[&event_id];
                for (field, text) in want.text_fields() {
                    let stored = if field == "body" {
                        unescape(&msg, &[]).unwrap_or_else(|e| panic!("{store}: MSG: {e}"))
                    } else {
                        params.get(field).cloned().unwrap_or_default()
                    };
                    assert_same(store, &event_id, field, &stored, text);
                }
                for (field, value) in [
                    ("attributes", &want.attributes),
                    ("resource_attributes", &want.resource_attributes),
                ] {
                    assert_eq!(
                        parse_json(store, field, &params[field]),
                        *value,
                        "{store}: {field} of {event_id:?}"
                    );
                }
                event_id
            }
            "cef" => {
                let msg = syslog_msg_after_nil_sd(line);
                let (header, extension) = cef_parts(msg);
                let value = |key: &str| {
                    let raw = extension
                        .get(key)
                        .unwrap_or_else(|| panic!("{store}: no {key} in {}", fit(msg, 300)));
                    unescape(raw, &['=']).unwrap_or_else(|e| panic!("{store}: {key}: {e}"))
                };
                let event_id = value("externalId");
                let want = &sent[&event_id];
                let name = unescape(&header[4], &['|']).expect("a CEF header field");
                assert_same(store, &event_id, "Signature ID", &name, &want.event_name);
                for (key, text) in [
                    ("act", &want.event_name),
                    ("suser", &want.actor_name),
                    ("suid", &want.actor_id),
                    ("cs5", &want.client_address),
                    ("request", &want.target),
                    ("sourceServiceName", &want.service_name),
                    ("msg", &want.body),
                ] {
                    assert_same(store, &event_id, key, &value(key), text);
                }
                assert_eq!(
                    parse_json(store, "cs4", &value("cs4")),
                    want.attributes,
                    "{store}: attributes of {event_id:?}"
                );
                event_id
            }
            _ => {
                let msg = syslog_msg_after_nil_sd(line);
                let value = parse_json(store, "MSG", msg);
                check_json_event(store, &value, sent)
            }
        };
        seen.push(event_id);
    }
    seen.sort();
    let want: Vec<&String> = sent.keys().collect();
    assert_eq!(
        seen.iter().collect::<Vec<_>>(),
        want,
        "{store}: each event once"
    );
}

/// Runs `check`, turning a panic into its message.
fn verdict(check: impl FnOnce()) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn log_injection_cannot_forge_syslog_lines_in_any_format() {
    let formats = ["rfc5424", "cef", "json", "ocsf"];
    let daemons: Vec<Rsyslog> = formats
        .iter()
        .map(|_| Rsyslog::start(Listener::Tcp))
        .collect();
    let config: String = formats
        .iter()
        .zip(&daemons)
        .map(|(format, rsyslog)| syslog_sink(&format!("siem-{format}"), &rsyslog.url(), format))
        .collect();
    let server = Server::start_with("", &config);
    let payloads = log_payloads();
    let sent = send_hostile(&server, &payloads, UNLIMITED).await;

    // Every format is judged, and all that failed are named together.
    let mut failures = Vec::new();
    for (format, rsyslog) in formats.iter().zip(&daemons) {
        let store = format!("rsyslog ({format})");
        let lines = rsyslog.exactly_lines(sent.len(), DELIVERY, &server).await;
        if let Err(e) = verdict(|| check_syslog_lines(&store, format, &lines, &sent)) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------
// Log injection: the file sink

/// Every line of the plain segments in `dir`.
fn segment_lines(dir: &Path) -> Vec<String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "ndjson"));
    paths.sort();
    let mut lines = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8(bytes).expect("segments are UTF-8");
        assert!(
            text.ends_with('\n'),
            "{} ends in a complete line",
            path.display()
        );
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn log_injection_cannot_forge_lines_in_the_file_sink() {
    let dir = tempfile::tempdir().unwrap();
    let formats = ["json", "ocsf"];
    let config: String = formats
        .iter()
        .map(|format| {
            format!(
                "[[sinks]]\nname = \"archive-{format}\"\ntype = \"file\"\npath = {:?}\nformat = \"{format}\"\ncompression = \"none\"\n\n\
                 [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n\n",
                dir.path().join(format).display().to_string()
            )
        })
        .collect();
    let server = Server::start_with("", &config);
    let mut payloads = log_payloads();
    // The SQL ones too: the file sink has no length limits.
    payloads.extend(sql_payloads());
    let sent = send_hostile(&server, &payloads, UNLIMITED).await;
    let mut failures = Vec::new();
    for format in formats {
        let sink = format!("archive-{format}");
        wait_caught_up(&server, &sink, sent.len(), DELIVERY).await;
        assert_no_dead_letters(&server, &sink).await;
        let store = format!("file sink ({format})");
        let lines = segment_lines(&dir.path().join(format));
        let check = || {
            assert_eq!(lines.len(), sent.len(), "{store}: one line per event");
            let mut seen = Vec::new();
            for line in &lines {
                assert_clean(&store, line);
                let value = parse_json(&store, "line", line);
                seen.push(check_json_event(&store, &value, &sent));
            }
            seen.sort();
            let want: Vec<&String> = sent.keys().collect();
            assert_eq!(
                seen.iter().collect::<Vec<_>>(),
                want,
                "{store}: each event once"
            );
        };
        if let Err(e) = verdict(check) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
