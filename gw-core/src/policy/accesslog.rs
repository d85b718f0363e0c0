//! `access-log`: one line per request, when its response is done (the last byte sent, or
//! the client gone): time, API, operation, consumer, method, path, status, latency,
//! upstream endpoint, bytes, request id, client address.
//!
//! Lines are `tracing` events with the target `access_log`, so they go where the runtime's
//! logs go, in its format (`--log-format json` makes them JSON lines), and `RUST_LOG` can
//! route or silence them (`RUST_LOG=info,access_log=off`).
//!
//! Outside a gateway, [`AccessLogLayer`] is the same policy as a `tower` middleware over any
//! request and response body: its services ([`AccessLog`]) hand out the inner service's
//! response body in an [`AccessLogBody`], which counts its bytes and writes the line when it
//! ends or is dropped. The line is the gateway's, field for field; those that gw fills in
//! (the operation, consumer and endpoint from the [`Exchange`], the request id, the
//! client's [`ConnInfo`]) are read from the request's extensions when they are there.
//! Headers are never logged (an `Authorization` header cannot reach the line), nor the
//! query unless `include_query` asks for it.
//!
//! ```
//! use bytes::Bytes;
//! use gw_core::policy::accesslog::{AccessLogConfig, AccessLogLayer};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt as _, Full};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(AccessLogLayer::new("orders", AccessLogConfig::default())?)
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//!     });
//!
//! let response = service.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(response.status(), 200);
//! // the line (`bytes=2 completed=true`) is written as the body ends
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "ok");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Buf as _;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, check_config};
use super::{Exchange, Filter, Phase, Policy, PolicyContext, RequestId, RouteLayer, filter_layer};
use crate::body::{self, Body};
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

/// `access-log` as a `tower::Layer` for any stack, over any request and response body: one
/// line per exchange, written when the response body ends or is dropped (or, when the
/// inner service fails or the call is dropped, with `status` 0 and `completed: false`).
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    log: AccessLogFilter,
}

impl AccessLogLayer {
    /// Logs the exchanges under the API name `api` (the line's `api` field).
    pub fn new(api: &str, config: AccessLogConfig) -> Result<Self, ConfigError> {
        check_config(&AccessLogPolicy, &config)?;
        Ok(Self {
            log: AccessLogFilter {
                api: Arc::from(api),
                include_query: config.include_query,
            },
        })
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            log: self.log.clone(),
        }
    }
}

