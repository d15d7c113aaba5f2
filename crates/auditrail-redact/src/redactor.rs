//! Applying a [`Policy`] to an export request, in place.
//!
//! Per record, in this order:
//!
//! 1. the capture level: `metadata` drops the body and the prompt-like
//!    attributes;
//! 2. the rules, in config order, on resource attributes (once per
//!    resource), record attributes and the body;
//! 3. the size cap: a body or prompt-like attribute value longer than
//!    `max_body_bytes` is cut to it (at a character boundary).
//!
//! The rules run before the cap so that a secret is never cut in half
//! where its pattern no longer finds it. What steps 1 and 3 cut is
//! recorded on the record itself: `audit.truncated_bytes` (an int: the
//! body's size as sent) and `audit.truncated_attributes` (a map: each
//! attribute's size as sent).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use auditrail_model::anyvalue::any_value_to_json;

use crate::keys::{is_hmac, Keyring, TenantKeys};
use crate::patterns::Shape;
use crate::policy::{Capture, Compiled, Keep, Level, Part, Policy, Replacer};

/// The attribute that holds the body's size as sent, when the capture
/// settings cut or dropped the body.
pub const TRUNCATED_BYTES: &str = "audit.truncated_bytes";

/// The attribute that maps each prompt-like attribute the capture settings
/// cut or dropped to its size as sent.
pub const TRUNCATED_ATTRIBUTES: &str = "audit.truncated_attributes";

/// Texts up to this many bytes are counted ([`Shape`]) before any regex
/// runs on them.
const SHORT_TEXT: usize = 256;

/// What a masked character becomes.
const MASK: char = '*';

/// Why a request could not be redacted. Nothing of it may be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    #[error(
        "no HMAC key for tenant {tenant}: redaction rules need one; add a [[redaction.keys]] \
         entry for it (or tenant = \"*\") and restart"
    )]
    NoKey { tenant: String },
}

impl RedactError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RedactError::NoKey { .. } => "no_key",
        }
    }
}

/// What redacting one request did, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Values changed, by rule index (see [`Policy::rule_labels`]); a
    /// `regex` rule counts each match.
    pub by_rule: Vec<u64>,
    /// Values dropped by the `metadata` level.
    pub dropped_by_level: u64,
    /// Values cut by `max_body_bytes`.
    pub truncated_by_cap: u64,
    /// The bytes (as sent) of the values dropped or cut.
    pub cut_bytes: u64,
}

/// Applies the policy with the tenants' keys.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    policy: Policy,
    keys: Keyring,
}

impl Redactor {
    pub fn new(policy: Policy, keys: Keyring) -> Redactor {
        Redactor { policy, keys }
    }

    /// A redactor that changes nothing.
    pub fn disabled() -> Redactor {
        Redactor::default()
    }

    /// Whether [`Redactor::redact`] can change anything: when not, the
    /// receiver does not call it.
    pub fn is_active(&self) -> bool {
        self.policy.is_active()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Redacts every record of `request`, sent by `tenant`, in place.
    ///
    /// Fails only when a rule needs an HMAC key and `tenant` has none;
    /// then nothing must be stored (the request is left half done).
    pub fn redact(
        &self,
        request: &mut ExportLogsServiceRequest,
        tenant: &str,
    ) -> Result<Report, RedactError> {
        let mut report = Report {
            by_rule: vec![0; self.policy.rules.len()],
            ..Report::default()
        };
        if !self.is_active() {
            return Ok(report);
        }
        let keys = if self.policy.needs_keys() {
            Some(self.keys.tenant(tenant).ok_or_else(|| RedactError::NoKey {
                tenant: tenant.to_owned(),
            })?)
        } else {
            None
        };
        let mut work = Work {
            policy: &self.policy,
            keys,
            report: &mut report,
        };
        for resource_logs in &mut request.resource_logs {
            let mut service = String::new();
            if let Some(resource) = &mut resource_logs.resource {
                // The capture settings go by the service as sent.
                if work.policy.captures() {
                    service = text_of(&resource.attributes, "service.name").unwrap_or_default();
                }
                if !work.policy.resource_attributes.is_empty() {
                    work.attributes(&mut resource.attributes, true);
                }
            }
            for scope_logs in &mut resource_logs.scope_logs {
                for record in &mut scope_logs.log_records {
                    work.record(record, &service);
                }
            }
        }
        Ok(report)
    }
}

/// One request's redaction: the policy, the tenant's keys and the counts.
struct Work<'a> {
    policy: &'a Policy,
    keys: Option<&'a TenantKeys>,
    report: &'a mut Report,
}

