//! Rows as `RowBinary`: each column's value in its binary form (strings
//! and maps length-prefixed, numbers little-endian), in the order of the
//! INSERT's column list, written straight into one buffer per batch; and
//! the deduplication token that names a batch.
//!
//! RowBinary rather than `JSONEachRow`: it is cheaper to write (no
//! escaping, no number or date formatting) and far cheaper for the server
//! to read, on 18.16 as on current servers (docs/benchmarks.md, issue 12).
//! The server no longer parses text, so what it used to refuse while
//! parsing (a time outside the column's range) is refused here instead,
//! naming the event, and the delivery loop dead-letters it as before.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use auditrail_model::AuditEvent;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::quote_ident;
use crate::fields::Field;
use crate::ExportError;

/// How the event time is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeFormat {
    /// `DateTime64(9)`: nanoseconds since the epoch as an Int64, whatever
    /// the column's time zone (which only changes how it is shown).
    Nanos,
    /// `DateTime` (18.x has no DateTime64): whole seconds as a UInt32.
    Seconds,
}

/// What one column receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// A canonical string or number field as it is, in the type of the
    /// canonical table's column (`schema::canonical_type`).
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
}

/// The last second a `DateTime` (UInt32 seconds) holds: 2106-02-07T06:28:15Z.
const DATETIME_MAX_NANOS: u64 = (u32::MAX as u64) * 1_000_000_000 + 999_999_999;
/// The last instant a `DateTime64(9)` (Int64 nanoseconds) holds:
/// 2262-04-11T23:47:16.854775807Z.
const DATETIME64_MAX_NANOS: u64 = i64::MAX as u64;

impl Plan {
    pub fn new(columns: Vec<(String, Write)>) -> Plan {
        Plan { columns }
    }

    #[cfg(test)]
    pub fn columns(&self) -> &[(String, Write)] {
        &self.columns
    }

