//! The config of who may do what: writers' tokens, the operator's token,
//! OIDC, TLS, rate limits, and the safe defaults that tie them to the
//! listen addresses.
//!
//! Secrets are never written in the config: a token comes from an
//! environment variable (`token_env`) or a file (`token_file`); see
//! [`crate::security`] for reading them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use auditrail_auth::tls::{CertField, ClientAuth, TlsConfig};
use bytesize::ByteSize;
use serde::Deserialize;

/// `[[receiver.tokens]]`: a writer's token, and the tenant it writes as
/// (and may read, on the admin API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterToken {
    pub tenant: String,
    /// The environment variable that holds the token.
    pub token_env: Option<String>,
    /// A file that holds the token (or several, one per line, for
    /// rotation; read again on SIGHUP).
    pub token_file: Option<PathBuf>,
    /// Refused, with a message that says where a token goes instead.
    token: Option<toml::Value>,
}

impl WriterToken {
    pub fn secret(&self) -> SecretSource {
        SecretSource {
            token_env: self.token_env.clone(),
            token_file: self.token_file.clone(),
            inline: self.token.is_some(),
        }
    }
}

/// Where a token comes from: exactly one of `token_env` and `token_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSource {
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `token = "..."` was written in the config: refused.
    pub inline: bool,
}

impl SecretSource {
    /// Checks that at most one source is named (exactly one when
    /// `required`); `what` names the table.
    pub fn validate(&self, what: &str, required: bool) -> Result<(), String> {
        if self.inline {
            return Err(format!(
                "{what}: a token is never written in the config file; put it in an \
                 environment variable (token_env) or a file (token_file)"
            ));
        }
        match (&self.token_env, &self.token_file) {
            (Some(_), Some(_)) => Err(format!("{what}: set token_env or token_file, not both")),
            (None, None) if required => Err(format!("{what}: set token_env or token_file")),
            (Some(name), None) if name.is_empty() => Err(format!("{what}: token_env is empty")),
            _ => Ok(()),
        }
    }

    pub fn is_set(&self) -> bool {
        self.token_env.is_some() || self.token_file.is_some()
    }
}

/// `[receiver.tls]` and `[admin.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CAs that sign client certificates: set, the listener asks for them (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default) or `optional`.
    #[serde(default)]
    pub client_auth: ClientAuthSetting,
    /// Receivers: which part of a client certificate names its tenant:
    /// `common_name`, `organization`, `dns_san`, `uri_san` or `email_san`.
    pub tenant_from: Option<CertFieldSetting>,
    /// Receivers: that part's value → tenant; empty: the value is the tenant.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthSetting {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertFieldSetting {
    CommonName,
    Organization,
    DnsSan,
    UriSan,
    EmailSan,
}

impl TlsSection {
    /// Settings that cannot work together, named with the table.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        self.to_tls_config()
            .validate()
            .map_err(|e| format!("{what}: {e}"))
    }

    pub fn to_tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
            client_auth: match self.client_auth {
                ClientAuthSetting::Required => ClientAuth::Required,
                ClientAuthSetting::Optional => ClientAuth::Optional,
            },
            tenant_from: self.tenant_from.map(|f| match f {
                CertFieldSetting::CommonName => CertField::CommonName,
                CertFieldSetting::Organization => CertField::Organization,
                CertFieldSetting::DnsSan => CertField::DnsSan,
                CertFieldSetting::UriSan => CertField::UriSan,
                CertFieldSetting::EmailSan => CertField::EmailSan,
            }),
            tenants: self.tenants.clone(),
        }
    }
}

/// `[oidc]`: JWTs from an OpenID Connect issuer, for people (the admin API)
/// and service accounts (the receivers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    pub issuer: String,
    /// The `aud` auditrail accepts: one string or a list.
    pub audience: OneOrMany,
    /// The issuer's keys, fetched (https; http only to loopback)...
    pub jwks_url: Option<String>,
    /// ... or read from a file (again on SIGHUP).
    pub jwks_file: Option<PathBuf>,
    /// How often `jwks_url` is fetched again (and at once, at most every
    /// few seconds, when a token names a key not yet known).
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// PEM: CAs trusted for `jwks_url` besides the public roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// A claim whose value is the caller's tenant.
    pub tenant_claim: Option<String>,
    /// Grants by claim value, tried in order before `tenant_claim`.
    #[serde(default)]
    pub roles: Vec<RoleRule>,
}

fn default_jwks_refresh() -> Duration {
    auditrail_auth::oidc::DEFAULT_REFRESH
}

