//! Redaction before the spool: what a sensitive value becomes before
//! auditrail writes anything to disk.
//!
//! The receiver hands every export request to a [`Redactor`] after it has
//! admitted it and before it maps its records to events, so that clear
//! text reaches neither the spool nor any sink. The redactor applies:
//!
//! * **rules** ([`RuleSpec`]) per attribute key, resource attribute key and
//!   for the body: `hmac` (HMAC-SHA256 under the tenant's newest key
//!   version, stored as `hmac-sha256:v<version>:<hex>`), `mask` (keep a
//!   prefix or a suffix), `drop`, and `regex` (replace what built-in or own
//!   patterns match inside string values: e-mail addresses, API keys, phone
//!   numbers, IP addresses; see [`patterns`]);
//! * **capture levels** ([`CaptureSpec`]) per service or event name:
//!   `metadata` drops the body and prompt-like attributes, `full` keeps
//!   them; and a size cap on the body and those attributes. What is cut is
//!   recorded on the event (`audit.truncated_bytes`,
//!   `audit.truncated_attributes`), never silently.
//!
//! It works on the OTLP request, not on mapped events, for three reasons:
//! the canonical fields (`actor_id` from `user.id`, `client_address` from
//! `client.address`, ...) are then mapped from the redacted attributes and
//! cannot hold what the attributes no longer do; the content-hash event id
//! of a record without `log.record.uid` is a hash of the redacted record, not
//! an unkeyed hash of the clear text (which anyone could test guesses
//! against); and the size cap applies before `max_event_bytes`, so a huge
//! prompt is stored cut instead of refused.
//!
//! Keys ([`Keyring`]) come from the environment or files, several versions
//! per tenant; `auditrail hash` prints what a value hashes to under each,
//! so an investigator can search for a known user without anyone storing
//! the user in clear.
//!
//! Everything is compiled once ([`Policy::new`]); with no rule and no
//! capture setting [`Redactor::is_active`] is false and the receiver skips
//! redaction altogether.

pub mod keys;
pub mod patterns;
mod policy;
mod redactor;

pub use keys::{KeyError, KeySource, KeySpec, Keyring, TenantKeys, ANY_TENANT, HMAC_PREFIX};
pub use policy::{
    Action, CaptureOverride, CaptureSpec, Keep, Level, Policy, PolicyError, RuleSpec,
    DEFAULT_PROMPT_ATTRIBUTES, DEFAULT_REPLACEMENT, MAX_RULES, RESERVED_ATTRIBUTES,
};
pub use redactor::{mask, RedactError, Redactor, Report, TRUNCATED_ATTRIBUTES, TRUNCATED_BYTES};

#[cfg(test)]
mod tests;
