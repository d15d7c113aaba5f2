//! Each sink's health, as `/readyz` and the metrics report it.

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
    /// `starting` (preparing the destination), `delivering`, or `failing`
    /// (retrying after errors).
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
}

/// Shared between a sink's delivery loop (which writes) and the admin
/// server (which reads).
#[derive(Debug)]
pub(crate) struct Health {
    status: Mutex<SinkStatus>,
}

impl Health {
    pub(crate) fn new(name: &str, kind: &'static str, cursor: u64) -> Self {
        Health {
            status: Mutex::new(SinkStatus {
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
            }),
        }
    }

    pub(crate) fn snapshot(&self) -> SinkStatus {
        self.status.lock().expect("health lock").clone()
    }

    pub(crate) fn succeeded(&self) {
        let mut status = self.status.lock().expect("health lock");
        status.state = "delivering";
        status.healthy = true;
        status.last_error = None;
        status.failing_since = None;
        metrics::gauge!("auditrail_sink_up", "sink" => status.name.clone()).set(1.0);
    }

    pub(crate) fn failed(&self, error: &ExportError) {
        let mut status = self.status.lock().expect("health lock");
        if status.state != "starting" {
            status.state = "failing";
        }
        status.healthy = false;
        status.last_error = Some(error.to_string());
        status.failing_since.get_or_insert_with(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        metrics::gauge!("auditrail_sink_up", "sink" => status.name.clone()).set(0.0);
    }

    pub(crate) fn progress(&self, cursor: u64, lag_events: u64, lag_seconds: f64, dead: usize) {
        let mut status = self.status.lock().expect("health lock");
        status.cursor = cursor;
        status.lag_events = lag_events;
        status.lag_seconds = lag_seconds;
        status.dead_letters = dead;
    }
}
