//! Who may write: the tenant of an export request, from its bearer token or
//! its TLS client certificate. The tenant is the credential's, whatever the
//! payload says.

use std::sync::Arc;

use auditrail_auth::{Access, AuthError, Authenticator, ConnectionInfo};
use auditrail_model::id::DEFAULT_TENANT;
use http::HeaderMap;

/// The writers' side of auth, shared by both OTLP listeners.
pub struct Writers {
    authenticator: Arc<Authenticator>,
    /// Whether a request must prove a tenant. Off only when no credential
    /// of any kind is configured: then every writer is the default tenant.
    required: bool,
}

/// Why an export request was not allowed to write. Nothing of it is read
/// past its headers, and nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteRefused {
    /// No credential, or one that is not valid (401 / UNAUTHENTICATED).
    #[error("unauthenticated: {0}")]
    Unauthenticated(AuthError),
    /// A valid credential that names no tenant, such as the operator's
    /// (403 / PERMISSION_DENIED).
    #[error("{subject} may read every tenant's events but writes none; send events with a tenant's token")]
    NotAWriter { subject: String },
    /// The credential could not be checked yet (503 / UNAVAILABLE).
    #[error("cannot check credentials now: {0}; retry later")]
    Unavailable(AuthError),
}

impl WriteRefused {
    /// The `reason` label of `auditrail_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            WriteRefused::Unauthenticated(e) | WriteRefused::Unavailable(e) => e.reason(),
            WriteRefused::NotAWriter { .. } => "not_a_writer",
        }
    }
}

impl Writers {
    /// `required`: whether writers must authenticate (see the field).
    pub fn new(authenticator: Arc<Authenticator>, required: bool) -> Writers {
        Writers {
            authenticator,
            required,
        }
    }

    /// The tenant the request writes as. A bearer token, when sent, decides;
    /// otherwise the connection's client certificate.
    pub async fn tenant_of(
        &self,
        headers: &HeaderMap,
        connection: Option<&ConnectionInfo>,
    ) -> Result<String, WriteRefused> {
        if !self.required {
            return Ok(DEFAULT_TENANT.to_owned());
        }
        let identity = match headers.get(http::header::AUTHORIZATION) {
            Some(value) => self.authenticator.authenticate(Some(value)).await,
            None => match connection.and_then(|c| c.client_cert.clone()) {
                Some(from_certificate) => from_certificate,
                None => Err(AuthError::Missing),
            },
        };
        let refused = match identity {
            Ok(identity) => match identity.access {
                Access::Tenant(tenant) => return Ok(tenant),
                Access::Operator => WriteRefused::NotAWriter {
                    subject: identity.subject,
                },
            },
            Err(e) if e.retryable() => WriteRefused::Unavailable(e),
            Err(e) => WriteRefused::Unauthenticated(e),
        };
        metrics::counter!("auditrail_auth_failures_total", "listener" => "otlp", "reason" => refused.reason())
            .increment(1);
        tracing::warn!(
            error = %refused,
            remote = ?connection.and_then(|c| c.remote),
            "OTLP export refused"
        );
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditrail_auth::tokens::TokenSet;
    use http::HeaderValue;

    fn writers() -> Writers {
        let mut tokens = TokenSet::new();
        tokens
            .add("acme-writer-token", Access::Tenant("acme".into()), "acme")
            .unwrap();
        tokens
            .add("operator-token", Access::Operator, "admin")
            .unwrap();
        Writers::new(Arc::new(Authenticator::new(tokens, None)), true)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn the_tenant_is_the_tokens() {
        let w = writers();
        assert_eq!(
            w.tenant_of(&bearer("acme-writer-token"), None)
                .await
                .unwrap(),
            "acme"
        );
        assert!(matches!(
            w.tenant_of(&bearer("guess"), None).await,
            Err(WriteRefused::Unauthenticated(AuthError::UnknownToken))
        ));
        assert!(matches!(
            w.tenant_of(&HeaderMap::new(), None).await,
            Err(WriteRefused::Unauthenticated(AuthError::Missing))
        ));
        assert!(matches!(
            w.tenant_of(&bearer("operator-token"), None).await,
            Err(WriteRefused::NotAWriter { .. })
        ));
    }

    #[tokio::test]
    async fn a_client_certificate_names_the_tenant_when_no_token_is_sent() {
        let w = writers();
        let connection = ConnectionInfo {
            remote: None,
            client_cert: Some(Ok(auditrail_auth::Identity {
                access: Access::Tenant("globex".into()),
                subject: "certificate CN=globex".into(),
            })),
        };
        assert_eq!(
            w.tenant_of(&HeaderMap::new(), Some(&connection))
                .await
                .unwrap(),
            "globex"
        );
        // A token, when sent, decides.
        assert_eq!(
            w.tenant_of(&bearer("acme-writer-token"), Some(&connection))
                .await
                .unwrap(),
            "acme"
        );
    }

    #[tokio::test]
    async fn without_auth_everyone_is_the_default_tenant() {
        // No credential configured at all.
        let w = Writers::new(Arc::new(Authenticator::new(TokenSet::new(), None)), false);
        assert_eq!(
            w.tenant_of(&bearer("anything"), None).await.unwrap(),
            DEFAULT_TENANT
        );
    }
}
