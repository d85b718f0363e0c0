//! The `spec.upstream` part of an API definition: endpoints, load balancing, timeouts,
//! retries, outlier detection, active health checks and circuit breaking.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// The upstream service of an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// The endpoints. At least one.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is chosen for a request.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Connect, request and idle timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// When a failed attempt is tried again on another endpoint.
    #[serde(default)]
    pub retries: Retries,
    /// Passive health: endpoints that fail repeatedly are taken out for a while.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// Active health: the gateway probes every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Limits on the connections and waiting requests of this upstream.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// How long a resolved host name is used before it is resolved again (default `30s`).
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// The `Host` header the upstream receives (default `endpoint`).
    #[serde(default)]
    pub host_header: HostHeader,
    /// The protocol spoken to the endpoints (default `http1`).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How `https://` endpoints are verified, and the client certificate they are shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Whether request bodies are read ahead before an upstream connection is taken, and
    /// their pace watched until the upstream answers (default `true`). `false` for an API
    /// whose clients send nothing until the upstream speaks (a bidirectional stream that the
    /// server opens): their bodies then go at the client's pace, and a client that declares
    /// a body and does not send it holds an upstream connection until the request timeout.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub request_buffering: bool,
}

fn default_true() -> bool {
    true
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if"
)]
fn is_true(value: &bool) -> bool {
    *value
}

/// TLS to the `https://` endpoints of an upstream. The upstream's certificate is always
/// verified: against the system's CA certificates, or against `ca` when it is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA certificates trusted instead of the system's (for a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name sent in SNI and verified against the certificate (default: the endpoint's
    /// host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The name of a `Certificate` (deployed to the same groups) presented when the upstream
    /// asks for a client certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
}

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2: with prior knowledge (h2c) to `http://` endpoints, negotiated by ALPN to
    /// `https://` ones; one multiplexed connection per endpoint. Needed for gRPC.
    #[serde(rename = "h2")]
    H2,
}

/// The `Host` header sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HostHeader {
    /// The endpoint's `host:port` (`endpoint`).
    #[default]
    Endpoint,
    /// The host the client asked for (`preserve`).
    Preserve,
    /// A fixed value (`{rewrite: api.internal}`).
    Rewrite(String),
}

fn default_dns_refresh() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// One upstream endpoint. Its `Debug` shows no password of its URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Endpoint {
    /// `http://host:port/base/path`: the path is the base path on the upstream, prefixed to
    /// what follows the context in the request path.
    pub url: String,
    /// Relative share of the traffic, 1 to 1000 (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &super::secret::RedactedUrl(&self.url))
            .field("weight", &self.weight)
            .finish()
    }
}

fn default_weight() -> u32 {
    1
}

/// How an endpoint is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct LoadBalancing {
    /// The algorithm (default `round-robin`).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// What a `consistent-hash` hashes; required by it, refused by the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

/// A load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Weighted round robin (smooth: a heavy endpoint's turns are spread out).
    #[default]
    RoundRobin,
    /// The less loaded of two endpoints picked at random, by in-flight requests per weight.
    LeastRequest,
    /// A hash ring: the same key goes to the same endpoint while it is available.
    ConsistentHash,
}

/// The key of a consistent hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// The value of a request header (`{header: X-User}`).
    Header(String),
    /// The value of a cookie (`{cookie: session}`).
    Cookie(String),
    /// The client's IP address (`clientIp`).
    ClientIp,
}

/// Upstream timeouts, written like `250ms`, `5s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Timeouts {
    /// Time allowed to open a TCP connection to an endpoint (default `5s`); 502 after it.
    #[serde(default = "Timeouts::default_connect")]
    pub connect: HumanDuration,
    /// Time allowed from sending the request to receiving the response headers (default
    /// `30s`); 504 after it.
    #[serde(default = "Timeouts::default_request")]
    pub request: HumanDuration,
    /// How long an unused upstream connection is kept open for reuse (default `60s`).
    #[serde(default = "Timeouts::default_idle")]
    pub idle: HumanDuration,
}

impl Timeouts {
    fn default_connect() -> HumanDuration {
        HumanDuration::from_secs(5)
    }

