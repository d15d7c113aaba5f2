//! The RFC 5424 message: the header every format shares, and
//! `format = "rfc5424"`, which carries the canonical fields in structured
//! data and the body as MSG.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID name="value" ...] MSG
//! ```
//!
//! Header fields are PRINTUSASCII tokens of bounded length (RFC 5424 §6):
//! any other character becomes `_` and a longer value is cut, which is why
//! the structured data repeats `node`, `service_name` and `event_name`
//! exactly. SD-PARAM values and MSG go through [`super::escape`], so no
//! value can end the line or the SD element early.

use auditrail_model::{AuditEvent, Outcome};
use serde::Deserialize;

use super::escape::escape_into;
use crate::fields::{utc, Field, Value};

/// The syslog facility of every message (`facility`, RFC 5424 §6.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    /// Security/authorization messages that may hold private data: most
    /// syslog setups route it to a file only root reads, which suits audit
    /// events that carry prompts and user names.
    #[default]
    Authpriv,
    Ftp,
    Ntp,
    /// "log audit" (13).
    Security,
    /// "log alert" (14).
    Console,
    /// The clock daemon (15).
    Clock,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    fn code(self) -> u8 {
        self as u8
    }
}

/// RFC 5424 severities (§6.2.1), most severe first.
pub const CRITICAL: u8 = 2;
pub const WARNING: u8 = 4;
pub const INFORMATIONAL: u8 = 6;
pub const DEBUG: u8 = 7;

/// The syslog severity of `event`: from its OTel severity_number (FATAL
/// critical, ERROR error, WARN warning, INFO informational, DEBUG and
/// TRACE debug; unset is informational), and never milder than warning
/// for an event whose outcome is `failure`: a denied login must stand out
/// even when the service logged it at INFO.
pub fn severity(event: &AuditEvent) -> u8 {
    let by_number = match event.severity_number {
        1..=8 => DEBUG,
        13..=16 => WARNING,
        17..=20 => 3,
        21.. => CRITICAL,
        _ => INFORMATIONAL,
    };
    if event.outcome == Outcome::Failure {
        by_number.min(WARNING)
    } else {
        by_number
    }
}

/// RFC 5424 header field limits (§6).
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const MSGID_MAX: usize = 32;

/// Appends the header (`<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID`, no
/// trailing space) of `event`.
pub fn write_header(out: &mut String, facility: Facility, event: &AuditEvent) {
    let pri = u16::from(facility.code()) * 8 + u16::from(severity(event));
    out.push_str(&format!("<{pri}>1 "));
    out.push_str(&timestamp(event.time_unix_nano));
    out.push(' ');
    push_header_field(out, &event.node, HOSTNAME_MAX);
    out.push(' ');
    push_header_field(out, &event.service_name, APP_NAME_MAX);
    // PROCID: the process is auditrail's, not the service's; nothing fits.
    out.push_str(" - ");
    push_header_field(out, &event.event_name, MSGID_MAX);
}

/// RFC 3339 in UTC with microseconds, the finest TIME-SECFRAC allows.
fn timestamp(unix_nano: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    utc(unix_nano)
        .format(&format)
        .unwrap_or_else(|_| "-".into())
}

/// A header token: PRINTUSASCII only (others become `_`), at most `max`
/// characters, `-` (NILVALUE) when empty.
fn push_header_field(out: &mut String, value: &str, max: usize) {
    if value.is_empty() {
        out.push('-');
        return;
    }
    out.extend(
        value
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
    );
}

/// Characters RFC 5424 reserves in an SD-PARAM value (`\` is always escaped).
pub const SD_RESERVED: &[char] = &['"', ']'];

/// Whether `id` can be an SD-ID: 1 to 32 PRINTUSASCII characters except
/// `=`, space, `]` and `"` (RFC 5424 §6.3.2).
pub fn is_valid_sd_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"'))
}