fn default_leeway() -> Duration {
    auditrail_auth::oidc::DEFAULT_LEEWAY
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[oidc.roles]]`: a token whose `claim` holds `value` is the operator
/// (`operator = true`) or reads and writes as `tenant`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub claim: String,
    pub value: String,
    #[serde(default)]
    pub operator: bool,
    pub tenant: Option<String>,
}

impl OidcSection {
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("oidc.issuer must be set".into());
        }
        if self.audience.to_vec().iter().all(String::is_empty) {
            return Err("oidc.audience must name at least one audience".into());
        }
        match (&self.jwks_url, &self.jwks_file) {
            (Some(_), Some(_)) => return Err("oidc: set jwks_url or jwks_file, not both".into()),
            (None, None) => return Err("oidc: set jwks_url or jwks_file".into()),
            (Some(url), None) if !url.starts_with("https://") && !url.starts_with("http://") => {
                return Err(format!("oidc.jwks_url {url:?} is not an http(s) URL"))
            }
            (None, Some(_)) if self.jwks_ca_file.is_some() => {
                return Err("oidc.jwks_ca_file goes with jwks_url".into())
            }
            _ => {}
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            return Err("oidc.jwks_refresh must be at least 1s".into());
        }
        if self.leeway > auditrail_auth::oidc::MAX_LEEWAY {
            return Err(format!(
                "oidc.leeway must be at most {}",
                humantime::format_duration(auditrail_auth::oidc::MAX_LEEWAY)
            ));
        }
        if self.roles.is_empty() && self.tenant_claim.is_none() {
            return Err(
                "oidc: set tenant_claim or [[oidc.roles]], or no token maps to anyone".into(),
            );
        }
        for (i, rule) in self.roles.iter().enumerate() {
            match (rule.operator, &rule.tenant) {
                (true, Some(_)) => {
                    return Err(format!(
                        "oidc.roles[{i}]: operator = true or tenant, not both"
                    ))
                }
                (false, None) => {
                    return Err(format!("oidc.roles[{i}]: set operator = true or tenant"))
                }
                (false, Some(t)) => {
                    auditrail_auth::check_tenant(t).map_err(|e| format!("oidc.roles[{i}]: {e}"))?
                }
                (true, None) => {}
            }
        }
        Ok(())
    }

    pub fn to_oidc_config(&self) -> auditrail_auth::oidc::OidcConfig {
        use auditrail_auth::oidc::{ClaimRule, JwksSource, OidcConfig};
        use auditrail_auth::Access;
        OidcConfig {
            issuer: self.issuer.clone(),
            audiences: self.audience.to_vec(),
            jwks: match (&self.jwks_url, &self.jwks_file) {
                (Some(url), _) => JwksSource::Url {
                    url: url.clone(),
                    refresh: self.jwks_refresh,
                    min_refetch: auditrail_auth::oidc::DEFAULT_MIN_REFETCH,
                    timeout: auditrail_auth::oidc::DEFAULT_TIMEOUT,
                    tls_ca_file: self.jwks_ca_file.clone(),
                },
                (None, Some(file)) => JwksSource::File(file.clone()),
                (None, None) => unreachable!("validated: one of jwks_url and jwks_file"),
            },
            leeway: self.leeway,
            tenant_claim: self.tenant_claim.clone(),
            roles: self
                .roles
                .iter()
                .map(|r| ClaimRule {
                    claim: r.claim.clone(),
                    value: r.value.clone(),
                    grant: match &r.tenant {
                        Some(t) => Access::Tenant(t.clone()),
                        None => Access::Operator,
                    },
                })
                .collect(),
        }
    }
}

/// `[receiver.rate_limit]`: what each tenant may send, so that one tenant
/// at its limit never slows another.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Every tenant's events per second (unset: no limit).
    pub events_per_second: Option<u32>,
    /// Every tenant's request bytes per second, decompressed (unset: no limit).
    pub bytes_per_second: Option<ByteSize>,
    /// How much unused allowance a tenant may save up, as time at its rate.
    #[serde(default = "default_burst", with = "humantime_serde")]
    pub burst: Duration,
    /// Per tenant, instead of the above (a key left out keeps the above).
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantRate>,
}

fn default_burst() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRate {
    pub events_per_second: Option<u32>,
    pub bytes_per_second: Option<ByteSize>,
}

impl RateLimitSection {
    pub fn to_rate_limits(&self) -> auditrail_receiver::RateLimits {
        use auditrail_receiver::Rate;
        let rate = |events: Option<u32>, bytes: Option<ByteSize>| Rate {
            events_per_second: events,
            bytes_per_second: bytes.map(|b| b.as_u64()),
        };
        auditrail_receiver::RateLimits {
            default: rate(self.events_per_second, self.bytes_per_second),
            tenants: self
                .tenants
                .iter()
                .map(|(t, r)| {
                    // A key a tenant leaves out keeps the default.
                    let events = r.events_per_second.or(self.events_per_second);
                    (
                        t.clone(),
                        rate(events, r.bytes_per_second.or(self.bytes_per_second)),
                    )
                })
                .collect(),
            burst: self.burst,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.burst.is_zero() {
            return Err("receiver.rate_limit.burst must be longer than 0s".into());
        }
        let rates = std::iter::once((
            "receiver.rate_limit".to_owned(),
            self.events_per_second,
            self.bytes_per_second,
        ))
        .chain(self.tenants.iter().map(|(t, r)| {
            (
                format!("receiver.rate_limit.tenants.{t}"),
                r.events_per_second,
                r.bytes_per_second,
            )
        }));
        for (what, events, bytes) in rates {
            if events == Some(0) {
                return Err(format!("{what}.events_per_second must be at least 1"));
            }
            if bytes.is_some_and(|b| b.as_u64() == 0) {
                return Err(format!("{what}.bytes_per_second must be at least 1"));
            }
        }
        for tenant in self.tenants.keys() {
            auditrail_auth::check_tenant(tenant)
                .map_err(|e| format!("receiver.rate_limit.tenants: {e}"))?;
        }
        Ok(())
    }
}

/// Whether `addr` can be reached only from this host.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
