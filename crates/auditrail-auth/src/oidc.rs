//! OIDC: people (and service accounts) log in at their identity provider,
//! and present its JWT (ID or access token) as a bearer token.
//!
//! A JWT is accepted when:
//!
//! * its `alg` is RS256 or ES256, and the key it names (`kid`) in the
//!   issuer's JWKS is of that type. Nothing else is tried: not `none`, not
//!   HMAC (whose "secret" an attacker could take to be the issuer's public
//!   key), and not a key the token carries itself (`jwk`, `jku`, `x5u` in
//!   its header are ignored). The alg is checked against the key's type, so
//!   a token cannot make an RSA key verify an ECDSA signature or the reverse;
//! * its signature verifies with that key;
//! * `iss` is the configured issuer (a string, exactly), `aud` holds one of
//!   the configured audiences, `exp` is present and not past, and `nbf`, if
//!   present, is not ahead, both within the configured leeway;
//! * its claims map to a grant ([`OidcConfig::roles`], then
//!   [`OidcConfig::tenant_claim`]). A valid token that maps to nothing is
//!   refused as [`AuthError::Unmapped`], with a message that says what was
//!   looked for, so an operator can fix the mapping.
//!
//! The keys come from a file (read at start, where a bad file stops
//! start-up, and on [`Verifier::reload`]) or from the issuer's JWKS URL,
//! fetched at start, every `refresh`, on reload, and when a token names a
//! key id not yet known (the issuer rotated its keys), but no more than
//! once every `min_refetch`, so that tokens with made-up key ids cannot make
//! auditrail hammer the issuer. An issuer that is down at start does not
//! stop auditrail (static-token writers do not need it): its keys are
//! fetched in the background until they load, and meanwhile JWTs are
//! answered [`AuthError::KeysUnavailable`] (503, try again). Keys in force
//! are replaced whole, and only by a key set that loaded: a failed refresh
//! or reload keeps the keys there were, and says why in the log.

use std::error::Error as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::{check_tenant, Access, AuthError, Identity};

/// A JWKS larger than this is refused: real ones are a few kilobytes, and
/// an issuer (or whoever answers in its name) must not be able to make
/// auditrail buffer without bound.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// A bearer token longer than this is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest leeway accepted: clocks that disagree by more are broken,
/// and a larger leeway would accept tokens long expired.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Defaults for [`JwksSource::url`].
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of [`OidcConfig::leeway`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// While an issuer's keys cannot be fetched, the background task tries
/// again after 1 s, then twice as long each time, up to this (or `refresh`).
const MAX_RETRY: Duration = Duration::from_secs(60);

/// `[oidc]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// `iss` must equal this.
    pub issuer: String,
    /// `aud` must hold one of these.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Clock skew allowed on `exp` and `nbf`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// A claim whose string value is the caller's tenant (e.g. `tenant`).
    pub tenant_claim: Option<String>,
    /// Further grants by claim value, tried in order, before `tenant_claim`.
    pub roles: Vec<ClaimRule>,
}

/// Where the issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched at start and every `refresh`, and again when a token names a
    /// key id not yet known, but not within `min_refetch` of the last fetch.
    Url {
        /// `https://…`; plain `http://` only to a loopback address (keys
        /// fetched in the clear could be swapped by anyone on the way).
        url: String,
        refresh: Duration,
        /// The least time between two fetches that tokens cause.
        min_refetch: Duration,
        /// For the whole fetch: connecting, TLS, and reading the body.
        timeout: Duration,
        /// PEM: CAs trusted besides the public roots, for a private issuer.
        tls_ca_file: Option<PathBuf>,
    },
    /// Read at start and on reload.
    File(PathBuf),
}

impl JwksSource {
    /// A JWKS URL with the default refresh, rate limit and timeout.
    pub fn url(url: impl Into<String>) -> JwksSource {
        JwksSource::Url {
            url: url.into(),
            refresh: DEFAULT_REFRESH,
            min_refetch: DEFAULT_MIN_REFETCH,
            timeout: DEFAULT_TIMEOUT,
            tls_ca_file: None,
        }
    }
}

