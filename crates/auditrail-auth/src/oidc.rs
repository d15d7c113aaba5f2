//! OIDC: people (and service accounts) log in at their identity provider,
//! and present its JWT (ID or access token) as a bearer token.
//!
//! SKELETON: the interface the rest of auditrail builds against. To be
//! implemented (see the helper brief): RS256 and ES256 signatures checked
//! against the issuer's JWKS (from a URL, refreshed, or a file, reloaded),
//! `iss`, `aud`, `exp` and `nbf` checked, and the claims mapped to a tenant
//! or to the operator by [`OidcConfig`].

use std::path::PathBuf;
use std::time::Duration;

use crate::{AuthError, Identity};

/// `[oidc]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// `iss` must equal this.
    pub issuer: String,
    /// `aud` must hold one of these.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// A claim whose string value is the caller's tenant (e.g. `tenant`).
    pub tenant_claim: Option<String>,
    /// Further grants by claim value, tried in order, before `tenant_claim`.
    pub roles: Vec<ClaimRule>,
}

/// Where the issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched at start and every `refresh`, and again (at most once every
    /// few seconds) when a token names a key id not yet known.
    Url { url: String, refresh: Duration },
    /// Read at start and on reload.
    File(PathBuf),
}

/// "A token whose `claim` holds `value` gets `grant`". A claim may be a
/// string or an array of strings (groups); `claim` may be a dotted path
/// (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub claim: String,
    pub value: String,
    pub grant: crate::Access,
}

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token's issuer is not {0:?}")]
    WrongIssuer(String),
    #[error("the token's audience is not one of auditrail's")]
    WrongAudience,
    #[error("the issuer has no key with id {0:?}")]
    UnknownKey(String),
    #[error("algorithm {0} is not accepted; use RS256 or ES256")]
    UnsupportedAlgorithm(String),
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

impl JwtError {
    /// The `reason` label of `auditrail_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::WrongIssuer(_) => "jwt_wrong_issuer",
            JwtError::WrongAudience => "jwt_wrong_audience",
            JwtError::UnknownKey(_) => "jwt_unknown_key",
            JwtError::UnsupportedAlgorithm(_) => "jwt_algorithm",
            JwtError::Malformed(_) => "jwt_malformed",
        }
    }
}

/// Why OIDC could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Keys(String),
}

/// Checks JWTs against the issuer's keys and maps them to an [`Identity`].
pub struct Verifier {
    _config: OidcConfig,
}

impl Verifier {
    /// Loads the keys (a file must load; a URL that cannot be reached yet
    /// is retried in the background, and JWTs get
    /// [`AuthError::KeysUnavailable`] meanwhile).
    pub async fn start(config: OidcConfig) -> Result<Verifier, OidcError> {
        Ok(Verifier { _config: config })
    }

    /// The identity a valid JWT maps to.
    pub async fn verify(&self, _token: &str) -> Result<Identity, AuthError> {
        Err(AuthError::KeysUnavailable(
            "OIDC is not implemented yet".into(),
        ))
    }

    /// Reads the key file again, or fetches the URL now (SIGHUP).
    pub async fn reload(&self) -> Result<(), OidcError> {
        Ok(())
    }
}
