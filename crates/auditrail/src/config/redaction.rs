//! `[redaction]` (HMAC keys and rules) and `[capture]` (capture levels and
//! the body size cap): what sensitive values become before anything is
//! written to disk (see `auditrail_redact` and docs/redaction.md).
//!
//! Like writers' tokens, HMAC keys are never written in the config: each
//! comes from an environment variable (`key_env`) or a file (`key_file`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use auditrail_redact::{
    Action, CaptureOverride, CaptureSpec, Keep, KeySource, KeySpec, Keyring, Level, Policy,
    Redactor, RuleSpec, ANY_TENANT, DEFAULT_PROMPT_ATTRIBUTES,
};
use bytesize::ByteSize;
use serde::Deserialize;

/// `[redaction]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionSection {
    /// `[[redaction.keys]]`: HMAC keys, several versions per tenant.
    pub keys: Vec<KeyEntry>,
    /// `[[redaction.rules]]`, applied in this order.
    pub rules: Vec<RuleEntry>,
}

/// `[[redaction.keys]]`: one version of one tenant's HMAC key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The tenant, or `"*"`: every tenant without keys of its own.
    pub tenant: String,
    /// 1 or more; a tenant's highest version hashes new values.
    pub version: u32,
    /// The environment variable that holds the key.
    pub key_env: Option<String>,
    /// Or a file that holds it.
    pub key_file: Option<PathBuf>,
    /// Refused, with a message that says where a key goes instead.
    key: Option<toml::Value>,
}

/// `action` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    Hmac,
    Mask,
    Drop,
    Regex,
}

/// `[[redaction.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// The `rule` label of `auditrail_redactions_total`.
    pub name: Option<String>,
    /// Record attribute keys: exact, or a prefix ending in `*`.
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Resource attribute keys, the same way.
    #[serde(default)]
    pub resource_attributes: Vec<String>,
    /// The record's body.
    #[serde(default)]
    pub body: bool,
    pub action: ActionName,
    /// `mask`: keep the first N characters...
    pub keep_prefix: Option<usize>,
    /// ... or the last N.
    pub keep_suffix: Option<usize>,
    /// `regex`: built-in patterns (`email`, `api_key`, `phone`, `ipv4`,
    /// `ipv6`, `ip`).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// `regex`: own patterns, name = regex (tried in name order, before
    /// the built-in ones).
    #[serde(default)]
    pub regexes: BTreeMap<String, String>,
    /// `regex`: what a match becomes; `{pattern}` is the pattern's name,
    /// `{hmac}` the match's HMAC. Default `[redacted:{pattern}]`.
    pub replacement: Option<String>,
}

/// `level` of `[capture]` and its overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelName {
    #[default]
    Full,
    Metadata,
}

impl From<LevelName> for Level {
    fn from(level: LevelName) -> Level {
        match level {
            LevelName::Full => Level::Full,
            LevelName::Metadata => Level::Metadata,
        }
    }
}

/// `[capture]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// `full` (default) or `metadata`.
    pub level: LevelName,
    /// Bodies and prompt-like attribute values longer than this are cut.
    pub max_body_bytes: Option<ByteSize>,
    /// The prompt-like attributes (exact keys or `prefix*`); default: the
    /// GenAI conventions' prompts, completions and messages.
    pub prompt_attributes: Option<Vec<String>>,
    /// `[[capture.overrides]]`: the first that matches a record decides.
    pub overrides: Vec<OverrideEntry>,
}

/// `[[capture.overrides]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideEntry {
    /// `service.name`: exact, or a prefix ending in `*`.
    pub service: Option<String>,
    /// The event name: exact, or a prefix ending in `*`.
    pub event: Option<String>,
    pub level: Option<LevelName>,
    pub max_body_bytes: Option<ByteSize>,
}

