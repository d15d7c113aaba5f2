//! Who may call the admin API, and what each caller sees.
//!
//! With credentials configured every request but `/healthz` and the search
//! page's static files (`/ui`, see [`crate::ui`]) needs a bearer
//! token (or an OIDC JWT): the operator's sees every tenant and may change
//! state; a writer's token reads only its own tenant's events and dead
//! letters. `/readyz` and `/metrics` stay open to loopback clients, for a
//! local Prometheus or probe (`[admin] metrics_addr` serves them on a
//! listener of their own instead).
//!
//! Without credentials the admin API listens on loopback only (unless
//! `allow_unauthenticated`), and guards against the two ways a web page in
//! a local browser could still reach it: DNS rebinding (a `Host` that is not
//! a loopback name is refused) and cross-site requests (a state change
//! carrying a browser's `Origin` or `Sec-Fetch-Site` is refused). No cookie
//! is ever accepted as a credential, so none can trigger anything.
//!
//! The same rules guard the gRPC API (`crate::grpc_api`), which is served on
//! the OTLP/gRPC listener: [`authorize`] decides for both, from what a
//! request [`Asks`], its headers and its connection.

use std::sync::Arc;

use auditrail_auth::{Access, AuthError, Authenticator, ConnectionInfo};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::admin::error_response;
use crate::scope::ReadScope;

/// The admin listener's auth settings.
#[derive(Clone)]
pub struct AdminAuth {
    pub authenticator: Arc<Authenticator>,
    /// Whether callers must authenticate (see `Config::admin_authenticates`).
    pub required: bool,
    /// Whether the listener is bound to a loopback address (then, without
    /// credentials, only loopback `Host` names are answered).
    pub loopback_listener: bool,
    /// `[admin] allow_unauthenticated`: without credentials, answer clients
    /// from other hosts too. Otherwise only loopback clients are answered,
    /// whatever address the listener is bound to (the OTLP/gRPC listener,
    /// which serves the gRPC API, may face the network for writers).
    pub allow_unauthenticated: bool,
    /// The `listener` label of `auditrail_auth_failures_total`.
    pub listener: &'static str,
}

/// What a request asks of the admin API, as far as its auth is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// Liveness (`/healthz`): anyone.
    Liveness,
    /// Readiness and metrics (`/readyz`, `/metrics`): every sink's state;
    /// without a token, loopback clients only.
    Operations,
    /// The search page's own files (`/ui`): they hold no event.
    PageFile,
    /// Events and dead letters, within the caller's tenant.
    Read,
    /// A state change, or a read of every tenant's events (replay, forget,
    /// verify): the operator only.
    ChangeState,
}

impl Asks {
    /// What an admin HTTP request asks, by its path and method.
    pub fn of_http(request: &http::request::Parts) -> Asks {
        match request.uri.path() {
            "/healthz" => Asks::Liveness,
            "/readyz" | "/metrics" => Asks::Operations,
            path if matches!(request.method, Method::GET | Method::HEAD) => {
                if crate::ui::is_static_file(path) {
                    Asks::PageFile
                } else {
                    Asks::Read
                }
            }
            _ => Asks::ChangeState,
        }
    }
}

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("unauthenticated: {0}")]
    Unauthenticated(AuthError),
    #[error("cannot check credentials now: {0}; retry later")]
    Unavailable(AuthError),
    #[error("{subject} may not {what}: it needs the operator's token")]
    NotOperator { subject: String, what: &'static str },
    #[error("Host {0:?} refused: without credentials the admin API answers only to loopback names (127.0.0.1, ::1, localhost)")]
    ForeignHost(String),
    #[error("a state change from a web page is refused (the request carries {0}); use the auditrail CLI or curl")]
    CrossSite(&'static str),
    #[error("without credentials the admin API answers only loopback clients; configure admin.token_env (or [[receiver.tokens]], or [oidc]), or set admin.allow_unauthenticated = true")]
    NotLoopback,
}

impl Refused {
    /// The `reason` label of `auditrail_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Unauthenticated(e) | Refused::Unavailable(e) => e.reason(),
            Refused::NotOperator { .. } => "not_operator",
            Refused::ForeignHost(_) => "foreign_host",
            Refused::CrossSite(_) => "cross_site",
            Refused::NotLoopback => "not_loopback",
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match &self {
            Refused::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::NotOperator { .. }
            | Refused::ForeignHost(_)
            | Refused::CrossSite(_)
            | Refused::NotLoopback => StatusCode::FORBIDDEN,
        };
        let mut response = error_response(status, self.to_string());
        match self {
            Refused::Unauthenticated(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(r#"Bearer realm="auditrail-admin""#),
                );
            }
            Refused::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(5));
            }
            _ => {}
        }
        response
    }
}

