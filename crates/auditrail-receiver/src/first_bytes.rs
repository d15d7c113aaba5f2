//! A connection that must send its first bytes within a deadline.
//!
//! HTTP/2 keepalive pings start only once a connection has said its
//! preface, and TCP keepalive only finds peers that vanished. A client that
//! connects to the gRPC port and never sends a byte would hold its socket
//! for ever: enough of them exhaust the server's file descriptors. OTLP/HTTP
//! has `header_read_timeout` for that; this gives OTLP/gRPC the same.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use auditrail_auth::ConnectionInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::listener::Connection;

/// A connection whose reads fail with `TimedOut` if nothing has arrived
/// `within` of its accept (after its TLS handshake, if any); after the
/// first bytes it is the plain connection. It hands tonic what the
/// connection proved about its client, for every request on it.
pub(crate) struct FirstBytesDeadline {
    inner: Connection,
    info: ConnectionInfo,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl FirstBytesDeadline {
    pub(crate) fn new(inner: Connection, info: ConnectionInfo, within: Duration) -> Self {
        FirstBytesDeadline {
            inner,
            info,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl AsyncRead for FirstBytesDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        match (&read, self.deadline.as_mut()) {
            (Poll::Ready(Ok(())), Some(_)) if buf.filled().len() > before => {
                self.deadline = None;
                read
            }
            (Poll::Pending, Some(deadline)) => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    metrics::counter!("auditrail_refused_requests_total", "reason" => "timeout")
                        .increment(1);
                    tracing::warn!(
                        "OTLP/gRPC connection closed: it sent nothing within header_read_timeout"
                    );
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing arrived within header_read_timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
            _ => read,
        }
    }
}

impl AsyncWrite for FirstBytesDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for FirstBytesDeadline {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn pair(within: Duration) -> (FirstBytesDeadline, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = Connection::Plain(server);
        (
            FirstBytesDeadline::new(server, ConnectionInfo::default(), within),
            client,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out() {
        let (mut server, _client) = pair(Duration::from_secs(10)).await;
        let mut buf = [0; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn after_its_first_bytes_a_connection_may_be_quiet() {
        let (mut server, mut client) = pair(Duration::from_secs(10)).await;
        client.write_all(b"PRI").await.unwrap();
        let mut buf = [0; 3];
        server.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b" * ").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b" * ");
    }
}
