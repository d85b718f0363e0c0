//! When a failed attempt may be tried again: the request must be safe to repeat, attempts
//! must be left, and the upstream's retry budget must allow it.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use http::Method;

use crate::model::Retries;

/// Unspent retries a budget can save up (in whole retries).
const MAX_SAVED_RETRIES: i64 = 100;

/// An upstream's retry settings and budget.
#[derive(Debug)]
pub(super) struct RetryPolicy {
    /// Retries after the first attempt.
    pub(super) attempts: u32,
    /// Bit `s - 502` set for each retried status among 502, 503 and 504.
    statuses: u8,
    budget: Budget,
}

/// Retries allowed as a share of the requests, plus a floor per second.
///
/// Each request deposits `percent` hundredths of a retry, each retry withdraws a whole one,
/// and at most [`MAX_SAVED_RETRIES`] are saved up; when the balance is spent, up to
/// `min_per_second` retries a second are still allowed.
#[derive(Debug)]
struct Budget {
    percent: i64,
    min_per_second: u32,
    /// In hundredths of a retry.
    balance: AtomicI64,
    epoch: Instant,
    /// The second (since `epoch`) that `spent_this_second` counts.
    second: AtomicU64,
    spent_this_second: AtomicU32,
}

impl RetryPolicy {
    pub(super) fn new(spec: &Retries) -> Self {
        let statuses = spec
            .statuses
            .iter()
            .filter(|s| (502..=504).contains(*s))
            .fold(0u8, |bits, s| bits | 1 << (s - 502));
        Self {
            attempts: spec.attempts,
            statuses,
            budget: Budget {
                percent: i64::from(spec.budget_percent),
                min_per_second: spec.min_per_second,
                balance: AtomicI64::new(0),
                epoch: Instant::now(),
                second: AtomicU64::new(0),
                spent_this_second: AtomicU32::new(0),
            },
        }
    }

    /// Counts a request into the budget.
    pub(super) fn deposit(&self) {
        if self.attempts == 0 || self.budget.percent == 0 {
            return;
        }
        let balance = self
            .budget
            .balance
            .fetch_add(self.budget.percent, Ordering::Relaxed);
        if balance > MAX_SAVED_RETRIES * 100 {
            self.budget
                .balance
                .store(MAX_SAVED_RETRIES * 100, Ordering::Relaxed);
        }
    }

    /// Whether the upstream's status is one that is retried.
    pub(super) fn retries_status(&self, status: u16) -> bool {
        (502..=504).contains(&status) && self.statuses & (1 << (status - 502)) != 0
    }

    /// Takes one retry from the budget, if it has one.
    pub(super) fn withdraw(&self) -> bool {
        let budget = &self.budget;
        if budget.balance.fetch_sub(100, Ordering::Relaxed) >= 100 {
            return true;
        }
        budget.balance.fetch_add(100, Ordering::Relaxed);
        let now = budget.epoch.elapsed().as_secs();
        if budget.second.swap(now, Ordering::Relaxed) != now {
            budget.spent_this_second.store(0, Ordering::Relaxed);
        }
        budget.spent_this_second.fetch_add(1, Ordering::Relaxed) < budget.min_per_second
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110 section 9.2.2).
pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, min_per_second: u32) -> RetryPolicy {
        RetryPolicy::new(&Retries {
            attempts: 2,
            statuses: vec![503, 504],
            budget_percent: percent,
            min_per_second,
        })
    }

    #[test]
    fn statuses() {
        let p = policy(20, 0);
        assert!(!p.retries_status(502));
        assert!(p.retries_status(503));
        assert!(p.retries_status(504));
        assert!(!p.retries_status(500));
        assert!(!p.retries_status(200));
    }

    #[test]
    fn the_budget_is_a_share_of_the_requests() {
        let p = policy(20, 0);
        assert!(!p.withdraw(), "nothing deposited yet");
        for _ in 0..100 {
            p.deposit();
        }
        let allowed = (0..100).filter(|_| p.withdraw()).count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn the_budget_saves_up_a_bounded_amount() {
        let p = policy(100, 0);
        for _ in 0..10_000 {
            p.deposit();
        }
        let allowed = (0..10_000).filter(|_| p.withdraw()).count();
        assert!((100..=102).contains(&allowed), "{allowed} retries saved up");
    }

    #[test]
    fn a_floor_per_second_when_the_budget_is_spent() {
        let p = policy(0, 3);
        let allowed = (0..10).filter(|_| p.withdraw()).count();
        // within one second (a second boundary in between may allow up to twice as many)
        assert!((3..=6).contains(&allowed), "{allowed}");
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