/// The layer in a route's stack, where it is the policy's filter on gw's [`Body`], fused
/// with the filters next to it.
impl From<AccessLogLayer> for RouteLayer {
    fn from(layer: AccessLogLayer) -> Self {
        filter_layer(layer.log)
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

/// The compiled `access-log` policy: a [`Filter`] on gw's response [`Body`] in a route's
/// stack, and what an [`AccessLog`] service applies.
#[derive(Debug, Clone)]
struct AccessLogFilter {
    api: Arc<str>,
    include_query: bool,
}

impl AccessLogFilter {
    /// The line of the exchange `request` starts.
    fn line<B>(&self, request: &Request<B>) -> Line {
        let path = match (self.include_query, request.uri().query()) {
            (true, Some(query)) => format!("{}?{query}", request.uri().path()),
            _ => request.uri().path().to_string(),
        };
        Line {
            entry: Box::new(Entry {
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
            }),
            completed: false,
        }
    }
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

/// The line of one exchange, written when it is dropped: while the request is in the stack,
/// as `status: 0`, `completed: false` (the client left while the upstream was still working,
/// or the stack failed); then with the response's status, and completed once its body ended.
#[derive(Debug)]
struct Line {
    entry: Box<Entry>,
    completed: bool,
}

impl Line {
    /// The response's headers have arrived: the line now waits for `body`.
    fn respond<B: HttpBody>(mut self, status: StatusCode, body: B) -> AccessLogBody<B> {
        self.entry.status = status.as_u16();
        self.entry.latency_ms = self.entry.start.elapsed().as_secs_f64() * 1000.0;
        // a body that ends without being polled (an empty one hyper does not poll) is
        // complete
        self.completed = body.is_end_stream();
        AccessLogBody {
            inner: body,
            line: Some(self),
        }
    }

    /// Writes the line now (as it is dropped).
    fn finish(mut self, completed: bool) {
        self.completed = completed;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        write(&self.entry, self.completed);
    }
}

/// The route stack's path: the same line, on gw's [`Body`].
impl<ReqB> Filter<ReqB, Body> for AccessLogFilter {
    type State = Line;

    fn request(&self, request: &mut Request<ReqB>) -> Result<Line, Response<Body>> {
        Ok(self.line(request))
    }

    fn response(&self, line: Line, response: &mut Response<Body>) {
        let inner = std::mem::replace(response.body_mut(), body::empty());
        *response.body_mut() = body::boxed(line.respond(response.status(), inner));
    }
}

/// The service of an [`AccessLogLayer`] around `S`.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    log: AccessLogFilter,
}

impl<S> AccessLog<S> {
    super::inner_service_accessors!();
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for AccessLog<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: HttpBody,
{
    type Response = Response<AccessLogBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let line = self.log.line(&request);
        ResponseFuture {
            future: self.inner.call(request),
            line: Some(line),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`AccessLog`] call: the inner call, then the response with its
    /// body in an [`AccessLogBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        line: Option<Line>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: HttpBody,
{
    type Output = Result<Response<AccessLogBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        let line = this
            .line
            .take()
            .expect("access log future polled after completion");
        // on an error, the line is written as it is dropped here: no response
        Poll::Ready(result.map(|response| {
            let status = response.status();
            response.map(|body| line.respond(status, body))
        }))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The response body of an [`AccessLog`] service: `B`, its data counted. The exchange's
    /// line is written when it ends (`completed: true`), fails, or is dropped: completed
    /// then only if it had nothing more to send (otherwise the client went away, or nobody
    /// read the body to its end).
    pub struct AccessLogBody<B> {
        #[pin]
        inner: B,
        line: Option<Line>,
    }
}

impl<B> fmt::Debug for AccessLogBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLogBody").finish_non_exhaustive()
    }
}

impl<B: HttpBody> HttpBody for AccessLogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(line) = this.line.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        line.entry.bytes += data.remaining() as u64;
                    }
                    line.completed = this.inner.is_end_stream();
                }
            }
            Poll::Ready(None) => {
                if let Some(line) = this.line.take() {
                    line.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(line) = this.line.take() {
                    line.finish(false);
                }
            }
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use tower::ServiceExt as _;

    use super::*;
    use crate::body::BoxError;
    use crate::policy::testing::call;

    /// The lines written on this thread while its guard lives, as the runtime's
    /// `--log-format json` writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
            let lines = Self::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(move || writer.clone())
                .finish();
            (lines, tracing::subscriber::set_default(subscriber))
        }

        /// The access lines so far, taken.
        fn take(&self) -> Vec<serde_json::Value> {
            let written = std::mem::take(&mut *self.0.lock().unwrap());
            String::from_utf8(written)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .filter(|line| line["target"] == "access_log")
                .collect()
        }

        /// The one access line written since the last call.
        fn one(&self) -> serde_json::Value {
            let mut lines = self.take();
            assert_eq!(lines.len(), 1, "{lines:?}");
            lines.remove(0)
        }
    }

    /// A request for `/orders/items/7` with a query, credentials, and what gw's edge and
    /// `correlation-id` put in the extensions (a consumer, an endpoint, an id, a client).
    fn request<B>(body: B) -> Request<B> {
        let mut request = Request::get("/orders/items/7?apikey=secret-query-key")
            .header("authorization", "Bearer secret-token")
            .header("x-api-key", "secret-header-key")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(body)
            .unwrap();
        let exchange = Arc::new(Exchange::new(Arc::from("GET /items/{id}")));
        exchange.set_endpoint(&Arc::from("http://10.0.0.5:8080"));
        let extensions = request.extensions_mut();
        extensions.insert(exchange);
        extensions.insert(RequestId(HeaderValue::from_static("req-1")));
        extensions.insert(ConnInfo {
            peer: "[::ffff:203.0.113.9]:4711".parse().unwrap(),
            secure: false,
        });
        super::super::authenticate(
            &mut request,
            super::super::Consumer {
                name: Arc::from("alice"),
                groups: Arc::from([]),
                credential: Some(Arc::from("key-1")),
            },
        );
        request
    }

    fn layer() -> AccessLogLayer {
        AccessLogLayer::new("orders", AccessLogConfig::default()).unwrap()
    }

    /// `line` without the fields that differ from one request to the next.
    fn timeless(mut line: serde_json::Value) -> serde_json::Value {
        let fields = line.as_object_mut().unwrap();
        for field in ["timestamp", "time", "latency_ms", "duration_ms"] {
            assert!(fields.remove(field).is_some(), "no {field}");
        }
        line
    }

    #[tokio::test]
    async fn the_layer_writes_the_gateways_line_over_any_body() {
        let (lines, _guard) = Lines::capture();

        // the route stack's line, on gw's bodies
        let (_, response) = call(&RouteLayer::from(layer()), request(body::empty())).await;
        response.into_body().collect().await.unwrap();
        let gateway = lines.one();

        // the layer's, on http-body-util's
        let service = tower::ServiceBuilder::new().layer(layer()).service_fn(
            |_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("upstream"))))
            },
        );
        let response = service.oneshot(request(Full::default())).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "upstream");
        let line = lines.one();

        assert_eq!(timeless(line.clone()), timeless(gateway), "{line}");
        assert_eq!(
            timeless(line.clone()),
            serde_json::json!({
                "level": "INFO", "target": "access_log", "message": "access",
                "api": "orders", "operation": "GET /items/{id}", "consumer": "alice",
                "method": "GET", "path": "/orders/items/7", "status": 200,
                "upstream": "http://10.0.0.5:8080", "bytes": 8, "completed": true,
                "request_id": "req-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "client": "203.0.113.9",
            })
        );
        assert!(!line.to_string().contains("secret"), "{line}");
    }

    /// A body sent in frames, one per poll, that knows when it has no more.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Frames {
        fn new(frames: &[&'static str]) -> Self {
            Self(
                frames
                    .iter()
                    .map(|f| Bytes::from_static(f.as_bytes()))
                    .collect(),
            )
        }
    }

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|f| Ok(Frame::data(f))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// The layer around a service that answers 200 with `frames`.
    async fn respond(frames: &'static [&'static str]) -> Response<AccessLogBody<Frames>> {
        let service = tower::Layer::layer(
            &layer(),
            tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Frames::new(frames)))
            }),
        );
        service.oneshot(Request::new(())).await.unwrap()
    }

    /// The line's status, bytes and whether it completed.
    fn outcome(line: &serde_json::Value) -> (u64, u64, bool) {
        let number = |field: &str| line[field].as_u64().unwrap();
        (
            number("status"),
            number("bytes"),
            line["completed"].as_bool().unwrap(),
        )
    }

    #[tokio::test]
    async fn a_body_left_before_its_end_is_logged_as_not_completed() {
        let (lines, _guard) = Lines::capture();

        // read to its end, without polling past the last frame
        let mut body = respond(&["abcd", "efgh"]).await.into_body();
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        assert!(lines.take().is_empty(), "written before the body was done");
        drop(body);
        assert_eq!(outcome(&lines.one()), (200, 8, true));

        // one frame read of two: the client went away
        let mut body = respond(&["abcd", "efgh"]).await.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(outcome(&lines.one()), (200, 4, false));

        // nothing to send: complete unread
        drop(respond(&[]).await);
        assert_eq!(outcome(&lines.one()), (200, 0, true));
    }

    #[tokio::test]
    async fn an_exchange_without_a_response_is_logged_with_status_0() {
        let (lines, _guard) = Lines::capture();
        let failing = tower::Layer::layer(
            &layer(),
            tower::service_fn(|_: Request<()>| async {
                Err::<Response<Full<Bytes>>, BoxError>("upstream gone".into())
            }),
        );
        failing.oneshot(Request::new(())).await.unwrap_err();
        assert_eq!(outcome(&lines.one()), (0, 0, false));

        // the call dropped before the inner service answered
        let mut never = tower::Layer::layer(
            &layer(),
            tower::service_fn(|_: Request<()>| {
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
            }),
        );
        let call = tower::Service::call(never.ready().await.unwrap(), Request::new(()));
        assert!(lines.take().is_empty(), "written before the exchange ended");
        drop(call);
        assert_eq!(outcome(&lines.one()), (0, 0, false));
    }

    #[tokio::test]
    async fn the_query_is_logged_only_when_asked_for() {
        let (lines, _guard) = Lines::capture();
        let config = AccessLogConfig {
            include_query: true,
        };
        let service = tower::ServiceBuilder::new()
            .layer(AccessLogLayer::new("orders", config).unwrap())
            .service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
        let request = Request::get("/orders?page=2").body(()).unwrap();
        drop(service.oneshot(request).await.unwrap());
        assert_eq!(lines.one()["path"], "/orders?page=2");
    }

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