/// Who made an admin request, for the trail (see [`crate::operator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The credential's subject (`token ops#1`, `oidc alice@example.com`),
    /// or `anonymous` where the admin API takes no credentials.
    pub subject: String,
    pub remote: Option<std::net::SocketAddr>,
}

/// The subject of a request let through without credentials.
pub const ANONYMOUS: &str = "anonymous";

/// The middleware: decides the caller, refuses or lets the request through
/// with its [`ReadScope`] and [`Caller`].
pub async fn guard(State(auth): State<AdminAuth>, request: Request, next: Next) -> Response {
    guard_as(&auth, request, next, Asks::of_http, Refused::into_response).await
}

/// [`guard`] for another encoding of the admin API (the gRPC API): `asks`
/// says what a request asks, `refusal` how a refusal is answered.
pub async fn guard_as(
    auth: &AdminAuth,
    request: Request,
    next: Next,
    asks: impl FnOnce(&http::request::Parts) -> Asks,
    refusal: impl FnOnce(Refused) -> Response,
) -> Response {
    // The body is not `Sync`: decide on the head alone.
    let (mut head, body) = request.into_parts();
    let connection = head.extensions.get::<ConnectionInfo>().cloned();
    match authorize(auth, asks(&head), &head, connection.as_ref()).await {
        Ok((scope, caller)) => {
            head.extensions.insert(scope);
            head.extensions.insert(caller);
            next.run(Request::from_parts(head, body)).await
        }
        Err(refused) => refusal(refused),
    }
}

/// Decides who makes `request` (which asks for `asks`) and what it may
/// see; a refusal is counted and logged here. The admin HTTP API and the
/// gRPC API both ask this, so that the two cannot disagree.
pub async fn authorize(
    auth: &AdminAuth,
    asks: Asks,
    request: &http::request::Parts,
    connection: Option<&ConnectionInfo>,
) -> Result<(ReadScope, Caller), Refused> {
    match decide(auth, asks, request, connection).await {
        Ok((scope, subject)) => Ok((
            scope,
            Caller {
                subject,
                remote: connection.and_then(|c| c.remote),
            },
        )),
        Err(refused) => {
            metrics::counter!("auditrail_auth_failures_total", "listener" => auth.listener, "reason" => refused.reason())
                .increment(1);
            tracing::warn!(
                error = %refused,
                listener = auth.listener,
                method = %request.method,
                path = request.uri.path(),
                remote = ?connection.and_then(|c| c.remote),
                "admin request refused"
            );
            Err(refused)
        }
    }
}

async fn decide(
    auth: &AdminAuth,
    asks: Asks,
    request: &http::request::Parts,
    connection: Option<&ConnectionInfo>,
) -> Result<(ReadScope, String), Refused> {
    let anonymous = || (ReadScope::All, ANONYMOUS.to_owned());
    if asks == Asks::Liveness {
        return Ok(anonymous());
    }
    let loopback_client = connection.is_some_and(ConnectionInfo::is_loopback);
    if !auth.required {
        if !auth.allow_unauthenticated && !loopback_client {
            return Err(Refused::NotLoopback);
        }
        if auth.loopback_listener {
            check_loopback_host(request)?;
        }
        if asks == Asks::ChangeState {
            check_not_cross_site(&request.headers)?;
        }
        return Ok(anonymous());
    }
    // A browser opening the search page cannot send a bearer token; its
    // files hold no event (the page's own calls carry the token).
    if asks == Asks::PageFile {
        return Ok(anonymous());
    }
    let operations = asks == Asks::Operations;
    if operations && loopback_client && !request.headers.contains_key(header::AUTHORIZATION) {
        return Ok(anonymous());
    }
    let identity = auth
        .authenticator
        .authenticate(request.headers.get(header::AUTHORIZATION))
        .await
        .map_err(|e| {
            if e.retryable() {
                Refused::Unavailable(e)
            } else {
                Refused::Unauthenticated(e)
            }
        })?;
    match identity.access {
        Access::Operator => Ok((ReadScope::All, identity.subject)),
        Access::Tenant(_) if asks == Asks::ChangeState => Err(Refused::NotOperator {
            subject: identity.subject,
            what: "change state",
        }),
        Access::Tenant(_) if operations => Err(Refused::NotOperator {
            subject: identity.subject,
            what: "read every sink's state and metrics",
        }),
        Access::Tenant(tenant) => Ok((ReadScope::Tenant(tenant), identity.subject)),
    }
}

