//! The rules and capture settings, as configured ([`RuleSpec`],
//! [`CaptureSpec`]) and as compiled once at start ([`Policy`]): regexes
//! built, attribute keys indexed, so that each record costs lookups only.

use std::collections::HashMap;

use regex::Regex;

use crate::patterns::{self, always, maybe, Builtin, Check, Possible};

/// Attributes no rule may touch: they identify the event or decide how it is
/// read, and auditrail validates them (a redacted `audit.outcome` or
/// `log.record.uid` would be refused, or not be one).
pub const RESERVED_ATTRIBUTES: &[&str] = &["log.record.uid", "audit.outcome", "event.name"];

/// At most this many rules: a record's attribute is matched against all of
/// them with one bit set per rule.
pub const MAX_RULES: usize = 64;

/// The default replacement of a `regex` rule.
pub const DEFAULT_REPLACEMENT: &str = "[redacted:{pattern}]";

/// What a rule does to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replace the value with its HMAC under the tenant's newest key.
    Hmac,
    /// Keep a prefix or a suffix, replace every other character with `*`.
    Mask(Keep),
    /// Remove the attribute (or empty the body).
    Drop,
    /// Replace what the patterns match inside string values.
    Regex {
        /// Built-in pattern names (see [`crate::patterns`]).
        patterns: Vec<String>,
        /// Own patterns: (name, regex).
        regexes: Vec<(String, String)>,
        /// With `{pattern}` (the pattern's name) and `{hmac}` (the match's
        /// HMAC); [`DEFAULT_REPLACEMENT`] when `None`.
        replacement: Option<String>,
    },
}

impl Action {
    /// The `action` label of metrics and the config's word for it.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Hmac => "hmac",
            Action::Mask(_) => "mask",
            Action::Drop => "drop",
            Action::Regex { .. } => "regex",
        }
    }
}

/// How much of a masked value stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The first N characters.
    Prefix(usize),
    /// The last N characters.
    Suffix(usize),
}

/// One configured rule: what it applies to and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// The `rule` label of metrics; `<action>:<first target>` when `None`.
    pub name: Option<String>,
    /// Record attribute keys: exact, or a prefix ending in `*` (`*` alone:
    /// every attribute).
    pub attributes: Vec<String>,
    /// Resource attribute keys, the same way.
    pub resource_attributes: Vec<String>,
    /// The record's body.
    pub body: bool,
    pub action: Action,
}

/// How much of a record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// Everything (after the rules and the size cap).
    #[default]
    Full,
    /// No body and no prompt-like attributes: who did what, when, from where.
    Metadata,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Metadata => "metadata",
        }
    }
}

/// The prompt-like attributes `metadata` drops (and the size cap bounds)
/// when the config names none: the OpenTelemetry GenAI conventions'
/// prompt, completion, message, instruction and tool-call content.
pub const DEFAULT_PROMPT_ATTRIBUTES: &[&str] = &[
    "gen_ai.prompt*",
    "gen_ai.completion*",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
];

/// Capture settings: a default and overrides by service or event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    pub level: Level,
    /// Bodies and prompt-like attribute values longer than this many bytes
    /// (as stored: a string's UTF-8 bytes, other values' JSON) are cut to it.
    pub max_body_bytes: Option<usize>,
    /// Attribute keys (exact or `prefix*`) that hold prompt-like content.
    pub prompt_attributes: Vec<String>,
    /// The first that matches a record decides, instead of the above.
    pub overrides: Vec<CaptureOverride>,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec {
            level: Level::Full,
            max_body_bytes: None,
            prompt_attributes: DEFAULT_PROMPT_ATTRIBUTES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            overrides: Vec::new(),
        }
    }
}

/// Capture settings for the records of a service and/or an event name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureOverride {
    /// `service.name`: exact, or a prefix ending in `*`.
    pub service: Option<String>,
    /// The event name: exact, or a prefix ending in `*`.
    pub event: Option<String>,
    /// `None`: the default's.
    pub level: Option<Level>,
    /// `None`: the default's.
    pub max_body_bytes: Option<usize>,
}

