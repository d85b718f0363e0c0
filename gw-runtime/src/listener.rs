//! The traffic listeners: accept connections (plain, or TLS with the certificate chosen by
//! SNI), serve HTTP/1.1 (with `Upgrade`, such as WebSocket) and HTTP/2 (prior knowledge, or
//! ALPN over TLS) through the [`Gateway`], and drain in-flight requests on shutdown.
//!
//! Every connection is bounded in time and number, whatever the client does or fails to do:
//!
//! - slots: at most [`ListenerOptions::max_connections`] open connections over every
//!   listener of the gateway, and optionally at most
//!   [`ListenerOptions::max_connections_per_address`] from one client address; a WebSocket
//!   tunnel keeps its connection's slot until it closes;
//! - the first request (TLS handshake and protocol detection included) must arrive within
//!   the header read timeout of the accept, or the connection is closed: a socket that sends
//!   nothing, or only the HTTP/2 preface, holds its slot for that long at most;
//! - a connection with nothing in flight for [`ListenerOptions::idle_timeout`] is closed
//!   (gracefully: an HTTP/2 `GOAWAY`); HTTP/1.1 keep-alive connections also wait at most the
//!   header read timeout for their next request;
//! - HTTP/2: at most [`ListenerOptions::http2_max_streams`] concurrent streams per
//!   connection, keep-alive pings, the header list bounded by the header size limit, and
//!   hyper's guards against rapid reset (a connection that resets more than 20 streams
//!   before they are accepted is closed) and CONTINUATION floods;
//! - optionally, at most [`ListenerOptions::max_requests_per_address`] requests in flight
//!   from one client address (429 beyond it);
//! - a client that reads nothing of what the gateway has to send for
//!   [`ListenerOptions::send_timeout`] (a slow reader) has its connection closed, and the
//!   upstream exchange behind it ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gw_core::conn::{
    AddressGuard, ConnLimiter, ConnRefused, ConnSlot, Expired, InFlight, PerAddress,
};
use gw_core::metrics::{Limit, ProxyMetrics};
use gw_core::{Body, BoxError, ConnInfo, Gateway};
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Limits of the downstream connections.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Time allowed for a client to send a request's headers (slowloris guard). A
    /// connection's first request counts from the accept (TLS handshake and protocol
    /// detection included); an HTTP/1.1 keep-alive connection's next request counts from
    /// the end of the previous one.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers), in bytes; 431 beyond it. At
    /// least 8192.
    pub max_header_bytes: usize,
    /// Open client connections, over every listener of the gateway together (WebSocket
    /// tunnels included); a connection beyond it is closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 client: its `/64`); 0: no limit.
    /// Behind a load balancer that does not keep client addresses, every connection comes
    /// from the balancer: leave it at 0 there.
    pub max_connections_per_address: usize,
    /// Requests in flight from one client address, over all its connections (429 beyond
    /// it); 0: no limit.
    pub max_requests_per_address: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// HTTP/2 keep-alive: a ping this often, and the connection is closed when one is not
    /// answered within the same time; zero: no pings.
    pub http2_keepalive: Duration,
    /// A connection whose client reads nothing of what the gateway has to send for this
    /// long is closed (a client that asks for a large response and never reads it would
    /// otherwise hold the connection, and the upstream connection behind it, for ever).
    pub send_timeout: Duration,
    /// Connections the kernel queues for the listener before the gateway accepts them
    /// (capped by `net.core.somaxconn`). A short queue overflows in a burst of new
    /// connections, and the clients whose connection attempts are dropped wait a second or
    /// more for their retry.
    pub listen_backlog: u32,
    /// Longest wait for in-flight requests after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_mins(1),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            max_connections_per_address: 0,
            max_requests_per_address: 0,
            http2_max_streams: 100,
            http2_keepalive: Duration::from_secs(20),
            send_timeout: Duration::from_mins(1),
            listen_backlog: 4096,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A listener on `addr` whose kernel queue holds `backlog` connections (the standard
/// library's `bind` queues 128).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// How long a connection closed for idleness may take to say goodbye (an HTTP/2 `GOAWAY`
/// exchange) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The traffic listeners of one gateway: they share its connection slots and the counts of
/// requests per client address.
#[derive(Debug)]
pub struct Listeners {
    gateway: Arc<Gateway>,
    options: ListenerOptions,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: ConnLimiter,
    requests: PerAddress,
}

impl Listeners {
    /// Listeners for `gateway` with `options`; the gateway's open-connections gauge counts
    /// their connections.
    pub fn new(gateway: Arc<Gateway>, options: ListenerOptions) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_buf_size(options.max_header_bytes.max(8192));
        let keepalive = (!options.http2_keepalive.is_zero()).then_some(options.http2_keepalive);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(options.http2_max_streams.max(1))
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(options.http2_keepalive)
            // hyper's defaults, stated: a connection that resets this many streams before
            // they are accepted (rapid reset), or makes the gateway reset this many, is closed
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(1024));
        let connections = ConnLimiter::new(
            options.max_connections,
            options.max_connections_per_address,
            gateway.metrics().connections().clone(),
        );
        Self {
            gateway,
            options,
            builder: Arc::new(builder),
            connections,
            requests: PerAddress::new(),
        }
    }

    /// The connection slots (open connections, in total and per address).
    pub fn connections(&self) -> &ConnLimiter {
        &self.connections
    }

    /// Serves `listener` until `shutdown` completes, then stops accepting and waits for open
    /// connections to finish their requests, at most [`ListenerOptions::drain_timeout`].
    /// With `tls`, every connection starts with a TLS handshake (within the header read
    /// timeout) and HTTP/2 or HTTP/1.1 follows as ALPN chose.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) {
        let metrics = self.gateway.metrics();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let refused = |refused: ConnRefused, _| {
                metrics.limit_rejected(match refused {
                    ConnRefused::Total => Limit::Connections,
                    ConnRefused::PerAddress => Limit::ConnectionsPerAddress,
                });
            };
            let (stream, peer, slot) = tokio::select! {
                accepted = gw_core::conn::accept(&listener, &self.connections, refused) => accepted,
                () = &mut shutdown => break,
            };
            let conn = Connection {
                info: ConnInfo {
                    peer,
                    secure: tls.is_some(),
                },
                slot,
                gateway: Arc::clone(&self.gateway),
                builder: Arc::clone(&self.builder),
                requests: self.requests.clone(),
                options: self.options.clone(),
                stop: stop_rx.clone(),
            };
            match &tls {
                None => {
                    let first = self.options.header_read_timeout;
                    tokio::spawn(conn.drive(stream, first));
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    tokio::spawn(async move {
                        let started = tokio::time::Instant::now();
                        let first = conn.options.header_read_timeout;
                        let stream = match tokio::time::timeout(first, handshake).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(err)) => {
                                conn.gateway.metrics().tls_handshake_failed();
                                tracing::debug!(error = %err, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                conn.gateway
                                    .metrics()
                                    .limit_rejected(Limit::FirstRequestTimeout);
                                tracing::debug!(%peer, "no TLS handshake within the header read timeout");
                                return;
                            }
                        };
                        let left = first.saturating_sub(started.elapsed());
                        conn.drive(stream, left).await;
                    });
                }
            }
        }
        drop(listener);
        tracing::info!("draining open connections");
        let _ = stop_tx.send(true);
        if self.connections.drained(self.options.drain_timeout).await {
            tracing::info!("all connections drained");
        } else {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    info: ConnInfo,
    slot: ConnSlot,
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    requests: PerAddress,
    options: ListenerOptions,
    stop: watch::Receiver<bool>,
}