    fn default_request() -> HumanDuration {
        HumanDuration::from_secs(30)
    }

    fn default_idle() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Self::default_connect(),
            request: Self::default_request(),
            idle: Self::default_idle(),
        }
    }
}

/// Retries of failed attempts.
///
/// A connect failure is retried for any request: the request never reached the upstream.
/// A connection reset and the listed statuses are retried only for idempotent requests
/// without a body (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt, 0 to 5 (default 1); 0 turns retries off.
    #[serde(default = "Retries::default_attempts")]
    pub attempts: u32,
    /// Upstream statuses that are retried, among 502, 503 and 504 (default none).
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Retries allowed, as a percentage of the requests (default 20), so that retries
    /// cannot multiply the load on a failing upstream.
    #[serde(default = "Retries::default_budget_percent")]
    pub budget_percent: u32,
    /// Retries allowed each second whatever the budget says (default 10).
    #[serde(default = "Retries::default_min_per_second")]
    pub min_per_second: u32,
}

impl Retries {
    fn default_attempts() -> u32 {
        1
    }

    fn default_budget_percent() -> u32 {
        20
    }

    fn default_min_per_second() -> u32 {
        10
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: Self::default_attempts(),
            statuses: Vec::new(),
            budget_percent: Self::default_budget_percent(),
            min_per_second: Self::default_min_per_second(),
        }
    }
}

/// Passive outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failures in a row (connect failures, resets, timeouts, 502/503/504) that eject an
    /// endpoint (default 5); 0 turns detection off.
    #[serde(default = "OutlierDetection::default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length (default `10s`); each ejection in a row lasts one more
    /// base time, up to `maxEjection`.
    #[serde(default = "OutlierDetection::default_base_ejection")]
    pub base_ejection: HumanDuration,
    /// The longest ejection (default `5m`).
    #[serde(default = "OutlierDetection::default_max_ejection")]
    pub max_ejection: HumanDuration,
    /// At most this percentage of the endpoints is ejected at once (default 50).
    #[serde(default = "OutlierDetection::default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    fn default_consecutive_failures() -> u32 {
        5
    }

    fn default_base_ejection() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    fn default_max_ejection() -> HumanDuration {
        HumanDuration::from_secs(300)
    }

    fn default_max_ejected_percent() -> u32 {
        50
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: Self::default_consecutive_failures(),
            base_ejection: Self::default_base_ejection(),
            max_ejection: Self::default_max_ejection(),
            max_ejected_percent: Self::default_max_ejected_percent(),
        }
    }
}

/// Active health checks: a `GET` of `path` on every endpoint, every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct HealthCheck {
    /// The path probed, from the endpoint's root (its base path is not prefixed).
    pub path: String,
    /// Time between two probes of an endpoint (default `10s`).
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: HumanDuration,
    /// Time allowed for a probe's response headers, connecting included (default `2s`).
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: HumanDuration,
    /// Successful probes in a row that bring an unhealthy endpoint back (default 2).
    #[serde(default = "HealthCheck::default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failed probes in a row that take a healthy endpoint out (default 3).
    #[serde(default = "HealthCheck::default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    fn default_interval() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    fn default_timeout() -> HumanDuration {
        HumanDuration::from_secs(2)
    }

    fn default_healthy_threshold() -> u32 {
        2
    }

    fn default_unhealthy_threshold() -> u32 {
        3
    }
}

/// Limits that protect an upstream from a request flood (and the gateway from queueing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open connections to all endpoints together (default 1024).
    #[serde(default = "CircuitBreaker::default_max_connections")]
    pub max_connections: u32,
    /// Requests waiting for a connection once `maxConnections` are busy (default 1024);
    /// beyond it requests are answered 503 at once.
    #[serde(default = "CircuitBreaker::default_max_pending")]
    pub max_pending: u32,
}

impl CircuitBreaker {
    fn default_max_connections() -> u32 {
        1024
    }

    fn default_max_pending() -> u32 {
        1024
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            max_connections: Self::default_max_connections(),
            max_pending: Self::default_max_pending(),
        }
    }
}
