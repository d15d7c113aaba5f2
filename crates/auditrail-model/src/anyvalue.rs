//! OTLP `AnyValue`s as canonical JSON.
//!
//! Attributes, resource attributes and non-string bodies are stored as JSON
//! text. The text must be byte-for-byte reproducible, because it is part of an
//! event's canonical bytes and therefore of the hash chain; so object keys are
//! sorted and every value kind has exactly one spelling:
//!
//! | AnyValue | JSON |
//! |---|---|
//! | string, bool | string, bool |
//! | int | number |
//! | double | number; NaN and ±infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | bytes | base64 string (standard alphabet, padded), as in OTLP/JSON |
//! | array | array |
//! | kvlist | object with sorted keys; of duplicate keys the last one wins |
//! | empty | null |
//! | string_value_strindex (profiles only) | number |

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};

/// Writes `pairs` as a JSON object with sorted keys.
pub fn key_values_to_json(pairs: &[KeyValue]) -> String {
    let mut out = Vec::with_capacity(64 + pairs.len() * 32);
    write_object(pairs, &mut out);
    into_string(out)
}

/// Writes a value as canonical JSON.
pub fn any_value_to_json(value: &AnyValue) -> String {
    let mut out = Vec::new();
    write_value(value.value.as_ref(), &mut out);
    into_string(out)
}

fn into_string(json: Vec<u8>) -> String {
    String::from_utf8(json).expect("JSON written from UTF-8 strings is UTF-8")
}

// The writers below work on bytes so that strings can be escaped straight
// into the output, without an allocation per string.
type Out = Vec<u8>;

fn push(out: &mut Out, text: &str) {
    out.extend_from_slice(text.as_bytes());
}

fn write_object(pairs: &[KeyValue], out: &mut Out) {
    let mut sorted: Vec<&KeyValue> = pairs.iter().collect();
    // A stable sort keeps the sender's order among equal keys, so "last wins"
    // below means the last one the sender wrote.
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    out.push(b'{');
    let mut first = true;
    for (i, kv) in sorted.iter().enumerate() {
        if sorted.get(i + 1).is_some_and(|next| next.key == kv.key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(&kv.key, out);
        out.push(b':');
        write_value(kv.value.as_ref().and_then(|v| v.value.as_ref()), out);
    }
    out.push(b'}');
}

fn write_value(value: Option<&Value>, out: &mut Out) {
    match value {
        None => push(out, "null"),
        Some(Value::StringValue(s)) => write_string(s, out),
        Some(Value::BoolValue(b)) => push(out, if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => push(out, &i.to_string()),
        Some(Value::DoubleValue(d)) => write_double(*d, out),
        Some(Value::BytesValue(bytes)) => write_string(
            &base64::engine::general_purpose::STANDARD.encode(bytes),
            out,
        ),
        Some(Value::ArrayValue(array)) => {
            out.push(b'[');
            for (i, item) in array.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item.value.as_ref(), out);
            }
            out.push(b']');
        }
        Some(Value::KvlistValue(list)) => write_object(&list.values, out),
        // An index into a profiles string table; logs have no such table, so
        // the index is all there is to keep.
        Some(Value::StringValueStrindex(index)) => push(out, &index.to_string()),
    }
}

fn write_double(d: f64, out: &mut Out) {
    if d.is_nan() {
        push(out, "\"NaN\"");
    } else if d.is_infinite() {
        push(
            out,
            if d > 0.0 {
                "\"Infinity\""
            } else {
                "\"-Infinity\""
            },
        );
    } else {
        // serde_json prints the shortest representation that round-trips.
        push(
            out,
            &serde_json::Number::from_f64(d).expect("finite").to_string(),
        );
    }
}

fn write_string(s: &str, out: &mut Out) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// Whether any scalar value (not key) inside the JSON text contains `needle`.
pub fn json_values_contain(json: &str, needle: &str) -> bool {
    fn walk(value: &serde_json::Value, needle: &str) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains(needle),
            serde_json::Value::Number(n) => n.to_string().contains(needle),
            serde_json::Value::Bool(b) => b.to_string().contains(needle),
            serde_json::Value::Null => false,
            serde_json::Value::Array(items) => items.iter().any(|v| walk(v, needle)),
            serde_json::Value::Object(map) => map.values().any(|v| walk(v, needle)),
        }
    }
    // Cheap rejection first: a value that contains the needle makes the raw
    // text contain it too (unless escaping split it, which the parse catches
    // only when the raw text also matches; needles with quotes or backslashes
    // take the slow path).
    let needs_escape = needle.contains(['"', '\\']) || needle.chars().any(char::is_control);
    if !needs_escape && !json.contains(needle) {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| walk(&v, needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            key_strindex: 0,
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    #[test]
    fn objects_are_sorted_and_last_duplicate_wins() {
        let json = key_values_to_json(&[
            kv("b", Value::IntValue(2)),
            kv("a", Value::StringValue("x\"y".into())),
            kv("b", Value::IntValue(3)),
        ]);
        assert_eq!(json, r#"{"a":"x\"y","b":3}"#);
    }

    #[test]
    fn every_kind_has_one_spelling() {
        let nested = Value::KvlistValue(KeyValueList {
            values: vec![
                kv("z", Value::DoubleValue(f64::NAN)),
                kv("bytes", Value::BytesValue(vec![0, 1, 2])),
                kv(
                    "list",
                    Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(Value::BoolValue(true)),
                            },
                            AnyValue { value: None },
                            AnyValue {
                                value: Some(Value::DoubleValue(1.5)),
                            },
                        ],
                    }),
                ),
            ],
        });
        assert_eq!(
            any_value_to_json(&AnyValue {
                value: Some(nested)
            }),
            r#"{"bytes":"AAEC","list":[true,null,1.5],"z":"NaN"}"#
        );
    }

    #[test]
    fn text_search_matches_values_not_keys() {
        let json = r#"{"city":"Paris","user.id":"alice","n":42}"#;
        assert!(json_values_contain(json, "Par"));
        assert!(json_values_contain(json, "42"));
        assert!(!json_values_contain(json, "city"));
        assert!(!json_values_contain(json, "Berlin"));
    }
}
