use serde::{Deserialize, Serialize};

use crate::chain::Hash;

/// What the actor's action came to, from the `audit.outcome` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    #[default]
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "unknown" => Some(Outcome::Unknown),
            _ => None,
        }
    }
}

/// One audit event in its canonical form.
///
/// The field names are part of auditrail's contract: SQL sinks use them as
/// column names and `query --format json` uses them as keys. `node`, `seq`,
/// `prev_hash` and `hash` are assigned by the spool that stores the event;
/// before that they are empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AuditEvent {
    pub node: String,
    pub seq: u64,
    pub event_id: String,
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub received_time_unix_nano: u64,
    pub tenant: String,
    pub service_name: String,
    pub event_name: String,
    pub severity_number: i32,
    pub severity_text: String,
    pub actor_id: String,
    pub actor_name: String,
    pub client_address: String,
    pub outcome: Outcome,
    pub target: String,
    /// Lower-case hex, empty when the record carried no valid trace id.
    pub trace_id: String,
    /// Lower-case hex, empty when the record carried no valid span id.
    pub span_id: String,
    pub trace_flags: u32,
    /// A string body as sent; any other body as canonical JSON.
    pub body: String,
    /// Canonical JSON object (sorted keys) of every record attribute.
    pub attributes: String,
    /// Canonical JSON object (sorted keys) of every resource attribute.
    pub resource_attributes: String,
    pub scope_name: String,
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl AuditEvent {
    /// Whether `needle` occurs in the body or in any attribute value.
    ///
    /// Attribute values are searched in their JSON form, which is what the
    /// event stores; keys are not matched, so `--text user` does not hit every
    /// event that has a `user.id` attribute.
    pub fn contains_text(&self, needle: &str) -> bool {
        if self.body.contains(needle) {
            return true;
        }
        [&self.attributes, &self.resource_attributes]
            .into_iter()
            .any(|json| crate::anyvalue::json_values_contain(json, needle))
    }
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::chain::Hash;

    pub fn serialize<S: Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
