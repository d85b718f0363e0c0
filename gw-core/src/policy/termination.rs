//! `request-termination`: answers every request at the gateway with a fixed status, headers
//! and body (mocks, maintenance windows, retired operations). The upstream is not called.
//!
//! Outside a gateway, [`RequestTerminationLayer`] is the same policy as a `tower` middleware
//! for any stack, over any request and response bodies:
//!
//! ```
//! use gw_core::policy::termination::{RequestTerminationConfig, RequestTerminationLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let maintenance = RequestTerminationLayer::new(RequestTerminationConfig {
//!     message: Some("back at 10:00 UTC".into()),
//!     ..RequestTerminationConfig::default()
//! })?;
//! let service = ServiceBuilder::new()
//!     .layer(maintenance)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("not called")))
//!     });
//!
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::header_names::header_name;
use super::{Filter, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::{self, Body};
use crate::model::FieldError;

/// The configuration of `request-termination`: its params in an API definition, or the
/// typed config of a [`RequestTerminationLayer`]. The default answers 503 with a JSON
/// error.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RequestTerminationConfig {
    /// The status code (200 to 599; default 503).
    #[serde(default = "default_status")]
    pub status: u16,
    /// A message, answered as `{"error": {"code": "request_terminated", "message": ...}}`;
    /// the default when neither `message` nor `body` is given.
    #[serde(default)]
    pub message: Option<String>,
    /// The body, sent as is (instead of `message`).
    #[serde(default)]
    pub body: Option<String>,
    /// The body's `Content-Type` (default `application/json` for `message`,
    /// `text/plain; charset=utf-8` for `body`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// More response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    503
}

const DEFAULT_MESSAGE: &str = "the service is not available";

impl Default for RequestTerminationConfig {
    fn default() -> Self {
        Self {
            status: default_status(),
            message: None,
            body: None,
            content_type: None,
            headers: BTreeMap::new(),
        }
    }
}

/// `request-termination` as a `tower::Layer` for any stack: answers every request itself;
/// the inner service is never called.
pub type RequestTerminationLayer = FilterLayer<RequestTerminationFilter>;

/// The service of a [`RequestTerminationLayer`] around `S`.
pub type RequestTermination<S> = FilterService<RequestTerminationFilter, S>;

impl RequestTerminationLayer {
    /// Checks and compiles `config`: the same rules as the params of `request-termination`.
    pub fn new(config: RequestTerminationConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(
            &RequestTerminationPolicy,
            config,
            RequestTerminationFilter::build,
        )
    }
}

/// `request-termination`.
#[derive(Debug)]
pub(crate) struct RequestTerminationPolicy;

impl Policy for RequestTerminationPolicy {
    type Params = RequestTerminationConfig;

    fn check(
        &self,
        params: &RequestTerminationConfig,
        _ctx: &PolicyContext<'_>,
    ) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !(200..=599).contains(&params.status) {
            errors.push(FieldError::new("status", "must be 200 to 599"));
        }
        if params.message.is_some() && params.body.is_some() {
            errors.push(FieldError::new(
                "body",
                "give either message or body, not both",
            ));
        }
        if let Some(content_type) = &params.content_type
            && HeaderValue::from_str(content_type).is_err()
        {
            errors.push(FieldError::new("contentType", "not a valid header value"));
        }
        for (name, value) in &params.headers {
            if let Err(message) = header_name(name, false) {
                errors.push(FieldError::new(format!("headers.{name}"), message));
            } else if HeaderValue::from_str(value).is_err() {
                errors.push(FieldError::new(
                    format!("headers.{name}"),
                    "not a valid header value",
                ));
            }
        }
        errors
    }

    fn layer(
        &self,
        params: RequestTerminationConfig,
        _ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        RequestTerminationFilter::build(params).map(filter_layer)
    }
}

impl RequestTerminationFilter {
    fn build(params: RequestTerminationConfig) -> Result<Self, String> {
        let status = StatusCode::from_u16(params.status).map_err(|e| e.to_string())?;
        let (body, default_type) = match params.body {
            Some(body) => (Bytes::from(body), "text/plain; charset=utf-8"),
            None => {
                let message = params.message.as_deref().unwrap_or(DEFAULT_MESSAGE);
                let json = serde_json::json!({
                    "error": {"code": "request_terminated", "message": message}
                });
                (Bytes::from(json.to_string()), "application/json")
            }
        };
        let content_type =
            HeaderValue::from_str(params.content_type.as_deref().unwrap_or(default_type))
                .map_err(|_| "contentType: not a valid header value".to_string())?;
        let mut headers = vec![(http::header::CONTENT_TYPE, content_type)];
        for (name, value) in &params.headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("headers.{name}: not a valid header value"))?;
            headers.push((header_name(name, false)?, value));
        }
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

/// The compiled `request-termination` policy: the [`Filter`] of a
/// [`RequestTerminationLayer`].
#[derive(Debug)]
pub struct RequestTerminationFilter {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl<ReqB, ResB> Filter<ReqB, ResB> for RequestTerminationFilter {
    type State = ();

    fn request(&self, _request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        for (name, value) in &self.headers {
            response.headers_mut().append(name, value.clone());
        }
        Err(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call_seen, ctx, text};

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: RequestTerminationConfig = serde_json::from_value(params).unwrap();
        RequestTerminationPolicy.layer(params, &ctx()).unwrap()
    }

    fn request() -> Request<Body> {
        Request::builder()
            .uri("/orders")
            .body(body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn answers_at_the_gateway() {
        let (seen, response) = call_seen(&layer(serde_json::json!({})), request()).await;
        assert!(seen.is_none(), "the upstream must not be called");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(text(response).await.contains("request_terminated"));

        let mock = layer(serde_json::json!({
            "status": 200, "body": "{\"id\": 1}", "contentType": "application/json",
            "headers": {"x-mock": "yes"}
        }));
        let (seen, response) = call_seen(&mock, request()).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-mock"], "yes");
        assert_eq!(text(response).await, "{\"id\": 1}");
    }

    #[test]
    fn params_are_checked() {
        let registry = PolicyRegistry::builtin();
        let errors = registry.validate_params(
            "request-termination",
            &serde_json::json!({"status": 99, "message": "m", "body": "b", "headers": {"content-length": "1"}}),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["status", "body", "headers.content-length"],
            "{errors:?}"
        );
        assert!(
            registry
                .validate_params("request-termination", &serde_json::Value::Null, &ctx())
                .is_empty()
        );
    }
}
