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
//! [`UpstreamService`] rewrites the request for the upstream (context stripped, base path
//! prefixed, query kept byte for byte, hop-by-hop headers removed, the forwarding headers
//! written from what the gateway knows),
//! sends it, retries where that is safe, and maps failures to [`GatewayError`]s.

mod balance;
mod endpoint;
mod headers;
mod health;
mod pace;
mod retry;
mod tunnel;

pub(crate) use headers::arrive;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::body::{self, Body, BoxError};
use crate::error::GatewayError;
use crate::gateway::ConnInfo;
use crate::metrics::{AttemptError, ProxyMetrics, UpstreamMetrics};
use crate::model::{HostHeader, OutlierDetection, UpstreamProtocol, UpstreamSpec};
use crate::tls::{CertificateSet, ServedCertificate, UpstreamTlsClient};
pub use pace::{BufferFull, RATE_GRACE, SlowBody, Traffic, TrafficLimits};

use balance::{Balancer, Usable};
use endpoint::{EndpointState, Sender};
use retry::{RetryPolicy, is_idempotent};
use tunnel::TunnelCount;

/// Requests that found their pooled connection closed before anything was written are sent
/// again without counting as retries, at most this many times.
const MAX_STALE_RESENDS: u32 = 3;

pub(crate) use crate::extensions::RequestTimeout;

/// An API's upstream: endpoints, balancer, retries, outlier detection, limits.
#[derive(Debug)]
pub struct Upstream {
    api: Box<str>,
    endpoints: Box<[EndpointState]>,
    balancer: Balancer,
    retry: RetryPolicy,
    outlier: OutlierDetection,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    dns_refresh: Duration,
    /// `protocol: h2`: HTTP/2 with prior knowledge to every endpoint.
    h2: bool,
    host_header: HostMode,
    limits: Arc<Limits>,
    /// The zero of the millisecond clock of ejections.
    epoch: std::time::Instant,
    metrics: UpstreamMetrics,
    /// Health checks and idle-connection expiry; aborted when the upstream is retired from
    /// the configuration or dropped.
    tasks: Mutex<Vec<AbortHandle>>,
    /// The client certificate shown to `https://` endpoints, if any.
    client_certificate: Option<Arc<ServedCertificate>>,
    /// Serializes ejection decisions, so that `maxEjectedPercent` holds under races.
    ejecting: Mutex<()>,
    /// What clients' request bodies and tunnels may hold (shared by the gateway's
    /// upstreams).
    traffic: Arc<Traffic>,
    /// Whether request bodies are read ahead and paced (`requestBuffering`).
    request_buffering: bool,
}

#[derive(Debug)]
enum HostMode {
    Endpoint,
    Preserve,
    Rewrite(HeaderValue),
}

/// The circuit breaker's counters.
#[derive(Debug)]
struct Limits {
    max_connections: u32,
    max_pending: u32,
    open: AtomicU32,
    pending: AtomicU32,
    /// Signalled when a connection is returned or closed, for requests waiting for one.
    released: Notify,
}

impl Limits {
    /// Whether a connection slot is free now.
    fn has_room(&self) -> bool {
        self.open.load(Ordering::Acquire) < self.max_connections
    }

