//! TLS for auditrail's listeners, with rustls: certificates and keys from
//! files, reloaded on demand (SIGHUP), optional client-certificate
//! verification (mTLS), and the mapping of a client certificate to a
//! tenant.
//!
//! SKELETON: the interface the listeners build against; see the helper
//! brief.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[receiver.tls]` / `[admin.tls]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the CAs that sign client certificates; set = mTLS.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: whether a client must present a certificate.
    pub client_auth: ClientAuth,
    /// Which part of a client certificate names its tenant (receivers).
    pub tenant_from: Option<CertField>,
    /// Optional: that part's value → tenant. Without it the value itself is
    /// the tenant.
    pub tenants: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// A part of a certificate that can name a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject's CN.
    CommonName,
    /// The subject's O.
    Organization,
    /// The first DNS name among the SANs.
    DnsSan,
    /// The first URI among the SANs (e.g. a SPIFFE id).
    UriSan,
    /// The first e-mail address among the SANs.
    EmailSan,
}
