//! Getting syslog messages to the far side: `tcp://` (RFC 6587
//! octet-counting), `tls://` (RFC 5425, rustls) and `udp://` (RFC 5426,
//! one datagram per message).
//!
//! Syslog has no application-level acknowledgement. A stream transport
//! holds one connection; before each batch it checks that the peer has not
//! closed it (a syslog receiver never sends anything, so a readable socket
//! means EOF or an error), because a write into a connection the peer has
//! already closed succeeds locally and is then lost. A batch is written as
//! a whole and flushed; any failure drops the connection, and the next
//! attempt opens a new one. That closes the common hole (a receiver
//! restarted between batches) but not all of them: bytes in flight when the
//! receiver dies are gone, and the retried batch may arrive twice.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::ExportError;

/// Which transport a `url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Tls,
    Udp,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Udp => "udp",
        }
    }
}

/// A parsed `url`: `tcp://host:port`, `tls://host:port` or `udp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// As written, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

/// Why a `url` is not one the syslog sink can use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("url {0:?} must start with tcp://, tls:// or udp://")]
    Scheme(String),
    #[error(
        "url {0:?} must be SCHEME://HOST:PORT (IPv6 as [::1]:PORT), with nothing after the port"
    )]
    Shape(String),
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| EndpointError::Scheme(url.into()))?;
        let scheme = match scheme {
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            "udp" => Scheme::Udp,
            _ => return Err(EndpointError::Scheme(url.into())),
        };
        let shape = || EndpointError::Shape(url.into());
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6.split_once("]:").ok_or_else(shape)?;
                (host, port)
            }
            None => rest.rsplit_once(':').ok_or_else(shape)?,
        };
        if host.is_empty() || host.contains(['/', '[', ']', ' ']) {
            return Err(shape());
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(shape)?;
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    /// Looks the host up again on every connect, so a receiver that moved
    /// (a DNS change) is found.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, ExportError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                ExportError::retryable("connection", format!("resolving {}: {e}", self.host))
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ExportError::retryable(
                "connection",
                format!("{} resolves to no address", self.host),
            ));
        }
        Ok(addrs)
    }
}

/// The TLS files of a `tls://` sink.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles<'a> {
    /// CA certificates (PEM) that sign the receiver's certificate; without
    /// it, the public web PKI roots.
    pub ca: Option<&'a Path>,
    /// Client certificate chain and its key (PEM), for receivers that
    /// authenticate senders (rsyslog's `x509/certvalid`, `x509/name`).
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// The name to verify the receiver's certificate against; the url's
    /// host when absent.
    pub server_name: Option<&'a str>,
}

