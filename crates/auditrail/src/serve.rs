//! `auditrail serve`: wires the spool, the receivers, retention and the admin
//! server together, and shuts them down in order.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use auditrail_exporters::Pipeline;
use auditrail_receiver::{
    serve_grpc, serve_http, serve_router, Ingest, ListenerSettings, ServerSettings, Writers,
};
use auditrail_spool::{Spool, SpoolConfig};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::admin_auth::AdminAuth;
use crate::config::Config;
use crate::events_api::Queries;
use crate::security::Security;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // First: a SIGTERM during start-up (a supervisor giving up on a slow
    // sink check) then shuts down cleanly, instead of killing the process
    // by the signal's default action.
    let mut signals = ShutdownSignals::install()?;
    let metrics = install_metrics()?;
    let node = config.node_id();
    // Read once: the spool signs with it, the trail notes its verifier key,
    // and `POST /v1/verify` checks with that.
    let signing = crate::integrity::signing(&config)?;
    let verifier = signing
        .as_ref()
        .map(|signing| Arc::new(signing.key.verifier()));
    let spool = open_spool(&config, &node, signing)?;
    tracing::info!(node, dir = %config.spool.dir.display(), last_seq = spool.stats().last_seq, "spool open");
    // Sinks start before the receivers: a misconfigured sink stops the
    // start-up here, before any event is accepted that it could not deliver.
    let started = tokio::select! {
        started = Pipeline::start(spool.clone(), &config.sinks, config.spool.retention) => started,
        signal = signals.shutdown() => {
            tracing::info!(signal, "shutting down during start-up, before any event was accepted");
            return Ok(());
        }
    };
    let pipeline = Arc::new(started.context("starting the sinks")?);
    if let Some(identity) = spool.identity() {
        tracing::info!(node, spool_id = %identity.spool_id, first_seq = identity.first_seq,
            created_unix_nano = identity.created_unix_nano, adopted = identity.adopted, "spool identity");
    }

    let redactor = config.redaction.redactor(&config.capture)?;
    // Before any event is accepted: the trail says first what the node
    // started with, if it differs from the last start.
    crate::operator::record_start(
        &spool,
        start_state(&config, verifier.as_deref(), &redactor),
        crate::operator::now_unix_nano(),
    )
    .await
    .context("recording the config and keys this node starts with")?;
    let security = Arc::new(Security::load(&config).await?);
    announce_auth(&config);
    let writers = Writers::new(
        security.authenticator.clone(),
        security.writers_authenticate,
    );
    announce_redaction(&config, &redactor);
    let ingest = Ingest::new(
        spool.clone(),
        config.receiver.receiver_config(),
        writers,
        redactor,
    );
    let bind = |addr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for {what} on {addr}"))
    };
    let grpc = bind(config.receiver.grpc_addr, "OTLP/gRPC").await?;
    let http = bind(config.receiver.http_addr, "OTLP/HTTP").await?;
    let admin_listener = bind(config.admin.addr, "the admin API").await?;
    let metrics_listener = match config.admin.metrics_addr {
        Some(addr) => Some(bind(addr, "metrics").await?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let state = AdminState {
        spool: spool.clone(),
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        trace_url: config.query.trace_url.clone(),
        queries: Arc::new(Queries::new(config.admin.query_limits())),
        verifier,
        record_requests: config.admin.record_requests,
    };
    // The admin API's auth, for a listener bound to `addr`.
    let admin_auth = |addr: std::net::SocketAddr, listener| AdminAuth {
        authenticator: security.authenticator.clone(),
        required: security.admin_authenticates,
        loopback_listener: addr.ip().is_loopback(),
        allow_unauthenticated: config.admin.allow_unauthenticated,
        listener,
    };
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn({
        let (ingest, tls, stop) = (ingest.clone(), security.grpc_tls.clone(), stopped());
        // auditrail's own gRPC API, beside OTLP on the same listener.
        let (api_state, api_auth) = (
            state.clone(),
            admin_auth(config.receiver.grpc_addr, "grpc_api"),
        );
        let beside = move |otlp| crate::grpc_api::add_to(otlp, api_state, api_auth, stopping);
        async move {
            serve_grpc(grpc, ingest, beside, tls, stop)
                .await
                .context("OTLP/gRPC server")
        }
    });
    servers.spawn({
        let (ingest, tls, stop) = (ingest.clone(), security.http_tls.clone(), stopped());
        async move {
            serve_http(http, ingest, tls, stop)
                .await
                .context("OTLP/HTTP server")
        }
    });
    let admin_settings = |name, tls| ServerSettings {
        listener: ListenerSettings {
            name,
            tls,
            handshake_timeout: config.receiver.header_read_timeout,
            keepalive: config.receiver.keepalive_interval,
        },
        header_read_timeout: config.receiver.header_read_timeout,
        keepalive_interval: config.receiver.keepalive_interval,
        keepalive_timeout: config.receiver.keepalive_timeout,
    };
    servers.spawn({
        let (router, settings, stop) = (
            admin::router(state.clone(), admin_auth(config.admin.addr, "admin")),
            admin_settings("admin", security.admin_tls.clone()),
            stopped(),
        );
        async move {
            serve_router(admin_listener, router, settings, stop)
                .await
                .context("admin server")
        }
    });
    if let Some(listener) = metrics_listener {
        let (router, settings, stop) = (
            admin::operations_router(state.clone()).with_state(state.clone()),
            admin_settings("metrics", None),
            stopped(),
        );
        servers.spawn(async move {
            serve_router(listener, router, settings, stop)
                .await
                .context("metrics server")
        });
    }
    let watch = watch_config(&config)?;
    let mut watching = None;
    if !watch.is_empty() {
        tracing::info!(
            rules = watch.rules.len(),
            silences = watch.silences.len(),
            webhook = watch.webhook.is_some(),
            "detection rules and silence alarms watch the stored events"
        );
        watching = Some(tokio::spawn(crate::watch::run(
            spool.clone(),
            watch,
            stopped(),
        )));
    }
    let housekeeping = tokio::spawn(housekeeping(
        spool.clone(),
        metrics,
        config.spool.gc_interval,
        stopped(),
    ));
    tracing::info!(
        grpc = %config.receiver.grpc_addr,
        http = %config.receiver.http_addr,
        admin = %config.admin.addr,
        "auditrail is serving"
    );

    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                "SIGHUP" => reload(&security, &spool).await,
                signal => {
                    tracing::info!(signal, "shutting down: no new requests, finishing those in flight");
                    break;
                }
            },
            Some(result) = servers.join_next() => {
                // A server that stops on its own is a failure worth exiting for.
                result.context("server task")??;
                bail!("a server stopped unexpectedly");
            }
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(result) = servers.join_next().await {
            result.context("server task")??;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing anyway")
        }
    }
    let _ = housekeeping.await;
    if let Some(watching) = watching {
        let _ = watching.await;
    }
    // What sinks had in flight is sent again after the restart (idempotently).
    pipeline.shutdown().await;
    tokio::task::spawn_blocking(move || spool.close())
        .await
        .context("closing the spool")?
        .context("flushing the spool")?;
    tracing::info!("spool flushed; bye");
    Ok(())
}

