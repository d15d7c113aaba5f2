//! `format = "ocsf"`: an event as one OCSF 1.5.0 event (JSON object).
//!
//! [`rules`] picks the class and activity from the event name; this module
//! fills the base attributes every class requires (`activity_id`,
//! `category_uid`, `class_uid`, `type_uid`, `severity_id`, `time`,
//! `metadata.product`, `metadata.version`), their captions, and the
//! attributes each class requires (docs/sinks.md, "OCSF", has the table).
//!
//! **Nothing is lost.** `unmapped.auditrail` is the canonical event (the
//! `json` encoding) without its body, which is `message`: every canonical
//! field, the attributes and the chain hashes are there, so a set of OCSF
//! lines says all the `json` lines would.
//!
//! **A required attribute is never left out.** Where the event does not
//! carry what a class requires (no client address for `src_endpoint`, no
//! actor), the attribute holds `"unknown"` in a name: a consumer that
//! validates required attributes accepts the event, and a reader sees that
//! the source did not say.
//!
//! Like `json`, one event is one line: it is written with
//! [`super::line_safe`], which escapes every control character, U+2028/
//! U+2029 and the bidi controls, and the attribute objects are written as
//! they are only when they hold no raw line break.

pub mod rules;

use std::fmt;
use std::net::IpAddr;

use auditrail_model::{AuditEvent, Outcome};
use serde::{Serialize, Serializer};

use super::json::JsonObject;
pub use rules::{MappingError, OcsfClass, OcsfMapping, Rule};

/// The OCSF schema version the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.5.0";

/// What a required attribute holds when the event does not say.
const UNKNOWN: &str = "unknown";

/// Appends `event` as one OCSF JSON object (without a newline) to `out`.
pub fn write_event_ocsf(event: &AuditEvent, mapping: &OcsfMapping, out: &mut Vec<u8>) {
    let rule = mapping.rule_for(&event.event_name);
    super::line_safe::write(out, &OcsfEvent::of(event, rule))
        .expect("serializing into a Vec cannot fail");
}

/// `event` as one OCSF JSON line (without the newline).
pub fn event_ocsf(event: &AuditEvent, mapping: &OcsfMapping) -> String {
    let mut out = Vec::new();
    write_event_ocsf(event, mapping, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One OCSF event, borrowed from the audit event. Attributes a class does
/// not use are `None` and left out.
#[derive(Debug, Serialize)]
struct OcsfEvent<'a> {
    activity_id: u8,
    activity_name: &'a str,
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    type_uid: u32,
    type_name: TypeName,
    severity_id: u8,
    severity: &'static str,
    status_id: u8,
    status: &'static str,
    /// Epoch milliseconds (OCSF `timestamp_t`); the nanoseconds are in
    /// `unmapped.auditrail.time_unix_nano`.
    time: u64,
    #[serde(skip_serializing_if = "is_empty")]
    message: &'a str,
    metadata: Metadata<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    /// Authentication: the user who logs on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<Api<'a>>,
    /// Authentication: the service logged on to.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Named<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[Named<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<Database<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_provider: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_name: Option<&'a str>,
    /// The trace profile (API Activity only: the one class here that
    /// includes it); every class has the trace id in
    /// `metadata.correlation_uid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Trace<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    observables: Vec<Observable<'a>>,
    unmapped: Unmapped<'a>,
}

/// `type_name`: "<class caption>: <activity caption>", written without an
/// allocation.
#[derive(Debug)]
struct TypeName(Rule);

impl Serialize for TypeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.0.class.caption(),
            self.0.activity_caption()
        )
    }
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product,
    /// The event id: the same event is the same OCSF event, so a SIEM can
    /// drop a resend.
    #[serde(skip_serializing_if = "is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    event_code: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    tenant_uid: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    correlation_uid: &'a str,
    /// When auditrail received it, epoch milliseconds.
    #[serde(skip_serializing_if = "is_zero")]
    logged_time: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    profiles: &'static [&'static str],
}

/// `metadata.product`: auditrail, which writes the OCSF event. The service
/// that sent the record is in `actor.app_name` (and `api.service`).
#[derive(Debug, Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

const PRODUCT: Product = Product {
    name: "auditrail",
    vendor_name: "auditrail",
    version: env!("CARGO_PKG_VERSION"),
};

#[derive(Debug, Serialize)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "is_empty")]
    app_name: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    name: &'a str,
}

