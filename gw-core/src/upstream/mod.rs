//! Upstreams: an API's endpoints, the choice among them, and the proxying service at the
//! bottom of every per-route stack.
//!
//! An [`Upstream`] is built once per API definition and shared by the API's routes. It owns
//! its load balancer, its retry budget, its outlier detection and its health-check tasks;
//! all of them live exactly as long as the configurations that use the API unchanged, and
//! are released (tasks stopped) when the last of those is replaced and its requests are
//! done. Idle keep-alive connections to a plain-HTTP endpoint are shared by every upstream
//! with an endpoint at the same address (see `endpoint::IdlePool`), and close with the last
//! of them; an `https://` endpoint's are its upstream's own and close with it.
//!
//! [`UpstreamService`] sends a request to the upstream and fails with a [`GatewayError`];
//! who turns that into a response is for the stack around it to say (the gateway places its
//! rescue there, see [`crate::error::Rescue`]). The call reads top to bottom in
//! `Upstream::forward`, one piece per step, each in its own module:
//!
//! - `call`: the request prepared once (headers rewritten for the upstream, the body read
//!   ahead), the URI and `Host` of each attempt, the answer's head made the client's;
//! - `balance`, over the endpoints that `outlier` ejection and `health` checks leave
//!   available: which endpoint an attempt goes to;
//! - `connector`, with `breaker` and `endpoint`: a connection from the pool, a new one
//!   within `maxConnections`, or a wait among `maxPending`; the lease that gives it back;
//! - `deadline`: the time the response headers are allowed, over every attempt;
//! - `retry`: whether a failed attempt may be made again (safe to repeat, attempts and
//!   budget left), and stale-connection resends;
//! - `outlier`: failures in a row that eject an endpoint for a while;
//! - `tunnel`: a `101 Switching Protocols` answer becomes a two-way byte tunnel;
//! - `pace`: what a client's request body and tunnels may hold of the gateway.

mod balance;
mod breaker;
mod call;
mod connector;
mod deadline;
mod endpoint;
mod headers;
mod health;
mod outlier;
mod pace;
mod retry;
mod tunnel;

pub(crate) use crate::extensions::RequestTimeout;
pub(crate) use headers::arrive;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use crate::metrics::{AttemptError, ProxyMetrics, UpstreamMetrics};
use crate::model::{HostHeader, UpstreamProtocol, UpstreamSpec};
use crate::tls::{CertificateSet, ServedCertificate, UpstreamTlsClient};
pub use pace::{BufferFull, RATE_GRACE, SlowBody, Traffic, TrafficLimits};

use balance::Balancer;
use breaker::Limits;
use call::{Call, HostMode};
use connector::{CheckoutError, Connector, Lease};
use deadline::Deadline;
use endpoint::EndpointState;
use outlier::{Outlier, View};
use retry::{Attempts, RetryPolicy};
use tunnel::TunnelCount;

/// An API's upstream: endpoints, balancer, retries, outlier detection, limits.
#[derive(Debug)]
pub struct Upstream {
    api: Box<str>,
    endpoints: Box<[EndpointState]>,
    balancer: Balancer,
    /// Connections: pool, circuit breaker, connect settings.
    connector: Connector,
    retry: RetryPolicy,
    outlier: Outlier,
    /// `timeouts.request`, unless the request carries its own.
    request_timeout: Duration,
    host_header: HostMode,
    metrics: UpstreamMetrics,
    /// Health checks and idle-connection expiry; aborted when the upstream is retired from
    /// the configuration or dropped.
    tasks: Mutex<Vec<AbortHandle>>,
    /// The client certificate shown to `https://` endpoints, if any.
    client_certificate: Option<Arc<ServedCertificate>>,
    /// What clients' request bodies and tunnels may hold (shared by the gateway's
    /// upstreams).
    traffic: Arc<Traffic>,
    /// Whether request bodies are read ahead and paced (`requestBuffering`).
    request_buffering: bool,
}

