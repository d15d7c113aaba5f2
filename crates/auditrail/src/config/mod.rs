//! The TOML config file.
//!
//! Every table denies unknown keys, so a typo is an error that names the key
//! and its line instead of a setting that silently does nothing. `${VAR}` is
//! replaced by the environment variable `VAR` before parsing, for secrets.
//! Who may do what (tokens, OIDC, TLS, rate limits) is in [`auth`]; what
//! sensitive values become before they are stored, in [`redaction`].

pub mod auth;
pub mod detection;
pub mod redaction;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditrail_exporters::SinkConfig;
use bytesize::ByteSize;
use serde::Deserialize;

use self::auth::{
    is_loopback, OidcSection, RateLimitSection, SecretSource, TlsSection, WriterToken,
};
use self::detection::{DetectionSection, SilenceEntry};
use self::redaction::{CaptureSection, RedactionSection};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: environment variable `{name}` is not set")]
    MissingEnv {
        path: PathBuf,
        line: usize,
        name: String,
    },
    #[error("{path}:{line}: `${{` is not closed by `}}`")]
    UnclosedEnv { path: PathBuf, line: usize },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub receiver: ReceiverSection,
    pub admin: AdminSection,
    pub spool: SpoolSection,
    pub query: QuerySection,
    /// `[integrity]`: the checkpoint signing key and how often it signs.
    pub integrity: IntegritySection,
    /// `[oidc]`: JWTs from an OpenID Connect issuer (see [`auth::OidcSection`]).
    pub oidc: Option<OidcSection>,
    /// `[[sinks]]`: see `auditrail_exporters::SinkConfig`.
    pub sinks: Vec<SinkConfig>,
    /// `[redaction]`: HMAC keys and redaction rules.
    pub redaction: RedactionSection,
    /// `[capture]`: capture levels and the body size cap.
    pub capture: CaptureSection,
    /// `[detection]`: threshold rules and the alert webhook.
    pub detection: DetectionSection,
    /// `[[silence]]`: services that must keep sending.
    pub silence: Vec<SilenceEntry>,
    /// SHA-256 (hex) of the config file as read, before `${VAR}`
    /// interpolation: what the trail records when the config changes.
    #[serde(skip)]
    pub source_sha256: String,
    /// The config file's path; empty for the built-in defaults.
    #[serde(skip)]
    pub source_path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Written into every event this node stores; defaults to the host name.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverSection {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub max_request_bytes: ByteSize,
    /// Most log records in one request (more: 413 / RESOURCE_EXHAUSTED).
    pub max_records_per_request: usize,
    /// Refuse a request whose records, each counted with its resource and
    /// scope, come to more than this many times the request's size.
    pub max_request_expansion: u32,
    /// Largest event; a record whose event would be larger is rejected in
    /// `partial_success`.
    pub max_event_bytes: ByteSize,
    /// Bytes all requests being mapped and stored may hold at once; above it
    /// 429 / RESOURCE_EXHAUSTED with a retry hint.
    pub max_in_flight_bytes: ByteSize,
    /// OTLP/HTTP: time allowed for a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request body (gRPC: the whole call).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// HTTP/2 ping and TCP keepalive interval.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A connection whose peer does not answer an HTTP/2 ping within this is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// What a refused client is told to wait before retrying.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Events whose time is further than this from when they were received
    /// are counted and flagged with `audit.clock_skew_ns`; `"0s"`: never.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// `[[receiver.tokens]]`: writers' tokens, each with its tenant.
    pub tokens: Vec<WriterToken>,
    /// Accept events from anyone on a non-loopback address, with no
    /// credential (every writer is the `default` tenant).
    pub allow_unauthenticated: bool,
    /// `[receiver.tls]`: TLS on both OTLP listeners.
    pub tls: Option<TlsSection>,
    /// `[receiver.rate_limit]`: events/s and bytes/s per tenant.
    pub rate_limit: Option<RateLimitSection>,
}