impl RedactionSection {
    /// The rules as the redactor takes them; a rule's keys that do not go
    /// with its action are errors naming the rule.
    fn rule_specs(&self) -> Result<Vec<RuleSpec>, String> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let what = format!("redaction.rules[{i}]");
                let action = rule.action(&what)?;
                Ok(RuleSpec {
                    name: rule.name.clone(),
                    attributes: rule.attributes.clone(),
                    resource_attributes: rule.resource_attributes.clone(),
                    body: rule.body,
                    action,
                })
            })
            .collect()
    }

    fn key_specs(&self) -> Vec<KeySpec> {
        self.keys
            .iter()
            .map(|k| KeySpec {
                tenant: k.tenant.clone(),
                version: k.version,
                source: match (&k.key_env, &k.key_file) {
                    (Some(name), _) => KeySource::Env(name.clone()),
                    (None, Some(path)) => KeySource::File(path.clone()),
                    (None, None) => unreachable!("validated: key_env or key_file"),
                },
            })
            .collect()
    }

    /// The compiled rules and capture settings (no keys read).
    pub fn policy(&self, capture: &CaptureSection) -> Result<Policy, String> {
        Policy::new(&self.rule_specs()?, &capture.spec()).map_err(|e| match e {
            auditrail_redact::PolicyError::Capture { .. } => format!("capture.{e}"),
            _ => format!("redaction.{e}"),
        })
    }

    /// Checks everything that can be checked without reading a key.
    /// `writer_tenants` are the tenants the config names as writers (a
    /// tenant named only by an OIDC claim or a certificate shows up when
    /// it writes: without a key, its requests are refused then).
    pub fn validate(
        &self,
        capture: &CaptureSection,
        writer_tenants: &BTreeSet<String>,
    ) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let what = format!("redaction.keys[{i}]");
            if key.key.is_some() {
                return Err(format!(
                    "{what}: a key is never written in the config file; put it in an \
                     environment variable (key_env) or a file (key_file)"
                ));
            }
            match (&key.key_env, &key.key_file) {
                (Some(_), Some(_)) => {
                    return Err(format!("{what}: set key_env or key_file, not both"))
                }
                (None, None) => return Err(format!("{what}: set key_env or key_file")),
                (Some(name), None) if name.is_empty() => {
                    return Err(format!("{what}: key_env is empty"))
                }
                _ => {}
            }
            if key.tenant != ANY_TENANT {
                auditrail_auth::check_tenant(&key.tenant).map_err(|e| format!("{what}: {e}"))?;
            }
            if key.version == 0 {
                return Err(format!("{what}: version must be at least 1"));
            }
            if !seen.insert((key.tenant.as_str(), key.version)) {
                return Err(format!(
                    "{what}: tenant {} has version {} twice",
                    key.tenant, key.version
                ));
            }
        }
        let policy = self.policy(capture)?;
        if policy.needs_keys() {
            if self.keys.is_empty() {
                return Err(
                    "redaction: a rule hashes (action = \"hmac\" or {hmac} in a replacement) \
                     but no [[redaction.keys]] is configured"
                        .into(),
                );
            }
            let covered: BTreeSet<&str> = self.keys.iter().map(|k| k.tenant.as_str()).collect();
            if !covered.contains(ANY_TENANT) {
                if let Some(tenant) = writer_tenants
                    .iter()
                    .find(|t| !covered.contains(t.as_str()))
                {
                    return Err(format!(
                        "redaction: tenant {tenant} writes events but has no [[redaction.keys]] \
                         entry, and a rule hashes; add one (or one with tenant = \"*\")"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Things that work but are likely not what was meant.
    pub fn warnings(&self) -> Vec<String> {
        // Canonical fields filled from either of two attributes: a rule on
        // one leaves the field in clear when a sender uses the other.
        const PAIRS: &[(&str, &str, &str)] = &[
            ("user.id", "enduser.id", "actor_id"),
            ("client.address", "source.address", "client_address"),
        ];
        let mut warnings = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let names = |key: &str| {
                rule.attributes.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => key.starts_with(prefix),
                    None => p == key,
                })
            };
            for (a, b, field) in PAIRS {
                for (named, other) in [(a, b), (b, a)] {
                    if names(named) && !names(other) {
                        warnings.push(format!(
                            "redaction.rules[{i}] names {named} but not {other}: {field} is \
                             filled from either, so events that carry {other} keep it in clear"
                        ));
                    }
                }
            }
        }
        warnings
    }

    /// Reads the keys and builds the redactor. Fails, naming the key, when a
    /// key's variable is unset or its file unreadable.
    pub fn redactor(&self, capture: &CaptureSection) -> anyhow::Result<Redactor> {
        let policy = self.policy(capture).map_err(anyhow::Error::msg)?;
        for key in &self.keys {
            if let Some(path) = &key.key_file {
                crate::security::warn_if_readable_by_others(
                    path,
                    &format!(
                        "redaction key (tenant {}, version {})",
                        key.tenant, key.version
                    ),
                );
            }
        }
        let keys =
            Keyring::load(&self.key_specs()).map_err(|e| anyhow::anyhow!("redaction.{e}"))?;
        Ok(Redactor::new(policy, keys))
    }

    /// Reads the keys only (for `auditrail hash`).
    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        Keyring::load(&self.key_specs()).map_err(|e| anyhow::anyhow!("redaction.{e}"))
    }
}

