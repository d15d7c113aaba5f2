//! Who is calling auditrail, and what they may do.
//!
//! The OTLP receivers and the admin API ask one [`Authenticator`] about
//! every request. It knows three kinds of credentials:
//!
//! * static bearer tokens, each bound to a tenant or to the operator
//!   ([`tokens`]), compared in constant time;
//! * OIDC JWTs (RS256 / ES256), checked against the issuer's JWKS and mapped
//!   to a tenant or to the operator by their claims ([`oidc`]);
//! * TLS client certificates, whose subject or SAN names a tenant
//!   ([`tls`], which also serves TLS and reloads its files).
//!
//! What a credential grants is an [`Access`]: a tenant sees and writes only
//! its own events; the operator sees every tenant's and may change state
//! (replay dead letters, forget sinks) but writes no events.

pub mod oidc;
pub mod tls;
pub mod tokens;

mod authenticator;

pub use authenticator::Authenticator;

/// What an authenticated caller may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads every tenant's events and dead letters, and changes state.
    Operator,
    /// Writes events as this tenant, and reads only this tenant's.
    Tenant(String),
}

impl Access {
    /// The tenant a writer's events are stored under; `None` for the
    /// operator, who writes no events.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Access::Operator => None,
            Access::Tenant(t) => Some(t),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub access: Access,
    /// Who it is, for logs: e.g. `token acme#1`, `oidc alice@example.com`,
    /// `certificate CN=svc-a`. Never the secret.
    pub subject: String,
}

/// Why a request is not authenticated. Every variant means 401 /
/// UNAUTHENTICATED, except [`AuthError::KeysUnavailable`] (503 /
/// UNAVAILABLE: the caller may be fine, auditrail cannot tell yet).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is not valid here")]
    UnknownToken,
    #[error("the JWT was refused: {0}")]
    Jwt(#[from] oidc::JwtError),
    /// A valid credential that the config maps to no tenant and no operator.
    #[error("{0}")]
    Unmapped(String),
    /// The issuer's keys could not be fetched, so no JWT can be checked.
    #[error("the OIDC issuer's keys are not available: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// The `reason` label of `auditrail_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::UnknownToken => "unknown_token",
            AuthError::Jwt(e) => e.reason(),
            AuthError::Unmapped(_) => "unmapped",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }

    /// Whether the caller could succeed by retrying unchanged (the issuer's
    /// keys were unavailable), as opposed to a credential that is wrong.
    pub fn retryable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }
}

/// A tenant name: 1 to 64 of `A-Z a-z 0-9 . _ -`. Tenants become NATS
/// subjects, Kafka topics and SQL values, so they are kept plain.
pub fn check_tenant(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("tenant {name:?} must be 1 to 64 characters long"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "tenant {name:?} holds {bad:?}; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// What a connection proved about its client before any request on it: set
/// by the listener, read by the request handlers.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The identity its TLS client certificate maps to: `None` without a
    /// certificate (or when certificates only gate the connection), an
    /// error when the certificate verified but names no tenant.
    pub client_cert: Option<Result<Identity, AuthError>>,
}

impl ConnectionInfo {
    /// Whether the client connected from a loopback address.
    pub fn is_loopback(&self) -> bool {
        self.remote.is_some_and(|a| a.ip().is_loopback())
    }
}
