//! Signed notes and their ed25519 keys, in the C2SP `signed-note` format
//! (the format of Go's `golang.org/x/mod/sumdb/note`, used by the Go
//! checksum database, Sigstore and every `tlog-checkpoint` log), so that
//! tools an auditor already trusts can check auditrail's checkpoints too.
//!
//! ```text
//! <text, one or more lines, each ending in \n>
//!
//! — <key name> <base64(key id ‖ signature)>
//! ```
//!
//! The key id is the first 4 bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖
//! public key)`; `0x01` names the ed25519 algorithm. Keys travel as text:
//! the verifier key `<name>+<key id, 8 hex digits>+<base64(0x01 ‖ public
//! key)>` (what auditors get) and the signer key `PRIVATE+KEY+<name>+<key
//! id>+<base64(0x01 ‖ seed)>` (what the server's key file holds).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const ALG_ED25519: u8 = 1;
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// What is wrong with a key or a note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    #[error("key name {0:?} is not valid: it must be non-empty, without spaces or '+'")]
    BadKeyName(String),
    #[error("key hash {stated:08x} does not match the key, which hashes to {actual:08x}")]
    KeyHashMismatch { stated: u32, actual: u32 },
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    #[error("the note carries no signature by key {name} ({id:08x})")]
    NoSignatureByKey { name: String, id: u32 },
    #[error("the signature by key {name} ({id:08x}) does not match the note's text")]
    BadSignature { name: String, id: u32 },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(public);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Splits `<name>+<hex id>+<base64 key>` and checks the algorithm byte.
fn parse_key_text(text: &str) -> Result<(&str, u32, [u8; 32]), NoteError> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::MalformedKey("expected <name>+<key id>+<key>"));
    };
    if !valid_name(name) {
        return Err(NoteError::BadKeyName(name.to_owned()));
    }
    if id.len() != 8 {
        return Err(NoteError::MalformedKey("the key id is not 8 hex digits"));
    }
    let id = u32::from_str_radix(id, 16)
        .map_err(|_| NoteError::MalformedKey("the key id is not 8 hex digits"))?;
    let bytes = B64
        .decode(key)
        .map_err(|_| NoteError::MalformedKey("the key is not base64"))?;
    match bytes.split_first() {
        Some((&ALG_ED25519, rest)) if rest.len() == 32 => {
            Ok((name, id, rest.try_into().expect("32 bytes")))
        }
        Some((&ALG_ED25519, _)) => Err(NoteError::MalformedKey("an ed25519 key has 32 bytes")),
        _ => Err(NoteError::MalformedKey(
            "not an ed25519 key (algorithm byte 0x01)",
        )),
    }
}

/// The public half: checks signatures. What auditors hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl VerifierKey {
    /// Parses `<name>+<key id>+<base64(0x01 ‖ key)>`.
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let (name, stated, public) = parse_key_text(text)?;
        let actual = key_id(name, &public);
        if stated != actual {
            return Err(NoteError::KeyHashMismatch { stated, actual });
        }
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::MalformedKey("not a valid ed25519 public key"))?;
        Ok(VerifierKey {
            name: name.to_owned(),
            id: actual,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id, which names it in signature lines.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(bytes))
    }
}

/// The private half: signs notes. Only the server holds it.
pub struct SignerKey {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself, not even in a debug log.
        write!(f, "SignerKey({}+{:08x})", self.name, self.id)
    }
}

impl SignerKey {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<SignerKey, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKeyName(name.to_owned()));
        }
        let seed: [u8; 32] = rand::random();
        Ok(SignerKey::from_seed(name, seed))
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> SignerKey {
        let key = SigningKey::from_bytes(&seed);
        SignerKey {
            name: name.to_owned(),
            id: key_id(name, key.verifying_key().as_bytes()),
            key,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<SignerKey, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::MalformedKey(
                "a signer key starts with PRIVATE+KEY+",
            ))?;
        let (name, stated, seed) = parse_key_text(rest)?;
        let key = SignerKey::from_seed(name, seed);
        if stated != key.id {
            return Err(NoteError::KeyHashMismatch {
                stated,
                actual: key.id,
            });
        }
        Ok(key)
    }

    /// The signer key's text, for the key file.
    pub fn to_text(&self) -> String {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            B64.encode(bytes)
        )
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must end in a newline) into a note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedNote(
            "the text does not end in a newline",
        ));
    }
    if text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::MalformedNote("the text holds an empty line"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::MalformedNote(
            "the text holds a control character",
        ));
    }
    Ok(())
}