impl ReceiverSection {
    /// The receiver's limits (the tenant is the receiver's default).
    pub fn receiver_config(&self) -> auditrail_receiver::ReceiverConfig {
        auditrail_receiver::ReceiverConfig {
            max_request_bytes: self.max_request_bytes.as_u64() as usize,
            max_records_per_request: self.max_records_per_request,
            max_request_expansion: self.max_request_expansion,
            max_event_bytes: self.max_event_bytes.as_u64() as usize,
            max_in_flight_bytes: self.max_in_flight_bytes.as_u64() as usize,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            retry_after: self.retry_after,
            max_clock_skew: self.max_clock_skew,
            rate_limits: self
                .rate_limit
                .as_ref()
                .map(RateLimitSection::to_rate_limits)
                .unwrap_or_default(),
        }
    }
}

impl Default for ReceiverSection {
    fn default() -> Self {
        ReceiverSection {
            grpc_addr: ([127, 0, 0, 1], 4317).into(),
            http_addr: ([127, 0, 0, 1], 4318).into(),
            max_request_bytes: ByteSize::mib(16),
            max_records_per_request: 65_536,
            max_request_expansion: 32,
            max_event_bytes: ByteSize::mib(1),
            max_in_flight_bytes: ByteSize::mib(256),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            retry_after: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(300),
            tokens: Vec::new(),
            allow_unauthenticated: false,
            tls: None,
            rate_limit: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub addr: SocketAddr,
    /// The environment variable holding the operator's token, who reads
    /// every tenant's events and may change state.
    pub token_env: Option<String>,
    /// Or a file holding it (one or more, one per line; read again on SIGHUP).
    pub token_file: Option<PathBuf>,
    /// Refused: a token is never written in the config.
    token: Option<toml::Value>,
    /// Serve the admin API on a non-loopback address with no credential.
    pub allow_unauthenticated: bool,
    /// A listener of its own for `/metrics`, `/healthz` and `/readyz`, open
    /// to whoever reaches it (for Prometheus and probes), so exposing them
    /// does not expose queries.
    pub metrics_addr: Option<SocketAddr>,
    /// `[admin.tls]`: TLS on the admin listener.
    pub tls: Option<TlsSection>,
    /// Most events one `/v1/events` page may ask for (`limit`); more is a
    /// 400. `limit=0` streams instead.
    pub max_page_size: usize,
    /// Most stored events one `/v1/events` request may decode and check.
    pub max_scan_events: u64,
    /// `/v1/events` requests running at once; more get 429.
    pub max_concurrent_queries: usize,
    /// How long one `/v1/events` request (a stream included) may run.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Record each `/v1/` request that passes authentication in the trail
    /// (`auditrail.admin.request`: who asked for what).
    pub record_requests: bool,
}

impl AdminSection {
    /// Where the operator's token comes from.
    pub fn secret(&self) -> SecretSource {
        SecretSource {
            token_env: self.token_env.clone(),
            token_file: self.token_file.clone(),
            inline: self.token.is_some(),
        }
    }

    /// What one query may cost.
    pub fn query_limits(&self) -> crate::events_api::QueryLimits {
        crate::events_api::QueryLimits {
            max_page_size: self.max_page_size,
            max_scan_events: self.max_scan_events,
            max_concurrent_queries: self.max_concurrent_queries,
            query_timeout: self.query_timeout,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        let limits = crate::events_api::QueryLimits::default();
        AdminSection {
            addr: ([127, 0, 0, 1], 8686).into(),
            token_env: None,
            token_file: None,
            token: None,
            allow_unauthenticated: false,
            metrics_addr: None,
            tls: None,
            max_page_size: limits.max_page_size,
            max_scan_events: limits.max_scan_events,
            max_concurrent_queries: limits.max_concurrent_queries,
            query_timeout: limits.query_timeout,
            record_requests: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub dir: PathBuf,
    pub max_disk: ByteSize,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// sled's page cache.
    pub cache: ByteSize,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: PathBuf::from("auditrail-data"),
            max_disk: ByteSize::gib(20),
            retention: Duration::from_secs(7 * 24 * 3600),
            cache: ByteSize::mib(256),
            gc_interval: Duration::from_secs(60),
        }
    }
}

/// `[integrity]`: signed checkpoints of the spool's Merkle tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegritySection {
    /// The ed25519 signer key, as `auditrail keygen` writes it. Without
    /// one the tree is kept but no checkpoint is signed.
    pub key_file: Option<PathBuf>,
    /// Sign once this many events are not covered by a checkpoint...
    pub checkpoint_every: u64,
    /// ...or once the oldest of them waited this long.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for IntegritySection {
    fn default() -> Self {
        IntegritySection {
            key_file: None,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerySection {
    /// A link to the trace viewer, with `{trace_id}` where the id goes, e.g.
    /// `http://127.0.0.1:16686/trace/{trace_id}` (Jaeger).
    pub trace_url: Option<String>,
}

impl Config {
    /// Reads, interpolates, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&raw, path, |name| std::env::var(name).ok())
    }

    pub fn parse(
        raw: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = interpolate(raw, path, env)?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        config.source_path = path.display().to_string();
        config.source_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes()));
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        // The upper bound keeps every field of an event, and every batch
        // value, far below the 4 GiB that canonical bytes can frame.
        let max_request = self.receiver.max_request_bytes.as_u64();
        if !(1024..=1 << 30).contains(&max_request) {
            return Err("receiver.max_request_bytes must be between 1KiB and 1GiB".into());
        }
        let r = &self.receiver;
        if !(1024..=auditrail_model::MAX_EVENT_BYTES as u64).contains(&r.max_event_bytes.as_u64()) {
            return Err("receiver.max_event_bytes must be between 1KiB and 1GiB".into());
        }
        if r.max_records_per_request == 0 {
            return Err("receiver.max_records_per_request must be at least 1".into());
        }
        if r.max_request_expansion == 0 {
            return Err("receiver.max_request_expansion must be at least 1".into());
        }
        if r.max_in_flight_bytes < r.max_request_bytes {
            return Err(
                "receiver.max_in_flight_bytes must be at least receiver.max_request_bytes \
                 (or the largest requests could never be taken)"
                    .into(),
            );
        }
        for (key, value) in [
            ("header_read_timeout", r.header_read_timeout),
            ("body_read_timeout", r.body_read_timeout),
            ("keepalive_interval", r.keepalive_interval),
            ("keepalive_timeout", r.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("receiver.{key} must be longer than 0s"));
            }
        }
        if self.receiver.grpc_addr == self.receiver.http_addr
            || self.receiver.grpc_addr == self.admin.addr
            || self.receiver.http_addr == self.admin.addr
        {
            return Err("receiver.grpc_addr, receiver.http_addr and admin.addr must differ".into());
        }
        let a = &self.admin;
        for (key, value) in [
            ("max_page_size", a.max_page_size as u64),
            ("max_scan_events", a.max_scan_events),
            ("max_concurrent_queries", a.max_concurrent_queries as u64),
        ] {
            if value == 0 {
                return Err(format!("admin.{key} must be at least 1"));
            }
        }
        if a.query_timeout.is_zero() {
            return Err("admin.query_timeout must be longer than 0s".into());
        }
        self.validate_auth()?;
        self.redaction
            .validate(&self.capture, &self.writer_tenants())?;
        self.detection.validate(&self.silence)?;
        if self.spool.retention.is_zero() {
            return Err("spool.retention must be longer than 0s".into());
        }
        if self.spool.gc_interval.is_zero() {
            return Err("spool.gc_interval must be longer than 0s".into());
        }
        if let Some(id) = &self.node.id {
            if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_whitespace()) {
                return Err("node.id must be 1 to 64 characters without spaces".into());
            }
        }
        if let Some(template) = &self.query.trace_url {
            if !template.contains("{trace_id}") {
                return Err("query.trace_url must contain {trace_id}".into());
            }
        }
        if self.integrity.checkpoint_every == 0 {
            return Err("integrity.checkpoint_every must be at least 1".into());
        }
        if self.integrity.checkpoint_interval.is_zero() {
            return Err("integrity.checkpoint_interval must be longer than 0s".into());
        }
        if let Some(path) = &self.integrity.key_file {
            crate::integrity::read_signer(path)?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if !names.insert(&sink.name) {
                return Err(format!("sinks[{i}]: name {:?} is used twice", sink.name));
            }
        }
        Ok(())
    }

