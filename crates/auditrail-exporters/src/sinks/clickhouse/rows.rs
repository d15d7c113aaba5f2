//! Rows as `JSONEachRow`: one JSON object per line, written straight into
//! one buffer per batch (no allocation per row in the common case), and the
//! deduplication token that names a batch.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write as _;

use auditrail_model::AuditEvent;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use super::quote_ident;
use crate::fields::{utc, Field, Value};
use crate::ExportError;

/// How the event time is spelled for a date-time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeFormat {
    /// `2024-01-02 03:04:05.123456789`, for a `DateTime64(9)` whose time
    /// zone is UTC.
    Nanos,
    /// `2024-01-02 03:04:05`, for a `DateTime` (18.x reads no fraction).
    Seconds,
    /// `2024-01-02T03:04:05.123456789Z`, read with
    /// `date_time_input_format=best_effort`: for a `DateTime64(9)` whose
    /// time zone (the column's, else the server's) is not UTC, where the
    /// plain spelling would be read as local time.
    IsoNanos,
}

const NANOS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:9]");
const SECONDS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
const ISO_NANOS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// What one column receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// A canonical string or number field as it is.
    Field(Field),
    /// The event time (`time` / `Timestamp`).
    Time(TimeFormat),
    /// A JSON-object field (`attributes`, `resource_attributes`) as a
    /// `Map(String, String)`: string values as they are, others as their
    /// JSON text.
    Map(Field),
    /// A JSON-object field as its canonical JSON text, for a `String` column.
    JsonText(Field),
    /// `severity_number` clamped into a `UInt8` (OTel's range is 0..=24).
    SeverityU8,
    /// The W3C trace flags (low 8 bits) for a `UInt8` column.
    TraceFlagsU8,
    /// An empty string: what the OTel table has and the event does not
    /// (schema URLs, scope version).
    Empty,
    /// An empty map (scope attributes).
    EmptyMap,
    /// The OTel table's `LogAttributes`: the record attributes plus
    /// `auditrail.node`, `auditrail.seq`, `auditrail.event_id` and
    /// `auditrail.tenant`, which keep the row identifiable.
    LogAttributes,
}

/// The attributes auditrail adds to `LogAttributes` (any the client sent
/// under these keys are replaced).
pub(super) const LOG_ATTRIBUTE_KEYS: [&str; 4] = [
    "auditrail.node",
    "auditrail.seq",
    "auditrail.event_id",
    "auditrail.tenant",
];

/// The columns an insert writes, in order, and what each receives.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    columns: Vec<(String, Write)>,
    /// `"name":` for each column, escaped once.
    keys: Vec<Vec<u8>>,
}

impl Plan {
    pub fn new(columns: Vec<(String, Write)>) -> Plan {
        let keys = columns
            .iter()
            .map(|(name, _)| {
                let mut key = serde_json::to_vec(name).expect("a string serializes");
                key.push(b':');
                key
            })
            .collect();
        Plan { columns, keys }
    }

    #[cfg(test)]
    pub fn columns(&self) -> &[(String, Write)] {
        &self.columns
    }

    /// `INSERT INTO db.table (columns) FORMAT JSONEachRow`.
    pub fn insert_sql(&self, database: &str, table: &str) -> String {
        let names: Vec<String> = self.columns.iter().map(|(c, _)| quote_ident(c)).collect();
        format!(
            "INSERT INTO {}.{} ({}) FORMAT JSONEachRow",
            quote_ident(database),
            quote_ident(table),
            names.join(", ")
        )
    }

    /// Whether a time is spelled with its zone, which needs
    /// `date_time_input_format=best_effort`.
    pub fn needs_best_effort(&self) -> bool {
        self.columns
            .iter()
            .any(|(_, w)| *w == Write::Time(TimeFormat::IsoNanos))
    }

    /// The batch as `JSONEachRow`.
    pub fn encode(&self, events: &[AuditEvent]) -> Result<Vec<u8>, ExportError> {
        let estimate: usize = events
            .iter()
            .take(16)
            .map(|e| {
                800 + e.body.len() + (e.attributes.len() + e.resource_attributes.len()) * 5 / 4
            })
            .max()
            .unwrap_or(0);
        let mut out = Vec::with_capacity(estimate.saturating_mul(events.len()).min(1 << 30));
        for event in events {
            self.encode_row(event, &mut out).map_err(|e| {
                ExportError::permanent(
                    "data",
                    format!(
                        "event {}/{} ({}): {e}",
                        event.node, event.seq, event.event_id
                    ),
                )
            })?;
        }
        Ok(out)
    }

