//! `request-size-limit`: refuses request bodies larger than a limit with 413.
//!
//! A declared `Content-Length` over the limit is refused before anything is read or sent
//! upstream. Any other body is wrapped so that it fails with
//! [`http_body_util::LengthLimitError`] once more than the limit has been read; the
//! gateway's rescue turns that failure into the same 413 (`payload_too_large`), whether
//! the upstream call is under way or not.
//!
//! Outside a gateway, [`RequestSizeLimitLayer`] is the same policy as a `tower` middleware
//! over any request body, as tower-http's `RequestBodyLimit` is: a declared length over the
//! limit is answered 413 at once, with gw's JSON error; otherwise the inner service gets the
//! body as a [`Limited`], which fails as it is read once it grows past the limit, with an
//! error that [`body::is_length_limit`] recognizes (and axum's extractors answer with 413).
//!
//! ```
//! use bytes::Bytes;
//! use gw_core::body::{self, BoxError, Limited};
//! use gw_core::policy::sizelimit::{RequestSizeLimitConfig, RequestSizeLimitLayer};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt as _, Full};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let limit = RequestSizeLimitLayer::new(RequestSizeLimitConfig { max_bytes: 4 })?;
//! let service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service_fn(|request: Request<Limited<Full<Bytes>>>| async move {
//!         // a body too large that was not declared so fails as it is read
//!         let status = match request.into_body().collect().await {
//!             Ok(_) => StatusCode::OK,
//!             Err(error) if body::is_length_limit(&*error) => StatusCode::PAYLOAD_TOO_LARGE,
//!             Err(error) => return Err(error),
//!         };
//!         Ok(Response::builder().status(status).body(Full::new(Bytes::new()))?)
//!     });
//!
//! // declared too large: answered at once, with gw's JSON error
//! let request = Request::post("/").header("content-length", "5").body(Full::from("hello"))?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
//! let answer = response.into_body().collect().await?.to_bytes();
//! assert!(String::from_utf8_lossy(&answer).contains("payload_too_large"));
//!
//! // not declared: the inner service finds out as it reads
//! let request = Request::post("/").body(Full::from("hello"))?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
//!
//! let request = Request::post("/").body(Full::from("hi"))?;
//! assert_eq!(service.oneshot(request).await?.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, header};
use http_body::Body as _;
use schemars::JsonSchema;
use serde::Deserialize;

