//! One upstream endpoint: where it is, its idle connections, and what the gateway knows of
//! its health (in-flight requests, failures in a row, ejection, active health).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::breaker::{Limits, Owner};
use crate::body::Body;
use crate::metrics::EndpointMetrics;
use crate::model::Endpoint;
use crate::tls::UpstreamTlsClient;
use rustls::pki_types::ServerName;

/// Where an endpoint is, parsed once.
#[derive(Debug)]
pub(super) struct Target {
    /// `host:port` as written in the URL.
    pub(super) authority: Authority,
    /// The `Host` header for this endpoint.
    pub(super) host_header: HeaderValue,
    /// Base path without a trailing slash; empty for the root.
    pub(super) base_path: Box<str>,
    /// Whether the endpoint speaks TLS (`https://`).
    pub(super) https: bool,
    /// The host to resolve (an IP literal is used as is).
    host: Box<str>,
    port: u16,
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported scheme {other:?}")),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(domain)) => domain.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("no host".to_string()),
        };
        let port = parsed
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let authority = uri.authority().cloned().ok_or("no host")?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            base_path: uri.path().trim_end_matches('/').into(),
            authority,
            host_header,
            https,
            host: host.into(),
            port,
        })
    }

    /// The URI scheme of requests to the endpoint.
    pub(super) fn scheme(&self) -> http::uri::Scheme {
        if self.https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }
}

/// TLS to one endpoint: the upstream's client configuration and the name verified.
#[derive(Clone)]
pub(super) struct EndpointTls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Resolved addresses of a host name, kept for the DNS refresh period.
#[derive(Debug)]
struct Resolved {
    at: Instant,
    addrs: Arc<[SocketAddr]>,
}

/// A connection's request sender: HTTP/1.1 (one request at a time, pooled) or HTTP/2
/// (multiplexed, shared by every request to the endpoint).
#[derive(Debug)]
pub(super) enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    /// Waits until the connection can take a request (an HTTP/1.1 connection that has just
    /// finished a response, or an HTTP/2 one under its stream limit).
    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// Sends a request; an error that carries the request back means nothing was written.
    pub(super) async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match self {
            Sender::H1(s) => s.try_send_request(request).await,
            Sender::H2(s) => s.try_send_request(request).await,
        }
    }
}

/// An idle keep-alive connection.
#[derive(Debug)]
pub(super) struct Idle {
    pub(super) sender: http1::SendRequest<Body>,
    pub(super) since: Instant,
    /// The upstream it counts for.
    pub(super) owner: Owner,
}

/// Idle HTTP/1.1 connections to one endpoint.
///
/// A plain-HTTP endpoint's pool is shared by every upstream of the process with an endpoint
/// at the same address (scheme, host and port) and the same idle timeout: a hundred APIs in
/// front of one backend keep one set of connections to it, as they would with one nginx
/// `upstream` block, and a redeployed API finds its connections open. A connection counts
/// for the upstream that holds it (see [`Owner`]): taking another upstream's idle connection
/// takes one of the taker's `maxConnections`, or leaves the connection when the taker is at
/// its limit. The pool goes (and its connections close) with the last upstream that uses
/// it. An `https://` endpoint's pool is its upstream's own: its connections carry that
/// upstream's TLS settings (trusted CAs, client certificate, server name).
#[derive(Debug, Default)]
pub(super) struct IdlePool {
    conns: Mutex<Vec<Idle>>,
    /// Whether other upstreams may share it.
    shared: bool,
}

/// What makes two plain-HTTP endpoints' connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    /// `host:port`, the host lower case.
    address: String,
    idle_timeout: Duration,
}

/// The shared pools of the process, by address; an entry outlives its pool by at most
/// until the next pool is made.
static SHARED_POOLS: std::sync::LazyLock<
    Mutex<std::collections::HashMap<PoolKey, std::sync::Weak<IdlePool>>>,
> = std::sync::LazyLock::new(Mutex::default);

