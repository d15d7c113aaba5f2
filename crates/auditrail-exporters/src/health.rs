//! Each sink's health, as `/readyz` and the metrics report it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ExportError;

/// One sink's state at a moment, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `starting` (preparing the destination), `delivering`, `failing`
    /// (retrying after errors) or `stuck` (a batch keeps failing with the
    /// same error: see `stuck`).
    pub state: &'static str,
    pub healthy: bool,
    /// Every event up to this seq is confirmed by the sink.
    pub cursor: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    /// The last error since the sink was last healthy.
    pub last_error: Option<String>,
    /// When it started failing, in Unix seconds.
    pub failing_since: Option<u64>,
    pub dead_letters: usize,
    /// The stuck batch with the lowest seqs, while any is stuck.
    pub stuck: Option<StuckBatch>,
}

/// A batch that has failed `stuck_after` times or more in a row with the
/// same kind of error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StuckBatch {
    /// The seqs of the batch (or of the part of it being retried).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Consecutive failed attempts with this kind of error.
    pub attempts: u32,
    /// The latest of them.
    pub error: String,
    /// When the first of them failed, in Unix seconds.
    pub since: u64,
}

/// Shared between a sink's delivery loop (which writes) and the admin
/// server (which reads).
#[derive(Debug)]
pub(crate) struct Health {
    status: Mutex<State>,
}

#[derive(Debug)]
struct State {
    status: SinkStatus,
    /// By batch task id: every batch stuck now.
    stuck: BTreeMap<u64, StuckBatch>,
}

impl State {
    fn publish_stuck(&mut self) {
        self.status.stuck = self.stuck.values().min_by_key(|b| b.first_seq).cloned();
        metrics::gauge!("auditrail_sink_stuck", "sink" => self.status.name.clone())
            .set(if self.stuck.is_empty() { 0.0 } else { 1.0 });
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Health {
    pub(crate) fn new(name: &str, kind: &'static str, cursor: u64) -> Self {
        metrics::gauge!("auditrail_sink_stuck", "sink" => name.to_owned()).set(0.0);
        Health {
            status: Mutex::new(State {
                status: SinkStatus {
                    name: name.to_owned(),
                    kind,
                    state: "starting",
                    healthy: false,
                    cursor,
                    lag_events: 0,
                    lag_seconds: 0.0,
                    last_error: None,
                    failing_since: None,
                    dead_letters: 0,
                    stuck: None,
                },
                stuck: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn snapshot(&self) -> SinkStatus {
        let state = self.state();
        let mut status = state.status.clone();
        if !state.stuck.is_empty() {
            status.state = "stuck";
            status.healthy = false;
        }
        status
    }

    pub(crate) fn succeeded(&self) {
        let mut state = self.state();
        let status = &mut state.status;
        status.state = "delivering";
        status.healthy = true;
        status.last_error = None;
        status.failing_since = None;
        metrics::gauge!("auditrail_sink_up", "sink" => status.name.clone()).set(1.0);
    }

    pub(crate) fn failed(&self, error: &ExportError) {
        let mut state = self.state();
        let status = &mut state.status;
        if status.state != "starting" {
            status.state = "failing";
        }
        status.healthy = false;
        status.last_error = Some(error.to_string());
        status.failing_since.get_or_insert_with(unix_now);
        metrics::gauge!("auditrail_sink_up", "sink" => status.name.clone()).set(0.0);
    }

    /// Batch task `id` is stuck (or still is, with `batch` as it is now).
    pub(crate) fn stuck(&self, id: u64, batch: StuckBatch) {
        let mut state = self.state();
        state.stuck.insert(id, batch);
        state.publish_stuck();
    }

    /// Batch task `id` is not stuck (any more).
    pub(crate) fn unstuck(&self, id: u64) {
        let mut state = self.state();
        if state.stuck.remove(&id).is_some() {
            state.publish_stuck();
        }
    }

    pub(crate) fn progress(&self, cursor: u64, lag_events: u64, lag_seconds: f64, dead: usize) {
        let mut state = self.state();
        let status = &mut state.status;
        status.cursor = cursor;
        status.lag_events = lag_events;
        status.lag_seconds = lag_seconds;
        status.dead_letters = dead;
    }
}