/// Why the rules or capture settings cannot be used; each names the rule
/// (`rules[i]`) or the capture setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("rules[{index}]: {message}")]
    Rule { index: usize, message: String },
    #[error("at most {MAX_RULES} rules, got {0}")]
    TooManyRules(usize),
    #[error("{what}: {message}")]
    Capture { what: String, message: String },
}

fn rule_error(index: usize, message: impl Into<String>) -> PolicyError {
    PolicyError::Rule {
        index,
        message: message.into(),
    }
}

/// Attribute keys, exact or by prefix, each mapped to the rules that name
/// it as bits (bit i: rule i), so one attribute costs one hash lookup and
/// a walk over the prefixes.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyIndex {
    exact: HashMap<String, u64>,
    prefixes: Vec<(String, u64)>,
}

impl KeyIndex {
    fn add(&mut self, pattern: &str, bits: u64) {
        match pattern.strip_suffix('*') {
            Some(prefix) => match self.prefixes.iter_mut().find(|(p, _)| p == prefix) {
                Some((_, b)) => *b |= bits,
                None => self.prefixes.push((prefix.to_owned(), bits)),
            },
            None => *self.exact.entry(pattern.to_owned()).or_default() |= bits,
        }
    }

    /// The rules (as bits) that apply to attribute `key`. Reserved keys are
    /// never matched, however broad the pattern.
    pub(crate) fn lookup(&self, key: &str) -> u64 {
        let mut bits = self.exact.get(key).copied().unwrap_or(0);
        for (prefix, b) in &self.prefixes {
            if key.starts_with(prefix.as_str()) {
                bits |= b;
            }
        }
        if bits != 0 && RESERVED_ATTRIBUTES.contains(&key) {
            return 0;
        }
        bits
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// `pattern` is exact or ends in its only `*`.
fn check_key_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("an attribute key is empty".into());
    }
    if pattern.trim_end_matches('*').contains('*') || pattern.ends_with("**") {
        return Err(format!(
            "{pattern:?}: `*` may only end a key (a prefix), e.g. \"gen_ai.prompt*\""
        ));
    }
    Ok(())
}

/// One part of a replacement template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Text(String),
    /// The name of the pattern that matched.
    Pattern,
    /// The HMAC of the match.
    Hmac,
}

fn parse_replacement(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open..];
        if let Some(tail) = after.strip_prefix("{pattern}") {
            parts.push(Part::Pattern);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("{hmac}") {
            parts.push(Part::Hmac);
            rest = tail;
        } else {
            return Err(format!(
                "replacement {template:?}: only {{pattern}} and {{hmac}} may stand in braces"
            ));
        }
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// The compiled form of a `regex` action: one regex per pattern. Each runs
/// with the literal prefilters the regex crate finds for it alone (the
/// `@` of an e-mail address, the `:` of an IPv6 address); one regex of
/// all of them in alternation has none and scanned ~10 times slower.
#[derive(Debug, Clone)]
pub(crate) struct Replacer {
    /// In order of precedence: where two match at the same place, the
    /// first wins.
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) replacement: Vec<Part>,
}

/// One pattern of a `regex` rule.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    /// Its name (`{pattern}`).
    pub(crate) name: String,
    pub(crate) regex: Regex,
    /// Whether a candidate really is one (see [`crate::patterns`]).
    pub(crate) check: Check,
    /// Whether a text may hold one at all.
    pub(crate) possible: Possible,
}

