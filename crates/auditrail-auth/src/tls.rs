//! TLS for auditrail's listeners (OTLP/gRPC, OTLP/HTTP and the admin API),
//! with rustls and its ring provider, as the rest of the workspace.
//!
//! * The certificate chain and key come from PEM files, and
//!   [`ServerTls::reload`] reads them again (SIGHUP): a rotated certificate
//!   is served to new connections without a restart, and a file caught
//!   half-written leaves the old one in force.
//! * With `client_ca_file`, clients present a certificate signed by one of
//!   those CAs (mTLS). One from any other CA fails the handshake.
//! * With `tenant_from`, the client certificate also names the caller's
//!   tenant ([`TlsConfig::identify`]): a writer can authenticate with its
//!   certificate alone, no bearer token needed.
//! * [`ServerTls::accept`] bounds the handshake in time, so a client that
//!   connects and never finishes it cannot hold a connection (and its
//!   memory) forever.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{check_tenant, Access, AuthError, Identity};

/// `[receiver.tls]` / `[admin.tls]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub key_file: PathBuf,
    /// PEM: the CAs that sign client certificates; set = mTLS. Every
    /// certificate in it must be a CA.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: whether a client must present a certificate.
    pub client_auth: ClientAuth,
    /// Which part of a client certificate names its tenant (receivers).
    /// Needs `client_ca_file`. Unset, a client certificate only gates the
    /// connection: the caller still authenticates with a token.
    pub tenant_from: Option<CertField>,
    /// Optional: that part's value → tenant, compared exactly. Without it
    /// the value itself is the tenant (and must be a valid tenant name).
    pub tenants: BTreeMap<String, String>,
}

/// Whether a client must present a certificate (with `client_ca_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A client without a certificate fails the handshake.
    #[default]
    Required,
    /// A client without a certificate connects (and authenticates some
    /// other way, e.g. with a token); one that presents a certificate must
    /// still present a valid one.
    Optional,
}

/// A part of a certificate that can name a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject's CN (there must be exactly one).
    CommonName,
    /// The subject's O (there must be exactly one).
    Organization,
    /// The first DNS name among the SANs.
    DnsSan,
    /// The first URI among the SANs (e.g. a SPIFFE id).
    UriSan,
    /// The first e-mail address among the SANs.
    EmailSan,
}

impl CertField {
    /// How the field is named in messages and in [`Identity::subject`].
    pub fn label(self) -> &'static str {
        match self {
            CertField::CommonName => "CN",
            CertField::Organization => "O",
            CertField::DnsSan => "DNS SAN",
            CertField::UriSan => "URI SAN",
            CertField::EmailSan => "e-mail SAN",
        }
    }
}

/// Why the TLS files or settings cannot be put in force. Each names the
/// file and what is wrong with it, for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid PEM: {problem}", file.display())]
    Pem { file: PathBuf, problem: String },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{} holds no private key (an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key)", file.display())]
    NoKey { file: PathBuf },
    #[error("the key in {} cannot be used: {problem}", file.display())]
    BadKey { file: PathBuf, problem: String },
    #[error("{} holds a certificate that cannot be used: {problem}", file.display())]
    BadCertificate { file: PathBuf, problem: String },
    #[error("the key in {} does not match the certificate in {}", key_file.display(), cert_file.display())]
    KeyMismatch {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    #[error("{} holds no CA to verify client certificates with: {problem}", file.display())]
    NoCa { file: PathBuf, problem: String },
    /// Settings that contradict each other (see [`TlsConfig::validate`]).
    #[error("{0}")]
    Config(String),
}

/// Why a connection's handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the client did not finish the TLS handshake within {0:?}")]
    TimedOut(Duration),
    #[error("the TLS handshake failed: {0}")]
    Failed(#[source] io::Error),
}

impl HandshakeError {
    /// The rustls error behind a failed handshake, if there is one (as
    /// opposed to the connection closing, or the timeout).
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            HandshakeError::Failed(e) => e.get_ref()?.downcast_ref(),
            HandshakeError::TimedOut(_) => None,
        }
    }

    /// A short label for metrics and logs: `timeout`, `no_certificate`
    /// (mTLS required one), `bad_certificate` (e.g. an unknown CA),
    /// `tls` (any other protocol error) or `io`.
    pub fn reason(&self) -> &'static str {
        match (self, self.tls_error()) {
            (HandshakeError::TimedOut(_), _) => "timeout",
            (_, Some(rustls::Error::NoCertificatesPresented)) => "no_certificate",
            (_, Some(rustls::Error::InvalidCertificate(_))) => "bad_certificate",
            (_, Some(_)) => "tls",
            (_, None) => "io",
        }
    }
}

/// What a completed handshake proved about the client: the certificate it
/// presented (verified against `client_ca_file`) and the identity that
/// certificate maps to.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    leaf: CertificateDer<'static>,
    identity: Result<Option<Identity>, AuthError>,
}