/// Why an upstream could not be built from its spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {url:?}: {message}")]
pub struct UpstreamError {
    url: String,
    message: String,
}

impl Upstream {
    /// The client certificate this upstream shows, as built.
    pub fn client_certificate(&self) -> Option<&Arc<ServedCertificate>> {
        self.client_certificate.as_ref()
    }

    /// Builds the upstream of a validated spec, and starts its background tasks when called
    /// within a Tokio runtime.
    /// `certificates` holds the client certificate that `spec.tls` may name; `traffic`
    /// bounds what its clients' request bodies and tunnels may hold.
    pub fn new(
        spec: &UpstreamSpec,
        api: &str,
        certificates: &CertificateSet,
        metrics: &ProxyMetrics,
        traffic: &Arc<Traffic>,
    ) -> Result<Arc<Self>, UpstreamError> {
        if spec.endpoints.is_empty() || spec.endpoints.len() > 64 {
            return Err(UpstreamError {
                url: String::new(),
                message: "an upstream needs 1 to 64 endpoints".to_string(),
            });
        }
        let any_https = spec.endpoints.iter().any(|e| {
            e.url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        });
        let tls = if any_https {
            let h2 = spec.protocol == UpstreamProtocol::H2;
            Some(
                UpstreamTlsClient::build(spec.tls.as_ref(), h2, certificates).map_err(
                    |message| UpstreamError {
                        url: String::new(),
                        message,
                    },
                )?,
            )
        } else {
            None
        };
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for endpoint in &spec.endpoints {
            let state = EndpointState::new(
                endpoint,
                tls.as_ref(),
                spec.timeouts.idle.as_duration(),
                metrics.for_endpoint(api, &endpoint.url),
            )
            .map_err(|message| UpstreamError {
                url: endpoint.url.clone(),
                message,
            })?;
            endpoints.push(state);
        }
        let urls: Vec<&str> = spec.endpoints.iter().map(|e| e.url.as_str()).collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let host_header = match &spec.host_header {
            HostHeader::Endpoint => HostMode::Endpoint,
            HostHeader::Preserve => HostMode::Preserve,
            HostHeader::Rewrite(host) => {
                HostMode::Rewrite(HeaderValue::from_str(host).map_err(|e| UpstreamError {
                    url: String::new(),
                    message: format!("hostHeader.rewrite: {e}"),
                })?)
            }
        };
        let upstream = Arc::new(Self {
            api: api.into(),
            balancer: Balancer::new(&spec.load_balancing, &urls, &weights),
            endpoints: endpoints.into_boxed_slice(),
            connector: Connector {
                limits: Arc::new(Limits::new(
                    spec.circuit_breaker.max_connections,
                    spec.circuit_breaker.max_pending,
                )),
                h2: spec.protocol == UpstreamProtocol::H2,
                connect_timeout: spec.timeouts.connect.as_duration(),
                idle_timeout: spec.timeouts.idle.as_duration(),
                dns_refresh: spec.dns_refresh.as_duration(),
            },
            retry: RetryPolicy::new(&spec.retries),
            outlier: Outlier::new(spec.outlier_detection),
            request_timeout: spec.timeouts.request.as_duration(),
            host_header,
            metrics: metrics.for_upstream(api),
            tasks: Mutex::new(Vec::new()),
            client_certificate: tls.and_then(|t| t.client_certificate),
            traffic: Arc::clone(traffic),
            request_buffering: spec.request_buffering,
        });
        let tasks = health::spawn(&upstream, spec.health_check.as_ref());
        *upstream
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tasks;
        Ok(upstream)
    }