    fn encode_row(&self, e: &AuditEvent, out: &mut Vec<u8>) -> Result<(), String> {
        out.push(b'{');
        for (i, ((_, write), key)) in self.columns.iter().zip(&self.keys).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            match *write {
                Write::Field(field) => write_field(out, field, e),
                Write::Time(TimeFormat::Seconds)
                    if e.time_unix_nano / 1_000_000_000 > u64::from(u32::MAX) =>
                {
                    // A `DateTime` is 32-bit seconds: ClickHouse would store
                    // a later time wrapped around, silently wrong.
                    return Err(format!(
                        "time_unix_nano {} is past 2106-02-07T06:28:15Z, the end of the `DateTime` column's range",
                        e.time_unix_nano
                    ));
                }
                Write::Time(format) => write_time(out, e.time_unix_nano, format),
                Write::Map(field) => {
                    out.push(b'{');
                    write_map_entries(out, json_of(field, e), &[])
                        .map_err(|m| format!("`{}` {m}", field.name()))?;
                    out.push(b'}');
                }
                Write::JsonText(field) => write_str(out, json_of(field, e)),
                Write::SeverityU8 => {
                    let _ = write!(out, "{}", e.severity_number.clamp(0, 255));
                }
                Write::TraceFlagsU8 => {
                    let _ = write!(out, "{}", e.trace_flags & 0xff);
                }
                Write::Empty => out.extend_from_slice(b"\"\""),
                Write::EmptyMap => out.extend_from_slice(b"{}"),
                Write::LogAttributes => {
                    out.push(b'{');
                    let any = write_map_entries(out, &e.attributes, &LOG_ATTRIBUTE_KEYS)
                        .map_err(|m| format!("`attributes` {m}"))?;
                    if any {
                        out.push(b',');
                    }
                    let [node, seq, event_id, tenant] = LOG_ATTRIBUTE_KEYS;
                    write_str(out, node);
                    out.push(b':');
                    write_str(out, &e.node);
                    out.push(b',');
                    write_str(out, seq);
                    let _ = write!(out, ":\"{}\",", e.seq);
                    write_str(out, event_id);
                    out.push(b':');
                    write_str(out, &e.event_id);
                    out.push(b',');
                    write_str(out, tenant);
                    out.push(b':');
                    write_str(out, &e.tenant);
                    out.push(b'}');
                }
            }
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

fn json_of(field: Field, e: &AuditEvent) -> &str {
    match field {
        Field::ResourceAttributes => &e.resource_attributes,
        _ => &e.attributes,
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

fn write_field(out: &mut Vec<u8>, field: Field, e: &AuditEvent) {
    let hash = match field {
        Field::Hash => Some(&e.hash),
        Field::PrevHash => Some(&e.prev_hash),
        _ => None,
    };
    if let Some(hash) = hash {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(hash, &mut hex).expect("64 hex digits for 32 bytes");
        out.push(b'"');
        out.extend_from_slice(&hex);
        out.push(b'"');
        return;
    }
    match field.value(e) {
        Value::Str(s) | Value::Json(s) => write_str(out, s),
        Value::Owned(s) => write_str(out, &s),
        Value::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Time(ns) => write_time(out, ns, TimeFormat::Nanos),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

fn write_time(out: &mut Vec<u8>, unix_nano: u64, format: TimeFormat) {
    let format = match format {
        TimeFormat::Nanos => NANOS,
        TimeFormat::Seconds => SECONDS,
        TimeFormat::IsoNanos => ISO_NANOS,
    };
    out.push(b'"');
    utc(unix_nano)
        .format_into(out, format)
        .expect("a UTC time between 1970 and 2554 formats");
    out.push(b'"');
}

/// Writes the entries of the JSON object `json` as `"key":"value"` pairs
/// (no braces), leaving out `skip`; returns whether it wrote any. An empty
/// text is an empty object.
fn write_map_entries(out: &mut Vec<u8>, json: &str, skip: &[&str]) -> Result<bool, String> {
    if json.is_empty() {
        return Ok(false);
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let any = de
        .deserialize_map(MapWriter { out, skip })
        .and_then(|any| de.end().map(|()| any))
        .map_err(|e| format!("is not a JSON object: {e}"))?;
    Ok(any)
}

/// Streams a JSON object's entries into the output as string pairs.
struct MapWriter<'o> {
    out: &'o mut Vec<u8>,
    skip: &'o [&'o str],
}

impl<'de> Visitor<'de> for MapWriter<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut any = false;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if self.skip.contains(&key.as_ref()) {
                continue;
            }
            if any {
                self.out.push(b',');
            }
            any = true;
            write_str(self.out, &key);
            self.out.push(b':');
            let raw = value.get();
            if raw.starts_with('"') {
                // A JSON string is already the JSON string ClickHouse wants.
                self.out.extend_from_slice(raw.as_bytes());
            } else {
                // A number, bool, null, array or object: its JSON text.
                write_str(self.out, raw);
            }
        }
        Ok(any)
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// At most this many UTC days of `time` go into one INSERT.
///
/// ClickHouse refuses an INSERT that touches more than
/// `max_partitions_per_insert_block` partitions (100 by default since
/// 19.x), and the tables partition by the sender's clock (`time`: by month
/// in `auditrail`, by day in `otel_logs`), so a backfill, or one request
/// with records stamped over years, would fail as a whole, every time. 50
/// UTC days touch at most 100 partitions under any daily or coarser
/// partitioning, in any time zone (a UTC day spans two local days at most).
pub(super) const MAX_DAYS_PER_INSERT: usize = 50;

const DAY_NANOS: u64 = 86_400 * 1_000_000_000;

/// `events` cut into INSERTs of at most [`MAX_DAYS_PER_INSERT`] UTC days
/// each, days in order, events in seq order within each; one piece, the
/// batch itself, in the usual case. The cut depends only on the events, so
/// a retried batch is cut the same way and each piece keeps its token.
pub(super) fn split_by_day(events: &[AuditEvent]) -> Vec<Cow<'_, [AuditEvent]>> {
    let day = |e: &AuditEvent| e.time_unix_nano / DAY_NANOS;
    let days: BTreeSet<u64> = events.iter().map(day).collect();
    if days.len() <= MAX_DAYS_PER_INSERT {
        return vec![Cow::Borrowed(events)];
    }
    // The first day of each piece.
    let starts: Vec<u64> = days.iter().copied().step_by(MAX_DAYS_PER_INSERT).collect();
    let mut pieces: Vec<Vec<AuditEvent>> = vec![Vec::new(); starts.len()];
    for event in events {
        let piece = starts.partition_point(|start| *start <= day(event)) - 1;
        pieces[piece].push(event.clone());
    }
    pieces.into_iter().map(Cow::Owned).collect()
}

/// The `insert_deduplication_token` of a batch:
/// `{node}:{first_seq}-{last_seq}:{count}:{hash}`, where the hash (64-bit
/// FNV-1a, stable across versions and restarts) covers every seq of the
/// batch. Batches are not always contiguous (after a poison record was
/// split out, or a dead-letter replay), so the first and last seq alone
/// could name two different sets; the count and hash make the token name
/// the exact set, and a retry of the same set gets the same token.
pub(super) fn dedup_token(events: &[AuditEvent]) -> String {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return String::new();
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for event in events {
        if event.node != first.node {
            // Not expected (one spool, one node), but then the set differs.
            eat(event.node.as_bytes());
            eat(&[0xff]);
        }
        eat(&event.seq.to_le_bytes());
    }
    format!(
        "{}:{}-{}:{}:{hash:016x}",
        first.node,
        first.seq,
        last.seq,
        events.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_over_many_days_are_cut_into_inserts_of_50_days() {
        let at = |seq: u64, day: u64| AuditEvent {
            seq,
            time_unix_nano: day * DAY_NANOS + seq,
            ..AuditEvent::default()
        };
        let few: Vec<AuditEvent> = (1..=500).map(|s| at(s, s % 50)).collect();
        let pieces = split_by_day(&few);
        assert_eq!(pieces.len(), 1);
        assert!(matches!(pieces[0], Cow::Borrowed(_)));

        // 120 days, out of order (a backfill interleaved with live events).
        let many: Vec<AuditEvent> = (1..=240).map(|s| at(s, (s * 7) % 120)).collect();
        let pieces = split_by_day(&many);
        assert_eq!(pieces.len(), 3);
        let mut seen = BTreeSet::new();
        for piece in &pieces {
            let days: BTreeSet<u64> = piece.iter().map(|e| e.time_unix_nano / DAY_NANOS).collect();
            assert!(days.len() <= MAX_DAYS_PER_INSERT, "{days:?}");
            assert!(piece.windows(2).all(|w| w[0].seq < w[1].seq), "seq order");
            seen.extend(piece.iter().map(|e| e.seq));
        }
        assert_eq!(seen, (1..=240).collect(), "every event once");
        let tokens: BTreeSet<String> = pieces.iter().map(|p| dedup_token(p)).collect();
        assert_eq!(tokens.len(), 3, "each insert names its own set");
        let again: Vec<String> = split_by_day(&many).iter().map(|p| dedup_token(p)).collect();
        assert_eq!(
            again.into_iter().collect::<BTreeSet<_>>(),
            tokens,
            "a retry cuts the same way"
        );
    }
    use auditrail_model::Outcome;

    fn event(seq: u64) -> AuditEvent {
        AuditEvent {
            node: "node-a".into(),
            seq,
            event_id: format!("id-{seq}"),
            time_unix_nano: 1_704_164_645_123_456_789,
            tenant: "acme".into(),
            service_name: "image-ui".into(),
            event_name: "image.generate".into(),
            severity_number: 9,
            severity_text: "INFO".into(),
            outcome: Outcome::Success,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            trace_flags: 0x101,
            body: "generated \"cat\"".into(),
            attributes: r#"{"audit.outcome":"success","auditrail.seq":"forged","duration_ms":1200,"k\"ey":"v\u00e9","ok":true,"tags":["a","b"],"x":null}"#.into(),
            resource_attributes: r#"{"service.name":"image-ui"}"#.into(),
            hash: [0xab; 32],
            ..AuditEvent::default()
        }
    }

    fn row(plan: &Plan, e: &AuditEvent) -> serde_json::Value {
        let bytes = plan.encode(std::slice::from_ref(e)).unwrap();
        assert!(bytes.ends_with(b"}\n"));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn canonical_rows_have_every_field() {
        let plan = Plan::new(
            Field::ALL
                .into_iter()
                .map(|f| {
                    let write = match f {
                        Field::Time => Write::Time(TimeFormat::Nanos),
                        Field::Attributes | Field::ResourceAttributes => Write::Map(f),
                        _ => Write::Field(f),
                    };
                    (f.name().to_owned(), write)
                })
                .collect(),
        );
        let row = row(&plan, &event(7));
        assert_eq!(row["node"], "node-a");
        assert_eq!(row["seq"], 7);
        assert_eq!(row["time"], "2024-01-02 03:04:05.123456789");
        assert_eq!(row["time_unix_nano"], 1_704_164_645_123_456_789u64);
        assert_eq!(row["severity_number"], 9);
        assert_eq!(row["trace_flags"], 0x101);
        assert_eq!(row["outcome"], "success");
        assert_eq!(row["body"], "generated \"cat\"");
        assert_eq!(row["hash"], "ab".repeat(32));
        assert_eq!(row["prev_hash"], "00".repeat(32));
        assert_eq!(
            row["attributes"],
            serde_json::json!({
                "audit.outcome": "success",
                "auditrail.seq": "forged",
                "duration_ms": "1200",
                "k\"ey": "vé",
                "ok": "true",
                "tags": "[\"a\",\"b\"]",
                "x": "null",
            })
        );
        assert_eq!(
            row["resource_attributes"],
            serde_json::json!({"service.name": "image-ui"})
        );
        assert_eq!(row.as_object().unwrap().len(), 26);
    }

    #[test]
    fn legacy_rows_keep_json_text_and_whole_seconds() {
        let plan = Plan::new(vec![
            ("time".into(), Write::Time(TimeFormat::Seconds)),
            ("attributes".into(), Write::JsonText(Field::Attributes)),
        ]);
        let e = event(1);
        let row = row(&plan, &e);
        assert_eq!(row["time"], "2024-01-02 03:04:05");
        assert_eq!(row["attributes"], e.attributes.as_str());
    }

    #[test]
    fn a_time_past_the_datetime_range_is_refused_not_wrapped() {
        let plan = Plan::new(vec![("time".into(), Write::Time(TimeFormat::Seconds))]);
        let mut e = event(1);
        // 2554: fits u64 nanoseconds, not a 32-bit DateTime.
        e.time_unix_nano = 18_446_744_000_000_000_000;
        let error = plan.encode(&[e]).unwrap_err();
        assert_eq!(error.class, crate::ErrorClass::Permanent);
        assert!(error.message.contains("past 2106-02-07"), "{error}");
        let mut e = event(2);
        e.time_unix_nano = u64::from(u32::MAX) * 1_000_000_000;
        assert!(
            plan.encode(&[e]).is_ok(),
            "the last second of the range fits"
        );
    }

    #[test]
    fn otel_rows_narrow_ints_and_identify_the_event() {
        let plan = Plan::new(vec![
            ("Timestamp".into(), Write::Time(TimeFormat::IsoNanos)),
            ("SeverityNumber".into(), Write::SeverityU8),
            ("TraceFlags".into(), Write::TraceFlagsU8),
            ("ScopeVersion".into(), Write::Empty),
            ("ScopeAttributes".into(), Write::EmptyMap),
            ("LogAttributes".into(), Write::LogAttributes),
        ]);
        assert!(plan.needs_best_effort());
        let mut e = event(42);
        e.severity_number = 300;
        let row = row(&plan, &e);
        assert_eq!(row["Timestamp"], "2024-01-02T03:04:05.123456789Z");
        assert_eq!(row["SeverityNumber"], 255);
        assert_eq!(row["TraceFlags"], 1);
        assert_eq!(row["ScopeVersion"], "");
        assert_eq!(row["ScopeAttributes"], serde_json::json!({}));
        let attrs = &row["LogAttributes"];
        assert_eq!(
            attrs["auditrail.seq"], "42",
            "the client's value is replaced"
        );
        assert_eq!(attrs["auditrail.node"], "node-a");
        assert_eq!(attrs["auditrail.event_id"], "id-42");
        assert_eq!(attrs["auditrail.tenant"], "acme");
        assert_eq!(attrs["duration_ms"], "1200");
        assert_eq!(attrs.as_object().unwrap().len(), 10);

        // No attributes at all.
        let mut bare = event(1);
        bare.attributes = String::new();
        let attrs = row_of(&plan, &bare);
        assert_eq!(attrs.as_object().unwrap().len(), 4);
    }

    fn row_of(plan: &Plan, e: &AuditEvent) -> serde_json::Value {
        row(plan, e)["LogAttributes"].clone()
    }

    #[test]
    fn broken_attributes_blame_the_event() {
        let plan = Plan::new(vec![("attributes".into(), Write::Map(Field::Attributes))]);
        for bad in ["[1,2]", "{\"a\":1", "{\"a\":1} x", "nope"] {
            let mut e = event(3);
            e.attributes = bad.into();
            let error = plan.encode(&[event(2), e]).unwrap_err();
            assert_eq!(error.class, crate::ErrorClass::Permanent, "{bad}");
            assert!(error.message.contains("node-a/3"), "{}", error.message);
        }
    }

    #[test]
    fn tokens_name_the_exact_set() {
        let batch: Vec<_> = (10..20).map(event).collect();
        let token = dedup_token(&batch);
        assert!(token.starts_with("node-a:10-19:10:"), "{token}");
        assert_eq!(
            token,
            dedup_token(&batch.clone()),
            "a retry has the same token"
        );
        // Same node, first and last seq and count, but another set.
        let a: Vec<_> = [10, 12, 13, 21].into_iter().map(event).collect();
        let b: Vec<_> = [10, 11, 13, 21].into_iter().map(event).collect();
        assert!(dedup_token(&a).starts_with("node-a:10-21:4:"));
        assert_ne!(dedup_token(&a), dedup_token(&b));
        // Another node's events with the same seqs.
        let mut other = batch.clone();
        other.iter_mut().for_each(|e| e.node = "node-b".into());
        assert!(dedup_token(&other).starts_with("node-b:"));
        assert_eq!(dedup_token(&[]), "");
    }
}
