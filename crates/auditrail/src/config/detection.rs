//! `[detection]` (threshold rules over stored events, and where alerts are
//! posted) and `[[silence]]` (services that must keep sending): see
//! `auditrail_detect` and docs/detection.md.

use std::collections::BTreeSet;
use std::time::Duration;

use auditrail_detect::{Rule, RuleSpec, Silence};
use serde::Deserialize;

/// `[detection]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSection {
    /// `[[detection.rules]]`.
    pub rules: Vec<RuleSpec>,
    /// Each alert (and silence) is also POSTed here as JSON.
    pub webhook_url: Option<String>,
    /// How long one POST may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// The environment variable holding a bearer token for the webhook.
    pub webhook_token_env: Option<String>,
}

impl Default for DetectionSection {
    fn default() -> Self {
        DetectionSection {
            rules: Vec::new(),
            webhook_url: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_token_env: None,
        }
    }
}

/// `[[silence]]`: `service` must send at least once per `max_silence`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceEntry {
    pub service: String,
    #[serde(with = "humantime_serde")]
    pub max_silence: Duration,
}

impl DetectionSection {
    /// The rules, compiled.
    pub fn compiled(&self) -> Result<Vec<Rule>, String> {
        let mut names = BTreeSet::new();
        self.rules
            .iter()
            .map(|spec| {
                if !names.insert(spec.name.as_str()) {
                    return Err(format!(
                        "detection.rules: two rules are named {:?}; alerts name their rule",
                        spec.name
                    ));
                }
                Rule::new(spec.clone()).map_err(|e| format!("detection.rules {:?}: {e}", spec.name))
            })
            .collect()
    }

    pub fn validate(&self, silences: &[SilenceEntry]) -> Result<(), String> {
        self.compiled()?;
        if let Some(url) = &self.webhook_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("detection.webhook_url {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!(
                    "detection.webhook_url {url:?}: must be http:// or https://"
                ));
            }
        }
        if self.webhook_timeout.is_zero() {
            return Err("detection.webhook_timeout must be more than 0s".into());
        }
        let mut services = BTreeSet::new();
        for s in silences {
            if s.service.is_empty() {
                return Err("silence: service must not be empty".into());
            }
            if !services.insert(s.service.as_str()) {
                return Err(format!(
                    "silence: service {:?} is declared twice",
                    s.service
                ));
            }
            if s.max_silence < Duration::from_secs(1) {
                return Err(format!(
                    "silence {:?}: max_silence must be at least 1s",
                    s.service
                ));
            }
        }
        Ok(())
    }
}

/// The declared expectations, for the watch.
pub fn silences(entries: &[SilenceEntry]) -> Vec<Silence> {
    entries
        .iter()
        .map(|e| Silence {
            service: e.service.clone(),
            max_silence: e.max_silence,
        })
        .collect()
}