    /// Sends `request` to the upstream: prepared once, then attempts in turn, each to the
    /// endpoint the balancer picks, until one is answered or no retry is left; all within
    /// the request's deadline.
    async fn forward(
        self: Arc<Self>,
        request: Request<Body>,
        context_len: usize,
    ) -> Result<Response<Body>, GatewayError> {
        let mut call = Call::new(&self, request, context_len);
        call.read_ahead(&self).await?;
        let deadline = Deadline::start(call.timeout);
        let mut attempts = Attempts::new(&self.retry);
        loop {
            let view = View::new(&self.endpoints, &self.outlier);
            let index = self
                .balancer
                .pick(&view, call.key, attempts.tried)
                .ok_or(GatewayError::NoHealthyEndpoint)?;
            attempts.to(index);
            let endpoint = &self.endpoints[index];
            let mut lease = Lease::new(&self, index);

            // a connection: pooled, new, or the next one released
            let checkout = self.connector.checkout(&self.endpoints, index);
            let (sender, owner) = match deadline.bound(checkout).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    self.not_connected(error, index, &mut attempts)?;
                    continue;
                }
                Err(_) => {
                    // waiting for a connection (breaker queue, or a connect that its own
                    // timeout has not ended yet): not a verdict on the endpoint
                    endpoint.metrics.failed(AttemptError::Timeout);
                    return Err(deadline.passed(endpoint));
                }
            };
            lease.owner = owner;

