//! What operators do, as audit events in the trail, chained like the rest:
//!
//! - `auditrail.config.changed`: the node starts with a config file other
//!   than the one it last started with (old and new SHA-256);
//! - `auditrail.key.rotated`: the checkpoint signing key, or the set of
//!   HMAC redaction keys, is not the one of the last start;
//! - `auditrail.admin.request`: every admin API request under `/v1/` that
//!   got past authentication: who asked, from where, for what, and the
//!   answer's status (queries, proofs, verify runs, dead-letter listings
//!   and replays, forgetting a sink), and every call of the gRPC API
//!   (`crate::grpc_api`) that got past the same authentication;
//! - `auditrail.reload`: a SIGHUP reload, and whether it worked.
//!
//! They belong to the node, not to a tenant: tenant `auditrail`, which only
//! the operator reads.

use std::sync::Arc;

use auditrail_model::internal::{InternalEvent, INTERNAL_TENANT};
use auditrail_model::Outcome;
use auditrail_spool::{Spool, SpoolError};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::admin_auth::Caller;

pub const CONFIG_CHANGED: &str = "auditrail.config.changed";
pub const KEY_ROTATED: &str = "auditrail.key.rotated";
pub const ADMIN_REQUEST: &str = "auditrail.admin.request";
pub const RELOAD: &str = "auditrail.reload";

/// What a node starts with that the trail tracks across restarts.
pub struct StartState<'a> {
    pub config_path: &'a str,
    pub config_sha256: &'a str,
    /// The checkpoint verifier key (`name+id+base64`), if the node signs.
    pub signing_key: Option<String>,
    /// [`auditrail_redact::Keyring::fingerprints`].
    pub hmac_keys: Vec<String>,
}

/// Records what changed since the node last started: the config, the
/// signing key, the HMAC keys. Each is remembered in the spool only once
/// its event is stored, so a crash in between records it again on the
/// next start (with the same id, stored once). A spool that remembers no
/// config is at its first start, which records nothing (there is no
/// change yet) and remembers the config after the keys.
pub async fn record_start(
    spool: &Spool,
    start: StartState<'_>,
    now: u64,
) -> Result<(), SpoolError> {
    const CONFIG: &str = "config_sha256";
    const SIGNING: &str = "signing_key";
    const HMAC: &str = "hmac_keys";

    // The first start of a spool remembers what it starts with and records
    // nothing: there is no change to record yet.
    let previous = spool.remembered(CONFIG)?;
    if previous.is_none() {
        spool.remember(SIGNING, start.signing_key.as_deref().unwrap_or(""))?;
        spool.remember(HMAC, &start.hmac_keys.join("\n"))?;
        spool.remember(CONFIG, start.config_sha256)?;
        return Ok(());
    }
    if previous.as_deref() != Some(start.config_sha256) {
        let mut event = InternalEvent::new(CONFIG_CHANGED, INTERNAL_TENANT)
            .outcome(Outcome::Success)
            .attr("audit.target", start.config_path)
            .attr("auditrail.config.path", start.config_path)
            .attr("auditrail.config.sha256", start.config_sha256)
            .body(format!(
                "started with a changed config {}: sha256 {} before, {} now",
                start.config_path,
                previous.as_deref().unwrap_or(""),
                start.config_sha256
            ))
            .id_from(&[previous.as_deref().unwrap_or(""), start.config_sha256]);
        if let Some(old) = &previous {
            event = event.attr("auditrail.config.previous_sha256", old.as_str());
        }
        spool.record(event.build(now)).await?;
        spool.remember(CONFIG, start.config_sha256)?;
    }

    let signing = start.signing_key.unwrap_or_default();
    let previous = spool.remembered(SIGNING)?.unwrap_or_default();
    if previous != signing {
        let mut event = key_event("signing");
        for (key, value) in [
            ("auditrail.key.previous", &previous),
            ("auditrail.key.current", &signing),
        ] {
            if !value.is_empty() {
                event = event.attr(key, value.as_str());
            }
        }
        let event = event
            .body(format!(
                "checkpoint signing key {}",
                match (previous.is_empty(), signing.is_empty()) {
                    (true, _) => format!("set: {signing}"),
                    (false, true) =>
                        format!("removed (was {previous}); checkpoints are no longer signed"),
                    (false, false) => format!("rotated from {previous} to {signing}"),
                }
            ))
            .id_from(&["signing", &previous, &signing]);
        spool.record(event.build(now)).await?;
        spool.remember(SIGNING, &signing)?;
    }

    let hmac = start.hmac_keys.join("\n");
    let previous = spool.remembered(HMAC)?.unwrap_or_default();
    if previous != hmac {
        let old: Vec<&str> = previous.lines().collect();
        let new: Vec<&str> = hmac.lines().collect();
        let added: Vec<String> = new
            .iter()
            .filter(|k| !old.contains(k))
            .map(|k| k.to_string())
            .collect();
        let removed: Vec<String> = old
            .iter()
            .filter(|k| !new.contains(k))
            .map(|k| k.to_string())
            .collect();
        let event = key_event("hmac")
            .attr("auditrail.keys.added", added.clone())
            .attr("auditrail.keys.removed", removed.clone())
            .body(format!(
                "HMAC redaction keys changed: {} added, {} removed",
                added.len(),
                removed.len()
            ))
            .id_from(&["hmac", &previous, &hmac]);
        spool.record(event.build(now)).await?;
        spool.remember(HMAC, &hmac)?;
    }
    Ok(())
}

