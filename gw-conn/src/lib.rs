//! gw's connection admission, shared by every listener of gw: the proxy's traffic
//! listeners, its status port, the controller's admin API and the sync server.
//!
//! - [`ConnLimiter`] counts open connections, in total and per client address, and refuses
//!   the ones over either limit. What it hands out, a [`ConnSlot`], is released when its
//!   last clone is dropped, so that a WebSocket tunnel that outlives its HTTP connection
//!   keeps counting. [`accept`] takes the next connection a limiter has a slot for.
//! - [`PerAddress`] counts anything per client address (connections, requests in flight).
//!   IPv6 addresses are counted per `/64`: one host usually owns a whole `/64`, and counting
//!   single addresses would let it open a slot per address.
//! - [`Activity`] follows the requests of one connection ([`InFlight`] is one of them), so
//!   that its task can close it when no request arrives in time: a connection that sends
//!   nothing (or only a TLS handshake, or only the HTTP/2 preface) is closed once the first
//!   request is overdue, and one that has nothing in flight for the idle timeout is closed
//!   too ([`Expired`] says which).
//!
//! Nothing here allocates per request; a refused connection costs one map lookup. The crate
//! knows nothing of HTTP or of gRPC (it uses only std, tokio and a Prometheus gauge), so the
//! sync protocol (gw-sync) bounds its port without depending on the proxy (gw-core, which
//! re-exports this crate as `gw_core::conn` beside its HTTP server for control surfaces).
//!
//! ```
//! use std::net::IpAddr;
//!
//! use gw_conn::{ConnLimiter, ConnRefused};
//! use prometheus_client::metrics::gauge::Gauge;
//!
//! // two connections in all, one per client address
//! let limiter = ConnLimiter::new(2, 1, Gauge::default());
//! let client: IpAddr = "192.0.2.7".parse().unwrap();
//! let slot = limiter.try_acquire(client).unwrap();
//! assert_eq!(limiter.try_acquire(client).unwrap_err(), ConnRefused::PerAddress);
//! drop(slot);
//! assert!(limiter.try_acquire(client).is_ok());
//! ```
#![warn(missing_docs)]

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// The key an address is counted under: an IPv4 address (or an IPv4-mapped IPv6 one) as it
/// is, an IPv6 address by its `/64`.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(prefix.into())
        }
    }
}

const SHARDS: usize = 16;

/// Counts per client address (see [`address_key`]), with a limit checked on each
/// acquisition. Shared by clones.
#[derive(Debug, Clone)]
pub struct PerAddress {
    inner: Arc<PerAddressInner>,
}

#[derive(Debug)]
struct PerAddressInner {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    hasher: RandomState,
}

impl Default for PerAddress {
    fn default() -> Self {
        Self::new()
    }
}

impl PerAddress {
    /// An empty count.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(PerAddressInner {
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                hasher: RandomState::new(),
            }),
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let index = usize::try_from(self.inner.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.inner.shards[index]
    }

    /// One more for `ip`, unless it already has `max` (0: no limit).
    pub fn try_acquire(&self, ip: IpAddr, max: usize) -> Option<AddressGuard> {
        let key = address_key(ip);
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = shard.entry(key).or_insert(0);
        if max > 0 && *count as usize >= max {
            if *count == 0 {
                shard.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(AddressGuard {
            counts: self.clone(),
            key,
        })
    }

    /// How many `ip` has now.
    pub fn count(&self, ip: IpAddr) -> usize {
        let key = address_key(ip);
        let shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&key).map_or(0, |c| *c as usize)
    }

    /// How many addresses have something counted.
    pub fn addresses(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn release(&self, key: IpAddr) {
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = shard.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&key);
            }
        }
    }
}

/// One count of one address; given back when dropped.
#[derive(Debug)]
pub struct AddressGuard {
    counts: PerAddress,
    key: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        self.counts.release(self.key);
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefused {
    /// Every connection slot is taken.
    Total,
    /// The client's address holds its share already.
    PerAddress,
}

/// Open connections, in total and per client address; see the crate docs.
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug)]
struct LimiterInner {
    max_total: usize,
    max_per_address: usize,
    open: AtomicUsize,
    per_address: PerAddress,
    gauge: Gauge,
    /// Signalled each time a connection closes (to wait for a drain).
    closed: Notify,
}

