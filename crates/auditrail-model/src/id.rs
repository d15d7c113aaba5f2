//! Event ids.
//!
//! An event's id is the `log.record.uid` attribute when the sender set one,
//! otherwise a content hash of what was sent: the resource, the scope and the
//! record, each as its protobuf encoding. The hash covers the message, not the
//! wire bytes, so a retry of the same export yields the same id whether it
//! comes over gRPC, HTTP/protobuf or HTTP/JSON.

use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope, logs::v1::LogRecord, resource::v1::Resource,
};
use prost::Message;
use sha2::{Digest, Sha256};

/// The attribute a sender uses to name its own event id.
pub const RECORD_UID_ATTRIBUTE: &str = "log.record.uid";

/// Longest accepted `log.record.uid`, in bytes.
pub const MAX_RECORD_UID_LEN: usize = 128;

/// Why a `log.record.uid` cannot serve as an event id.
pub fn check_record_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > MAX_RECORD_UID_LEN {
        return Err(format!(
            "log.record.uid must be 1 to {MAX_RECORD_UID_LEN} bytes, got {}",
            uid.len()
        ));
    }
    if let Some(bad) = uid.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
        return Err(format!(
            "log.record.uid must be printable ASCII, found byte 0x{bad:02x}"
        ));
    }
    Ok(())
}

/// Content-hash ids for the records under one resource and scope.
///
/// The resource and scope are hashed once; each record then only adds its
/// own bytes to a copy of that state.
#[derive(Clone)]
pub struct ContentIds {
    prefix: Sha256,
}

impl ContentIds {
    pub fn new(resource: Option<&Resource>, scope: Option<&InstrumentationScope>) -> ContentIds {
        let mut prefix = Sha256::new();
        hash_part(&mut prefix, b'r', resource.map(Message::encode_to_vec));
        hash_part(&mut prefix, b's', scope.map(Message::encode_to_vec));
        ContentIds { prefix }
    }

    /// 32 lower-case hex characters (the first 128 bits of the SHA-256).
    pub fn record_id(&self, record: &LogRecord) -> String {
        let mut hasher = self.prefix.clone();
        hash_part(&mut hasher, b'l', Some(record.encode_to_vec()));
        hex::encode(&hasher.finalize()[..16])
    }
}

fn hash_part(hasher: &mut Sha256, tag: u8, bytes: Option<Vec<u8>>) {
    hasher.update([tag]);
    match bytes {
        // Absent and empty are different messages on the wire, so keep them apart.
        None => hasher.update([0u8]),
        Some(bytes) => {
            hasher.update([1u8]);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
        }
    }
}

/// The tenant of events sent while auth is off.
pub const DEFAULT_TENANT: &str = "default";

/// The fixed-size key the spool deduplicates on: an event id is unique
/// within its tenant, so one tenant cannot claim another's `log.record.uid`
/// in advance and have the real event dropped as a duplicate.
///
/// The default tenant's key is the SHA-256 of the id alone, as it was before
/// tenants had keys of their own, so the keys spools already hold still
/// match. Any other tenant's key input starts with a NUL byte, which no
/// event id holds (ids are printable ASCII or hex), followed by the tenant,
/// a NUL (tenant names hold none) and the id: no two (tenant, id) pairs
/// share an input.
pub fn dedup_key(tenant: &str, event_id: &str) -> [u8; 16] {
    let mut hasher = Sha256::new();
    if tenant != DEFAULT_TENANT {
        hasher.update([0u8]);
        hasher.update(tenant.as_bytes());
        hasher.update([0u8]);
    }
    hasher.update(event_id.as_bytes());
    hasher.finalize()[..16].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_rules() {
        assert!(check_record_uid("a").is_ok());
        assert!(check_record_uid(&"x".repeat(128)).is_ok());
        assert!(check_record_uid("").unwrap_err().contains("1 to 128 bytes"));
        assert!(check_record_uid(&"x".repeat(129)).is_err());
        assert!(check_record_uid("tab\there").unwrap_err().contains("0x09"));
    }

    #[test]
    fn dedup_keys_are_scoped_by_tenant() {
        let legacy: [u8; 16] = Sha256::digest(b"uid-1")[..16].try_into().unwrap();
        assert_eq!(
            dedup_key(DEFAULT_TENANT, "uid-1"),
            legacy,
            "keys stored before tenants still match"
        );
        assert_ne!(dedup_key("acme", "uid-1"), dedup_key("globex", "uid-1"));
        assert_ne!(
            dedup_key("acme", "uid-1"),
            dedup_key(DEFAULT_TENANT, "uid-1")
        );
        assert_eq!(dedup_key("acme", "uid-1"), dedup_key("acme", "uid-1"));
        // The separator keeps (tenant, id) pairs apart.
        assert_ne!(dedup_key("ab", "c"), dedup_key("a", "bc"));
    }

    #[test]
    fn content_id_is_stable_and_sensitive() {
        let resource = Resource::default();
        let record = LogRecord {
            time_unix_nano: 5,
            ..Default::default()
        };
        let ids = ContentIds::new(Some(&resource), None);
        let id = ids.record_id(&record);
        assert_eq!(id.len(), 32);
        assert_eq!(
            id,
            ContentIds::new(Some(&resource), None).record_id(&record)
        );
        let other = LogRecord {
            time_unix_nano: 6,
            ..Default::default()
        };
        assert_ne!(id, ids.record_id(&other));
        // Absent resource differs from an empty one.
        assert_ne!(id, ContentIds::new(None, None).record_id(&record));
    }
}
