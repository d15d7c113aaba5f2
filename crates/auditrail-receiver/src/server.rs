//! The HTTP server loop that both the OTLP/HTTP receiver and the admin API
//! run: every connection's requests carry its
//! [`auditrail_auth::ConnectionInfo`] (who the client is, as far as the
//! connection tells), slow clients are cut off, and a shutdown finishes the
//! requests in flight.
//!
//! hyper's server is driven directly, not through `axum::serve`, because
//! only hyper's own builder can bound how long a client may take to send
//! its headers (`header_read_timeout`): without it, a client that opens
//! connections and sends half a request line holds them forever.

use std::future::Future;
use std::time::Duration;

use axum::Router;

use crate::listener::{self, ListenerSettings};

/// How one HTTP listener treats its connections.
#[derive(Clone)]
pub struct ServerSettings {
    /// Accepting: the name, TLS and the handshake's timeout, keepalive.
    pub listener: ListenerSettings,
    /// Time a client gets to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// HTTP/2 pings.
    pub keepalive_interval: Duration,
    /// A peer that does not answer a ping within this is disconnected.
    pub keepalive_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes
/// the requests in flight.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let name = settings.listener.name;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accepted = listener::accept(listener, settings.listener.clone());
    tokio::pin!(shutdown);
    loop {
        let (stream, info) = tokio::select! {
            next = accepted.recv() => match next {
                Some(next) => next,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |mut request: http::Request<_>| {
                    request.extensions_mut().insert(info.clone());
                    request
                })
                .service(router.clone()),
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, listener = name, "connection ended with an error");
            }
        });
    }
    // Stops accepting: the listening socket closes with the accept task.
    drop(accepted);
    graceful.shutdown().await;
    Ok(())
}