/// DNS rebinding: a page of `evil.example` that rebinds its name to
/// 127.0.0.1 reaches a loopback listener as same-origin, but its requests
/// still say `Host: evil.example`.
fn check_loopback_host(request: &http::request::Parts) -> Result<(), Refused> {
    // HTTP/1.1 says `Host`; HTTP/2 says `:authority`, which hyper puts in
    // the URI. A request with neither (HTTP/1.0) comes from no browser.
    let text = match request.headers.get(header::HOST) {
        Some(host) => host.to_str().unwrap_or(""),
        None => match request.uri.authority() {
            Some(authority) => authority.as_str(),
            None => return Ok(()),
        },
    };
    let name = match text.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => text.rsplit_once(':').map_or(text, |(name, _)| name),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(Refused::ForeignHost(text.to_owned()))
    }
}

/// Cross-site request forgery: browsers mark what a page sends with
/// `Origin` (every cross-origin POST) and `Sec-Fetch-Site`; the CLI and
/// curl send neither.
fn check_not_cross_site(headers: &HeaderMap) -> Result<(), Refused> {
    if headers.contains_key(header::ORIGIN) {
        return Err(Refused::CrossSite("an Origin header"));
    }
    match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
        None | Some(b"none") => Ok(()),
        Some(_) => Err(Refused::CrossSite("Sec-Fetch-Site")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> http::request::Parts {
        let (parts, ()) = http::Request::get("/v1/events")
            .header(header::HOST, value)
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn an_http2_authority_counts_as_the_host() {
        let (parts, ()) = http::Request::get("https://attacker.example:8686/v1/events")
            .body(())
            .unwrap()
            .into_parts();
        assert!(check_loopback_host(&parts).is_err());
        let (parts, ()) = http::Request::get("https://127.0.0.1:8686/v1/events")
            .body(())
            .unwrap()
            .into_parts();
        assert!(check_loopback_host(&parts).is_ok());
    }

    #[test]
    fn only_loopback_host_names_pass() {
        for ok in [
            "127.0.0.1:8686",
            "localhost:8686",
            "LOCALHOST",
            "[::1]:8686",
            "127.0.0.2",
        ] {
            assert!(check_loopback_host(&host(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:8686",
            "evil.example",
            "10.0.0.1:8686",
            "[2001:db8::1]:1",
        ] {
            assert!(check_loopback_host(&host(bad)).is_err(), "{bad}");
        }
    }

    /// Without credentials only loopback clients are answered, whatever
    /// the listener (the OTLP/gRPC one may face the network for writers).
    #[tokio::test]
    async fn without_credentials_only_loopback_clients_are_answered() {
        let auth = |allow_unauthenticated| AdminAuth {
            authenticator: Arc::new(Authenticator::new(Default::default(), None)),
            required: false,
            loopback_listener: false,
            allow_unauthenticated,
            listener: "test",
        };
        let from = |ip: [u8; 4]| ConnectionInfo {
            remote: Some((ip, 40000).into()),
            client_cert: None,
        };
        let request = host("audit.example");
        let decided = |auth, connection| {
            let request = request.clone();
            async move { authorize(&auth, Asks::Read, &request, Some(&connection)).await }
        };
        let (scope, caller) = decided(auth(false), from([127, 0, 0, 1])).await.unwrap();
        assert_eq!(
            (scope, caller.subject.as_str()),
            (ReadScope::All, ANONYMOUS)
        );
        assert!(matches!(
            decided(auth(false), from([10, 0, 0, 7])).await,
            Err(Refused::NotLoopback)
        ));
        assert!(authorize(&auth(false), Asks::Read, &request, None)
            .await
            .is_err());
        assert!(decided(auth(true), from([10, 0, 0, 7])).await.is_ok());
        // Liveness stays open to anyone.
        assert!(authorize(
            &auth(false),
            Asks::Liveness,
            &request,
            Some(&from([10, 0, 0, 7]))
        )
        .await
        .is_ok());
    }

    #[test]
    fn browser_marks_refuse_state_changes() {
        let mut h = HeaderMap::new();
        assert!(check_not_cross_site(&h).is_ok());
        h.insert("sec-fetch-site", "none".parse().unwrap());
        assert!(
            check_not_cross_site(&h).is_ok(),
            "typed into the address bar"
        );
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(check_not_cross_site(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(check_not_cross_site(&h).is_err());
    }
}
