//! Outlier ejection (passive health): an endpoint that fails `consecutiveFailures` attempts
//! in a row is taken out of the balancer's choice for a while, longer each time it is
//! ejected again without a healthy period in between, and never more than
//! `maxEjectedPercent` of the endpoints at once.
//!
//! This module keeps the counts and decides; the attempt reports what happened to it, and
//! the upstream logs an ejection and schedules the end of it (see `health`).

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::balance::Usable;
use super::endpoint::EndpointState;
use crate::model::OutlierDetection;

/// An upstream's outlier detection: its settings and the clock of its ejections.
#[derive(Debug)]
pub(super) struct Outlier {
    spec: OutlierDetection,
    /// The zero of the millisecond clock of ejections.
    epoch: std::time::Instant,
    /// Serializes ejection decisions, so that `maxEjectedPercent` holds under races.
    ejecting: Mutex<()>,
}

/// An ejection just decided.
pub(super) struct Ejection {
    /// The failures in a row that caused it.
    pub(super) failures: u32,
    /// How long the endpoint is out.
    pub(super) length: Duration,
}

impl Outlier {
    pub(super) fn new(spec: OutlierDetection) -> Self {
        Self {
            spec,
            epoch: std::time::Instant::now(),
            ejecting: Mutex::new(()),
        }
    }

    /// Milliseconds since the upstream was built (never 0, so that 0 can mean "not set").
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Sets an endpoint's `healthy` gauge from its state.
    pub(super) fn refresh_gauge(&self, endpoint: &EndpointState) {
        let up = endpoint.available(|| self.now_ms());
        endpoint.metrics.healthy.set(i64::from(up));
    }

    /// Counts a failed attempt on `endpoints[index]`; ejects the endpoint after too many in
    /// a row, unless too many are ejected already.
    pub(super) fn failed(&self, endpoints: &[EndpointState], index: usize) -> Option<Ejection> {
        let od = &self.spec;
        if od.consecutive_failures == 0 {
            return None;
        }
        let endpoint = &endpoints[index];
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < od.consecutive_failures {
            return None;
        }
        let _deciding = self
            .ejecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.now_ms();
        if endpoint.is_ejected(now) {
            return None;
        }
        let ejected = endpoints.iter().filter(|e| e.is_ejected(now)).count();
        if (ejected + 1) * 100 > od.max_ejected_percent as usize * endpoints.len() {
            return None;
        }
        let in_row = endpoint.ejections_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        let length = od
            .base_ejection
            .as_duration()
            .saturating_mul(in_row)
            .min(od.max_ejection.as_duration());
        let length_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        endpoint
            .ejected_until_ms
            .store(now.saturating_add(length_ms), Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        endpoint.metrics.ejections.inc();
        endpoint.metrics.healthy.set(0);
        Some(Ejection { failures, length })
    }

    /// Counts a successful attempt on `endpoint`.
    pub(super) fn succeeded(&self, endpoint: &EndpointState) {
        if endpoint.consecutive_failures.load(Ordering::Relaxed) != 0 {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if endpoint.ejections_in_row.load(Ordering::Relaxed) != 0 {
            // healthy for a base ejection time since it came back: the next ejection starts
            // from the base length again
            let until = endpoint.ejected_until_ms.load(Ordering::Relaxed);
            let base =
                u64::try_from(self.spec.base_ejection.as_duration().as_millis()).unwrap_or(0);
            if self.now_ms() > until.saturating_add(base) {
                endpoint.ejections_in_row.store(0, Ordering::Relaxed);
                endpoint.ejected_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// The endpoints as the balancer sees them (ejected and unhealthy ones unavailable), with
/// the clock read at most once.
pub(super) struct View<'a> {
    endpoints: &'a [EndpointState],
    outlier: &'a Outlier,
    now: Cell<Option<u64>>,
}

impl<'a> View<'a> {
    pub(super) fn new(endpoints: &'a [EndpointState], outlier: &'a Outlier) -> Self {
        Self {
            endpoints,
            outlier,
            now: Cell::new(None),
        }
    }
}

impl Usable for View<'_> {
    fn len(&self) -> usize {
        self.endpoints.len()
    }

    fn available(&self, i: usize) -> bool {
        self.endpoints[i].available(|| match self.now.get() {
            Some(now) => now,
            None => {
                let now = self.outlier.now_ms();
                self.now.set(Some(now));
                now
            }
        })
    }

    fn in_flight(&self, i: usize) -> usize {
        self.endpoints[i].in_flight.load(Ordering::Relaxed)
    }

    fn weight(&self, i: usize) -> u32 {
        self.endpoints[i].weight
    }
}
