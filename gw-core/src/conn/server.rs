//! A small HTTP server (HTTP/1.1 and HTTP/2 with prior knowledge) whose connections are
//! bounded, for the control surfaces of gw: the controller's admin API and the runtime's
//! status port. The traffic listeners have their own loop (`gw_runtime::listener`).
//!
//! Every connection takes a slot of a [`ConnLimiter`] (in total and per client address; one
//! beyond either is closed at once), must complete its first request head within the header
//! read timeout (a connection that sends nothing, or only part of a head, or only the HTTP/2
//! preface, is closed then), gets the same timeout for every later request head (HTTP/1.1:
//! which also bounds an idle keep-alive connection), and is closed once it has had nothing in
//! flight for the idle timeout. On shutdown the listener closes, connections finish their
//! requests for at most the drain timeout, and the rest are closed.
//!
//! With a [`TlsConfig`], [`serve`] serves the same over TLS: each connection's handshake runs
//! on its own task within the header read timeout, with the configuration current when it was
//! accepted (a renewed certificate is replaced in place, and taken by the next connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::{Activity, ConnLimiter, ConnRefused, Expired};
use crate::BoxError;

/// The limits of one server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Open connections (at least 1); one beyond it is closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one `/64`); 0: no limit.
    pub max_connections_per_address: usize,
    /// Time allowed for a request head, the first one counted from the connection's start;
    /// HTTP/1.1 also counts it from the end of a response, so it is the keep-alive idle
    /// timeout too.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight for this long is closed (HTTP/2 connections,
    /// and any other).
    pub idle_timeout: Duration,
    /// The largest request head, in bytes (at least 8192).
    pub max_header_bytes: usize,
    /// On shutdown, the longest wait for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// What closed or refused a connection, as counted in `<prefix>_limit_rejections_total`.
const LIMITS: [&str; 7] = [
    "connections",
    "connections_per_address",
    "first_request_timeout",
    "header_timeout",
    "header_size",
    "idle_timeout",
    "tls_handshake",
];

/// The metrics of one server: `<prefix>_connections` (open now) and
/// `<prefix>_limit_rejections_total{limit}` (refused or closed by a limit: `connections`,
/// `connections_per_address`, `first_request_timeout`, `header_timeout`, `header_size`,
/// `idle_timeout`).
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    connections: Gauge,
    rejections: Family<LimitLabels, Counter>,
    /// The prefix, naming the server in logs.
    prefix: Arc<str>,
}

impl ServerMetrics {
    /// Registers the metrics of the server `what` (for the help text) under `prefix` (such
    /// as `gw_admin`).
    pub fn register(registry: &mut Registry, prefix: &str, what: &str) -> Self {
        let metrics = Self {
            prefix: Arc::from(prefix),
            ..Self::default()
        };
        registry.register(
            format!("{prefix}_connections"),
            format!("Open connections of the {what}"),
            metrics.connections.clone(),
        );
        registry.register(
            format!("{prefix}_limit_rejections"),
            format!(
                "Connections of the {what} refused or closed by a limit: {}",
                LIMITS.join(", ")
            ),
            metrics.rejections.clone(),
        );
        for limit in LIMITS {
            let _ = metrics.rejections.get_or_create(&LimitLabels { limit });
        }
        metrics
    }

    fn rejected(&self, limit: &'static str) {
        self.rejections.get_or_create(&LimitLabels { limit }).inc();
    }
}

/// A server's TLS configuration, replaced in place when its certificate is renewed.
pub type TlsConfig = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// A connection's bytes: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Serves `listener` until `shutdown` completes (see the module docs): each connection gets
/// the service `make` builds for the client's address. With `tls`, over TLS only: a client
/// that does not complete its handshake within the header read timeout is closed
/// (`<prefix>_limit_rejections_total{limit="tls_handshake"}` for a failed one).
pub async fn serve<M, S, B>(
    listener: TcpListener,
    limits: ServerLimits,
    metrics: ServerMetrics,
    tls: Option<TlsConfig>,
    make: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let limiter = ConnLimiter::new(
        limits.max_connections,
        limits.max_connections_per_address,
        metrics.connections.clone(),
    );
    let graceful = GracefulShutdown::new();
    // turns true when the listener stops: a handshake still under way ends then, instead of
    // holding the graceful shutdown for its whole deadline
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    // refusals are logged at warning level at most once a minute
    let mut warned: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let refused = |refused: ConnRefused, peer: SocketAddr| {
            metrics.rejected(match refused {
                ConnRefused::Total => "connections",
                ConnRefused::PerAddress => "connections_per_address",
            });
            if warned.is_none_or(|at| at.elapsed() >= Duration::from_mins(1)) {
                warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    %peer, ?refused,
                    "connection refused: limit reached (counted in {}_limit_rejections_total; \
                     logged once a minute)",
                    metrics.prefix
                );
            } else {
                tracing::debug!(%peer, ?refused, "connection refused: limit reached");
            }
        };
        let (stream, peer, slot) = tokio::select! {
            accepted = super::accept(&listener, &limiter, refused) => accepted,
            () = &mut shutdown => break,
        };
        let activity = Activity::new();
        let inner = make(peer);
        let service = {
            let activity = Arc::clone(&activity);
            let inner = Arc::new(inner);
            service_fn(move |request: Request<Incoming>| {
                let in_flight = activity.begin();
                let response = inner.call(request);
                async move {
                    let response = response.await;
                    drop(in_flight);
                    response
                }
            })
        };
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let acceptor = tls
            .as_ref()
            .map(|tls| tokio_rustls::TlsAcceptor::from(tls.load_full()));
        let metrics = metrics.clone();
        let (first, idle) = (limits.header_read_timeout, limits.idle_timeout);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let io: Box<dyn Io> = match acceptor {
                None => Box::new(stream),
                // the handshake counts against the first request's deadline
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(first, acceptor.accept(stream));
                    let handshake = tokio::select! {
                        done = handshake => done,
                        _ = stopped.wait_for(|stop| *stop) => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(err)) => {
                            metrics.rejected("tls_handshake");
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.rejected("first_request_timeout");
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            let connection = watcher.watch(connection);
            tokio::select! {
                result = connection => finish(result, &metrics, peer),
                why = activity.expired(first, idle) => {
                    metrics.rejected(match why {
                        Expired::NoRequest => "first_request_timeout",
                        Expired::Idle => "idle_timeout",
                    });
                    tracing::debug!(%peer, ?why, "closing a connection");
                }
            }
        });
    }
    drop(listener);
    stopping.send_replace(true);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
}

