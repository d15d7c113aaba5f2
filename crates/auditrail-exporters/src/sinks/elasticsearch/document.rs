//! What one event becomes in Elasticsearch / OpenSearch: its `_bulk`
//! action line (target and `_id`) and its document, with the fields named
//! as the Elastic Common Schema (ECS) names them.
//!
//! | ECS field | canonical field |
//! |---|---|
//! | `@timestamp` | `time_unix_nano` (RFC 3339, UTC, nanoseconds) |
//! | `message` | `body` |
//! | `event.id` | `event_id` |
//! | `event.action` | `event_name` |
//! | `event.outcome` | `outcome` (`success`, `failure`, `unknown`: the ECS values) |
//! | `event.created` | `received_time_unix_nano` (when auditrail first read it) |
//! | `event.severity` | `severity_number` |
//! | `log.level` | `severity_text` |
//! | `user.id`, `user.name` | `actor_id`, `actor_name` |
//! | `source.address` | `client_address` |
//! | `source.ip` | `client_address` when it is an IP address |
//! | `trace.id`, `span.id` | `trace_id`, `span_id` |
//! | `service.name` | `service_name` |
//! | `auditrail.*` | everything else: `node`, `seq`, `event_id`, `tenant`, `target`, the three times in nanoseconds, `trace_flags`, `attributes` and `resource_attributes` (objects), `scope_name`, `prev_hash`, `hash` |
//!
//! Fields whose value is empty are left out (an `ip` field given `""`
//! would refuse the document).
//!
//! **The `_id` is `<node>:<seq>`**, and every action is `create`. The
//! design keys sink writes by `(node, seq)`: a client's retry that lands
//! on a second node is kept by both nodes, and both hash chains must stay
//! complete in every sink, so the index must hold both copies. `event_id`
//! as the `_id` would collapse them, and worse, it is chosen by the
//! client: two tenants sending the same `log.record.uid` would have the
//! second one's event answered "already there" and never stored. `(node,
//! seq)` is assigned by auditrail and never names two events (the spool
//! identity check, see [`super::ElasticsearchSink::highest_seq`]). The
//! target index is computed from the event itself (its own time), so a
//! resend goes to the same index as the first send and meets its `_id`.
//!
//! `create` rather than `index`: a resend of a stored event answers 409
//! `version_conflict_engine_exception`, which the sink counts as stored,
//! so resends are idempotent; and an audit document, once written, is
//! never overwritten by anything auditrail sends (`index` would replace
//! it). Data streams accept nothing but `create` anyway.

use std::net::IpAddr;

use auditrail_model::AuditEvent;
use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;

use crate::encoding::line_safe;
use crate::fields::utc;

/// `_id` of `event`: `<node>:<seq>`. The seq is all digits after the last
/// `:`, so no two `(node, seq)` pairs give the same id, whatever the node
/// id holds. Node ids are short (a host name); Elasticsearch's limit on
/// an `_id` is 512 bytes.
pub fn doc_id(event: &AuditEvent) -> String {
    format!("{}:{}", event.node, event.seq)
}

/// Appends the action line and the document of `event`, each ending in a
/// newline, to `out` (the `_bulk` NDJSON body).
pub fn write_bulk_item(event: &AuditEvent, index: &str, out: &mut Vec<u8>) {
    let action = Action {
        create: Target {
            index,
            id: doc_id(event),
        },
    };
    line_safe::write(out, &action).expect("serializing into a Vec cannot fail");
    out.push(b'\n');
    line_safe::write(out, &Document::of(event)).expect("serializing into a Vec cannot fail");
    out.push(b'\n');
}

#[derive(Serialize)]
struct Action<'a> {
    create: Target<'a>,
}

#[derive(Serialize)]
struct Target<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: String,
}

/// One event as an ECS document, borrowed from the event.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    event: Event<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<Log<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Source<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Id<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span: Option<Id<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Name<'a>>,
    auditrail: Auditrail<'a>,
}

#[derive(Debug, Serialize)]
struct Event<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    action: &'a str,
    outcome: &'static str,
    created: String,
    #[serde(skip_serializing_if = "is_zero")]
    severity: i32,
}

#[derive(Debug, Serialize)]
struct Log<'a> {
    level: &'a str,
}

