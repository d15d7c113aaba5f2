//! Static bearer tokens: each one names a tenant, or the operator.
//!
//! Tokens are kept only as SHA-256 digests, and a presented token is
//! compared with every configured one in constant time, so neither the
//! time an answer takes nor the memory of the process tells an attacker how
//! close a guess came or which tenant's token it resembled.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::Access;

/// Tokens shorter than this are accepted, but start-up warns about them.
pub const RECOMMENDED_MIN_LEN: usize = 16;

/// Why a token cannot be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{label}: the token is empty")]
    Empty { label: String },
    #[error("{label}: the token holds whitespace or control characters, which no `Bearer` header can carry")]
    Unsendable { label: String },
    #[error("{label}: the same token is configured for {other} too; every token must be unique")]
    Duplicate { label: String, other: String },
}

/// One configured token's grant. The secret itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    pub access: Access,
    /// Where it was configured, for logs: e.g. `receiver.tokens[0] (tenant acme)`.
    pub label: String,
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
    grants: Vec<StaticToken>,
}

impl TokenSet {
    pub fn new() -> TokenSet {
        TokenSet::default()
    }

    /// Adds a token. Refuses an empty token, one that a header cannot carry,
    /// and one already configured (two grants for one secret would make the
    /// answer depend on their order).
    pub fn add(
        &mut self,
        secret: &str,
        access: Access,
        label: impl Into<String>,
    ) -> Result<(), TokenError> {
        let label = label.into();
        if secret.is_empty() {
            return Err(TokenError::Empty { label });
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::Unsendable { label });
        }
        let digest = digest(secret);
        if let Some(i) = self.digests.iter().position(|d| *d == digest) {
            return Err(TokenError::Duplicate {
                label,
                other: self.grants[i].label.clone(),
            });
        }
        self.digests.push(digest);
        self.grants.push(StaticToken { access, label });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// The grant of `presented`, if it is a configured token. Every
    /// configured digest is compared, whichever matches.
    pub fn find(&self, presented: &str) -> Option<&StaticToken> {
        let presented = digest(presented);
        let mut found = subtle::CtOption::new(0u64, 0u8.into());
        for (i, d) in self.digests.iter().enumerate() {
            let hit = d.ct_eq(&presented);
            let candidate = subtle::CtOption::new(i as u64, hit);
            found = subtle::CtOption::conditional_select(&found, &candidate, hit);
        }
        Option::<u64>::from(found).map(|i| &self.grants[i as usize])
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The tokens in a `token_file`: one per line; blank lines and lines that
/// start with `#` are skipped. Several tokens let a tenant's token be
/// rotated without downtime: add the new one, reload, move the clients,
/// remove the old one, reload.
pub fn parse_token_file(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> Access {
        Access::Tenant(t.into())
    }

    #[test]
    fn finds_the_token_that_matches_and_no_other() {
        let mut set = TokenSet::new();
        set.add("alpha-token-0123456789", tenant("a"), "a").unwrap();
        set.add("bravo-token-0123456789", tenant("b"), "b").unwrap();
        set.add("operator-token-0123456789", Access::Operator, "op")
            .unwrap();
        assert_eq!(
            set.find("alpha-token-0123456789").unwrap().access,
            tenant("a")
        );
        assert_eq!(
            set.find("bravo-token-0123456789").unwrap().access,
            tenant("b")
        );
        assert_eq!(
            set.find("operator-token-0123456789").unwrap().access,
            Access::Operator
        );
        assert!(set.find("alpha-token-012345678").is_none(), "a prefix");
        assert!(
            set.find("alpha-token-01234567890").is_none(),
            "an extension"
        );
        assert!(set.find("").is_none());
        assert!(TokenSet::new().find("anything").is_none());
    }

    #[test]
    fn refuses_empty_unsendable_and_duplicate_tokens() {
        let mut set = TokenSet::new();
        assert!(matches!(
            set.add("", tenant("a"), "x"),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            set.add("has space", tenant("a"), "x"),
            Err(TokenError::Unsendable { .. })
        ));
        assert!(matches!(
            set.add("nl\n", tenant("a"), "x"),
            Err(TokenError::Unsendable { .. })
        ));
        set.add("same-token", tenant("a"), "first").unwrap();
        let err = set.add("same-token", tenant("b"), "second").unwrap_err();
        assert_eq!(
            err,
            TokenError::Duplicate {
                label: "second".into(),
                other: "first".into()
            }
        );
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn token_files_hold_one_token_per_line() {
        let text = "# rotated 2026-12-01\nnew-token\n\n  old-token  \n";
        assert_eq!(parse_token_file(text), ["new-token", "old-token"]);
    }
}
