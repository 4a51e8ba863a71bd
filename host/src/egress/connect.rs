//! Opening connections: directly or through a SOCKS4/4a/5/5h or HTTP proxy, then TLS
//! for `https` targets.
//!
//! This is a `tower` service from a URI to a stream, which is what hyper-util's
//! pooled client wants; the pool then gives us keep-alive for free. It deliberately
//! knows nothing about tokens or allow-lists: those are decided before a request
//! reaches the pool. The steps (TCP to the proxy, the proxy handshake, TLS) are also
//! public on their own, so `usage-agent ping` can walk them one at a time.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The proxy kinds of the `socks_proxy` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `socks4://`: the host resolves the target to an IPv4 address.
    Socks4,
    /// `socks4a://`: the proxy resolves the target name.
    Socks4a,
    /// `socks5://`: the host resolves the target name.
    Socks5,
    /// `socks5h://`: the proxy resolves the target name.
    Socks5h,
    /// `http://`: CONNECT for https targets, absolute-form requests for http ones.
    Http,
}

/// A parsed `socks_proxy` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password stays out of logs.
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Socks4 => "socks4",
            ProxyKind::Socks4a => "socks4a",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
            ProxyKind::Http => "http",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Proxy {
    /// Parses a proxy URL; the error says what is wrong without echoing a password.
    pub fn parse(text: &str) -> Result<Self> {
        let url = url::Url::parse(text).map_err(|e| anyhow::anyhow!("not a proxy URL: {e}"))?;
        let kind = match url.scheme() {
            "socks4" => ProxyKind::Socks4,
            "socks4a" => ProxyKind::Socks4a,
            "socks5" => ProxyKind::Socks5,
            "socks5h" => ProxyKind::Socks5h,
            "http" => ProxyKind::Http,
            other => bail!("unsupported proxy scheme {other:?}; use socks4, socks4a, socks5, socks5h or http"),
        };
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => bail!("the proxy URL has no host"),
        };
        let port = match (url.port(), kind) {
            (Some(port), _) => port,
            (None, ProxyKind::Http) => 80,
            (None, _) => 1080,
        };
        if url.path() != "/" && !url.path().is_empty() {
            bail!("the proxy URL must not have a path");
        }
        let decode = |s: &str| percent_decode(s);
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some((decode(user)?, decode(password.unwrap_or(""))?)),
        };
        Ok(Self { kind, host, port, credentials })
    }
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes: Vec<u8> = form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default();
    String::from_utf8(bytes).context("proxy credentials are not UTF-8")
}