/// "A token whose `claim` holds `value` gets `grant`". A claim may be a
/// string or an array of strings (groups); `claim` may be a dotted path
/// (`realm_access.roles`). A claim whose own name holds dots (namespaced
/// claims such as `https://example.com/roles`) is found by its whole name
/// first.
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
    /// The token names no key, and the issuer has not exactly one key of
    /// its algorithm.
    #[error("the token names no key id (kid), and the issuer has {keys} {alg} keys")]
    AmbiguousKey { alg: String, keys: usize },
    #[error("algorithm {0} is not accepted; use RS256 or ES256")]
    UnsupportedAlgorithm(String),
    /// The token's alg does not fit the type of the key it names.
    #[error("the token is signed with {alg}, but key {kid:?} is an {key_alg} key")]
    AlgorithmMismatch {
        alg: String,
        kid: String,
        key_alg: String,
    },
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
            JwtError::UnknownKey(_) | JwtError::AmbiguousKey { .. } => "jwt_unknown_key",
            JwtError::UnsupportedAlgorithm(_) | JwtError::AlgorithmMismatch { .. } => {
                "jwt_algorithm"
            }
            JwtError::Malformed(_) => "jwt_malformed",
        }
    }
}

/// Why OIDC could not be set up, or its keys not (re)loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    /// The `[oidc]` settings cannot work (e.g. no audience, a URL that is
    /// not https, a tenant name that is not one).
    #[error("oidc: {0}")]
    Config(String),
    /// The keys could not be loaded; the message names the file or URL.
    #[error("{0}")]
    Keys(String),
}

/// Checks JWTs against the issuer's keys and maps them to an [`Identity`].
///
/// With a JWKS URL it owns a background task (refresh, and retries while
/// the issuer is down), which ends when the verifier is dropped.
pub struct Verifier {
    shared: Arc<Shared>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

impl Verifier {
    /// Checks the settings and loads the keys. A key file must load (a bad
    /// one is a start-up error naming it); a URL is fetched once, waiting at
    /// most its `timeout`, and if that fails it is retried in the
    /// background, while JWTs get [`AuthError::KeysUnavailable`].
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(config: OidcConfig) -> Result<Verifier, OidcError> {
        check_config(&config)?;
        let source = match &config.jwks {
            JwksSource::File(path) => Source::File(path.clone()),
            JwksSource::Url {
                url,
                refresh,
                min_refetch,
                timeout,
                tls_ca_file,
            } => Source::Url(Fetcher::new(
                url,
                *refresh,
                *min_refetch,
                *timeout,
                tls_ca_file.as_deref(),
            )?),
        };
        let shared = Arc::new(Shared {
            rs256: validation(Algorithm::RS256, &config),
            es256: validation(Algorithm::ES256, &config),
            issuer: config.issuer,
            mapping: Mapping {
                roles: config.roles,
                tenant_claim: config.tenant_claim,
            },
            source,
            keys: RwLock::new(None),
            unavailable: Mutex::new("not loaded yet".into()),
        });
        let refresher = match &shared.source {
            Source::File(path) => {
                let keys = read_key_file(path).await.map_err(OidcError::Keys)?;
                shared.install(keys, &path.display().to_string());
                None
            }
            Source::Url(fetcher) => {
                let loaded = shared.fetch(fetcher).await.is_ok();
                let weak = Arc::downgrade(&shared);
                Some(tokio::spawn(refresh_loop(weak, loaded)))
            }
        };
        Ok(Verifier { shared, refresher })
    }

    /// The identity a valid JWT maps to.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let shared = &self.shared;
        let header = parse_header(token)?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(JwtError::UnsupportedAlgorithm(plain(other)).into()),
        };
        if header.crit.is_some() {
            // RFC 7515 4.1.11: extensions the recipient does not understand
            // must make it refuse the token. auditrail understands none.
            return Err(JwtError::Malformed(
                "the header has `crit` extensions auditrail lacks".into(),
            )
            .into());
        }
        let key = shared.key_for(header.kid.as_deref(), alg).await?;
        let validation = match alg {
            Algorithm::RS256 => &shared.rs256,
            _ => &shared.es256,
        };
        let claims = jsonwebtoken::decode::<Value>(token, &key, validation)
            .map_err(|e| jwt_error(&e, &header.alg, &shared.issuer))?
            .claims;
        // The library also takes an `iss` array holding the issuer; OIDC
        // says `iss` is one string, and so does auditrail.
        if claims.get("iss").and_then(Value::as_str) != Some(shared.issuer.as_str()) {
            return Err(JwtError::WrongIssuer(shared.issuer.clone()).into());
        }
        shared.mapping.identity(&claims)
    }

    /// Reads the key file again, or fetches the URL now (SIGHUP). On error
    /// the keys in force stay, and the error names the file or URL.
    pub async fn reload(&self) -> Result<(), OidcError> {
        match &self.shared.source {
            Source::File(path) => match read_key_file(path).await {
                Ok(keys) => {
                    self.shared.install(keys, &path.display().to_string());
                    Ok(())
                }
                Err(e) => {
                    self.shared.failed(&e);
                    Err(OidcError::Keys(e))
                }
            },
            Source::Url(fetcher) => self.shared.fetch(fetcher).await.map_err(OidcError::Keys),
        }
    }
}

