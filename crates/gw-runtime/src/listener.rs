//! The traffic listeners: accept connections (plain, or TLS with the certificate chosen by
//! SNI), serve HTTP/1.1 (with `Upgrade`, such as WebSocket) and HTTP/2 (prior knowledge, or
//! ALPN over TLS) through the [`Gateway`], and drain in-flight requests on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use gw_core::metrics::Limit;
use gw_core::{ConnInfo, Gateway};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Limits of the downstream connections.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Time allowed for a client to send a request's headers (slowloris guard). The clock
    /// also runs while a keep-alive connection waits for its next request, so it is the
    /// idle timeout of client connections as well.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers), in bytes; 431 beyond it. At
    /// least 8192.
    pub max_header_bytes: usize,
    /// Open client connections, over every listener of the gateway together; a connection
    /// beyond it is closed at once.
    pub max_connections: usize,
    /// Longest wait for in-flight requests after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Holds one of the connection slots. The open-connections gauge is the count itself: it is
/// the gateway's, shared by every listener, so `max_connections` bounds them together.
struct Slot(Gauge);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting and waits for open
/// connections to finish their requests, at most [`ListenerOptions::drain_timeout`]. With
/// `tls`, every connection starts with a TLS handshake (bounded by the header read timeout)
/// and HTTP/2 or HTTP/1.1 follows as ALPN chose.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ListenerOptions,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
        .http2()
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let metrics = gateway.metrics().clone();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // out of file descriptors and the like: wait a little, keep serving
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = Slot(metrics.connections().clone());
        let before = slot.0.inc();
        if usize::try_from(before).unwrap_or(usize::MAX) >= options.max_connections {
            drop(slot);
            metrics.limit_rejected(Limit::Connections);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            peer,
            secure: tls.is_some(),
        };
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(gateway.handle(request, conn).await) }
        });
        let metrics = metrics.clone();
        match &tls {
            None => {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _slot = slot;
                    finish(connection.await, &metrics, peer);
                });
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                let watcher = graceful.watcher();
                let builder = Arc::clone(&builder);
                let timeout = options.header_read_timeout;
                tokio::spawn(async move {
                    let _slot = slot;
                    let stream = match tokio::time::timeout(timeout, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            metrics.tls_handshake_failed();
                            tracing::debug!(error = %err, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.limit_rejected(Limit::HeaderTimeout);
                            tracing::debug!(%peer, "no TLS handshake within the header read timeout");
                            return;
                        }
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    finish(watcher.watch(connection).await, &metrics, peer);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("draining open connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
}

/// Counts and logs how a connection ended.
fn finish(
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    metrics: &gw_core::metrics::ProxyMetrics,
    peer: std::net::SocketAddr,
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
