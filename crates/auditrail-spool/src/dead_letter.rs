//! Dead letters: events a sink permanently rejected.
//!
//! Tree `dead_letters`: `sink name ‖ 0x00 ‖ seq (big-endian)` → JSON
//! [`DeadLetter`]. Each entry holds a full copy of the event, so retention
//! can remove the batch it came from without losing what an operator still
//! has to replay. Rejections are rare, so JSON's size does not matter and
//! keeps the tree readable with any sled tool.

use auditrail_model::AuditEvent;
use serde::{Deserialize, Serialize};

use crate::{seq_key, Shared, SpoolError};

/// One event a sink permanently rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub sink: String,
    pub seq: u64,
    /// What the sink said, e.g. `1406 (22001): Data too long for column 'target'`.
    pub reason: String,
    pub dead_lettered_unix_nano: u64,
    /// Set by `dead-letter replay`; the sink retries the event and removes
    /// the entry once it is written.
    pub replay: bool,
    pub event: AuditEvent,
}

fn key(sink: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(sink.len() + 9);
    key.extend_from_slice(sink.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq_key(seq));
    key
}

fn sink_prefix(sink: &str) -> Vec<u8> {
    let mut prefix = sink.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn decode(value: &[u8]) -> Result<DeadLetter, SpoolError> {
    serde_json::from_slice(value)
        .map_err(|e| SpoolError::Corrupt(format!("dead-letter entry does not decode: {e}")))
}

fn encode(letter: &DeadLetter) -> Vec<u8> {
    serde_json::to_vec(letter).expect("a dead letter always serializes")
}

pub(crate) fn put(
    shared: &Shared,
    sink: &str,
    event: &AuditEvent,
    reason: &str,
    now_unix_nano: u64,
) -> Result<(), SpoolError> {
    let letter = DeadLetter {
        sink: sink.to_owned(),
        seq: event.seq,
        reason: reason.to_owned(),
        dead_lettered_unix_nano: now_unix_nano,
        replay: false,
        event: event.clone(),
    };
    shared
        .dead_letters
        .insert(key(sink, event.seq), encode(&letter))?;
    Ok(())
}

fn scan(
    shared: &Shared,
    sink: Option<&str>,
) -> impl Iterator<Item = Result<(sled::IVec, DeadLetter), SpoolError>> {
    let prefix = sink.map(sink_prefix).unwrap_or_default();
    shared.dead_letters.scan_prefix(prefix).map(|item| {
        let (key, value) = item?;
        Ok((key, decode(&value)?))
    })
}

/// The dead letters of `sink` (or of all), of `tenant`'s events (or of all).
pub(crate) fn list(
    shared: &Shared,
    sink: Option<&str>,
    tenant: Option<&str>,
) -> Result<Vec<DeadLetter>, SpoolError> {
    let mut letters = Vec::new();
    for item in scan(shared, sink) {
        let (_, letter) = item?;
        if tenant.is_none_or(|t| letter.event.tenant == t) {
            letters.push(letter);
        }
    }
    Ok(letters)
}

pub(crate) fn mark_for_replay(shared: &Shared, sink: Option<&str>) -> Result<usize, SpoolError> {
    let mut marked = 0;
    for item in scan(shared, sink) {
        let (key, mut letter) = item?;
        if !letter.replay {
            letter.replay = true;
            shared.dead_letters.insert(key, encode(&letter))?;
            marked += 1;
        }
    }
    Ok(marked)
}

pub(crate) fn resolve(shared: &Shared, sink: &str, seq: u64) -> Result<bool, SpoolError> {
    let key = key(sink, seq);
    let Some(value) = shared.dead_letters.get(&key)? else {
        return Ok(false);
    };
    if !decode(&value)?.replay {
        return Ok(false);
    }
    // Only remove the entry we looked at: a concurrent re-rejection wins.
    Ok(shared
        .dead_letters
        .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?
        .is_ok())
}

pub(crate) fn count(shared: &Shared, sink: &str) -> usize {
    shared
        .dead_letters
        .scan_prefix(sink_prefix(sink))
        .keys()
        .count()
}

/// Removes every dead letter of `sink` (the sink is forgotten); returns how many.
pub(crate) fn remove_all(shared: &Shared, sink: &str) -> Result<usize, SpoolError> {
    let mut removed = 0;
    for key in shared.dead_letters.scan_prefix(sink_prefix(sink)).keys() {
        shared.dead_letters.remove(key?)?;
        removed += 1;
    }
    Ok(removed)
}

/// The distinct sinks that have dead letters, in name order.
pub(crate) fn sinks(shared: &Shared) -> Result<Vec<String>, SpoolError> {
    let mut names: Vec<String> = Vec::new();
    for key in shared.dead_letters.iter().keys() {
        let key = key?;
        let name = key.split(|&b| b == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(name);
        if names.last().map(String::as_str) != Some(&*name) {
            names.push(name.into_owned());
        }
    }
    Ok(names)
}
