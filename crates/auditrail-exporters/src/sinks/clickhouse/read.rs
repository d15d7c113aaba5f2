//! Reading the canonical table back, for `auditrail verify --sink`: rows
//! rebuilt into events whose canonical bytes are the ones the spool hashed.
//!
//! Every column but `time` is read as JSON (`FORMAT JSONEachRow`): strings
//! as the strings they are, numbers as their text (quoted or not). The
//! attribute columns are exact on the legacy mapping (`String`: the
//! canonical JSON text). The modern mapping's `Map(String, String)` keeps
//! the keys, their order (sorted, as written) and each value's text, but
//! not whether a value was a JSON string: `{"n":1200}` and `{"n":"1200"}`
//! are both stored as `n → 1200`. [`rebuild`] reads each value that is
//! JSON text (a number, `true`, `null`, an array...) as that JSON first,
//! and when the event then does not hash to its stored `hash`, tries the
//! other readings of those values, fewest changes first, up to
//! [`MAX_READINGS`]. Choosing among readings of the same stored row proves
//! nothing false: a row whose content changed matches no reading, and a
//! row whose `hash` was recomputed too still has to match the signed tree.

use std::collections::BTreeMap;

use auditrail_integrity::audit::moved_from;
use auditrail_model::{chain_hash, AuditEvent};
use serde_json::value::RawValue;

use crate::fields::Field;
use crate::ExportError;

/// Most readings of a row's map values tried before it is taken as read
/// first (and so, when it matched none, reported as modified).
pub(super) const MAX_READINGS: usize = 4096;

/// Of those, how many are also tried as the event of a nearby seq (a row
/// that holds another row's content, which `verify` names as moved).
const MAX_MOVED_READINGS: usize = 64;

/// One stored row (a line of `JSONEachRow`) rebuilt into an event.
pub(super) fn row_event(line: &str) -> Result<AuditEvent, ExportError> {
    let bad = |m: String| ExportError::permanent("read_back", m);
    let row: BTreeMap<String, &RawValue> = serde_json::from_str(line)
        .map_err(|e| bad(format!("a row that is not a JSON object ({e}): {line}")))?;
    let mut event = AuditEvent::default();
    let mut maps = Vec::new();
    for field in Field::stored() {
        let raw = row
            .get(field.name())
            .ok_or_else(|| bad(format!("no column `{}` in {line}", field.name())))?
            .get();
        let is_json_field = matches!(field, Field::Attributes | Field::ResourceAttributes);
        if is_json_field && raw.starts_with('{') {
            maps.push((field, map_entries(raw).map_err(bad)?));
            continue;
        }
        let text = if raw.starts_with('"') {
            serde_json::from_str::<String>(raw).map_err(|e| bad(e.to_string()))?
        } else {
            raw.to_owned()
        };
        field.set(&mut event, text).map_err(bad)?;
    }
    Ok(rebuild(event, &maps))
}

/// The entries of a `Map(String, String)` as JSON output shows it, in order.
fn map_entries(raw: &str) -> Result<Vec<(String, String)>, String> {
    // A Vec of pairs keeps the stored order (and a duplicate key, which
    // the canonical JSON never has, as a difference).
    struct Entries(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map of strings")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Entries, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry::<String, String>()? {
                        out.push(entry);
                    }
                    Ok(Entries(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Entries>(raw)
        .map(|e| e.0)
        .map_err(|e| format!("a map column that is not a map of strings ({e}): {raw}"))
}

/// Whether a map value can be the JSON text of a value that was not a
/// string (the canonical JSON writes those compactly, never quoted).
fn reads_as_json(value: &str) -> bool {
    !value.starts_with('"')
        && value.trim() == value
        && !value.is_empty()
        && serde_json::from_str::<serde::de::IgnoredAny>(value).is_ok()
}

/// The canonical JSON object of `entries`, each value as JSON text where
/// `as_json` says so and as a string otherwise.
fn object(entries: &[(String, String)], mut as_json: impl FnMut(usize) -> bool) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).expect("a string serializes"));
        out.push(':');
        if as_json(i) {
            out.push_str(value);
        } else {
            out.push_str(&serde_json::to_string(value).expect("a string serializes"));
        }
    }
    out.push('}');
    out
}

