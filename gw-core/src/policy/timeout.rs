//! `timeout`: the time a route's upstream has to send its response headers, replacing
//! `spec.upstream.timeouts.request` for the route (longer or shorter).
//!
//! The policy only marks the request ([`RequestTimeout`] in its extensions); the upstream
//! call applies it exactly where it applies the API's own request timeout (from the start of
//! the call, retries included), so running out of it is the usual 504 `upstream_timeout`.
//!
//! [`TimeoutLayer`] is the same policy as a `tower` middleware, for a stack of your own
//! around gw's upstream service: like the policy, it only marks the request, and times
//! nothing out by itself (around any other service, use `tower::timeout`).
//!
//! ```
//! use gw_core::model::HumanDuration;
//! use gw_core::policy::timeout::{TimeoutConfig, TimeoutLayer};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let timeout = TimeoutLayer::new(TimeoutConfig { request: HumanDuration::from_secs(2) })?;
//! let service = ServiceBuilder::new()
//!     .layer(timeout)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     });
//!
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use http::{Request, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::{Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::Body;
use crate::model::{FieldError, HumanDuration};
use crate::upstream::RequestTimeout;

/// The longest `request` accepted.
const MAX_TIMEOUT: Duration = Duration::from_hours(1);

/// The configuration of `timeout`: its params in an API definition, or the typed config of
/// a [`TimeoutLayer`].
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// The time allowed for the upstream's response headers (more than 0, at most 1h),
    /// instead of `spec.upstream.timeouts.request`.
    pub request: HumanDuration,
}

/// `timeout` as a `tower::Layer` for any stack: puts the time allowed in the request's
/// extensions, where gw's upstream service reads it.
pub type TimeoutLayer = FilterLayer<TimeoutFilter>;

/// The service of a [`TimeoutLayer`] around `S`.
pub type Timeout<S> = FilterService<TimeoutFilter, S>;

impl TimeoutLayer {
    /// Checks `config`: the same rules as the params of `timeout`.
    pub fn new(config: TimeoutConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&TimeoutPolicy, config, |config| {
            Ok(TimeoutFilter(RequestTimeout(config.request.as_duration())))
        })
    }
}

/// `timeout`.
#[derive(Debug)]
pub(crate) struct TimeoutPolicy;

impl Policy for TimeoutPolicy {
    type Params = TimeoutConfig;

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    fn check(&self, params: &TimeoutConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let request = params.request.as_duration();
        if request.is_zero() || request > MAX_TIMEOUT {
            vec![FieldError::new(
                "request",
                "must be more than 0 and at most 1h",
            )]
        } else {
            Vec::new()
        }
    }

    fn layer(&self, params: TimeoutConfig, _ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(TimeoutFilter(RequestTimeout(
            params.request.as_duration(),
        ))))
    }
}

/// The compiled `timeout` policy: the [`Filter`] of a [`TimeoutLayer`].
#[derive(Debug)]
pub struct TimeoutFilter(RequestTimeout);

impl<ReqB, ResB> Filter<ReqB, ResB> for TimeoutFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        request.extensions_mut().insert(self.0);
        Ok(())
    }
}

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt as _, Full};
    use tokio::net::TcpListener;

    use super::*;
    use crate::gateway::{ConnInfo, Gateway};
    use crate::metrics::ProxyMetrics;
    use crate::model::{ApiDefinition, Format, ValidationContext};
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, ctx};

    /// How long the test upstream takes to answer `/slow`.
    const SLOW: Duration = Duration::from_millis(300);

    /// An upstream on loopback that answers `ok`, after [`SLOW`] for paths ending in
    /// `/slow`.
    async fn upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            if req.uri().path().ends_with("/slow") {
                                tokio::time::sleep(SLOW).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn api(
        name: &str,
        upstream: SocketAddr,
        spec_timeout: &str,
        policy: &str,
    ) -> Arc<ApiDefinition> {
        let doc = format!(
            "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: /{name}\n  upstream:\n    endpoints: [{{url: 'http://{upstream}'}}]\n    timeouts: {{request: {spec_timeout}}}\n  policies: [{policy}]\n"
        );
        let registry = PolicyRegistry::builtin();
        let ctx = ValidationContext {
            policies: Some(&registry),
        };
        Arc::new(ApiDefinition::parse_with(doc.as_bytes(), Format::Yaml, &ctx).unwrap())
    }

    async fn get(gw: &Gateway, uri: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .uri(uri)
            .header("host", "gw.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let conn = ConnInfo {
            peer: "127.0.0.9:40000".parse().unwrap(),
            secure: false,
        };
        let response = gw.handle(request, conn).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn params_are_checked() {
        let registry = PolicyRegistry::builtin();
        let fields = |params: serde_json::Value| -> Vec<String> {
            registry
                .validate_params("timeout", &params, &ctx())
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(serde_json::json!({"request": "0s"})), ["request"]);
        assert_eq!(fields(serde_json::json!({"request": "61m"})), ["request"]);
        assert_eq!(fields(serde_json::json!({"request": "5 s"})), ["request"]);
        assert_eq!(fields(serde_json::json!({})), ["request"]);
        assert_eq!(
            fields(serde_json::json!({"request": "5s", "connect": "1s"})),
            ["connect"]
        );
        assert!(fields(serde_json::json!({"request": "1h"})).is_empty());
        assert!(fields(serde_json::json!({"request": "1ms"})).is_empty());
        assert_eq!(registry.phase("timeout"), Phase::Transform);
    }

    #[tokio::test]
    async fn marks_the_request_with_its_timeout() {
        let params: TimeoutConfig =
            serde_json::from_value(serde_json::json!({"request": "1500ms"})).unwrap();
        let layer = TimeoutPolicy.layer(params, &ctx()).unwrap();
        let request = Request::builder()
            .uri("/orders")
            .body(crate::body::empty())
            .unwrap();
        let (seen, _) = call(&layer, request).await;
        assert_eq!(
            seen.extensions().get::<RequestTimeout>(),
            Some(&RequestTimeout(Duration::from_millis(1500)))
        );
    }

    #[tokio::test]
    async fn replaces_the_upstream_request_timeout_both_ways() {
        let up = upstream().await;
        let gw = Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered());
        gw.apply(
            1,
            [
                // the API allows 50ms: the slow answer is too late
                api("plain", up, "50ms", ""),
                // the policy allows longer than the API
                api(
                    "longer",
                    up,
                    "50ms",
                    "{name: timeout, params: {request: 10s}}",
                ),
                // the policy allows less than the API
                api(
                    "shorter",
                    up,
                    "10s",
                    "{name: timeout, params: {request: 60ms}}",
                ),
            ],
        )
        .unwrap();

        let (status, body) = get(&gw, "/plain/slow").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert!(body.contains("within 50 ms"), "{body}");

        let (status, body) = get(&gw, "/longer/slow").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "ok");

        let (status, body) = get(&gw, "/shorter/slow").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert!(body.contains("\"upstream_timeout\""), "{body}");
        assert!(body.contains("within 60 ms"), "{body}");

        // a fast answer is not affected
        assert_eq!(get(&gw, "/shorter/fast").await.0, StatusCode::OK);
    }
}
