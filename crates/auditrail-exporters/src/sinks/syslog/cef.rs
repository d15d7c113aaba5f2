//! `format = "cef"`: ArcSight Common Event Format as the syslog MSG.
//!
//! ```text
//! CEF:0|auditrail|auditrail|VERSION|event_name|event_name|severity|key=value ...
//! ```
//!
//! Header fields escape `\` and `|`; extension values escape `\` and `=`,
//! and CR and LF as `\r` and `\n` (the CEF rules), and every other control
//! character as `\uXXXX` (see [`super::escape`]), so no value can end the
//! line: the newline Vector's CEF encoder lets through is escaped here.
//! The canonical fields map to the standard keys in the table of
//! docs/sinks.md; the rest go in labelled custom fields.

use std::net::IpAddr;

use auditrail_model::AuditEvent;

use super::escape::escape_into;
use super::rfc5424::severity;

/// Reserved in a CEF header field (`\` is always escaped).
pub const HEADER_RESERVED: &[char] = &['|'];
/// Reserved in a CEF extension value.
pub const EXTENSION_RESERVED: &[char] = &['='];

/// CEF severity (0 to 10) for a syslog severity (0 emergency to 7 debug):
/// informational is Low (3), warning Medium (6), error High (8), critical
/// and worse Very-High (9, 10).
fn cef_severity(syslog_severity: u8) -> u8 {
    match syslog_severity {
        7 => 1,
        6 => 3,
        5 => 4,
        4 => 6,
        3 => 8,
        2 => 9,
        _ => 10,
    }
}

/// The CEF text of `event` (the syslog MSG).
pub fn message(event: &AuditEvent) -> String {
    let mut out = String::with_capacity(512 + event.body.len() + event.attributes.len());
    out.push_str("CEF:0|auditrail|auditrail|");
    out.push_str(env!("CARGO_PKG_VERSION"));
    let name = if event.event_name.is_empty() {
        "unknown"
    } else {
        &event.event_name
    };
    for header_field in [name, name] {
        out.push('|');
        escape_into(&mut out, header_field, HEADER_RESERVED);
    }
    out.push('|');
    out.push_str(&cef_severity(severity(event)).to_string());
    out.push('|');

    let mut extension = Extension { out, empty: true };
    extension.push("rt", &(event.time_unix_nano / 1_000_000).to_string());
    extension.push("externalId", &event.event_id);
    extension.push("act", &event.event_name);
    extension.push("outcome", event.outcome.as_str());
    let user = if event.actor_name.is_empty() {
        &event.actor_id
    } else {
        &event.actor_name
    };
    extension.push("suser", user);
    extension.push("suid", &event.actor_id);
    // `src` must be an IP address; a host name or anything else goes in a
    // labelled custom string rather than being dropped.
    if event.client_address.parse::<IpAddr>().is_ok() {
        extension.push("src", &event.client_address);
    } else {
        extension.custom("cs5", "client_address", &event.client_address);
    }
    extension.push("request", &event.target);
    extension.push("dvchost", &event.node);
    extension.push("sourceServiceName", &event.service_name);
    extension.custom("cs1", "trace_id", &event.trace_id);
    extension.custom("cs2", "span_id", &event.span_id);
    extension.custom("cs3", "tenant", &event.tenant);
    extension.custom("cs4", "attributes", &event.attributes);
    extension.custom("cn1", "seq", &event.seq.to_string());
    extension.push("msg", &event.body);
    extension.out
}

/// The extension being written: space-separated `key=value` pairs.
struct Extension {
    out: String,
    empty: bool,
}

impl Extension {
    /// `key=value`, left out when the value is empty.
    fn push(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        if !self.empty {
            self.out.push(' ');
        }
        self.empty = false;
        self.out.push_str(key);
        self.out.push('=');
        escape_into(&mut self.out, value, EXTENSION_RESERVED);
    }