/// Why a connection's task stopped serving it before it ended by itself.
enum Ending {
    Expired(Expired),
    /// An HTTP/2 response waited for the client to take its next frame for the send timeout.
    Stalled,
    Stop,
}

impl Connection {
    /// Serves the connection until it ends, its first request is overdue (`first` from
    /// now), it has been idle too long, or the listener stops.
    async fn drive<I>(self, io: I, first: Duration)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            info,
            slot,
            gateway,
            builder,
            requests,
            options,
            mut stop,
        } = self;
        let activity = gw_core::conn::Activity::new();
        let stalls = Arc::new(Stalls::default());
        let metrics = gateway.metrics().clone();
        let io = SendDeadline::new(io, options.send_timeout, metrics.clone());
        let service = {
            let activity = Arc::clone(&activity);
            let stalls = Arc::clone(&stalls);
            let gateway = Arc::clone(&gateway);
            let max_requests = options.max_requests_per_address;
            service_fn(move |mut request: Request<Incoming>| {
                let in_flight = activity.begin();
                // `None`: over the limit of the client's address
                let address = if max_requests > 0 {
                    requests.try_acquire(info.peer.ip(), max_requests).map(Some)
                } else {
                    Some(None)
                };
                if address.is_some() && request.headers().contains_key(http::header::UPGRADE) {
                    // a protocol switch becomes a tunnel that outlives this connection's
                    // task: it keeps the connection's slot
                    request.extensions_mut().insert(slot.clone());
                }
                let gateway = Arc::clone(&gateway);
                // an HTTP/2 response is sent only as the client's flow-control window allows:
                // its clock tells the connection when it waits too long for the client
                let clock = (request.version() == http::Version::HTTP_2).then(|| stalls.clock());
                async move {
                    let Some(address) = address else {
                        gateway.metrics().limit_rejected(Limit::RequestsPerAddress);
                        return Ok(too_many_requests().map(|body| Tracked {
                            inner: body,
                            clock: None,
                            _in_flight: None,
                            _address: None,
                        }));
                    };
                    let response = gateway.handle(request, info).await;
                    if let Some(clock) = &clock {
                        // handed to the connection: it waits for the client's window (a
                        // client that never opens it never has the body polled at all)
                        clock.set_waiting(!http_body::Body::is_end_stream(response.body()));
                    }
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        inner: body,
                        clock,
                        _in_flight: Some(in_flight),
                        _address: address,
                    }))
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let ending = tokio::select! {
            result = connection.as_mut() => {
                finish(result, &metrics, info.peer);
                return;
            }
            expired = activity.expired(first, options.idle_timeout) => Ending::Expired(expired),
            () = stalls.stalled(options.send_timeout) => Ending::Stalled,
            () = stopped(&mut stop) => Ending::Stop,
        };
        match ending {
            Ending::Expired(Expired::NoRequest) => {
                metrics.limit_rejected(Limit::FirstRequestTimeout);
                tracing::debug!(peer = %info.peer, "no request within the header read timeout; closing");
            }
            Ending::Expired(Expired::Idle) => {
                metrics.limit_rejected(Limit::IdleTimeout);
                connection.as_mut().graceful_shutdown();
                if let Ok(result) = tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await {
                    finish(result, &metrics, info.peer);
                }
            }
            Ending::Stalled => {
                // the client holds the response (and the upstream exchange behind it) by not
                // reading: the connection goes, with every stream on it
                metrics.limit_rejected(Limit::SendTimeout);
                tracing::debug!(peer = %info.peer, "an HTTP/2 response waited for the client for the send timeout; closing");
            }
            Ending::Stop if !activity.started() => {}
            Ending::Stop => {
                connection.as_mut().graceful_shutdown();
                finish(connection.await, &metrics, info.peer);
            }
        }
    }
}