/// A TLS client set up from [`TlsFiles`], ready to connect.
pub struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    pub fn new(files: &TlsFiles<'_>, host: &str) -> Result<Tls, ExportError> {
        let config_error = |m: String| ExportError::misconfigured("tls", m);
        let mut roots = RootCertStore::empty();
        match files.ca {
            Some(path) => {
                for cert in read_certificates(path)? {
                    roots.add(cert).map_err(|e| {
                        config_error(format!("tls_ca_file {}: {e}", path.display()))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        // The provider is named, not taken from the process default: other
        // crates in the binary may enable another one.
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| config_error(e.to_string()))?
                .with_root_certificates(roots);
        let config = match (files.cert, files.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| config_error(format!("tls_key_file {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| config_error(format!("tls_cert_file / tls_key_file: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(config_error(
                    "tls_cert_file and tls_key_file go together: give both or neither".into(),
                ))
            }
        };
        let name = files.server_name.unwrap_or(host).to_owned();
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| config_error(format!("server name {name:?}: {e}")))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ExportError> {
    let what = |e: String| {
        ExportError::misconfigured("tls", format!("certificates in {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(e.to_string()))?;
    if certs.is_empty() {
        return Err(what("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A connection a batch can be written to: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A stream transport: one connection, opened when needed.
pub struct StreamTransport {
    endpoint: Endpoint,
    tls: Option<Tls>,
    /// `None` until connected, and again after a failure. An export takes
    /// the connection out while it writes, so one cancelled mid-batch (the
    /// delivery timeout) drops it instead of leaving half a frame for the
    /// next batch to continue.
    connection: Mutex<Option<Box<dyn Stream>>>,
    sink: String,
}

impl StreamTransport {
    pub fn new(endpoint: Endpoint, tls: Option<Tls>, sink: &str) -> StreamTransport {
        StreamTransport {
            endpoint,
            tls,
            connection: Mutex::new(None),
            sink: sink.to_owned(),
        }
    }

    /// Opens the connection now, so `prepare` reports a refused
    /// connection or a certificate the sink does not trust at start-up.
    pub async fn connect_now(&self) -> Result<(), ExportError> {
        let mut slot = self.connection.lock().await;
        if slot.is_none() {
            *slot = Some(self.connect().await?);
        }
        Ok(())
    }

    /// Writes `frames` (whole, framed messages) and flushes them.
    pub async fn send(&self, frames: &[u8]) -> Result<(), ExportError> {
        let mut slot = self.connection.lock().await;
        let mut connection = match slot.take() {
            Some(mut open) => {
                if still_open(&mut open).await {
                    open
                } else {
                    self.connect().await?
                }
            }
            None => self.connect().await?,
        };
        let written = async {
            connection.write_all(frames).await?;
            connection.flush().await
        }
        .await;
        match written {
            Ok(()) => {
                *slot = Some(connection);
                Ok(())
            }
            Err(e) => Err(ExportError::retryable(
                "connection",
                format!(
                    "writing to {}://{}:{}: {e}",
                    self.endpoint.scheme.name(),
                    self.endpoint.host,
                    self.endpoint.port
                ),
            )),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, ExportError> {
        let mut last_error = None;
        for addr in self.endpoint.resolve().await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    // Small batches go out at once rather than after Nagle's delay.
                    let _ = tcp.set_nodelay(true);
                    metrics::counter!("auditrail_syslog_connections_total", "sink" => self.sink.clone())
                        .increment(1);
                    let Some(tls) = &self.tls else {
                        return Ok(Box::new(tcp));
                    };
                    let mut stream: Box<dyn Stream> = Box::new(
                        tls.connector
                            .connect(tls.server_name.clone(), tcp)
                            .await
                            .map_err(|e| classify_handshake(addr, e))?,
                    );
                    refused_after_handshake(addr, &mut stream).await?;
                    return Ok(stream);
                }
                Err(e) => last_error = Some(format!("connecting to {addr}: {e}")),
            }
        }
        Err(ExportError::retryable(
            "connection",
            last_error.unwrap_or_default(),
        ))
    }
}

/// Whether the peer has not closed `connection`: it never sends, so
/// anything readable (EOF, an error, a TLS close_notify) means it is gone.
/// A zero timeout polls the read once: pending means nothing to read.
async fn still_open(connection: &mut Box<dyn Stream>) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::ZERO, connection.read(&mut byte))
        .await
        .is_err()
}

/// How long a new TLS connection is watched for a refusal before the
/// first batch goes out.
const TLS_REFUSAL_WINDOW: Duration = Duration::from_millis(300);

/// In TLS 1.3 the client's handshake is done before the server has checked
/// the client's certificate, so a receiver that refuses it (none given, or
/// one it does not trust) says so only afterwards, with an alert or by
/// closing. Without this wait the first batch would be written into that
/// dying connection and lost, counted as delivered.
async fn refused_after_handshake(
    addr: SocketAddr,
    stream: &mut Box<dyn Stream>,
) -> Result<(), ExportError> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(TLS_REFUSAL_WINDOW, stream.read(&mut byte)).await {
        // Nothing from the server: it kept the connection.
        Err(_) => Ok(()),
        Ok(Ok(0)) => Err(ExportError::misconfigured(
            "tls",
            format!(
                "{addr} closed the TLS connection right after the handshake: it may require a client \
                 certificate (tls_cert_file, tls_key_file) or not trust this one"
            ),
        )),
        Ok(Err(e)) => Err(classify_handshake(addr, e)),
        // A receiver never sends data; whatever it was, the connection is up.
        Ok(Ok(_)) => Ok(()),
    }
}

/// A certificate the sink does not trust (or that does not trust the
/// sink) is a setup problem; anything else in a handshake may pass.
fn classify_handshake(addr: SocketAddr, error: std::io::Error) -> ExportError {
    let message = format!("TLS handshake with {addr}: {error}");
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(_),
        ) => ExportError::misconfigured("tls", message),
        // What rsyslog's gtls driver does to a sender without an acceptable
        // client certificate; but also what a receiver restarting at that
        // moment does, so it stays retryable, with the likely cause named.
        _ if error.kind() == std::io::ErrorKind::UnexpectedEof => ExportError::retryable(
            "connection",
            format!(
                "{message} (the receiver closed the connection during the handshake: does it require a client \
                 certificate (tls_cert_file, tls_key_file) or not trust this one?)"
            ),
        ),
        _ => ExportError::retryable("connection", message),
    }
}

/// `udp://`: one datagram per message, from one connected socket.
pub struct UdpTransport {
    endpoint: Endpoint,
    socket: Mutex<Option<UdpSocket>>,
    sink: String,
}

impl UdpTransport {
    pub fn new(endpoint: Endpoint, sink: &str) -> UdpTransport {
        UdpTransport {
            endpoint,
            socket: Mutex::new(None),
            sink: sink.to_owned(),
        }
    }

    pub async fn open_now(&self) -> Result<(), ExportError> {
        let mut slot = self.socket.lock().await;
        if slot.is_none() {
            *slot = Some(self.open().await?);
        }
        Ok(())
    }

    /// Sends each message as one datagram. An error (e.g. the ICMP port
    /// unreachable of an earlier datagram, which a connected socket
    /// reports) fails the batch, which is then sent again whole.
    pub async fn send(&self, messages: &[String]) -> Result<(), ExportError> {
        let mut slot = self.socket.lock().await;
        let socket = match slot.take() {
            Some(socket) => socket,
            None => self.open().await?,
        };
        let datagrams = metrics::counter!("auditrail_syslog_udp_datagrams_sent_total", "sink" => self.sink.clone());
        for message in messages {
            socket.send(message.as_bytes()).await.map_err(|e| {
                ExportError::retryable(
                    "connection",
                    format!(
                        "sending to udp://{}:{}: {e}",
                        self.endpoint.host, self.endpoint.port
                    ),
                )
            })?;
            datagrams.increment(1);
        }
        *slot = Some(socket);
        Ok(())
    }

    async fn open(&self) -> Result<UdpSocket, ExportError> {
        let addr = self.endpoint.resolve().await?[0];
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(|e| {
            ExportError::retryable("connection", format!("binding a UDP socket: {e}"))
        })?;
        socket.connect(addr).await.map_err(|e| {
            ExportError::retryable("connection", format!("connecting UDP to {addr}: {e}"))
        })?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let parse = |url| Endpoint::parse(url);
        assert_eq!(
            parse("tcp://127.0.0.1:514").unwrap(),
            Endpoint {
                scheme: Scheme::Tcp,
                host: "127.0.0.1".into(),
                port: 514
            }
        );
        assert_eq!(
            parse("tls://[::1]:6514").unwrap(),
            Endpoint {
                scheme: Scheme::Tls,
                host: "::1".into(),
                port: 6514
            }
        );
        assert_eq!(
            parse("udp://siem.internal:514").unwrap().scheme,
            Scheme::Udp
        );
        assert!(matches!(parse("http://x:1"), Err(EndpointError::Scheme(_))));
        assert!(matches!(parse("x:1"), Err(EndpointError::Scheme(_))));
        for bad in [
            "tcp://host",
            "tcp://host:0",
            "tcp://:514",
            "tcp://h:514/x",
            "tcp://[::1]",
        ] {
            assert!(matches!(parse(bad), Err(EndpointError::Shape(_))), "{bad}");
        }
    }
}