impl IdlePool {
    /// The pool of an endpoint at `target`: the shared one of its address for plain HTTP,
    /// a new one of its own for HTTPS.
    fn for_target(target: &Target, idle_timeout: Duration) -> Arc<Self> {
        if target.https {
            return Arc::new(Self::default());
        }
        let key = PoolKey {
            address: format!("{}:{}", target.host.to_ascii_lowercase(), target.port),
            idle_timeout,
        };
        let mut pools = SHARED_POOLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pool) = pools.get(&key).and_then(std::sync::Weak::upgrade) {
            return pool;
        }
        pools.retain(|_, pool| pool.strong_count() > 0);
        let pool = Arc::new(Self {
            conns: Mutex::default(),
            shared: true,
        });
        pools.insert(key, Arc::downgrade(&pool));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One endpoint and its state.
#[derive(Debug)]
pub(super) struct EndpointState {
    /// The URL as configured (the metrics label).
    pub(super) url: std::sync::Arc<str>,
    pub(super) target: Target,
    pub(super) weight: u32,
    pub(super) in_flight: AtomicUsize,
    /// Failures in a row since the last success.
    pub(super) consecutive_failures: AtomicU32,
    /// Ejections without a healthy period in between.
    pub(super) ejections_in_row: AtomicU32,
    /// Milliseconds since the upstream's epoch until which the endpoint is ejected; 0 when
    /// it is not.
    pub(super) ejected_until_ms: AtomicU64,
    /// The active health check's verdict (true without a health check).
    pub(super) healthy: AtomicBool,
    pub(super) idle: Arc<IdlePool>,
    /// The HTTP/2 connection, shared (`protocol: h2`).
    pub(super) h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while an HTTP/2 connection is being opened, so that concurrent requests wait
    /// for that one instead of opening several.
    pub(super) h2_connecting: tokio::sync::Mutex<()>,
    /// Set when the upstream is retired: connections are no longer kept for reuse.
    pub(super) retired: AtomicBool,
    resolved: Mutex<Option<Resolved>>,
    /// For an `https://` endpoint.
    tls: Option<EndpointTls>,
    pub(super) metrics: EndpointMetrics,
}

impl EndpointState {
    /// The state of `spec`; `tls` is the upstream's TLS client, needed by an `https://`
    /// endpoint.
    pub(super) fn new(
        spec: &Endpoint,
        tls: Option<&UpstreamTlsClient>,
        idle_timeout: Duration,
        metrics: EndpointMetrics,
    ) -> Result<Self, String> {
        let target = Target::parse(&spec.url)?;
        let idle = IdlePool::for_target(&target, idle_timeout);
        let tls = match (target.https, tls) {
            (false, _) => None,
            (true, None) => return Err("an https:// endpoint needs a TLS client".to_string()),
            (true, Some(client)) => Some(EndpointTls {
                connector: client.connector.clone(),
                server_name: match &client.server_name {
                    Some(name) => name.clone(),
                    None => ServerName::try_from(target.host.to_string())
                        .map_err(|e| format!("host {:?}: {e}", target.host))?,
                },
            }),
        };
        metrics.healthy.set(1);
        Ok(Self {
            url: spec.url.as_str().into(),
            target,
            tls,
            weight: spec.weight.max(1),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections_in_row: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            idle,
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
            retired: AtomicBool::new(false),
            resolved: Mutex::new(None),
            metrics,
        })
    }

    /// Whether the endpoint takes traffic at `now_ms` (milliseconds since the upstream's
    /// epoch).
    pub(super) fn available(&self, now_ms: impl FnOnce() -> u64) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Whether the endpoint is ejected at `now_ms`.
    pub(super) fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Takes an idle connection that is still open and not past `idle_timeout`, for the
    /// upstream of `limits`: one it holds, or another upstream's that it takes over while it
    /// is under its limit.
    pub(super) fn take_idle(
        &self,
        idle_timeout: Duration,
        limits: &Arc<Limits>,
    ) -> Option<(http1::SendRequest<Body>, Owner)> {
        let mut idle = self.idle.lock();
        let mut left: Vec<Idle> = Vec::new();
        let mut found = None;
        // at its limit, an upstream takes only its own connections (checked once, rather
        // than by a slot asked for and handed back per connection)
        let may_take_over = limits.has_room();
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() || conn.since.elapsed() >= idle_timeout {
                continue;
            }
            if conn.owner.is(limits)
                || (may_take_over && conn.owner.take_over(limits, &self.metrics.connections))
            {
                found = Some((conn.sender, conn.owner));
                break;
            }
            // another upstream's connection stays for it
            left.push(conn);
        }
        idle.extend(left.into_iter().rev());
        found
    }