/// Refuses settings that cannot work, at start rather than at the first
/// login.
fn check_config(config: &OidcConfig) -> Result<(), OidcError> {
    let bad = |m: String| Err(OidcError::Config(m));
    if config.issuer.is_empty() {
        return bad("issuer is empty; it must be the `iss` of the tokens".into());
    }
    if config.audiences.is_empty() || config.audiences.iter().any(String::is_empty) {
        return bad(
            "audiences must name at least one audience (the client id auditrail's tokens are \
             issued for), and none empty; a token for another application must not be accepted"
                .into(),
        );
    }
    if config.leeway > MAX_LEEWAY {
        return bad(format!(
            "leeway {:?} is more than {:?}; fix the clocks instead",
            config.leeway, MAX_LEEWAY
        ));
    }
    if config.roles.is_empty() && config.tenant_claim.is_none() {
        return bad(
            "neither roles nor tenant_claim is set, so no token could be granted anything".into(),
        );
    }
    if config.tenant_claim.as_deref() == Some("") {
        return bad("tenant_claim is empty".into());
    }
    for (i, rule) in config.roles.iter().enumerate() {
        if rule.claim.is_empty() || rule.value.is_empty() {
            return bad(format!("roles[{i}]: claim and value must not be empty"));
        }
        if let Access::Tenant(tenant) = &rule.grant {
            check_tenant(tenant).map_err(|e| OidcError::Config(format!("roles[{i}]: {e}")))?;
        }
    }
    if let JwksSource::Url {
        refresh,
        min_refetch,
        timeout,
        ..
    } = &config.jwks
    {
        if refresh.is_zero() || min_refetch.is_zero() || timeout.is_zero() {
            return bad("jwks refresh, min_refetch and timeout must be more than 0".into());
        }
    }
    Ok(())
}

/// The checks the library does for one algorithm: this alg only (its check
/// that the key's type fits the alg is a second line behind ours), `exp`,
/// `iss` and `aud` required, `nbf` honoured when present.
fn validation(alg: Algorithm, config: &OidcConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[&config.issuer]);
    v.set_audience(&config.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

/// The library's error, by its kind.
fn jwt_error(e: &jsonwebtoken::errors::Error, alg: &str, issuer: &str) -> JwtError {
    match e.kind() {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => JwtError::BadSignature,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer(issuer.into()),
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => JwtError::WrongIssuer(issuer.into()),
            "aud" => JwtError::WrongAudience,
            _ => JwtError::Malformed(format!("no numeric `{claim}` claim")),
        },
        // Not reached: the alg was checked against the key before.
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => JwtError::UnsupportedAlgorithm(alg.into()),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => JwtError::Malformed(e.to_string()),
        // Key errors (our keys are checked when loaded) and kinds added
        // later: refused, with the library's words.
        _ => JwtError::Malformed(e.to_string()),
    }
}

/// The part of a JWS header that decides how a token is checked. Read here
/// rather than by the library, whose header type cannot hold `alg: none`
/// and so could not say why such a token is refused.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

fn parse_header(token: &str) -> Result<Header, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed(format!(
            "longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "not a compact JWS (three base64url parts)".into(),
        ));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed("the header is not base64url".into()))?;
    serde_json::from_slice(&header).map_err(|e| {
        JwtError::Malformed(format!(
            "the header is not a JSON object with a string `alg`: {e}"
        ))
    })
}

/// One verification key of the issuer.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// RS256 or ES256: the only algorithm this key verifies.
    alg: Algorithm,
    key: DecodingKey,
}

/// The issuer's keys in force.
struct KeySet {
    keys: Vec<Key>,
}

enum Lookup<'a> {
    Found(&'a Key),
    /// The kid is known, for another algorithm.
    OtherAlg(Algorithm),
    Unknown,
    /// No kid, and not exactly one key of the algorithm.
    Ambiguous(usize),
}

