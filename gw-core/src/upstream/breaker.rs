//! The circuit breaker: an upstream's `maxConnections` and `maxPending`, and what holds
//! one of its connection slots.
//!
//! A connection (or an attempt to open one) holds an [`OpenSlot`] from the moment it is
//! asked for until it closes, whatever the path (closed, failed, cancelled); an idle
//! connection shared with other upstreams at the same address counts for the one that holds
//! it ([`Owner`]). Requests that find every slot taken wait, at most `maxPending` of them
//! ([`PendingGuard`]), for a slot to be released. This module counts; it opens nothing
//! (see `connector`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// The circuit breaker's counters.
#[derive(Debug)]
pub(super) struct Limits {
    /// `circuitBreaker.maxConnections`.
    pub(super) max_connections: u32,
    /// `circuitBreaker.maxPending`.
    pub(super) max_pending: u32,
    /// Connections open or being opened (and tunnels).
    pub(super) open: AtomicU32,
    /// Requests waiting for a connection.
    pub(super) pending: AtomicU32,
    /// Signalled when a connection is returned or closed, for requests waiting for one.
    pub(super) released: Notify,
}

impl Limits {
    /// The counters of a breaker with these limits, all at zero.
    pub(super) fn new(max_connections: u32, max_pending: u32) -> Self {
        Self {
            max_connections,
            max_pending,
            open: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            released: Notify::new(),
        }
    }

    /// Whether a connection slot is free now.
    pub(super) fn has_room(&self) -> bool {
        self.open.load(Ordering::Acquire) < self.max_connections
    }

    /// A place in the line of requests waiting for a connection, unless `maxPending` are
    /// waiting already; it is left when the guard is dropped.
    pub(super) fn wait_in_line(&self) -> Option<PendingGuard<'_>> {
        if self.pending.fetch_add(1, Ordering::SeqCst) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(PendingGuard(self))
    }

    /// Wakes the requests waiting for a connection (a connection was returned or closed).
    pub(super) fn release(&self) {
        // pairs with the waiter's count-then-check: either it sees the connection, or this
        // sees its count
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }
}

/// One of the upstream's `maxConnections`, held by a connection (or an attempt to open one)
/// and given back when it is dropped, whatever the path: closed, failed, or cancelled.
pub(super) struct OpenSlot(Arc<Limits>);

impl OpenSlot {
    /// A slot, if one is free. The count never goes past the limit, even for a moment, so
    /// that a concurrent request never sees a free slot as taken.
    pub(super) fn acquire(limits: &Arc<Limits>) -> Option<Self> {
        let mut open = limits.open.load(Ordering::Acquire);
        loop {
            if open >= limits.max_connections {
                return None;
            }
            match limits.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Self(Arc::clone(limits))),
                Err(now) => open = now,
            }
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.release();
    }
}

/// What a connection counts for: one of the `maxConnections` of the upstream that holds it,
/// and that upstream's gauge of open connections to the endpoint. Shared by the
/// connection's task, which lets go of the count when the connection closes, and by the
/// idle pool: another upstream at the same address that takes the idle connection over
/// takes the count over (the previous holder gets its slot back).
#[derive(Clone)]
pub(super) struct Owner(Arc<Mutex<Option<Hold>>>);

struct Hold {
    slot: OpenSlot,
    gauge: Gauge,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Owner {
    /// A connection (or an attempt to open one) that holds `slot`, counted in `gauge`.
    pub(super) fn new(slot: OpenSlot, gauge: &Gauge) -> Self {
        gauge.inc();
        Self(Arc::new(Mutex::new(Some(Hold {
            slot,
            gauge: gauge.clone(),
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Hold>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the connection counts for the upstream of `limits`.
    pub(super) fn is(&self, limits: &Arc<Limits>) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|hold| Arc::ptr_eq(&hold.slot.0, limits))
    }

    /// Moves the count to the upstream of `limits` (counted in `gauge`), unless that one is
    /// at its limit; whether it did.
    pub(super) fn take_over(&self, limits: &Arc<Limits>, gauge: &Gauge) -> bool {
        let Some(slot) = OpenSlot::acquire(limits) else {
            return false;
        };
        gauge.inc();
        let previous = self.lock().replace(Hold {
            slot,
            gauge: gauge.clone(),
        });
        // the previous holder's slot and gauge go now (its waiting requests are woken)
        drop(previous);
        true
    }

    /// The connection closed.
    pub(super) fn close(&self) {
        let hold = self.lock().take();
        drop(hold);
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").finish_non_exhaustive()
    }
}

/// Decrements the pending-request count when a waiting request leaves.
pub(super) struct PendingGuard<'a>(&'a Limits);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u32) -> Arc<Limits> {
        Arc::new(Limits::new(max_connections, 0))
    }

    /// A connection counts for one upstream at a time: taking it over moves the slot and
    /// the gauge, never beyond the taker's limit, and closing it frees whoever holds it.
    #[test]
    fn a_connection_counts_for_the_upstream_that_holds_it() {
        let (a, b) = (limits(1), limits(1));
        let (gauge_a, gauge_b) = (Gauge::default(), Gauge::default());
        let owner = Owner::new(OpenSlot::acquire(&a).unwrap(), &gauge_a);
        assert!(owner.is(&a) && !owner.is(&b));
        assert_eq!((a.open.load(Ordering::SeqCst), gauge_a.get()), (1, 1));

        assert!(owner.take_over(&b, &gauge_b));
        assert!(owner.is(&b) && !owner.is(&a));
        assert_eq!((a.open.load(Ordering::SeqCst), gauge_a.get()), (0, 0));
        assert_eq!((b.open.load(Ordering::SeqCst), gauge_b.get()), (1, 1));

        // a at its limit (another connection of its own) cannot take it back
        let other = Owner::new(OpenSlot::acquire(&a).unwrap(), &gauge_a);
        assert!(!owner.take_over(&a, &gauge_a));
        assert!(owner.is(&b));
        assert_eq!(a.open.load(Ordering::SeqCst), 1);

        owner.close();
        assert!(!owner.is(&b));
        assert_eq!((b.open.load(Ordering::SeqCst), gauge_b.get()), (0, 0));
        drop(other);
        assert_eq!((a.open.load(Ordering::SeqCst), gauge_a.get()), (0, 0));
    }
}
