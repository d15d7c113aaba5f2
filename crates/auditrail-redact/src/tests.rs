//! Redaction of whole requests, as the receiver runs it, checked on the
//! events the mapping then makes of them.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;

use auditrail_model::{map_request, AuditEvent, ReceiveContext};

use crate::policy::Replacer;
use crate::redactor::replace_str;
use crate::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.into())),
    }
}

fn int(v: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(v)),
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..KeyValue::default()
    }
}

fn request_of(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s(service)), kv("host.name", s("gpu-7"))],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

fn record(event: &str, body: &str, attributes: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        event_name: event.into(),
        body: Some(s(body)),
        attributes,
        ..LogRecord::default()
    }
}

fn rule(attributes: &[&str], body: bool, action: Action) -> RuleSpec {
    RuleSpec {
        name: None,
        attributes: attributes.iter().map(|a| (*a).to_owned()).collect(),
        resource_attributes: Vec::new(),
        body,
        action,
    }
}

fn regex_rule(attributes: &[&str], body: bool, patterns: &[&str]) -> RuleSpec {
    rule(
        attributes,
        body,
        Action::Regex {
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            regexes: Vec::new(),
            replacement: None,
        },
    )
}

fn redactor(rules: &[RuleSpec], capture: &CaptureSpec) -> Redactor {
    let policy = Policy::new(rules, capture).expect("a valid policy");
    Redactor::new(policy, Keyring::from_keys([("acme", 2, KEY)]))
}

fn events(request: &ExportLogsServiceRequest) -> Vec<AuditEvent> {
    let ctx = ReceiveContext {
        tenant: "acme".into(),
        received_time_unix_nano: 1,
        max_event_bytes: 1 << 20,
        max_clock_skew_nanos: 0,
    };
    let mapped = map_request(request, &ctx);
    assert!(mapped.rejected.is_empty(), "{:?}", mapped.rejected);
    mapped.events
}

fn attributes(event: &AuditEvent) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&event.attributes).expect("attributes are JSON")
}

