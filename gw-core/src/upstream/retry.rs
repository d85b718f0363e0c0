//! When a failed attempt may be tried again: the request must be safe to repeat, attempts
//! must be left, and the upstream's retry budget must allow it. A request whose pooled
//! connection turned out closed before anything was written is sent again without counting
//! as a retry (a stale resend), a few times.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use http::Method;
use prometheus_client::metrics::counter::Counter;

use crate::model::Retries;

/// Unspent retries a budget can save up (in whole retries).
const MAX_SAVED_RETRIES: i64 = 100;

/// Requests that found their pooled connection closed before anything was written are sent
/// again without counting as retries, at most this many times.
const MAX_STALE_RESENDS: u32 = 3;

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

    /// Whether a request may be sent more than once after its body was sent: it is safe to
    /// repeat (an idempotent method, no body, no protocol switch) and retries are on.
    pub(super) fn replays(&self, method: &Method, empty_body: bool, switching: bool) -> bool {
        self.attempts > 0 && !switching && is_idempotent(method) && empty_body
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

/// One request's attempts: the endpoints tried, the retries left, the stale resends made.
#[derive(Debug)]
pub(super) struct Attempts {
    /// Bit `i` set for each endpoint tried (the balancer picks another when it can).
    pub(super) tried: u64,
    retries_left: u32,
    stale_resends: u32,
}

impl Attempts {
    /// The attempts of a request of an upstream with `policy`.
    pub(super) fn new(policy: &RetryPolicy) -> Self {
        Self {
            tried: 0,
            retries_left: policy.attempts,
            stale_resends: 0,
        }
    }

    /// An attempt goes to endpoint `index`.
    pub(super) fn to(&mut self, index: usize) {
        self.tried |= 1 << index;
    }

    /// Whether another attempt may be made: retries left and the budget allows it (a retry
    /// is counted in `retries`).
    pub(super) fn retry(&mut self, policy: &RetryPolicy, retries: &Counter) -> bool {
        if self.retries_left == 0 || !policy.withdraw() {
            return false;
        }
        self.retries_left -= 1;
        retries.inc();
        true
    }

    /// Whether a request that found the connection to endpoint `index` closed before
    /// anything was written may be sent again without counting as a retry (to any endpoint,
    /// that one included).
    pub(super) fn resend_stale(&mut self, index: usize) -> bool {
        if self.stale_resends >= MAX_STALE_RESENDS {
            return false;
        }
        self.stale_resends += 1;
        self.tried &= !(1 << index);
        true
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110 section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
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

    /// Retries are spent once; stale resends do not spend them, are bounded, and give the
    /// endpoint back to the balancer's choice.
    #[test]
    fn attempts_count_retries_and_stale_resends_apart() {
        let p = policy(0, 100);
        let retries = Counter::default();
        let mut attempts = Attempts::new(&p);
        attempts.to(3);
        assert_eq!(attempts.tried, 1 << 3);
        assert!(attempts.resend_stale(3));
        assert_eq!(attempts.tried, 0);
        assert!(attempts.resend_stale(0) && attempts.resend_stale(0));
        assert!(!attempts.resend_stale(0), "at most {MAX_STALE_RESENDS}");
        assert!(attempts.retry(&p, &retries) && attempts.retry(&p, &retries));
        assert!(!attempts.retry(&p, &retries), "2 attempts");
        assert_eq!(retries.get(), 2);
    }

    #[test]
    fn replays_only_what_is_safe_to_repeat() {
        let p = policy(20, 0);
        assert!(p.replays(&Method::GET, true, false));
        assert!(!p.replays(&Method::GET, false, false), "a body");
        assert!(!p.replays(&Method::GET, true, true), "a protocol switch");
        assert!(!p.replays(&Method::POST, true, false));
        let off = RetryPolicy::new(&Retries {
            attempts: 0,
            statuses: vec![],
            budget_percent: 20,
            min_per_second: 0,
        });
        assert!(!off.replays(&Method::GET, true, false));
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
