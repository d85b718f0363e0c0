//! The traffic listener: accepts connections, serves HTTP/1.1 (with `Upgrade`, such as
//! WebSocket) and HTTP/2 (prior knowledge) through the [`Gateway`], and drains in-flight
//! requests on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use gw_core::metrics::Limit;
use gw_core::{ConnInfo, Gateway};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;

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
    /// Open client connections; a connection beyond it is closed at once.
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

/// Holds one of the connection slots and keeps the open-connections gauge.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting and waits for open
/// connections to finish their requests, at most [`ListenerOptions::drain_timeout`].
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ListenerOptions,
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
    let metrics = gateway.metrics().clone();
    let open = Arc::new(AtomicUsize::new(0));
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
        if open.fetch_add(1, Ordering::AcqRel) >= options.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            metrics.limit_rejected(Limit::Connections);
            drop(stream);
            continue;
        }
        metrics.connections().inc();
        let slot = Slot {
            open: Arc::clone(&open),
            gauge: metrics.connections().clone(),
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            peer,
            secure: false,
        };
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(gateway.handle(request, conn).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(err) = connection.await {
                if let Some(err) = err.downcast_ref::<hyper::Error>() {
                    if err.is_parse_too_large() {
                        metrics.limit_rejected(Limit::HeaderSize);
                    } else if err.is_timeout() {
                        metrics.limit_rejected(Limit::HeaderTimeout);
                    }
                }
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
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