impl KeySet {
    /// A token with a kid gets the key with that kid and its alg. A token
    /// without one gets the issuer's only key of its alg: issuers that
    /// publish several keys name them, and trying each in turn would let one
    /// forged token cost as many signature checks as there are keys.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let named = || self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                if let Some(key) = named().find(|k| k.alg == alg) {
                    Lookup::Found(key)
                } else if let Some(other) = named().next() {
                    Lookup::OtherAlg(other.alg)
                } else {
                    Lookup::Unknown
                }
            }
            None => {
                let of_alg: Vec<&Key> = self.keys.iter().filter(|k| k.alg == alg).collect();
                match of_alg.as_slice() {
                    [key] => Lookup::Found(key),
                    keys => Lookup::Ambiguous(keys.len()),
                }
            }
        }
    }

    /// `RS256 "kid-a", ES256 "kid-b"`, for logs.
    fn describe(&self) -> String {
        let names: Vec<String> = self
            .keys
            .iter()
            .map(|k| match &k.kid {
                Some(kid) => format!("{:?} {kid:?}", k.alg),
                None => format!("{:?} (no kid)", k.alg),
            })
            .collect();
        names.join(", ")
    }
}

/// The fields of a JWK that auditrail reads (RFC 7517, 7518).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS. Keys auditrail cannot use (encryption keys, HMAC or
/// other algorithms, RSA keys under 2048 bits) are skipped with a warning,
/// as issuers publish such keys beside their signing keys; a set with no
/// usable key at all is an error, so that it never replaces good keys.
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS (a JSON object with a `keys` array): {e}"))?;
    let total = set.keys.len();
    let mut keys: Vec<Key> = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in set.keys.into_iter().enumerate() {
        let parsed = serde_json::from_value::<Jwk>(raw)
            .map_err(|e| format!("not a JWK: {e}"))
            .and_then(|jwk| {
                let kid = jwk.kid.clone();
                usable_key(jwk).map_err(|e| match kid {
                    Some(kid) => format!("kid {kid:?}: {e}"),
                    None => e,
                })
            });
        match parsed {
            Ok(key) if keys.iter().any(|k| k.kid == key.kid && k.alg == key.alg) => {
                skipped.push(format!("keys[{i}]: another {:?} key has its kid", key.alg))
            }
            Ok(key) => keys.push(key),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "no RS256 or ES256 signing key among its {total} keys{}{}",
            if skipped.is_empty() { "" } else { ": " },
            skipped.join("; ")
        ));
    }
    for reason in skipped {
        tracing::warn!("OIDC: a key of the issuer is not used: {reason}");
    }
    Ok(KeySet { keys })
}

fn usable_key(jwk: Jwk) -> Result<Key, String> {
    if let Some(use_) = jwk.use_.as_deref().filter(|u| *u != "sig") {
        return Err(format!("for use {use_:?}, not signatures"));
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err(format!("key_ops {ops:?} lack \"verify\""));
        }
    }
    let decode = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
        let value = value.as_deref().ok_or(format!("no `{name}`"))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let (alg, key) = match jwk.kty.as_str() {
        "RSA" => {
            let n = decode("n", &jwk.n)?;
            let e = decode("e", &jwk.e)?;
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            // ring's RS256 verification takes 2048 to 8192 bits; others
            // would fail every signature, so say so when the key loads.
            if !(2048..=8192).contains(&bits) {
                return Err(format!("an RSA key of {bits} bits (2048 to 8192 are used)"));
            }
            if e.is_empty() {
                return Err("an RSA key with an empty exponent".into());
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(n, &e),
            )
        }
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err(format!("an EC key on curve {:?}, not P-256", jwk.crv));
            }
            let x = decode("x", &jwk.x)?;
            let y = decode("y", &jwk.y)?;
            if x.len() != 32 || y.len() != 32 {
                return Err("a P-256 key whose x or y is not 32 bytes".into());
            }
            // The uncompressed point, as ring reads a public key.
            let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
            (Algorithm::ES256, DecodingKey::from_ec_der(&point))
        }
        other => return Err(format!("kty {other:?} (RSA and EC keys are used)")),
    };
    let wanted = format!("{alg:?}");
    if let Some(declared) = jwk.alg.as_deref().filter(|a| *a != wanted) {
        return Err(format!("alg {declared:?} (RS256 and ES256 are used)"));
    }
    Ok(Key {
        kid: jwk.kid,
        alg,
        key,
    })
}