/// SIGHUP: reads token files and keys again; what fails keeps the old.
async fn reload(security: &Security, spool: &Spool) {
    tracing::info!("SIGHUP: reloading tokens, keys and certificates");
    let errors = security.reload().await;
    for error in &errors {
        metrics::counter!("auditrail_reload_errors_total").increment(1);
        tracing::error!(error = format!("{error:#}"), "reload failed");
    }
    if errors.is_empty() {
        tracing::info!("reload done");
    }
    let errors: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
    crate::operator::record_reload(spool, &errors, crate::operator::now_unix_nano()).await;
}

/// The config and keys the node starts with, as the trail tracks them.
fn start_state<'a>(
    config: &'a Config,
    verifier: Option<&auditrail_integrity::VerifierKey>,
    redactor: &auditrail_redact::Redactor,
) -> crate::operator::StartState<'a> {
    crate::operator::StartState {
        config_path: if config.source_path.is_empty() {
            "(built-in defaults)"
        } else {
            &config.source_path
        },
        config_sha256: &config.source_sha256,
        signing_key: verifier.map(|key| key.to_string()),
        hmac_keys: redactor.keys().fingerprints(),
    }
}

/// Says at start-up who may write and read, and warns where anyone may.
fn announce_auth(config: &Config) {
    let receivers_local = config.receiver.grpc_addr.ip().is_loopback()
        && config.receiver.http_addr.ip().is_loopback();
    if config.writers_authenticate() {
        tracing::info!(
            tokens = config.receiver.tokens.len(),
            oidc = config.oidc.is_some(),
            "writers authenticate; each event is stored as its credential's tenant"
        );
    } else if receivers_local {
        tracing::info!(
            "no writer credentials configured: OTLP listens on loopback only, \
            and every event is stored as tenant `default`"
        );
    } else {
        tracing::warn!(
            "receiver.allow_unauthenticated: anyone who reaches the OTLP ports \
            can write events, as tenant `default`"
        );
    }
    if config.admin_authenticates() {
        tracing::info!(
            "admin API callers authenticate: the operator token reads every \
            tenant, a writer's token its own"
        );
    } else if config.admin.addr.ip().is_loopback() {
        tracing::info!(
            "no admin credentials configured: the admin API listens on loopback \
            only, and any local user can read every event"
        );
    } else {
        tracing::warn!(
            "admin.allow_unauthenticated: anyone who reaches the admin port can \
            read every event"
        );
    }
}

