//! The upstream's background tasks: active health checks, the expiry of idle connections,
//! and the end of ejections. Each task holds only a weak reference to its upstream and is
//! aborted when the upstream is dropped, so a replaced configuration leaves nothing running.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use tokio::task::AbortHandle;

use super::Upstream;
use crate::body;
use crate::model::HealthCheck;

/// Starts the tasks of a new upstream; none when there is no Tokio runtime (the upstream
/// then works without health checks and idle expiry).
pub(super) fn spawn(upstream: &Arc<Upstream>, check: Option<&HealthCheck>) -> Vec<AbortHandle> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        if check.is_some() {
            tracing::warn!(api = %upstream.api, "no async runtime: health checks do not run");
        }
        return Vec::new();
    };
    let mut tasks = Vec::new();
    let weak = Arc::downgrade(upstream);
    let every = (upstream.connector.idle_timeout / 2).max(Duration::from_secs(1));
    tasks.push(
        runtime
            .spawn(expire_idle(weak.clone(), every))
            .abort_handle(),
    );
    if let Some(check) = check
        && let Ok(path) = PathAndQuery::try_from(check.path.as_str())
    {
        for index in 0..upstream.endpoints.len() {
            let probe = Probe {
                path: path.clone(),
                interval: check.interval.as_duration(),
                timeout: check.timeout.as_duration(),
                healthy_threshold: check.healthy_threshold,
                unhealthy_threshold: check.unhealthy_threshold,
            };
            tasks.push(
                runtime
                    .spawn(check_endpoint(weak.clone(), index, probe))
                    .abort_handle(),
            );
        }
    }
    tasks
}

async fn expire_idle(upstream: Weak<Upstream>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        for endpoint in &upstream.endpoints {
            endpoint.expire_idle(upstream.connector.idle_timeout);
        }
    }
}

/// Sets the `healthy` gauge back once an ejection ends.
pub(super) fn after_ejection(upstream: &Arc<Upstream>, index: usize, length: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(upstream);
    let task = runtime.spawn(async move {
        tokio::time::sleep(length + Duration::from_millis(5)).await;
        if let Some(upstream) = weak.upgrade() {
            upstream.refresh_gauge(index);
            tracing::info!(
                api = %upstream.api,
                endpoint = %upstream.endpoints[index].url,
                "upstream endpoint back from ejection"
            );
        }
    });
    let mut tasks = upstream
        .tasks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tasks.retain(|t| !t.is_finished());
    tasks.push(task.abort_handle());
}

#[derive(Debug, Clone)]
struct Probe {
    path: PathAndQuery,
    interval: Duration,
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

/// Probes one endpoint every interval and flips its health after enough probes in a row.
async fn check_endpoint(upstream: Weak<Upstream>, index: usize, probe: Probe) {
    let mut successes = 0u32;
    let mut failures = 0u32;
    loop {
        let Some(strong) = upstream.upgrade() else {
            return;
        };
        let result = run_probe(&strong, index, &probe).await;
        let endpoint = &strong.endpoints[index];
        let healthy = endpoint.healthy.load(Ordering::Relaxed);
        match result {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if !healthy && successes >= probe.healthy_threshold {
                    endpoint.healthy.store(true, Ordering::Relaxed);
                    strong.refresh_gauge(index);
                    tracing::info!(api = %strong.api, endpoint = %endpoint.url, "upstream endpoint passes its health check again");
                }
            }
            Err(reason) => {
                successes = 0;
                failures = failures.saturating_add(1);
                if healthy && failures >= probe.unhealthy_threshold {
                    endpoint.healthy.store(false, Ordering::Relaxed);
                    strong.refresh_gauge(index);
                    tracing::warn!(api = %strong.api, endpoint = %endpoint.url, %reason, "upstream endpoint fails its health check");
                }
            }
        }
        drop(strong);
        tokio::time::sleep(probe.interval).await;
    }
}

/// One probe: a `GET` of the path on a new connection, in the upstream's protocol (over TLS
/// to an `https://` endpoint); healthy on 2xx or 3xx.
async fn run_probe(upstream: &Upstream, index: usize, probe: &Probe) -> Result<(), String> {
    let endpoint = &upstream.endpoints[index];
    let exchange = async {
        let mut sender = endpoint
            .connect(
                upstream.connector.h2,
                probe.timeout,
                upstream.connector.dns_refresh,
                || {},
            )
            .await
            .map_err(|e| format!("connect: {e}"))?;
        sender
            .ready()
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut request = Request::new(body::empty());
        request.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static("gw-health-check"),
        );
        if upstream.connector.h2 {
            // the host goes in `:authority`
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(endpoint.target.scheme());
            parts.authority = Some(endpoint.target.authority.clone());
            parts.path_and_query = Some(probe.path.clone());
            *request.uri_mut() = Uri::from_parts(parts).map_err(|e| e.to_string())?;
            *request.version_mut() = http::Version::HTTP_2;
        } else {
            *request.uri_mut() = probe.path.clone().into();
            let headers = request.headers_mut();
            headers.insert(header::HOST, endpoint.target.host_header.clone());
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let response = sender
            .send(request)
            .await
            .map_err(|e| format!("request: {}", e.error()))?;
        Ok::<StatusCode, String>(response.status())
    };
    match tokio::time::timeout(probe.timeout, exchange).await {
        Err(_) => Err(format!("no answer within {} ms", probe.timeout.as_millis())),
        Ok(Err(reason)) => Err(reason),
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => Ok(()),
        Ok(Ok(status)) => Err(format!("status {}", status.as_u16())),
    }
}