#[derive(Debug, Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
}

#[derive(Debug, Serialize)]
struct Source<'a> {
    address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
}

#[derive(Debug, Serialize)]
struct Id<'a> {
    id: &'a str,
}

#[derive(Debug, Serialize)]
struct Name<'a> {
    name: &'a str,
}

#[derive(Debug, Serialize)]
struct Auditrail<'a> {
    node: &'a str,
    seq: u64,
    event_id: &'a str,
    tenant: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    target: &'a str,
    time_unix_nano: u64,
    observed_time_unix_nano: u64,
    received_time_unix_nano: u64,
    trace_flags: u32,
    attributes: Object<'a>,
    resource_attributes: Object<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope_name: &'a str,
    prev_hash: String,
    hash: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Canonical JSON object text, written as the object it is (so
/// `auditrail.attributes.user.id` is a field of its own). Text that is not
/// a JSON object (never stored by the spool, but not trusted either) is
/// written as `{"_text": ...}`, keeping the field an object: a string here
/// would clash with the object mapping of every other document.
#[derive(Debug)]
struct Object<'a>(&'a str);

impl Serialize for Object<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let text = self.0.trim();
        if text.is_empty() {
            return s.serialize_map(Some(0))?.end();
        }
        match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) if text.starts_with('{') => raw.serialize(s),
            _ => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("_text", self.0)?;
                map.end()
            }
        }
    }
}

/// `unix_nano` as RFC 3339 in UTC with up to nine fraction digits, which
/// `date` fields read (to the millisecond) and `date_nanos` fields keep.
pub fn rfc3339(unix_nano: u64) -> String {
    utc(unix_nano)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// `client.address` is an address without a port in OTel, but a sender
/// may add one: `1.2.3.4:5678` and `[::1]:5678` are IPs too.
fn ip_of(address: &str) -> Option<IpAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Some(ip);
    }
    address.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

impl<'a> Document<'a> {
    pub fn of(e: &'a AuditEvent) -> Self {
        let some = |s: &'a str| (!s.is_empty()).then_some(s);
        Document {
            timestamp: rfc3339(e.time_unix_nano),
            message: &e.body,
            event: Event {
                id: &e.event_id,
                action: &e.event_name,
                outcome: e.outcome.as_str(),
                created: rfc3339(e.received_time_unix_nano),
                severity: e.severity_number,
            },
            log: some(&e.severity_text).map(|level| Log { level }),
            user: (!e.actor_id.is_empty() || !e.actor_name.is_empty()).then_some(User {
                id: &e.actor_id,
                name: &e.actor_name,
            }),
            source: some(&e.client_address).map(|address| Source {
                address,
                ip: ip_of(address),
            }),
            trace: some(&e.trace_id).map(|id| Id { id }),
            span: some(&e.span_id).map(|id| Id { id }),
            service: some(&e.service_name).map(|name| Name { name }),
            auditrail: Auditrail {
                node: &e.node,
                seq: e.seq,
                event_id: &e.event_id,
                tenant: &e.tenant,
                target: &e.target,
                time_unix_nano: e.time_unix_nano,
                observed_time_unix_nano: e.observed_time_unix_nano,
                received_time_unix_nano: e.received_time_unix_nano,
                trace_flags: e.trace_flags,
                attributes: Object(&e.attributes),
                resource_attributes: Object(&e.resource_attributes),
                scope_name: &e.scope_name,
                prev_hash: hex::encode(e.prev_hash),
                hash: hex::encode(e.hash),
            },
        }
    }
}

/// A target index name with date placeholders, rendered from each event's
/// own time in UTC: `audit-%Y.%m.%d` → `audit-2026.05.04`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
}

impl IndexPattern {
    /// Parses `pattern`: literal text and `%Y` (year), `%m` (month), `%d`
    /// (day), `%H` (hour), `%%` (a `%`). The literal text must be a valid
    /// index name: lower case, none of `\ / * ? " < > | , #`, space or
    /// `:`, not starting with `-`, `_` or `+`.
    pub fn parse(pattern: &str) -> Result<IndexPattern, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let part = match chars.next() {
                Some('%') => {
                    literal.push('%');
                    continue;
                }
                Some('Y') => Part::Year,
                Some('m') => Part::Month,
                Some('d') => Part::Day,
                Some('H') => Part::Hour,
                Some(other) => {
                    return Err(format!(
                        "index {pattern:?}: %{other} is not one of %Y %m %d %H %%"
                    ))
                }
                None => return Err(format!("index {pattern:?} ends in a lone %")),
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let index = IndexPattern { parts };
        check_index_name(&index.render(0)).map_err(|e| format!("index {pattern:?}: {e}"))?;
        Ok(index)
    }