/// An `auditrail.key.rotated` event for keys of `kind` (`signing`, `hmac`).
fn key_event(kind: &str) -> InternalEvent {
    InternalEvent::new(KEY_ROTATED, INTERNAL_TENANT)
        .outcome(Outcome::Success)
        .attr("audit.target", kind)
        .attr("auditrail.key.kind", kind)
}

/// A SIGHUP reload: what failed, if anything.
pub async fn record_reload(spool: &Spool, errors: &[String], now: u64) {
    let mut event = InternalEvent::new(RELOAD, INTERNAL_TENANT)
        .actor("SIGHUP")
        .outcome(if errors.is_empty() {
            Outcome::Success
        } else {
            Outcome::Failure
        })
        .body(if errors.is_empty() {
            "tokens, keys and certificates reloaded".to_owned()
        } else {
            format!(
                "reload failed, the old settings stay: {}",
                errors.join("; ")
            )
        });
    if !errors.is_empty() {
        event = event.attr("auditrail.errors", errors.to_vec());
    }
    // Counted and logged by `record` when it fails.
    let _ = spool.record(event.build(now)).await;
}

/// Middleware (inside the admin API's auth): records each `/v1/` request
/// that got past it, once it has been answered, before the answer leaves.
pub async fn record_request(
    State(spool): State<Arc<Spool>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let method = request.method().to_string();
    let query = request.uri().query().unwrap_or("").to_owned();
    let caller = request.extensions().get::<Caller>().cloned();
    let response = next.run(request).await;
    let status = response.status();
    let mut event = admin_request_event(caller.as_ref(), &path, status.is_success())
        .attr("http.request.method", method.as_str())
        .attr("url.path", path.as_str())
        .attr("http.response.status_code", i64::from(status.as_u16()))
        .body(format!(
            "{method} {path}{}{query} by {}: {status}",
            if query.is_empty() { "" } else { "?" },
            subject_of(caller.as_ref())
        ));
    if !query.is_empty() {
        event = event.attr("url.query", query.as_str());
    }
    // Counted and logged by `record` when it fails; the answer goes out
    // anyway, so that a full spool does not also blind its investigators.
    let _ = spool.record(event.build(now_unix_nano())).await;
    response
}

/// The `auditrail.admin.request` event of a request by `caller` for
/// `target` (the HTTP path, or the gRPC method's path), answered with
/// success or not; each transport adds what it knows of the request.
pub fn admin_request_event(
    caller: Option<&Caller>,
    target: &str,
    succeeded: bool,
) -> InternalEvent {
    let mut event = InternalEvent::new(ADMIN_REQUEST, INTERNAL_TENANT)
        .actor(subject_of(caller))
        .outcome(if succeeded {
            Outcome::Success
        } else {
            Outcome::Failure
        })
        .attr("audit.target", target);
    if let Some(remote) = caller.and_then(|c| c.remote) {
        event = event.attr("client.address", remote.ip().to_string());
    }
    event
}

/// Who made an admin request, as the trail names them.
pub fn subject_of(caller: Option<&Caller>) -> &str {
    caller.map_or(crate::admin_auth::ANONYMOUS, |c| c.subject.as_str())
}

/// Now, in Unix nanoseconds: the receive time of the events written here.
pub fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