fn hmac_of(value: &str) -> String {
    Keyring::from_keys([("t", 2, KEY)])
        .tenant("t")
        .unwrap()
        .hash(value)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------
// HMAC

/// Computed independently (Python's `hmac` module) with `KEY`.
#[test]
fn hmac_matches_an_independent_computation() {
    let keys = Keyring::from_keys([("t", 2, KEY)]);
    let keys = keys.tenant("t").unwrap();
    assert_eq!(
        keys.hash("alice-7f3e"),
        "hmac-sha256:v2:960ddf949ae80402adb430890f0211fa886cb64e263aaf52fceff1cf5c470f1b"
    );
    assert_eq!(
        keys.hash("Ünïcødé 漢字"),
        "hmac-sha256:v2:8bf562df49ab3e17e264cd6f38e455c9c32f25684beb5f1ce518ebc4312d26c5"
    );
}

/// A value that is not a string is hashed as the text the event stores
/// (its canonical JSON), so `auditrail hash 42` finds an int user id 42.
#[test]
fn a_non_string_value_is_hashed_as_its_stored_text() {
    let r = redactor(
        &[rule(&["user.id"], false, Action::Hmac)],
        &CaptureSpec::default(),
    );
    let mut req = request_of("svc", vec![record("e", "b", vec![kv("user.id", int(42))])]);
    r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(
        e.actor_id,
        "hmac-sha256:v2:3b12d0412db185c98ff58825ed4c81cfbc7bdabcf33ac48bdaaae5f39fc65445"
    );
}

// ---------------------------------------------------------------------------
// Canonical fields

/// Every attribute that fills a canonical field, redacted by a rule:
/// neither the attribute nor the field, nor anything else in the canonical
/// bytes, holds the clear text.
#[test]
fn canonical_fields_are_mapped_from_the_redacted_attributes() {
    let clear = [
        ("user.id", "alice-7f3e"),
        ("enduser.id", "alice-enduser-9"),
        ("user.name", "Alice Liddell"),
        ("client.address", "203.0.113.77"),
        ("source.address", "198.51.100.23"),
        ("audit.target", "dataset/alice-private-notes"),
    ];
    let attrs: Vec<KeyValue> = clear.iter().map(|(k, v)| kv(k, s(v))).collect();
    for (key, _) in clear {
        for action in [Action::Hmac, Action::Mask(Keep::Prefix(0)), Action::Drop] {
            // The rule names this key only: the canonical field it fills is
            // the one that must follow.
            let r = redactor(
                &[rule(&[key], false, action.clone())],
                &CaptureSpec::default(),
            );
            let mut req = request_of("svc", vec![record("e", "b", attrs.clone())]);
            r.redact(&mut req, "acme").unwrap();
            let e = &events(&req)[0];
            let bytes = e.canonical_bytes();
            let value = clear.iter().find(|(k, _)| *k == key).unwrap().1;
            assert!(
                !contains(&bytes, value),
                "{key} with {action:?}: {value} is still in the canonical bytes: {e:?}"
            );
        }
    }

    // Both the preferred and the fallback attribute of every field.
    let r = redactor(
        &[rule(
            &[
                "user.*",
                "enduser.id",
                "client.address",
                "source.address",
                "audit.target",
            ],
            false,
            Action::Hmac,
        )],
        &CaptureSpec::default(),
    );
    let mut req = request_of("svc", vec![record("e", "b", attrs.clone())]);
    r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(e.actor_id, hmac_of("alice-7f3e"));
    assert_eq!(e.actor_name, hmac_of("Alice Liddell"));
    assert_eq!(e.client_address, hmac_of("203.0.113.77"));
    assert_eq!(e.target, hmac_of("dataset/alice-private-notes"));
    assert_eq!(attributes(e)["user.id"], hmac_of("alice-7f3e"));
    let bytes = e.canonical_bytes();
    for (_, value) in clear {
        assert!(!contains(&bytes, value), "{value} in {e:?}");
    }

    // The fallback fills the field when the preferred one is dropped.
    let r = redactor(
        &[rule(&["user.id"], false, Action::Drop)],
        &CaptureSpec::default(),
    );
    let mut req = request_of("svc", vec![record("e", "b", attrs)]);
    r.redact(&mut req, "acme").unwrap();
    assert_eq!(events(&req)[0].actor_id, "alice-enduser-9");
}

/// A record without `log.record.uid` gets a content-hash id: of the
/// redacted record, so the id is no unkeyed hash of the clear text, and a
/// retry of the same record still gets the same id.
#[test]
fn content_hash_ids_are_of_the_redacted_record() {
    let r = redactor(
        &[rule(&["user.id"], false, Action::Hmac)],
        &CaptureSpec::default(),
    );
    let sent = request_of(
        "svc",
        vec![record("e", "b", vec![kv("user.id", s("alice"))])],
    );
    let clear_id = events(&sent)[0].event_id.clone();
    let mut first = sent.clone();
    let mut retry = sent;
    r.redact(&mut first, "acme").unwrap();
    r.redact(&mut retry, "acme").unwrap();
    let (first, retry) = (&events(&first)[0], &events(&retry)[0]);
    assert_ne!(first.event_id, clear_id);
    assert_eq!(first.event_id, retry.event_id);
}

#[test]
fn reserved_attributes_are_never_touched() {
    let r = redactor(
        &[
            regex_rule(&["*"], false, &["ipv4"]),
            rule(&["audit.*"], false, Action::Drop),
        ],
        &CaptureSpec::default(),
    );
    let mut req = request_of(
        "svc",
        vec![record(
            "",
            "b",
            vec![
                kv("log.record.uid", s("run-10.0.0.1-7")),
                kv("event.name", s("login-from-10.0.0.1")),
                kv("audit.outcome", s("success")),
                kv("audit.target", s("x")),
                kv("peer", s("10.0.0.1")),
            ],
        )],
    );
    r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(e.event_id, "run-10.0.0.1-7");
    assert_eq!(e.event_name, "login-from-10.0.0.1");
    assert_eq!(e.outcome.as_str(), "success");
    assert_eq!(e.target, "", "audit.target is not reserved");
    assert_eq!(attributes(e)["peer"], "[redacted:ipv4]");

    for reserved in RESERVED_ATTRIBUTES {
        let err = Policy::new(
            &[rule(&[reserved], false, Action::Drop)],
            &CaptureSpec::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rules[0]") && err.contains(reserved), "{err}");
    }
}

// ---------------------------------------------------------------------------
// Rules

#[test]
fn hmac_mask_drop_and_regex_on_attributes_body_and_resource() {
    let rules = [
        rule(&["user.id"], false, Action::Hmac),
        rule(&["user.phone"], false, Action::Mask(Keep::Suffix(4))),
        rule(&["http.request.header.authorization"], false, Action::Drop),
        RuleSpec {
            resource_attributes: vec!["host.name".into()],
            ..rule(&[], false, Action::Mask(Keep::Prefix(2)))
        },
        regex_rule(
            &["note", "chat.*"],
            true,
            &["email", "api_key", "phone", "ip"],
        ),
    ];
    let r = redactor(&rules, &CaptureSpec::default());
    let body = "mail alice.liddell@example.com, key sk-proj-AbCdEf0123456789GhIjKlMnOp, \
                call +1 415 555 0134 from 203.0.113.77 or 2001:db8::7";
    let mut req = request_of(
        "svc",
        vec![record(
            "chat.completion",
            body,
            vec![
                kv("user.id", s("alice-7f3e")),
                kv("user.phone", s("+14155550134")),
                kv("http.request.header.authorization", s("Bearer abc")),
                kv("note", s("cc bob@example.org")),
                kv(
                    "chat.history",
                    AnyValue {
                        value: Some(Value::ArrayValue(ArrayValue {
                            values: vec![
                                s("ask carol@example.net"),
                                AnyValue {
                                    value: Some(Value::KvlistValue(KeyValueList {
                                        values: vec![kv("ip", s("10.1.2.3")), kv("n", int(7))],
                                    })),
                                },
                            ],
                        })),
                    },
                ),
                kv("untouched", s("dave@example.com")),
            ],
        )],
    );
    let report = r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(
        e.body,
        "mail [redacted:email], key [redacted:api_key], call [redacted:phone] from \
         [redacted:ipv4] or [redacted:ipv6]"
    );
    let a = attributes(e);
    assert_eq!(a["user.id"], hmac_of("alice-7f3e"));
    assert_eq!(a["user.phone"], "********0134");
    assert!(!a.contains_key("http.request.header.authorization"));
    assert_eq!(a["note"], "cc [redacted:email]");
    assert_eq!(
        a["chat.history"],
        serde_json::json!(["ask [redacted:email]", {"ip": "[redacted:ipv4]", "n": 7}])
    );
    assert_eq!(a["untouched"], "dave@example.com", "no rule names it");
    assert_eq!(
        e.resource_attributes,
        r#"{"host.name":"gp***","service.name":"svc"}"#
    );
    // Per rule: 1 hmac, 1 mask, 1 drop, 1 resource mask, 5 + 1 + 2 regex matches.
    assert_eq!(report.by_rule, [1, 1, 1, 1, 8]);
    let labels: Vec<_> = r.policy().rule_labels().collect();
    assert_eq!(labels[0], ("hmac:user.id", "hmac"));
    assert_eq!(labels[3], ("mask:host.name", "mask"));
}

#[test]
fn body_rules_hmac_mask_and_drop_the_whole_body() {
    for (action, want) in [
        (Action::Hmac, Some(hmac_of("secret prompt"))),
        (
            Action::Mask(Keep::Prefix(3)),
            Some("sec**********".to_owned()),
        ),
        (Action::Drop, None),
    ] {
        let r = redactor(&[rule(&[], true, action)], &CaptureSpec::default());
        let mut req = request_of("svc", vec![record("e", "secret prompt", vec![])]);
        r.redact(&mut req, "acme").unwrap();
        let body = &req.resource_logs[0].scope_logs[0].log_records[0].body;
        assert_eq!(
            body.as_ref().map(|b| match &b.value {
                Some(Value::StringValue(s)) => s.clone(),
                other => panic!("{other:?}"),
            }),
            want
        );
    }
}

#[test]
fn own_regexes_named_replacements_and_hmac_of_matches() {
    let rule = RuleSpec {
        name: Some("orders".into()),
        ..rule(
            &[],
            true,
            Action::Regex {
                patterns: vec!["email".into()],
                regexes: vec![("order_id".into(), r"order-(\d{6})".into())],
                replacement: Some("<{pattern}:{hmac}>".into()),
            },
        )
    };
    let r = redactor(&[rule], &CaptureSpec::default());
    let mut req = request_of(
        "svc",
        vec![record("e", "order-123456 for bob@example.org", vec![])],
    );
    let report = r.redact(&mut req, "acme").unwrap();
    assert_eq!(
        events(&req)[0].body,
        format!(
            "<order_id:{}> for <email:{}>",
            hmac_of("order-123456"),
            hmac_of("bob@example.org")
        )
    );
    assert_eq!(report.by_rule, [2]);
    assert_eq!(r.policy().rule_labels().next(), Some(("orders", "regex")));
    assert!(r.policy().needs_keys());
}

/// Of two matches that overlap, the first is replaced and what of the
/// second reaches past it goes with it: nothing of either stays.
#[test]
fn overlapping_matches_leave_nothing_in_clear() {
    let rule = rule(
        &[],
        true,
        Action::Regex {
            patterns: Vec::new(),
            regexes: vec![("a".into(), "abc".into()), ("b".into(), "bcdef".into())],
            replacement: None,
        },
    );
    let r = redactor(&[rule], &CaptureSpec::default());
    let mut req = request_of("svc", vec![record("e", "x abcdef y bcdef", vec![])]);
    r.redact(&mut req, "acme").unwrap();
    assert_eq!(events(&req)[0].body, "x [redacted:a] y [redacted:b]");
}

#[test]
fn rules_apply_in_config_order_and_stop_at_a_drop() {
    let r = redactor(
        &[
            rule(&["k"], false, Action::Mask(Keep::Prefix(1))),
            rule(&["k*"], false, Action::Hmac),
            rule(&["k"], false, Action::Drop),
            rule(&["k"], false, Action::Hmac),
        ],
        &CaptureSpec::default(),
    );
    let mut req = request_of(
        "svc",
        vec![record(
            "e",
            "b",
            vec![kv("k", s("value")), kv("keep", s("v"))],
        )],
    );
    let report = r.redact(&mut req, "acme").unwrap();
    let a = attributes(&events(&req)[0]);
    assert!(!a.contains_key("k"));
    assert_eq!(a["keep"], hmac_of("v"), "k* matches keep");
    assert_eq!(report.by_rule, [1, 2, 1, 0]);
}

#[test]
fn a_tenant_without_a_key_is_refused_and_any_tenant_keys_serve_the_rest() {
    let policy = Policy::new(
        &[rule(&["user.id"], false, Action::Hmac)],
        &CaptureSpec::default(),
    )
    .unwrap();
    let only_acme = Redactor::new(policy.clone(), Keyring::from_keys([("acme", 1, KEY)]));
    let mut req = request_of("svc", vec![record("e", "b", vec![kv("user.id", s("a"))])]);
    let err = only_acme.redact(&mut req.clone(), "globex").unwrap_err();
    assert_eq!(
        err,
        RedactError::NoKey {
            tenant: "globex".into()
        }
    );
    assert!(err.to_string().contains("[[redaction.keys]]"), "{err}");
    let fallback = Redactor::new(policy, Keyring::from_keys([("*", 1, KEY)]));
    fallback.redact(&mut req, "globex").unwrap();
    assert!(events(&req)[0].actor_id.starts_with("hmac-sha256:v1:"));

    // Rules without hmac need no key.
    let masking = Redactor::new(
        Policy::new(
            &[rule(&["user.id"], false, Action::Drop)],
            &CaptureSpec::default(),
        )
        .unwrap(),
        Keyring::default(),
    );
    assert!(masking.redact(&mut req.clone(), "globex").is_ok());
}

#[test]
fn nothing_configured_changes_nothing() {
    let r = Redactor::new(
        Policy::new(&[], &CaptureSpec::default()).unwrap(),
        Keyring::default(),
    );
    assert!(!r.is_active());
    assert!(!Redactor::disabled().is_active());
    let sent = request_of(
        "svc",
        vec![record(
            "e",
            "alice@example.com",
            vec![kv("user.id", s("a"))],
        )],
    );
    let mut req = sent.clone();
    r.redact(&mut req, "anyone").unwrap();
    assert_eq!(req, sent);
}

// ---------------------------------------------------------------------------
// Capture

fn capture(level: Level, cap: Option<usize>) -> CaptureSpec {
    CaptureSpec {
        level,
        max_body_bytes: cap,
        ..CaptureSpec::default()
    }
}

#[test]
fn metadata_drops_the_body_and_prompt_attributes_and_says_how_much() {
    let r = redactor(&[], &capture(Level::Metadata, None));
    let mut req = request_of(
        "dify-api",
        vec![record(
            "chat.completion",
            "a prompt of 27 bytes here!!",
            vec![
                kv("gen_ai.prompt", s("p".repeat(100).as_str())),
                kv("gen_ai.prompt.0.content", s("pp")),
                kv("gen_ai.input.messages", int(12345)),
                kv("gen_ai.request.model", s("gpt-4o")),
                kv("user.id", s("alice")),
            ],
        )],
    );
    let report = r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(e.body, "");
    let a = attributes(e);
    assert_eq!(a["audit.truncated_bytes"], 27);
    assert_eq!(
        a["audit.truncated_attributes"],
        serde_json::json!({"gen_ai.prompt": 100, "gen_ai.prompt.0.content": 2, "gen_ai.input.messages": 5})
    );
    assert_eq!(a["gen_ai.request.model"], "gpt-4o", "not prompt-like");
    assert_eq!(e.actor_id, "alice");
    assert!(!a.contains_key("gen_ai.prompt"));
    assert_eq!(report.dropped_by_level, 4);
    assert_eq!(report.cut_bytes, 27 + 100 + 2 + 5);
}

#[test]
fn the_cap_cuts_at_a_character_boundary_and_records_the_size_as_sent() {
    let r = redactor(&[], &capture(Level::Full, Some(11)));
    // "é" is 2 bytes: the 11th byte is the first half of the fourth.
    let body = "abcdéééééé";
    let mut req = request_of(
        "svc",
        vec![
            record(
                "e",
                body,
                vec![kv("gen_ai.output.messages", s("0123456789ab"))],
            ),
            record("e", "short", vec![kv("gen_ai.prompt", s("also short"))]),
        ],
    );
    let report = r.redact(&mut req, "acme").unwrap();
    let [cut, kept] = &events(&req)[..] else {
        panic!()
    };
    assert_eq!(cut.body, "abcdééé");
    let a = attributes(cut);
    assert_eq!(a["audit.truncated_bytes"], body.len());
    assert_eq!(a["gen_ai.output.messages"], "0123456789a");
    assert_eq!(
        a["audit.truncated_attributes"],
        serde_json::json!({"gen_ai.output.messages": 12})
    );
    assert_eq!(kept.body, "short");
    assert!(!attributes(kept).contains_key("audit.truncated_bytes"));
    assert_eq!(report.truncated_by_cap, 2);
}

/// A non-string body over the cap becomes the first bytes of its JSON.
#[test]
fn a_structured_body_over_the_cap_becomes_text() {
    let r = redactor(&[], &capture(Level::Full, Some(8)));
    let mut rec = record("e", "", vec![]);
    rec.body = Some(AnyValue {
        value: Some(Value::KvlistValue(KeyValueList {
            values: vec![kv("prompt", s("long enough"))],
        })),
    });
    let mut req = request_of("svc", vec![rec]);
    r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(e.body, r#"{"prompt"#);
    assert_eq!(attributes(e)["audit.truncated_bytes"], 24);
}

/// The rules see the whole value before the cap cuts it: a key that
/// straddles the cap is still found.
#[test]
fn rules_run_before_the_cap() {
    let key = "sk-proj-AbCdEf0123456789GhIjKlMnOp";
    let body = format!("{} {key} and more", "x".repeat(19));
    let r = redactor(
        &[regex_rule(&[], true, &["api_key"])],
        &capture(Level::Full, Some(30)),
    );
    let mut req = request_of("svc", vec![record("e", &body, vec![])]);
    r.redact(&mut req, "acme").unwrap();
    let e = &events(&req)[0];
    assert_eq!(e.body, format!("{} [redacted:", "x".repeat(19)));
    assert!(!e.body.contains("sk-proj"));
    assert_eq!(attributes(e)["audit.truncated_bytes"], body.len());
}

#[test]
fn overrides_by_service_and_event_first_match_wins() {
    let spec = CaptureSpec {
        overrides: vec![
            CaptureOverride {
                service: Some("dify-*".into()),
                event: Some("chat.completion".into()),
                level: Some(Level::Metadata),
                ..CaptureOverride::default()
            },
            CaptureOverride {
                event: Some("image.*".into()),
                max_body_bytes: Some(4),
                ..CaptureOverride::default()
            },
            // Matches chat.completion too, but comes after the first.
            CaptureOverride {
                event: Some("chat.*".into()),
                max_body_bytes: Some(3),
                ..CaptureOverride::default()
            },
        ],
        ..CaptureSpec::default()
    };
    let r = redactor(&[], &spec);
    assert!(r.is_active());
    let mut req = request_of(
        "dify-api",
        vec![
            record("chat.completion", "prompt", vec![]),
            record("image.generate", "a lighthouse", vec![]),
            record(
                "",
                "event from the attribute",
                vec![kv("event.name", s("image.delete"))],
            ),
            record("user.login", "kept whole", vec![]),
            record("chat.summary", "summary", vec![]),
        ],
    );
    r.redact(&mut req, "acme").unwrap();
    let bodies: Vec<String> = events(&req).into_iter().map(|e| e.body).collect();
    assert_eq!(bodies, ["", "a li", "even", "kept whole", "sum"]);
    let mut other = request_of(
        "imagegen-ui",
        vec![record("chat.completion", "prompt", vec![])],
    );
    r.redact(&mut other, "acme").unwrap();
    assert_eq!(
        events(&other)[0].body,
        "pro",
        "another service: the chat.* cap"
    );
}

#[test]
fn an_earlier_hops_larger_size_stays() {
    let r = redactor(&[], &capture(Level::Full, Some(4)));
    let mut req = request_of(
        "svc",
        vec![
            record(
                "e",
                "0123456789",
                vec![kv("audit.truncated_bytes", int(5000))],
            ),
            record("e", "0123456789", vec![kv("audit.truncated_bytes", int(3))]),
        ],
    );
    r.redact(&mut req, "acme").unwrap();
    let sizes: Vec<_> = events(&req)
        .iter()
        .map(|e| attributes(e)["audit.truncated_bytes"].clone())
        .collect();
    assert_eq!(sizes, [5000, 10]);
}

// ---------------------------------------------------------------------------
// Policy errors

#[test]
fn policy_errors_name_the_rule_and_the_problem() {
    let err = |rules: &[RuleSpec]| {
        Policy::new(rules, &CaptureSpec::default())
            .unwrap_err()
            .to_string()
    };
    let regex = |patterns: &[&str], regexes: &[(&str, &str)], replacement: Option<&str>| {
        rule(
            &[],
            true,
            Action::Regex {
                patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
                regexes: regexes
                    .iter()
                    .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
                    .collect(),
                replacement: replacement.map(str::to_owned),
            },
        )
    };
    let ok = rule(&["a"], false, Action::Drop);
    for (rules, wanted) in [
        (
            vec![ok.clone(), regex(&["emial"], &[], None)],
            "rules[1]: unknown pattern \"emial\"",
        ),
        (vec![regex(&[], &[("bad", "a(b")], None)], "regexes.bad"),
        (
            vec![regex(&[], &[("empty", "x*")], None)],
            "matches the empty string",
        ),
        (vec![regex(&[], &[], None)], "needs patterns"),
        (
            vec![regex(&["email"], &[], Some("{user}"))],
            "only {pattern} and {hmac}",
        ),
        (vec![rule(&[], false, Action::Drop)], "applies to nothing"),
        (
            vec![rule(&["a*b"], false, Action::Drop)],
            "may only end a key",
        ),
        (vec![rule(&[""], false, Action::Drop)], "empty"),
        (vec![ok.clone(); MAX_RULES + 1], "at most 64 rules"),
    ] {
        let e = err(&rules);
        assert!(e.contains(wanted), "wanted {wanted:?} in {e:?}");
    }
    let capture_err = |spec: CaptureSpec| Policy::new(&[], &spec).unwrap_err().to_string();
    assert!(capture_err(capture(Level::Full, Some(0))).contains("max_body_bytes"));
    let e = capture_err(CaptureSpec {
        overrides: vec![CaptureOverride {
            level: Some(Level::Metadata),
            ..CaptureOverride::default()
        }],
        ..CaptureSpec::default()
    });
    assert!(
        e.contains("overrides[0]") && e.contains("service or event"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Mask

#[test]
fn mask_edges() {
    assert_eq!(
        mask("4111111111111111", Keep::Suffix(4)),
        "************1111"
    );
    assert_eq!(mask("alice", Keep::Prefix(1)), "a****");
    assert_eq!(mask("alice", Keep::Prefix(0)), "*****");
    assert_eq!(mask("alice", Keep::Suffix(0)), "*****");
    // Never the whole value: as long as or shorter than what is kept.
    assert_eq!(mask("1234", Keep::Suffix(4)), "****");
    assert_eq!(mask("12", Keep::Prefix(4)), "**");
    assert_eq!(mask("", Keep::Prefix(2)), "");
    // Characters, not bytes: no character is cut in two.
    assert_eq!(mask("Zoë Ünal", Keep::Prefix(3)), "Zoë*****");
    assert_eq!(mask("東京都港区", Keep::Suffix(2)), "***港区");
    assert_eq!(mask("🙂🙃x", Keep::Prefix(1)), "🙂**");
}

proptest! {
    #[test]
    fn mask_keeps_exactly_what_it_says(value in "\\PC{0,40}", n in 0usize..12, prefix: bool) {
        let keep = if prefix { Keep::Prefix(n) } else { Keep::Suffix(n) };
        let masked = mask(&value, keep);
        let chars: Vec<char> = value.chars().collect();
        let out: Vec<char> = masked.chars().collect();
        prop_assert_eq!(out.len(), chars.len());
        let kept = if chars.len() <= n { 0 } else { n };
        for (i, (o, c)) in out.iter().zip(&chars).enumerate() {
            let is_kept = if prefix { i < kept } else { i >= chars.len() - kept };
            if is_kept {
                prop_assert_eq!(o, c);
            } else {
                prop_assert_eq!(*o, '*');
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Patterns

fn replacer(patterns: &[&str]) -> Replacer {
    let policy = Policy::new(&[regex_rule(&[], true, patterns)], &CaptureSpec::default()).unwrap();
    match &policy.rules[0].compiled {
        crate::policy::Compiled::Regex(r) => (**r).clone(),
        _ => unreachable!(),
    }
}

fn redacted(patterns: &[&str], text: &str) -> String {
    replace_str(text, &replacer(patterns), None).map_or_else(|| text.to_owned(), |(s, _)| s)
}

#[test]
fn patterns_find_what_they_should() {
    for (pattern, text) in [
        ("email", "alice@example.com"),
        ("email", "alice.liddell+audit@mail.example.co.uk"),
        ("email", "first_last-99@sub-domain.example.io"),
        ("api_key", "sk-AbCdEf0123456789GhIjKlMnOpQrStUvWxYz012345"),
        ("api_key", "sk-proj-AbCdEf0123456789_GhIj-KlMnOp"),
        ("api_key", "sk-ant-api03-AbCdEf0123456789GhIjKlMn"),
        ("api_key", "sk_live_AbCdEf0123456789GhIj"),
        ("api_key", "AKIAIOSFODNN7EXAMPLE"),
        ("api_key", "ghp_AbCdEf0123456789GhIjKlMnOpQrStUvWxYz"),
        ("api_key", "AIzaSyA-0123456789abcdefghijklmnopqrstu"),
        ("api_key", "xoxb-123456789012-abcdefghij"),
        ("api_key", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234"),
        ("phone", "+1 415 555 0134"),
        ("phone", "+44 20 7946 0958"),
        ("phone", "+81-3-1234-5678"),
        ("phone", "+44 (0) 20 7946 0958"),
        ("phone", "+14155550134"),
        ("phone", "(415) 555-0134"),
        ("phone", "415-555-0134"),
        ("phone", "415.555.0134"),
        ("phone", "030 12345678"),
        ("phone", "06 12 34 56 78"),
        ("ipv4", "203.0.113.77"),
        ("ipv4", "10.0.0.1"),
        ("ipv4", "255.255.255.255"),
        ("ipv6", "2001:db8::7"),
        ("ipv6", "::1"),
        ("ipv6", "fe80::1ff:fe23:4567:890a"),
        ("ipv6", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
        ("ipv6", "::ffff:192.0.2.1"),
    ] {
        for wrapped in [
            text.to_owned(),
            format!("before {text} after"),
            format!("({text})."),
            format!("«{text}»"),
        ] {
            let out = redacted(&[pattern], &wrapped);
            let want = wrapped.replace(text, &format!("[redacted:{pattern}]"));
            assert_eq!(out, want, "{pattern} in {wrapped:?}");
        }
    }
}

#[test]
fn patterns_leave_alone_what_they_should() {
    for (pattern, text) in [
        ("email", "not an address: alice@localhost or @handle or a@b"),
        (
            "api_key",
            "sk-learn and task-AbCdEf0123456789GhIjKlMn and sk-short",
        ),
        ("api_key", "AKIA1234 is too short"),
        (
            "phone",
            "on 2026-01-15 at 12:30:45, order 5551234567, v1.2.3, 3-4-5",
        ),
        ("phone", "call 555-0134"),
        ("phone", "room 12 34"),
        ("ipv4", "256.1.1.1 and 1.2.3 and 1.2.3.4.5 and 10.0.0.1000"),
        (
            "ipv6",
            "12:30:45 and 00:1a:2b:3c:4d:5e and std::vec::Vec and Foo::bar",
        ),
        ("ipv6", "a:b and 2001:db8:::1 and 1:2:3:4:5:6:7:8:9"),
    ] {
        assert_eq!(redacted(&[pattern], text), text, "{pattern}");
    }
}

#[test]
fn ip_stands_for_both_address_patterns_and_order_is_by_precedence() {
    assert_eq!(
        redacted(&["ip"], "from 10.0.0.1 and ::1"),
        "from [redacted:ipv4] and [redacted:ipv6]"
    );
    // An address is an address, not a phone number, whatever the order given.
    assert_eq!(
        redacted(&["phone", "ipv4"], "10.200.30.40"),
        "[redacted:ipv4]"
    );
    // An e-mail address holding digits is one e-mail address.
    assert_eq!(
        redacted(&["phone", "email", "ipv4"], "415-555-0134@example.com"),
        "[redacted:email]"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// A text that a pattern's cheap test rules out holds no match of it:
    /// the test may skip a regex, never a secret.
    #[test]
    fn what_possible_rules_out_holds_no_match(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("sk-"), Just("sk_live_"), Just("AKIA"), Just("ghp_"), Just("AIza"),
                Just("xoxb-"), Just("hf_"), Just("@"), Just("."), Just(":"), Just("::"),
                Just("+"), Just("("), Just(")"), Just(" "), Just("-"), Just("/"),
                Just("0"), Just("1"), Just("255"), Just("415"), Just("ab"), Just("Zz"),
                Just("example.com"), Just("0123456789"), Just("ABCDEFGHIJKLMNOP"),
            ],
            // Short texts: where the cheap test is used, and where a length
            // bound in it would bite.
            1..8,
        )
    ) {
        static REGEXES: std::sync::LazyLock<Vec<regex::Regex>> = std::sync::LazyLock::new(|| {
            crate::patterns::BUILTINS
                .iter()
                .map(|b| regex::Regex::new(b.regex).unwrap())
                .collect()
        });
        let text: String = parts.concat();
        let shape = crate::patterns::Shape::of(&text);
        for (builtin, regex) in crate::patterns::BUILTINS.iter().zip(REGEXES.iter()) {
            if (builtin.possible)(&shape, &text) {
                continue;
            }
            let found: Vec<&str> = regex
                .find_iter(&text)
                .filter(|m| (builtin.check)(&text, m.start(), m.end()))
                .map(|m| m.as_str())
                .collect();
            prop_assert!(found.is_empty(), "{} in {:?}: {:?}", builtin.name, text, found);
        }
    }

    /// A secret anywhere in text of words and punctuation is gone after
    /// redaction, and redacting again changes nothing.
    #[test]
    fn secrets_in_arbitrary_text_are_always_found(
        before in "[a-z .,;:!?()\\n-]{0,40}",
        after in "[a-z .,;:!?()\\n-]{0,40}",
        which in 0usize..5,
        n in 0u32..1000,
    ) {
        let secret = match which {
            0 => format!("user{n}@example.com"),
            1 => format!("sk-proj-{n:04}AbCdEf0123456789GhIj"),
            2 => format!("+1 415 555 {:04}", n),
            3 => format!("10.{}.{}.{}", n % 256, (n / 3) % 256, (n / 7) % 256),
            _ => format!("2001:db8::{n:x}"),
        };
        // A word character against the secret would make it part of a word.
        let text = format!("{before} {secret} {after}");
        static ALL: std::sync::LazyLock<Replacer> =
            std::sync::LazyLock::new(|| replacer(&["email", "api_key", "phone", "ip"]));
        let redact = |text: &str| {
            replace_str(text, &ALL, None).map_or_else(|| text.to_owned(), |(s, _)| s)
        };
        let out = redact(&text);
        prop_assert!(!out.contains(&secret), "{:?} -> {:?}", text, out);
        prop_assert_eq!(redact(&out), out.clone());
    }
}

// ---------------------------------------------------------------------------
// Cost

/// What redaction costs per record of about 1 KiB (a 900-byte prompt with
/// an e-mail address, and ten attributes), with the rules of
/// docs/redaction.md; prints ns per record. Run it in release:
/// `cargo test --release -p auditrail-redact -- --ignored --nocapture cost`.
#[test]
#[ignore]
fn cost_of_redacting_a_typical_record() {
    let mut body = String::from("please summarise the contract for alice@example.com: ");
    while body.len() < 900 {
        body.push_str("the parties agree to the terms set out below. ");
    }
    let attributes = vec![
        kv("user.id", s("alice-7f3e")),
        kv("user.name", s("Alice Liddell")),
        kv("client.address", s("203.0.113.77")),
        kv("audit.outcome", s("success")),
        kv("audit.target", s("model/gpt-4o")),
        kv("gen_ai.request.model", s("gpt-4o")),
        kv("gen_ai.usage.input_tokens", int(231)),
        kv("http.request.header.authorization", s("Bearer abc")),
        kv("session.id", s("5b8efff798038103d269b633813fc60c")),
        kv("log.record.uid", s("run-1-0001")),
    ];
    let records = vec![record("chat.completion", &body, attributes); 512];
    let sent = request_of("dify-api", records);
    let rules = [
        rule(&["user.id", "enduser.id"], false, Action::Hmac),
        rule(&["user.name"], false, Action::Mask(Keep::Prefix(1))),
        rule(&["http.request.header.authorization"], false, Action::Drop),
        regex_rule(&["*"], true, &["email", "api_key", "phone", "ip"]),
    ];
    for (what, rules, capture) in [
        (
            "rules of docs/redaction.md",
            &rules[..],
            CaptureSpec::default(),
        ),
        ("hmac of user.id only", &rules[..1], CaptureSpec::default()),
        (
            "regex on the body only",
            &[regex_rule(&[], true, &["email", "api_key", "phone", "ip"])][..],
            CaptureSpec::default(),
        ),
        (
            "metadata level only",
            &[][..],
            capture(Level::Metadata, None),
        ),
        (
            "regex on every attribute only",
            &[regex_rule(
                &["*"],
                false,
                &["email", "api_key", "phone", "ip"],
            )][..],
            CaptureSpec::default(),
        ),
        (
            "a rule that matches no attribute",
            &[rule(&["nothing"], false, Action::Drop)][..],
            CaptureSpec::default(),
        ),
    ] {
        let r = redactor(rules, &capture);
        // The fastest of 40 rounds: the machine may be shared.
        let fastest = (0..40)
            .map(|_| {
                let mut req = sent.clone();
                let started = std::time::Instant::now();
                r.redact(&mut req, "acme").unwrap();
                started.elapsed()
            })
            .min()
            .unwrap();
        let per_record = fastest.as_nanos() as f64 / 512.0;
        println!("{what}: {per_record:.0} ns per record");
    }
}