    /// Whether writers must authenticate: some credential that names a
    /// tenant is configured (a writer token, OIDC, or client certificates
    /// that name tenants).
    pub fn writers_authenticate(&self) -> bool {
        !self.receiver.tokens.is_empty()
            || self.oidc.is_some()
            || self
                .receiver
                .tls
                .as_ref()
                .is_some_and(|tls| tls.tenant_from.is_some())
    }

    /// The tenants the config names as writers: those of writer tokens,
    /// of client certificates and of OIDC roles, and `default` when writers
    /// need not authenticate. (A tenant from an OIDC claim is known only
    /// when it writes.)
    pub fn writer_tenants(&self) -> std::collections::BTreeSet<String> {
        let mut tenants: std::collections::BTreeSet<String> = self
            .receiver
            .tokens
            .iter()
            .map(|t| t.tenant.clone())
            .collect();
        if let Some(tls) = &self.receiver.tls {
            tenants.extend(tls.tenants.values().cloned());
        }
        if let Some(oidc) = &self.oidc {
            tenants.extend(oidc.roles.iter().filter_map(|r| r.tenant.clone()));
        }
        if !self.writers_authenticate() {
            tenants.insert(auditrail_model::id::DEFAULT_TENANT.to_owned());
        }
        tenants
    }

