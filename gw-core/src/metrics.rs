//! Request metrics, registered into a registry the caller passes in (never a global).
//!
//! Label cardinality is bounded: one series set per API, operation and status class (bounded
//! by the configuration, removed with the API or operation), and per consumer up to
//! [`MAX_CONSUMER_SERIES`] consumers, the others counted as `_other`.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: String,
    /// `GET /items/{id}`, or `*` for an API without operations.
    operation: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    api: String,
    consumer: String,
    class: &'static str,
}

/// The `consumer` label of the consumers beyond [`MAX_CONSUMER_SERIES`]; `_` cannot start
/// a consumer's name.
pub const OTHER_CONSUMERS: &str = "_other";

/// The most consumers with series of their own; requests of others count as `_other`.
pub const MAX_CONSUMER_SERIES: usize = 1000;

/// The per-consumer counters resolved so far.
#[derive(Debug, Default)]
struct ConsumerCounters {
    /// The consumers that have series of their own (at most [`MAX_CONSUMER_SERIES`]).
    named: std::collections::HashSet<String>,
    /// API -> consumer -> the counters of each status class (those of `_other` for the
    /// consumers beyond the bound).
    by_api: std::collections::HashMap<String, std::collections::HashMap<String, [Counter; 5]>>,
}

/// The `operation` label of an API without operations.
pub const ANY_OPERATION: &str = "*";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    api: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointErrorLabels {
    api: String,
    endpoint: String,
    kind: &'static str,
}

/// The kinds of `gw_upstream_errors_total`.
const ERROR_KINDS: [&str; 4] = ["connect", "reset", "timeout", "status"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
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
    consumer_requests: Family<ConsumerLabels, Counter>,
    /// The consumers that have series of their own.
    consumers: std::sync::Arc<std::sync::RwLock<ConsumerCounters>>,
    duration: Family<ApiLabels, Histogram, fn() -> Histogram>,
    unrouted: Family<StatusLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
    connections: Gauge,
    request_buffer: Gauge,
    request_buffer_overflows: Counter,
    tls_handshake_failures: Counter,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    upstream: UpstreamFamilies,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

/// A limit that refused a request or a connection, as counted in
/// `gw_limit_rejections_total{limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The request head exceeded the header size limit (431).
    HeaderSize,
    /// The request URI exceeded its limit (414).
    UriLength,
    /// The request body exceeded the API's limit (413).
    BodySize,
    /// The request head did not arrive within the header read timeout.
    HeaderTimeout,
    /// A connection beyond the connection limit was closed at once.
    Connections,
    /// A connection beyond the limit of one client address was closed at once.
    ConnectionsPerAddress,
    /// A request beyond the limit of requests in flight from one client address (429).
    RequestsPerAddress,
    /// A connection closed because its first request (TLS handshake and protocol detection
    /// included) did not arrive within the header read timeout.
    FirstRequestTimeout,
    /// A connection closed after nothing was in flight on it for the idle timeout.
    IdleTimeout,
    /// A request body that stopped arriving for the body read timeout (408).
    BodyTimeout,
    /// A request body that arrived slower than the minimum rate (408).
    BodyRate,
    /// A WebSocket tunnel closed after nothing crossed it for the tunnel idle timeout.
    TunnelIdle,
    /// A WebSocket tunnel closed at the end of its longest lifetime.
    TunnelLifetime,
    /// A connection closed because the client read nothing of what the gateway had to send
    /// for the send timeout.
    SendTimeout,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::HeaderSize => "header_size",
            Limit::UriLength => "uri_length",
            Limit::BodySize => "body_size",
            Limit::HeaderTimeout => "header_timeout",
            Limit::Connections => "connections",
            Limit::ConnectionsPerAddress => "connections_per_address",
            Limit::RequestsPerAddress => "requests_per_address",
            Limit::FirstRequestTimeout => "first_request_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::BodyTimeout => "body_timeout",
            Limit::BodyRate => "body_rate",
            Limit::TunnelIdle => "tunnel_idle",
            Limit::TunnelLifetime => "tunnel_lifetime",
            Limit::SendTimeout => "send_timeout",
        }
    }
}