impl RuleEntry {
    fn action(&self, what: &str) -> Result<Action, String> {
        let only = |allowed: &[&str]| -> Result<(), String> {
            let given = [
                ("keep_prefix", self.keep_prefix.is_some()),
                ("keep_suffix", self.keep_suffix.is_some()),
                ("patterns", !self.patterns.is_empty()),
                ("regexes", !self.regexes.is_empty()),
                ("replacement", self.replacement.is_some()),
            ];
            match given
                .iter()
                .find(|(key, set)| *set && !allowed.contains(key))
            {
                Some((key, _)) => Err(format!(
                    "{what}: {key} does not go with action = \"{}\"",
                    self.action_word()
                )),
                None => Ok(()),
            }
        };
        Ok(match self.action {
            ActionName::Hmac => {
                only(&[])?;
                Action::Hmac
            }
            ActionName::Drop => {
                only(&[])?;
                Action::Drop
            }
            ActionName::Mask => {
                only(&["keep_prefix", "keep_suffix"])?;
                match (self.keep_prefix, self.keep_suffix) {
                    (Some(n), None) => Action::Mask(Keep::Prefix(n)),
                    (None, Some(n)) => Action::Mask(Keep::Suffix(n)),
                    _ => {
                        return Err(format!(
                        "{what}: action = \"mask\" needs keep_prefix or keep_suffix (one of them)"
                    ))
                    }
                }
            }
            ActionName::Regex => {
                only(&["patterns", "regexes", "replacement"])?;
                Action::Regex {
                    patterns: self.patterns.clone(),
                    regexes: self
                        .regexes
                        .iter()
                        .map(|(n, r)| (n.clone(), r.clone()))
                        .collect(),
                    replacement: self.replacement.clone(),
                }
            }
        })
    }

    fn action_word(&self) -> &'static str {
        match self.action {
            ActionName::Hmac => "hmac",
            ActionName::Mask => "mask",
            ActionName::Drop => "drop",
            ActionName::Regex => "regex",
        }
    }
}

