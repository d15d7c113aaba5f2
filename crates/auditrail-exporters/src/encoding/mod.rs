//! How the sinks that carry text write an event: the encodings shared by
//! `file`, `webhook`, `nats`, `kafka`, `otlp` and syslog's `json` format.
//! A sink picks one by its `format` key; every encoding writes one event
//! as one line (no raw newline, whatever the event holds).

pub mod json;

pub use json::{event_json, write_event_json, EventJson};