    /// Puts a connection back for reuse. A retired upstream closes the connections of its
    /// own pool; a shared pool keeps them for the upstreams at the same address (the one
    /// that replaced it, often), which take them over.
    pub(super) fn put_idle(&self, sender: http1::SendRequest<Body>, owner: Owner) {
        if sender.is_closed() || (!self.idle.shared && self.retired.load(Ordering::Acquire)) {
            return;
        }
        self.idle.lock().push(Idle {
            sender,
            since: Instant::now(),
            owner,
        });
    }

    /// The shared HTTP/2 connection, if it is open.
    pub(super) fn h2_sender(&self) -> Option<http2::SendRequest<Body>> {
        let slot = self
            .h2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Sets (or, with `None`, forgets) the shared HTTP/2 connection.
    pub(super) fn set_h2(&self, sender: Option<http2::SendRequest<Body>>) {
        *self
            .h2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sender;
    }

    /// Stops keeping connections of its own pool: closes the idle ones and refuses new ones
    /// (a shared pool keeps them for the other upstreams at the address).
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if !self.idle.shared {
            self.idle.lock().clear();
        }
        self.set_h2(None);
    }

    /// Closes one idle connection that counts for the upstream of `limits` (which frees one
    /// of its connections); whether there was one.
    pub(super) fn drop_one_idle(&self, limits: &Arc<Limits>) -> bool {
        let mut idle = self.idle.lock();
        match idle.iter().position(|c| c.owner.is(limits)) {
            Some(i) => {
                // `remove`, not `swap_remove`: the newest connections stay on top
                idle.remove(i);
                true
            }
            None => false,
        }
    }

    /// Closes the idle connections unused for `idle_timeout`.
    pub(super) fn expire_idle(&self, idle_timeout: Duration) {
        self.idle
            .lock()
            .retain(|conn| !conn.sender.is_closed() && conn.since.elapsed() < idle_timeout);
    }

