//! The query filters, shared by `auditrail query`, `auditrail tail` and
//! `GET /v1/events`, so that the CLI and the API accept the same words.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auditrail_model::{Outcome, ValuePattern};
use auditrail_spool::Filter;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    /// Only events at or after this: a duration back from now (`1h`, `30m`,
    /// `7d`) or an RFC 3339 time.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only events at or before this (same forms as --since).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Event name, e.g. `image.generate`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Actor id or name.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// service.name of the emitting service.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// success, failure or unknown.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// 32 hex characters.
    #[arg(long = "trace-id")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Substring of the body or of any attribute value.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What was acted on (`audit.target`): exactly, or every target that
    /// starts with a prefix ending in `*`, e.g. `'outputs/alice/*'`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Only this tenant's events (a tenant's token reads only its own).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Most events returned, the newest by time, printed oldest first;
    /// 0 = every match, in seq order, printed as they are found.
    #[arg(long, default_value_t = 100)]
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// Only events with a higher seq (what `tail` uses to follow).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
}

/// `limit` when a request names none (`--limit`'s default too).
pub fn default_limit() -> usize {
    100
}

impl QueryArgs {
    /// The spool filter, with relative times resolved against `now`.
    pub fn to_filter(&self, now: SystemTime) -> Result<Filter, String> {
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                Outcome::parse(o).ok_or_else(|| {
                    format!("--outcome must be success, failure or unknown, not {o:?}")
                })
            })
            .transpose()?;
        let trace_id = self
            .trace_id
            .as_deref()
            .map(|t| {
                let t = t.to_ascii_lowercase();
                if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(t)
                } else {
                    Err(format!("--trace-id must be 32 hex characters, not {t:?}"))
                }
            })
            .transpose()?;
        Ok(Filter {
            since: self
                .since
                .as_deref()
                .map(|s| parse_time("since", s, now))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|s| parse_time("until", s, now))
                .transpose()?,
            event_name: self.event.clone(),
            actor: self.actor.clone(),
            service: self.service.clone(),
            outcome,
            trace_id,
            text: self.text.clone(),
            target: self.target.as_deref().map(ValuePattern::parse),
            tenant: self.tenant.clone(),
            event_id: None,
            // Else every query, and every poll of `tail`, would show the
            // trail's record of the ones before it.
            hide_event_name: (self.event.is_none()
                && self.service.as_deref() != Some(auditrail_model::internal::SERVICE_NAME))
            .then(|| crate::operator::ADMIN_REQUEST.to_owned()),
            after_seq: self.after_seq,
            limit: self.limit,
        })
    }
}

/// `1h` (back from now) or an RFC 3339 time, as Unix nanoseconds.
pub fn parse_time(flag: &str, text: &str, now: SystemTime) -> Result<u64, String> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!("--{flag} takes a duration like 1h or 7d, or an RFC 3339 time; got {text:?}")
        })?,
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's seed inputs (fuzz/corpus/query_filters) go through
    /// the same parsing as `GET /v1/events`; each of them is a valid query.
    #[test]
    fn fuzz_seed_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/query_filters");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let parsed = serde_urlencoded::from_bytes::<QueryArgs>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|args| args.to_filter(now));
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                parsed.is_ok() || parse_time("since", &text, now).is_ok(),
                "{}: {parsed:?}",
                path.display()
            );
            seen += 1;
        }
        assert!(seen > 0, "no seed inputs in {}", dir.display());
    }

    #[test]
    fn times_and_values_are_checked() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            parse_time("since", "1h", now).unwrap(),
            6_400 * 1_000_000_000
        );
        assert_eq!(
            parse_time("since", "1970-01-01T00:00:01Z", now).unwrap(),
            1_000_000_000
        );
        assert!(parse_time("since", "yesterday", now)
            .unwrap_err()
            .contains("--since"));
        let bad = QueryArgs {
            outcome: Some("maybe".into()),
            ..Default::default()
        };
        assert!(bad.to_filter(now).unwrap_err().contains("--outcome"));
        let bad = QueryArgs {
            trace_id: Some("xyz".into()),
            ..Default::default()
        };
        assert!(bad.to_filter(now).unwrap_err().contains("--trace-id"));
    }
}
