//! How the sinks that carry text write an event: the encodings shared by
//! `file`, `webhook`, `nats`, `kafka`, `otlp` and syslog's `json` format.
//! A sink picks one by its `format` key; every encoding writes one event
//! as one line (no raw newline, whatever the event holds).

pub mod json;

pub use json::{event_json, write_event_json, EventJson};

use auditrail_model::AuditEvent;
use serde::Deserialize;

/// The `format` key of a sink that carries JSON lines. Only `json` exists
/// yet; `ocsf` is to come, which is why the key is there already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The canonical event ([`json`]).
    #[default]
    Json,
}

impl LineFormat {
    /// Appends `event` in this format, with its newline, to `out`.
    pub fn write_line(self, event: &AuditEvent, out: &mut Vec<u8>) {
        match self {
            LineFormat::Json => write_event_json(event, out),
        }
        out.push(b'\n');
    }
}