    /// Wakes the requests waiting for a connection (a connection was returned or closed).
    fn release(&self) {
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
struct OpenSlot(Arc<Limits>);

impl OpenSlot {
    /// A slot, if one is free. The count never goes past the limit, even for a moment, so
    /// that a concurrent request never sees a free slot as taken.
    fn acquire(limits: &Arc<Limits>) -> Option<Self> {
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
struct Owner(Arc<Mutex<Option<Hold>>>);

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
    fn new(slot: OpenSlot, gauge: &Gauge) -> Self {
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
    fn is(&self, limits: &Arc<Limits>) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|hold| Arc::ptr_eq(&hold.slot.0, limits))
    }

    /// Moves the count to the upstream of `limits` (counted in `gauge`), unless that one is
    /// at its limit; whether it did.
    fn take_over(&self, limits: &Arc<Limits>, gauge: &Gauge) -> bool {
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
    fn close(&self) {
        let hold = self.lock().take();
        drop(hold);
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").finish_non_exhaustive()
    }
}

/// Why an upstream could not be built from its spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {url:?}: {message}")]
pub struct UpstreamError {
    url: String,
    message: String,
}

/// Why no connection was handed out.
enum CheckoutError {
    Overflow,
    Connect(endpoint::ConnectError),
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
            retry: RetryPolicy::new(&spec.retries),
            outlier: spec.outlier_detection,
            connect_timeout: spec.timeouts.connect.as_duration(),
            request_timeout: spec.timeouts.request.as_duration(),
            idle_timeout: spec.timeouts.idle.as_duration(),
            dns_refresh: spec.dns_refresh.as_duration(),
            h2: spec.protocol == UpstreamProtocol::H2,
            host_header,
            limits: Arc::new(Limits {
                max_connections: spec.circuit_breaker.max_connections,
                max_pending: spec.circuit_breaker.max_pending,
                open: AtomicU32::new(0),
                pending: AtomicU32::new(0),
                released: Notify::new(),
            }),
            epoch: std::time::Instant::now(),
            metrics: metrics.for_upstream(api),
            tasks: Mutex::new(Vec::new()),
            client_certificate: tls.and_then(|t| t.client_certificate),
            ejecting: Mutex::new(()),
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

    /// Milliseconds since the upstream was built (never 0, so that 0 can mean "not set").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Sets an endpoint's `healthy` gauge from its state.
    fn refresh_gauge(&self, index: usize) {
        let endpoint = &self.endpoints[index];
        let up = endpoint.available(|| self.now_ms());
        endpoint.metrics.healthy.set(i64::from(up));
    }

    /// Counts a failed attempt; ejects the endpoint after too many in a row.
    fn record_failure(self: &Arc<Self>, index: usize) {
        let od = &self.outlier;
        if od.consecutive_failures == 0 {
            return;
        }
        let endpoint = &self.endpoints[index];
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < od.consecutive_failures {
            return;
        }
        let _deciding = self
            .ejecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.now_ms();
        if endpoint.is_ejected(now) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        if (ejected + 1) * 100 > od.max_ejected_percent as usize * self.endpoints.len() {
            return;
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
        tracing::warn!(
            api = %self.api,
            endpoint = %endpoint.url,
            failures,
            ejected_for_ms = length_ms,
            "upstream endpoint ejected after failures in a row"
        );
        health::after_ejection(self, index, length);
    }

    /// Counts a successful attempt.
    fn record_success(&self, index: usize) {
        let endpoint = &self.endpoints[index];
        if endpoint.consecutive_failures.load(Ordering::Relaxed) != 0 {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if endpoint.ejections_in_row.load(Ordering::Relaxed) != 0 {
            // healthy for a base ejection time since it came back: the next ejection starts
            // from the base length again
            let until = endpoint.ejected_until_ms.load(Ordering::Relaxed);
            let base =
                u64::try_from(self.outlier.base_ejection.as_duration().as_millis()).unwrap_or(0);
            if self.now_ms() > until.saturating_add(base) {
                endpoint.ejections_in_row.store(0, Ordering::Relaxed);
                endpoint.ejected_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A connection to endpoint `index`: an idle one, a new one, or (at the connection
    /// limit) the next one released; with what it counts for, when it may be pooled.
    async fn checkout(&self, index: usize) -> Result<(Sender, Option<Owner>), CheckoutError> {
        let endpoint = &self.endpoints[index];
        let limits = &self.limits;
        if self.h2 {
            let sender = self.checkout_h2(endpoint).await?;
            return Ok((sender, None));
        }
        let mut waiting = None;
        loop {
            // once waiting, registered before the checks, so that a release in between
            // still wakes us (the fast path, with a connection at hand, skips the Notify)
            let notified = limits.released.notified();
            tokio::pin!(notified);
            if waiting.is_some() {
                notified.as_mut().enable();
            }
            while let Some((sender, owner)) = endpoint.take_idle(self.idle_timeout, limits) {
                let mut sender = Sender::H1(sender);
                if sender.ready().await.is_ok() {
                    return Ok((sender, Some(owner)));
                }
            }
            if let Some(slot) = OpenSlot::acquire(limits) {
                // the slot is released when the connection closes, or here if connecting
                // fails or is abandoned
                let owner = Owner::new(slot, &endpoint.metrics.connections);
                let on_close = {
                    let owner = owner.clone();
                    move || owner.close()
                };
                // boxed: the connect state machine (TCP, TLS, the HTTP handshake) is
                // large, and it would otherwise be part of every request's future and be
                // moved with it, for the few requests that open a connection
                let sender = Box::pin(endpoint.connect(
                    false,
                    self.connect_timeout,
                    self.dns_refresh,
                    on_close,
                ))
                .await
                .map_err(CheckoutError::Connect)?;
                return Ok((sender, Some(owner)));
            }
            if waiting.is_none() {
                if limits.pending.fetch_add(1, Ordering::SeqCst) >= limits.max_pending {
                    limits.pending.fetch_sub(1, Ordering::SeqCst);
                    return Err(CheckoutError::Overflow);
                }
                waiting = Some(PendingGuard(limits));
                // counted as waiting now: register and look again before sleeping (a
                // release that came before the count did not notify)
                continue;
            }
            // at the limit: make room by closing a connection idle on another endpoint
            self.evict_idle_elsewhere(index);
            notified.await;
        }
    }

    /// The endpoint's shared HTTP/2 connection, opened by the first request that needs it.
    /// An HTTP/2 connection is never released for another endpoint's use, so at the
    /// connection limit the answer is 503 at once rather than a wait.
    async fn checkout_h2(&self, endpoint: &EndpointState) -> Result<Sender, CheckoutError> {
        if let Some(sender) = endpoint.h2_sender() {
            let mut sender = Sender::H2(sender);
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let _connecting = endpoint.h2_connecting.lock().await;
        // another request may have connected while this one waited for the lock
        if let Some(sender) = endpoint.h2_sender() {
            return Ok(Sender::H2(sender));
        }
        let slot = OpenSlot::acquire(&self.limits).ok_or(CheckoutError::Overflow)?;
        let owner = Owner::new(slot, &endpoint.metrics.connections);
        let on_close = move || owner.close();
        // boxed, as above
        let sender =
            Box::pin(endpoint.connect(true, self.connect_timeout, self.dns_refresh, on_close))
                .await
                .map_err(CheckoutError::Connect)?;
        if let Sender::H2(h2) = &sender {
            endpoint.set_h2(Some(h2.clone()));
        }
        Ok(sender)
    }

    /// Closes one idle connection that counts for this upstream on an endpoint other than
    /// `index`, if there is one.
    fn evict_idle_elsewhere(&self, index: usize) {
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if i != index && endpoint.drop_one_idle(&self.limits) {
                return;
            }
        }
    }

    /// The URI and `Host` header of an attempt on `endpoint`.
    fn attempt_target(
        &self,
        endpoint: &EndpointState,
        client_uri: &Uri,
        original_host: Option<&HeaderValue>,
        context_len: usize,
    ) -> Result<(Uri, HeaderValue), GatewayError> {
        let mut uri = upstream_uri(&endpoint.target.base_path, client_uri, context_len)?;
        let host = match &self.host_header {
            HostMode::Endpoint => endpoint.target.host_header.clone(),
            HostMode::Preserve => original_host
                .cloned()
                .unwrap_or_else(|| endpoint.target.host_header.clone()),
            HostMode::Rewrite(value) => value.clone(),
        };
        if self.h2 {
            // HTTP/2 carries the scheme and the host as pseudo-headers (`:authority`)
            let authority = http::uri::Authority::try_from(host.as_bytes())
                .unwrap_or_else(|_| endpoint.target.authority.clone());
            let mut parts = uri.into_parts();
            parts.scheme = Some(endpoint.target.scheme());
            parts.authority = Some(authority);
            uri = Uri::from_parts(parts)
                .map_err(|e| GatewayError::BadUpstreamRequest(e.to_string()))?;
        }
        Ok((uri, host))
    }

    async fn forward(
        self: Arc<Self>,
        request: Request<Body>,
        context_len: usize,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let conn = parts.extensions.get::<ConnInfo>().copied();
        let exchange = parts
            .extensions
            .get::<Arc<crate::policy::Exchange>>()
            .cloned();
        let request_timeout = parts
            .extensions
            .get::<RequestTimeout>()
            .map_or(self.request_timeout, |t| t.0);
        let key = self.balancer.key(&parts.headers, conn.map(|c| c.peer.ip()));
        let original_host = headers::original_host(&parts.headers, &parts.uri);
        // what the hop-by-hop headers said, read on arrival (by the gateway, or here for a
        // request that did not come through one)
        let arrival = match parts.extensions.get::<crate::arrival::Arrival>() {
            Some(arrival) => *arrival,
            None => headers::arrive(&mut parts.headers, conn.map(|c| c.peer.ip()), &[]),
        };
        let upgrade = headers::upgrade_of(&arrival).and_then(|protocol| {
            let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
            Some((protocol, on_upgrade))
        });
        // the client connection's slot, which a tunnel keeps
        let slot = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<crate::conn::ConnSlot>());
        // the client's URI: every attempt rewrites it for its endpoint
        let client_uri = parts.uri.clone();
        headers::prepare_request(
            &mut parts.headers,
            conn.as_ref(),
            &arrival,
            original_host.clone(),
            self.h2,
        );
        let upgrade = upgrade.filter(|_| !self.h2);
        if let Some((protocol, _)) = &upgrade {
            headers::set_upgrade(&mut parts.headers, protocol.clone());
        }
        parts.version = if self.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let replayable = self.retry.attempts > 0
            && upgrade.is_none()
            && is_idempotent(&parts.method)
            && body.is_end_stream();
        self.retry.deposit();
        // the body is read ahead (and its pace watched until the upstream answers), so
        // that a client that does not send it holds no upstream connection
        let mut state: Option<Arc<pace::BodyState>> = None;
        let body = if body.is_end_stream() || !self.request_buffering {
            body
        } else {
            let state = state.insert(Arc::default());
            let grpc = parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
            let ahead = if grpc {
                pace::Ahead::GrpcMessage
            } else {
                pace::Ahead::Bytes
            };
            let peer = conn.map(|c| c.peer.ip());
            match pace::ReadAhead::read(body, &self.traffic, Arc::clone(state), peer, ahead).await {
                Ok(ahead) => body::boxed(ahead),
                Err(error) => return Err(client_body_error(state, error.as_ref())),
            }
        };
        let deadline = Instant::now() + request_timeout;

        let mut pending = Some((parts, body));
        let mut tried = 0u64;
        let mut retries_left = self.retry.attempts;
        let mut stale_resends = 0;
        loop {
            let index = self
                .balancer
                .pick(&View::new(&self), key, tried)
                .ok_or(GatewayError::NoHealthyEndpoint)?;
            tried |= 1 << index;
            let endpoint = &self.endpoints[index];
            let mut lease = Lease::new(&self, index);
            let sender = match tokio::time::timeout_at(deadline, self.checkout(index)).await {
                Err(_) => {
                    // waiting for a connection (breaker queue, or a connect that its own
                    // timeout has not ended yet): not a verdict on the endpoint
                    endpoint.metrics.failed(AttemptError::Timeout);
                    return Err(Self::timeout_error(endpoint, request_timeout));
                }
                Ok(Err(CheckoutError::Overflow)) => {
                    self.metrics.overflows.inc();
                    return Err(GatewayError::CircuitOpen {
                        max_connections: self.limits.max_connections,
                        max_pending: self.limits.max_pending,
                    });
                }
                Ok(Err(CheckoutError::Connect(err))) => {
                    endpoint.metrics.failed(AttemptError::Connect);
                    self.record_failure(index);
                    // nothing reached the upstream: any request may be tried again
                    if self.may_retry(&mut retries_left) {
                        continue;
                    }
                    return Err(GatewayError::UpstreamConnect {
                        endpoint: endpoint.target.authority.to_string(),
                        source: Box::new(err),
                    });
                }
                Ok(Ok((sender, owner))) => {
                    lease.owner = owner;
                    sender
                }
            };
            let Some((mut parts, body)) = pending.take() else {
                return Err(GatewayError::BadUpstreamRequest(
                    "the request body was already sent".to_string(),
                ));
            };
            let (uri, host) =
                self.attempt_target(endpoint, &client_uri, original_host.as_ref(), context_len)?;
            let request = if replayable {
                let mut request = Request::new(body::empty());
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = uri;
                *request.version_mut() = parts.version;
                *request.headers_mut() = parts.headers.clone();
                if !self.h2 {
                    request.headers_mut().insert(header::HOST, host);
                }
                pending = Some((parts, body));
                request
            } else {
                parts.uri = uri;
                if !self.h2 {
                    parts.headers.insert(header::HOST, host);
                }
                if body.is_end_stream() {
                    Request::from_parts(parts, body)
                } else {
                    // the connection is reusable only once this body is fully sent
                    let done = Arc::new(AtomicBool::new(false));
                    lease.body_done = Some(Arc::clone(&done));
                    let body = Watched {
                        inner: body,
                        hook: SentFlag(done),
                    };
                    Request::from_parts(parts, body::boxed(body))
                }
            };

            // a WebSocket handshake counts as an open connection from before it is sent:
            // at the 101, hyper counts its connection as ended and the tunnel takes over
            let tunnel_count = upgrade.as_ref().map(|_| TunnelCount::new(&lease));
            let started = Instant::now();
            let sender = lease.sender.insert(sender);
            let sent = sender.send(request);
            let response = match tokio::time::timeout_at(deadline, sent).await {
                Err(_) => {
                    lease.sender = None;
                    if self.h2 {
                        // the shared connection may be half open: the next request opens
                        // another (this one closes when its last user lets go)
                        endpoint.set_h2(None);
                    }
                    if !lease.body_sent() {
                        // the client was still sending its body: a slow upload is its own
                        // failure, not the endpoint's
                        let slow = SlowBody::Unfinished(request_timeout);
                        self.traffic.metrics.limit_rejected(slow.limit());
                        return Err(GatewayError::SlowRequestBody(slow));
                    }
                    endpoint.metrics.failed(AttemptError::Timeout);
                    self.record_failure(index);
                    return Err(Self::timeout_error(endpoint, request_timeout));
                }
                Ok(Err(mut err)) => {
                    lease.sender = None;
                    if body::is_length_limit(err.error()) {
                        // the client's fault, not the endpoint's
                        return Err(GatewayError::PayloadTooLarge);
                    }
                    // the body was cut by the gateway, or broken off by the client: the
                    // exchange failed on the client's side (an HTTP/2 upstream's error says
                    // only that the stream was reset)
                    let cut = state.as_ref().and_then(|state| state.cut());
                    if let Some(slow) = cut.or_else(|| pace::slow_body(err.error())) {
                        return Err(GatewayError::SlowRequestBody(slow));
                    }
                    if state.as_ref().is_some_and(|state| state.broken()) {
                        return Err(GatewayError::ClientBody(
                            "the client broke off the request body".to_string(),
                        ));
                    }
                    if let Some(unsent) = err.take_message() {
                        // the pooled connection closed before the request was written
                        if pending.is_none() {
                            pending = Some(unsent.into_parts());
                        }
                        if stale_resends < MAX_STALE_RESENDS {
                            stale_resends += 1;
                            tried &= !(1 << index);
                            continue;
                        }
                    }
                    endpoint.metrics.failed(AttemptError::Reset);
                    self.record_failure(index);
                    if pending.is_some() && self.may_retry(&mut retries_left) {
                        continue;
                    }
                    return Err(GatewayError::Upstream {
                        endpoint: endpoint.target.authority.to_string(),
                        source: Box::new(err.into_error()),
                    });
                }
                Ok(Ok(response)) => response,
            };
            if let Some(state) = &state {
                state.answered();
            }
            endpoint.metrics.answered(started.elapsed());
            let status = response.status().as_u16();
            if (502..=504).contains(&status) {
                endpoint.metrics.failed(AttemptError::Status);
                self.record_failure(index);
                if replayable
                    && self.retry.retries_status(status)
                    && self.may_retry(&mut retries_left)
                {
                    continue;
                }
            } else {
                self.record_success(index);
            }
            if let Some((protocol, downstream)) = upgrade
                && response.status() == http::StatusCode::SWITCHING_PROTOCOLS
            {
                // the upstream's connection leaves the pool for good: it becomes the tunnel
                lease.sender = None;
                let count = tunnel_count.unwrap_or_else(|| TunnelCount::new(&lease));
                return Ok(tunnel::tunnel(
                    response, protocol, downstream, lease, count, slot,
                ));
            }
            if let Some(exchange) = exchange.as_ref() {
                exchange.set_endpoint(&endpoint.url);
            }
            let (mut parts, incoming) = response.into_parts();
            // the client connection speaks its own version (an HTTP/1.0 upstream must not
            // make the gateway answer in HTTP/1.0)
            parts.version = Version::default();
            headers::prepare_response(&mut parts.headers);
            let body = Watched {
                inner: incoming,
                hook: lease,
            };
            return Ok(Response::from_parts(parts, body::boxed(body)));
        }
    }

    /// Whether another attempt may be made: attempts left and budget available.
    fn may_retry(&self, retries_left: &mut u32) -> bool {
        if *retries_left == 0 || !self.retry.withdraw() {
            return false;
        }
        *retries_left -= 1;
        self.metrics.retries.inc();
        true
    }

    fn timeout_error(endpoint: &EndpointState, timeout: Duration) -> GatewayError {
        GatewayError::UpstreamTimeout {
            endpoint: endpoint.target.authority.to_string(),
            timeout_ms: timeout.as_millis(),
        }
    }
}

impl Upstream {
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

impl Drop for Upstream {
    fn drop(&mut self) {
        self.retire();
    }
}

/// The endpoints as the balancer sees them, with the clock read at most once.
struct View<'a> {
    upstream: &'a Upstream,
    now: std::cell::Cell<Option<u64>>,
}

impl<'a> View<'a> {
    fn new(upstream: &'a Upstream) -> Self {
        Self {
            upstream,
            now: std::cell::Cell::new(None),
        }
    }
}

impl Usable for View<'_> {
    fn len(&self) -> usize {
        self.upstream.endpoints.len()
    }

    fn available(&self, i: usize) -> bool {
        self.upstream.endpoints[i].available(|| match self.now.get() {
            Some(now) => now,
            None => {
                let now = self.upstream.now_ms();
                self.now.set(Some(now));
                now
            }
        })
    }

    fn in_flight(&self, i: usize) -> usize {
        self.upstream.endpoints[i].in_flight.load(Ordering::Relaxed)
    }

    fn weight(&self, i: usize) -> u32 {
        self.upstream.endpoints[i].weight
    }
}

/// Decrements the pending-request count when a waiting request leaves.
struct PendingGuard<'a>(&'a Limits);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One attempt's hold on an endpoint: counts it in flight and owns its connection until
/// the response body ends, then returns the connection to the pool.
struct Lease {
    upstream: Arc<Upstream>,
    index: usize,
    sender: Option<Sender>,
    /// What an HTTP/1.1 connection counts for: this upstream.
    owner: Option<Owner>,
    /// Set when the request has a body: whether it has been sent to the end.
    body_done: Option<Arc<AtomicBool>>,
}

impl Lease {
    fn new(upstream: &Arc<Upstream>, index: usize) -> Self {
        upstream.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self {
            upstream: Arc::clone(upstream),
            index,
            sender: None,
            owner: None,
            body_done: None,
        }
    }

    /// Whether the request body (if any) has been sent to the end.
    fn body_sent(&self) -> bool {
        self.body_done
            .as_ref()
            .is_none_or(|done| done.load(Ordering::Acquire))
    }

    /// The exchange is complete: the connection can serve another request.
    fn reuse(&mut self) {
        // an HTTP/2 sender is a handle on the shared connection: nothing to return; an
        // HTTP/1.1 connection still sending the request body (the upstream answered early)
        // is not reusable and closes
        if !self.body_sent() {
            self.sender = None;
            return;
        }
        if let (Some(Sender::H1(sender)), Some(owner)) = (self.sender.take(), self.owner.take()) {
            self.upstream.endpoints[self.index].put_idle(sender, owner);
            self.upstream.limits.release();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a [`Watched`] body tells its owner.
trait EndHook {
    /// The body was read to its end (or dropped when there was nothing left to read: an
    /// empty body, as of HEAD, 204 or 304, may never be polled).
    fn ended(&mut self);
    /// The body failed halfway.
    fn failed(&mut self) {}
}

/// A body that tells `hook` when it ends or fails, and is otherwise the body itself.
struct Watched<B: http_body::Body, H: EndHook> {
    inner: B,
    hook: H,
}

impl<B, H> http_body::Body for Watched<B, H>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    H: EndHook + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.hook.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.hook.ended(),
            Poll::Ready(Some(Err(_))) => this.hook.failed(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body, H: EndHook> Drop for Watched<B, H> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.hook.ended();
        }
    }
}

/// A request body's end: the connection may be reused once it has been sent whole.
struct SentFlag(Arc<AtomicBool>);

impl EndHook for SentFlag {
    fn ended(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The upstream's response body's end returns the connection to the pool; a body that
/// fails, or is abandoned halfway, closes it (the lease drops its sender).
impl EndHook for Lease {
    fn ended(&mut self) {
        self.reuse();
    }

    fn failed(&mut self) {
        self.sender = None;
    }
}

/// The error of a request body that could not be read ahead.
fn client_body_error(
    state: &pace::BodyState,
    error: &(dyn std::error::Error + 'static),
) -> GatewayError {
    if error.is::<pace::BufferFull>() {
        return GatewayError::RequestBufferFull;
    }
    if let Some(slow) = state.cut().or_else(|| pace::slow_body(error)) {
        GatewayError::SlowRequestBody(slow)
    } else if body::is_length_limit(error) {
        GatewayError::PayloadTooLarge
    } else {
        GatewayError::ClientBody(crate::error::chain(error))
    }
}

/// Base path + the request path after the context + `?query`, in origin form.
fn upstream_uri(base_path: &str, uri: &Uri, context_len: usize) -> Result<Uri, GatewayError> {
    if base_path.is_empty()
        && context_len == 0
        && let Some(pq) = uri.path_and_query()
    {
        // nothing to rewrite: share the client's bytes
        return Ok(Uri::from(pq.clone()));
    }
    let path = uri.path();
    let rest = path.get(context_len..).unwrap_or("");
    let query = uri.query();
    let mut pq =
        String::with_capacity(base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    pq.push_str(base_path);
    pq.push_str(rest);
    if pq.is_empty() {
        pq.push('/');
    }
    if let Some(query) = query {
        pq.push('?');
        pq.push_str(query);
    }
    let pq =
        PathAndQuery::try_from(pq).map_err(|e| GatewayError::BadUpstreamRequest(e.to_string()))?;
    Ok(Uri::from(pq))
}

/// The service at the bottom of a per-route stack: sends the request to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamService {
    upstream: Arc<Upstream>,
    context_len: usize,
    /// Turns failures into responses right here, so that the policies around see them.
    rescue: Option<Arc<crate::gateway::Rescuer>>,
}

impl UpstreamService {
    /// A service for an API whose context is `context_len` bytes long (0 for `/`).
    pub fn new(upstream: Arc<Upstream>, context_len: usize) -> Self {
        Self {
            upstream,
            context_len,
            rescue: None,
        }
    }

    /// Answers failures with the response `rescue` makes, instead of an error.
    pub(crate) fn with_rescue(mut self, rescue: Arc<crate::gateway::Rescuer>) -> Self {
        self.rescue = Some(rescue);
        self
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
        let rescue = self.rescue.clone();
        Box::pin(async move {
            match upstream.forward(request, context_len).await {
                Ok(response) => Ok(response),
                Err(error) => match rescue {
                    Some(rescue) => Ok(rescue.rescue(error.into())),
                    None => Err(error.into()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u32) -> Arc<Limits> {
        Arc::new(Limits {
            max_connections,
            max_pending: 0,
            open: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            released: Notify::new(),
        })
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

    #[test]
    fn strips_context_and_prefixes_base_path() {
        let cases = [
            (
                "/api",
                "/orders/v1/items/1?b=2&a=1",
                10,
                "/api/items/1?b=2&a=1",
            ),
            ("/api", "/orders/v1", 10, "/api"),
            ("/api", "/orders/v1/", 10, "/api/"),
            ("/api", "/x?", 0, "/api/x?"),
            ("/api", "/x?a=%20+%2F&&", 0, "/api/x?a=%20+%2F&&"),
            ("", "/orders/v1", 10, "/"),
            ("", "/a/b?c=%41", 0, "/a/b?c=%41"),
            ("", "/orders/v1/x?q", 10, "/x?q"),
        ];
        for (base, path, context_len, expected) in cases {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(
                upstream_uri(base, &uri, context_len).unwrap().to_string(),
                expected,
                "{base} {path}"
            );
        }
    }
}
