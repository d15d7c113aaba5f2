//! Accepting connections for every listener: TCP, then a TLS handshake when
//! the listener has TLS, and what the connection proved about its client
//! ([`ConnectionInfo`]), ready for hyper or tonic.
//!
//! Handshakes run in tasks of their own, bounded by a timeout, never in the
//! accept loop: one client that connects and stalls its handshake must not
//! hold up everyone who connects after it, nor hold its socket forever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use auditrail_auth::tls::{PeerCertificate, ServerTls};
use auditrail_auth::ConnectionInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How a listener accepts.
#[derive(Clone)]
pub struct ListenerSettings {
    /// For logs and metrics: `otlp_grpc`, `otlp_http`, `admin`, `metrics`.
    pub name: &'static str,
    /// TLS, when the listener has it.
    pub tls: Option<Arc<ServerTls>>,
    /// Time a client gets to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// TCP keepalive, so that a vanished peer's connection is closed.
    pub keepalive: Duration,
}

/// An accepted connection, plain or TLS.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Accepts on `listener` until the returned receiver is dropped, handing
/// over each connection once its handshake (if any) is done.
pub fn accept(
    listener: TcpListener,
    settings: ListenerSettings,
) -> mpsc::Receiver<(Connection, ConnectionInfo)> {
    // A short queue: connections wait here only while the server takes
    // the previous ones.
    let (ready, accepted) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                () = ready.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for some
                        // to close instead of spinning.
                        tracing::warn!(error = %e, listener = settings.name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tune_socket(&tcp, settings.keepalive);
            let Some(tls) = settings.tls.clone() else {
                let info = ConnectionInfo {
                    remote: Some(remote),
                    client_cert: None,
                };
                if ready.send((Connection::Plain(tcp), info)).await.is_err() {
                    return;
                }
                continue;
            };
            let (ready, name, timeout) = (ready.clone(), settings.name, settings.handshake_timeout);
            tokio::spawn(async move {
                match tls.accept(tcp, timeout).await {
                    Ok((stream, peer)) => {
                        let info = ConnectionInfo {
                            remote: Some(remote),
                            client_cert: peer.as_ref().and_then(client_identity),
                        };
                        let _ = ready.send((Connection::Tls(Box::new(stream)), info)).await;
                    }
                    Err(e) => {
                        metrics::counter!("auditrail_tls_handshake_failures_total",
                            "listener" => name, "reason" => e.reason())
                        .increment(1);
                        tracing::warn!(listener = name, %remote, error = %e, "TLS handshake failed");
                    }
                }
            });
        }
    });
    accepted
}

/// What a verified client certificate says about its client: nothing
/// (`None`) when certificates only gate the connection.
fn client_identity(
    peer: &PeerCertificate,
) -> Option<Result<auditrail_auth::Identity, auditrail_auth::AuthError>> {
    peer.identity().transpose()
}

/// TCP_NODELAY (without it an ack can sit out a delayed-ACK timer, ~40 ms)
/// and TCP keepalive (so the connection of a peer that vanished is closed).
fn tune_socket(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_flush(cx),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(s) => s.is_write_vectored(),
            Connection::Tls(s) => s.is_write_vectored(),
        }
    }
}