impl CaptureSection {
    fn spec(&self) -> CaptureSpec {
        CaptureSpec {
            level: self.level.into(),
            max_body_bytes: self.max_body_bytes.map(|b| b.as_u64() as usize),
            prompt_attributes: self.prompt_attributes.clone().unwrap_or_else(|| {
                DEFAULT_PROMPT_ATTRIBUTES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            }),
            overrides: self
                .overrides
                .iter()
                .map(|o| CaptureOverride {
                    service: o.service.clone(),
                    event: o.event.clone(),
                    level: o.level.map(Level::from),
                    max_body_bytes: o.max_body_bytes.map(|b| b.as_u64() as usize),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml"), |_| None).map_err(|e| e.to_string())
    }

    const RULES: &str = r#"
[[redaction.rules]]
attributes = ["user.id", "enduser.id"]
action = "hmac"

[[redaction.rules]]
name = "names"
attributes = ["user.name"]
action = "mask"
keep_prefix = 1

[[redaction.rules]]
attributes = ["http.request.header.authorization"]
action = "drop"

[[redaction.rules]]
body = true
attributes = ["gen_ai.*"]
action = "regex"
patterns = ["email", "api_key", "phone", "ip"]
regexes = { order_id = 'order-\d{6}' }
replacement = "[{pattern}:{hmac}]"

[capture]
level = "full"
max_body_bytes = "64KiB"

[[capture.overrides]]
service = "dify-*"
event = "chat.completion"
level = "metadata"
"#;

    #[test]
    fn rules_keys_and_capture_parse_and_build_a_redactor() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (dir.path().join("v1.key"), dir.path().join("v2.key"));
        std::fs::write(&v1, "a".repeat(64) + "\n").unwrap();
        std::fs::write(&v2, "b".repeat(64)).unwrap();
        let text = format!(
            "[[redaction.keys]]\ntenant = \"default\"\nversion = 1\nkey_file = {v1:?}\n\
             [[redaction.keys]]\ntenant = \"default\"\nversion = 2\nkey_file = {v2:?}\n{RULES}"
        );
        let config = parse(&text).unwrap();
        let redactor = config.redaction.redactor(&config.capture).unwrap();
        assert!(redactor.is_active());
        let labels: Vec<_> = redactor.policy().rule_labels().collect();
        assert_eq!(
            labels,
            [
                ("hmac:user.id", "hmac"),
                ("names", "mask"),
                ("drop:http.request.header.authorization", "drop"),
                ("regex:gen_ai.*", "regex"),
            ]
        );
        let hashes = crate::hash::hashes(&config, "default", "alice").unwrap();
        assert_eq!(hashes.len(), 2);
        assert!(hashes[0].starts_with("hmac-sha256:v2:"), "{hashes:?}");
        assert!(hashes[1].starts_with("hmac-sha256:v1:"), "{hashes:?}");
        let err = crate::hash::hashes(&config, "globex", "alice")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenant globex"), "{err}");
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }

    #[test]
    fn nothing_configured_is_inactive() {
        let config = parse("").unwrap();
        let redactor = config.redaction.redactor(&config.capture).unwrap();
        assert!(!redactor.is_active());
    }

    #[test]
    fn a_missing_key_variable_is_named_when_keys_are_read() {
        let config = parse(&format!(
            "[[redaction.keys]]\ntenant = \"default\"\nversion = 1\n\
             key_env = \"AUDITRAIL_TEST_SURELY_UNSET_KEY\"\n{RULES}"
        ))
        .unwrap();
        let err = config
            .redaction
            .redactor(&config.capture)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redaction.keys[0]") && err.contains("AUDITRAIL_TEST_SURELY_UNSET_KEY"),
            "{err}"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let key = "[[redaction.keys]]\ntenant = \"*\"\nversion = 1\nkey_env = \"K\"\n";
        let rule = |body: &str| format!("{key}[[redaction.rules]]\n{body}\n");
        for (text, wanted) in [
            (rule("attributes = [\"a\"]\naction = \"hsh\""), "unknown variant `hsh`"),
            (rule("atributes = [\"a\"]\naction = \"drop\""), "atributes"),
            (rule("attributes = [\"a\"]\naction = \"mask\""), "redaction.rules[0]: action = \"mask\" needs keep_prefix or keep_suffix"),
            (rule("attributes = [\"a\"]\naction = \"mask\"\nkeep_prefix = 1\nkeep_suffix = 1"), "keep_prefix or keep_suffix"),
            (rule("attributes = [\"a\"]\naction = \"hmac\"\nkeep_prefix = 1"), "keep_prefix does not go with action = \"hmac\""),
            (rule("body = true\naction = \"regex\"\nregexes = { bad = 'a(' }"), "redaction.rules[0]: regexes.bad"),
            (rule("body = true\naction = \"regex\"\npatterns = [\"emails\"]"), "unknown pattern \"emails\""),
            (rule("body = true\naction = \"regex\""), "needs patterns"),
            (rule("attributes = [\"log.record.uid\"]\naction = \"hmac\""), "cannot be redacted"),
            (rule("action = \"drop\""), "applies to nothing"),
            ("[[redaction.keys]]\ntenant = \"a\"\nversion = 1\nkey = \"s3cret\"\n".to_owned(), "never written in the config"),
            ("[[redaction.keys]]\ntenant = \"a\"\nversion = 1\n".to_owned(), "redaction.keys[0]: set key_env or key_file"),
            ("[[redaction.keys]]\ntenant = \"a\"\nversion = 1\nkey_env = \"A\"\nkey_file = \"f\"\n".to_owned(), "not both"),
            ("[[redaction.keys]]\ntenant = \"a\"\nversion = 0\nkey_env = \"A\"\n".to_owned(), "version must be at least 1"),
            (format!("{key}{key}"), "redaction.keys[1]: tenant * has version 1 twice"),
            ("[[redaction.keys]]\ntenant = \"a b\"\nversion = 1\nkey_env = \"A\"\n".to_owned(), "redaction.keys[0]"),
            ("[[redaction.rules]]\nattributes = [\"user.id\"]\naction = \"hmac\"\n".to_owned(), "no [[redaction.keys]]"),
            (
                "[[redaction.keys]]\ntenant = \"globex\"\nversion = 1\nkey_env = \"K\"\n\
                 [[redaction.rules]]\nattributes = [\"user.id\"]\naction = \"hmac\"\n\
                 [[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"T\"\n".to_owned(),
                "tenant acme writes events but has no [[redaction.keys]]",
            ),
            ("[capture]\nlevel = \"metadata-only\"\n".to_owned(), "unknown variant `metadata-only`"),
            ("[capture]\nmax_body_bytes = 0\n".to_owned(), "capture.max_body_bytes"),
            ("[[capture.overrides]]\nlevel = \"metadata\"\n".to_owned(), "capture.overrides[0]: set service or event"),
            ("[[capture.overrides]]\nservice = \"s\"\n".to_owned(), "set level or max_body_bytes"),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(wanted), "wanted {wanted:?} for\n{text}\ngot {err}");
        }
    }

    #[test]
    fn a_rule_on_one_of_two_source_attributes_is_warned_about() {
        let config = parse(
            "[[redaction.rules]]\nattributes = [\"user.id\", \"client.address\", \"source.address\"]\naction = \"drop\"\n",
        )
        .unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("enduser.id") && warnings[0].contains("actor_id"));
    }
}