/// `event` with its map fields set to the reading that hashes to its
/// stored `hash` (see the module docs); the first reading when none does.
pub(super) fn rebuild(
    mut event: AuditEvent,
    maps: &[(Field, Vec<(String, String)>)],
) -> AuditEvent {
    // Every value that may have been JSON, as (map, entry).
    let ambiguous: Vec<(usize, usize)> = maps
        .iter()
        .enumerate()
        .flat_map(|(m, (_, entries))| {
            entries
                .iter()
                .enumerate()
                .filter(|(_, (_, v))| reads_as_json(v))
                .map(move |(e, _)| (m, e))
        })
        .collect();
    let set = |event: &mut AuditEvent, flipped: &[usize]| {
        for (m, (field, entries)) in maps.iter().enumerate() {
            let text = object(entries, |e| {
                ambiguous
                    .iter()
                    .position(|p| *p == (m, e))
                    .is_some_and(|i| !flipped.contains(&i))
            });
            field.set(event, text).expect("a JSON field takes any text");
        }
    };
    set(&mut event, &[]);
    if ambiguous.is_empty() {
        return event;
    }
    // As the event of its own seq, then (fewer readings) as one moved here.
    let own = |e: &AuditEvent| chain_hash(&e.prev_hash, &e.canonical_bytes()) == e.hash;
    let moved = |e: &AuditEvent| moved_from(e.clone(), e.prev_hash, e.hash).is_some();
    for (matches, most) in [
        (&own as &dyn Fn(&AuditEvent) -> bool, MAX_READINGS),
        (&moved, MAX_MOVED_READINGS),
    ] {
        let mut candidate = event.clone();
        let mut readings = Readings::new(ambiguous.len()).take(most);
        if let Some(found) = readings.find(|flipped| {
            set(&mut candidate, flipped);
            matches(&candidate)
        }) {
            set(&mut candidate, &found);
            return candidate;
        }
    }
    event
}

/// Which ambiguous values to read as strings: none first, then each one,
/// each two... (fewest changes first).
struct Readings {
    n: usize,
    next: Option<Vec<usize>>,
}

impl Readings {
    fn new(n: usize) -> Readings {
        Readings {
            n,
            next: Some(Vec::new()),
        }
    }
}

impl Iterator for Readings {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let current = self.next.take()?;
        let mut following = current.clone();
        if !next_combination(&mut following, self.n) {
            let k = following.len() + 1;
            following = (0..k).collect();
        }
        if following.len() <= self.n {
            self.next = Some(following);
        }
        Some(current)
    }
}