impl PeerCertificate {
    /// The client's certificate (DER), as verified in the handshake.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The identity the certificate maps to by `tenant_from` and `tenants`:
    /// `Ok(None)` when `tenant_from` is not set (the certificate only gated
    /// the connection), [`AuthError::Unmapped`] when its value names no
    /// tenant. Mapped once, during the handshake.
    pub fn identity(&self) -> Result<Option<Identity>, AuthError> {
        self.identity.clone()
    }
}

impl TlsConfig {
    /// Refuses settings that cannot work together: a tenant mapping without
    /// client certificates (`client_ca_file`), `tenants` without
    /// `tenant_from`, and a `tenants` value that is not a valid tenant.
    /// [`ServerTls::load`] calls it; the config parser may call it earlier.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.client_ca_file.is_none() && (self.tenant_from.is_some() || !self.tenants.is_empty())
        {
            return Err(TlsError::Config(
                "tenant_from and tenants need client_ca_file: without it no client certificate is asked for".into(),
            ));
        }
        if self.tenant_from.is_none() && !self.tenants.is_empty() {
            return Err(TlsError::Config(
                "tenants is set but tenant_from is not: say which part of the client certificate names the tenant".into(),
            ));
        }
        for (value, tenant) in &self.tenants {
            check_tenant(tenant)
                .map_err(|e| TlsError::Config(format!("tenants: {value:?} maps to {e}")))?;
        }
        Ok(())
    }

    /// The identity a verified client certificate (DER) maps to:
    /// `Ok(None)` without `tenant_from`; otherwise that field's value,
    /// looked up in `tenants` when it is not empty, else taken as the
    /// tenant itself. [`AuthError::Unmapped`] names the certificate's value
    /// (or the field it lacks), so the operator can see what to map.
    pub fn identify(&self, leaf: &[u8]) -> Result<Option<Identity>, AuthError> {
        let Some(field) = self.tenant_from else {
            return Ok(None);
        };
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| {
            AuthError::Unmapped(format!("the client certificate cannot be parsed: {e}"))
        })?;
        let value = field_value(&cert, field)?;
        let tenant = if self.tenants.is_empty() {
            check_tenant(&value).map_err(|e| {
                AuthError::Unmapped(format!(
                    "the client certificate's {} {value:?} is not a tenant name ({e}); map it in tenants",
                    field.label()
                ))
            })?;
            value.clone()
        } else {
            self.tenants.get(&value).cloned().ok_or_else(|| {
                AuthError::Unmapped(format!(
                    "the client certificate's {} {value:?} maps to no tenant (it is not among tenants)",
                    field.label()
                ))
            })?
        };
        let dn = subject_of(&cert);
        let subject = match field {
            CertField::CommonName | CertField::Organization => format!("certificate {dn}"),
            _ if dn.is_empty() => format!("certificate {} {value:?}", field.label()),
            _ => format!("certificate {dn} ({} {value:?})", field.label()),
        };
        Ok(Some(Identity {
            access: Access::Tenant(tenant),
            subject,
        }))
    }
}

/// The certificate's subject for messages and logs (`CN=svc-a, O=acme`),
/// with control characters escaped: a CA may sign whatever a requester
/// wrote, and a newline in a CN must not forge a log line.
fn subject_of(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string().escape_debug().to_string()
}

/// The value of `field` in `cert`. A subject with several CNs (or Os) is
/// refused rather than read by position: which one names the tenant would
/// depend on how the CA ordered them.
fn field_value(cert: &X509Certificate<'_>, field: CertField) -> Result<String, AuthError> {
    let missing = || {
        AuthError::Unmapped(format!(
            "the client certificate ({}) has no {}, which names the tenant here",
            subject_of(cert),
            field.label()
        ))
    };
    let unreadable = |why: String| {
        AuthError::Unmapped(format!(
            "the client certificate's {} cannot be read: {why}",
            field.label()
        ))
    };
    match field {
        CertField::CommonName | CertField::Organization => {
            let values: Vec<_> = if field == CertField::CommonName {
                cert.subject().iter_common_name().collect()
            } else {
                cert.subject().iter_organization().collect()
            };
            match values.as_slice() {
                [] => Err(missing()),
                [one] => one
                    .as_str()
                    .map(str::to_owned)
                    .map_err(|e| unreadable(e.to_string())),
                more => Err(AuthError::Unmapped(format!(
                    "the client certificate's subject ({}) holds {} {}s; exactly one must name the tenant",
                    subject_of(cert),
                    more.len(),
                    field.label()
                ))),
            }
        }
        CertField::DnsSan | CertField::UriSan | CertField::EmailSan => {
            let sans = cert
                .subject_alternative_name()
                .map_err(|e| unreadable(e.to_string()))?;
            let names = sans.map(|ext| ext.value.general_names.as_slice());
            names
                .unwrap_or_default()
                .iter()
                .find_map(|name| match (field, name) {
                    (CertField::DnsSan, GeneralName::DNSName(v))
                    | (CertField::UriSan, GeneralName::URI(v))
                    | (CertField::EmailSan, GeneralName::RFC822Name(v)) => Some(v.to_string()),
                    _ => None,
                })
                .ok_or_else(missing)
        }
    }
}