    /// `INSERT INTO db.table (columns) FORMAT RowBinary`.
    pub fn insert_sql(&self, database: &str, table: &str) -> String {
        let names: Vec<String> = self.columns.iter().map(|(c, _)| quote_ident(c)).collect();
        format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinary",
            quote_ident(database),
            quote_ident(table),
            names.join(", ")
        )
    }

    /// The batch as `RowBinary`, handed to `emit` in pieces of about
    /// `chunk` bytes (whole rows), so that a compressor can take them while
    /// they are still in cache and no buffer of the whole batch is needed.
    /// An event that cannot be stored fails the batch, naming it.
    pub fn encode(
        &self,
        events: &[AuditEvent],
        chunk: usize,
        mut emit: impl FnMut(&[u8]),
    ) -> Result<(), ExportError> {
        let mut out = Vec::with_capacity(chunk + (64 << 10));
        let mut scratch = Vec::new();
        for event in events {
            self.encode_row(event, &mut out, &mut scratch)
                .map_err(|e| {
                    ExportError::permanent(
                        "data",
                        format!(
                            "event {}/{} ({}): {e}",
                            event.node, event.seq, event.event_id
                        ),
                    )
                })?;
            if out.len() >= chunk {
                emit(&out);
                out.clear();
            }
        }
        if !out.is_empty() {
            emit(&out);
        }
        Ok(())
    }

    /// The whole batch in one buffer.
    #[cfg(test)]
    pub fn encode_all(&self, events: &[AuditEvent]) -> Result<Vec<u8>, ExportError> {
        let mut all = Vec::new();
        self.encode(events, 1 << 20, |piece| all.extend_from_slice(piece))?;
        Ok(all)
    }

    /// One row; `scratch` holds a map's entries until they are counted.
    fn encode_row(
        &self,
        e: &AuditEvent,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), String> {
        for (_, write) in &self.columns {
            match *write {
                Write::Field(field) => write_field(out, field, e),
                Write::Time(TimeFormat::Seconds) => {
                    if e.time_unix_nano > DATETIME_MAX_NANOS {
                        // ClickHouse would store a later time wrapped
                        // around, silently wrong.
                        return Err(format!(
                            "time_unix_nano {} is past 2106-02-07T06:28:15Z, the end of the `DateTime` column's range",
                            e.time_unix_nano
                        ));
                    }
                    let seconds = (e.time_unix_nano / 1_000_000_000) as u32;
                    out.extend_from_slice(&seconds.to_le_bytes());
                }
                Write::Time(TimeFormat::Nanos) => {
                    if e.time_unix_nano > DATETIME64_MAX_NANOS {
                        // As a negative Int64 it would be stored as a time
                        // before 1970.
                        return Err(format!(
                            "time_unix_nano {} is past 2262-04-11T23:47:16Z, the end of the `DateTime64(9)` column's range",
                            e.time_unix_nano
                        ));
                    }
                    out.extend_from_slice(&(e.time_unix_nano as i64).to_le_bytes());
                }
                Write::Map(field) => {
                    let entries = map_entries(scratch, json_of(field, e), &[])
                        .map_err(|m| format!("`{}` {m}", field.name()))?;
                    write_varint(out, entries);
                    out.extend_from_slice(scratch);
                }
                Write::JsonText(field) => write_str(out, json_of(field, e)),
                Write::SeverityU8 => out.push(e.severity_number.clamp(0, 255) as u8),
                Write::TraceFlagsU8 => out.push((e.trace_flags & 0xff) as u8),
                Write::Empty | Write::EmptyMap => write_varint(out, 0),
                Write::LogAttributes => {
                    let entries = map_entries(scratch, &e.attributes, &LOG_ATTRIBUTE_KEYS)
                        .map_err(|m| format!("`attributes` {m}"))?;
                    write_varint(out, entries + LOG_ATTRIBUTE_KEYS.len() as u64);
                    out.extend_from_slice(scratch);
                    let [node, seq, event_id, tenant] = LOG_ATTRIBUTE_KEYS;
                    let mut digits = [0u8; 20];
                    for (key, value) in [
                        (node, e.node.as_str()),
                        (seq, decimal(e.seq, &mut digits)),
                        (event_id, e.event_id.as_str()),
                        (tenant, e.tenant.as_str()),
                    ] {
                        write_str(out, key);
                        write_str(out, value);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `n` in decimal, in `digits` (no allocation per row).
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &str {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[at..]).expect("ASCII digits")
}

fn json_of(field: Field, e: &AuditEvent) -> &str {
    match field {
        Field::ResourceAttributes => &e.resource_attributes,
        _ => &e.attributes,
    }
}

/// An unsigned LEB128 number: how RowBinary prefixes a string's length and
/// a map's (an array's) number of entries.
fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A `String`: its length, then its bytes.
fn write_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A canonical field in its column's type (`schema::canonical_type`):
/// UInt64, Int32, UInt32 or String; the hashes as hex.
fn write_field(out: &mut Vec<u8>, field: Field, e: &AuditEvent) {
    let text: &str = match field {
        Field::Seq => return out.extend_from_slice(&e.seq.to_le_bytes()),
        Field::TimeUnixNano => return out.extend_from_slice(&e.time_unix_nano.to_le_bytes()),
        Field::ObservedTimeUnixNano => {
            return out.extend_from_slice(&e.observed_time_unix_nano.to_le_bytes())
        }
        Field::ReceivedTimeUnixNano => {
            return out.extend_from_slice(&e.received_time_unix_nano.to_le_bytes())
        }
        Field::SeverityNumber => return out.extend_from_slice(&e.severity_number.to_le_bytes()),
        Field::TraceFlags => return out.extend_from_slice(&e.trace_flags.to_le_bytes()),
        // `time` is written by `Write::Time`, in the column's own type;
        // as a field it is its nanoseconds, as `DateTime64(9)` holds them.
        Field::Time => return out.extend_from_slice(&(e.time_unix_nano as i64).to_le_bytes()),
        Field::Hash | Field::PrevHash => {
            let hash = if field == Field::Hash {
                &e.hash
            } else {
                &e.prev_hash
            };
            let mut hex = [0u8; 64];
            hex::encode_to_slice(hash, &mut hex).expect("64 hex digits for 32 bytes");
            write_varint(out, 64);
            return out.extend_from_slice(&hex);
        }
        Field::Node => &e.node,
        Field::EventId => &e.event_id,
        Field::Tenant => &e.tenant,
        Field::ServiceName => &e.service_name,
        Field::EventName => &e.event_name,
        Field::SeverityText => &e.severity_text,
        Field::ActorId => &e.actor_id,
        Field::ActorName => &e.actor_name,
        Field::ClientAddress => &e.client_address,
        Field::Outcome => e.outcome.as_str(),
        Field::Target => &e.target,
        Field::TraceId => &e.trace_id,
        Field::SpanId => &e.span_id,
        Field::Body => &e.body,
        Field::Attributes => &e.attributes,
        Field::ResourceAttributes => &e.resource_attributes,
        Field::ScopeName => &e.scope_name,
    };
    write_str(out, text)
}

/// Writes the entries of the JSON object `json` into `scratch` (cleared
/// first) as key and value strings, leaving out `skip`; returns how many.
/// An empty text is an empty object.
fn map_entries(scratch: &mut Vec<u8>, json: &str, skip: &[&str]) -> Result<u64, String> {
    scratch.clear();
    if json.is_empty() {
        return Ok(0);
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(MapWriter { out: scratch, skip })
        .and_then(|n| de.end().map(|()| n))
        .map_err(|e| format!("is not a JSON object: {e}"))
}

/// Streams a JSON object's entries into the output as string pairs.
struct MapWriter<'o> {
    out: &'o mut Vec<u8>,
    skip: &'o [&'o str],
}

impl<'de> Visitor<'de> for MapWriter<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut entries = 0;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if self.skip.contains(&key.as_ref()) {
                continue;
            }
            entries += 1;
            write_str(self.out, &key);
            let raw = value.get();
            match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                // A JSON string without escapes is its own text.
                Some(text) if !text.contains('\\') => write_str(self.out, text),
                Some(_) => {
                    let text: String =
                        serde_json::from_str(raw).map_err(serde::de::Error::custom)?;
                    write_str(self.out, &text);
                }
                // A number, bool, null, array or object: its JSON text.
                None => write_str(self.out, raw),
            }
        }
        Ok(entries)
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

    /// Reads RowBinary back the way ClickHouse does, for the plan's types.
    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn bytes(&mut self, n: usize) -> &[u8] {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        }
        fn varint(&mut self) -> u64 {
            let (mut n, mut shift) = (0u64, 0);
            loop {
                let b = self.bytes(1)[0];
                n |= u64::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return n;
                }
                shift += 7;
            }
        }
        fn string(&mut self) -> String {
            let len = self.varint() as usize;
            String::from_utf8(self.bytes(len).to_vec()).unwrap()
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.bytes(8).try_into().unwrap())
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.bytes(4).try_into().unwrap())
        }
        fn map(&mut self) -> serde_json::Value {
            let n = self.varint();
            let mut map = serde_json::Map::new();
            for _ in 0..n {
                let key = self.string();
                let value = self.string();
                assert!(map.insert(key, value.into()).is_none(), "keys once");
            }
            map.into()
        }
        fn value(&mut self, write: Write) -> serde_json::Value {
            use serde_json::json;
            match write {
                Write::Field(field) => match field {
                    Field::Seq
                    | Field::TimeUnixNano
                    | Field::ObservedTimeUnixNano
                    | Field::ReceivedTimeUnixNano => json!(self.u64()),
                    Field::SeverityNumber => json!(self.u32() as i32),
                    Field::TraceFlags => json!(self.u32()),
                    Field::Time => json!(self.u64() as i64),
                    _ => json!(self.string()),
                },
                Write::Time(TimeFormat::Nanos) => json!(self.u64() as i64),
                Write::Time(TimeFormat::Seconds) => json!(self.u32()),
                Write::Map(_) | Write::EmptyMap | Write::LogAttributes => self.map(),
                Write::JsonText(_) | Write::Empty => json!(self.string()),
                Write::SeverityU8 | Write::TraceFlagsU8 => json!(self.bytes(1)[0]),
            }
        }
    }

    /// Every row of `bytes` as a JSON object by column name.
    fn rows(plan: &Plan, bytes: &[u8]) -> Vec<serde_json::Value> {
        let mut reader = Reader(bytes);
        let mut rows = Vec::new();
        while !reader.0.is_empty() {
            let row: serde_json::Map<_, _> = plan
                .columns()
                .iter()
                .map(|(name, write)| (name.clone(), reader.value(*write)))
                .collect();
            rows.push(row.into());
        }
        rows
    }

    fn row(plan: &Plan, e: &AuditEvent) -> serde_json::Value {
        let bytes = plan.encode_all(std::slice::from_ref(e)).unwrap();
        let mut rows = rows(plan, &bytes);
        assert_eq!(rows.len(), 1, "exactly one row's bytes");
        rows.remove(0)
    }

    fn canonical_plan() -> Plan {
        Plan::new(
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
        )
    }

    #[test]
    fn canonical_rows_have_every_field() {
        let plan = canonical_plan();
        let mut e = event(7);
        e.severity_number = -3;
        let row = row(&plan, &e);
        assert_eq!(row["node"], "node-a");
        assert_eq!(row["seq"], 7);
        assert_eq!(row["time"], 1_704_164_645_123_456_789i64);
        assert_eq!(row["time_unix_nano"], 1_704_164_645_123_456_789u64);
        assert_eq!(row["severity_number"], -3);
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
    fn long_strings_get_multi_byte_lengths_and_chunks_hold_whole_rows() {
        let plan = canonical_plan();
        let batch: Vec<AuditEvent> = (1..=40)
            .map(|seq| {
                let mut e = event(seq);
                // 1 byte of length up to 127, 2 up to 16,383, 3 beyond.
                e.body = "b".repeat([0, 127, 128, 16_383, 16_384, 100_000][seq as usize % 6]);
                e
            })
            .collect();
        let mut pieces = Vec::new();
        plan.encode(&batch, 4096, |piece| pieces.push(piece.to_vec()))
            .unwrap();
        assert!(pieces.len() > 1, "{} pieces", pieces.len());
        let mut seqs = Vec::new();
        for piece in &pieces {
            // Each piece stands alone: rows are never cut between pieces.
            for row in rows(&plan, piece) {
                let seq = row["seq"].as_u64().unwrap();
                let want = [0, 127, 128, 16_383, 16_384, 100_000][seq as usize % 6];
                assert_eq!(row["body"].as_str().unwrap().len(), want, "seq {seq}");
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn legacy_rows_keep_json_text_and_whole_seconds() {
        let plan = Plan::new(vec![
            ("time".into(), Write::Time(TimeFormat::Seconds)),
            ("attributes".into(), Write::JsonText(Field::Attributes)),
        ]);
        let e = event(1);
        let row = row(&plan, &e);
        assert_eq!(row["time"], 1_704_164_645);
        assert_eq!(row["attributes"], e.attributes.as_str());
    }

    #[test]
    fn a_time_past_the_column_range_is_refused_not_wrapped() {
        let seconds = Plan::new(vec![("time".into(), Write::Time(TimeFormat::Seconds))]);
        let nanos = Plan::new(vec![("time".into(), Write::Time(TimeFormat::Nanos))]);
        let at = |seq, time_unix_nano| AuditEvent {
            time_unix_nano,
            ..event(seq)
        };
        // 2554: fits u64 nanoseconds, not a 32-bit DateTime.
        let error = seconds
            .encode_all(&[at(1, 18_446_744_000_000_000_000)])
            .unwrap_err();
        assert_eq!(error.class, crate::ErrorClass::Permanent);
        assert!(error.message.contains("past 2106-02-07"), "{error}");
        assert!(error.message.contains("node-a/1"), "{error}");
        let last = u64::from(u32::MAX) * 1_000_000_000 + 999_999_999;
        let bytes = seconds.encode_all(&[at(2, last)]).unwrap();
        assert_eq!(bytes, u32::MAX.to_le_bytes(), "the last second fits");
        assert!(seconds.encode_all(&[at(3, last + 1)]).is_err());

        // A DateTime64(9) ends in 2262: past it the Int64 would be negative.
        let error = nanos.encode_all(&[at(4, i64::MAX as u64 + 1)]).unwrap_err();
        assert_eq!(error.class, crate::ErrorClass::Permanent);
        assert!(error.message.contains("past 2262-04-11"), "{error}");
        let bytes = nanos.encode_all(&[at(5, i64::MAX as u64)]).unwrap();
        assert_eq!(bytes, i64::MAX.to_le_bytes());
    }

    #[test]
    fn otel_rows_narrow_ints_and_identify_the_event() {
        let plan = Plan::new(vec![
            ("Timestamp".into(), Write::Time(TimeFormat::Nanos)),
            ("SeverityNumber".into(), Write::SeverityU8),
            ("TraceFlags".into(), Write::TraceFlagsU8),
            ("ScopeVersion".into(), Write::Empty),
            ("ScopeAttributes".into(), Write::EmptyMap),
            ("LogAttributes".into(), Write::LogAttributes),
        ]);
        let mut e = event(42);
        e.severity_number = 300;
        let otel = row(&plan, &e);
        assert_eq!(otel["Timestamp"], 1_704_164_645_123_456_789i64);
        assert_eq!(otel["SeverityNumber"], 255);
        assert_eq!(otel["TraceFlags"], 1);
        assert_eq!(otel["ScopeVersion"], "");
        assert_eq!(otel["ScopeAttributes"], serde_json::json!({}));
        let attrs = &otel["LogAttributes"];
        assert_eq!(
            attrs["auditrail.seq"], "42",
            "the client's value is replaced"
        );
        assert_eq!(attrs["auditrail.node"], "node-a");
        assert_eq!(attrs["auditrail.event_id"], "id-42");
        assert_eq!(attrs["auditrail.tenant"], "acme");
        assert_eq!(attrs["duration_ms"], "1200");
        assert_eq!(attrs.as_object().unwrap().len(), 10);

        // No attributes at all; a seq of many digits.
        let mut bare = event(18_446_744_073_709_551_615);
        bare.attributes = String::new();
        let attrs = row(&plan, &bare)["LogAttributes"].clone();
        assert_eq!(attrs.as_object().unwrap().len(), 4);
        assert_eq!(attrs["auditrail.seq"], "18446744073709551615");
        assert_eq!(row(&plan, &event(0))["LogAttributes"]["auditrail.seq"], "0");
    }

    #[test]
    fn broken_attributes_blame_the_event() {
        let plan = Plan::new(vec![("attributes".into(), Write::Map(Field::Attributes))]);
        for bad in [
            "[1,2]",
            "{\"a\":1",
            "{\"a\":1} x",
            "nope",
            "{\"a\":\"\\x\"}",
        ] {
            let mut e = event(3);
            e.attributes = bad.into();
            let error = plan.encode_all(&[event(2), e]).unwrap_err();
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