    /// A custom field `key` and its `keyLabel`, left out when empty.
    fn custom(&mut self, key: &str, label: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        self.push(&format!("{key}Label"), label);
        self.push(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::super::escape::unescape;
    use super::*;
    use auditrail_model::Outcome;
    use proptest::prelude::*;

    /// The format tests' event as a failed login.
    fn event() -> AuditEvent {
        AuditEvent {
            event_name: "user.login".into(),
            actor_id: "u-1".into(),
            actor_name: "Alice".into(),
            client_address: "198.51.100.4".into(),
            outcome: Outcome::Failure,
            target: "account/alice".into(),
            span_id: "b7ad6b7169203331".into(),
            body: "wrong password".into(),
            attributes: r#"{"user.id":"u-1"}"#.into(),
            ..super::super::rfc5424::tests::event()
        }
    }

    /// The extension's `key=value` pairs, unescaped.
    pub(crate) fn extension_pairs(cef: &str) -> Vec<(String, String)> {
        // Seven unescaped `|` end the header.
        let mut bars = 0;
        let mut start = 0;
        let mut escaped = false;
        for (i, c) in cef.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '|' => {
                    bars += 1;
                    if bars == 7 {
                        start = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        assert_eq!(bars, 7, "{cef}");
        // A key starts after a space and runs to an unescaped `=`; values
        // hold no unescaped `=`, so the last space before the next one ends
        // the value.
        let ext = &cef[start..];
        let mut keys = Vec::new();
        let mut escaped = false;
        for (i, c) in ext.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '=' => {
                    let key_start = ext[..i].rfind(' ').map_or(0, |s| s + 1);
                    keys.push((key_start, i));
                }
                _ => {}
            }
        }
        keys.iter()
            .enumerate()
            .map(|(n, &(key_start, eq))| {
                let value_end = keys.get(n + 1).map_or(ext.len(), |&(next, _)| next - 1);
                let value = &ext[eq + 1..value_end];
                (
                    ext[key_start..eq].to_owned(),
                    unescape(value, EXTENSION_RESERVED).expect("valid escaping"),
                )
            })
            .collect()
    }

    #[test]
    fn canonical_fields_map_to_standard_keys() {
        let cef = message(&event());
        assert_eq!(
            cef,
            format!(
                "CEF:0|auditrail|auditrail|{}|user.login|user.login|6|rt=1700000000123 externalId=evt-42 \
                 act=user.login outcome=failure suser=Alice suid=u-1 src=198.51.100.4 request=account/alice \
                 dvchost=node-1 sourceServiceName=imagegen-ui cs1Label=trace_id cs1=0af7651916cd43dd8448eb211c80319c \
                 cs2Label=span_id cs2=b7ad6b7169203331 cs3Label=tenant cs3=acme \
                 cs4Label=attributes cs4={{\"user.id\":\"u-1\"}} cn1Label=seq cn1=42 msg=wrong password",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn a_client_address_that_is_no_ip_is_a_custom_string() {
        let e = AuditEvent {
            client_address: "gateway.internal".into(),
            actor_name: String::new(),
            ..event()
        };
        let pairs = extension_pairs(&message(&e));
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("src"), None);
        assert_eq!(get("cs5Label"), Some("client_address"));
        assert_eq!(get("cs5"), Some("gateway.internal"));
        assert_eq!(get("suser"), Some("u-1"), "actor_id when there is no name");
        let v6 = AuditEvent {
            client_address: "2001:db8::1".into(),
            ..event()
        };
        assert!(message(&v6).contains(" src=2001:db8::1 "));
    }

    #[test]
    fn header_escapes_bars_and_backslashes() {
        let e = AuditEvent {
            event_name: "a|b\\c\nd".into(),
            ..event()
        };
        let cef = message(&e);
        assert!(cef.contains("|a\\|b\\\\c\\nd|a\\|b\\\\c\\nd|6|"), "{cef}");
    }

    proptest! {
        #[test]
        fn extension_escaping_is_reversible_and_one_line(
            body in any::<String>(),
            actor in "[ =\\\\|\n\r\0a-z\u{1b}\"\\]é]{1,20}",
            target in any::<String>(),
        ) {
            let e = AuditEvent { body: body.clone(), actor_name: actor.clone(), target: target.clone(), ..event() };
            let cef = message(&e);
            prop_assert!(!cef.chars().any(char::is_control), "{cef:?}");
            let pairs = extension_pairs(&cef);
            let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            prop_assert_eq!(get("suser"), Some(actor));
            prop_assert_eq!(get("request"), (!target.is_empty()).then_some(target));
            prop_assert_eq!(get("msg"), (!body.is_empty()).then_some(body));
            prop_assert_eq!(get("externalId"), Some("evt-42".to_owned()));
        }
    }
}