impl Work<'_> {
    fn record(&mut self, record: &mut LogRecord, service: &str) {
        let capture = if self.policy.captures() {
            let event = if record.event_name.is_empty() {
                text_of(&record.attributes, "event.name").unwrap_or_default()
            } else {
                record.event_name.clone()
            };
            self.policy.capture_for(service, &event)
        } else {
            Capture::default()
        };
        let mut cut = Cut::default();
        if capture.level == Level::Metadata {
            if let Some(body) = record.body.take() {
                cut.body = Some(stored_len(&body));
                self.report.dropped_by_level += 1;
            }
            if !self.policy.prompt_attributes.is_empty() {
                record.attributes.retain(|kv| {
                    let prompt = self.policy.prompt_attributes.lookup(&kv.key) != 0;
                    if prompt {
                        let len = kv.value.as_ref().map_or(0, stored_len);
                        cut.attributes.push((kv.key.clone(), len));
                        self.report.dropped_by_level += 1;
                    }
                    !prompt
                });
            }
        }
        // Sizes as sent, before the rules change them.
        let sizes = capture
            .max_body_bytes
            .map(|_| SizesAsSent::of(record, self.policy));
        if !self.policy.attributes.is_empty() {
            self.attributes(&mut record.attributes, false);
        }
        if self.policy.body_rules != 0 {
            self.body(record);
        }
        if let (Some(cap), Some(sizes)) = (capture.max_body_bytes, sizes) {
            if let Some(body) = &mut record.body {
                if truncate(body, cap) {
                    cut.body = Some(sizes.body);
                    self.report.truncated_by_cap += 1;
                }
            }
            for kv in &mut record.attributes {
                if self.policy.prompt_attributes.lookup(&kv.key) == 0 {
                    continue;
                }
                if let Some(value) = &mut kv.value {
                    if truncate(value, cap) {
                        let len = sizes
                            .attribute(&kv.key)
                            .unwrap_or_else(|| stored_len(value));
                        cut.attributes.push((kv.key.clone(), len));
                        self.report.truncated_by_cap += 1;
                    }
                }
            }
        }
        cut.record_on(record, self.report);
    }

    /// Applies the attribute rules to `attributes` (resource attributes when
    /// `resource`).
    fn attributes(&mut self, attributes: &mut Vec<KeyValue>, resource: bool) {
        let index = if resource {
            &self.policy.resource_attributes
        } else {
            &self.policy.attributes
        };
        attributes.retain_mut(|kv| {
            let mut bits = index.lookup(&kv.key);
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let Some(value) = &mut kv.value else {
                    return true;
                };
                match self.apply(i, value) {
                    Applied::Kept => {}
                    Applied::Changed(n) => self.report.by_rule[i] += n,
                    Applied::Dropped => {
                        self.report.by_rule[i] += 1;
                        return false;
                    }
                }
            }
            true
        });
    }

    fn body(&mut self, record: &mut LogRecord) {
        let mut bits = self.policy.body_rules;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(body) = &mut record.body else {
                return;
            };
            if body.value.is_none() {
                return;
            }
            match self.apply(i, body) {
                Applied::Kept => {}
                Applied::Changed(n) => self.report.by_rule[i] += n,
                Applied::Dropped => {
                    self.report.by_rule[i] += 1;
                    record.body = None;
                    return;
                }
            }
        }
    }

    /// Rule `i` on one value.
    fn apply(&self, i: usize, value: &mut AnyValue) -> Applied {
        let rule = &self.policy.rules[i];
        match &rule.compiled {
            Compiled::Drop => Applied::Dropped,
            Compiled::Hmac => {
                let keys = self.keys.expect("checked: the policy needs keys");
                let hashed = keys.hash(&text(value));
                *value = string_value(hashed);
                Applied::Changed(1)
            }
            Compiled::Mask(keep) => {
                let masked = mask(&text(value), *keep);
                *value = string_value(masked);
                Applied::Changed(1)
            }
            Compiled::Regex(replacer) => {
                let n = replace_in(value, replacer, self.keys);
                if n == 0 {
                    Applied::Kept
                } else {
                    Applied::Changed(n)
                }
            }
        }
    }
}

