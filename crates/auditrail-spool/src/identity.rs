//! The spool's lasting identity.
//!
//! Sinks key their rows by `(node, seq)`, so a spool that is wiped or
//! recreated under the same node id must not start again at seq 1: the
//! sinks would take its new events for re-sends of old rows and discard
//! them. So every spool records, once, in `meta` (key [`IDENTITY_KEY`],
//! JSON) who it is and where its seqs start ([`SpoolIdentity`]).
//!
//! A spool is created *pending*: nothing stored, no identity yet. Whoever
//! opens it for serving first asks the sinks which seqs of this node they
//! already hold and then calls [`crate::Spool::start_new`] with the highest
//! answer; the new spool's seqs (and a new hash chain, from the genesis
//! hash) start right after it. An append to a pending spool starts it at
//! seq 1 (a library user, a test, a node without sinks). The identity is
//! flushed before the first event is assigned a seq, and a restart of a
//! spool whose identity was written but which stored nothing yet continues
//! at its `first_seq`, not at 1.
//!
//! Spools created before identities existed (they have events, a removed
//! tail, cursors or dead letters, but no identity) adopt one when they are
//! opened, with `first_seq` 1: those versions always started there.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::SpoolError;

/// `meta` key of the identity record.
pub(crate) const IDENTITY_KEY: &[u8] = b"identity";

/// Who a spool is: written once, when its first seq is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolIdentity {
    /// 128 random bits, lower-case hex: tells two spools of one node apart
    /// (in logs, `/readyz`, a support ticket).
    pub spool_id: String,
    /// When the identity was written.
    pub created_unix_nano: u64,
    /// The first seq this spool assigns (or assigned). Its hash chain starts
    /// there from the genesis hash. Above 1 when sinks already held seqs of
    /// this node when the spool was created (a wiped or replaced spool).
    pub first_seq: u64,
    /// Whether the identity was given on open to a spool made by a version
    /// that had none (its `created_unix_nano` is then the adoption time).
    #[serde(default)]
    pub adopted: bool,
}

impl SpoolIdentity {
    /// A new identity for a spool whose first seq is `first_seq`.
    pub(crate) fn new(first_seq: u64, adopted: bool, now: SystemTime) -> Self {
        SpoolIdentity {
            spool_id: format!("{:032x}", rand::random::<u128>()),
            created_unix_nano: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            first_seq,
            adopted,
        }
    }

    /// The seq before the first: the last seq of a spool that holds nothing.
    pub fn floor(&self) -> u64 {
        self.first_seq.saturating_sub(1)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an identity always serializes")
    }

    fn decode(bytes: &[u8]) -> Result<Self, SpoolError> {
        let identity: SpoolIdentity = serde_json::from_slice(bytes)
            .map_err(|e| SpoolError::Corrupt(format!("meta identity does not decode: {e}")))?;
        let valid_id = identity.spool_id.len() == 32
            && identity.spool_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_id || identity.first_seq == 0 {
            return Err(SpoolError::Corrupt(format!(
                "meta identity is not valid (spool_id {:?}, first_seq {})",
                identity.spool_id, identity.first_seq
            )));
        }
        Ok(identity)
    }
}

/// The identity stored in `meta`, if any.
pub(crate) fn load(meta: &sled::Tree) -> Result<Option<SpoolIdentity>, SpoolError> {
    meta.get(IDENTITY_KEY)?
        .map(|bytes| SpoolIdentity::decode(&bytes))
        .transpose()
}

/// Writes `identity` (the caller flushes). Refuses to replace one.
pub(crate) fn store(meta: &sled::Tree, identity: &SpoolIdentity) -> Result<(), SpoolError> {
    meta.compare_and_swap(IDENTITY_KEY, None as Option<&[u8]>, Some(identity.encode()))?
        .map_err(|_| SpoolError::AlreadyStarted)
}

/// At open: the stored identity; or, for a spool an older version made
/// (`has_contents`), a newly adopted one (written, the caller flushes);
/// or `None` for a spool that is new and still pending.
pub(crate) fn recover(
    meta: &sled::Tree,
    has_contents: bool,
    now: SystemTime,
) -> Result<Option<SpoolIdentity>, SpoolError> {
    if let Some(identity) = load(meta)? {
        return Ok(Some(identity));
    }
    if !has_contents {
        return Ok(None);
    }
    let identity = SpoolIdentity::new(1, true, now);
    store(meta, &identity)?;
    tracing::info!(spool_id = %identity.spool_id, "the spool predates spool identities; it adopts one (its seqs started at 1)");
    Ok(Some(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> (sled::Db, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("meta").unwrap();
        (db, tree)
    }

    #[test]
    fn a_new_identity_has_a_random_hex_id_and_its_first_seq() {
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let a = SpoolIdentity::new(501, false, now);
        let b = SpoolIdentity::new(501, false, now);
        assert_eq!(a.spool_id.len(), 32);
        assert!(a
            .spool_id
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.spool_id, b.spool_id, "128 random bits do not repeat");
        assert_eq!(a.created_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!((a.first_seq, a.floor()), (501, 500));
    }

    #[test]
    fn an_identity_round_trips_and_is_never_replaced() {
        let (_db, meta) = meta();
        assert_eq!(load(&meta).unwrap(), None);
        let identity = SpoolIdentity::new(7, false, SystemTime::now());
        store(&meta, &identity).unwrap();
        assert_eq!(load(&meta).unwrap(), Some(identity.clone()));
        let other = SpoolIdentity::new(1, false, SystemTime::now());
        assert!(matches!(
            store(&meta, &other),
            Err(SpoolError::AlreadyStarted)
        ));
        assert_eq!(load(&meta).unwrap(), Some(identity));
    }

    #[test]
    fn recover_adopts_only_for_a_spool_with_contents() {
        let (_db, meta) = meta();
        assert_eq!(recover(&meta, false, SystemTime::now()).unwrap(), None);
        assert_eq!(load(&meta).unwrap(), None, "a pending spool stays pending");
        let adopted = recover(&meta, true, SystemTime::now()).unwrap().unwrap();
        assert!(adopted.adopted);
        assert_eq!(adopted.first_seq, 1);
        // Once adopted, it is the identity for good.
        assert_eq!(
            recover(&meta, true, SystemTime::now()).unwrap(),
            Some(adopted)
        );
    }

    #[test]
    fn a_damaged_identity_is_a_clear_error() {
        let (_db, meta) = meta();
        meta.insert(IDENTITY_KEY, &b"{not json"[..]).unwrap();
        let err = load(&meta).unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt(_)), "{err}");
        meta.insert(
            IDENTITY_KEY,
            &br#"{"spool_id":"xyz","created_unix_nano":1,"first_seq":1}"#[..],
        )
        .unwrap();
        assert!(matches!(load(&meta), Err(SpoolError::Corrupt(_))));
        meta.insert(
            IDENTITY_KEY,
            format!(
                r#"{{"spool_id":"{}","created_unix_nano":1,"first_seq":0}}"#,
                "a".repeat(32)
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(matches!(load(&meta), Err(SpoolError::Corrupt(_))));
    }
}