/// Advances `c` (k sorted indexes below `n`) to the next k-combination;
/// false after the last.
fn next_combination(c: &mut [usize], n: usize) -> bool {
    let k = c.len();
    for i in (0..k).rev() {
        if c[i] < n - k + i {
            c[i] += 1;
            for j in i + 1..k {
                c[j] = c[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chained(attributes: &str) -> AuditEvent {
        let mut e = AuditEvent {
            node: "n1".into(),
            seq: 3,
            event_id: "e-3".into(),
            body: "generated".into(),
            attributes: attributes.into(),
            resource_attributes: r#"{"service.name":"ui"}"#.into(),
            prev_hash: [7; 32],
            ..AuditEvent::default()
        };
        e.hash = chain_hash(&e.prev_hash, &e.canonical_bytes());
        e
    }

    /// The row the modern mapping stores for `e`, as the server shows it
    /// in `JSONEachRow` and `row_event` reads it: maps with string values
    /// (non-string attribute values as their JSON text).
    fn stored(e: &AuditEvent) -> AuditEvent {
        use crate::fields::Value;
        let row: serde_json::Map<String, serde_json::Value> = Field::stored()
            .map(|f| {
                let value = match f.value(e) {
                    Value::Json(text) => {
                        let object: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(text).unwrap();
                        object
                            .into_iter()
                            .map(|(k, v)| match v {
                                serde_json::Value::String(s) => (k, s.into()),
                                other => (k, other.to_string().into()),
                            })
                            .collect::<serde_json::Map<_, _>>()
                            .into()
                    }
                    Value::Str(s) => s.into(),
                    Value::Owned(s) => s.into(),
                    Value::U64(n) => n.into(),
                    Value::I64(n) => n.into(),
                    Value::Time(n) => n.into(),
                    Value::Null => serde_json::Value::Null,
                };
                (f.name().to_owned(), value)
            })
            .collect();
        row_event(&serde_json::Value::from(row).to_string()).unwrap()
    }

    #[test]
    fn map_rows_read_back_to_the_canonical_json() {
        for attributes in [
            r#"{"a":"x","n":1200,"ok":true,"tags":["a","b"],"z":null}"#,
            // Strings that read as JSON: found by the hash.
            r#"{"code":"200","n":1200,"s":"true"}"#,
            r#"{"k\"ey":"vé","list":"[1,2]","nested":{"a":"x","b":1.5}}"#,
            "{}",
        ] {
            let e = chained(attributes);
            assert_eq!(stored(&e), e, "{attributes}");
        }
    }

    #[test]
    fn a_changed_map_value_matches_no_reading() {
        let e = chained(r#"{"code":"200","n":1200}"#);
        let mut changed = e.clone();
        changed.attributes = r#"{"code":"201","n":1200}"#.into();
        // Stored with the original hashes: what an edit of the row leaves.
        changed.hash = e.hash;
        let read = stored(&changed);
        assert_ne!(
            chain_hash(&read.prev_hash, &read.canonical_bytes()),
            read.hash
        );
        assert_eq!(
            read.attributes, r#"{"code":201,"n":1200}"#,
            "the first reading"
        );
    }

    #[test]
    fn legacy_rows_are_exact_text_and_numbers_may_be_quoted() {
        let e = chained(r#"{"n":1}"#);
        let line = format!(
            r#"{{"node":"n1","seq":"3","event_id":"e-3","time_unix_nano":"0","observed_time_unix_nano":"0","received_time_unix_nano":"0","tenant":"","service_name":"","event_name":"","severity_number":0,"severity_text":"","actor_id":"","actor_name":"","client_address":"","outcome":"unknown","target":"","trace_id":"","span_id":"","trace_flags":0,"body":"generated","attributes":"{{\"n\":1}}","resource_attributes":"{{\"service.name\":\"ui\"}}","scope_name":"","prev_hash":"{}","hash":"{}"}}"#,
            hex::encode(e.prev_hash),
            hex::encode(e.hash)
        );
        assert_eq!(row_event(&line).unwrap(), e);
        assert!(row_event("{\"node\":\"n1\"}").is_err());
    }

    #[test]
    fn a_row_holding_another_seqs_event_is_read_as_that_event() {
        let e = chained(r#"{"code":"200","n":1200}"#);
        // Seq 4's row holds seq 3's event, its hashes too (swapped rows).
        let mut moved = e.clone();
        moved.seq = 4;
        let read = stored(&moved);
        assert_eq!(read.attributes, e.attributes);
        assert_eq!(moved_from(read.clone(), read.prev_hash, read.hash), Some(3));
    }

    #[test]
    fn readings_go_from_fewest_changes_to_all() {
        let all: Vec<Vec<usize>> = Readings::new(3).collect();
        assert_eq!(all.len(), 8);
        assert_eq!(all[0], Vec::<usize>::new());
        assert_eq!(all[1], [0]);
        assert_eq!(all[7], [0, 1, 2]);
        assert_eq!(Readings::new(0).count(), 1);
    }

    #[test]
    fn combinations_cover_every_subset_of_a_size() {
        let mut c = vec![0, 1];
        let mut all = vec![c.clone()];
        while next_combination(&mut c, 4) {
            all.push(c.clone());
        }
        assert_eq!(all.len(), 6);
        assert_eq!(all.last().unwrap(), &vec![2, 3]);
    }
}