/// The detection rules, silences and alert webhook of `config`.
fn watch_config(config: &Config) -> anyhow::Result<crate::watch::WatchConfig> {
    let detection = &config.detection;
    let webhook = match &detection.webhook_url {
        None => None,
        Some(url) => {
            let token = match &detection.webhook_token_env {
                None => None,
                Some(name) => Some(std::env::var(name).with_context(|| {
                    format!("detection.webhook_token_env: environment variable {name} is not set")
                })?),
            };
            let client = reqwest::Client::builder()
                .timeout(detection.webhook_timeout)
                .build()
                .context("building the alert webhook's HTTP client")?;
            Some(crate::watch::Webhook {
                url: url.clone(),
                token,
                client,
            })
        }
    };
    Ok(crate::watch::WatchConfig {
        rules: detection.compiled().map_err(anyhow::Error::msg)?,
        silences: crate::config::detection::silences(&config.silence),
        webhook,
    })
}

pub fn open_spool(
    config: &Config,
    node: &str,
    signing: Option<auditrail_spool::Signing>,
) -> anyhow::Result<Arc<Spool>> {
    let spool = Spool::open(SpoolConfig {
        dir: config.spool.dir.clone(),
        node: node.to_owned(),
        max_disk_bytes: config.spool.max_disk.as_u64(),
        retention: config.spool.retention,
        cache_bytes: config.spool.cache.as_u64(),
        signing,
    })
    .with_context(|| format!("opening spool {}", config.spool.dir.display()))?;
    Ok(Arc::new(spool))
}

/// Says at start-up what is redacted before the spool, and what in the
/// config is likely not what was meant.
fn announce_redaction(config: &Config, redactor: &auditrail_redact::Redactor) {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if redactor.is_active() {
        let rules: Vec<String> = redactor
            .policy()
            .rule_labels()
            .map(|(name, _)| name.to_owned())
            .collect();
        tracing::info!(
            rules = %rules.join(", "),
            capture_level = ?config.capture.level,
            max_body_bytes = ?config.capture.max_body_bytes,
            capture_overrides = config.capture.overrides.len(),
            "redaction and capture settings apply before the spool"
        );
    }
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const LATENCY: &[f64] = &[
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    const SIZES: &[f64] = &[
        1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    ];
    const EVENTS: &[f64] = &[
        100.0,
        1_000.0,
        10_000.0,
        100_000.0,
        1_000_000.0,
        10_000_000.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)?
        .set_buckets_for_metric(Matcher::Full("auditrail_request_bytes".into()), SIZES)?
        .set_buckets_for_metric(
            Matcher::Full("auditrail_query_events_examined".into()),
            EVENTS,
        )?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Retention passes and metrics upkeep until shutdown.
async fn housekeeping(
    spool: Arc<Spool>,
    metrics: PrometheusHandle,
    gc_every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut gc_tick = tokio::time::interval(gc_every);
    let mut upkeep_tick = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = upkeep_tick.tick() => metrics.run_upkeep(),
            _ = gc_tick.tick() => {
                let spool = spool.clone();
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
                match tokio::task::spawn_blocking(move || spool.gc(now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        metrics::counter!("auditrail_spool_errors_total", "op" => "gc").increment(1);
                        tracing::error!(error = %e, "retention pass failed");
                    }
                    Err(e) => tracing::error!(error = %e, "retention task panicked"),
                }
            }
        }
    }
}

/// SIGTERM and SIGINT (shut down) and SIGHUP (reload), caught from the
/// moment they are installed.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// The next SIGTERM or SIGINT; a SIGHUP meanwhile (before there is
    /// anything to reload) is ignored.
    async fn shutdown(&mut self) -> &'static str {
        loop {
            match self.recv().await {
                "SIGHUP" => tracing::info!("SIGHUP during start-up: nothing to reload yet"),
                signal => return signal,
            }
        }
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
