//! `access-log`: one line per request, when its response is done (the last byte sent, or
//! the client gone): time, API, operation, consumer, method, path, status, latency,
//! upstream endpoint, bytes, request id, client address.
//!
//! Lines are `tracing` events with the target `access_log`, so they go where the runtime's
//! logs go, in its format (`--log-format json` makes them JSON lines), and `RUST_LOG` can
//! route or silence them (`RUST_LOG=info,access_log=off`).
//!
//! Outside a gateway, [`AccessLogLayer`] is the same policy as a `tower` middleware for a
//! stack whose responses carry gw's [`Body`] (any request body). The line's fields that gw
//! fills in (the operation, consumer and endpoint from the [`Exchange`], the request id,
//! the client's [`ConnInfo`]) are read from the request's extensions when they are there.
//!
//! ```
//! use gw_core::body::{self, Body};
//! use gw_core::policy::accesslog::{AccessLogConfig, AccessLogLayer};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(AccessLogLayer::new("orders", AccessLogConfig::default())?)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(body::full("ok")))
//!     });
//!
//! // the line is written once the response body is done (or dropped)
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService, check_config};
use super::{Exchange, Filter, Phase, Policy, PolicyContext, RequestId, RouteLayer, filter_layer};
use crate::body::{self, Body, BoxError};
use crate::gateway::ConnInfo;
use crate::model::FieldError;

/// The configuration of `access-log`: its params in an API definition, or the typed config
/// of an [`AccessLogLayer`].
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Whether the line includes the query string (default false: queries may carry
    /// secrets, such as an API key in a query parameter).
    #[serde(default)]
    pub include_query: bool,
}

/// `access-log` as a `tower::Layer` for stacks whose responses carry gw's [`Body`] (any
/// request body): one line per exchange, written when the response body ends.
pub type AccessLogLayer = FilterLayer<AccessLogFilter>;

/// The service of an [`AccessLogLayer`] around `S`.
pub type AccessLog<S> = FilterService<AccessLogFilter, S>;

impl AccessLogLayer {
    /// Logs the exchanges under the API name `api` (the line's `api` field).
    pub fn new(api: &str, config: AccessLogConfig) -> Result<Self, ConfigError> {
        check_config(&AccessLogPolicy, &config)?;
        Ok(FilterLayer::from_filter(AccessLogFilter {
            api: Arc::from(api),
            include_query: config.include_query,
        }))
    }
}

/// `access-log`.
#[derive(Debug)]
pub(crate) struct AccessLogPolicy;

impl Policy for AccessLogPolicy {
    type Params = AccessLogConfig;

    fn check(&self, _params: &AccessLogConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        Vec::new()
    }

    fn phase(&self) -> Phase {
        Phase::Observe
    }

    fn layer(
        &self,
        params: AccessLogConfig,
        ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        // the operation is read per request from the exchange: an API-level access log is
        // one layer shared by all the API's operations
        Ok(filter_layer(AccessLogFilter {
            api: Arc::from(ctx.api),
            include_query: params.include_query,
        }))
    }
}

/// The compiled `access-log` policy: the [`Filter`] of an [`AccessLogLayer`].
#[derive(Debug)]
pub struct AccessLogFilter {
    api: Arc<str>,
    include_query: bool,
}

/// What the line needs from the request.
#[derive(Debug)]
struct Entry {
    api: Arc<str>,
    time: SystemTime,
    start: Instant,
    method: Method,
    path: String,
    request_id: Option<HeaderValue>,
    trace_id: Option<String>,
    client: Option<std::net::IpAddr>,
    exchange: Option<Arc<Exchange>>,
    status: u16,
    /// Time to the response headers, in milliseconds.
    latency_ms: f64,
    bytes: u64,
}

/// The entry while the request is in the stack: written as `status: 0`, `completed: false`
/// if the exchange ends before a response reaches this policy (the client left while the
/// upstream was still working, or the stack failed).
#[derive(Debug)]
pub struct Pending(Option<Box<Entry>>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(entry) = self.0.take() {
            write(&entry, false);
        }
    }
}

impl<ReqB> Filter<ReqB, Body> for AccessLogFilter {
    type State = Pending;

    fn request(&self, request: &mut Request<ReqB>) -> Result<Self::State, Response<Body>> {
        let path = match (self.include_query, request.uri().query()) {
            (true, Some(query)) => format!("{}?{query}", request.uri().path()),
            _ => request.uri().path().to_string(),
        };
        Ok(Pending(Some(Box::new(Entry {
            api: Arc::clone(&self.api),
            time: SystemTime::now(),
            start: Instant::now(),
            method: request.method().clone(),
            path,
            request_id: request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.clone()),
            trace_id: crate::trace::trace_id(request.headers()).map(str::to_string),
            client: request
                .extensions()
                .get::<ConnInfo>()
                .map(|c| c.peer.ip().to_canonical()),
            exchange: request.extensions().get::<Arc<Exchange>>().cloned(),
            status: 0,
            latency_ms: 0.0,
            bytes: 0,
        }))))
    }

    fn response(&self, mut pending: Self::State, response: &mut Response<Body>) {
        let Some(mut entry) = pending.0.take() else {
            return;
        };
        entry.status = response.status().as_u16();
        entry.latency_ms = entry.start.elapsed().as_secs_f64() * 1000.0;
        let inner = std::mem::replace(response.body_mut(), body::empty());
        *response.body_mut() = body::boxed(Counted {
            inner,
            entry: Some(entry),
        });
    }
}

/// The response body, counting its bytes; the line is written when it ends or is dropped.
struct Counted {
    inner: Body,
    entry: Option<Box<Entry>>,
}

impl Counted {
    fn finish(&mut self, completed: bool) {
        if let Some(entry) = self.entry.take() {
            write(&entry, completed);
        }
    }
}

fn write(entry: &Entry, completed: bool) {
    let time = humantime_rfc3339(entry.time);
    let consumer = entry.exchange.as_ref().and_then(|e| e.consumer());
    let consumer = consumer.as_ref().map(|c| &*c.name);
    let endpoint = entry
        .exchange
        .as_ref()
        .and_then(|e| e.endpoint())
        .map(|e| &**e);
    let request_id = entry.request_id.as_ref().and_then(|v| v.to_str().ok());
    tracing::info!(
        target: "access_log",
        time = %time,
        api = %entry.api,
        operation = entry.exchange.as_ref().map_or("", |e| &**e.operation()),
        consumer = consumer.unwrap_or(""),
        method = %entry.method,
        path = %entry.path,
        status = entry.status,
        latency_ms = entry.latency_ms,
        duration_ms = entry.start.elapsed().as_secs_f64() * 1000.0,
        upstream = endpoint.unwrap_or(""),
        bytes = entry.bytes,
        completed,
        request_id = request_id.unwrap_or(""),
        trace_id = entry.trace_id.as_deref().unwrap_or(""),
        client = %entry.client.map(|ip| ip.to_string()).unwrap_or_default(),
        "access"
    );
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-11-22T03:04:05.678Z`).
fn humantime_rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let millis = since.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(entry)) = (frame.data_ref(), this.entry.as_mut()) {
                    entry.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
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

impl Drop for Counted {
    fn drop(&mut self) {
        // a body that is never polled to its end: an empty one hyper did not poll, or a
        // client that went away
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_403_045_678);
        assert_eq!(humantime_rfc3339(t), "2026-11-23T03:04:05.678Z");
        assert_eq!(
            humantime_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_hours(264_384);
        assert_eq!(humantime_rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