impl ConnLimiter {
    /// At most `max_total` connections (at least 1), and at most `max_per_address` from one
    /// client address (0: no per-address limit). The number open is also kept in `gauge`.
    pub fn new(max_total: usize, max_per_address: usize, gauge: Gauge) -> Self {
        Self {
            inner: Arc::new(LimiterInner {
                max_total: max_total.max(1),
                max_per_address,
                open: AtomicUsize::new(0),
                per_address: PerAddress::new(),
                gauge,
                closed: Notify::new(),
            }),
        }
    }

    /// A slot for a connection from `ip`, or why there is none.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnSlot, ConnRefused> {
        let inner = &self.inner;
        let mut open = inner.open.load(Ordering::Acquire);
        loop {
            if open >= inner.max_total {
                return Err(ConnRefused::Total);
            }
            match inner.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => open = now,
            }
        }
        let Some(address) = inner.per_address.try_acquire(ip, inner.max_per_address) else {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnRefused::PerAddress);
        };
        inner.gauge.inc();
        Ok(ConnSlot(Arc::new(SlotInner {
            limiter: Arc::clone(inner),
            _address: address,
        })))
    }

    /// Connections open now (tunnels that outlived their HTTP connection included).
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Connections open now from `ip` (its `/64` for IPv6).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.inner.per_address.count(ip)
    }

    /// Completes once no connection is open, or after `timeout`; whether none is.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let closed = self.inner.closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if self.open() == 0 {
                    return;
                }
                closed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// One connection's place among the open ones. Clones share it; the place is given back
/// when the last clone is dropped (the listener puts one in every request's extensions, so
/// that a protocol switch keeps its connection counted for as long as the tunnel lasts).
#[derive(Debug, Clone)]
pub struct ConnSlot(#[allow(dead_code, reason = "held for its Drop")] Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    limiter: Arc<LimiterInner>,
    _address: AddressGuard,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
        self.limiter.gauge.dec();
        self.limiter.closed.notify_waiters();
    }
}

/// Accepts the next connection from `listener` that `limiter` has a slot for, with
/// `TCP_NODELAY` set. A failed accept (out of file descriptors, say) is logged and tried
/// again 50 ms later, so that the listener never stops; a connection over a limit is closed
/// at once and handed to `refused` with its peer. Cancel-safe: a connection is either
/// returned with its slot or closed.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    limiter: &ConnLimiter,
    mut refused: impl FnMut(ConnRefused, std::net::SocketAddr),
) -> (tokio::net::TcpStream, std::net::SocketAddr, ConnSlot) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match limiter.try_acquire(peer.ip()) {
            Ok(slot) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer, slot);
            }
            Err(why) => {
                drop(stream);
                refused(why, peer);
            }
        }
    }
}

/// The requests of one connection, for its idle and first-request deadlines.
///
/// Cheap on the request path: a request's start and end are an atomic add each, and the
/// end of the last request in flight one clock read; nothing wakes the watcher
/// ([`Activity::expired`]), which looks when its own timer fires.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Whether a request has arrived on the connection.
    started: AtomicBool,
    /// When the connection was made.
    opened: tokio::time::Instant,
    /// When it last had nothing in flight, in milliseconds since it was made.
    idle_since_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    /// A connection with no request yet, made now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            opened: tokio::time::Instant::now(),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A request arrived; it is in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Release);
        }
        InFlight(Arc::clone(self))
    }

    /// Whether a request has arrived on the connection.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Completes when the connection should be closed: no request within `first` of its
    /// making ([`Expired::NoRequest`]), or later, nothing in flight for `idle`
    /// ([`Expired::Idle`]). Never completes while a request is in flight. When a request
    /// outlasts `idle`, the connection's idleness after it is noticed up to `idle` late.
    pub async fn expired(&self, first: Duration, idle: Duration) -> Expired {
        let first_deadline = self.opened + first;
        loop {
            let now = tokio::time::Instant::now();
            if !self.started() {
                if now >= first_deadline {
                    return Expired::NoRequest;
                }
                // a request may come any moment: look again within the idle timeout
                tokio::time::sleep_until(first_deadline.min(now + idle)).await;
                continue;
            }
            if self.in_flight() > 0 {
                tokio::time::sleep(idle).await;
                continue;
            }
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let deadline = self.opened + since + idle;
            if now < deadline {
                tokio::time::sleep_until(deadline).await;
                // a request may have begun (or begun and ended) meanwhile: look again
                continue;
            }
            return Expired::Idle;
        }
    }
}