/// Builds the TLS client configuration: the system's roots plus an optional PEM bundle.
pub fn tls_config(ca_bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate must not take the others down with it.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_bundle {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read CA bundle {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("CA bundle {} is not valid PEM", path.display()))?;
        if certs.is_empty() {
            bail!("CA bundle {} contains no certificate", path.display());
        }
        for cert in certs {
            roots.add(cert).with_context(|| format!("CA bundle {} has an unusable certificate", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens streams to URIs; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    proxy: Option<Arc<Proxy>>,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(proxy: Option<Proxy>, tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> Self {
        Self { proxy: proxy.map(Arc::new), tls, connect_timeout }
    }

    /// The proxy in use, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_deref()
    }

    /// The connect timeout each step (TCP, proxy handshake, TLS) gets.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens a stream to `uri`'s authority, through the proxy, with TLS for https.
    pub async fn open(&self, uri: &Uri) -> io::Result<Stream> {
        let target = Target::of(uri)?;
        let step = tokio::time::timeout(self.connect_timeout, self.tunnel(&target));
        let (tcp, via_http_proxy) = step.await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {target}{} timed out after {:?}", self.via(), self.connect_timeout),
            )
        })??;
        if !target.https {
            return Ok(Stream { inner: StreamInner::Plain(tcp), proxied_plain: via_http_proxy });
        }
        let tls = self.tls_handshake(tcp, &target.host).await?;
        Ok(Stream { inner: StreamInner::Tls(Box::new(tls)), proxied_plain: false })
    }

    /// The TLS handshake with `host` over `tcp`; errors name the host and the reason.
    pub async fn tls_handshake(&self, tcp: TcpStream, host: &str) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| invalid(format!("{host:?} is not a valid TLS server name")))?;
        let tls = TlsConnector::from(self.tls.clone());
        let handshake = tokio::time::timeout(self.connect_timeout, tls.connect(name, tcp));
        handshake
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("TLS handshake with {host} timed out")))?
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {host} failed: {e}")))
    }

    fn via(&self) -> String {
        match &self.proxy {
            Some(proxy) => format!(" through proxy {proxy}"),
            None => String::new(),
        }
    }

    /// A TCP stream whose far end is the target (or, for plain http through an HTTP
    /// proxy, the proxy itself, flagged so the client sends absolute-form requests).
    async fn tunnel(&self, target: &Target) -> io::Result<(TcpStream, bool)> {
        match self.proxy.as_deref() {
            None => Ok((direct(target).await?, false)),
            Some(proxy) => {
                let socket = connect_proxy(proxy).await?;
                handshake(proxy, socket, target).await
            }
        }
    }

    /// The `Proxy-Authorization` header value for plain requests through an HTTP proxy.
    pub fn http_proxy_authorization(&self) -> Option<String> {
        let proxy = self.proxy.as_deref()?;
        if proxy.kind != ProxyKind::Http {
            return None;
        }
        proxy.credentials.as_ref().map(|(user, pass)| basic_auth(user, pass))
    }
}

/// Where a request goes: host, port and whether TLS is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub https: bool,
}