/// A listener's TLS: the settings and the rustls config in force, replaced
/// together by [`ServerTls::reload`] or [`ServerTls::reload_with`]. Shared
/// by the listener's connections (e.g. in an `Arc`); each takes what is in
/// force when its handshake starts.
#[derive(Debug)]
pub struct ServerTls {
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<InForce>>,
    /// Held through a whole reload, so two reloads (two quick SIGHUPs)
    /// cannot put the older read of the files in force last.
    reloading: Mutex<()>,
}

/// The settings and what was loaded from their files, always from the
/// same reload: a connection never maps its certificate by settings newer
/// or older than the CAs that verified it.
#[derive(Debug)]
struct InForce {
    config: TlsConfig,
    server: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the certificate chain, the key and (for mTLS) the client CAs.
    /// `alpn` is what the listener speaks, in order of preference: `h2` for
    /// gRPC, `h2` and `http/1.1` for HTTP.
    pub fn load(config: &TlsConfig, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let in_force = InForce::load(config, &alpn)?;
        Ok(ServerTls {
            alpn,
            current: RwLock::new(Arc::new(in_force)),
            reloading: Mutex::new(()),
        })
    }

    /// Reads the files again and, when they all load, puts them in force
    /// for new connections; connections already open keep theirs. On any
    /// error what is in force stays, and the error is returned for the
    /// caller to log: a certificate and key rotated one file at a time
    /// leave the old pair served until both are in place. (The files are
    /// small and read synchronously.)
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.in_force().config.clone();
        self.reload_with(&config)
    }

    /// [`ServerTls::reload`] with new settings (a reloaded config file):
    /// other files, another client CA, a changed `tenants` map. The same
    /// rule holds: on any error nothing changes.
    pub fn reload_with(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = InForce::load(config, &self.alpn)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    fn in_force(&self) -> Arc<InForce> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The settings in force.
    pub fn config(&self) -> TlsConfig {
        self.in_force().config.clone()
    }

    /// The rustls config in force, for a listener that drives the
    /// handshake itself (it then maps the client certificate with
    /// [`TlsConfig::identify`]).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.in_force().server.clone()
    }

    /// The server side of the handshake on `io` (a freshly accepted
    /// connection), within `timeout`; on timeout `io` is dropped, which
    /// closes the connection. Returns the TLS stream and, when the client
    /// presented a certificate (mTLS), that certificate and its identity.
    ///
    /// Run it in the connection's own task, not in the accept loop: a
    /// client that stalls its handshake would otherwise hold up every
    /// connection behind it for up to `timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<(TlsStream<IO>, Option<PeerCertificate>), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let in_force = self.in_force();
        let acceptor = TlsAcceptor::from(in_force.server.clone());
        let stream = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Err(_) => return Err(HandshakeError::TimedOut(timeout)),
            Ok(Err(e)) => return Err(HandshakeError::Failed(e)),
            Ok(Ok(stream)) => stream,
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(|leaf| PeerCertificate {
                leaf: leaf.clone(),
                identity: in_force.config.identify(leaf),
            });
        Ok((stream, peer))
    }
}

impl InForce {
    fn load(config: &TlsConfig, alpn: &[Vec<u8>]) -> Result<InForce, TlsError> {
        config.validate()?;
        Ok(InForce {
            config: config.clone(),
            server: Arc::new(build(config, alpn)?),
        })
    }
}

/// A rustls server config from the files `config` names.
fn build(config: &TlsConfig, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&config.cert_file)?;
    let key = private_key(&config.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("rustls: {e}")))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => builder.with_client_cert_verifier({
            let roots = Arc::new(client_cas(ca_file)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match config.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            verifier.build().map_err(|e| TlsError::NoCa {
                file: ca_file.clone(),
                problem: e.to_string(),
            })?
        }),
    };
    let mut server_config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert_file: config.cert_file.clone(),
                key_file: config.key_file.clone(),
            }
        }
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsError::BadCertificate {
                file: config.cert_file.clone(),
                problem: e.to_string(),
            }
        }
        other => TlsError::BadKey {
            file: config.key_file.clone(),
            problem: other.to_string(),
        },
    })?;
    server_config.alpn_protocols = alpn.to_vec();
    Ok(server_config)
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_owned(),
        source,
    })
}

fn pem_error(file: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        file: file.to_owned(),
        problem: e.to_string(),
    }
}

/// Every certificate in a PEM file, in order; at least one.
fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(file, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(file)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            file: file.to_owned(),
        },
        e => pem_error(file, e),
    })
}