/// Counts how a connection ended.
fn finish(result: Result<(), BoxError>, metrics: &ServerMetrics, peer: SocketAddr) {
    if let Err(err) = result {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_parse_too_large() {
                metrics.rejected("header_size");
            } else if err.is_timeout() {
                metrics.rejected("header_timeout");
            }
        }
        tracing::debug!(error = %err, %peer, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    type Full = http_body_util::Full<bytes::Bytes>;

    /// A service that answers every request with 200 `ok`.
    fn ok() -> impl Service<
        Request<Incoming>,
        Response = Response<Full>,
        Error = Infallible,
        Future = std::future::Ready<Result<Response<Full>, Infallible>>,
    > + Send
    + Sync
    + 'static {
        service_fn(|_request: Request<Incoming>| {
            std::future::ready(Ok(Response::new(Full::new(bytes::Bytes::from_static(
                b"ok",
            )))))
        })
    }

    async fn start(
        limits: ServerLimits,
    ) -> (SocketAddr, Registry, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut registry = Registry::default();
        let metrics = ServerMetrics::register(&mut registry, "gw_test", "test server");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            limits,
            metrics,
            None,
            |_| ok(),
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, registry, stop)
    }

    async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Reads until the server closes; the text read, or `None` if it did not close in time.
    async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut text = Vec::new();
        tokio::time::timeout(within, stream.read_to_end(&mut text))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&text).into_owned())
    }

    fn metric(registry: &Registry, line_start: &str) -> i64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in {text}"))
    }

    #[tokio::test]
    async fn idle_and_slow_connections_are_closed_and_limits_hold() {
        let limits = ServerLimits {
            max_connections: 3,
            max_connections_per_address: 2,
            header_read_timeout: Duration::from_millis(400),
            ..ServerLimits::default()
        };
        let (addr, registry, stop) = start(limits).await;
        let started = std::time::Instant::now();
        let mut idle = connect_from(addr, "127.0.0.2").await;
        let mut slow = connect_from(addr, "127.0.0.2").await;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // over the address's share: closed at once
        let mut third = connect_from(addr, "127.0.0.2").await;
        assert_eq!(
            until_closed(&mut third, Duration::from_secs(2))
                .await
                .as_deref(),
            Some("")
        );
        // another address gets the last slot and is served
        let mut other = connect_from(addr, "127.0.0.3").await;
        other
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut other, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // the idle and the slow one are closed once the header read timeout is over
        assert!(
            until_closed(&mut idle, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(
            until_closed(&mut slow, Duration::from_secs(5))
                .await
                .is_some()
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(350), "{took:?}");
        assert_eq!(
            metric(
                &registry,
                "gw_test_limit_rejections_total{limit=\"connections_per_address\"}"
            ),
            1
        );
        let timeouts = metric(
            &registry,
            "gw_test_limit_rejections_total{limit=\"first_request_timeout\"}",
        ) + metric(
            &registry,
            "gw_test_limit_rejections_total{limit=\"header_timeout\"}",
        );
        assert_eq!(timeouts, 2);
        drop(stop);
    }

    #[tokio::test]
    async fn a_connection_with_nothing_in_flight_is_closed_after_the_idle_timeout() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        };
        let (addr, registry, _stop) = start(limits).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut client, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(
            metric(
                &registry,
                "gw_test_limit_rejections_total{limit=\"idle_timeout\"}"
            ),
            1
        );
        assert_eq!(metric(&registry, "gw_test_connections "), 0);
    }
}