/// Why [`Activity::expired`] completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request arrived in time.
    NoRequest,
    /// Nothing was in flight for the idle timeout.
    Idle,
}

/// A request in flight on a connection ([`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            activity.idle_since_ms.store(now, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        assert_eq!(address_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(address_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            address_key(ip("2001:db8:1:2::7"))
        );
        assert_ne!(address_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn limits_hold_in_total_and_per_address() {
        let gauge = Gauge::default();
        let limiter = ConnLimiter::new(3, 2, gauge.clone());
        let a1 = limiter.try_acquire(ip("127.0.0.1")).unwrap();
        let a2 = limiter.try_acquire(ip("127.0.0.1")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("127.0.0.1")).unwrap_err(),
            ConnRefused::PerAddress
        );
        let b1 = limiter.try_acquire(ip("127.0.0.2")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("127.0.0.3")).unwrap_err(),
            ConnRefused::Total
        );
        assert_eq!((limiter.open(), gauge.get()), (3, 3));
        assert_eq!(limiter.open_from(ip("127.0.0.1")), 2);

        // a clone (a tunnel) keeps the slot until it goes too
        let tunnel = a1.clone();
        drop(a1);
        assert_eq!(limiter.open(), 3);
        drop(tunnel);
        assert_eq!((limiter.open(), gauge.get()), (2, 2));
        assert!(limiter.try_acquire(ip("127.0.0.1")).is_ok());
        drop((a2, b1));
        assert_eq!((limiter.open(), gauge.get()), (0, 0));
        assert_eq!(
            limiter.inner.per_address.addresses(),
            0,
            "no empty entries kept"
        );
    }

    #[test]
    fn no_per_address_limit_when_zero() {
        let limiter = ConnLimiter::new(100, 0, Gauge::default());
        let slots: Vec<_> = (0..100)
            .map(|_| limiter.try_acquire(ip("::1")).unwrap())
            .collect();
        assert_eq!(limiter.open_from(ip("::1")), 100);
        assert_eq!(
            limiter.try_acquire(ip("::1")).unwrap_err(),
            ConnRefused::Total
        );
        drop(slots);
        assert_eq!(limiter.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires() {
        let activity = Activity::new();
        let started = tokio::time::Instant::now();
        let expired = activity
            .expired(Duration::from_secs(3), Duration::from_mins(1))
            .await;
        assert_eq!(expired, Expired::NoRequest);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_and_never_during_one() {
        let activity = Activity::new();
        let watcher = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let why = activity
                    .expired(Duration::from_secs(3), Duration::from_secs(10))
                    .await;
                (why, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let request = activity.begin();
        // a request in flight for a minute: never idle meanwhile
        tokio::time::sleep(Duration::from_mins(1)).await;
        assert!(!watcher.is_finished());
        drop(request);
        let (why, elapsed) = watcher.await.unwrap();
        assert_eq!(why, Expired::Idle);
        assert_eq!(elapsed, Duration::from_secs(71));
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_slot() {
        let limiter = ConnLimiter::new(10, 0, Gauge::default());
        let slot = limiter.try_acquire(ip("127.0.0.1")).unwrap();
        assert!(!limiter.drained(Duration::from_secs(1)).await);
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.drained(Duration::from_mins(1)).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(slot);
        assert!(waiter.await.unwrap());
    }
}