enum Applied {
    Kept,
    /// Changed, with this many replacements.
    Changed(u64),
    Dropped,
}

/// What the capture settings cut from one record, to record on it.
#[derive(Default)]
struct Cut {
    body: Option<usize>,
    attributes: Vec<(String, usize)>,
}

impl Cut {
    fn record_on(self, record: &mut LogRecord, report: &mut Report) {
        if let Some(len) = self.body {
            report.cut_bytes += len as u64;
            // A size an earlier hop recorded (another auditrail, a proxy)
            // is nearer the original: the larger one stays.
            let earlier = record
                .attributes
                .iter()
                .rev()
                .find(|kv| kv.key == TRUNCATED_BYTES)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::IntValue(n) => Some(*n),
                    _ => None,
                });
            let len = (len as i64).max(earlier.unwrap_or(0));
            record.attributes.retain(|kv| kv.key != TRUNCATED_BYTES);
            record.attributes.push(KeyValue {
                key: TRUNCATED_BYTES.to_owned(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(len)),
                }),
                ..KeyValue::default()
            });
        }
        if !self.attributes.is_empty() {
            report.cut_bytes += self.attributes.iter().map(|(_, n)| *n as u64).sum::<u64>();
            let values = self
                .attributes
                .into_iter()
                .map(|(key, len)| KeyValue {
                    key,
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(len as i64)),
                    }),
                    ..KeyValue::default()
                })
                .collect();
            record
                .attributes
                .retain(|kv| kv.key != TRUNCATED_ATTRIBUTES);
            record.attributes.push(KeyValue {
                key: TRUNCATED_ATTRIBUTES.to_owned(),
                value: Some(AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList { values })),
                }),
                ..KeyValue::default()
            });
        }
    }
}

/// The sizes of a record's body and prompt-like attributes before the
/// rules, for `audit.truncated_*`.
struct SizesAsSent {
    body: usize,
    attributes: Vec<(String, usize)>,
}

impl SizesAsSent {
    fn of(record: &LogRecord, policy: &Policy) -> SizesAsSent {
        SizesAsSent {
            body: record.body.as_ref().map_or(0, stored_len),
            attributes: record
                .attributes
                .iter()
                .filter(|kv| policy.prompt_attributes.lookup(&kv.key) != 0)
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(0, stored_len)))
                .collect(),
        }
    }

    fn attribute(&self, key: &str) -> Option<usize> {
        self.attributes
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, n)| *n)
    }
}

/// A value as the event stores it: a string as it is, anything else as
/// canonical JSON (what `auditrail hash` must be given for a non-string
/// value).
fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        _ => any_value_to_json(value),
    }
}

/// The bytes a value takes in the stored event.
fn stored_len(value: &AnyValue) -> usize {
    match &value.value {
        Some(Value::StringValue(s)) => s.len(),
        None => 0,
        _ => any_value_to_json(value).len(),
    }
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s)),
    }
}

/// An attribute as text (strings as they are, others as JSON); of duplicate
/// keys the last, as the mapping reads them.
fn text_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(text)
}

