//! Admin API requests: `gw_admin_requests_total{route, method, status}`,
//! `gw_admin_request_duration_seconds{route, method}`, and the verifications of OIDC tokens,
//! `gw_admin_oidc_verifications_total{outcome}`.

use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `route` label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 65 s (`?wait=applied` waits up to its timeout)
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The admin API's request metrics. [`AdminMetrics::default`] counts without exporting.
#[derive(Debug, Clone)]
pub struct AdminMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    oidc: Family<OutcomeLabels, Counter>,
}

impl Default for AdminMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            oidc: Family::default(),
        }
    }
}

impl AdminMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gw_admin_requests",
            "Admin API requests answered, by route template (`unmatched` for none), method and \
             status code",
            metrics.requests.clone(),
        );
        registry.register(
            "gw_admin_request_duration_seconds",
            "Admin API requests, from their head to their response's head, by route template and \
             method",
            metrics.duration.clone(),
        );
        registry.register(
            "gw_admin_oidc_verifications",
            "OIDC bearer tokens verified by the admin API, by outcome: accepted, expired, invalid \
             (any other 401), unmapped (valid, but mapped to no role: 403) or unavailable (no key \
             of the identity provider fetched yet: 503)",
            metrics.oidc.clone(),
        );
        metrics
    }

    /// Counts a request to `route` (a route template, or [`UNMATCHED`]) that was answered
    /// `status` after `elapsed`.
    pub fn observe(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method,
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method,
            })
            .observe(elapsed.as_secs_f64());
    }
}

impl AdminMetrics {
    /// Counts an OIDC token's verification that ended in `outcome` (a fixed word, see
    /// [`AdminMetrics::register`]).
    pub fn oidc_verification(&self, outcome: &'static str) {
        self.oidc.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// The `method` label: the methods the admin API serves by name, any other as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn methods_are_a_bounded_set() {
        use axum::http::Method;
        assert_eq!(super::method_label(&Method::PUT), "PUT");
        let custom = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(super::method_label(&custom), "other");
    }
}
