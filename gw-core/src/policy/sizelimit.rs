//! `request-size-limit`: refuses request bodies larger than a limit with 413.
//!
//! A declared `Content-Length` over the limit is refused before anything is read or sent
//! upstream. Any other body is wrapped so that it fails with
//! [`http_body_util::LengthLimitError`] once more than the limit has been read; the
//! gateway's rescue turns that failure into the same 413 (`payload_too_large`), whether
//! the upstream call is under way or not.
//!
//! Outside a gateway, [`RequestSizeLimitLayer`] is the same policy as a `tower` middleware
//! for a stack whose requests carry gw's [`Body`] (any response body), such as one around
//! gw's upstream service. An oversized body that was not declared fails while it is read,
//! with an error that [`crate::body::is_length_limit`] recognizes.
//!
//! ```
//! use gw_core::body::{self, Body};
//! use gw_core::policy::sizelimit::{RequestSizeLimitConfig, RequestSizeLimitLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let limit = RequestSizeLimitLayer::new(RequestSizeLimitConfig { max_bytes: 4 })?;
//! let service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service_fn(|_: Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(body::empty()))
//!     });
//!
//! let request = Request::post("/").header("content-length", "5").body(body::full("hello"))?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
//! # Ok(())
//! # }
//! ```

use http::{Request, Response, header};
use http_body::Body as _;
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService, check_config};
use super::{Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::{self, Body};
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

/// `request-size-limit` as a `tower::Layer` for stacks over gw's [`Body`]: refuses a
/// declared `Content-Length` over the limit with 413, and limits any other body as it is
/// read.
pub type RequestSizeLimitLayer = FilterLayer<RequestSizeLimitFilter>;

/// The service of a [`RequestSizeLimitLayer`] around `S`.
pub type RequestSizeLimit<S> = FilterService<RequestSizeLimitFilter, S>;

impl RequestSizeLimitLayer {
    /// Checks `config`: the same rules as the params of `request-size-limit`.
    pub fn new(config: RequestSizeLimitConfig) -> Result<Self, ConfigError> {
        check_config(&RequestSizeLimitPolicy, &config)?;
        Ok(FilterLayer::from_filter(RequestSizeLimitFilter {
            max_bytes: config.max_bytes,
        }))
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
        Ok(filter_layer(RequestSizeLimitFilter {
            max_bytes: params.max_bytes,
        }))
    }
}

/// The compiled `request-size-limit` policy: the [`Filter`] of a
/// [`RequestSizeLimitLayer`].
#[derive(Debug)]
pub struct RequestSizeLimitFilter {
    max_bytes: u64,
}

impl<ResB> Filter<Body, ResB> for RequestSizeLimitFilter {
    type State = ();

    fn request(&self, request: &mut Request<Body>) -> Result<(), Response<Body>> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_bytes) {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, call_seen, ctx, text};

    fn layer(max_bytes: u64) -> RouteLayer {
        RequestSizeLimitPolicy
            .layer(RequestSizeLimitConfig { max_bytes }, &ctx())
            .unwrap()
    }

    /// A body of `chunks` sent one after the other, with no declared length.
    fn chunked(chunks: &[&'static str]) -> Body {
        body::boxed(Chunks(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        ))
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
}