    /// The index for an event at `unix_nano`.
    pub fn render(&self, unix_nano: u64) -> String {
        let t = utc(unix_nano);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Year => out.push_str(&format!("{:04}", t.year())),
                Part::Month => out.push_str(&format!("{:02}", u8::from(t.month()))),
                Part::Day => out.push_str(&format!("{:02}", t.day())),
                Part::Hour => out.push_str(&format!("{:02}", t.hour())),
            }
        }
        out
    }

    /// Whether the name is the same for every event (no placeholder).
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Every index this pattern can name, as an index expression: each
    /// placeholder becomes `*` (`audit-%Y.%m.%d` → `audit-*.*.*`).
    pub fn wildcard(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                _ if out.ends_with('*') => {}
                _ => out.push('*'),
            }
        }
        out
    }
}

/// The rules Elasticsearch and OpenSearch apply to index and data stream
/// names, so a wrong name is a config error at start-up rather than every
/// event refused.
pub fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!("{name:?} is longer than 255 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid name"));
    }
    if name.starts_with(['-', '_', '+']) {
        return Err(format!("{name:?} starts with -, _ or +"));
    }
    if let Some(c) = name.chars().find(|c| {
        c.is_uppercase()
            || c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
            )
    }) {
        return Err(format!(
            "{name:?} holds {c:?}: names are lower case, without spaces or any of \\ / * ? \" < > | , # :"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditrail_model::Outcome;
    use serde_json::Value;

    fn event() -> AuditEvent {
        AuditEvent {
            node: "node-1".into(),
            seq: 42,
            event_id: "evt-42".into(),
            // 2026-05-04T10:00:00.123456789Z
            time_unix_nano: 1_777_888_800_123_456_789,
            received_time_unix_nano: 1_777_888_801_000_000_000,
            tenant: "acme".into(),
            service_name: "imagegen-ui".into(),
            event_name: "user.login".into(),
            severity_number: 9,
            severity_text: "INFO".into(),
            actor_id: "alice".into(),
            actor_name: "Alice".into(),
            client_address: "198.51.100.4".into(),
            outcome: Outcome::Failure,
            target: "account/alice".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            trace_flags: 1,
            body: "wrong password\nsecond line".into(),
            attributes: r#"{"user.id":"alice","zoom":3}"#.into(),
            resource_attributes: r#"{"service.name":"imagegen-ui"}"#.into(),
            scope_name: "audit".into(),
            hash: [0xab; 32],
            ..AuditEvent::default()
        }
    }

    fn bulk(event: &AuditEvent) -> (Value, Value) {
        let mut out = Vec::new();
        write_bulk_item(event, "audit-2026.05.04", &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(text.ends_with('\n'));
        (
            serde_json::from_str(lines[0]).unwrap(),
            serde_json::from_str(lines[1]).unwrap(),
        )
    }

    #[test]
    fn hostile_text_stays_data_on_its_line() {
        let hostile = "a\nb\r\u{0}\u{1b}[31m\u{7f}\u{9b}\u{2028}\u{61c}\u{202e}\u{2066}z";
        let e = AuditEvent {
            body: hostile.into(),
            actor_name: hostile.into(),
            attributes: serde_json::json!({ hostile: hostile }).to_string(),
            ..event()
        };
        let mut out = Vec::new();
        write_bulk_item(&e, "audit-2026.05.04", &mut out);
        let text = String::from_utf8(out).unwrap();
        let raw: Vec<char> = text
            .trim_end_matches('\n')
            .chars()
            .filter(|&c| crate::encoding::line_safe::must_escape(c) && c != '\n')
            .collect();
        assert!(raw.is_empty(), "{raw:?} raw in {text:?}");
        let (_, document) = bulk(&e);
        assert_eq!(document["message"], hostile);
        assert_eq!(document["user"]["name"], hostile);
        assert_eq!(document["auditrail"]["attributes"][hostile], hostile);
    }

    #[test]
    fn the_action_is_create_with_the_node_seq_id() {
        let (action, _) = bulk(&event());
        assert_eq!(
            action,
            serde_json::json!({"create": {"_index": "audit-2026.05.04", "_id": "node-1:42"}})
        );
    }

    #[test]
    fn fields_follow_ecs() {
        let (_, doc) = bulk(&event());
        assert_eq!(doc["@timestamp"], "2026-05-04T10:00:00.123456789Z");
        assert_eq!(doc["message"], "wrong password\nsecond line");
        assert_eq!(doc["event"]["id"], "evt-42");
        assert_eq!(doc["event"]["action"], "user.login");
        assert_eq!(doc["event"]["outcome"], "failure");
        assert_eq!(doc["event"]["created"], "2026-05-04T10:00:01Z");
        assert_eq!(doc["event"]["severity"], 9);
        assert_eq!(doc["log"]["level"], "INFO");
        assert_eq!(doc["user"]["id"], "alice");
        assert_eq!(doc["user"]["name"], "Alice");
        assert_eq!(doc["source"]["address"], "198.51.100.4");
        assert_eq!(doc["source"]["ip"], "198.51.100.4");
        assert_eq!(doc["trace"]["id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(doc["span"]["id"], "b7ad6b7169203331");
        assert_eq!(doc["service"]["name"], "imagegen-ui");
        let a = &doc["auditrail"];
        assert_eq!(a["node"], "node-1");
        assert_eq!(a["seq"], 42);
        assert_eq!(a["event_id"], "evt-42");
        assert_eq!(a["tenant"], "acme");
        assert_eq!(a["target"], "account/alice");
        assert_eq!(a["time_unix_nano"], 1_777_888_800_123_456_789_u64);
        assert_eq!(a["attributes"]["user.id"], "alice");
        assert_eq!(a["attributes"]["zoom"], 3);
        assert_eq!(a["resource_attributes"]["service.name"], "imagegen-ui");
        assert_eq!(a["hash"], "ab".repeat(32));
        assert_eq!(a["prev_hash"], "00".repeat(32));
    }

    #[test]
    fn empty_fields_are_left_out_and_a_host_name_is_no_ip() {
        let e = AuditEvent {
            client_address: "gateway.internal".into(),
            ..AuditEvent::default()
        };
        let (_, doc) = bulk(&e);
        assert_eq!(doc["source"]["address"], "gateway.internal");
        assert!(doc["source"].get("ip").is_none(), "{doc}");
        for absent in ["message", "user", "trace", "span", "service", "log"] {
            assert!(doc.get(absent).is_none(), "{absent}: {doc}");
        }
        assert_eq!(doc["event"]["outcome"], "unknown");
        assert!(doc["event"].get("action").is_none());
        assert_eq!(doc["auditrail"]["attributes"], serde_json::json!({}));
        let e = AuditEvent {
            client_address: "[2001:db8::1]:443".into(),
            attributes: "not json".into(),
            ..AuditEvent::default()
        };
        let (_, doc) = bulk(&e);
        assert_eq!(doc["source"]["ip"], "2001:db8::1");
        assert_eq!(
            doc["auditrail"]["attributes"],
            serde_json::json!({"_text": "not json"})
        );
    }

    #[test]
    fn index_patterns_render_from_the_event_time_in_utc() {
        let index = IndexPattern::parse("audit-%Y.%m.%d").unwrap();
        assert_eq!(index.render(event().time_unix_nano), "audit-2026.05.04");
        assert_eq!(index.wildcard(), "audit-*.*.*");
        assert!(!index.is_fixed());
        let hourly = IndexPattern::parse("audit-%Y%m%d%H-100%%").unwrap();
        assert_eq!(hourly.render(0), "audit-1970010100-100%");
        assert_eq!(hourly.wildcard(), "audit-*-100%");
        let fixed = IndexPattern::parse("audit").unwrap();
        assert!(fixed.is_fixed());
        assert_eq!(fixed.wildcard(), "audit");
        for bad in [
            "Audit-%Y", "audit %Y", "_audit", "audit-%Q", "audit-%", "a:b",
        ] {
            assert!(IndexPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