    /// What is valid but likely not meant, for `check-config` and start-up
    /// to say.
    pub fn warnings(&self) -> Vec<String> {
        self.redaction.warnings()
    }

    /// Whether admin API callers must authenticate: an operator token,
    /// writer tokens (which read their tenant) or OIDC is configured.
    pub fn admin_authenticates(&self) -> bool {
        self.admin.secret().is_set() || !self.receiver.tokens.is_empty() || self.oidc.is_some()
    }

    /// The credentials, and the safe defaults: with no credential a
    /// listener stays on loopback unless `allow_unauthenticated` says
    /// otherwise.
    fn validate_auth(&self) -> Result<(), String> {
        for (i, token) in self.receiver.tokens.iter().enumerate() {
            let what = format!("receiver.tokens[{i}]");
            auditrail_auth::check_tenant(&token.tenant).map_err(|e| format!("{what}: {e}"))?;
            token.secret().validate(&what, true)?;
        }
        self.admin.secret().validate("admin", false)?;
        if let Some(tls) = &self.receiver.tls {
            tls.validate("receiver.tls")?;
        }
        if let Some(tls) = &self.admin.tls {
            tls.validate("admin.tls")?;
            if tls.tenant_from.is_some() {
                return Err(
                    "admin.tls.tenant_from: client certificates gate the admin listener but name \
                     no reader; readers authenticate with tokens or OIDC"
                        .into(),
                );
            }
        }
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        if let Some(rate) = &self.receiver.rate_limit {
            rate.validate()?;
        }
        if !self.writers_authenticate() && !self.receiver.allow_unauthenticated {
            for (key, addr) in [
                ("receiver.grpc_addr", self.receiver.grpc_addr),
                ("receiver.http_addr", self.receiver.http_addr),
            ] {
                if !is_loopback(&addr) {
                    return Err(format!(
                        "{key} {addr} is reachable from other hosts, but no writer must \
                         authenticate: configure [[receiver.tokens]] (or [oidc], or \
                         receiver.tls.tenant_from), or set receiver.allow_unauthenticated = true \
                         to take anyone's events"
                    ));
                }
            }
        }
        if !self.admin_authenticates()
            && !self.admin.allow_unauthenticated
            && !is_loopback(&self.admin.addr)
        {
            return Err(format!(
                "admin.addr {} is reachable from other hosts, but no reader must authenticate: \
                 set admin.token_env (or [[receiver.tokens]], or [oidc]), or set \
                 admin.allow_unauthenticated = true to let anyone read every event",
                self.admin.addr
            ));
        }
        if let Some(metrics) = self.admin.metrics_addr {
            if [
                self.admin.addr,
                self.receiver.grpc_addr,
                self.receiver.http_addr,
            ]
            .contains(&metrics)
            {
                return Err(
                    "admin.metrics_addr must differ from the other listen addresses".into(),
                );
            }
        }
        Ok(())
    }

