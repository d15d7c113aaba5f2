//! Threshold rules over a sliding window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use auditrail_model::{AuditEvent, Outcome, ValuePattern};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// What events a rule's count is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Actor,
    Service,
    Tenant,
    ClientAddress,
    /// One count for the whole node.
    Node,
}

impl GroupBy {
    fn key(self, e: &AuditEvent) -> &str {
        match self {
            GroupBy::Actor => &e.actor_id,
            GroupBy::Service => &e.service_name,
            GroupBy::Tenant => &e.tenant,
            GroupBy::ClientAddress => &e.client_address,
            GroupBy::Node => "",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            GroupBy::Actor => "actor",
            GroupBy::Service => "service",
            GroupBy::Tenant => "tenant",
            GroupBy::ClientAddress => "client_address",
            GroupBy::Node => "node",
        }
    }
}

/// A rule as the config states it (`[[detection.rules]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// The event name, exactly, or a prefix ending in `*`.
    pub event: Option<String>,
    pub outcome: Option<Outcome>,
    /// Attribute key and the value it must have (its JSON text when the
    /// value is not a string).
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Words or phrases, any of which in the body (case-insensitive) makes
    /// the event match: sensitive words in prompts.
    #[serde(default)]
    pub body_contains: Vec<String>,
    #[serde(default = "default_group_by")]
    pub group_by: GroupBy,
    /// Fires when more than this many matching events fall in one window
    /// (0: any matching event fires).
    #[serde(default)]
    pub threshold: u64,
    #[serde(with = "humantime_window", default = "default_window")]
    pub window: Duration,
}

fn default_group_by() -> GroupBy {
    GroupBy::Actor
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

mod humantime_window {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// `90s`, `5m`, `1h`, `1d`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("window {text:?} has no unit (s, m, h, d)"))?;
        let (n, unit) = text.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("window {text:?} is not a number"))?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("window {text:?}: unit must be s, m, h or d")),
        };
        Ok(Duration::from_secs(n * seconds))
    }
}

/// Why a rule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule {rule:?}: {why}")]
    Invalid { rule: String, why: String },
}

/// A checked rule, ready to match.
#[derive(Debug, Clone)]
pub struct Rule {
    spec: RuleSpec,
    event: Option<ValuePattern>,
    body: Option<Regex>,
}

impl Rule {
    pub fn new(spec: RuleSpec) -> Result<Rule, RuleError> {
        let invalid = |why: String| RuleError::Invalid {
            rule: spec.name.clone(),
            why,
        };
        if spec.name.trim().is_empty() {
            return Err(invalid("a rule needs a name".into()));
        }
        if spec.event.is_none()
            && spec.outcome.is_none()
            && spec.attributes.is_empty()
            && spec.body_contains.is_empty()
        {
            return Err(invalid(
                "it matches every event: give event, outcome, attributes or body_contains".into(),
            ));
        }
        if spec.window.is_zero() {
            return Err(invalid("window must be longer than 0s".into()));
        }
        if spec.body_contains.iter().any(|w| w.trim().is_empty()) {
            return Err(invalid("body_contains holds an empty word".into()));
        }
        let body = match spec.body_contains.is_empty() {
            true => None,
            false => {
                let alternatives: Vec<String> = spec
                    .body_contains
                    .iter()
                    .map(|w| regex::escape(w))
                    .collect();
                Some(
                    RegexBuilder::new(&alternatives.join("|"))
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| invalid(format!("body_contains: {e}")))?,
                )
            }
        };
        let event = spec.event.as_deref().map(ValuePattern::parse);
        Ok(Rule { spec, event, body })
    }

    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    pub fn matches(&self, e: &AuditEvent) -> bool {
        let spec = &self.spec;
        self.event
            .as_ref()
            .is_none_or(|want| want.matches(&e.event_name))
            && spec.outcome.is_none_or(|o| e.outcome == o)
            && (spec.attributes.is_empty() || attributes_match(&spec.attributes, &e.attributes))
            && self.body.as_ref().is_none_or(|re| re.is_match(&e.body))
    }
}

fn attributes_match(want: &std::collections::BTreeMap<String, String>, json: &str) -> bool {
    let Ok(serde_json::Value::Object(have)) = serde_json::from_str::<serde_json::Value>(json)
    else {
        return false;
    };
    want.iter().all(|(key, value)| match have.get(key) {
        Some(serde_json::Value::String(s)) => s == value,
        // A number, a bool: the rule's text read as JSON, compared as a value.
        Some(other) => serde_json::from_str::<serde_json::Value>(value).is_ok_and(|v| v == *other),
        None => false,
    })
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub rule: String,
    pub group_by: GroupBy,
    /// The actor, service, tenant or client address it fired for.
    pub key: String,
    /// Matching events in the window when it fired.
    pub count: u64,
    pub threshold: u64,
    pub window: Duration,
    /// Receive times of the first and the last event counted.
    pub first_received_unix_nano: u64,
    pub last_received_unix_nano: u64,
    /// The ids (and seqs) of the events counted, oldest first, at most
    /// [`MAX_TRIGGERING_IDS`].
    pub triggering: Vec<(u64, String)>,
    /// The tenant of the event that made it fire.
    pub tenant: String,
}

