//! Certificates for the TLS and mTLS tests, generated with rcgen and
//! written as PEM files into the test's directory: a CA, a server
//! certificate it signed for `localhost` and 127.0.0.1, client
//! certificates on demand, and an unknown CA (with a client certificate
//! of its own) whose certificates auditrail must refuse.
//!
//! The paths go where users put them:
//! * auditrail's `[receiver.tls]` / `[admin.tls]`: `cert_file` =
//!   [`TestPki::server_cert`], `key_file` = [`TestPki::server_key`],
//!   `client_ca_file` = [`TestPki::ca`];
//! * the Rust OTel SDK (tonic): `ClientTlsConfig::new()
//!   .ca_certificate(Certificate::from_pem(read(&pki.ca)))
//!   .identity(Identity::from_pem(read(&client.cert), read(&client.key)))
//!   .domain_name("localhost")`;
//! * the Python OTel SDK: the environment of [`TestPki::python_env`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
};

/// A client certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and what it signed, as PEM files in one directory.
pub struct TestPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA: what clients trust, and auditrail's `client_ca_file`.
    pub ca: PathBuf,
    /// The server's certificate, for `localhost` and 127.0.0.1.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A CA that auditrail does not know.
    pub unknown_ca: PathBuf,
    /// A client certificate (CN `intruder`) that the unknown CA signed.
    pub unknown_client: ClientCert,
}

impl TestPki {
    /// Generates the CAs and the server certificate into `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        let (issuer, ca) = new_ca(dir, "ca.pem", "auditrail test CA");
        let (unknown, unknown_ca) = new_ca(dir, "unknown-ca.pem", "unknown test CA");
        let server_cert = leaf(
            &issuer,
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().expect("DNS name")),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
        );
        let (server_cert, server_key) = write_pair(dir, "server", server_cert);
        let intruder = leaf(&unknown, "intruder", Vec::new());
        let (cert, key) = write_pair(dir, "unknown-client", intruder);
        TestPki {
            dir: dir.to_owned(),
            issuer,
            ca,
            server_cert,
            server_key,
            unknown_ca,
            unknown_client: ClientCert { cert, key },
        }
    }

    /// A client certificate signed by the CA, subject CN `cn`, with
    /// `dns_sans` as its DNS SANs, written as `<name>.pem` and
    /// `<name>-key.pem`.
    pub fn client(&self, name: &str, cn: &str, dns_sans: &[&str]) -> ClientCert {
        let sans = dns_sans
            .iter()
            .map(|san| SanType::DnsName((*san).try_into().expect("DNS name")))
            .collect();
        let (cert, key) = write_pair(&self.dir, name, leaf(&self.issuer, cn, sans));
        ClientCert { cert, key }
    }

    /// The environment that makes the Python OTel SDK's OTLP exporters
    /// (gRPC and HTTP) trust the CA and, when `client` is given, present
    /// that certificate (mTLS). The endpoint is then
    /// `https://localhost:<port>`, the name the server certificate holds.
    pub fn python_env(&self, client: Option<&ClientCert>) -> Vec<(&'static str, PathBuf)> {
        let mut env = vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", self.ca.clone())];
        if let Some(client) = client {
            env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", client.cert.clone()));
            env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", client.key.clone()));
        }
        env
    }
}

/// A self-signed CA named `cn`, written to `dir/file`.
fn new_ca(dir: &Path, file: &str, cn: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA certificate");
    let path = write(dir, file, &cert.pem());
    (Issuer::new(params, key), path)
}

/// A certificate (PEM) and its key (PKCS#8 PEM), signed by `issuer`.
fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, sans: Vec<SanType>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// A subject with the CN alone.
fn subject(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

/// Writes `<name>.pem` and `<name>-key.pem`.
fn write_pair(dir: &Path, name: &str, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{name}.pem"), &cert),
        write(dir, &format!("{name}-key.pem"), &key),
    )
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}