/// The per-endpoint and per-upstream families.
#[derive(Debug, Clone)]
struct UpstreamFamilies {
    requests: Family<EndpointLabels, Counter>,
    errors: Family<EndpointErrorLabels, Counter>,
    duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    ejections: Family<EndpointLabels, Counter>,
    healthy: Family<EndpointLabels, Gauge>,
    connections: Family<EndpointLabels, Gauge>,
    retries: Family<ApiLabels, Counter>,
    overflows: Family<ApiLabels, Counter>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "gw_requests",
            "Requests answered, by API, operation and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "gw_consumer_requests",
            "Requests of authenticated consumers, by API, consumer and status class (at most 1000 consumers; the others as `_other`)",
            metrics.consumer_requests.clone(),
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
        registry.register(
            "gw_limit_rejections",
            "Requests, connections and tunnels refused or closed by a limit: header_size, uri_length, body_size, header_timeout, connections, connections_per_address, requests_per_address, first_request_timeout, idle_timeout, body_timeout, body_rate, tunnel_idle, tunnel_lifetime, send_timeout",
            metrics.limits.clone(),
        );
        registry.register(
            "gw_downstream_connections",
            "Open client connections",
            metrics.connections.clone(),
        );
        registry.register(
            "gw_request_buffer_bytes",
            "Bytes of request bodies read ahead and not yet sent upstream (bounded by --request-buffer-memory)",
            metrics.request_buffer.clone(),
        );
        registry.register(
            "gw_request_buffer_overflows",
            "Requests refused with 503 request_buffer_full: their body found no room in the read-ahead memory (in total or in their address's share) for the body timeout",
            metrics.request_buffer_overflows.clone(),
        );
        registry.register(
            "gw_tls_handshake_failures",
            "TLS handshakes of clients that failed (no certificate for the server name, protocol errors)",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "gw_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter), in seconds since the Unix epoch",
            metrics.certificate_expiry.clone(),
        );
        let upstream = &metrics.upstream;
        registry.register(
            "gw_upstream_requests",
            "Attempts sent to an upstream endpoint (retries included)",
            upstream.requests.clone(),
        );
        registry.register(
            "gw_upstream_errors",
            "Failed attempts by endpoint and kind: connect, reset, timeout, status (502, 503, 504)",
            upstream.errors.clone(),
        );
        registry.register(
            "gw_upstream_duration_seconds",
            "Time from sending an attempt to an endpoint to its response headers",
            upstream.duration.clone(),
        );
        registry.register(
            "gw_upstream_ejections",
            "Times an endpoint was ejected by outlier detection",
            upstream.ejections.clone(),
        );
        registry.register(
            "gw_upstream_endpoint_healthy",
            "1 while an endpoint takes traffic, 0 while it is ejected or failing its health check",
            upstream.healthy.clone(),
        );
        registry.register(
            "gw_upstream_connections",
            "Connections to an endpoint that count for the API: those it holds (idle ones included, and idle ones taken over from another API at the same address), connects under way, WebSocket tunnels",
            upstream.connections.clone(),
        );
        registry.register(
            "gw_upstream_retries",
            "Retried attempts, by API",
            upstream.retries.clone(),
        );
        registry.register(
            "gw_upstream_overflows",
            "Requests refused with 503 because the circuit breaker's limits were reached, by API",
            upstream.overflows.clone(),
        );
        metrics
    }

    /// Metrics that are counted but exported nowhere (for tests and embedders that do not
    /// want them).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            consumer_requests: Family::default(),
            consumers: std::sync::Arc::default(),
            duration: Family::new_with_constructor(latency_histogram),
            unrouted: Family::default(),
            limits: Family::default(),
            connections: Gauge::default(),
            request_buffer: Gauge::default(),
            request_buffer_overflows: Counter::default(),
            tls_handshake_failures: Counter::default(),
            certificate_expiry: Family::default(),
            upstream: UpstreamFamilies {
                requests: Family::default(),
                errors: Family::default(),
                duration: Family::new_with_constructor(latency_histogram),
                ejections: Family::default(),
                healthy: Family::default(),
                connections: Family::default(),
                retries: Family::default(),
                overflows: Family::default(),
            },
        }
    }

    /// The handles of one route of an API (`operation` is `GET /items/{id}`, or
    /// [`ANY_OPERATION`]), resolved once when its configuration is built.
    pub fn for_route(&self, api: &str, operation: &str) -> ApiMetrics {
        let classes = CLASSES.map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    api: api.to_string(),
                    operation: operation.to_string(),
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

    /// Drops the series of a route that left the configuration.
    pub fn remove_route(&self, api: &str, operation: &str) {
        for class in CLASSES {
            self.requests.remove(&RequestLabels {
                api: api.to_string(),
                operation: operation.to_string(),
                class,
            });
        }
    }

    /// Counts a request of an authenticated consumer. The counters of an (API, consumer)
    /// pair are resolved once, then found under a read lock without allocating.
    pub fn consumer_request(&self, api: &str, consumer: &str, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let consumers = &self.consumers;
        {
            let cache = consumers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(counters) = cache.by_api.get(api).and_then(|c| c.get(consumer)) {
                counters[class].inc();
                return;
            }
        }
        let mut cache = consumers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let label = if cache.named.contains(consumer) || cache.named.len() < MAX_CONSUMER_SERIES {
            cache.named.insert(consumer.to_string());
            consumer
        } else {
            OTHER_CONSUMERS
        };
        let counters = CLASSES.map(|class| {
            self.consumer_requests
                .get_or_create(&ConsumerLabels {
                    api: api.to_string(),
                    consumer: label.to_string(),
                    class,
                })
                .clone()
        });
        counters[class].inc();
        cache
            .by_api
            .entry(api.to_string())
            .or_default()
            .insert(consumer.to_string(), counters);
    }

    /// Drops every consumer series (when consumers leave the configuration), so that
    /// removed consumers do not keep series, nor their places among the 1000.
    pub fn clear_consumers(&self) {
        let mut cache = self
            .consumers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.consumer_requests.clear();
        cache.named.clear();
        cache.by_api.clear();
    }

    /// Drops the series of an API that left the configuration (its routes' series are
    /// dropped with [`ProxyMetrics::remove_route`]).
    pub fn remove_api(&self, api: &str) {
        self.duration.remove(&ApiLabels {
            api: api.to_string(),
        });
        let labels = ApiLabels {
            api: api.to_string(),
        };
        self.upstream.retries.remove(&labels);
        self.upstream.overflows.remove(&labels);
    }

    /// The handles of one upstream, resolved once when its API is built.
    pub fn for_upstream(&self, api: &str) -> UpstreamMetrics {
        let labels = ApiLabels {
            api: api.to_string(),
        };
        UpstreamMetrics {
            retries: self.upstream.retries.get_or_create(&labels).clone(),
            overflows: self.upstream.overflows.get_or_create(&labels).clone(),
        }
    }

    /// The handles of one endpoint of an API.
    pub fn for_endpoint(&self, api: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            api: api.to_string(),
            endpoint: endpoint.to_string(),
        };
        let u = &self.upstream;
        let errors = ERROR_KINDS.map(|kind| {
            u.errors
                .get_or_create(&EndpointErrorLabels {
                    api: api.to_string(),
                    endpoint: endpoint.to_string(),
                    kind,
                })
                .clone()
        });
        EndpointMetrics {
            requests: u.requests.get_or_create(&labels).clone(),
            errors,
            duration: u.duration.get_or_create(&labels).clone(),
            ejections: u.ejections.get_or_create(&labels).clone(),
            healthy: u.healthy.get_or_create(&labels).clone(),
            connections: u.connections.get_or_create(&labels).clone(),
        }
    }

    /// Drops the series of an endpoint that left its API (or whose API left).
    pub fn remove_endpoint(&self, api: &str, endpoint: &str) {
        let labels = EndpointLabels {
            api: api.to_string(),
            endpoint: endpoint.to_string(),
        };
        let u = &self.upstream;
        u.requests.remove(&labels);
        u.duration.remove(&labels);
        u.ejections.remove(&labels);
        u.healthy.remove(&labels);
        u.connections.remove(&labels);
        for kind in ERROR_KINDS {
            u.errors.remove(&EndpointErrorLabels {
                api: api.to_string(),
                endpoint: endpoint.to_string(),
                kind,
            });
        }
    }

    /// Counts a refusal by a limit.
    pub fn limit_rejected(&self, limit: Limit) {
        self.limits
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }

    /// Counts a client TLS handshake that failed.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Sets when a served certificate expires.
    pub fn set_certificate_expiry(&self, certificate: &str, not_after: i64) {
        self.certificate_expiry
            .get_or_create(&CertificateLabels {
                certificate: certificate.to_string(),
            })
            .set(not_after);
    }

    /// Drops the series of a certificate that left the configuration.
    pub fn remove_certificate(&self, certificate: &str) {
        self.certificate_expiry.remove(&CertificateLabels {
            certificate: certificate.to_string(),
        });
    }

    /// The gauge of open client connections.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// The gauge of request-body bytes read ahead.
    pub(crate) fn request_buffer(&self) -> &Gauge {
        &self.request_buffer
    }

    /// Counts a request body that found no room in the read-ahead memory.
    pub(crate) fn request_buffer_overflowed(&self) {
        self.request_buffer_overflows.inc();
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

/// The metric handles of one route; recording is lock-free.
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

/// The metric handles of one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    /// Retried attempts.
    pub retries: Counter,
    /// Requests refused by the circuit breaker.
    pub overflows: Counter,
}