use super::deferred::DeferredFuture;
use super::filter::{ConfigError, ResponseBody, check_config};
use super::{Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::{self, Body, Limited};
use crate::error::GatewayError;
use crate::model::FieldError;

/// The largest `maxBytes` accepted: 1 TiB.
const MAX_LIMIT: u64 = 1 << 40;

/// The configuration of `request-size-limit`: its params in an API definition, or the typed
/// config of a [`RequestSizeLimitLayer`].
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RequestSizeLimitConfig {
    /// The largest request body accepted, in bytes (1 to 1 TiB).
    pub max_bytes: u64,
}

/// `request-size-limit` as a `tower::Layer` for any stack, over any request body: its
/// services ([`RequestSizeLimit`]) answer a declared `Content-Length` over the limit with
/// 413, and hand the inner service every other body as a [`Limited`].
#[derive(Debug, Clone, Copy)]
pub struct RequestSizeLimitLayer {
    limit: SizeLimit,
}

impl RequestSizeLimitLayer {
    /// Checks `config`: the same rules as the params of `request-size-limit`.
    pub fn new(config: RequestSizeLimitConfig) -> Result<Self, ConfigError> {
        check_config(&RequestSizeLimitPolicy, &config)?;
        Ok(Self {
            limit: SizeLimit {
                max_bytes: config.max_bytes,
            },
        })
    }
}

impl<S> tower::Layer<S> for RequestSizeLimitLayer {
    type Service = RequestSizeLimit<S>;

    fn layer(&self, inner: S) -> RequestSizeLimit<S> {
        RequestSizeLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The layer in a route's stack, where it is the policy's filter on gw's [`Body`], fused
/// with the filters next to it.
impl From<RequestSizeLimitLayer> for RouteLayer {
    fn from(layer: RequestSizeLimitLayer) -> Self {
        filter_layer(layer.limit)
    }
}

/// `request-size-limit`.
#[derive(Debug)]
pub(crate) struct RequestSizeLimitPolicy;

impl Policy for RequestSizeLimitPolicy {
    type Params = RequestSizeLimitConfig;

    fn phase(&self) -> Phase {
        Phase::Admission
    }

    fn check(&self, params: &RequestSizeLimitConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        if (1..=MAX_LIMIT).contains(&params.max_bytes) {
            Vec::new()
        } else {
            vec![FieldError::new(
                "maxBytes",
                format!("must be 1 to {MAX_LIMIT} (1 TiB)"),
            )]
        }
    }

    fn layer(
        &self,
        params: RequestSizeLimitConfig,
        _ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        Ok(filter_layer(SizeLimit {
            max_bytes: params.max_bytes,
        }))
    }
}

/// The compiled `request-size-limit` policy: the limit that both the route stack's filter
/// and [`RequestSizeLimit`] apply.
#[derive(Debug, Clone, Copy)]
struct SizeLimit {
    max_bytes: u64,
}

impl SizeLimit {
    /// Whether the request declares a body over the limit, which is refused before any of
    /// it is read.
    fn refuses(self, headers: &HeaderMap) -> bool {
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len > self.max_bytes)
    }
}

/// The route stack's path, on gw's [`Body`].
impl<ResB> Filter<Body, ResB> for SizeLimit {
    type State = ();

    fn request(&self, request: &mut Request<Body>) -> Result<(), Response<Body>> {
        if self.refuses(request.headers()) {
            return Err(GatewayError::PayloadTooLarge.into_response());
        }
        // a body that promises to stay within the limit (no body, or a declared length,
        // which the server enforces) is left as it is: no wrapper to allocate
        let hint = request.body().size_hint();
        if request.body().is_end_stream() || hint.upper().is_some_and(|n| n <= self.max_bytes) {
            return Ok(());
        }
        let body = std::mem::replace(request.body_mut(), body::empty());
        *request.body_mut() = body::limited(body, self.max_bytes);
        Ok(())
    }
}

/// The service of a [`RequestSizeLimitLayer`] around `S`: `S` takes the request with its
/// body as a [`Limited`].
#[derive(Debug, Clone)]
pub struct RequestSizeLimit<S> {
    inner: S,
    limit: SizeLimit,
}

impl<S> RequestSizeLimit<S> {
    super::inner_service_accessors!();
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for RequestSizeLimit<S>
where
    S: tower::Service<Request<Limited<ReqB>>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if self.limit.refuses(request.headers()) {
            return DeferredFuture::answered(GatewayError::PayloadTooLarge.into_response());
        }
        let max_bytes = self.limit.max_bytes;
        DeferredFuture::inner(
            self.inner
                .call(request.map(|body| Limited::new(body, max_bytes))),
            (),
        )
    }
}

/// The future of a [`RequestSizeLimit`] call: the 413 of a declared length over the limit,
/// or the inner call.
pub type ResponseFuture<F, ResB, E> = DeferredFuture<F, (), ResB, E>;

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use tower::ServiceExt as _;

    use super::*;
    use crate::body::BoxError;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, call_seen, ctx, text};

    fn layer(max_bytes: u64) -> RouteLayer {
        RequestSizeLimitPolicy
            .layer(RequestSizeLimitConfig { max_bytes }, &ctx())
            .unwrap()
    }

    /// A body of `chunks` sent one after the other, with no declared length.
    fn chunks(chunks: &[&'static str]) -> Chunks {
        Chunks(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        )
    }

    /// [`chunks`] as gw's body.
    fn chunked(chunks: &[&'static str]) -> Body {
        body::boxed(self::chunks(chunks))
    }

    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(
                self.get_mut()
                    .0
                    .pop_front()
                    .map(|c| Ok(http_body::Frame::data(c))),
            )
        }
    }

    fn request(body: Body, content_length: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().method("POST").uri("/orders");
        if let Some(len) = content_length {
            builder = builder.header("content-length", len);
        }
        builder.body(body).unwrap()
    }

    #[test]
    fn params_are_checked() {
        let registry = PolicyRegistry::builtin();
        let fields = |params: serde_json::Value| -> Vec<String> {
            registry
                .validate_params("request-size-limit", &params, &ctx())
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(serde_json::json!({"maxBytes": 0})), ["maxBytes"]);
        assert_eq!(
            fields(serde_json::json!({"maxBytes": (1u64 << 40) + 1})),
            ["maxBytes"]
        );
        assert_eq!(fields(serde_json::json!({"maxBytes": -1})), ["maxBytes"]);
        assert_eq!(fields(serde_json::json!({"maxBytes": "1k"})), ["maxBytes"]);
        assert_eq!(
            fields(serde_json::json!({"maxBytes": 10, "max": 1})),
            ["max"]
        );
        assert_eq!(fields(serde_json::Value::Null), ["maxBytes"]);
        assert!(fields(serde_json::json!({"maxBytes": 1u64 << 40})).is_empty());
        assert_eq!(registry.phase("request-size-limit"), Phase::Admission);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_at_once() {
        let (seen, response) =
            call_seen(&layer(10), request(body::full("0123456789x"), Some("11"))).await;
        assert!(seen.is_none(), "the upstream must not be called");
        assert_eq!(response.status(), 413);
        assert!(text(response).await.contains("payload_too_large"));

        let (seen, response) =
            call(&layer(10), request(body::full("0123456789"), Some("10"))).await;
        assert_eq!(response.status(), 200);
        let sent = seen.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sent, "0123456789");
    }

    #[tokio::test]
    async fn a_chunked_body_fails_once_it_grows_past_the_limit() {
        let (seen, _) = call(&layer(8), request(chunked(&["abcd", "efgh", "i"]), None)).await;
        let error = seen.into_body().collect().await.unwrap_err();
        assert!(body::is_length_limit(error.as_ref()), "{error}");

        // exactly at the limit passes whole
        let (seen, _) = call(&layer(8), request(chunked(&["abcd", "efgh"]), None)).await;
        let sent = seen.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sent, "abcdefgh");
    }

    /// [`RequestSizeLimitLayer`] around a service that reads the whole body and answers
    /// with it (or fails with the body's error); `calls` counts the calls that reached it.
    fn reading<B>(
        max_bytes: u64,
        calls: &Arc<AtomicUsize>,
    ) -> impl tower::Service<Request<B>, Response = Response<ResponseBody<Full<Bytes>>>, Error = BoxError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let calls = Arc::clone(calls);
        tower::ServiceBuilder::new()
            .layer(RequestSizeLimitLayer::new(RequestSizeLimitConfig { max_bytes }).unwrap())
            .service_fn(move |request: Request<Limited<B>>| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    let read = request.into_body().collect().await?.to_bytes();
                    Ok::<_, BoxError>(Response::new(Full::new(read)))
                }
            })
    }

    #[tokio::test]
    async fn the_layer_refuses_a_declared_length_over_the_limit_over_any_body() {
        let calls = Arc::default();
        let declared = |body: &'static str| {
            Request::post("/orders")
                .header("content-length", body.len().to_string())
                .body(Full::from(body))
                .unwrap()
        };
        let response = reading(10, &calls)
            .oneshot(declared("0123456789x"))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::Relaxed),
            0,
            "the inner service was called"
        );
        assert_eq!(response.status(), 413);
        let content_type = response.headers()[header::CONTENT_TYPE].clone();
        let answer = response.into_body().collect().await.unwrap().to_bytes();

        // the same answer as the route stack's, which the layer becomes in one
        let limit = RequestSizeLimitLayer::new(RequestSizeLimitConfig { max_bytes: 10 }).unwrap();
        let (seen, gateway) = call_seen(
            &RouteLayer::from(limit),
            request(body::full("0123456789x"), Some("11")),
        )
        .await;
        assert!(seen.is_none());
        assert_eq!(gateway.headers()[header::CONTENT_TYPE], content_type);
        assert_eq!(text(gateway).await.as_bytes(), &answer[..]);
        assert!(String::from_utf8_lossy(&answer).contains("\"payload_too_large\""));

        let response = reading(10, &calls)
            .oneshot(declared("0123456789"))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(response.status(), 200);
        let read = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(read, "0123456789");
    }

    #[tokio::test]
    async fn the_layer_limits_any_body_as_it_is_read() {
        let calls = Arc::default();
        // whole, over the limit, with no declared length
        let request = Request::post("/orders")
            .body(Full::from("0123456789x"))
            .unwrap();
        let error = reading(10, &calls).oneshot(request).await.unwrap_err();
        assert!(body::is_length_limit(&*error), "{error}");

        // streamed, growing past the limit in its third chunk
        let request = Request::post("/orders")
            .body(chunks(&["abcd", "efgh", "i"]))
            .unwrap();
        let error = reading(8, &calls).oneshot(request).await.unwrap_err();
        assert!(body::is_length_limit(&*error), "{error}");
        assert_eq!(calls.load(Ordering::Relaxed), 2);

        // exactly at the limit passes whole
        let request = Request::post("/orders")
            .body(chunks(&["abcd", "efgh"]))
            .unwrap();
        let response = reading(8, &calls).oneshot(request).await.unwrap();
        let read = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(read, "abcdefgh");
    }
}
