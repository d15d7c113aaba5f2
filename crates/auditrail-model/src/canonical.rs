//! Canonical bytes: the one byte encoding of an [`AuditEvent`].
//!
//! The same bytes are what the spool stores and what the hash chain hashes,
//! so a stored event can always be re-hashed exactly as it was chained. The
//! rule (also in `docs/canonical-bytes.md`):
//!
//! * one version byte, `0x01`;
//! * then every canonical field except `hash` and `prev_hash`, in this order:
//!   `node, seq, event_id, time_unix_nano, observed_time_unix_nano,
//!   received_time_unix_nano, tenant, service_name, event_name,
//!   severity_number, severity_text, actor_id, actor_name, client_address,
//!   outcome, target, trace_id, span_id, trace_flags, body, attributes,
//!   resource_attributes, scope_name`;
//! * a string is its UTF-8 length as a big-endian u32 followed by the bytes;
//!   `seq` and the three times are big-endian u64; `severity_number` is a
//!   big-endian two's-complement i32; `trace_flags` is a big-endian u32;
//!   `outcome` is the string `success`, `failure` or `unknown`.

use crate::event::{AuditEvent, Outcome};

const VERSION: u8 = 1;

/// Why stored bytes could not be read back as an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("canonical bytes end early, in field `{0}`")]
    Truncated(&'static str),
    #[error("unknown canonical bytes version {0}")]
    Version(u8),
    #[error("field `{0}` is not valid UTF-8")]
    Utf8(&'static str),
    #[error("field `outcome` holds {0:?}, not success, failure or unknown")]
    Outcome(String),
    #[error("{0} bytes follow the last field")]
    Trailing(usize),
}

impl AuditEvent {
    /// The event's canonical bytes (see the module docs for the rule).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.canonical_len());
        self.write_canonical_bytes(&mut out);
        out
    }

    /// Appends the canonical bytes to `out`, so that the spool can encode a
    /// whole batch into one buffer.
    pub fn write_canonical_bytes(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put_str(out, &self.node);
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_str(out, &self.event_id);
        out.extend_from_slice(&self.time_unix_nano.to_be_bytes());
        out.extend_from_slice(&self.observed_time_unix_nano.to_be_bytes());
        out.extend_from_slice(&self.received_time_unix_nano.to_be_bytes());
        put_str(out, &self.tenant);
        put_str(out, &self.service_name);
        put_str(out, &self.event_name);
        out.extend_from_slice(&self.severity_number.to_be_bytes());
        put_str(out, &self.severity_text);
        put_str(out, &self.actor_id);
        put_str(out, &self.actor_name);
        put_str(out, &self.client_address);
        put_str(out, self.outcome.as_str());
        put_str(out, &self.target);
        put_str(out, &self.trace_id);
        put_str(out, &self.span_id);
        out.extend_from_slice(&self.trace_flags.to_be_bytes());
        put_str(out, &self.body);
        put_str(out, &self.attributes);
        put_str(out, &self.resource_attributes);
        put_str(out, &self.scope_name);
    }

    /// The exact length of [`AuditEvent::canonical_bytes`], without
    /// encoding: what the receiver's `max_event_bytes` limit measures.
    pub fn canonical_len(&self) -> usize {
        const FIXED: usize = 1 // version
            + 8 * 4 // seq and the three times
            + 4 * 2; // severity_number, trace_flags
        let strings = [
            &self.node,
            &self.event_id,
            &self.tenant,
            &self.service_name,
            &self.event_name,
            &self.severity_text,
            &self.actor_id,
            &self.actor_name,
            &self.client_address,
            self.outcome.as_str(),
            &self.target,
            &self.trace_id,
            &self.span_id,
            &self.body,
            &self.attributes,
            &self.resource_attributes,
            &self.scope_name,
        ];
        FIXED + strings.iter().map(|s| 4 + s.len()).sum::<usize>()
    }

    /// Reads canonical bytes back. `hash` and `prev_hash` are left zero: they
    /// are not part of the bytes, the spool keeps them beside.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<AuditEvent, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let event = AuditEvent {
            node: r.string("node")?,
            seq: r.u64("seq")?,
            event_id: r.string("event_id")?,
            time_unix_nano: r.u64("time_unix_nano")?,
            observed_time_unix_nano: r.u64("observed_time_unix_nano")?,
            received_time_unix_nano: r.u64("received_time_unix_nano")?,
            tenant: r.string("tenant")?,
            service_name: r.string("service_name")?,
            event_name: r.string("event_name")?,
            severity_number: r.u32("severity_number")? as i32,
            severity_text: r.string("severity_text")?,
            actor_id: r.string("actor_id")?,
            actor_name: r.string("actor_name")?,
            client_address: r.string("client_address")?,
            outcome: {
                let s = r.string("outcome")?;
                Outcome::parse(&s).ok_or(DecodeError::Outcome(s))?
            },
            target: r.string("target")?,
            trace_id: r.string("trace_id")?,
            span_id: r.string("span_id")?,
            trace_flags: r.u32("trace_flags")?,
            body: r.string("body")?,
            attributes: r.string("attributes")?,
            resource_attributes: r.string("resource_attributes")?,
            scope_name: r.string("scope_name")?,
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        match bytes.len() - r.pos {
            0 => Ok(event),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Unreachable from input: `map_request` rejects every event whose
    // canonical bytes exceed `otlp::MAX_EVENT_BYTES` (1 GiB), so only an
    // event built by hand with a 4 GiB field can get here.
    let len = u32::try_from(s.len()).expect("a field is far smaller than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(field))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u32(field)? as usize;
        let raw = self.take(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Utf8(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> AuditEvent {
        AuditEvent {
            node: "n1".into(),
            seq: 7,
            event_id: "abc".into(),
            time_unix_nano: 1,
            observed_time_unix_nano: 2,
            received_time_unix_nano: 3,
            tenant: "default".into(),
            service_name: "svc".into(),
            event_name: "image.generate".into(),
            severity_number: -5,
            severity_text: "INFO".into(),
            actor_id: "alice".into(),
            actor_name: "Alice".into(),
            client_address: "10.0.0.1".into(),
            outcome: Outcome::Failure,
            target: "model/x".into(),
            trace_id: "00".repeat(16),
            span_id: "11".repeat(8),
            trace_flags: 1,
            body: "héllo".into(),
            attributes: r#"{"a":1}"#.into(),
            resource_attributes: "{}".into(),
            scope_name: "scope".into(),
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn round_trips() {
        let event = sample();
        let bytes = event.canonical_bytes();
        assert_eq!(bytes.len(), event.canonical_len());
        assert_eq!(bytes[0], VERSION);
        assert_eq!(AuditEvent::from_canonical_bytes(&bytes).unwrap(), event);
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = sample().canonical_bytes();
        let mut changed = sample();
        changed.seq += 1;
        assert_ne!(changed.canonical_bytes(), base);
        let mut changed = sample();
        changed.outcome = Outcome::Success;
        assert_ne!(changed.canonical_bytes(), base);
        // Moving a byte from one field to the next must not give the same
        // bytes: length prefixes keep field boundaries unambiguous.
        let mut a = sample();
        a.actor_id = "ab".into();
        a.actor_name = "c".into();
        let mut b = sample();
        b.actor_id = "a".into();
        b.actor_name = "bc".into();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn damaged_bytes_are_named() {
        let bytes = sample().canonical_bytes();
        assert_eq!(
            AuditEvent::from_canonical_bytes(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated("scope_name"))
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            AuditEvent::from_canonical_bytes(&extra),
            Err(DecodeError::Trailing(1))
        );
        let mut wrong = bytes;
        wrong[0] = 9;
        assert_eq!(
            AuditEvent::from_canonical_bytes(&wrong),
            Err(DecodeError::Version(9))
        );
    }
}
