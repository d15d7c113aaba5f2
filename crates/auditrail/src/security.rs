//! The config's credentials, made ready for the listeners: tokens read from
//! the environment and from files, OIDC started, certificates loaded; and
//! read again on SIGHUP, so that tokens, keys and certificates rotate
//! without a restart.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use auditrail_auth::oidc::Verifier;
use auditrail_auth::tls::ServerTls;
use auditrail_auth::tokens::{parse_token_file, TokenSet, RECOMMENDED_MIN_LEN};
use auditrail_auth::{Access, Authenticator};

use crate::config::auth::{SecretSource, TlsSection};
use crate::config::Config;

/// Who may do what, for every listener of one `serve`.
pub struct Security {
    /// Writers' tokens (as their tenants), the operator's token, and OIDC.
    pub authenticator: Arc<Authenticator>,
    /// Whether writers must authenticate (see [`Config::writers_authenticate`]).
    pub writers_authenticate: bool,
    /// Whether admin API callers must (see [`Config::admin_authenticates`]).
    pub admin_authenticates: bool,
    /// TLS of the OTLP/gRPC listener (ALPN `h2`).
    pub grpc_tls: Option<Arc<ServerTls>>,
    /// TLS of the OTLP/HTTP listener (ALPN `h2`, `http/1.1`), from the same
    /// files.
    pub http_tls: Option<Arc<ServerTls>>,
    /// TLS of the admin listener.
    pub admin_tls: Option<Arc<ServerTls>>,
    config: Config,
}

const GRPC_ALPN: &[&[u8]] = &[b"h2"];
const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

impl Security {
    /// Reads every token and starts OIDC. A token that cannot be read is an
    /// error that names where it was configured.
    pub async fn load(config: &Config) -> anyhow::Result<Security> {
        let tokens = read_tokens(config)?;
        let oidc = match &config.oidc {
            Some(oidc) => Some(
                Verifier::start(oidc.to_oidc_config())
                    .await
                    .context("starting OIDC")?,
            ),
            None => None,
        };
        let tls = |section: &Option<TlsSection>, alpn, what: &str| -> anyhow::Result<_> {
            section
                .as_ref()
                .map(|tls| {
                    ServerTls::load(&tls.to_tls_config(), alpn)
                        .map(Arc::new)
                        .with_context(|| format!("loading {what}"))
                })
                .transpose()
        };
        Ok(Security {
            authenticator: Arc::new(Authenticator::new(tokens, oidc)),
            writers_authenticate: config.writers_authenticate(),
            admin_authenticates: config.admin_authenticates(),
            grpc_tls: tls(&config.receiver.tls, GRPC_ALPN, "receiver.tls")?,
            http_tls: tls(&config.receiver.tls, HTTP_ALPN, "receiver.tls")?,
            admin_tls: tls(&config.admin.tls, HTTP_ALPN, "admin.tls")?,
            config: config.clone(),
        })
    }

    /// Reads the token files and the OIDC keys again (SIGHUP). What fails
    /// to load is reported and the credentials in force stay as they were.
    pub async fn reload(&self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        match read_tokens(&self.config) {
            Ok(tokens) => {
                tracing::info!(tokens = tokens.len(), "tokens reloaded");
                self.authenticator.replace_tokens(tokens);
            }
            Err(e) => errors.push(e.context("reloading tokens; the old ones stay in force")),
        }
        for (what, tls) in [
            ("receiver.tls (OTLP/gRPC)", &self.grpc_tls),
            ("receiver.tls (OTLP/HTTP)", &self.http_tls),
            ("admin.tls", &self.admin_tls),
        ] {
            if let Some(tls) = tls {
                if let Err(e) = tls.reload() {
                    errors.push(anyhow::Error::new(e).context(format!(
                        "reloading {what}; the old certificate stays in force"
                    )));
                }
            }
        }
        if let Some(oidc) = self.authenticator.oidc() {
            if let Err(e) = oidc.reload().await {
                errors.push(anyhow::Error::new(e).context("reloading the OIDC keys"));
            }
        }
        errors
    }
}

/// Every configured token: writers' as their tenants, the admin's as the
/// operator.
fn read_tokens(config: &Config) -> anyhow::Result<TokenSet> {
    let mut set = TokenSet::new();
    for (i, writer) in config.receiver.tokens.iter().enumerate() {
        let what = format!("receiver.tokens[{i}] (tenant {})", writer.tenant);
        for token in read_secret(&writer.secret(), &what)? {
            set.add(&token, Access::Tenant(writer.tenant.clone()), what.clone())?;
        }
    }
    let admin = config.admin.secret();
    if admin.is_set() {
        for token in read_secret(&admin, "admin (operator)")? {
            set.add(&token, Access::Operator, "admin (operator)")?;
        }
    }
    Ok(set)
}

/// The token(s) a source names.
fn read_secret(source: &SecretSource, what: &str) -> anyhow::Result<Vec<String>> {
    let tokens = match (&source.token_env, &source.token_file) {
        (Some(name), _) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => vec![value.trim().to_owned()],
            Ok(_) => bail!("{what}: environment variable {name} is empty"),
            Err(_) => bail!("{what}: environment variable {name} is not set"),
        },
        (None, Some(path)) => {
            warn_if_readable_by_others(path, what);
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{what}: reading token_file {}", path.display()))?;
            let tokens: Vec<String> = parse_token_file(&text)
                .into_iter()
                .map(str::to_owned)
                .collect();
            if tokens.is_empty() {
                bail!("{what}: token_file {} holds no token", path.display());
            }
            tokens
        }
        (None, None) => Vec::new(),
    };
    for token in &tokens {
        if token.len() < RECOMMENDED_MIN_LEN {
            tracing::warn!(
                what,
                "a token shorter than {RECOMMENDED_MIN_LEN} characters is easy to guess; \
                 use e.g. `openssl rand -hex 32`"
            );
        }
    }
    Ok(tokens)
}

/// Warns when a file holding a secret (a token, an HMAC key) can be read
/// by other users than its owner.
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                what,
                file = %path.display(),
                "the secret's file can be read by other users than its owner; chmod 600 it"
            );
        }
    }
}