/// Checks that `note` carries a valid signature by `key`; returns its text.
/// Signatures by other keys (a witness's cosignature) are ignored.
pub fn open<'a>(note: &'a str, key: &VerifierKey) -> Result<&'a str, NoteError> {
    let split = note.rfind("\n\n").ok_or(NoteError::MalformedNote(
        "no blank line before the signatures",
    ))?;
    let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
    check_text(text)?;
    if !signatures.ends_with('\n') {
        return Err(NoteError::MalformedNote(
            "the signatures do not end in a newline",
        ));
    }
    let mut signed_by_key = false;
    for line in signatures.lines() {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::MalformedNote(
                "a signature line does not start with \u{2014}",
            ))?;
        let (name, blob) = rest.split_once(' ').ok_or(NoteError::MalformedNote(
            "a signature line has no signature",
        ))?;
        let blob = B64
            .decode(blob)
            .map_err(|_| NoteError::MalformedNote("a signature is not base64"))?;
        if blob.len() < 4 {
            return Err(NoteError::MalformedNote("a signature is too short"));
        }
        let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        if name != key.name || id != key.id {
            continue;
        }
        let bad = || NoteError::BadSignature {
            name: key.name.clone(),
            id: key.id,
        };
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|_| bad())?;
        key.key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| bad())?;
        signed_by_key = true;
    }
    if signed_by_key {
        Ok(text)
    } else {
        Err(NoteError::NoSignatureByKey {
            name: key.name.clone(),
            id: key.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key pair and note of Go's `golang.org/x/mod/sumdb/note`
    /// documentation: our keys and signatures are that format, byte for byte.
    const GO_SIGNER: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn go_note_keys_and_signature_interoperate() {
        let signer = SignerKey::parse(GO_SIGNER).unwrap();
        let verifier = VerifierKey::parse(GO_VERIFIER).unwrap();
        assert_eq!(signer.verifier(), verifier);
        assert_eq!(signer.to_text(), GO_SIGNER);
        assert_eq!(verifier.to_string(), GO_VERIFIER);
        let text = open(GO_NOTE, &verifier).unwrap();
        assert!(text.starts_with("If you think"));
        // ed25519 signatures are deterministic: ours is Go's.
        assert_eq!(signer.sign(text).unwrap(), GO_NOTE);
    }

    #[test]
    fn a_changed_text_or_another_key_fails() {
        let verifier = VerifierKey::parse(GO_VERIFIER).unwrap();
        let changed = GO_NOTE.replacen("answer", "answek", 1);
        assert!(matches!(
            open(&changed, &verifier),
            Err(NoteError::BadSignature { .. })
        ));
        let other = SignerKey::generate("PeterNeumann").unwrap().verifier();
        assert!(matches!(
            open(GO_NOTE, &other),
            Err(NoteError::NoSignatureByKey { .. })
        ));
        let forged = SignerKey::generate("PeterNeumann")
            .unwrap()
            .sign("If you think cryptography is the answer to your problem,\n")
            .unwrap();
        assert!(open(&forged, &verifier).is_err());
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_named() {
        let signer = SignerKey::generate("auditrail-node1").unwrap();
        let again = SignerKey::parse(&signer.to_text()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let verifier = VerifierKey::parse(&signer.verifier().to_string()).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert!(matches!(
            VerifierKey::parse(&GO_VERIFIER.replace("c74f20a3", "c74f20a4")),
            Err(NoteError::KeyHashMismatch { .. })
        ));
        assert!(matches!(
            SignerKey::generate("two words"),
            Err(NoteError::BadKeyName(_))
        ));
        assert!(matches!(
            VerifierKey::parse("name+c74f20a3"),
            Err(NoteError::MalformedKey(_))
        ));
        assert!(format!("{signer:?}").starts_with("SignerKey(auditrail-node1+"));
        assert!(!format!("{signer:?}").contains(&signer.to_text()[20..]));
    }

    #[test]
    fn texts_that_cannot_be_signed() {
        let signer = SignerKey::generate("k").unwrap();
        assert!(signer.sign("no newline").is_err());
        assert!(signer.sign("a\n\nb\n").is_err());
        assert!(signer.sign("bell\u{7}\n").is_err());
    }
}
