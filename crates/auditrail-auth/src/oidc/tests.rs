//! Tokens signed with keys made here, checked against a key file or a JWKS
//! served on 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use jsonwebtoken::{EncodingKey, Header as JwsHeader};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

use super::*;
use crate::tokens::TokenSet;
use crate::Authenticator;

const ISSUER: &str = "https://idp.example.com/realms/acme";
const AUDIENCE: &str = "auditrail";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RSA keys take a while to make: each test binary makes these few once.
fn rsa_key(i: usize) -> &'static rsa::RsaPrivateKey {
    static KEYS: [OnceLock<rsa::RsaPrivateKey>; 3] = [const { OnceLock::new() }; 3];
    KEYS[i].get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
}

/// A signing key, its kid, and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl Signer {
    /// RSA key `i` (of 3) under `kid`.
    fn rsa(i: usize, kid: &str) -> Signer {
        let key = rsa_key(i);
        let der = key.to_pkcs1_der().unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
            }),
        }
    }

    /// A new P-256 key under `kid`.
    fn ec(kid: &str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            // No `use` or `alg`: both are optional in a JWK.
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }

    /// Signed with this key, the header naming `kid`.
    fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = JwsHeader::new(self.alg);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Alice's claims, valid for 5 minutes, with `extra` on top (a null
/// removes a claim).
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice-id", "email": "alice@example.com",
        "iat": now(), "exp": now() + 300,
    });
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// Claims that map to tenant `beta` (through `tenant_claim`).
fn beta(extra: Value) -> Value {
    let mut c = claims(extra);
    c["tenant"] = json!("beta");
    c
}

fn jwks(signers: &[&Signer]) -> Value {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() })
}

fn config(jwks: JwksSource) -> OidcConfig {
    OidcConfig {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into(), "auditrail-cli".into()],
        jwks,
        leeway: Duration::from_secs(60),
        tenant_claim: Some("tenant".into()),
        roles: vec![
            ClaimRule {
                claim: "groups".into(),
                value: "auditrail-operators".into(),
                grant: Access::Operator,
            },
            ClaimRule {
                claim: "realm_access.roles".into(),
                value: "acme-auditor".into(),
                grant: Access::Tenant("acme".into()),
            },
        ],
    }
}

fn jwt_err(result: Result<Identity, AuthError>) -> JwtError {
    match result {
        Err(AuthError::Jwt(e)) => e,
        other => panic!("expected a JWT error, got {other:?}"),
    }
}

/// A JWKS file in a directory of its own.
struct KeyFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl KeyFile {
    fn new(jwks: &Value) -> KeyFile {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile {
            path: dir.path().join("jwks.json"),
            _dir: dir,
        };
        file.write(jwks);
        file
    }

    fn write(&self, jwks: &Value) {
        std::fs::write(&self.path, jwks.to_string()).unwrap();
    }
}

async fn file_verifier(signers: &[&Signer]) -> (Verifier, KeyFile) {
    let file = KeyFile::new(&jwks(signers));
    let verifier = Verifier::start(config(JwksSource::File(file.path.clone())))
        .await
        .unwrap();
    (verifier, file)
}

/// A JWKS endpoint that counts its requests, and answers what it is told.
struct Idp {
    url: String,
    state: Arc<IdpState>,
    server: tokio::task::JoinHandle<()>,
}

struct IdpState {
    answer: Mutex<(u16, String)>,
    fetches: AtomicUsize,
}

