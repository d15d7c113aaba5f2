//! The canonical audit event and everything that must mean the same thing
//! in every part of auditrail.
//!
//! The receiver maps OTLP log records to [`AuditEvent`]s here, the spool stores
//! their [canonical bytes](canonical) and chains them with [`chain_hash`], and
//! `verify` recomputes the same chain. Keeping the mapping, the event id rule,
//! the byte encoding and the chain step in one crate is what lets every
//! component agree on what "the same event" is.

pub mod anyvalue;
pub mod canonical;
pub mod chain;
mod event;
pub mod fuzzing;
pub mod id;
pub mod internal;
pub mod otlp;
pub mod pattern;
pub mod to_otlp;

pub use canonical::DecodeError;
pub use chain::{chain_hash, Hash, GENESIS_HASH};
pub use event::{AuditEvent, Outcome};
pub use otlp::{
    clock_skew, described_rejections, map_request, MappedRequest, ReceiveContext, Rejected,
    RejectedRecord, RequestCost, CLOCK_SKEW_ATTRIBUTE, MAX_EVENT_BYTES,
};
pub use pattern::ValuePattern;