/// Most triggering event ids an alert carries.
pub const MAX_TRIGGERING_IDS: usize = 100;

/// The events one key counts in one rule's window.
#[derive(Debug, Default)]
struct Window {
    /// (received_time, seq, event_id), oldest first.
    events: VecDeque<(u64, u64, String)>,
    /// Fired, and not yet back at or under the threshold.
    firing: bool,
}

/// Sees each stored event once and yields the alerts it causes.
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    windows: HashMap<(usize, String), Window>,
}

impl Detector {
    pub fn new(rules: Vec<Rule>) -> Detector {
        Detector {
            rules,
            windows: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Counts `event` in every rule it matches; returns the alerts it makes
    /// fire. Events must come in seq order (receive times then only drift
    /// with the server's clock).
    pub fn observe(&mut self, event: &AuditEvent) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let now = event.received_time_unix_nano;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(event) {
                continue;
            }
            let spec = &rule.spec;
            let window_ns = u64::try_from(spec.window.as_nanos()).unwrap_or(u64::MAX);
            let key = spec.group_by.key(event).to_owned();
            let window = self.windows.entry((i, key.clone())).or_default();
            while window
                .events
                .front()
                .is_some_and(|(t, _, _)| now.saturating_sub(*t) >= window_ns)
            {
                window.events.pop_front();
            }
            // Back at or under the threshold before this event: the rule is
            // armed again, even when no event came in between to say so.
            if window.events.len() as u64 <= spec.threshold {
                window.firing = false;
            }
            window
                .events
                .push_back((now, event.seq, event.event_id.clone()));
            let count = window.events.len() as u64;
            if count <= spec.threshold {
                window.firing = false;
                continue;
            }
            // `threshold = 0` ("any history.clear"): every event is news.
            if window.firing && spec.threshold > 0 {
                continue;
            }
            window.firing = true;
            alerts.push(Alert {
                rule: spec.name.clone(),
                group_by: spec.group_by,
                key,
                count,
                threshold: spec.threshold,
                window: spec.window,
                first_received_unix_nano: window.events.front().map_or(now, |e| e.0),
                last_received_unix_nano: now,
                triggering: window
                    .events
                    .iter()
                    .take(MAX_TRIGGERING_IDS)
                    .map(|(_, seq, id)| (*seq, id.clone()))
                    .collect(),
                tenant: event.tenant.clone(),
            });
        }
        // Windows of keys that went quiet hold nothing worth keeping.
        if self.windows.len() > 100_000 {
            self.forget_idle(now);
        }
        alerts
    }