    pub fn node_id(&self) -> String {
        self.node
            .id
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The exporter of `sink`, built as the delivery loop builds it (its
    /// own checks run; nothing is connected).
    pub fn build_sink(
        &self,
        sink: &SinkConfig,
    ) -> Result<std::sync::Arc<dyn auditrail_exporters::Exporter>, auditrail_exporters::ExportError>
    {
        sink.kind.build(&auditrail_exporters::SinkContext {
            name: sink.name.clone(),
            retention: self.spool.retention,
        })
    }
}

/// Replaces `${NAME}` with the environment variable's value.
fn interpolate(
    raw: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(raw.len());
    for (i, line) in raw.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(ConfigError::UnclosedEnv {
                path: path.to_owned(),
                line: i + 1,
            })?;
            let name = &after[..end];
            let value = env(name).ok_or_else(|| ConfigError::MissingEnv {
                path: path.to_owned(),
                line: i + 1,
                name: name.to_owned(),
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), |name| {
            (name == "MYSQL_PASSWORD").then(|| "s3cret".to_string())
        })
    }

    #[test]
    fn design_sketch_parses() {
        let config = parse(
            r#"
[receiver]
grpc_addr = "127.0.0.1:4317"
http_addr = "127.0.0.1:4318"
max_request_bytes = "16MiB"

[admin]
addr = "127.0.0.1:8686"

[spool]
dir = "auditrail-data"
max_disk = "20GiB"
retention = "7d"

[[sinks]]
name = "warehouse"
type = "mysql"
url = "mysql://audit:${MYSQL_PASSWORD}@127.0.0.1:3306/audit"
table = "audit_events"
"#,
        )
        .unwrap();
        assert_eq!(config.receiver.max_request_bytes, ByteSize::mib(16));
        assert_eq!(config.spool.retention, Duration::from_secs(7 * 86400));
        assert!(
            matches!(
                &config.sinks[0].kind,
                auditrail_exporters::SinkKind::Mysql(mysql)
                    if mysql.url == "mysql://audit:s3cret@127.0.0.1:3306/audit"
                        && mysql.table == "audit_events"
            ),
            "{:?}",
            config.sinks[0].kind
        );
        assert_eq!(config.sinks[0].name, "warehouse");
        assert_eq!(
            config.sinks[0].delivery.concurrency, 4,
            "the mysql sink's own default"
        );
    }

    #[test]
    fn sink_keys_are_checked_per_type() {
        let sink = |body: &str| parse(&format!("[[sinks]]\nname = \"w\"\n{body}"));
        let err = sink("type = \"mysql\"\nurl = \"mysql://u@h/db\"\ntabel = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tabel") && err.contains("sink \"w\""), "{err}");
        let err = sink("type = \"carrier_pigeon\"\n").unwrap_err().to_string();
        assert!(
            err.contains("carrier_pigeon") && err.contains("mysql"),
            "{err}"
        );
        let err =
            sink("type = \"mysql\"\nurl = \"mysql://u@h/db\"\n[sinks.delivery]\nconcurrency = 0\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("concurrency"), "{err}");
        let ok = sink("type = \"mysql\"\nurl = \"mysql://u@h/db\"\n[sinks.delivery]\nmax_events = 100\nlinger = \"1s\"\n[sinks.columns]\nuser_name = \"actor_name\"\n")
            .unwrap();
        assert_eq!(ok.sinks[0].delivery.max_events, 100);
        assert_eq!(
            ok.sinks[0].delivery.concurrency, 4,
            "keys left out keep the sink's defaults"
        );
        assert_eq!(ok.sinks[0].delivery.linger, Duration::from_secs(1));
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = parse("").unwrap();
        assert_eq!(config.receiver.grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(config.receiver.http_addr.to_string(), "127.0.0.1:4318");
        assert_eq!(config.admin.addr.to_string(), "127.0.0.1:8686");
        assert_eq!(config.spool.dir, PathBuf::from("auditrail-data"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[receiver]\ngrpc_adr = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc_adr"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let err = parse("[spool]\n\nmax_disk = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        let err = parse("[receiver]\nhttp_addr = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("http_addr") || err.contains("nowhere"),
            "{err}"
        );
        let err = parse("[query]\ntrace_url = \"http://jaeger/\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("{trace_id}"), "{err}");
    }

    #[test]
    fn request_limit_is_bounded() {
        let err = parse("[receiver]\nmax_request_bytes = \"2GiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 1KiB and 1GiB"), "{err}");
        assert!(parse(
            "[receiver]\nmax_request_bytes = \"1GiB\"\nmax_in_flight_bytes = \"4GiB\"\n"
        )
        .is_ok());
    }

    #[test]
    fn receiver_limits_have_defaults_and_bounds() {
        let config = parse("").unwrap().receiver.receiver_config();
        assert_eq!(config.max_records_per_request, 65_536);
        assert_eq!(config.max_request_expansion, 32);
        assert_eq!(config.max_event_bytes, 1 << 20);
        assert_eq!(config.max_in_flight_bytes, 256 << 20);
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.body_read_timeout, Duration::from_secs(30));
        let set = parse(
            "[receiver]\nmax_records_per_request = 10\nmax_request_expansion = 4\n\
             max_event_bytes = \"64KiB\"\nmax_in_flight_bytes = \"1GiB\"\nbody_read_timeout = \"2s\"\n",
        )
        .unwrap()
        .receiver
        .receiver_config();
        assert_eq!(
            (set.max_records_per_request, set.max_request_expansion),
            (10, 4)
        );
        assert_eq!(set.max_event_bytes, 64 << 10);
        assert_eq!(set.body_read_timeout, Duration::from_secs(2));
        for (bad, named) in [
            ("max_records_per_request = 0", "max_records_per_request"),
            ("max_request_expansion = 0", "max_request_expansion"),
            ("max_event_bytes = \"2GiB\"", "max_event_bytes"),
            ("max_in_flight_bytes = \"1MiB\"", "max_in_flight_bytes"),
            ("header_read_timeout = \"0s\"", "header_read_timeout"),
        ] {
            let err = parse(&format!("[receiver]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    /// The fuzz target's seed inputs (fuzz/corpus/config) parse or fail
    /// with an error, never a panic.
    #[test]
    fn fuzz_seed_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let _ = parse(&text);
            seen += 1;
        }
        assert!(seen > 0, "no seed inputs in {}", dir.display());
    }

    #[test]
    fn tokens_come_from_the_environment_or_a_file_never_the_config() {
        let ok = parse(
            "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\
             [[receiver.tokens]]\ntenant = \"globex\"\ntoken_file = \"/etc/auditrail/globex.token\"\n\
             [admin]\ntoken_env = \"AUDITRAIL_ADMIN_TOKEN\"\n",
        )
        .unwrap();
        assert!(ok.writers_authenticate() && ok.admin_authenticates());
        for (bad, named) in [
            (
                "[[receiver.tokens]]\ntenant = \"acme\"\ntoken = \"s3cret\"\n",
                "never written in the config",
            ),
            (
                "[admin]\ntoken = \"s3cret\"\n",
                "never written in the config",
            ),
            (
                "[[receiver.tokens]]\ntenant = \"acme\"\n",
                "set token_env or token_file",
            ),
            (
                "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"A\"\ntoken_file = \"f\"\n",
                "not both",
            ),
            (
                "[[receiver.tokens]]\ntenant = \"a b\"\ntoken_env = \"A\"\n",
                "receiver.tokens[0]",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn listeners_without_auth_stay_on_loopback() {
        let err = parse("[receiver]\ngrpc_addr = \"0.0.0.0:4317\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("receiver.grpc_addr") && err.contains("allow_unauthenticated"),
            "{err}"
        );
        assert!(
            parse("[receiver]\ngrpc_addr = \"0.0.0.0:4317\"\nallow_unauthenticated = true\n")
                .is_ok()
        );
        assert!(parse(
            "[receiver]\ngrpc_addr = \"0.0.0.0:4317\"\n[[receiver.tokens]]\ntenant = \"a\"\ntoken_env = \"A\"\n"
        )
        .is_ok());
        let err = parse("[admin]\naddr = \"0.0.0.0:8686\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin.addr") && err.contains("allow_unauthenticated"),
            "{err}"
        );
        assert!(parse("[admin]\naddr = \"0.0.0.0:8686\"\nallow_unauthenticated = true\n").is_ok());
        assert!(parse("[admin]\naddr = \"[::]:8686\"\ntoken_env = \"T\"\n").is_ok());
    }

    #[test]
    fn oidc_and_rate_limits_are_checked() {
        let ok = parse(
            "[oidc]\nissuer = \"https://idp.example\"\naudience = \"auditrail\"\n\
             jwks_url = \"https://idp.example/jwks\"\n[[oidc.roles]]\nclaim = \"groups\"\n\
             value = \"audit-admins\"\noperator = true\n",
        )
        .unwrap();
        assert!(ok.writers_authenticate());
        for (bad, named) in [
            ("[oidc]\nissuer = \"i\"\naudience = \"a\"\ntenant_claim = \"t\"\n", "jwks_url or jwks_file"),
            ("[oidc]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j\"\n", "tenant_claim"),
            (
                "[oidc]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j\"\n[[oidc.roles]]\nclaim = \"g\"\nvalue = \"v\"\n",
                "oidc.roles[0]",
            ),
            ("[receiver.rate_limit]\nevents_per_second = 0\n", "events_per_second"),
            ("[receiver.rate_limit.tenants.\"a b\"]\nevents_per_second = 5\n", "rate_limit.tenants"),
            (
                "[receiver.tls]\ncert_file = \"c\"\nkey_file = \"k\"\ntenant_from = \"common_name\"\n",
                "client_ca_file",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn query_limits_have_defaults_and_bounds() {
        let limits = parse("").unwrap().admin.query_limits();
        assert_eq!(limits.max_page_size, 1000);
        assert_eq!(limits.max_scan_events, 1_000_000);
        assert_eq!(limits.max_concurrent_queries, 4);
        assert_eq!(limits.query_timeout, Duration::from_secs(30));
        let set = parse(
            "[admin]\nmax_page_size = 50\nmax_scan_events = 20000\nmax_concurrent_queries = 1\nquery_timeout = \"2s\"\n",
        )
        .unwrap()
        .admin
        .query_limits();
        assert_eq!(
            (
                set.max_page_size,
                set.max_scan_events,
                set.max_concurrent_queries
            ),
            (50, 20_000, 1)
        );
        assert_eq!(set.query_timeout, Duration::from_secs(2));
        for bad in [
            "max_page_size = 0",
            "max_scan_events = 0",
            "max_concurrent_queries = 0",
            "query_timeout = \"0s\"",
        ] {
            let err = parse(&format!("[admin]\n{bad}\n")).unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains(&format!("admin.{key}")), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_env_is_named() {
        let err = parse("[spool]\ndir = \"${NOPE}\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "test.toml:2: environment variable `NOPE` is not set");
    }
}