impl Replacer {
    fn compile(
        index: usize,
        patterns: &[String],
        regexes: &[(String, String)],
        replacement: Option<&str>,
    ) -> Result<Replacer, PolicyError> {
        if patterns.is_empty() && regexes.is_empty() {
            return Err(rule_error(
                index,
                format!(
                    "a regex rule needs patterns (built-in: {}) or regexes",
                    patterns::names()
                ),
            ));
        }
        let mut compiled = Vec::new();
        // Own regexes first: they are the more specific ones.
        for (name, source) in regexes {
            if name.is_empty() {
                return Err(rule_error(index, "a regex has an empty name"));
            }
            let regex = Regex::new(source)
                .map_err(|e| rule_error(index, format!("regexes.{name}: {e}")))?;
            if regex.is_match("") {
                return Err(rule_error(
                    index,
                    format!("regexes.{name}: {source:?} matches the empty string"),
                ));
            }
            compiled.push(Pattern {
                name: name.clone(),
                regex,
                check: always,
                possible: maybe,
            });
        }
        let mut builtins: Vec<&Builtin> = Vec::new();
        for name in patterns {
            let found = patterns::lookup(name).ok_or_else(|| {
                rule_error(
                    index,
                    format!(
                        "unknown pattern {name:?}; the built-in patterns are {}",
                        patterns::names()
                    ),
                )
            })?;
            for builtin in found {
                if !builtins.iter().any(|b| b.name == builtin.name) {
                    builtins.push(builtin);
                }
            }
        }
        // The built-ins in their own order of precedence, whatever the
        // config's order (see patterns::BUILTINS).
        builtins.sort_by_key(|b| {
            patterns::BUILTINS
                .iter()
                .position(|x| x.name == b.name)
                .expect("a built-in")
        });
        for builtin in builtins {
            compiled.push(Pattern {
                name: builtin.name.to_owned(),
                regex: Regex::new(builtin.regex).expect("the built-in patterns compile"),
                check: builtin.check,
                possible: builtin.possible,
            });
        }
        let replacement = parse_replacement(replacement.unwrap_or(DEFAULT_REPLACEMENT))
            .map_err(|e| rule_error(index, e))?;
        Ok(Replacer {
            patterns: compiled,
            replacement,
        })
    }

    pub(crate) fn needs_keys(&self) -> bool {
        self.replacement.contains(&Part::Hmac)
    }
}

/// A rule ready to apply.
#[derive(Debug, Clone)]
pub(crate) enum Compiled {
    Hmac,
    Mask(Keep),
    Drop,
    Regex(Box<Replacer>),
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) action: &'static str,
    pub(crate) compiled: Compiled,
}

/// Capture settings resolved for one kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capture {
    pub(crate) level: Level,
    pub(crate) max_body_bytes: Option<usize>,
}

/// A name pattern of a capture override: exact or `prefix*`.
#[derive(Debug, Clone)]
struct NamePattern(String);

impl NamePattern {
    fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.0,
        }
    }
}

#[derive(Debug, Clone)]
struct Override {
    service: Option<NamePattern>,
    event: Option<NamePattern>,
    capture: Capture,
}

/// The rules and capture settings, compiled.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    pub(crate) attributes: KeyIndex,
    pub(crate) resource_attributes: KeyIndex,
    /// Bits of the rules that apply to the body.
    pub(crate) body_rules: u64,
    pub(crate) capture: Capture,
    overrides: Vec<Override>,
    pub(crate) prompt_attributes: KeyIndex,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            level: Level::Full,
            max_body_bytes: None,
        }
    }
}