    fn forget_idle(&mut self, now: u64) {
        let rules = &self.rules;
        self.windows.retain(|(i, _), w| {
            let window_ns = u64::try_from(rules[*i].spec.window.as_nanos()).unwrap_or(u64::MAX);
            w.events
                .back()
                .is_some_and(|(t, _, _)| now.saturating_sub(*t) < window_ns)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn spec(toml_text: &str) -> RuleSpec {
        toml_like(toml_text)
    }

    /// A RuleSpec from JSON (the tests avoid a TOML dependency).
    fn toml_like(json: &str) -> RuleSpec {
        serde_json::from_str(json).unwrap()
    }

    fn event(seq: u64, at_s: u64, name: &str, actor: &str) -> AuditEvent {
        AuditEvent {
            seq,
            event_id: format!("e{seq}"),
            received_time_unix_nano: at_s * SECOND,
            event_name: name.into(),
            actor_id: actor.into(),
            attributes: "{}".into(),
            ..Default::default()
        }
    }

    fn deletes_rule() -> Rule {
        Rule::new(spec(
            r#"{"name":"mass-delete","event":"image.delete","group_by":"actor","threshold":20,"window":"1m"}"#,
        ))
        .unwrap()
    }

    #[test]
    fn more_than_twenty_deletes_by_one_actor_in_a_minute_fire_once() {
        let mut d = Detector::new(vec![deletes_rule()]);
        // 20 in a minute: not more than 20.
        let mut seq = 0;
        for i in 0..20 {
            seq += 1;
            assert!(d
                .observe(&event(seq, i, "image.delete", "alice"))
                .is_empty());
        }
        // The 21st within the minute fires...
        seq += 1;
        let alerts = d.observe(&event(seq, 30, "image.delete", "alice"));
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            (a.rule.as_str(), a.key.as_str(), a.count),
            ("mass-delete", "alice", 21)
        );
        assert_eq!(a.triggering.len(), 21);
        assert_eq!(a.triggering[0], (1, "e1".to_owned()));
        // ...once: the 22nd does not fire again.
        seq += 1;
        assert!(d
            .observe(&event(seq, 31, "image.delete", "alice"))
            .is_empty());
        // Another actor has its own count; other events do not count.
        seq += 1;
        assert!(d.observe(&event(seq, 32, "image.delete", "bob")).is_empty());
        seq += 1;
        assert!(d
            .observe(&event(seq, 33, "image.generate", "alice"))
            .is_empty());
    }

    #[test]
    fn twenty_one_spread_over_more_than_a_minute_do_not_fire() {
        let mut d = Detector::new(vec![deletes_rule()]);
        for i in 0..40 {
            // One every 3 s: 20 per minute at most.
            assert!(
                d.observe(&event(i + 1, i * 3, "image.delete", "alice"))
                    .is_empty(),
                "fired at event {i}"
            );
        }
    }

    #[test]
    fn it_fires_again_after_falling_back_under_the_threshold() {
        let mut d = Detector::new(vec![deletes_rule()]);
        let mut fired = 0;
        let mut seq = 0;
        // A burst of 25 at t=0..24, a quiet hour, another burst.
        for burst in [0u64, 3600] {
            for i in 0..25 {
                seq += 1;
                fired += d
                    .observe(&event(seq, burst + i, "image.delete", "alice"))
                    .len();
            }
        }
        assert_eq!(fired, 2);
    }

    #[test]
    fn any_history_clear_fires() {
        let rule = Rule::new(spec(
            r#"{"name":"history-cleared","event":"history.clear","group_by":"actor"}"#,
        ))
        .unwrap();
        let mut d = Detector::new(vec![rule]);
        assert!(d.observe(&event(1, 0, "history.list", "a")).is_empty());
        let alerts = d.observe(&event(2, 1, "history.clear", "a"));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].count, 1);
        // Each clear fires: the next second's, and one a minute later.
        let again = d.observe(&event(3, 2, "history.clear", "a"));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].count, 2);
        assert_eq!(d.observe(&event(4, 120, "history.clear", "a")).len(), 1);
    }

    #[test]
    fn failed_logins_from_one_address_and_sensitive_words() {
        let logins = Rule::new(spec(
            r#"{"name":"login-burst","event":"user.login","outcome":"failure","group_by":"client_address","threshold":10,"window":"5m"}"#,
        ))
        .unwrap();
        let words = Rule::new(spec(
            r#"{"name":"forbidden-prompt","event":"image.*","body_contains":["Nude","bomb recipe"],"group_by":"actor"}"#,
        ))
        .unwrap();
        let mut d = Detector::new(vec![logins, words]);
        let login = |seq: u64, at: u64, outcome: Outcome| AuditEvent {
            client_address: "203.0.113.9".into(),
            outcome,
            ..event(seq, at, "user.login", &format!("user{seq}"))
        };
        let mut fired = Vec::new();
        for i in 0..11 {
            // A success in between does not count.
            fired.extend(d.observe(&login(100 + i, i * 20, Outcome::Success)));
            fired.extend(d.observe(&login(i + 1, i * 20, Outcome::Failure)));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].key, "203.0.113.9");
        assert_eq!(fired[0].count, 11);
        let prompt = |body: &str| AuditEvent {
            body: body.into(),
            ..event(500, 0, "image.generate", "carol")
        };
        assert!(d.observe(&prompt("a lighthouse at night")).is_empty());
        assert_eq!(d.observe(&prompt("a NUDE lighthouse")).len(), 1);
    }

    #[test]
    fn attribute_rules_compare_values() {
        let rule = Rule::new(spec(
            r#"{"name":"admin-export","attributes":{"export.scope":"all","rows":"5000"}}"#,
        ))
        .unwrap();
        let with = |attrs: &str| AuditEvent {
            attributes: attrs.into(),
            ..event(1, 0, "data.export", "a")
        };
        assert!(rule.matches(&with(r#"{"export.scope":"all","rows":5000}"#)));
        assert!(!rule.matches(&with(r#"{"export.scope":"mine","rows":5000}"#)));
        assert!(!rule.matches(&with(r#"{"rows":5000}"#)));
    }

    #[test]
    fn rules_that_cannot_work_are_refused_by_name() {
        for (json, want) in [
            (r#"{"name":"all"}"#, "matches every event"),
            (
                r#"{"name":"w","event":"x","window":"0s"}"#,
                "longer than 0s",
            ),
            (r#"{"name":"","event":"x"}"#, "needs a name"),
            (r#"{"name":"b","body_contains":[" "]}"#, "empty word"),
        ] {
            let err = Rule::new(spec(json)).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert!(serde_json::from_str::<RuleSpec>(
            r#"{"name":"w","event":"x","window":"5 parsecs"}"#
        )
        .is_err());
    }
}