/// Why an attempt to an endpoint failed, as counted in `gw_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// No connection could be made.
    Connect,
    /// The connection failed during the exchange.
    Reset,
    /// No response headers in time.
    Timeout,
    /// The endpoint answered 502, 503 or 504.
    Status,
}

/// The metric handles of one upstream endpoint; recording is lock-free.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    requests: Counter,
    errors: [Counter; 4],
    duration: Histogram,
    /// Ejections by outlier detection.
    pub ejections: Counter,
    /// 1 while the endpoint takes traffic.
    pub healthy: Gauge,
    /// Open connections.
    pub connections: Gauge,
}

impl EndpointMetrics {
    /// Records an attempt that got response headers after `elapsed`.
    pub fn answered(&self, elapsed: Duration) {
        self.requests.inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records a failed attempt.
    pub fn failed(&self, kind: AttemptError) {
        if kind != AttemptError::Status {
            self.requests.inc();
        }
        let index = match kind {
            AttemptError::Connect => 0,
            AttemptError::Reset => 1,
            AttemptError::Timeout => 2,
            AttemptError::Status => 3,
        };
        self.errors[index].inc();
    }
}

#[cfg(test)]
mod consumer_tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn consumer_series_are_bounded_and_counted() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        for i in 0..=MAX_CONSUMER_SERIES {
            metrics.consumer_request("a", &format!("c{i}"), StatusCode::OK);
        }
        // the cached path counts too, and another class is its own series
        metrics.consumer_request("a", "c0", StatusCode::OK);
        metrics.consumer_request("a", "c0", StatusCode::NOT_FOUND);
        metrics.consumer_request("a", &format!("c{MAX_CONSUMER_SERIES}"), StatusCode::OK);
        let out = text(&registry);
        assert!(
            out.contains("gw_consumer_requests_total{api=\"a\",consumer=\"c0\",class=\"2xx\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("gw_consumer_requests_total{api=\"a\",consumer=\"c0\",class=\"4xx\"} 1")
        );
        assert!(
            out.contains(
                "gw_consumer_requests_total{api=\"a\",consumer=\"_other\",class=\"2xx\"} 2"
            )
        );
        assert!(!out.contains(&format!("consumer=\"c{MAX_CONSUMER_SERIES}\"")));
        metrics.clear_consumers();
        metrics.consumer_request("a", "c5", StatusCode::OK);
        let out = text(&registry);
        assert!(out.contains("consumer=\"c5\",class=\"2xx\"} 1"), "{out}");
        assert!(!out.contains("consumer=\"c0\""), "{out}");
    }
}