#[derive(Debug, Serialize)]
struct Api<'a> {
    operation: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Named<'a>>,
}

#[derive(Debug, Serialize)]
struct Named<'a> {
    name: &'a str,
}

/// `src_endpoint`: `client.address` as an IP address, a host name, or
/// (a socket path, say) a name.
#[derive(Debug, Default, Serialize)]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// The target as a database of unknown type (Datastore Activity needs one
/// of database, databucket or table; auditrail does not know which).
#[derive(Debug, Serialize)]
struct Database<'a> {
    name: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct File<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct Trace<'a> {
    uid: &'a str,
}

#[derive(Debug, Serialize)]
struct Observable<'a> {
    name: &'static str,
    type_id: u8,
    value: &'a str,
}

#[derive(Debug, Serialize)]
struct Unmapped<'a> {
    auditrail: Canonical<'a>,
}

/// The canonical event less its body (which is `message`).
#[derive(Debug, Serialize)]
struct Canonical<'a> {
    node: &'a str,
    seq: u64,
    event_id: &'a str,
    time_unix_nano: u64,
    observed_time_unix_nano: u64,
    received_time_unix_nano: u64,
    tenant: &'a str,
    service_name: &'a str,
    event_name: &'a str,
    severity_number: i32,
    severity_text: &'a str,
    actor_id: &'a str,
    actor_name: &'a str,
    client_address: &'a str,
    outcome: Outcome,
    target: &'a str,
    trace_id: &'a str,
    span_id: &'a str,
    trace_flags: u32,
    attributes: JsonObject<'a>,
    resource_attributes: JsonObject<'a>,
    scope_name: &'a str,
    prev_hash: String,
    hash: String,
}