/// The client CAs. Every certificate must be a CA (`basicConstraints`
/// `CA:TRUE`, or an old self-issued root without extensions): a client or
/// server certificate pasted in by mistake would otherwise be a trust
/// anchor that verifies nothing, and the mistake would show only as
/// refused clients.
fn client_cas(file: &Path) -> Result<RootCertStore, TlsError> {
    let certs = certificates(file).map_err(|e| match e {
        TlsError::NoCertificate { file } => TlsError::NoCa {
            file,
            problem: "it holds no PEM certificate".into(),
        },
        e => e,
    })?;
    let mut roots = RootCertStore::empty();
    for (i, der) in certs.into_iter().enumerate() {
        let bad = |problem: String| TlsError::BadCertificate {
            file: file.to_owned(),
            problem: format!("certificate {}: {problem}", i + 1),
        };
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
        let is_ca = match cert.basic_constraints() {
            Ok(Some(constraints)) => constraints.value.ca,
            Ok(None) => cert.subject() == cert.issuer(),
            Err(e) => return Err(bad(e.to_string())),
        };
        if !is_ca {
            return Err(TlsError::NoCa {
                file: file.to_owned(),
                problem: format!(
                    "certificate {} ({}) is not a CA (no basicConstraints CA:TRUE); the file must hold only the CAs that sign client certificates",
                    i + 1,
                    cert.subject()
                ),
            });
        }
        roots.add(der).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use base64::prelude::{Engine, BASE64_STANDARD};
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        SanType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{CertificateError, ClientConfig};
    use tokio_rustls::TlsConnector;

    use super::*;

    const H2: &[u8] = b"h2";
    const HTTP1: &[u8] = b"http/1.1";
    /// Longer than anything here should take: a bound on a test that fails
    /// by hanging.
    const WAIT: Duration = Duration::from_secs(10);

    /// A CA of the test's own.
    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
        pem: String,
    }

    /// A certificate and its key.
    struct Leaf {
        der: CertificateDer<'static>,
        pem: String,
        key_pem: String,
        key_pkcs8: Vec<u8>,
    }

    fn dn(entries: &[(DnType, &str)]) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (ty, value) in entries {
            dn.push(ty.clone(), *value);
        }
        dn
    }

    fn ia5(s: &str) -> rcgen::string::Ia5String {
        s.try_into().unwrap()
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(&[(DnType::CommonName, name)]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            Ca {
                der: cert.der().clone(),
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        fn sign(&self, params: CertificateParams) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf {
                der: cert.der().clone(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
                key_pkcs8: key.serialize_der(),
            }
        }

        /// A server certificate for `localhost` and 127.0.0.1.
        fn server(&self) -> Leaf {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            params.distinguished_name = dn(&[(DnType::CommonName, "localhost")]);
            self.sign(params)
        }

        fn client(&self, subject: &[(DnType, &str)], sans: Vec<SanType>) -> Leaf {
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(subject);
            params.subject_alt_names = sans;
            self.sign(params)
        }
    }

    /// A client certificate with every field a tenant can come from; the
    /// second DNS SAN is there to show that the first is the one taken.
    fn writer(ca: &Ca) -> Leaf {
        ca.client(
            &[
                (DnType::CommonName, "svc-cn"),
                (DnType::OrganizationName, "acme-org"),
            ],
            vec![
                SanType::DnsName(ia5("svc-dns.example")),
                SanType::DnsName(ia5("second.example")),
                SanType::URI(ia5("spiffe://example.org/ns/prod/sa/writer")),
                SanType::Rfc822Name(ia5("writer@acme.example")),
            ],
        )
    }

    fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// The server's files in a fresh directory, and a config naming them:
    /// plain TLS, or mTLS with `client_ca` (client certificates required).
    fn setup(server: &Leaf, client_ca: Option<&Ca>) -> (tempfile::TempDir, TlsConfig) {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert_file: write(dir.path(), "server.pem", &server.pem),
            key_file: write(dir.path(), "server-key.pem", &server.key_pem),
            client_ca_file: client_ca.map(|ca| write(dir.path(), "client-ca.pem", &ca.pem)),
            client_auth: ClientAuth::Required,
            tenant_from: None,
            tenants: BTreeMap::new(),
        };
        (dir, config)
    }

    type Accepted = Result<(Option<PeerCertificate>, Option<Vec<u8>>), HandshakeError>;
    type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

    /// A loopback listener whose connections go through `tls.accept`; it
    /// reports each handshake (the peer and the ALPN protocol, or the
    /// error), then echoes what the client sends.
    struct TestServer {
        addr: SocketAddr,
        handshakes: mpsc::UnboundedReceiver<Accepted>,
    }

    async fn serve(tls: Arc<ServerTls>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, handshakes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let (mut stream, peer) = match tls.accept(tcp, WAIT).await {
                        Ok(accepted) => accepted,
                        Err(e) => return drop(tx.send(Err(e))),
                    };
                    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    let _ = tx.send(Ok((peer, alpn)));
                    let mut buf = [0; 64];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TestServer { addr, handshakes }
    }

    fn client_config(trust: &Ca, cert: Option<&Leaf>, alpn: &[&[u8]]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(trust.der.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![leaf.der.clone()],
                    PrivateKeyDer::Pkcs8(leaf.key_pkcs8.clone().into()),
                )
                .unwrap(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// One byte string there and back: in TLS 1.3 the client finishes its
    /// side of the handshake before the server has judged its certificate,
    /// so a refusal shows only once data flows.
    async fn echo(stream: &mut ClientStream, message: &[u8]) -> io::Result<()> {
        stream.write_all(message).await?;
        let mut back = vec![0; message.len()];
        stream.read_exact(&mut back).await?;
        assert_eq!(back, message);
        Ok(())
    }

    impl TestServer {
        /// Connects as a client trusting `trust`, presenting `cert`,
        /// offering `alpn`, and echoes once. Returns the client's stream
        /// (if all that worked) and the server's view of the handshake.
        async fn trial(
            &mut self,
            trust: &Ca,
            cert: Option<&Leaf>,
            alpn: &[&[u8]],
        ) -> (io::Result<ClientStream>, Accepted) {
            let connector = TlsConnector::from(Arc::new(client_config(trust, cert, alpn)));
            let client = async {
                let tcp = TcpStream::connect(self.addr).await?;
                let name = ServerName::try_from("localhost").unwrap();
                let mut stream = connector.connect(name, tcp).await?;
                echo(&mut stream, b"ping").await?;
                Ok(stream)
            };
            let client = tokio::time::timeout(WAIT, client)
                .await
                .expect("client hung");
            let accepted = tokio::time::timeout(WAIT, self.handshakes.recv())
                .await
                .expect("no handshake reported")
                .unwrap();
            (client, accepted)
        }
    }

    /// The server certificate a client saw.
    fn served(client: &ClientStream) -> CertificateDer<'static> {
        client.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    #[tokio::test]
    async fn plain_tls_serves_the_certificate_and_negotiates_h2_when_offered() {
        let ca = Ca::new("test CA");
        let server = ca.server();
        let (_dir, config) = setup(&server, None);
        let tls = ServerTls::load(&config, &[H2, HTTP1]).unwrap();
        let mut srv = serve(Arc::new(tls)).await;

        let (client, accepted) = srv.trial(&ca, None, &[H2, HTTP1]).await;
        let client = client.unwrap();
        assert_eq!(served(&client), server.der);
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(H2));
        let (peer, alpn) = accepted.unwrap();
        assert!(peer.is_none(), "no client certificate without mTLS");
        assert_eq!(alpn.as_deref(), Some(H2));

        // ALPN follows the client's offer: HTTP/1.1 alone gets HTTP/1.1.
        let (client, accepted) = srv.trial(&ca, None, &[HTTP1]).await;
        assert_eq!(client.unwrap().get_ref().1.alpn_protocol(), Some(HTTP1));
        assert_eq!(accepted.unwrap().1.as_deref(), Some(HTTP1));
    }

    #[tokio::test]
    async fn a_client_certificate_maps_to_a_tenant_by_each_field() {
        let ca = Ca::new("client CA");
        let server = ca.server();
        let client = writer(&ca);
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases = [
            (CertField::CommonName, map(&[]), "svc-cn"),
            (CertField::Organization, map(&[]), "acme-org"),
            (CertField::DnsSan, map(&[]), "svc-dns.example"),
            (
                CertField::UriSan,
                map(&[("spiffe://example.org/ns/prod/sa/writer", "prod-writers")]),
                "prod-writers",
            ),
            (
                CertField::EmailSan,
                map(&[("writer@acme.example", "acme")]),
                "acme",
            ),
            (
                CertField::CommonName,
                map(&[("svc-cn", "from-the-map"), ("svc-other", "other")]),
                "from-the-map",
            ),
        ];
        for (field, tenants, tenant) in cases {
            let (_dir, mut config) = setup(&server, Some(&ca));
            config.tenant_from = Some(field);
            config.tenants = tenants;
            let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
            let (stream, accepted) = srv.trial(&ca, Some(&client), &[H2]).await;
            stream.unwrap();
            let peer = accepted.unwrap().0.expect("a peer certificate");
            assert_eq!(peer.leaf(), &client.der);
            let identity = peer.identity().unwrap().expect("an identity");
            assert_eq!(identity.access, Access::Tenant(tenant.into()), "{field:?}");
            assert!(
                identity.subject.starts_with("certificate CN=svc-cn"),
                "{}",
                identity.subject
            );
        }
    }

    #[tokio::test]
    async fn without_tenant_from_a_client_certificate_only_gates_the_connection() {
        let ca = Ca::new("client CA");
        let server = ca.server();
        let client = writer(&ca);
        let (_dir, config) = setup(&server, Some(&ca));
        let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
        let (stream, accepted) = srv.trial(&ca, Some(&client), &[H2]).await;
        stream.unwrap();
        let peer = accepted.unwrap().0.expect("a peer certificate");
        assert_eq!(peer.leaf(), &client.der);
        assert_eq!(peer.identity().unwrap(), None);
    }

    #[tokio::test]
    async fn a_value_that_maps_to_no_tenant_is_unmapped_and_named() {
        let ca = Ca::new("client CA");
        let server = ca.server();
        let client = writer(&ca);
        let (_dir, mut config) = setup(&server, Some(&ca));
        config.tenant_from = Some(CertField::CommonName);
        config.tenants = [("svc-other".to_owned(), "other".to_owned())].into();
        let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
        let (stream, accepted) = srv.trial(&ca, Some(&client), &[H2]).await;
        stream.expect("an unmapped certificate still completes the handshake");
        let peer = accepted.unwrap().0.expect("a peer certificate");
        let err = peer.identity().unwrap_err();
        assert!(
            matches!(&err, AuthError::Unmapped(m) if m.contains("\"svc-cn\"")),
            "{err}"
        );
        assert_eq!(err.reason(), "unmapped");
    }

    /// Settings for [`TlsConfig::identify`] alone (no files are read).
    fn mapping(tenant_from: CertField) -> TlsConfig {
        TlsConfig {
            cert_file: "unused".into(),
            key_file: "unused".into(),
            client_ca_file: Some("unused".into()),
            client_auth: ClientAuth::Required,
            tenant_from: Some(tenant_from),
            tenants: BTreeMap::new(),
        }
    }

    fn unmapped(config: &TlsConfig, leaf: &[u8]) -> String {
        match config.identify(leaf) {
            Err(AuthError::Unmapped(message)) => message,
            other => panic!("expected Unmapped, got {other:?}"),
        }
    }

    #[test]
    fn values_that_are_no_tenant_names_absent_fields_and_ambiguous_subjects_are_unmapped() {
        let ca = Ca::new("client CA");
        let client = writer(&ca);
        let mut config = mapping(CertField::UriSan);
        // A URI is no tenant name by itself: it needs the map.
        let message = unmapped(&config, &client.der);
        assert!(
            message.contains("spiffe://example.org/ns/prod/sa/writer"),
            "{message}"
        );

        // A certificate without the field.
        let bare = ca.client(&[(DnType::CommonName, "bare")], vec![]);
        config.tenant_from = Some(CertField::EmailSan);
        let message = unmapped(&config, &bare.der);
        assert!(message.contains("no e-mail SAN"), "{message}");
        config.tenant_from = Some(CertField::Organization);
        assert!(unmapped(&config, &bare.der).contains("no O"));

        // Two CNs (rcgen writes one per type, so the O of a certificate is
        // turned into a second CN; the signature no longer matters here).
        let two = ca.client(
            &[
                (DnType::CommonName, "tenant-a"),
                (DnType::OrganizationName, "tenant-b"),
            ],
            vec![],
        );
        let o_value = [&[0x55, 0x04, 0x0a, 0x0c, 8][..], b"tenant-b"].concat();
        let mut der = two.der.to_vec();
        let at = der
            .windows(o_value.len())
            .position(|w| w == o_value)
            .expect("the subject's O");
        der[at + 2] = 0x03; // id-at-organizationName → id-at-commonName
        config.tenant_from = Some(CertField::CommonName);
        assert_eq!(
            config.identify(&two.der).unwrap().unwrap().access,
            Access::Tenant("tenant-a".into())
        );
        let message = unmapped(&config, &der);
        assert!(message.contains("2 CNs"), "{message}");
    }

    #[test]
    fn control_characters_in_a_certificate_are_escaped_in_subjects_and_messages() {
        let ca = Ca::new("client CA");
        let forged = ca.client(&[(DnType::CommonName, "svc\nFAKE LOG LINE")], vec![]);
        let mut config = mapping(CertField::CommonName);
        config.tenants = [("svc\nFAKE LOG LINE".to_owned(), "acme".to_owned())].into();
        let identity = config.identify(&forged.der).unwrap().unwrap();
        assert_eq!(identity.access, Access::Tenant("acme".into()));
        assert_eq!(identity.subject, "certificate CN=svc\\nFAKE LOG LINE");
        config.tenants.clear();
        let message = unmapped(&config, &forged.der);
        assert!(!message.contains('\n'), "{message}");
    }

    #[tokio::test]
    async fn a_client_certificate_from_an_unknown_ca_fails_the_handshake() {
        let ca = Ca::new("client CA");
        let unknown = Ca::new("unknown CA");
        let server = ca.server();
        let stranger = writer(&unknown);
        for client_auth in [ClientAuth::Required, ClientAuth::Optional] {
            let (_dir, mut config) = setup(&server, Some(&ca));
            config.client_auth = client_auth;
            config.tenant_from = Some(CertField::CommonName);
            let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
            let (stream, accepted) = srv.trial(&ca, Some(&stranger), &[H2]).await;
            assert!(stream.is_err(), "{client_auth:?}: the client got through");
            let err = accepted.expect_err("the server accepted an unknown CA's certificate");
            assert!(
                matches!(
                    err.tls_error(),
                    Some(rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer
                    ))
                ),
                "{client_auth:?}: {err}"
            );
            assert_eq!(err.reason(), "bad_certificate");
        }
    }

    #[tokio::test]
    async fn required_client_auth_refuses_a_client_without_a_certificate() {
        let ca = Ca::new("client CA");
        let (_dir, config) = setup(&ca.server(), Some(&ca));
        let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
        let (stream, accepted) = srv.trial(&ca, None, &[H2]).await;
        assert!(stream.is_err(), "the client got through");
        let err = accepted.expect_err("the server accepted a client without a certificate");
        assert!(
            matches!(
                err.tls_error(),
                Some(rustls::Error::NoCertificatesPresented)
            ),
            "{err}"
        );
        assert_eq!(err.reason(), "no_certificate");
    }

    #[tokio::test]
    async fn optional_client_auth_lets_a_client_without_a_certificate_in_with_no_peer() {
        let ca = Ca::new("client CA");
        let (_dir, mut config) = setup(&ca.server(), Some(&ca));
        config.client_auth = ClientAuth::Optional;
        config.tenant_from = Some(CertField::CommonName);
        let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
        let (stream, accepted) = srv.trial(&ca, None, &[H2]).await;
        stream.unwrap();
        assert!(accepted.unwrap().0.is_none());
        // One that does present a certificate is still mapped.
        let (stream, accepted) = srv.trial(&ca, Some(&writer(&ca)), &[H2]).await;
        stream.unwrap();
        let peer = accepted.unwrap().0.expect("a peer certificate");
        assert_eq!(
            peer.identity().unwrap().unwrap().access,
            Access::Tenant("svc-cn".into())
        );
    }

    #[tokio::test]
    async fn reload_serves_a_new_certificate_to_new_connections_only() {
        let ca = Ca::new("test CA");
        let old = ca.server();
        let (_dir, config) = setup(&old, None);
        let tls = Arc::new(ServerTls::load(&config, &[H2]).unwrap());
        let mut srv = serve(tls.clone()).await;
        let (first, _) = srv.trial(&ca, None, &[H2]).await;
        let mut first = first.unwrap();
        assert_eq!(served(&first), old.der);

        let new = ca.server();
        assert_ne!(new.der, old.der);
        std::fs::write(&config.cert_file, &new.pem).unwrap();
        std::fs::write(&config.key_file, &new.key_pem).unwrap();
        tls.reload().unwrap();

        let (second, _) = srv.trial(&ca, None, &[H2]).await;
        assert_eq!(served(&second.unwrap()), new.der);
        // The connection opened before the reload carries on.
        echo(&mut first, b"still here").await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_old_certificate_in_force() {
        let ca = Ca::new("test CA");
        let old = ca.server();
        let (_dir, config) = setup(&old, None);
        let tls = Arc::new(ServerTls::load(&config, &[H2]).unwrap());
        let mut srv = serve(tls.clone()).await;
        let new = ca.server();

        // A key file that holds no key.
        std::fs::write(&config.key_file, "not a key\n").unwrap();
        let err = tls.reload().unwrap_err();
        assert!(
            matches!(&err, TlsError::NoKey { file } if *file == config.key_file),
            "{err}"
        );
        let (client, _) = srv.trial(&ca, None, &[H2]).await;
        assert_eq!(served(&client.unwrap()), old.der);

        // The new certificate in place before its key (a rotation caught
        // half-way): the old key does not match it.
        std::fs::write(&config.key_file, &old.key_pem).unwrap();
        std::fs::write(&config.cert_file, &new.pem).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let (client, _) = srv.trial(&ca, None, &[H2]).await;
        assert_eq!(served(&client.unwrap()), old.der);

        // Once the key follows, the reload goes through.
        std::fs::write(&config.key_file, &new.key_pem).unwrap();
        tls.reload().unwrap();
        let (client, _) = srv.trial(&ca, None, &[H2]).await;
        assert_eq!(served(&client.unwrap()), new.der);
    }

    #[tokio::test]
    async fn reload_with_new_settings_maps_new_connections_by_them() {
        let ca = Ca::new("client CA");
        let client = writer(&ca);
        let (_dir, mut config) = setup(&ca.server(), Some(&ca));
        config.tenant_from = Some(CertField::CommonName);
        let tls = Arc::new(ServerTls::load(&config, &[H2]).unwrap());
        let mut srv = serve(tls.clone()).await;
        let tenant = |accepted: Accepted| {
            let peer = accepted.unwrap().0.expect("a peer certificate");
            peer.identity().unwrap().expect("an identity").access
        };
        let (_, accepted) = srv.trial(&ca, Some(&client), &[H2]).await;
        assert_eq!(tenant(accepted), Access::Tenant("svc-cn".into()));

        // A tenant map added on reload.
        let mut mapped = config.clone();
        mapped.tenants = [("svc-cn".to_owned(), "acme".to_owned())].into();
        tls.reload_with(&mapped).unwrap();
        assert_eq!(tls.config(), mapped);
        let (_, accepted) = srv.trial(&ca, Some(&client), &[H2]).await;
        assert_eq!(tenant(accepted), Access::Tenant("acme".into()));

        // Settings that do not load change nothing.
        let mut broken = mapped.clone();
        broken.tenants = [("svc-cn".to_owned(), "not a tenant".to_owned())].into();
        assert!(matches!(tls.reload_with(&broken), Err(TlsError::Config(_))));
        broken = TlsConfig {
            client_ca_file: Some(config.cert_file.with_file_name("missing.pem")),
            tenants: BTreeMap::new(),
            ..mapped.clone()
        };
        assert!(matches!(
            tls.reload_with(&broken),
            Err(TlsError::Read { .. })
        ));
        assert_eq!(tls.config(), mapped);
        let (_, accepted) = srv.trial(&ca, Some(&client), &[H2]).await;
        assert_eq!(tenant(accepted), Access::Tenant("acme".into()));
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_the_handshake_is_dropped_at_the_timeout() {
        let ca = Ca::new("test CA");
        let (_dir, config) = setup(&ca.server(), None);
        let tls = ServerTls::load(&config, &[H2]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut silent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();

        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let result = tokio::time::timeout(WAIT, tls.accept(tcp, timeout))
            .await
            .expect("the handshake was not bounded");
        let took = started.elapsed();
        let err = result.expect_err("a handshake with a silent client");
        assert!(
            matches!(err, HandshakeError::TimedOut(t) if t == timeout),
            "{err}"
        );
        assert_eq!(err.reason(), "timeout");
        assert!(took >= timeout && took < timeout * 5, "{took:?}");
        // The connection is closed, not left open.
        let mut buf = [0; 1];
        let read = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    }

    #[tokio::test]
    async fn an_sec1_key_is_read() {
        let ca = Ca::new("test CA");
        let server = ca.server();
        // A SEC1 ECPrivateKey is the inner key of the PKCS#8 rcgen writes.
        let (_, pkcs8) = x509_parser::der_parser::parse_der(&server.key_pkcs8).unwrap();
        let sec1 = pkcs8.as_sequence().unwrap()[2].as_slice().unwrap().to_vec();
        let (_dir, config) = setup(&server, None);
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            BASE64_STANDARD.encode(sec1)
        );
        std::fs::write(&config.key_file, pem).unwrap();
        assert!(matches!(
            private_key(&config.key_file).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        let mut srv = serve(Arc::new(ServerTls::load(&config, &[H2]).unwrap())).await;
        let (client, _) = srv.trial(&ca, None, &[H2]).await;
        assert_eq!(served(&client.unwrap()), server.der);
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let ca = Ca::new("test CA");
        let server = ca.server();
        let other = ca.server();
        let load = |config: &TlsConfig| ServerTls::load(config, &[H2]).unwrap_err();
        let names = |err: &TlsError, file: &Path| {
            let message = err.to_string();
            assert!(
                message.contains(&file.display().to_string()),
                "{message:?} does not name {}",
                file.display()
            );
        };

        let (dir, config) = setup(&server, None);
        let missing = TlsConfig {
            cert_file: dir.path().join("missing.pem"),
            ..config.clone()
        };
        let err = load(&missing);
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        names(&err, &missing.cert_file);

        let keyless = TlsConfig {
            key_file: config.cert_file.clone(),
            ..config.clone()
        };
        let err = load(&keyless);
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        names(&err, &config.cert_file);

        let certless = TlsConfig {
            cert_file: config.key_file.clone(),
            ..config.clone()
        };
        let err = load(&certless);
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        names(&err, &config.key_file);

        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = load(&TlsConfig {
            cert_file: broken.clone(),
            ..config.clone()
        });
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        names(&err, &broken);

        let mismatched = TlsConfig {
            key_file: write(dir.path(), "other-key.pem", &other.key_pem),
            ..config.clone()
        };
        let err = load(&mismatched);
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        names(&err, &mismatched.key_file);
        names(&err, &mismatched.cert_file);

        // A client CA file with no certificate, or with a leaf in it.
        for (name, contents) in [("empty-ca.pem", ""), ("leaf-ca.pem", other.pem.as_str())] {
            let with_ca = TlsConfig {
                client_ca_file: Some(write(dir.path(), name, contents)),
                ..config.clone()
            };
            let err = load(&with_ca);
            assert!(matches!(err, TlsError::NoCa { .. }), "{err}");
            names(&err, with_ca.client_ca_file.as_deref().unwrap());
        }
        let ca_and_leaf = format!("{}{}", ca.pem, other.pem);
        let err = load(&TlsConfig {
            client_ca_file: Some(write(dir.path(), "mixed-ca.pem", ca_and_leaf)),
            ..config.clone()
        });
        assert!(
            err.to_string()
                .contains("certificate 2 (CN=localhost) is not a CA"),
            "{err}"
        );

        // Settings that contradict each other.
        let err = load(&TlsConfig {
            tenant_from: Some(CertField::CommonName),
            ..config.clone()
        });
        assert!(err.to_string().contains("need client_ca_file"), "{err}");
        let with_ca = TlsConfig {
            client_ca_file: Some(write(dir.path(), "ca.pem", &ca.pem)),
            ..config.clone()
        };
        ServerTls::load(&with_ca, &[H2]).expect("a good client CA file");
        let err = load(&TlsConfig {
            tenants: [("svc".to_owned(), "acme".to_owned())].into(),
            ..with_ca.clone()
        });
        assert!(err.to_string().contains("tenant_from is not"), "{err}");
        let err = load(&TlsConfig {
            tenant_from: Some(CertField::CommonName),
            tenants: [("svc".to_owned(), "no spaces".to_owned())].into(),
            ..with_ca.clone()
        });
        assert!(matches!(err, TlsError::Config(_)), "{err}");
        assert!(err.to_string().contains("\"no spaces\""), "{err}");
    }
}