/// The whole message for `format = "rfc5424"`: header, the canonical
/// fields as one SD element named `sd_id`, and the body as MSG.
pub fn message(event: &AuditEvent, facility: Facility, sd_id: &str) -> String {
    let mut out = String::with_capacity(512 + event.body.len() + event.attributes.len());
    write_header(&mut out, facility, event);
    out.push_str(" [");
    out.push_str(sd_id);
    for field in Field::ALL {
        // The header has the time; MSG has the body.
        if matches!(field, Field::Time | Field::Body) {
            continue;
        }
        let value = match field.value(event) {
            Value::Null => continue,
            Value::Str(s) | Value::Json(s) => std::borrow::Cow::Borrowed(s),
            Value::Owned(s) => s.into(),
            Value::U64(n) => n.to_string().into(),
            Value::I64(n) => n.to_string().into(),
            Value::Time(n) => n.to_string().into(),
        };
        if value.is_empty() {
            continue;
        }
        out.push(' ');
        out.push_str(field.name());
        out.push_str("=\"");
        escape_into(&mut out, &value, SD_RESERVED);
        out.push('"');
    }
    out.push(']');
    if !event.body.is_empty() {
        out.push(' ');
        escape_into(&mut out, &event.body, &[]);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::escape::unescape;
    use super::*;
    use proptest::prelude::*;

    /// An event with most canonical fields set, for the format tests.
    pub(crate) fn event() -> AuditEvent {
        AuditEvent {
            node: "node-1".into(),
            seq: 42,
            event_id: "evt-42".into(),
            time_unix_nano: 1_700_000_000_123_456_789,
            tenant: "acme".into(),
            service_name: "imagegen-ui".into(),
            event_name: "image.generate".into(),
            severity_number: 9,
            actor_id: "alice".into(),
            outcome: Outcome::Success,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            body: "a banana".into(),
            attributes: r#"{"user.id":"alice"}"#.into(),
            ..AuditEvent::default()
        }
    }

    /// The SD-PARAM values of a message, unescaped, by name.
    fn params(message: &str) -> Vec<(String, String)> {
        let start = message.find(" [").expect("an SD element") + 2;
        let mut rest = &message[start..];
        rest = &rest[rest.find(' ').expect("params")..];
        let mut found = Vec::new();
        while let Some(after_space) = rest.strip_prefix(' ') {
            let (name, value) = after_space.split_once("=\"").expect("name=\"");
            // The value ends at the first `"` not escaped by a backslash.
            let bytes = value.as_bytes();
            let mut end = 0;
            while bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            found.push((
                name.to_owned(),
                unescape(&value[..end], SD_RESERVED).expect("valid escaping"),
            ));
            rest = &value[end + 1..];
        }
        assert!(rest.starts_with(']'), "{rest:?}");
        found
    }

    #[test]
    fn header_sd_and_msg() {
        let line = message(&event(), Facility::Authpriv, "auditrail@32473");
        assert_eq!(
            line,
            "<86>1 2023-11-14T22:13:20.123456Z node-1 imagegen-ui - image.generate \
             [auditrail@32473 node=\"node-1\" seq=\"42\" event_id=\"evt-42\" \
             time_unix_nano=\"1700000000123456789\" observed_time_unix_nano=\"0\" \
             received_time_unix_nano=\"0\" tenant=\"acme\" service_name=\"imagegen-ui\" \
             event_name=\"image.generate\" severity_number=\"9\" actor_id=\"alice\" \
             outcome=\"success\" trace_id=\"0af7651916cd43dd8448eb211c80319c\" trace_flags=\"0\" \
             attributes=\"{\\\"user.id\\\":\\\"alice\\\"}\" prev_hash=\"{zero}\" hash=\"{zero}\"] a banana"
                .replace("{zero}", &"0".repeat(64))
        );
    }

    #[test]
    fn header_fields_are_printable_ascii_within_limits() {
        let e = AuditEvent {
            node: "host name\u{e9}".into(),
            service_name: "s".repeat(60),
            event_name: "évènement.très.long.qui.dépasse.la.limite".into(),
            ..event()
        };
        let line = message(&e, Facility::Local4, "x@1");
        let header: Vec<&str> = line.splitn(7, ' ').collect();
        assert_eq!(header[0], "<166>1");
        assert_eq!(header[2], "host_name_");
        assert_eq!(header[3], "s".repeat(48));
        assert_eq!(header[4], "-");
        assert_eq!(header[5], "_v_nement.tr_s.long.qui.d_passe.");
        let e = AuditEvent {
            node: String::new(),
            service_name: String::new(),
            event_name: String::new(),
            ..event()
        };
        let line = message(&e, Facility::Auth, "x@1");
        assert!(
            line.starts_with("<38>1 2023-11-14T22:13:20.123456Z - - - - [x@1 "),
            "{line}"
        );
    }

    #[test]
    fn severity_follows_the_otel_number_and_a_failure_is_at_least_a_warning() {
        let with = |severity_number, outcome| {
            severity(&AuditEvent {
                severity_number,
                outcome,
                ..AuditEvent::default()
            })
        };
        assert_eq!(with(0, Outcome::Unknown), INFORMATIONAL);
        assert_eq!(with(5, Outcome::Success), DEBUG);
        assert_eq!(with(9, Outcome::Success), INFORMATIONAL);
        assert_eq!(with(9, Outcome::Failure), WARNING);
        assert_eq!(with(5, Outcome::Failure), WARNING);
        assert_eq!(with(17, Outcome::Failure), 3);
        assert_eq!(with(24, Outcome::Success), CRITICAL);
    }

    #[test]
    fn sd_ids() {
        assert!(is_valid_sd_id("auditrail@32473"));
        assert!(is_valid_sd_id("origin"));
        assert!(!is_valid_sd_id(""));
        assert!(!is_valid_sd_id("a b"));
        assert!(!is_valid_sd_id("a]"));
        assert!(!is_valid_sd_id(&"a".repeat(33)));
    }

    proptest! {
        #[test]
        fn any_event_is_one_line_and_its_sd_values_round_trip(
            body in any::<String>(),
            actor in any::<String>(),
            target in "[\"\\]\\\\=|\n\r\0a-z\u{1b}é]{0,20}",
        ) {
            let e = AuditEvent { body: body.clone(), actor_id: actor.clone(), target: target.clone(), ..event() };
            let line = message(&e, Facility::Authpriv, "auditrail@32473");
            prop_assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
            prop_assert!(!line.chars().any(char::is_control), "{line:?}");
            let params = params(&line);
            let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            prop_assert_eq!(get("actor_id"), (!actor.is_empty()).then_some(actor));
            prop_assert_eq!(get("target"), (!target.is_empty()).then_some(target));
            prop_assert_eq!(get("event_id"), Some("evt-42".to_owned()));
            let end_of_sd = line.len() - if body.is_empty() { 0 } else { super::super::escape::escape(&body, &[]).len() + 1 };
            let msg = line[end_of_sd..].strip_prefix(' ').unwrap_or("");
            prop_assert_eq!(unescape(msg, &[]), Some(body));
        }
    }
}