async fn read_key_file(path: &Path) -> Result<KeySet, String> {
    use tokio::io::AsyncReadExt as _;
    let named = |e: String| format!("OIDC key file {}: {e}", path.display());
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| named(e.to_string()))?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| named(e.to_string()))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(named(format!("larger than {MAX_JWKS_BYTES} bytes")));
    }
    parse_jwks(&body).map_err(named)
}

/// What a verifier shares with its background task.
struct Shared {
    issuer: String,
    rs256: Validation,
    es256: Validation,
    mapping: Mapping,
    source: Source,
    /// `None` until the first key set loads (a URL that was down at start).
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Why there are no keys, for [`AuthError::KeysUnavailable`].
    unavailable: Mutex<String>,
}

enum Source {
    File(PathBuf),
    Url(Fetcher),
}

impl Shared {
    fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a key set in force, whole.
    fn install(&self, keys: KeySet, origin: &str) {
        tracing::info!(source = origin, keys = %keys.describe(), "OIDC: issuer keys loaded");
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
    }

    /// A load that failed: the keys in force (if any) stay.
    fn failed(&self, error: &str) {
        match self.keys() {
            Some(keys) => tracing::error!(
                error,
                "OIDC: loading the issuer's keys failed; keeping the {} keys in force",
                keys.keys.len()
            ),
            None => {
                tracing::error!(
                    error,
                    "OIDC: loading the issuer's keys failed; JWTs are refused until they load"
                );
                *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = error.to_string();
            }
        }
    }

    /// Fetches the URL now, whatever the rate limit, and installs what
    /// loads.
    async fn fetch(&self, fetcher: &Fetcher) -> Result<(), String> {
        let mut last = fetcher.last.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked(fetcher).await
    }

    /// Fetches the URL because a token needs keys that are not there,
    /// unless a fetch started less than `min_refetch` ago. A fetch under
    /// way is waited for (the lock is held across it), so that a burst of
    /// tokens with a new key id causes one fetch and all use its keys.
    async fn refetch(&self) {
        let Source::Url(fetcher) = &self.source else {
            return;
        };
        let mut last = fetcher.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < fetcher.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_locked(fetcher).await;
    }