impl Policy {
    /// Compiles `rules` and `capture`; every mistake is an error naming the
    /// rule or setting.
    pub fn new(rules: &[RuleSpec], capture: &CaptureSpec) -> Result<Policy, PolicyError> {
        if rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules(rules.len()));
        }
        let mut policy = Policy::default();
        for (index, spec) in rules.iter().enumerate() {
            let bit = 1u64 << index;
            if spec.attributes.is_empty() && spec.resource_attributes.is_empty() && !spec.body {
                return Err(rule_error(
                    index,
                    "applies to nothing: set attributes, resource_attributes or body = true",
                ));
            }
            for (keys, index_of) in [
                (&spec.attributes, &mut policy.attributes),
                (&spec.resource_attributes, &mut policy.resource_attributes),
            ] {
                for key in keys {
                    check_key_pattern(key).map_err(|m| rule_error(index, m))?;
                    if RESERVED_ATTRIBUTES.contains(&key.as_str()) {
                        return Err(rule_error(
                            index,
                            format!(
                                "{key} cannot be redacted: it identifies the event or decides \
                                 how it is read (reserved: {})",
                                RESERVED_ATTRIBUTES.join(", ")
                            ),
                        ));
                    }
                    index_of.add(key, bit);
                }
            }
            if spec.body {
                policy.body_rules |= bit;
            }
            let compiled = match &spec.action {
                Action::Hmac => Compiled::Hmac,
                Action::Mask(keep) => Compiled::Mask(*keep),
                Action::Drop => Compiled::Drop,
                Action::Regex {
                    patterns,
                    regexes,
                    replacement,
                } => Compiled::Regex(Box::new(Replacer::compile(
                    index,
                    patterns,
                    regexes,
                    replacement.as_deref(),
                )?)),
            };
            let name = match &spec.name {
                Some(name) if name.is_empty() => return Err(rule_error(index, "name is empty")),
                Some(name) => name.clone(),
                None => {
                    let target = spec
                        .attributes
                        .first()
                        .or(spec.resource_attributes.first())
                        .map(String::as_str)
                        .unwrap_or("body");
                    format!("{}:{target}", spec.action.label())
                }
            };
            policy.rules.push(Rule {
                name,
                action: spec.action.label(),
                compiled,
            });
        }
        let cap_error = |what: &str, message: &str| PolicyError::Capture {
            what: what.to_owned(),
            message: message.to_owned(),
        };
        if capture.max_body_bytes == Some(0) {
            return Err(cap_error("max_body_bytes", "must be at least 1 byte"));
        }
        for key in &capture.prompt_attributes {
            check_key_pattern(key).map_err(|m| cap_error("prompt_attributes", &m))?;
            if RESERVED_ATTRIBUTES.contains(&key.as_str()) {
                return Err(cap_error(
                    "prompt_attributes",
                    &format!("{key} is reserved and is never dropped"),
                ));
            }
            policy.prompt_attributes.add(key, 1);
        }
        policy.capture = Capture {
            level: capture.level,
            max_body_bytes: capture.max_body_bytes,
        };
        for (i, o) in capture.overrides.iter().enumerate() {
            let what = format!("overrides[{i}]");
            if o.service.is_none() && o.event.is_none() {
                return Err(cap_error(&what, "set service or event (or both)"));
            }
            if o.level.is_none() && o.max_body_bytes.is_none() {
                return Err(cap_error(&what, "set level or max_body_bytes"));
            }
            if o.max_body_bytes == Some(0) {
                return Err(cap_error(&what, "max_body_bytes must be at least 1 byte"));
            }
            for name in [&o.service, &o.event].into_iter().flatten() {
                check_key_pattern(name).map_err(|m| cap_error(&what, &m))?;
            }
            policy.overrides.push(Override {
                service: o.service.clone().map(NamePattern),
                event: o.event.clone().map(NamePattern),
                capture: Capture {
                    level: o.level.unwrap_or(capture.level),
                    max_body_bytes: o.max_body_bytes.or(capture.max_body_bytes),
                },
            });
        }
        Ok(policy)
    }

    /// Whether any rule or capture setting can change a record: when not,
    /// redaction costs nothing.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
            || self.capture != Capture::default()
            || self
                .overrides
                .iter()
                .any(|o| o.capture != Capture::default())
    }

    /// Whether some rule needs a tenant's HMAC key.
    pub fn needs_keys(&self) -> bool {
        self.rules.iter().any(|r| match &r.compiled {
            Compiled::Hmac => true,
            Compiled::Regex(replacer) => replacer.needs_keys(),
            _ => false,
        })
    }

    /// The rules' (name, action) labels, by rule index.
    pub fn rule_labels(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.rules.iter().map(|r| (r.name.as_str(), r.action))
    }

    /// The capture settings for a record of `service` named `event`.
    pub(crate) fn capture_for(&self, service: &str, event: &str) -> Capture {
        self.overrides
            .iter()
            .find(|o| {
                o.service.as_ref().is_none_or(|p| p.matches(service))
                    && o.event.as_ref().is_none_or(|p| p.matches(event))
            })
            .map_or(self.capture, |o| o.capture)
    }

    /// Whether a capture setting may cut something (so the record's
    /// service and event name must be looked up).
    pub(crate) fn captures(&self) -> bool {
        self.capture != Capture::default() || !self.overrides.is_empty()
    }
}
