//! Sinks removed from the config, whose state the spool still keeps.
//!
//! Removing a `[[sinks]]` table must not silently lose what the spool knows
//! about that sink: its cursor (how far it got, so re-adding it resumes
//! there instead of sending everything again) and its dead letters (events
//! it rejected, which an operator may still have to replay). So both stay,
//! with a warning at start-up, an entry in `/readyz` and metrics, until the
//! operator runs `auditrail sink forget NAME`. The price, stated in every
//! warning: retention keeps every event after the cursor, so the disk can
//! fill.

use std::collections::BTreeSet;

use auditrail_spool::{ForgottenSink, Spool, SpoolError};
use serde::Serialize;

/// A sink that is no longer configured but still has a cursor or dead
/// letters in the spool, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedSink {
    pub name: String,
    /// Where it stopped; `None` when only dead letters are left.
    pub cursor: Option<u64>,
    /// Durable events after its cursor, which retention keeps for it.
    pub lag_events: u64,
    pub dead_letters: usize,
    pub note: String,
}

/// Why a sink was not forgotten.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("sink {0:?} is still configured; remove its [[sinks]] table and restart first (forgetting it would make it start over and drop its dead letters)")]
    StillConfigured(String),
    #[error("the spool has no cursor and no dead letters of a sink {0:?}")]
    Unknown(String),
    #[error("forgetting the sink")]
    Spool(#[from] SpoolError),
}

/// The names of sinks with state in `spool` that are not in `configured`.
pub(crate) fn find(
    spool: &Spool,
    configured: &BTreeSet<String>,
) -> Result<Vec<String>, SpoolError> {
    let mut names: BTreeSet<String> = spool.cursors()?.into_iter().map(|(name, _)| name).collect();
    names.extend(spool.dead_letter_sinks()?);
    Ok(names
        .into_iter()
        .filter(|n| !configured.contains(n))
        .collect())
}

/// The state of each of `names`, published as metrics too.
pub(crate) fn statuses(spool: &Spool, names: &[String]) -> Result<Vec<RemovedSink>, SpoolError> {
    let cursors = spool.cursors()?;
    let durable = spool.durable_seq();
    Ok(names
        .iter()
        .map(|name| {
            let cursor = cursors.iter().find(|(n, _)| n == name).map(|(_, c)| *c);
            let status = RemovedSink {
                name: name.clone(),
                cursor,
                lag_events: cursor.map_or(0, |c| durable.saturating_sub(c)),
                dead_letters: spool.dead_letter_count(name),
                note: format!(
                    "no longer configured: its cursor and dead letters are kept and retention keeps every event \
                     after its cursor (the disk can fill); add it back to resume, or run `auditrail sink forget {name}`"
                ),
            };
            publish(&status, true);
            status
        })
        .collect())
}

fn publish(status: &RemovedSink, removed: bool) {
    let sink = status.name.clone();
    metrics::gauge!("auditrail_sink_removed", "sink" => sink.clone()).set(if removed {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("auditrail_sink_lag_events", "sink" => sink.clone())
        .set(status.lag_events as f64);
    metrics::gauge!("auditrail_sink_dead_letters", "sink" => sink.clone())
        .set(status.dead_letters as f64);
    if let Some(cursor) = status.cursor {
        metrics::gauge!("auditrail_sink_cursor", "sink" => sink).set(cursor as f64);
    }
}

/// Forgets a sink that is not in `configured`: removes its cursor and dead
/// letters from the spool (`auditrail sink forget`).
pub fn forget(
    spool: &Spool,
    configured: &BTreeSet<String>,
    name: &str,
) -> Result<ForgottenSink, ForgetError> {
    if configured.contains(name) {
        return Err(ForgetError::StillConfigured(name.to_owned()));
    }
    let forgotten = spool.forget_sink(name)?;
    if forgotten.cursor.is_none() && forgotten.dead_letters == 0 {
        return Err(ForgetError::Unknown(name.to_owned()));
    }
    tracing::warn!(sink = name, cursor = ?forgotten.cursor, dead_letters = forgotten.dead_letters, "sink forgotten: its cursor and dead letters are removed");
    publish(
        &RemovedSink {
            name: name.to_owned(),
            cursor: None,
            lag_events: 0,
            dead_letters: 0,
            note: String::new(),
        },
        false,
    );
    Ok(forgotten)
}