            // sent, and answered within the deadline
            let request = call.attempt(&self, endpoint, &mut lease)?;
            // a WebSocket handshake counts as an open connection from before it is sent:
            // at the 101, hyper counts its connection as ended and the tunnel takes over
            let tunnel_count = call.switch.as_ref().map(|_| TunnelCount::new(&lease));
            let started = Instant::now();
            let sent = lease.sender.insert(sender).send(request);
            let response = match deadline.bound(sent).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    lease.sender = None;
                    self.not_answered(error, index, &mut call, &mut attempts)?;
                    continue;
                }
                Err(_) => return Err(self.answer_late(&mut lease, &deadline)),
            };
            call.answered();
            endpoint.metrics.answered(started.elapsed());

            // a 502, 503 or 504 counts against the endpoint, and may be retried
            if self.judge(index, response.status(), call.replayable, &mut attempts) {
                continue;
            }
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(switch) = call.switch.take()
            {
                return Ok(switch.answer(response, lease, tunnel_count));
            }
            return Ok(call.respond(response, endpoint, lease));
        }
    }

    /// No connection to endpoint `index`: the breaker is open (503 at once), or connecting
    /// failed (which counts against the endpoint, and may be retried: nothing reached the
    /// upstream, so any request may be).
    fn not_connected(
        self: &Arc<Self>,
        error: CheckoutError,
        index: usize,
        attempts: &mut Attempts,
    ) -> Result<Retry, GatewayError> {
        match error {
            CheckoutError::Overflow => {
                self.metrics.overflows.inc();
                Err(GatewayError::CircuitOpen {
                    max_connections: self.connector.limits.max_connections,
                    max_pending: self.connector.limits.max_pending,
                })
            }
            CheckoutError::Connect(error) => {
                self.record_failure(index, AttemptError::Connect);
                if attempts.retry(&self.retry, &self.metrics.retries) {
                    return Ok(Retry);
                }
                Err(GatewayError::UpstreamConnect {
                    endpoint: self.endpoints[index].target.authority.to_string(),
                    source: Box::new(error),
                })
            }
        }
    }

    /// The exchange with endpoint `index` failed before its response headers. The client's
    /// failures (a body too large, too slow, or broken off) are answered as such; a request
    /// that found its pooled connection closed before anything was written is sent again;
    /// anything else counts against the endpoint and may be retried if the request can be
    /// sent again.
    fn not_answered(
        self: &Arc<Self>,
        mut error: hyper::client::conn::TrySendError<Request<Body>>,
        index: usize,
        call: &mut Call,
        attempts: &mut Attempts,
    ) -> Result<Retry, GatewayError> {
        if let Some(failure) = call.client_failure(error.error()) {
            return Err(failure);
        }
        if let Some(unsent) = error.take_message() {
            call.unsent(unsent);
            if attempts.resend_stale(index) {
                return Ok(Retry);
            }
        }
        self.record_failure(index, AttemptError::Reset);
        if call.can_send() && attempts.retry(&self.retry, &self.metrics.retries) {
            return Ok(Retry);
        }
        Err(GatewayError::Upstream {
            endpoint: self.endpoints[index].target.authority.to_string(),
            source: Box::new(error.into_error()),
        })
    }

    /// The deadline passed before the upstream of `lease` answered: a timeout of the
    /// endpoint's (which counts against it), or of a client still sending its body (its
    /// own failure, not the endpoint's).
    fn answer_late(self: &Arc<Self>, lease: &mut Lease, deadline: &Deadline) -> GatewayError {
        let endpoint = &self.endpoints[lease.index];
        lease.sender = None;
        if self.connector.h2 {
            // the shared connection may be half open: the next request opens another (this
            // one closes when its last user lets go)
            endpoint.set_h2(None);
        }
        if !lease.body_sent() {
            let slow = SlowBody::Unfinished(deadline.timeout());
            self.traffic.metrics.limit_rejected(slow.limit());
            return GatewayError::SlowRequestBody(slow);
        }
        self.record_failure(lease.index, AttemptError::Timeout);
        deadline.passed(endpoint)
    }

    /// Counts endpoint `index`'s answer for outlier detection; whether to try again (a 502,
    /// 503 or 504 the upstream retries, for a request that can be sent again).
    fn judge(
        self: &Arc<Self>,
        index: usize,
        status: StatusCode,
        replayable: bool,
        attempts: &mut Attempts,
    ) -> bool {
        let status = status.as_u16();
        if !(502..=504).contains(&status) {
            self.outlier.succeeded(&self.endpoints[index]);
            return false;
        }
        self.record_failure(index, AttemptError::Status);
        replayable
            && self.retry.retries_status(status)
            && attempts.retry(&self.retry, &self.metrics.retries)
    }

    /// Counts a failed attempt on endpoint `index` (in its metrics, and towards its
    /// ejection); logs an ejection and schedules its end.
    fn record_failure(self: &Arc<Self>, index: usize, kind: AttemptError) {
        let endpoint = &self.endpoints[index];
        endpoint.metrics.failed(kind);
        let Some(ejection) = self.outlier.failed(&self.endpoints, index) else {
            return;
        };
        tracing::warn!(
            api = %self.api,
            endpoint = %endpoint.url,
            failures = ejection.failures,
            ejected_for_ms = u64::try_from(ejection.length.as_millis()).unwrap_or(u64::MAX),
            "upstream endpoint ejected after failures in a row"
        );
        health::after_ejection(self, index, ejection.length);
    }

    /// Sets an endpoint's `healthy` gauge from its state.
    fn refresh_gauge(&self, index: usize) {
        self.outlier.refresh_gauge(&self.endpoints[index]);
    }

    /// Stops the background tasks (health checks, idle expiry): the configuration that
    /// owned this upstream was replaced. Requests still in flight on it finish normally.
    pub fn retire(&self) {
        for endpoint in &self.endpoints {
            endpoint.retire();
        }
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// A failed step of an attempt that leaves the request another attempt.
struct Retry;

impl Drop for Upstream {
    fn drop(&mut self) {
        self.retire();
    }
}

/// The service at the bottom of a per-route stack: sends the request to the upstream, and
/// fails with a [`GatewayError`] (boxed) when no answer comes; the stack around it turns
/// that into a response (see [`crate::error::Rescue`]).
#[derive(Debug, Clone)]
pub struct UpstreamService {
    upstream: Arc<Upstream>,
    context_len: usize,
}

impl UpstreamService {
    /// A service for an API whose context is `context_len` bytes long (0 for `/`).
    pub fn new(upstream: Arc<Upstream>, context_len: usize) -> Self {
        Self {
            upstream,
            context_len,
        }
    }
}

impl tower::Service<Request<Body>> for UpstreamService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let upstream = Arc::clone(&self.upstream);
        let context_len = self.context_len;
        Box::pin(async move {
            upstream
                .forward(request, context_len)
                .await
                .map_err(BoxError::from)
        })
    }
}
