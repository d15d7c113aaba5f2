//! The HTTP server loop that both the OTLP/HTTP receiver and the admin API
//! run: every connection's requests carry its [`ConnectionInfo`] (who the
//! client is, as far as the connection tells), slow clients are cut off,
//! and a shutdown finishes the requests in flight.
//!
//! hyper's server is driven directly, not through `axum::serve`, because
//! only hyper's own builder can bound how long a client may take to send
//! its headers (`header_read_timeout`): without it, a client that opens
//! connections and sends half a request line holds them forever.

use std::future::Future;
use std::time::Duration;

use auditrail_auth::ConnectionInfo;
use axum::Router;

/// How one HTTP listener treats its connections.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// For logs: `OTLP/HTTP`, `admin`.
    pub name: &'static str,
    /// Time a client gets to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// HTTP/2 pings and TCP keepalive.
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

    let name = settings.name;
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
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to
                    // close instead of spinning.
                    tracing::warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune_socket(&stream, settings.keepalive_interval);
        let info = ConnectionInfo {
            remote: Some(remote),
            client_cert: None,
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
    graceful.shutdown().await;
    Ok(())
}

/// TCP_NODELAY (without it an ack can sit out a delayed-ACK timer, ~40 ms)
/// and TCP keepalive (so the connection of a peer that vanished is closed).
pub(crate) fn tune_socket(stream: &tokio::net::TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}