/// Keeps `keep` of `value`'s characters (Unicode scalar values) and
/// replaces the others with `*`, one each. A value no longer than what
/// would be kept is masked whole: a mask never shows a whole value.
pub fn mask(value: &str, keep: Keep) -> String {
    let count = value.chars().count();
    let (n, prefix) = match keep {
        Keep::Prefix(n) => (n, true),
        Keep::Suffix(n) => (n, false),
    };
    if count <= n {
        return MASK.to_string().repeat(count);
    }
    let hidden = count - n;
    let mut out = String::with_capacity(value.len() + hidden);
    if prefix {
        out.extend(value.chars().take(n));
        out.extend(std::iter::repeat_n(MASK, hidden));
    } else {
        out.extend(std::iter::repeat_n(MASK, hidden));
        out.extend(value.chars().skip(hidden));
    }
    out
}

/// Cuts `value` to at most `cap` bytes as stored; a value that is not a
/// string becomes the string of its JSON's first bytes. Returns whether
/// it was cut.
fn truncate(value: &mut AnyValue, cap: usize) -> bool {
    match &mut value.value {
        Some(Value::StringValue(s)) => {
            if s.len() <= cap {
                return false;
            }
            s.truncate(floor_char_boundary(s, cap));
            true
        }
        None => false,
        Some(_) => {
            let mut json = any_value_to_json(value);
            if json.len() <= cap {
                return false;
            }
            json.truncate(floor_char_boundary(&json, cap));
            *value = string_value(json);
            true
        }
    }
}

/// The largest index `<= at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Replaces every match inside `value`'s strings, nested ones too (keys of
/// maps and bytes are left as they are); returns the number replaced.
fn replace_in(value: &mut AnyValue, replacer: &Replacer, keys: Option<&TenantKeys>) -> u64 {
    match &mut value.value {
        Some(Value::StringValue(s)) => match replace_str(s, replacer, keys) {
            Some((replaced, n)) => {
                *s = replaced;
                n
            }
            None => 0,
        },
        Some(Value::ArrayValue(ArrayValue { values })) => values
            .iter_mut()
            .map(|v| replace_in(v, replacer, keys))
            .sum(),
        Some(Value::KvlistValue(KeyValueList { values })) => values
            .iter_mut()
            .filter_map(|kv| kv.value.as_mut())
            .map(|v| replace_in(v, replacer, keys))
            .sum(),
        _ => 0,
    }
}

/// `text` with every checked match replaced, and the number replaced;
/// `None` when nothing was (no allocation then).
///
/// Each pattern finds its matches in the text as sent (so no pattern
/// matches inside another's replacement); of overlapping ones, the one
/// that starts first is replaced, and of those that start together, the
/// one first in precedence; the rest of a match it overlaps is removed
/// with it.
pub(crate) fn replace_str(
    text: &str,
    replacer: &Replacer,
    keys: Option<&TenantKeys>,
) -> Option<(String, u64)> {
    // What an `hmac` rule wrote holds nothing to find (and its digits and
    // dashes would send it through the phone pattern's slow path).
    if is_hmac(text) {
        return None;
    }
    // A short text (most attribute values) is counted once, which rules
    // out most patterns for less than one regex search costs; a long one
    // (a prompt) goes to the regexes, whose own prefilters are faster than
    // counting its bytes.
    let shape = (text.len() <= SHORT_TEXT).then(|| Shape::of(text));
    // (start, end, pattern)
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (i, pattern) in replacer.patterns.iter().enumerate() {
        if shape.is_some_and(|shape| !(pattern.possible)(&shape, text)) {
            continue;
        }
        for m in pattern.regex.find_iter(text) {
            if (pattern.check)(text, m.start(), m.end()) {
                found.push((m.start(), m.end(), i));
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    found.sort_unstable_by_key(|&(start, _, pattern)| (start, pattern));
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut n = 0;
    for (start, end, i) in found {
        if start < copied {
            // Overlaps one already replaced: what of it reaches past that
            // one goes too, so no part of it is left in clear.
            copied = copied.max(end);
            continue;
        }
        out.push_str(&text[copied..start]);
        for part in &replacer.replacement {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Pattern => out.push_str(&replacer.patterns[i].name),
                Part::Hmac => out.push_str(
                    &keys
                        .expect("checked: the policy needs keys")
                        .hash(&text[start..end]),
                ),
            }
        }
        copied = end;
        n += 1;
    }
    out.push_str(&text[copied..]);
    Some((out, n))
}