/// Completes once `stop` turns true (never, if its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// 429 for a request over the limit of its client address.
fn too_many_requests() -> Response<Body> {
    let mut response = gw_core::error::json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "too many requests in flight from this address",
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// A response body that keeps its request counted as in flight (on its connection, and for
/// its client address) until it is sent or dropped; over HTTP/2, it also tells its
/// connection's [`Stalls`] when it waits for the client.
struct Tracked {
    inner: Body,
    clock: Option<Arc<SendClock>>,
    _in_flight: Option<InFlight>,
    _address: Option<AddressGuard>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(clock) = &self.clock {
            // polled: the client has room again. A data frame handed on with more to come:
            // the next poll waits for the client to take it
            let waits = matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data())
                && !self.inner.is_end_stream();
            clock.set_waiting(waits);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When an HTTP/2 response body began to wait for the client to take its next frame, in
/// milliseconds since its connection's [`Stalls`] began (0: it does not wait).
#[derive(Debug)]
struct SendClock {
    waiting_since_ms: std::sync::atomic::AtomicU64,
    opened: Option<tokio::time::Instant>,
}

impl SendClock {
    fn set_waiting(&self, waits: bool) {
        let value = match (waits, self.opened) {
            (true, Some(opened)) => u64::try_from(opened.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            _ => 0,
        };
        self.waiting_since_ms
            .store(value, std::sync::atomic::Ordering::Release);
    }
}

/// The response bodies of one HTTP/2 connection: a client whose flow-control window stays
/// shut (a slow reader that never lets the socket fill, so the send deadline of the socket
/// never starts) holds a response and the upstream exchange behind it; this finds it.
#[derive(Debug)]
struct Stalls {
    opened: tokio::time::Instant,
    bodies: std::sync::Mutex<Vec<std::sync::Weak<SendClock>>>,
}

impl Default for Stalls {
    fn default() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            bodies: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Stalls {
    /// The clock of a new response body.
    fn clock(&self) -> Arc<SendClock> {
        let clock = Arc::new(SendClock {
            waiting_since_ms: std::sync::atomic::AtomicU64::new(0),
            opened: Some(self.opened),
        });
        let mut bodies = self
            .bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if bodies.len() >= 64 {
            bodies.retain(|body| body.strong_count() > 0);
        }
        bodies.push(Arc::downgrade(&clock));
        clock
    }

    /// Completes once a response body has waited for the client for `timeout`; looks every
    /// half of it (never, for a connection whose bodies never wait).
    async fn stalled(&self, timeout: Duration) {
        let tick = (timeout / 2).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let mut bodies = self
                .bodies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bodies.retain(|body| body.strong_count() > 0);
            let stalled = bodies
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .any(|clock| {
                    let since = clock
                        .waiting_since_ms
                        .load(std::sync::atomic::Ordering::Acquire);
                    since != 0 && now.saturating_sub(since) >= limit
                });
            if stalled {
                return;
            }
        }
    }
}

/// A client connection whose writes fail once one has waited for the client to read for
/// the send timeout. Nothing is allocated until a write first has to wait.
struct SendDeadline<I> {
    io: I,
    timeout: Duration,
    /// Armed while a write waits.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    metrics: ProxyMetrics,
}

impl<I> SendDeadline<I> {
    fn new(io: I, timeout: Duration, metrics: ProxyMetrics) -> Self {
        Self {
            io,
            timeout,
            timer: None,
            waiting: false,
            metrics,
        }
    }

    /// Follows a write's progress: `Err` once it has waited for the send timeout.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timer = match &mut self.timer {
            Some(timer) => {
                if !self.waiting {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.waiting = true;
        if timer.as_mut().poll(cx).is_ready() {
            self.metrics.limit_rejected(Limit::SendTimeout);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the send timeout",
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts and logs how a connection ended.
fn finish(
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    metrics: &ProxyMetrics,
    peer: SocketAddr,
) {
    if let Err(err) = result {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_parse_too_large() {
                metrics.limit_rejected(Limit::HeaderSize);
            } else if err.is_timeout() {
                metrics.limit_rejected(Limit::HeaderTimeout);
            }
        }
        tracing::debug!(error = %err, %peer, "connection ended with an error");
    }
}
