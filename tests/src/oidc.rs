//! A stand-in OIDC issuer for the end-to-end tests: it makes an RSA and a
//! P-256 signing key, serves their JWKS over HTTP on 127.0.0.1 (a port of
//! its own, from a runtime of its own, so synchronous and async tests can
//! use it alike), writes the same JWKS to a file, and mints tokens. Its
//! helpers make the tokens that must be refused: expired, or signed by a
//! foreign key under the issuer's own kid.
//!
//! No real identity provider runs here: auditrail only ever sees an
//! issuer's JWKS and its JWTs, and these are made as IdPs make them (RS256
//! and ES256 per RFC 7518, keys as RFC 7517 JWKs with `kid`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// The audience of the tokens [`TestIssuer`] mints, unless a test names
/// another: auditrail's `[oidc] audiences` should hold it.
pub const AUDIENCE: &str = "auditrail";

/// The algorithms auditrail accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    ES256,
}

/// An issuer with one RSA and one P-256 key. Stops serving when dropped.
pub struct TestIssuer {
    addr: SocketAddr,
    rsa: SigningKey,
    ec: SigningKey,
    /// Other keys, under the kids of `rsa` and `ec`: what a forger has.
    foreign_rsa: SigningKey,
    foreign_ec: SigningKey,
    _dir: tempfile::TempDir,
    jwks_file: PathBuf,
    fetches: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestIssuer {
    /// Makes the keys and starts serving `GET /jwks`.
    pub fn start() -> TestIssuer {
        let rsa = SigningKey::rsa("test-rsa-1");
        let ec = SigningKey::ec("test-ec-1");
        let foreign_rsa = SigningKey::rsa(&rsa.kid);
        let foreign_ec = SigningKey::ec(&ec.kid);
        let jwks = json!({ "keys": [rsa.jwk, ec.jwk] }).to_string();

        let dir = tempfile::tempdir().expect("a directory for the JWKS file");
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, &jwks).expect("writing the JWKS file");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test issuer");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the issuer");
        let addr = listener.local_addr().expect("the issuer's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let jwks = jwks.clone();
                async move { ([("content-type", "application/json")], jwks) }
            }),
        );
        runtime.spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("the issuer's listener");
            axum::serve(listener, app).await.expect("serving the JWKS")
        });
        TestIssuer {
            addr,
            rsa,
            ec,
            foreign_rsa,
            foreign_ec,
            _dir: dir,
            jwks_file,
            fetches,
            runtime: Some(runtime),
        }
    }

    /// The `iss` of its tokens (`[oidc] issuer`): its own base URL.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `[oidc] jwks_url`.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// `[oidc] jwks_file`: the same keys as [`TestIssuer::jwks_url`].
    pub fn jwks_file(&self) -> &Path {
        &self.jwks_file
    }

    /// The kid of its key for `alg`.
    pub fn kid(&self, alg: Alg) -> &str {
        &self.key(alg).kid
    }

    /// How many times the JWKS was fetched over HTTP.
    pub fn jwks_fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// A token signed with its `alg` key, valid for `ttl` from now. `iss`,
    /// `aud`, `iat` and `exp` are filled in unless `claims` (an object) has
    /// them; `sub` and the claims auditrail maps (`tenant`, `groups`) are
    /// the test's to give.
    pub fn token(&self, claims: Value, alg: Alg, ttl: Duration) -> String {
        let now = now();
        self.sign(self.key(alg), claims, now, now + ttl.as_secs())
    }

    /// A token that expired ten minutes ago (beyond any leeway auditrail
    /// accepts), otherwise as [`TestIssuer::token`].
    pub fn expired_token(&self, claims: Value, alg: Alg) -> String {
        let now = now();
        self.sign(self.key(alg), claims, now - 900, now - 600)
    }

    /// A token that names the issuer's `alg` key but is signed by another
    /// key: its signature must not verify.
    pub fn foreign_token(&self, claims: Value, alg: Alg) -> String {
        let key = match alg {
            Alg::RS256 => &self.foreign_rsa,
            Alg::ES256 => &self.foreign_ec,
        };
        let now = now();
        self.sign(key, claims, now, now + 300)
    }

    fn key(&self, alg: Alg) -> &SigningKey {
        match alg {
            Alg::RS256 => &self.rsa,
            Alg::ES256 => &self.ec,
        }
    }

    fn sign(&self, key: &SigningKey, claims: Value, iat: u64, exp: u64) -> String {
        let Value::Object(mut claims) = claims else {
            panic!("claims must be a JSON object, not {claims}");
        };
        let defaults = [
            ("iss", json!(self.issuer())),
            ("aud", json!(AUDIENCE)),
            ("iat", json!(iat)),
            ("exp", json!(exp)),
        ];
        for (name, value) in defaults {
            claims.entry(name).or_insert(value);
        }
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("signing a token")
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A private key to sign with, and its public JWK.
struct SigningKey {
    kid: String,
    alg: jsonwebtoken::Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn rsa(kid: &str) -> SigningKey {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("an RSA key");
        let der = key.to_pkcs1_der().expect("the RSA key as DER");
        SigningKey {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
            }),
        }
    }

    fn ec(kid: &str) -> SigningKey {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        // The uncompressed point: 0x04, x, y.
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65, "a P-256 point, uncompressed");
        SigningKey {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
        }
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// The issuer's tokens are what auditrail's verifier takes (and refuses).
#[cfg(test)]
mod tests {
    use auditrail_auth::oidc::{JwksSource, JwtError, OidcConfig, Verifier};
    use auditrail_auth::{Access, AuthError};

    use super::*;

    #[test]
    fn auditrail_takes_its_tokens_and_refuses_the_bad_ones() {
        let issuer = TestIssuer::start();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for source in [
            JwksSource::url(issuer.jwks_url()),
            JwksSource::File(issuer.jwks_file().to_path_buf()),
        ] {
            let config = OidcConfig {
                issuer: issuer.issuer(),
                audiences: vec![AUDIENCE.into()],
                jwks: source,
                leeway: Duration::from_secs(60),
                tenant_claim: Some("tenant".into()),
                roles: Vec::new(),
            };
            runtime.block_on(async {
                let verifier = Verifier::start(config).await.unwrap();
                let claims = json!({"sub": "alice", "tenant": "acme"});
                for alg in [Alg::RS256, Alg::ES256] {
                    let token = issuer.token(claims.clone(), alg, Duration::from_secs(60));
                    let identity = verifier.verify(&token).await.unwrap();
                    assert_eq!(identity.access, Access::Tenant("acme".into()));
                    let refused = |r: Result<_, AuthError>| match r {
                        Err(AuthError::Jwt(e)) => e,
                        other => panic!("{other:?}"),
                    };
                    let expired = issuer.expired_token(claims.clone(), alg);
                    assert_eq!(refused(verifier.verify(&expired).await), JwtError::Expired);
                    let forged = issuer.foreign_token(claims.clone(), alg);
                    assert_eq!(
                        refused(verifier.verify(&forged).await),
                        JwtError::BadSignature
                    );
                }
            });
        }
        assert_eq!(issuer.jwks_fetches(), 1);
    }
}
