//! A small HTTP/1.1 client for the gateway's own calls to other services: JWKS fetches
//! (`policy::jwt`) and OTLP trace exports ([`crate::otel`]).
//!
//! A [`Target`] is one `http://` or `https://` URL, parsed and checked once. It opens
//! connections (TCP, then TLS for `https://` with the system roots, through the same rustls
//! client as `https://` upstreams) on which requests are sent; bodies are read with a size
//! limit. It shows itself in logs as `scheme://authority/path`: never a query, which may
//! carry a secret, and it refuses URLs with a user name or password.
//!
//! It is not for proxied traffic: [`crate::upstream`] has the pools, balancing, retries and
//! limits that traffic needs.

use std::io;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::BoxError;

/// Why an exchange with a [`Target`] failed. The messages name no URL query and no header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// No TCP connection.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// The TLS handshake failed (an unknown issuer, a name mismatch).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    /// The response body is larger than the limit the caller set.
    #[error("the response body is larger than {0} bytes")]
    TooLarge(usize),
    /// The response body could not be read.
    #[error("the body could not be read: {0}")]
    Body(#[source] BoxError),
}

/// Where requests go: a URL parsed once.
pub(crate) struct Target {
    /// The host to resolve (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    path_and_query: String,
    /// `scheme://authority/path`, for logs.
    shown: String,
    /// For `https`: the TLS client and the name to verify.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The target of an `http://` or `https://` URL without a user name or password.
    pub(crate) fn parse(url: &url::Url) -> Result<Self, String> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err("must be an http:// or https:// URL".to_string()),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".to_string());
        }
        let (host, name) = match url.host() {
            Some(url::Host::Domain(domain)) => (domain.to_string(), domain.to_string()),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), ip.to_string()),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), ip.to_string()),
            None => return Err("must name a host".to_string()),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "must name a port".to_string())?;
        let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_string();
        let path_and_query = url[url::Position::BeforePath..url::Position::AfterQuery].to_string();
        let shown = format!("{}://{authority}{}", url.scheme(), url.path());
        let tls = if https {
            let server_name = ServerName::try_from(name)
                .map_err(|_| "has a host that is not a valid TLS server name".to_string())?;
            let client = crate::tls::UpstreamTlsClient::build(
                None,
                false,
                &crate::tls::CertificateSet::default(),
            )?;
            Some((client.connector, server_name))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            authority,
            path_and_query,
            shown,
            tls,
        })
    }

    /// `scheme://authority/path`: what logs show of the URL.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// A request builder for this URL: its path and query, and its `Host` header.
    pub(crate) fn request(&self, method: http::Method) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(self.path_and_query.as_str())
            .header(header::HOST, self.authority.as_str())
    }

    /// Opens a connection: TCP to the first address that answers, then TLS for `https://`,
    /// then the HTTP/1.1 handshake.
    pub(crate) async fn connect<B>(&self) -> Result<Connection<B>, ClientError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let stream = self.tcp().await.map_err(ClientError::Connect)?;
        match &self.tls {
            None => Connection::handshake(TokioIo::new(stream)).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(ClientError::Tls)?;
                Connection::handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn tcp(&self) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
    }
}

/// An open HTTP/1.1 connection to a [`Target`]; closed when dropped.
pub(crate) struct Connection<B> {
    sender: http1::SendRequest<B>,
    /// Drives the connection; aborted when the connection is dropped.
    driver: tokio::task::JoinHandle<()>,
}

impl<B> std::fmt::Debug for Connection<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.sender.is_closed())
            .finish_non_exhaustive()
    }
}

impl<B> Connection<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn handshake<T>(io: TokioIo<T>) -> Result<Self, ClientError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(io).await.map_err(ClientError::Http)?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, driver })
    }

    /// Whether the connection can take another request (the server has not closed it).
    #[cfg(feature = "otel")]
    pub(crate) fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends a request built with [`Target::request`] and waits for the response head.
    pub(crate) async fn send(
        &mut self,
        request: Request<B>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.sender.ready().await.map_err(ClientError::Http)?;
        self.sender
            .send_request(request)
            .await
            .map_err(ClientError::Http)
    }
}

impl<B> Drop for Connection<B> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads a response's body, refusing one larger than `limit` bytes (by its declared length
/// first, then as it arrives).
pub(crate) async fn read_body(
    response: Response<Incoming>,
    limit: usize,
) -> Result<Bytes, ClientError> {
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ClientError::TooLarge(limit));
    }
    Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| {
            if crate::body::is_length_limit(&*e) {
                ClientError::TooLarge(limit)
            } else {
                ClientError::Body(e)
            }
        })
}