    /// The endpoint's addresses, resolved again once `refresh` has passed.
    async fn addrs(&self, refresh: Duration) -> io::Result<Arc<[SocketAddr]>> {
        if let Ok(ip) = self.target.host.parse::<std::net::IpAddr>() {
            return Ok(Arc::from([SocketAddr::new(ip, self.target.port)]));
        }
        {
            let resolved = self
                .resolved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(resolved) = &*resolved
                && resolved.at.elapsed() < refresh
            {
                return Ok(Arc::clone(&resolved.addrs));
            }
        }
        let addrs: Arc<[SocketAddr]> =
            tokio::net::lookup_host((&*self.target.host, self.target.port))
                .await?
                .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.target.host),
            ));
        }
        *self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Resolved {
            at: Instant::now(),
            addrs: Arc::clone(&addrs),
        });
        Ok(addrs)
    }

    /// Opens a TCP connection to the first address that accepts within `timeout`.
    pub(super) async fn connect_tcp(
        &self,
        timeout: Duration,
        dns_refresh: Duration,
    ) -> io::Result<TcpStream> {
        let deadline = Instant::now() + timeout;
        let attempt = async {
            let addrs = self.addrs(dns_refresh).await?;
            let mut last = None;
            for addr in addrs.iter() {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(stream);
                    }
                    Err(err) => last = Some(err),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        };
        tokio::time::timeout_at(deadline, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", timeout.as_millis()),
                ))
            })
    }

    /// Opens a connection (HTTP/2 when `h2`, else HTTP/1.1; over TLS to an `https://`
    /// endpoint) and starts its task; `on_close` runs when it ends. `timeout` bounds the TCP
    /// connect and the TLS handshake, each.
    pub(super) async fn connect(
        &self,
        h2: bool,
        timeout: Duration,
        dns_refresh: Duration,
        on_close: impl FnOnce() + Send + 'static,
    ) -> Result<Sender, ConnectError> {
        let stream = self
            .connect_tcp(timeout, dns_refresh)
            .await
            .map_err(ConnectError)?;
        let Some(tls) = &self.tls else {
            return self.handshake(TokioIo::new(stream), h2, on_close).await;
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), stream);
        let stream = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                return Err(ConnectError(io::Error::new(
                    err.kind(),
                    format!("TLS handshake: {err}"),
                )));
            }
            Err(_) => {
                return Err(ConnectError(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {} ms", timeout.as_millis()),
                )));
            }
        };
        if h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError(io::Error::other(
                "the upstream did not agree to HTTP/2 in the TLS handshake (ALPN h2)",
            )));
        }
        self.handshake(TokioIo::new(stream), h2, on_close).await
    }

    /// Starts HTTP/1.1 or HTTP/2 on an open connection.
    async fn handshake<T>(
        &self,
        io: TokioIo<T>,
        h2: bool,
        on_close: impl FnOnce() + Send + 'static,
    ) -> Result<Sender, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handshake_error = |e: hyper::Error| ConnectError(io::Error::other(e));
        let sender = if h2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // a half-open shared connection is found out by its pings
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(handshake_error)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
                on_close();
            });
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(handshake_error)?;
            tokio::spawn(async move {
                // with upgrades: a 101 answer hands the connection over to the tunnel
                if let Err(err) = connection.with_upgrades().await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
                on_close();
            });
            Sender::H1(sender)
        };
        Ok(sender)
    }
}

/// A connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct ConnectError(pub(super) io::Error);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:9001/api/").unwrap();
        assert_eq!(t.authority.as_str(), "127.0.0.1:9001");
        assert_eq!(&*t.base_path, "/api");
        assert_eq!(t.port, 9001);
        let t = Target::parse("http://[::1]/").unwrap();
        assert_eq!(&*t.host, "::1");
        assert_eq!(t.port, 80);
        assert_eq!(t.host_header, "[::1]");
        assert_eq!(&*t.base_path, "");
        let t = Target::parse("http://backend.internal:8080").unwrap();
        assert_eq!(&*t.host, "backend.internal");
        assert!(Target::parse("ftp://x").is_err());
    }

    /// Plain-HTTP endpoints at one address (whatever their base paths or host spelling)
    /// share one pool when their idle timeouts match; HTTPS endpoints never share, and a
    /// pool goes with its last user.
    #[test]
    fn idle_pools_are_shared_by_address_and_idle_timeout() {
        let second = Duration::from_secs(1);
        let pool = |url: &str, idle| IdlePool::for_target(&Target::parse(url).unwrap(), idle);
        let a = pool("http://127.0.0.1:39411/a", second);
        let b = pool("http://127.0.0.1:39411/b/", second);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.shared);
        let upper = pool("http://LOCALHOST:39411", second);
        assert!(Arc::ptr_eq(&upper, &pool("http://localhost:39411", second)));
        assert!(!Arc::ptr_eq(&a, &pool("http://127.0.0.1:39412/a", second)));
        assert!(!Arc::ptr_eq(
            &a,
            &pool("http://127.0.0.1:39411/a", 2 * second)
        ));
        let tls = pool("https://127.0.0.1:39411", second);
        assert!(!tls.shared);
        assert!(!Arc::ptr_eq(&tls, &pool("https://127.0.0.1:39411", second)));
        // once its users are gone, the next endpoint at the address gets a new pool
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        let fresh = pool("http://127.0.0.1:39411/a", second);
        assert!(fresh.lock().is_empty());
    }
}