impl Target {
    /// The target of an `http`/`https` URI.
    pub fn of(uri: &Uri) -> io::Result<Self> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(invalid(format!("unsupported scheme {other:?}"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| invalid(format!("no host in {uri}")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { host, port, https })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A direct TCP connection to the target.
pub async fn direct(target: &Target) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {target}: {e}")))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A TCP connection to the proxy itself.
pub async fn connect_proxy(proxy: &Proxy) -> io::Result<TcpStream> {
    let socket = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to proxy {proxy}: {e}")))?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Asks the proxy on `socket` for a connection to `target`. The boolean is true when
/// the socket is handed back unchanged: plain http through an HTTP proxy, where the
/// client sends absolute-form requests to the proxy instead of opening a tunnel.
pub async fn handshake(proxy: &Proxy, socket: TcpStream, target: &Target) -> io::Result<(TcpStream, bool)> {
    let (host, port) = (target.host.as_str(), target.port);
    let socks_err = |e: tokio_socks::Error| {
        let kind = match &e {
            tokio_socks::Error::Io(io) => io.kind(),
            tokio_socks::Error::PasswordAuthFailure(_) => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::ConnectionRefused,
        };
        io::Error::new(kind, format!("proxy {proxy} refused the connection to {target}: {e}"))
    };
    let creds = proxy.credentials.as_ref();
    let tcp = match proxy.kind {
        ProxyKind::Socks5 | ProxyKind::Socks5h => {
            // socks5h hands the name to the proxy; socks5 resolves it here first.
            let resolved;
            let addr: tokio_socks::TargetAddr<'_> = if proxy.kind == ProxyKind::Socks5 {
                resolved = resolve(host, port, false).await?;
                tokio_socks::TargetAddr::Ip(resolved)
            } else {
                tokio_socks::IntoTargetAddr::into_target_addr((host, port)).map_err(socks_err)?
            };
            match creds {
                Some((user, pass)) => {
                    tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(socket, addr, user, pass)
                        .await
                        .map_err(socks_err)?
                        .into_inner()
                }
                None => tokio_socks::tcp::Socks5Stream::connect_with_socket(socket, addr)
                    .await
                    .map_err(socks_err)?
                    .into_inner(),
            }
        }
        ProxyKind::Socks4 | ProxyKind::Socks4a => {
            let resolved;
            let addr: tokio_socks::TargetAddr<'_> = if proxy.kind == ProxyKind::Socks4 {
                resolved = resolve(host, port, true).await?;
                tokio_socks::TargetAddr::Ip(resolved)
            } else {
                tokio_socks::IntoTargetAddr::into_target_addr((host, port)).map_err(socks_err)?
            };
            // SOCKS4 has a user id but no password; an empty id is sent as none at all.
            match creds.map(|(user, _)| user.as_str()).filter(|user| !user.is_empty()) {
                Some(user) => tokio_socks::tcp::Socks4Stream::connect_with_userid_and_socket(socket, addr, user)
                    .await
                    .map_err(socks_err)?
                    .into_inner(),
                None => tokio_socks::tcp::Socks4Stream::connect_with_socket(socket, addr)
                    .await
                    .map_err(socks_err)?
                    .into_inner(),
            }
        }
        ProxyKind::Http if !target.https => return Ok((socket, true)),
        ProxyKind::Http => http_connect(socket, proxy, host, port).await?,
    };
    Ok((tcp, false))
}

/// `Basic base64(user:pass)`.
pub fn basic_auth(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

async fn resolve(host: &str, port: u16, ipv4_only: bool) -> io::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {host}: {e}")))?;
    addrs
        .find(|addr| !ipv4_only || addr.is_ipv4())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no usable address")))
}

async fn http_connect(mut socket: TcpStream, proxy: &Proxy, host: &str, port: u16) -> io::Result<TcpStream> {
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, pass)) = &proxy.credentials {
        request.push_str(&format!("Proxy-Authorization: {}\r\n", basic_auth(user, pass)));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await?;
    // Read the proxy's answer head byte-wise-buffered, but hand back the raw socket:
    // a proxy sends nothing after the blank line until we speak.
    let mut reader = BufReader::new(socket);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await?;
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).await?;
        if read == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if line.len() > 8192 {
            return Err(invalid(format!("proxy {proxy} sent an oversized header")));
        }
    }
    if status != "200" {
        let reason = status_line.trim();
        let kind = if status == "407" { io::ErrorKind::PermissionDenied } else { io::ErrorKind::ConnectionRefused };
        return Err(io::Error::new(kind, format!("proxy {proxy} refused CONNECT {authority}: {reason}")));
    }
    if !reader.buffer().is_empty() {
        return Err(invalid(format!("proxy {proxy} sent data before the tunnel opened")));
    }
    Ok(reader.into_inner())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// An open connection, plain or TLS.
pub struct Stream {
    inner: StreamInner,
    proxied_plain: bool,
}

enum StreamInner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            StreamInner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            StreamInner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            StreamInner::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            StreamInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied_plain)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.open(&uri).await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() -> Result<()> {
        for (text, kind, port) in [
            ("socks4://p:1", ProxyKind::Socks4, 1),
            ("socks4a://p", ProxyKind::Socks4a, 1080),
            ("socks5://localhost:12345", ProxyKind::Socks5, 12345),
            ("socks5h://p:2", ProxyKind::Socks5h, 2),
            ("http://proxy.cscs.ch:8080", ProxyKind::Http, 8080),
            ("http://proxy", ProxyKind::Http, 80),
        ] {
            let proxy = Proxy::parse(text)?;
            assert_eq!((proxy.kind, proxy.port), (kind, port), "{text}");
        }
        Ok(())
    }

    #[test]
    fn credentials_are_decoded_and_hidden() -> Result<()> {
        let proxy = Proxy::parse("socks5://us%40er:p%3Ass@h:1")?;
        assert_eq!(proxy.credentials, Some(("us@er".to_owned(), "p:ss".to_owned())));
        assert!(!format!("{proxy:?} {proxy}").contains("p:ss"));
        Ok(())
    }

    #[test]
    fn rejects_bad_urls() {
        for text in ["ftp://p:1", "socks5://", "localhost:1080", "https://p:3128"] {
            assert!(Proxy::parse(text).is_err(), "{text}");
        }
    }
}
