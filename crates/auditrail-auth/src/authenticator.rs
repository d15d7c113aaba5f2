//! The one question every listener asks: who sent this request?

use std::sync::{Arc, RwLock};

use http::HeaderValue;

use crate::oidc::Verifier;
use crate::tokens::TokenSet;
use crate::{AuthError, Identity};

/// Static tokens and, when configured, an OIDC verifier. Shared by the
/// listeners; the tokens can be replaced while serving (SIGHUP).
pub struct Authenticator {
    tokens: RwLock<Arc<TokenSet>>,
    oidc: Option<Verifier>,
}

impl Authenticator {
    pub fn new(tokens: TokenSet, oidc: Option<Verifier>) -> Authenticator {
        Authenticator {
            tokens: RwLock::new(Arc::new(tokens)),
            oidc,
        }
    }

    /// Whether any credential is configured at all. Without one, auditrail
    /// serves only on loopback (unless told otherwise) and every caller is
    /// anonymous.
    pub fn is_configured(&self) -> bool {
        self.oidc.is_some() || !self.tokens().is_empty()
    }

    pub fn oidc(&self) -> Option<&Verifier> {
        self.oidc.as_ref()
    }

    /// The tokens now in force.
    pub fn tokens(&self) -> Arc<TokenSet> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new tokens in force (a reload); requests already authenticated
    /// keep what they were granted.
    pub fn replace_tokens(&self, tokens: TokenSet) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }

    /// The caller behind an `authorization` header: a static token, else
    /// (when OIDC is configured and the token looks like one) a JWT.
    pub async fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Identity, AuthError> {
        let token = bearer_token(authorization)?;
        if let Some(grant) = self.tokens().find(token) {
            return Ok(Identity {
                access: grant.access.clone(),
                subject: format!("token {}", grant.label),
            });
        }
        match &self.oidc {
            Some(oidc) if looks_like_jwt(token) => oidc.verify(token).await,
            _ => Err(AuthError::UnknownToken),
        }
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
pub fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// A compact JWS: three base64url parts.
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
        parts += 1;
    }
    parts == 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Access;

    #[test]
    fn bearer_header_forms() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer_token(Some(&h("Bearer abc"))).unwrap(), "abc");
        assert_eq!(bearer_token(Some(&h("bearer abc"))).unwrap(), "abc");
        assert!(matches!(bearer_token(None), Err(AuthError::Missing)));
        assert!(matches!(
            bearer_token(Some(&h("Basic abc"))),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            bearer_token(Some(&h("Bearer "))),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            bearer_token(Some(&h("abc"))),
            Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJz"));
        assert!(!looks_like_jwt("plain-token"));
        assert!(!looks_like_jwt("a..b"));
    }

    #[tokio::test]
    async fn static_tokens_authenticate() {
        let mut tokens = TokenSet::new();
        tokens
            .add(
                "tenant-a-secret",
                Access::Tenant("a".into()),
                "receiver.tokens[0]",
            )
            .unwrap();
        let auth = Authenticator::new(tokens, None);
        assert!(auth.is_configured());
        let ok = auth
            .authenticate(Some(&HeaderValue::from_static("Bearer tenant-a-secret")))
            .await
            .unwrap();
        assert_eq!(ok.access, Access::Tenant("a".into()));
        let wrong = auth
            .authenticate(Some(&HeaderValue::from_static("Bearer tenant-b-secret")))
            .await;
        assert!(matches!(wrong, Err(AuthError::UnknownToken)));
        auth.replace_tokens(TokenSet::new());
        assert!(!auth.is_configured());
    }
}