    async fn fetch_locked(&self, fetcher: &Fetcher) -> Result<(), String> {
        match fetcher.get().await {
            Ok(keys) => {
                self.install(keys, fetcher.url.as_str());
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// The key a token names, fetching the URL once (rate limited) when
    /// there are no keys yet or the kid is not known.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let mut fetched = false;
        loop {
            let Some(keys) = self.keys() else {
                if !fetched {
                    self.refetch().await;
                    fetched = true;
                    continue;
                }
                let why = self.unavailable.lock().unwrap_or_else(|p| p.into_inner());
                return Err(AuthError::KeysUnavailable(why.clone()));
            };
            return match keys.find(kid, alg) {
                Lookup::Found(key) => Ok(key.key.clone()),
                Lookup::OtherAlg(key_alg) => Err(JwtError::AlgorithmMismatch {
                    alg: format!("{alg:?}"),
                    kid: plain(kid.unwrap_or_default()),
                    key_alg: format!("{key_alg:?}"),
                }
                .into()),
                Lookup::Ambiguous(keys) => Err(JwtError::AmbiguousKey {
                    alg: format!("{alg:?}"),
                    keys,
                }
                .into()),
                Lookup::Unknown if !fetched && matches!(self.source, Source::Url(_)) => {
                    self.refetch().await;
                    fetched = true;
                    continue;
                }
                Lookup::Unknown => Err(JwtError::UnknownKey(plain(kid.unwrap_or_default())).into()),
            };
        }
    }
}

/// Refreshes a URL's keys every `refresh`; while they cannot be fetched,
/// retries sooner (1 s, doubling up to a minute). Ends when the verifier
/// is dropped.
async fn refresh_loop(shared: Weak<Shared>, mut ok: bool) {
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let Source::Url(fetcher) = &shared.source else {
                return;
            };
            if ok {
                retry = Duration::from_secs(1);
                fetcher.refresh
            } else {
                let wait = retry.min(fetcher.refresh);
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Source::Url(fetcher) = &shared.source else {
            return;
        };
        ok = shared.fetch(fetcher).await.is_ok();
    }
}

/// Fetches a JWKS URL.
struct Fetcher {
    client: reqwest::Client,
    url: reqwest::Url,
    refresh: Duration,
    min_refetch: Duration,
    /// When the last fetch started. Held across a fetch.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Fetcher {
    fn new(
        url: &str,
        refresh: Duration,
        min_refetch: Duration,
        timeout: Duration,
        tls_ca_file: Option<&Path>,
    ) -> Result<Fetcher, OidcError> {
        let bad = |m: String| OidcError::Config(format!("jwks url {url:?}: {m}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !secure(&parsed) {
            return Err(bad(
                "use https (plain http only to a loopback address: keys fetched in the clear \
                 could be swapped by anyone on the way)"
                    .into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("auditrail/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("more than 5 redirects")
                } else if !secure(attempt.url()) {
                    attempt.error("redirected to plain http")
                } else {
                    attempt.follow()
                }
            }));
        if let Some(path) = tls_ca_file {
            let named =
                |e: String| OidcError::Config(format!("tls_ca_file {}: {e}", path.display()));
            let pem = std::fs::read(path).map_err(|e| named(e.to_string()))?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| named(e.to_string()))?;
            if certificates.is_empty() {
                return Err(named("holds no PEM certificate".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        Ok(Fetcher {
            client,
            url: parsed,
            refresh,
            min_refetch,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// GETs the JWKS, reading at most [`MAX_JWKS_BYTES`].
    async fn get(&self) -> Result<KeySet, String> {
        let url = &self.url;
        let mut response = self
            .client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", with_causes(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: answered {status}"));
        }
        let too_big = || format!("GET {url}: the answer is larger than {MAX_JWKS_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: reading the answer: {}", with_causes(&e)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body).map_err(|e| format!("{url}: {e}"))
    }
}

/// https, or http to a loopback address (a local test issuer, a sidecar).
fn secure(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// An error with its causes: reqwest's own text ("error sending request")
/// does not say what went wrong.
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// How claims map to a grant.
struct Mapping {
    roles: Vec<ClaimRule>,
    tenant_claim: Option<String>,
}

impl Mapping {
    /// The first rule whose claim holds its value, else the tenant claim.
    fn identity(&self, claims: &Value) -> Result<Identity, AuthError> {
        let Some(sub) = claims.get("sub").and_then(Value::as_str) else {
            // An audit log must say who did what.
            return Err(JwtError::Malformed("no string `sub` claim".into()).into());
        };
        let mut subject = format!("oidc {}", plain(sub));
        let name = ["email", "preferred_username"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str));
        if let Some(name) = name {
            subject = format!("{subject} ({})", plain(name));
        }
        for rule in &self.roles {
            if holds(lookup(claims, &rule.claim), &rule.value) {
                return Ok(Identity {
                    access: rule.grant.clone(),
                    subject,
                });
            }
        }
        let mut looked_for: Vec<String> = self
            .roles
            .iter()
            .map(|r| format!("{} holding {:?}", r.claim, r.value))
            .collect();
        if let Some(claim) = &self.tenant_claim {
            match lookup(claims, claim) {
                Some(Value::String(tenant)) => {
                    return match check_tenant(tenant) {
                        Ok(()) => Ok(Identity {
                            access: Access::Tenant(tenant.clone()),
                            subject,
                        }),
                        Err(why) => Err(AuthError::Unmapped(format!(
                            "{subject}: claim {claim:?} is not a tenant name: {why}"
                        ))),
                    };
                }
                _ => looked_for.push(format!("a tenant name in claim {claim:?}")),
            }
        }
        Err(AuthError::Unmapped(format!(
            "{subject} is granted nothing here: looked for {}",
            looked_for.join(", ")
        )))
    }
}

/// The claim at `path`: a claim of that whole name, else a dotted path
/// into nested objects (`realm_access.roles`).
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    if let Some(found) = object.get(path) {
        return Some(found);
    }
    path.match_indices('.').find_map(|(i, _)| {
        let inner = object.get(&path[..i])?;
        lookup(inner, &path[i + 1..])
    })
}

/// A string claim equal to `value`, or an array of strings holding it.
fn holds(claim: Option<&Value>, value: &str) -> bool {
    match claim {
        Some(Value::String(s)) => s == value,
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
        _ => false,
    }
}

/// A token's text made safe for a log line: control and bidi characters
/// replaced, and cut at 200 characters. The issuer signed it, but a user
/// may have chosen it (a display name, an e-mail address).
fn plain(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| {
            if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if text.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
