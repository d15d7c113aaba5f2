//! How the sinks that carry text write an event: the encodings shared by
//! `file`, `webhook`, `nats`, `kafka`, `otlp` and syslog's `json` and
//! `ocsf` formats. A sink picks one by its `format` key; every encoding
//! writes one event as one line (no raw newline, whatever the event holds),
//! and no raw control, line-separator or bidi character either
//! ([`line_safe`]).

pub mod json;
pub mod line_safe;
pub mod ocsf;

use std::fmt;
use std::sync::Arc;

pub use json::{event_json, write_event_json, EventJson};
pub use ocsf::{event_ocsf, write_event_ocsf, MappingError, OcsfClass, OcsfMapping};

use auditrail_model::AuditEvent;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The `format` key of a sink that carries JSON lines.
///
/// ```toml
/// format = "json"             # the canonical event (the default)
/// format = "ocsf"             # OCSF, with the default rules
///
/// [sinks.format.ocsf.events]  # OCSF, with rules of this sink's own
/// "image.generate" = { class = "api_activity", activity = "create" }
/// ```
///
/// The rules are part of the value, so a sink holds one thing that says
/// how it encodes, checked whole when the config is read (`auditrail
/// check-config` rejects an unknown class or activity). Not `Copy`: a
/// sink clones it (an `Arc`, cheap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LineFormat {
    /// The canonical event ([`json`]).
    #[default]
    Json,
    /// An OCSF event ([`ocsf`]), classed by these rules.
    Ocsf(Arc<OcsfMapping>),
}

impl LineFormat {
    /// A format by its name alone (`"json"`, `"ocsf"` with the default
    /// rules).
    pub fn from_name(name: &str) -> Option<LineFormat> {
        match name {
            "json" => Some(LineFormat::Json),
            "ocsf" => Some(LineFormat::Ocsf(Arc::default())),
            _ => None,
        }
    }

    /// Appends `event` in this format, without a newline, to `out` (one
    /// message of a sink that frames messages itself).
    pub fn write(&self, event: &AuditEvent, out: &mut Vec<u8>) {
        match self {
            LineFormat::Json => write_event_json(event, out),
            LineFormat::Ocsf(mapping) => write_event_ocsf(event, mapping, out),
        }
    }

    /// Appends `event` in this format, with its newline, to `out`.
    pub fn write_line(&self, event: &AuditEvent, out: &mut Vec<u8>) {
        self.write(event, out);
        out.push(b'\n');
    }

    /// `event` in this format, without a newline.
    pub fn encode(&self, event: &AuditEvent) -> String {
        let mut out = Vec::new();
        self.write(event, &mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// The OCSF rules of a `format` table (`{ ocsf = { events = ... } }`),
    /// for formats that embed this one (syslog's).
    pub fn ocsf_from_table<'de, A: MapAccess<'de>>(
        mut map: A,
    ) -> Result<Arc<OcsfMapping>, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                "a format table holds one key, `ocsf`; an empty one says nothing (write format = \"json\")",
            ));
        };
        if key != "ocsf" {
            return Err(de::Error::custom(format!(
                "a format table holds one key, `ocsf`, not `{key}`"
            )));
        }
        let mapping: OcsfMapping = map.next_value()?;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "a format table holds one key, `ocsf`; `{extra}` is one too many"
            )));
        }
        Ok(Arc::new(mapping))
    }
}

impl<'de> Deserialize<'de> for LineFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LineFormatVisitor;

        impl<'de> Visitor<'de> for LineFormatVisitor {
            type Value = LineFormat;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"json\", \"ocsf\", or a table [format.ocsf] of OCSF rules")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<LineFormat, E> {
                LineFormat::from_name(name).ok_or_else(|| {
                    E::custom(format!(
                        "unknown format {name:?}; expected \"json\" or \"ocsf\""
                    ))
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LineFormat, A::Error> {
                LineFormat::ocsf_from_table(map).map(LineFormat::Ocsf)
            }
        }

        deserializer.deserialize_any(LineFormatVisitor)
    }
}

/// The `seq` of a line in either encoding (top-level in `json`, under
/// `unmapped.auditrail` in `ocsf`), for a sink that resumes after the last
/// line it wrote. Both are tried, so a sink whose format changed still
/// reads its older lines.
pub fn seq_of_line(line: &[u8]) -> Result<u64, serde_json::Error> {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    #[derive(Deserialize)]
    struct Unmapped {
        auditrail: Seq,
    }
    #[derive(Deserialize)]
    struct Line {
        seq: Option<u64>,
        unmapped: Option<Unmapped>,
    }
    let line: Line = serde_json::from_slice(line)?;
    line.seq
        .or(line.unmapped.map(|u| u.auditrail.seq))
        .ok_or_else(|| {
            <serde_json::Error as de::Error>::custom(
                "no `seq` (json) and no `unmapped.auditrail.seq` (ocsf)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sink {
        #[serde(default)]
        format: LineFormat,
    }

    fn parse(text: &str) -> Result<LineFormat, String> {
        toml::from_str::<Sink>(text)
            .map(|s| s.format)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_format_is_a_name_or_a_table_of_ocsf_rules() {
        assert_eq!(parse("").unwrap(), LineFormat::Json);
        assert_eq!(parse("format = \"json\"").unwrap(), LineFormat::Json);
        assert_eq!(
            parse("format = \"ocsf\"").unwrap(),
            LineFormat::Ocsf(Arc::default())
        );
        let LineFormat::Ocsf(mapping) = parse(
            "[format.ocsf.events]\n\"image.generate\" = { class = \"datastore_activity\", activity = \"write\" }\n",
        )
        .unwrap() else {
            panic!("not ocsf");
        };
        assert_eq!(
            mapping.rule_for("image.generate"),
            OcsfClass::DatastoreActivity.activity("write").unwrap()
        );
        // `[format.ocsf]` with no rules: the defaults.
        assert_eq!(
            parse("[format.ocsf]\n").unwrap(),
            LineFormat::Ocsf(Arc::default())
        );
    }

    #[test]
    fn a_bad_format_is_an_error_that_says_what_is_wrong() {
        let e = parse("format = \"xml\"").unwrap_err();
        assert!(
            e.contains(r#"unknown format "xml"; expected "json" or "ocsf""#),
            "{e}"
        );
        let e = parse("[format.json]\n").unwrap_err();
        assert!(e.contains("holds one key, `ocsf`, not `json`"), "{e}");
        let e = parse(
            "[format.ocsf.events]\n\"user.login\" = { class = \"authentication\", activity = \"upload\" }\n",
        )
        .unwrap_err();
        assert!(
            e.contains(
                r#"format.ocsf.events."user.login": class authentication has no activity "upload""#
            ),
            "{e}"
        );
        let e = parse("format = 3").unwrap_err();
        assert!(e.contains("\"json\", \"ocsf\", or a table"), "{e}");
    }

    #[test]
    fn seq_is_read_back_from_either_encoding() {
        let event = AuditEvent {
            seq: 77,
            ..AuditEvent::default()
        };
        for format in [LineFormat::Json, LineFormat::from_name("ocsf").unwrap()] {
            assert_eq!(seq_of_line(format.encode(&event).as_bytes()).unwrap(), 77);
        }
        assert!(seq_of_line(b"{\"other\":1}").is_err());
        assert!(seq_of_line(b"not json").is_err());
    }
}
