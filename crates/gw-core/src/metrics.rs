//! Request metrics, registered into a registry the caller passes in (never a global).
//!
//! Label cardinality is bounded by the configuration: one series set per API and status
//! class, removed when the API is.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The gateway's request metrics.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<ApiLabels, Histogram, fn() -> Histogram>,
    unrouted: Family<StatusLabels, Counter>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "gw_requests",
            "Requests answered, by API and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "gw_request_duration_seconds",
            "Time from receiving a request to sending the response headers, by API",
            metrics.duration.clone(),
        );
        registry.register(
            "gw_unrouted_requests",
            "Requests that matched no API or were refused before routing, by status",
            metrics.unrouted.clone(),
        );
        metrics
    }

    /// Metrics that are counted but exported nowhere (for tests and embedders that do not
    /// want them).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            unrouted: Family::default(),
        }
    }

    /// The handles of one API, resolved once when its configuration is built.
    pub fn for_api(&self, api: &str) -> ApiMetrics {
        let classes = CLASSES.map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    api: api.to_string(),
                    class,
                })
                .clone()
        });
        let duration = self
            .duration
            .get_or_create(&ApiLabels {
                api: api.to_string(),
            })
            .clone();
        ApiMetrics { classes, duration }
    }

    /// Drops the series of an API that left the configuration.
    pub fn remove_api(&self, api: &str) {
        for class in CLASSES {
            self.requests.remove(&RequestLabels {
                api: api.to_string(),
                class,
            });
        }
        self.duration.remove(&ApiLabels {
            api: api.to_string(),
        });
    }

    /// Counts a request answered before routing (no route, bad path).
    pub fn unrouted(&self, status: StatusCode) {
        self.unrouted
            .get_or_create(&StatusLabels {
                status: status.as_u16(),
            })
            .inc();
    }
}

/// The metric handles of one API; recording is lock-free.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    classes: [Counter; 5],
    duration: Histogram,
}

impl ApiMetrics {
    /// Records one answered request.
    pub fn observe(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}
