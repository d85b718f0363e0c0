//! The bound on the memory that configuration messages in flight hold.
//!
//! A configuration message (Snapshot or Delta) lives, encoded, in the HTTP/2 layer until the
//! runtime has read it, and a runtime that never reads keeps it there for as long as its
//! connection lives. So every message sent reserves its encoded size from one budget shared
//! by every session, and gives it back when the runtime acknowledges (or rejects) it, or when
//! its session ends (which closes the connection, freeing the buffer). A message larger than
//! the whole budget takes all of it. On top of that, one client address may have only so many
//! messages unacknowledged, so that a flood from one address cannot take the whole budget from
//! the runtimes of the others.
//!
//! A session that finds no room waits, holding no message: it builds the message again once
//! it has its reservation (the state may have moved on meanwhile). Waiters on the budget are
//! served in arrival order.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gw_conn::{AddressGuard, PerAddress};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::InflightLimit;

/// See the module docs. Counted in KiB, so that a `u32` of permits covers any budget.
#[derive(Debug)]
pub(crate) struct Budget {
    semaphore: Arc<Semaphore>,
    total_kib: u32,
    per_address: PerAddress,
    max_per_address: usize,
    gauge: Gauge,
}

/// Room for one message in flight; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    _permit: OwnedSemaphorePermit,
    _address: Option<AddressGuard>,
    kib: u32,
    bytes: i64,
    gauge: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

impl Budget {
    /// At most `max_bytes` (at least 1 KiB) in flight over every session, and at most
    /// `max_per_address` messages unacknowledged per client address (0: no limit); the bytes
    /// reserved are kept in `gauge`.
    pub(crate) fn new(max_bytes: usize, max_per_address: usize, gauge: Gauge) -> Self {
        let total_kib = u32::try_from(max_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            per_address: PerAddress::new(),
            max_per_address,
            gauge,
        }
    }

    /// The permits a message of `bytes` takes: its KiB, at most the whole budget.
    fn kib(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib)
    }

    /// The address's share, if it has room (`Ok(None)`: no per-address limit applies).
    fn address(&self, ip: Option<IpAddr>) -> Result<Option<AddressGuard>, InflightLimit> {
        match ip {
            Some(ip) if self.max_per_address > 0 => self
                .per_address
                .try_acquire(ip, self.max_per_address)
                .map(Some)
                .ok_or(InflightLimit::PerAddress),
            _ => Ok(None),
        }
    }

    fn reservation(
        &self,
        permit: OwnedSemaphorePermit,
        address: Option<AddressGuard>,
        bytes: usize,
    ) -> Reservation {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.gauge.inc_by(bytes);
        Reservation {
            kib: u32::try_from(permit.num_permits()).unwrap_or(u32::MAX),
            _permit: permit,
            _address: address,
            bytes,
            gauge: self.gauge.clone(),
        }
    }

    /// Room for a message of `bytes` from `ip` now, or which limit is in the way.
    pub(crate) fn try_reserve(
        &self,
        ip: Option<IpAddr>,
        bytes: usize,
    ) -> Result<Reservation, InflightLimit> {
        let address = self.address(ip)?;
        let permit = Arc::clone(&self.semaphore)
            .try_acquire_many_owned(self.kib(bytes))
            .map_err(|_| InflightLimit::Bytes)?;
        Ok(self.reservation(permit, address, bytes))
    }

    /// Room for a message of `bytes` from `ip`, once there is some: first the address's
    /// share (checked a few times a second), then the bytes, in arrival order.
    pub(crate) async fn reserve(self: Arc<Self>, ip: Option<IpAddr>, bytes: usize) -> Reservation {
        let address = loop {
            if let Ok(address) = self.address(ip) {
                break address;
            }
            let pause = rand::random_range(100..=300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        };
        let Ok(permit) = Arc::clone(&self.semaphore)
            .acquire_many_owned(self.kib(bytes))
            .await
        else {
            // the semaphore is never closed
            return std::future::pending().await;
        };
        self.reservation(permit, address, bytes)
    }

    /// Whether `reservation` has room for a message of `bytes`.
    pub(crate) fn covers(&self, reservation: &Reservation, bytes: usize) -> bool {
        self.kib(bytes) <= reservation.kib
    }
}

impl Reservation {
    /// Records the size of the message actually sent under this reservation.
    pub(crate) fn resize(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.gauge.inc_by(bytes - self.bytes);
        self.bytes = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn bytes_in_flight_are_bounded_and_given_back() {
        let gauge = Gauge::default();
        let budget = Budget::new(10 * 1024, 0, gauge.clone());
        let a = budget.try_reserve(ip("127.0.0.1"), 6 * 1024).unwrap();
        assert_eq!(gauge.get(), 6 * 1024);
        assert_eq!(
            budget.try_reserve(ip("127.0.0.2"), 5 * 1024).unwrap_err(),
            InflightLimit::Bytes
        );
        let b = budget.try_reserve(ip("127.0.0.2"), 4 * 1024).unwrap();
        drop(a);
        assert_eq!(gauge.get(), 4 * 1024);
        // a message larger than the budget takes all of it, once it is free
        assert!(budget.try_reserve(None, 100 * 1024).is_err());
        drop(b);
        let mut all = budget.try_reserve(None, 100 * 1024).unwrap();
        assert!(budget.covers(&all, 100 * 1024));
        assert!(budget.try_reserve(None, 1).is_err());
        all.resize(50);
        assert_eq!(gauge.get(), 50);
        drop(all);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn one_address_has_only_its_share() {
        let budget = Budget::new(1024 * 1024, 2, Gauge::default());
        let a = budget.try_reserve(ip("10.0.0.1"), 10).unwrap();
        let _b = budget.try_reserve(ip("10.0.0.1"), 10).unwrap();
        assert_eq!(
            budget.try_reserve(ip("10.0.0.1"), 10).unwrap_err(),
            InflightLimit::PerAddress
        );
        assert!(budget.try_reserve(ip("10.0.0.2"), 10).is_ok());
        drop(a);
        assert!(budget.try_reserve(ip("10.0.0.1"), 10).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let budget = Arc::new(Budget::new(1024, 0, Gauge::default()));
        let held = budget.try_reserve(None, 1024).unwrap();
        let first = tokio::spawn(Arc::clone(&budget).reserve(None, 1024));
        tokio::task::yield_now().await;
        let second = tokio::spawn(Arc::clone(&budget).reserve(None, 10));
        tokio::task::yield_now().await;
        // the small message does not pass the large one that waits before it
        assert!(budget.try_reserve(None, 1).is_err());
        drop(held);
        let first = first.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap();
    }
}
