//! Protocol switches (WebSocket): once the upstream answers `101 Switching Protocols`, the
//! gateway copies bytes both ways between the client and the upstream.
//!
//! A tunnel is bounded like a connection: it keeps its client connection's slot (the
//! listener's [`ConnSlot`]) and its place among the upstream's `maxConnections` until it
//! closes, it is closed when nothing crosses it either way for
//! [`TrafficLimits::tunnel_idle_timeout`](super::TrafficLimits), and it is closed after
//! [`TrafficLimits::tunnel_lifetime`](super::TrafficLimits) whatever crosses it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Response, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::breaker::Limits;
use super::connector::Lease;
use super::headers;
use crate::arrival::Arrival;
use crate::body::{self, Body};
use crate::conn::ConnSlot;
use crate::metrics::Limit;

/// A client's request to switch protocols (a WebSocket handshake), with what the tunnel
/// needs from the client's side.
pub(super) struct Switch {
    /// The `Upgrade` header's value.
    protocol: HeaderValue,
    /// The client connection, once hyper hands it over.
    downstream: hyper::upgrade::OnUpgrade,
    /// The client connection's slot, which the tunnel keeps.
    slot: Option<ConnSlot>,
}

impl Switch {
    /// The protocol switch a request asks for, taken out of its extensions; none to an
    /// HTTP/2 upstream (`h2`), which is sent the request as an ordinary one.
    pub(super) fn take(
        extensions: &mut http::Extensions,
        arrival: &Arrival,
        h2: bool,
    ) -> Option<Self> {
        let protocol = headers::upgrade_of(arrival)?;
        let downstream = extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        let slot = extensions.remove::<ConnSlot>();
        if h2 {
            return None;
        }
        Some(Self {
            protocol,
            downstream,
            slot,
        })
    }

    /// Asks the upstream for the switch (`Upgrade` and `Connection: upgrade`).
    pub(super) fn ask(&self, headers: &mut http::HeaderMap) {
        headers::set_upgrade(headers, self.protocol.clone());
    }

    /// Answers the upstream's `101 Switching Protocols` to the client and starts the tunnel
    /// (see [`tunnel`]); the upstream's connection leaves the pool for good.
    pub(super) fn answer(
        self,
        response: Response<Incoming>,
        mut lease: Lease,
        count: Option<TunnelCount>,
    ) -> Response<Body> {
        lease.sender = None;
        let count = count.unwrap_or_else(|| TunnelCount::new(&lease));
        tunnel(
            response,
            self.protocol,
            self.downstream,
            lease,
            count,
            self.slot,
        )
    }
}

/// Answers a protocol switch to the client and, once both sides have switched, copies
/// bytes both ways until either side closes or a limit of the tunnel is reached. The lease
/// (the endpoint's in-flight count), the upstream connection's count and the client
/// connection's slot live as long as the tunnel.
fn tunnel(
    mut response: Response<Incoming>,
    protocol: HeaderValue,
    downstream: hyper::upgrade::OnUpgrade,
    lease: Lease,
    count: TunnelCount,
    slot: Option<ConnSlot>,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    parts.version = Version::default();
    headers::prepare_response(&mut parts.headers);
    headers::set_upgrade(&mut parts.headers, protocol);
    let api = lease.upstream.api.clone();
    let traffic = Arc::clone(&lease.upstream.traffic);
    tokio::spawn(async move {
        let _lease = lease;
        let _count = count;
        let _slot = slot;
        let (upstream, downstream) = match tokio::try_join!(upstream, downstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(%api, error = %err, "protocol switch failed");
                return;
            }
        };
        let clock = Arc::new(Clock::new());
        let mut upstream = Touched {
            io: hyper_util::rt::TokioIo::new(upstream),
            clock: Arc::clone(&clock),
        };
        let mut downstream = Touched {
            io: hyper_util::rt::TokioIo::new(downstream),
            clock: Arc::clone(&clock),
        };
        let limits = traffic.limits;
        let copy = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
        tokio::select! {
            copied = copy => {
                if let Err(err) = copied {
                    tracing::debug!(%api, error = %err, "tunnel closed with an error");
                }
            }
            () = clock.idle_for(limits.tunnel_idle_timeout) => {
                traffic.metrics.limit_rejected(Limit::TunnelIdle);
                tracing::debug!(%api, "tunnel idle for the tunnel idle timeout; closing it");
            }
            () = tokio::time::sleep(limits.tunnel_lifetime) => {
                traffic.metrics.limit_rejected(Limit::TunnelLifetime);
                tracing::debug!(%api, "tunnel reached its lifetime; closing it");
            }
        }
    });
    Response::from_parts(parts, body::empty())
}

/// When bytes last crossed a tunnel, in milliseconds since the tunnel opened.
struct Clock {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Completes once nothing has crossed for `idle`.
    async fn idle_for(&self, idle: std::time::Duration) {
        loop {
            let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.opened + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a tunnel, touching the clock whenever bytes cross it.
struct Touched<T> {
    io: T,
    clock: Arc<Clock>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A tunnel's place among the upstream's open connections.
pub(super) struct TunnelCount {
    limits: Arc<Limits>,
    gauge: Gauge,
}

impl TunnelCount {
    pub(super) fn new(lease: &Lease) -> Self {
        let limits = Arc::clone(&lease.upstream.connector.limits);
        limits.open.fetch_add(1, Ordering::AcqRel);
        let gauge = lease.upstream.endpoints[lease.index]
            .metrics
            .connections
            .clone();
        gauge.inc();
        Self { limits, gauge }
    }
}

impl Drop for TunnelCount {
    fn drop(&mut self) {
        self.gauge.dec();
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        self.limits.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_bytes() {
        let clock = Arc::new(Clock::new());
        let started = Instant::now();
        let waiter = {
            let clock = Arc::clone(&clock);
            tokio::spawn(async move { clock.idle_for(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(7)).await;
        clock.touch();
        waiter.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(17));
    }
}