impl<'a> Canonical<'a> {
    fn of(e: &'a AuditEvent) -> Self {
        Canonical {
            node: &e.node,
            seq: e.seq,
            event_id: &e.event_id,
            time_unix_nano: e.time_unix_nano,
            observed_time_unix_nano: e.observed_time_unix_nano,
            received_time_unix_nano: e.received_time_unix_nano,
            tenant: &e.tenant,
            service_name: &e.service_name,
            event_name: &e.event_name,
            severity_number: e.severity_number,
            severity_text: &e.severity_text,
            actor_id: &e.actor_id,
            actor_name: &e.actor_name,
            client_address: &e.client_address,
            outcome: e.outcome,
            target: &e.target,
            trace_id: &e.trace_id,
            span_id: &e.span_id,
            trace_flags: e.trace_flags,
            attributes: JsonObject(&e.attributes),
            resource_attributes: JsonObject(&e.resource_attributes),
            scope_name: &e.scope_name,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

/// `severity_id` and its caption from the OTLP severity number: TRACE to
/// INFO (1–12) are Informational, WARN (13–16) Low, ERROR (17–20) Medium,
/// FATAL (21–24) Fatal; none (0) or out of range is Unknown.
pub fn severity(severity_number: i32) -> (u8, &'static str) {
    match severity_number {
        1..=12 => (1, "Informational"),
        13..=16 => (2, "Low"),
        17..=20 => (3, "Medium"),
        21..=24 => (6, "Fatal"),
        _ => (0, "Unknown"),
    }
}

/// `status_id` and its caption from `audit.outcome`.
pub fn status(outcome: Outcome) -> (u8, &'static str) {
    match outcome {
        Outcome::Success => (1, "Success"),
        Outcome::Failure => (2, "Failure"),
        Outcome::Unknown => (0, "Unknown"),
    }
}

/// A host name as RFC 1123 allows it (letters, digits, `-` and `.`).
fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn endpoint(address: &str) -> Option<Endpoint<'_>> {
    if address.is_empty() {
        return None;
    }
    let mut endpoint = Endpoint::default();
    if address.parse::<IpAddr>().is_ok() {
        endpoint.ip = Some(address);
    } else if is_hostname(address) {
        endpoint.hostname = Some(address);
    } else {
        endpoint.name = Some(address);
    }
    Some(endpoint)
}

fn ms(unix_nano: u64) -> u64 {
    unix_nano / 1_000_000
}

impl<'a> OcsfEvent<'a> {
    fn of(e: &'a AuditEvent, rule: Rule) -> Self {
        let class = rule.class;
        let (severity_id, severity) = severity(e.severity_number);
        let (status_id, status) = status(e.outcome);
        let user = (!e.actor_id.is_empty() || !e.actor_name.is_empty()).then_some(User {
            uid: &e.actor_id,
            name: &e.actor_name,
        });
        let known_actor = (user.is_some() || !e.service_name.is_empty()).then_some(Actor {
            user,
            app_name: &e.service_name,
        });
        let unknown_actor = || Actor {
            user: None,
            app_name: UNKNOWN,
        };
        let src = endpoint(&e.client_address);
        let unknown_src = || Endpoint {
            name: Some(UNKNOWN),
            ..Endpoint::default()
        };
        let target = (!e.target.is_empty()).then_some(e.target.as_str());
        let with_trace = class == OcsfClass::ApiActivity && !e.trace_id.is_empty();
        let mut event = OcsfEvent {
            activity_id: rule.activity_id(),
            // OCSF: for Other, activity_name holds the source's own value.
            activity_name: if rule.activity_id() == 99 && !e.event_name.is_empty() {
                &e.event_name
            } else {
                rule.activity_caption()
            },
            category_uid: class.category_uid(),
            category_name: class.category_name(),
            class_uid: class.uid(),
            class_name: class.caption(),
            type_uid: rule.type_uid(),
            type_name: TypeName(rule),
            severity_id,
            severity,
            status_id,
            status,
            time: ms(e.time_unix_nano),
            message: &e.body,
            metadata: Metadata {
                version: OCSF_VERSION,
                product: PRODUCT,
                uid: &e.event_id,
                event_code: &e.event_name,
                tenant_uid: &e.tenant,
                correlation_uid: &e.trace_id,
                logged_time: ms(e.received_time_unix_nano),
                profiles: if with_trace { &["trace"] } else { &[] },
            },
            actor: None,
            user: None,
            api: None,
            service: None,
            src_endpoint: None,
            resources: None,
            database: None,
            file: None,
            log_provider: None,
            log_name: None,
            trace: with_trace.then_some(Trace { uid: &e.trace_id }),
            observables: Vec::new(),
            unmapped: Unmapped {
                auditrail: Canonical::of(e),
            },
        };
        match class {
            OcsfClass::Authentication => {
                event.user = Some(user.unwrap_or(User {
                    uid: "",
                    name: UNKNOWN,
                }));
                event.actor = known_actor;
                // Required: a service or a dst_endpoint.
                event.service = Some(Named {
                    name: non_empty(&e.service_name),
                });
                event.src_endpoint = src;
            }
            OcsfClass::ApiActivity => {
                event.actor = Some(known_actor.unwrap_or_else(unknown_actor));
                event.api = Some(Api {
                    operation: non_empty(&e.event_name),
                    service: (!e.service_name.is_empty()).then_some(Named {
                        name: &e.service_name,
                    }),
                });
                event.src_endpoint = Some(src.unwrap_or_else(unknown_src));
                event.resources = target.map(|name| [Named { name }]);
            }
            OcsfClass::DatastoreActivity => {
                event.actor = Some(known_actor.unwrap_or_else(unknown_actor));
                event.src_endpoint = Some(src.unwrap_or_else(unknown_src));
                event.database = Some(Database {
                    name: target.unwrap_or(UNKNOWN),
                    type_id: 0,
                    kind: "Unknown",
                });
            }
            OcsfClass::FileHostingActivity => {
                event.actor = Some(known_actor.unwrap_or_else(unknown_actor));
                event.src_endpoint = Some(src.unwrap_or_else(unknown_src));
                event.file = Some(match target {
                    Some(path) => File {
                        // A path's last component; the whole target when
                        // that is empty (`dir/`).
                        name: path
                            .rsplit('/')
                            .next()
                            .filter(|n| !n.is_empty())
                            .unwrap_or(path),
                        path: path.contains('/').then_some(path),
                        type_id: 0,
                        kind: "Unknown",
                    },
                    None => File {
                        name: UNKNOWN,
                        path: None,
                        type_id: 0,
                        kind: "Unknown",
                    },
                });
            }
            OcsfClass::EventLogActivity => {
                event.actor = known_actor;
                event.src_endpoint = src;
                // One of log_file, log_name, log_provider, log_type or
                // log_type_id is required: the log is auditrail's own.
                event.log_provider = Some("auditrail");
                event.log_name = target;
            }
        }
        event.observables = observables(&event);
        event
    }
}

fn non_empty(s: &str) -> &str {
    if s.is_empty() {
        UNKNOWN
    } else {
        s
    }
}

/// The values a SIEM indexes for search (OCSF observables), with the
/// attribute path each is at; placeholders are not observed values.
fn observables<'a>(event: &OcsfEvent<'a>) -> Vec<Observable<'a>> {
    let mut out = Vec::new();
    let mut user = |user: &User<'a>, uid: &'static str, name: &'static str| {
        if !user.name.is_empty() && user.name != UNKNOWN {
            // 4: User Name.
            out.push(Observable {
                name,
                type_id: 4,
                value: user.name,
            });
        }
        if !user.uid.is_empty() {
            // 31: User UID.
            out.push(Observable {
                name: uid,
                type_id: 31,
                value: user.uid,
            });
        }
    };
    if let Some(u) = &event.user {
        user(u, "user.uid", "user.name");
    } else if let Some(u) = event.actor.as_ref().and_then(|a| a.user.as_ref()) {
        user(u, "actor.user.uid", "actor.user.name");
    }
    if let Some(src) = &event.src_endpoint {
        if let Some(ip) = src.ip {
            // 2: IP Address.
            out.push(Observable {
                name: "src_endpoint.ip",
                type_id: 2,
                value: ip,
            });
        }
        if let Some(host) = src.hostname {
            // 1: Hostname.
            out.push(Observable {
                name: "src_endpoint.hostname",
                type_id: 1,
                value: host,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::line_safe::must_escape;
    use crate::encoding::line_safe::tests::{attributes_holding, text};
    use proptest::prelude::*;
    use serde_json::Value;

    fn event(name: &str) -> AuditEvent {
        AuditEvent {
            node: "n1".into(),
            seq: 42,
            event_id: "e-42".into(),
            time_unix_nano: 1_700_000_000_123_456_789,
            observed_time_unix_nano: 1_700_000_000_123_456_789,
            received_time_unix_nano: 1_700_000_001_000_000_000,
            tenant: "acme".into(),
            service_name: "imagegen-ui".into(),
            event_name: name.into(),
            severity_number: 9,
            severity_text: "INFO".into(),
            actor_id: "user-1".into(),
            actor_name: "Alice".into(),
            client_address: "198.51.100.4".into(),
            outcome: Outcome::Success,
            target: "models/sdxl".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            trace_flags: 1,
            body: "a cat\nin a hat".into(),
            attributes: r#"{"audit.outcome":"success","user.id":"user-1"}"#.into(),
            resource_attributes: r#"{"service.name":"imagegen-ui"}"#.into(),
            scope_name: "audit".into(),
            prev_hash: [1; 32],
            hash: [2; 32],
        }
    }

    fn ocsf(e: &AuditEvent) -> Value {
        ocsf_with(e, &OcsfMapping::default())
    }

    fn ocsf_with(e: &AuditEvent, mapping: &OcsfMapping) -> Value {
        let line = event_ocsf(e, mapping);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        serde_json::from_str(&line).unwrap()
    }

    /// The value at a dotted path, which must be there.
    fn at<'v>(v: &'v Value, path: &str) -> &'v Value {
        path.split('.').fold(v, |v, key| {
            let next = match key.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[key],
            };
            assert!(!next.is_null(), "{path} is missing in {v}");
            next
        })
    }

    fn assert_base(v: &Value, class_uid: u64, activity_id: u64) {
        assert_eq!(v["class_uid"], class_uid);
        assert_eq!(v["activity_id"], activity_id);
        assert_eq!(v["category_uid"], class_uid / 1000);
        assert_eq!(v["type_uid"], class_uid * 100 + activity_id);
        assert!(v["severity_id"].is_u64());
        assert!(v["time"].is_u64());
        assert_eq!(at(v, "metadata.version"), OCSF_VERSION);
        assert_eq!(at(v, "metadata.product.name"), "auditrail");
        assert!(at(v, "metadata.product.vendor_name").is_string());
        assert!(at(v, "metadata.product.version").is_string());
        for caption in ["activity_name", "category_name", "class_name", "type_name"] {
            assert!(v[caption].is_string(), "{caption}");
        }
    }

    #[test]
    fn base_attributes_and_what_every_event_keeps() {
        let v = ocsf(&event("image.generate"));
        assert_base(&v, 6003, 1);
        assert_eq!(v["type_name"], "API Activity: Create");
        assert_eq!(v["category_name"], "Application Activity");
        assert_eq!(v["time"], 1_700_000_000_123u64);
        assert_eq!(
            (v["severity_id"].as_u64(), v["severity"].as_str()),
            (Some(1), Some("Informational"))
        );
        assert_eq!(
            (v["status_id"].as_u64(), v["status"].as_str()),
            (Some(1), Some("Success"))
        );
        assert_eq!(v["message"], "a cat\nin a hat");
        let m = &v["metadata"];
        assert_eq!(m["uid"], "e-42");
        assert_eq!(m["event_code"], "image.generate");
        assert_eq!(m["tenant_uid"], "acme");
        assert_eq!(m["correlation_uid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(m["logged_time"], 1_700_000_001_000u64);
        let c = at(&v, "unmapped.auditrail");
        assert_eq!(c["seq"], 42);
        assert_eq!(c["node"], "n1");
        assert_eq!(c["time_unix_nano"], 1_700_000_000_123_456_789u64);
        assert_eq!(c["span_id"], "b7ad6b7169203331");
        assert_eq!(c["attributes"]["user.id"], "user-1");
        assert_eq!(c["resource_attributes"]["service.name"], "imagegen-ui");
        assert_eq!(c["hash"], "02".repeat(32));
        assert_eq!(c["prev_hash"], "01".repeat(32));
        assert!(c.get("body").is_none(), "the body is `message`, once");
    }

    #[test]
    fn api_activity_has_actor_api_src_endpoint_and_the_trace() {
        let v = ocsf(&event("model_config.update"));
        assert_base(&v, 6003, 3);
        assert_eq!(at(&v, "actor.user.uid"), "user-1");
        assert_eq!(at(&v, "actor.user.name"), "Alice");
        assert_eq!(at(&v, "actor.app_name"), "imagegen-ui");
        assert_eq!(at(&v, "api.operation"), "model_config.update");
        assert_eq!(at(&v, "api.service.name"), "imagegen-ui");
        assert_eq!(at(&v, "src_endpoint.ip"), "198.51.100.4");
        assert_eq!(at(&v, "resources.0.name"), "models/sdxl");
        assert_eq!(at(&v, "trace.uid"), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["metadata"]["profiles"], serde_json::json!(["trace"]));
        let observed: Vec<(&str, u64)> = v["observables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["name"].as_str().unwrap(), o["type_id"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            observed,
            [
                ("actor.user.name", 4),
                ("actor.user.uid", 31),
                ("src_endpoint.ip", 2)
            ]
        );
    }

    #[test]
    fn authentication_has_the_user_and_the_service() {
        let mut e = event("user.login");
        e.outcome = Outcome::Failure;
        e.client_address = "gateway.internal".into();
        let v = ocsf(&e);
        assert_base(&v, 3002, 1);
        assert_eq!(v["category_name"], "Identity & Access Management");
        assert_eq!(at(&v, "user.uid"), "user-1");
        assert_eq!(at(&v, "service.name"), "imagegen-ui");
        assert_eq!(at(&v, "src_endpoint.hostname"), "gateway.internal");
        assert_eq!(
            (v["status_id"].as_u64(), v["status"].as_str()),
            (Some(2), Some("Failure"))
        );
        assert!(
            v.get("trace").is_none(),
            "Authentication has no trace profile"
        );
        assert_eq!(v["metadata"]["correlation_uid"], e.trace_id.as_str());
        assert_eq!(ocsf(&event("user.logout"))["activity_id"], 2);
    }

    #[test]
    fn datastore_and_file_hosting_have_actor_src_endpoint_and_the_target() {
        let v = ocsf(&event("dataset.read"));
        assert_base(&v, 6005, 1);
        assert!(at(&v, "actor").is_object() && at(&v, "src_endpoint").is_object());
        assert_eq!(at(&v, "database.name"), "models/sdxl");
        assert_eq!(at(&v, "database.type_id"), 0);

        let v = ocsf(&event("file.upload"));
        assert_base(&v, 6006, 1);
        assert_eq!(at(&v, "file.name"), "sdxl");
        assert_eq!(at(&v, "file.path"), "models/sdxl");
        assert_eq!(at(&v, "file.type_id"), 0);
        assert!(at(&v, "actor").is_object() && at(&v, "src_endpoint").is_object());
    }

    #[test]
    fn auditrails_own_events_are_event_log_activity() {
        let v = ocsf(&event("auditrail.tombstone"));
        assert_base(&v, 1008, 99);
        assert_eq!(v["type_uid"], 100899);
        assert_eq!(
            v["activity_name"], "auditrail.tombstone",
            "Other names the source's value"
        );
        assert_eq!(v["type_name"], "Event Log Activity: Other");
        assert_eq!(v["category_name"], "System Activity");
        assert_eq!(v["log_provider"], "auditrail");
    }

    #[test]
    fn an_event_that_says_little_still_has_every_required_attribute() {
        let bare = AuditEvent {
            event_name: String::new(),
            ..AuditEvent::default()
        };
        let v = ocsf(&bare);
        assert_base(&v, 6003, 99);
        assert_eq!(v["activity_name"], "Other");
        assert_eq!(at(&v, "actor.app_name"), UNKNOWN);
        assert_eq!(at(&v, "api.operation"), UNKNOWN);
        assert_eq!(at(&v, "src_endpoint.name"), UNKNOWN);
        assert_eq!(
            (v["severity_id"].as_u64(), v["status_id"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(
            v.get("observables").is_none(),
            "a placeholder is no observation"
        );
        assert!(v.get("message").is_none());
        for name in ["user.login", "dataset.read", "file.open"] {
            let e = AuditEvent {
                event_name: name.into(),
                ..AuditEvent::default()
            };
            let v = ocsf(&e);
            match v["class_uid"].as_u64().unwrap() {
                3002 => {
                    assert_eq!(at(&v, "user.name"), UNKNOWN);
                    assert_eq!(at(&v, "service.name"), UNKNOWN);
                }
                6005 => assert_eq!(at(&v, "database.name"), UNKNOWN),
                6006 => assert_eq!(at(&v, "file.name"), UNKNOWN),
                other => panic!("{name}: class {other}"),
            }
        }
    }

    #[test]
    fn severity_follows_the_otlp_ranges() {
        for (number, id) in [
            (0, 0),
            (1, 1),
            (9, 1),
            (12, 1),
            (13, 2),
            (17, 3),
            (21, 6),
            (24, 6),
            (25, 0),
            (-3, 0),
        ] {
            assert_eq!(severity(number).0, id, "severity_number {number}");
        }
    }

    #[test]
    fn a_config_rule_wins_over_the_default() {
        let mapping: OcsfMapping = toml::from_str(
            "[events]\n\"image.generate\" = { class = \"file_hosting_activity\", activity = \"upload\" }\n",
        )
        .unwrap();
        let v = ocsf_with(&event("image.generate"), &mapping);
        assert_base(&v, 6006, 1);
        assert_eq!(at(&v, "file.name"), "sdxl");
        // Other names keep their default.
        assert_eq!(ocsf_with(&event("user.login"), &mapping)["class_uid"], 3002);
    }

    proptest! {
        #[test]
        fn any_event_is_one_line_with_its_class_ids_consistent(
            name in prop_oneof![
                Just("user.login".to_string()), Just("dataset.read".to_string()),
                Just("file.share".to_string()), Just("auditrail.x".to_string()), text(),
            ],
            body in text(),
            actor in text(),
            address in text(),
            target in text(),
            attributes in prop_oneof![any::<String>(), text().prop_map(|t| attributes_holding(&t))],
            severity_number in any::<i32>(),
        ) {
            let e = AuditEvent {
                event_name: name, body, actor_id: actor, client_address: address,
                target, attributes, severity_number, ..event("x")
            };
            let line = event_ocsf(&e, &OcsfMapping::default());
            prop_assert!(!line.chars().any(must_escape), "{line:?}");
            let v: Value = serde_json::from_str(&line).unwrap();
            let class = v["class_uid"].as_u64().unwrap();
            let activity = v["activity_id"].as_u64().unwrap();
            prop_assert_eq!(v["type_uid"].as_u64(), Some(class * 100 + activity));
            prop_assert_eq!(v["category_uid"].as_u64(), Some(class / 1000));
            let required: &[&str] = match class {
                3002 => &["user", "service"],
                6003 => &["actor", "api", "src_endpoint"],
                6005 => &["actor", "src_endpoint", "database"],
                6006 => &["actor", "src_endpoint", "file"],
                1008 => &["log_provider"],
                other => panic!("class {other}"),
            };
            for key in required {
                prop_assert!(v.get(*key).is_some(), "{} lacks {}", class, key);
            }
            prop_assert_eq!(v["message"].as_str().unwrap_or(""), e.body.as_str());
            prop_assert_eq!(v["unmapped"]["auditrail"]["actor_id"].as_str(), Some(e.actor_id.as_str()));
        }
    }
}