impl Idp {
    async fn start(jwks: &Value) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Idp::on(listener, jwks)
    }

    fn on(listener: tokio::net::TcpListener, jwks: &Value) -> Idp {
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let state = Arc::new(IdpState {
            answer: Mutex::new((200, jwks.to_string())),
            fetches: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(
                    |axum::extract::State(state): axum::extract::State<Arc<IdpState>>| async move {
                        state.fetches.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = state.answer.lock().unwrap().clone();
                        (axum::http::StatusCode::from_u16(status).unwrap(), body)
                    },
                ),
            )
            .with_state(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp { url, state, server }
    }

    fn serve(&self, jwks: &Value) {
        self.answer(200, jwks.to_string());
    }

    fn answer(&self, status: u16, body: String) {
        *self.state.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn url_source(url: &str, refresh: Duration, min_refetch: Duration) -> JwksSource {
    JwksSource::Url {
        url: url.into(),
        refresh,
        min_refetch,
        timeout: Duration::from_secs(5),
        tls_ca_file: None,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn rs256_and_es256_tokens_map_to_their_grants() {
    let rsa = Signer::rsa(0, "rsa-1");
    let ec = Signer::ec("ec-1");
    let (verifier, _file) = file_verifier(&[&rsa, &ec]).await;

    let operator = rsa.sign(&claims(json!({"groups": ["staff", "auditrail-operators"]})));
    assert_eq!(
        verifier.verify(&operator).await.unwrap(),
        Identity {
            access: Access::Operator,
            subject: "oidc alice-id (alice@example.com)".into(),
        }
    );
    let tenant = ec.sign(&beta(json!({})));
    assert_eq!(
        verifier.verify(&tenant).await.unwrap().access,
        Access::Tenant("beta".into())
    );

    // As the listeners ask: a bearer header that is no static token.
    let auth = Authenticator::new(TokenSet::new(), Some(verifier));
    let header = http::HeaderValue::from_str(&format!("Bearer {tenant}")).unwrap();
    let identity = auth.authenticate(Some(&header)).await.unwrap();
    assert_eq!(identity.access, Access::Tenant("beta".into()));
}

#[tokio::test]
async fn exp_and_nbf_are_checked_within_the_leeway() {
    let rsa = Signer::rsa(0, "rsa-1");
    let (verifier, _file) = file_verifier(&[&rsa]).await;
    let expired = rsa.sign(&beta(json!({"exp": now() - 120})));
    assert_eq!(jwt_err(verifier.verify(&expired).await), JwtError::Expired);
    assert_eq!(JwtError::Expired.reason(), "jwt_expired");
    let within_leeway = rsa.sign(&beta(json!({"exp": now() - 30})));
    verifier.verify(&within_leeway).await.unwrap();

    let early = rsa.sign(&beta(json!({"nbf": now() + 600})));
    assert_eq!(
        jwt_err(verifier.verify(&early).await),
        JwtError::NotYetValid
    );
    let nearly = rsa.sign(&beta(json!({"nbf": now() + 30})));
    verifier.verify(&nearly).await.unwrap();

    for exp in [Value::Null, json!("tomorrow")] {
        let no_exp = rsa.sign(&beta(json!({ "exp": exp })));
        assert!(matches!(
            jwt_err(verifier.verify(&no_exp).await),
            JwtError::Malformed(m) if m.contains("exp")
        ));
    }
}

#[tokio::test]
async fn a_signature_by_another_key_is_refused() {
    let rsa = Signer::rsa(0, "rsa-1");
    let ec = Signer::ec("ec-1");
    let (verifier, _file) = file_verifier(&[&rsa, &ec]).await;

    // Another key, under the kid of the issuer's.
    let forged = Signer::rsa(1, "rsa-1").sign(&beta(json!({})));
    assert_eq!(
        jwt_err(verifier.verify(&forged).await),
        JwtError::BadSignature
    );
    let forged = Signer::ec("ec-1").sign(&beta(json!({})));
    assert_eq!(
        jwt_err(verifier.verify(&forged).await),
        JwtError::BadSignature
    );

    // The issuer's signature over other claims.
    let genuine = rsa.sign(&beta(json!({})));
    let other = rsa.sign(&claims(json!({"groups": ["auditrail-operators"]})));
    let mut spliced: Vec<&str> = genuine.split('.').collect();
    spliced[1] = other.split('.').nth(1).unwrap();
    assert_eq!(
        jwt_err(verifier.verify(&spliced.join(".")).await),
        JwtError::BadSignature
    );
}

#[tokio::test]
async fn the_issuer_must_be_the_configured_one() {
    let rsa = Signer::rsa(0, "rsa-1");
    let (verifier, _file) = file_verifier(&[&rsa]).await;
    let wrong = JwtError::WrongIssuer(ISSUER.into());
    for iss in [
        json!("https://evil.example.com/realms/acme"),
        json!(format!("{ISSUER}/")),
        json!([ISSUER, "https://evil.example.com"]),
        Value::Null,
    ] {
        let token = rsa.sign(&beta(json!({ "iss": iss })));
        assert_eq!(jwt_err(verifier.verify(&token).await), wrong, "iss {iss}");
    }
}

#[tokio::test]
async fn the_audience_must_hold_a_configured_one() {
    let rsa = Signer::rsa(0, "rsa-1");
    let (verifier, _file) = file_verifier(&[&rsa]).await;
    for aud in [json!("grafana"), json!(["grafana", "kibana"]), Value::Null] {
        let token = rsa.sign(&beta(json!({ "aud": aud })));
        assert_eq!(
            jwt_err(verifier.verify(&token).await),
            JwtError::WrongAudience,
            "aud {aud}"
        );
    }
    for aud in [json!(["grafana", AUDIENCE]), json!("auditrail-cli")] {
        let token = rsa.sign(&beta(json!({ "aud": aud })));
        verifier.verify(&token).await.unwrap();
    }
}

#[tokio::test]
async fn alg_none_hmac_and_mismatched_algorithms_are_refused() {
    let rsa = Signer::rsa(0, "rsa-1");
    let ec = Signer::ec("ec-1");
    let (verifier, _file) = file_verifier(&[&rsa, &ec]).await;
    let body = b64(beta(json!({})).to_string());

    for signature in ["", "c2ln"] {
        let none = format!(
            "{}.{body}.{signature}",
            b64(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#)
        );
        assert_eq!(
            jwt_err(verifier.verify(&none).await),
            JwtError::UnsupportedAlgorithm("none".into())
        );
    }

    // HS256 "signed" with what an attacker knows of the RSA key: its JWK,
    // its modulus.
    let modulus = rsa_key(0).n().to_bytes_be();
    for secret in [rsa.jwk.to_string().into_bytes(), modulus] {
        let mut header = JwsHeader::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &beta(json!({})),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        let refused = jwt_err(verifier.verify(&token).await);
        assert_eq!(refused, JwtError::UnsupportedAlgorithm("HS256".into()));
        assert_eq!(refused.reason(), "jwt_algorithm");
    }

    // RS384 is RSA, but not accepted.
    let mut header = JwsHeader::new(Algorithm::RS384);
    header.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(&header, &beta(json!({})), &rsa.encoding).unwrap();
    assert_eq!(
        jwt_err(verifier.verify(&token).await),
        JwtError::UnsupportedAlgorithm("RS384".into())
    );

    // ES256 naming the RSA key, RS256 naming the EC key.
    let token = Signer::ec("x").sign_as(Some("rsa-1"), &beta(json!({})));
    assert_eq!(
        jwt_err(verifier.verify(&token).await),
        JwtError::AlgorithmMismatch {
            alg: "ES256".into(),
            kid: "rsa-1".into(),
            key_alg: "RS256".into()
        }
    );
    let token = rsa.sign_as(Some("ec-1"), &beta(json!({})));
    assert!(matches!(
        jwt_err(verifier.verify(&token).await),
        JwtError::AlgorithmMismatch { alg, .. } if alg == "RS256"
    ));
}

#[tokio::test]
async fn keys_are_picked_by_kid_and_without_one_only_if_unambiguous() {
    let rsa = Signer::rsa(0, "rsa-1");
    let ec = Signer::ec("ec-1");
    let (verifier, _file) = file_verifier(&[&rsa, &ec]).await;
    // One key per algorithm: a token without kid gets it.
    verifier
        .verify(&rsa.sign_as(None, &beta(json!({}))))
        .await
        .unwrap();
    verifier
        .verify(&ec.sign_as(None, &beta(json!({}))))
        .await
        .unwrap();
    assert_eq!(
        jwt_err(
            verifier
                .verify(&rsa.sign_as(Some("rsa-9"), &beta(json!({}))))
                .await
        ),
        JwtError::UnknownKey("rsa-9".into())
    );

    let rsa2 = Signer::rsa(1, "rsa-2");
    let (verifier, _file) = file_verifier(&[&rsa, &rsa2, &ec]).await;
    assert_eq!(
        jwt_err(verifier.verify(&rsa2.sign_as(None, &beta(json!({})))).await),
        JwtError::AmbiguousKey {
            alg: "RS256".into(),
            keys: 2
        }
    );
    verifier.verify(&rsa2.sign(&beta(json!({})))).await.unwrap();

    // A header extension auditrail does not know.
    let mut header: Value = json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp-x"], "exp-x": 1});
    let signed = rsa.sign(&beta(json!({})));
    let mut parts: Vec<String> = signed.split('.').map(String::from).collect();
    parts[0] = b64(header.take().to_string());
    assert!(matches!(
        jwt_err(verifier.verify(&parts.join(".")).await),
        JwtError::Malformed(m) if m.contains("crit")
    ));
    for garbage in ["a.b", "a.b.c.d", "!!!.e30.c2ln", "e30.e30.c2ln"] {
        assert!(matches!(
            jwt_err(verifier.verify(garbage).await),
            JwtError::Malformed(_)
        ));
    }
}

#[test]
fn jwks_keys_auditrail_cannot_use_are_skipped() {
    let rsa = Signer::rsa(0, "rsa-1");
    let ec = Signer::ec("ec-1");
    let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let mut encryption = rsa.jwk.clone();
    encryption["use"] = json!("enc");
    encryption["kid"] = json!("enc-1");
    let mut rs512 = rsa.jwk.clone();
    rs512["alg"] = json!("RS512");
    let mut wrap = ec.jwk.clone();
    wrap["key_ops"] = json!(["wrapKey"]);
    let unusable = vec![
        json!({"kty": "oct", "kid": "hmac", "k": b64("secret")}),
        encryption,
        rs512,
        wrap,
        json!({"kty": "RSA", "kid": "small", "n": b64(small.n().to_bytes_be()), "e": "AQAB"}),
        json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64([1; 48]), "y": b64([2; 48])}),
        json!({"kty": "EC", "crv": "P-256", "kid": "short", "x": b64([1; 31]), "y": b64([2; 32])}),
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64([1; 32])}),
        json!({"kid": "no-kty"}),
    ];
    let only_unusable = json!({ "keys": unusable });
    let error = parse_jwks(only_unusable.to_string().as_bytes())
        .err()
        .unwrap();
    assert!(error.contains("among its 9 keys"), "{error}");
    assert!(error.contains("1024 bits"), "{error}");

    let mut keys = unusable.clone();
    keys.push(rsa.jwk.clone());
    keys.push(ec.jwk.clone());
    keys.push(Signer::rsa(1, "rsa-1").jwk); // the same kid again
    let set = parse_jwks(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
    assert_eq!(set.describe(), r#"RS256 "rsa-1", ES256 "ec-1""#);

    for bad in ["", "[]", r#"{"keys": {}}"#, r#"{"keys": []}"#] {
        assert!(parse_jwks(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_reloaded_key_file_brings_new_keys_and_a_bad_one_keeps_the_old() {
    let old = Signer::rsa(0, "rsa-1");
    let new = Signer::ec("ec-2");
    let (verifier, file) = file_verifier(&[&old]).await;
    let old_token = old.sign(&beta(json!({})));
    let new_token = new.sign(&beta(json!({})));
    assert_eq!(
        jwt_err(verifier.verify(&new_token).await),
        JwtError::UnknownKey("ec-2".into())
    );

    file.write(&jwks(&[&old, &new]));
    verifier.reload().await.unwrap();
    verifier.verify(&new_token).await.unwrap();
    verifier.verify(&old_token).await.unwrap();

    for bad in ["{not json", r#"{"keys": []}"#] {
        std::fs::write(&file.path, bad).unwrap();
        let error = verifier.reload().await.unwrap_err().to_string();
        assert!(error.contains(&file.path.display().to_string()), "{error}");
        verifier.verify(&new_token).await.unwrap();
        verifier.verify(&old_token).await.unwrap();
    }
    std::fs::remove_file(&file.path).unwrap();
    assert!(verifier.reload().await.is_err());
    verifier.verify(&old_token).await.unwrap();

    // The old key retired: replaced whole, not merged.
    file.write(&jwks(&[&new]));
    verifier.reload().await.unwrap();
    assert_eq!(
        jwt_err(verifier.verify(&old_token).await),
        JwtError::UnknownKey("rsa-1".into())
    );
}

#[tokio::test]
async fn a_bad_key_file_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let start = || Verifier::start(config(JwksSource::File(path.clone())));
    let named = |e: OidcError| {
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        text
    };
    named(start().await.err().unwrap());
    std::fs::write(&path, "{").unwrap();
    named(start().await.err().unwrap());
    std::fs::write(&path, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
    let text = named(start().await.err().unwrap());
    assert!(text.contains("no RS256 or ES256"), "{text}");
    let too_big = json!({"keys": [Signer::ec("ec-1").jwk], "padding": "x".repeat(MAX_JWKS_BYTES)});
    std::fs::write(&path, too_big.to_string()).unwrap();
    let text = named(start().await.err().unwrap());
    assert!(text.contains("larger than"), "{text}");
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_at_start() {
    let file = KeyFile::new(&jwks(&[&Signer::ec("ec-1")]));
    let base = config(JwksSource::File(file.path.clone()));
    let refused = |change: &dyn Fn(&mut OidcConfig), words: &str| {
        let mut config = base.clone();
        change(&mut config);
        let words = words.to_string();
        async move {
            match Verifier::start(config).await {
                Err(e @ OidcError::Config(_)) => {
                    assert!(e.to_string().contains(&words), "{e} lacks {words:?}")
                }
                Err(e) => panic!("{e}: not a config error"),
                Ok(_) => panic!("accepted; expected an error about {words}"),
            }
        }
    };
    refused(&|c| c.audiences.clear(), "audiences").await;
    refused(&|c| c.issuer.clear(), "issuer").await;
    refused(
        &|c| {
            c.roles.clear();
            c.tenant_claim = None
        },
        "no token could be granted",
    )
    .await;
    refused(
        &|c| c.roles[1].grant = Access::Tenant("acme corp".into()),
        "roles[1]",
    )
    .await;
    refused(&|c| c.leeway = Duration::from_secs(3600), "leeway").await;
    refused(
        &|c| c.jwks = JwksSource::url("http://idp.example.com/jwks"),
        "use https",
    )
    .await;
    refused(&|c| c.jwks = JwksSource::url("not a url"), "jwks url").await;
    refused(
        &|c| {
            c.jwks = JwksSource::Url {
                url: "https://idp.example.com/jwks".into(),
                refresh: DEFAULT_REFRESH,
                min_refetch: DEFAULT_MIN_REFETCH,
                timeout: DEFAULT_TIMEOUT,
                tls_ca_file: Some("/nonexistent/ca.pem".into()),
            }
        },
        "/nonexistent/ca.pem",
    )
    .await;
    assert!(Verifier::start(base).await.is_ok());
}

#[tokio::test]
async fn a_new_kid_fetches_the_jwks_again_but_at_most_once_per_min_refetch() {
    let a = Signer::rsa(0, "key-a");
    let b = Signer::ec("key-b");
    let idp = Idp::start(&jwks(&[&a])).await;
    let min_refetch = Duration::from_millis(300);
    let verifier = Verifier::start(config(url_source(&idp.url, HOUR, min_refetch)))
        .await
        .unwrap();
    assert_eq!(idp.fetches(), 1);
    verifier.verify(&a.sign(&beta(json!({})))).await.unwrap();

    // The issuer rotates. Right after the start-up fetch, a new kid does not
    // fetch again.
    idp.serve(&jwks(&[&b]));
    let b_token = b.sign(&beta(json!({})));
    assert_eq!(
        jwt_err(verifier.verify(&b_token).await),
        JwtError::UnknownKey("key-b".into())
    );
    assert_eq!(idp.fetches(), 1);

    tokio::time::sleep(min_refetch).await;
    verifier.verify(&b_token).await.unwrap();
    assert_eq!(idp.fetches(), 2);

    // Made-up kids, one after another: no more fetches.
    for i in 0..20 {
        let made_up = b.sign_as(Some(&format!("made-up-{i}")), &beta(json!({})));
        assert!(matches!(
            jwt_err(verifier.verify(&made_up).await),
            JwtError::UnknownKey(_)
        ));
    }
    assert_eq!(idp.fetches(), 2);

    // A burst at once, after the interval: one fetch, which all wait for.
    let c = Arc::new(Signer::ec("key-c"));
    idp.serve(&jwks(&[&b, &c]));
    tokio::time::sleep(min_refetch).await;
    let verifier = Arc::new(verifier);
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (verifier, c) = (verifier.clone(), c.clone());
        burst.spawn(async move { verifier.verify(&c.sign(&beta(json!({})))).await });
    }
    while let Some(result) = burst.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(idp.fetches(), 3);
    // The old key went with the rotation.
    assert_eq!(
        jwt_err(verifier.verify(&a.sign(&beta(json!({})))).await),
        JwtError::UnknownKey("key-a".into())
    );
}

#[tokio::test]
async fn a_jwks_url_is_refreshed_on_schedule() {
    let a = Signer::rsa(0, "key-a");
    let b = Signer::ec("key-b");
    let idp = Idp::start(&jwks(&[&a])).await;
    // No fetch for unknown kids within the hour: only the schedule fetches.
    let verifier = Verifier::start(config(url_source(
        &idp.url,
        Duration::from_millis(300),
        HOUR,
    )))
    .await
    .unwrap();
    idp.serve(&jwks(&[&b]));
    let b_token = b.sign(&beta(json!({})));
    assert!(verifier.verify(&b_token).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while verifier.verify(&b_token).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the schedule never fetched key-b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idp.fetches() >= 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_keys_in_force() {
    let a = Signer::rsa(0, "key-a");
    let idp = Idp::start(&jwks(&[&a])).await;
    let verifier = Verifier::start(config(url_source(&idp.url, HOUR, HOUR)))
        .await
        .unwrap();
    let token = a.sign(&beta(json!({})));
    verifier.verify(&token).await.unwrap();

    let too_big = json!({"keys": [a.jwk], "padding": "x".repeat(MAX_JWKS_BYTES)}).to_string();
    for (status, body, words) in [
        (500, "oops".to_string(), "500"),
        (200, "<html>".into(), "not a JWKS"),
        (200, r#"{"keys": []}"#.into(), "no RS256 or ES256"),
        (200, too_big, "larger than"),
    ] {
        idp.answer(status, body);
        let error = verifier.reload().await.unwrap_err().to_string();
        assert!(error.contains(words), "{error} lacks {words:?}");
        verifier.verify(&token).await.unwrap();
    }
}

#[tokio::test]
async fn a_jwks_without_a_length_is_cut_at_the_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Signer::rsa(0, "key-a");
    let idp = Idp::start(&jwks(&[&a])).await;
    let verifier = Verifier::start(config(url_source(&idp.url, HOUR, HOUR)))
        .await
        .unwrap();
    // A server that streams a JWKS without end, in chunks, no length said.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        while stream.write_all(chunk.as_bytes()).await.is_ok() {
            counted.fetch_add(64 * 1024, Ordering::SeqCst);
        }
    });
    let endless = Fetcher::new(
        &format!("http://{addr}/jwks"),
        HOUR,
        HOUR,
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let error = verifier.shared.fetch(&endless).await.unwrap_err();
    assert!(error.contains("larger than"), "{error}");
    assert!(sent.load(Ordering::SeqCst) < 8 * MAX_JWKS_BYTES);
    verifier.verify(&a.sign(&beta(json!({})))).await.unwrap();
}

/// A port that refuses connections (bound, not listening) until it listens.
fn closed_port() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/jwks", socket.local_addr().unwrap());
    (socket, url)
}

#[tokio::test]
async fn an_issuer_down_at_start_answers_unavailable_until_a_token_fetches_its_keys() {
    let a = Signer::rsa(0, "key-a");
    let (closed, url) = closed_port();
    let min_refetch = Duration::from_millis(200);
    let verifier = Verifier::start(config(url_source(&url, HOUR, min_refetch)))
        .await
        .unwrap();
    let token = a.sign(&beta(json!({})));
    let error = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(&error, AuthError::KeysUnavailable(why) if why.contains(&url)),
        "{error:?}"
    );
    assert!(error.retryable());

    let idp = Idp::on(closed.listen(16).unwrap(), &jwks(&[&a]));
    tokio::time::sleep(min_refetch).await;
    verifier.verify(&token).await.unwrap();
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn an_issuer_down_at_start_is_retried_in_the_background() {
    let a = Signer::rsa(0, "key-a");
    let (closed, url) = closed_port();
    let verifier = Verifier::start(config(url_source(&url, HOUR, HOUR)))
        .await
        .unwrap();
    let token = a.sign(&beta(json!({})));
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::KeysUnavailable(_))
    ));

    let idp = Idp::on(closed.listen(16).unwrap(), &jwks(&[&a]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while verifier.shared.keys().is_none() {
        assert!(Instant::now() < deadline, "the keys never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    verifier.verify(&token).await.unwrap();
    assert_eq!(idp.fetches(), 1);
}

fn mapping() -> Mapping {
    let config = config(JwksSource::File(PathBuf::new()));
    let mut roles = config.roles;
    roles.push(ClaimRule {
        claim: "https://example.com/roles".into(),
        value: "reader".into(),
        grant: Access::Tenant("gamma".into()),
    });
    Mapping {
        roles,
        tenant_claim: config.tenant_claim,
    }
}

fn access(claims: Value) -> Result<Access, AuthError> {
    mapping().identity(&claims).map(|i| i.access)
}

#[test]
fn claims_map_to_grants_by_the_first_rule_then_the_tenant_claim() {
    let sub = |extra: Value| {
        let mut c = json!({"sub": "alice-id"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    // An array of groups; a dotted path; a string claim.
    assert_eq!(
        access(sub(json!({"groups": ["staff", "auditrail-operators"]}))).unwrap(),
        Access::Operator
    );
    assert_eq!(
        access(sub(json!({"realm_access": {"roles": ["acme-auditor"]}}))).unwrap(),
        Access::Tenant("acme".into())
    );
    assert_eq!(
        access(sub(json!({"groups": "auditrail-operators"}))).unwrap(),
        Access::Operator
    );
    // A namespaced claim, dots and all.
    assert_eq!(
        access(sub(json!({"https://example.com/roles": ["reader"]}))).unwrap(),
        Access::Tenant("gamma".into())
    );
    // The first rule that matches wins, before the tenant claim.
    assert_eq!(
        access(sub(json!({
            "realm_access": {"roles": ["acme-auditor"]},
            "groups": ["auditrail-operators"],
            "tenant": "beta",
        })))
        .unwrap(),
        Access::Operator
    );
    assert_eq!(
        access(sub(json!({"tenant": "beta", "groups": ["staff"]}))).unwrap(),
        Access::Tenant("beta".into())
    );

    // Near misses map to nothing.
    for near in [
        json!({"groups": ["auditrail-operators-x"]}),
        json!({"groups": [["auditrail-operators"]]}),
        json!({"realm_access": "acme-auditor"}),
        json!({"realm_access.roles": "acme"}),
        json!({"roles": ["acme-auditor"]}),
        json!({"tenant": ["beta"]}),
        json!({"tenant": 7}),
    ] {
        assert!(
            matches!(access(sub(near.clone())), Err(AuthError::Unmapped(_))),
            "{near}"
        );
    }
    // A dotted claim name that is there whole.
    assert_eq!(
        access(sub(json!({"realm_access.roles": "acme-auditor"}))).unwrap(),
        Access::Tenant("acme".into())
    );

    // A tenant claim that is no tenant name.
    match access(sub(json!({"tenant": "../acme"}))) {
        Err(AuthError::Unmapped(m)) => {
            assert!(
                m.contains("not a tenant name") && m.contains("oidc alice-id"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unmapped_and_subjects_say_who_and_what_was_looked_for() {
    let m = mapping();
    let unmapped = m
        .identity(&json!({"sub": "bob-id", "email": "bob@example.com", "groups": ["staff"]}))
        .unwrap_err();
    assert_eq!(unmapped.reason(), "unmapped");
    let text = unmapped.to_string();
    for words in [
        "oidc bob-id (bob@example.com)",
        r#"groups holding "auditrail-operators""#,
        r#"realm_access.roles holding "acme-auditor""#,
        r#"a tenant name in claim "tenant""#,
    ] {
        assert!(text.contains(words), "{text} lacks {words}");
    }

    let subject = |claims: Value| m.identity(&claims).unwrap().subject;
    assert_eq!(
        subject(json!({"sub": "c", "preferred_username": "carol", "tenant": "t"})),
        "oidc c (carol)"
    );
    assert_eq!(
        subject(json!({"sub": "c", "email": "c@x", "preferred_username": "carol", "tenant": "t"})),
        "oidc c (c@x)"
    );
    assert_eq!(subject(json!({"sub": "c", "tenant": "t"})), "oidc c");
    assert_eq!(
        subject(json!({"sub": "c\r\nFAKE\u{202e}", "tenant": "t"})),
        "oidc c\u{fffd}\u{fffd}FAKE\u{fffd}"
    );
    assert!(matches!(
        m.identity(&json!({"tenant": "t"})),
        Err(AuthError::Jwt(JwtError::Malformed(_)))
    ));
}
