//! Errors of the request path, and the rescue that turns them into responses.
//!
//! The services of a stack fail with errors (a [`GatewayError`] where they can say what
//! went wrong); they do not answer for their own failures, and do not know who does. The
//! [`Rescue`] trait is that answer, defined here, low in the crate, so that nothing that
//! fails depends on the gateway: whoever builds a stack places a rescue around the part
//! that may fail with a [`RescueLayer`] (the gateway places its own around the upstream call
//! and calls it again at its edge).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body, BoxError};

/// Why the gateway answered a request itself instead of with the upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The path is malformed or uses an ambiguous encoding.
    #[error("invalid request path: {0}")]
    BadPath(#[from] crate::path::PathError),
    /// No API serves this host and path.
    #[error("no API matches this host and path")]
    NoRoute,
    /// The API serves the path, but not with this method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: String,
    },
    /// The TCP connection to the upstream endpoint could not be made.
    #[error("upstream endpoint {endpoint} is unreachable")]
    UpstreamConnect {
        /// The endpoint, as `host:port`.
        endpoint: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The upstream did not answer within the request timeout.
    #[error("upstream endpoint {endpoint} did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// The endpoint, as `host:port`.
        endpoint: String,
        /// The timeout that elapsed.
        timeout_ms: u128,
    },
    /// The upstream exchange failed after the connection was made.
    #[error("upstream endpoint {endpoint} failed: {source}")]
    Upstream {
        /// The endpoint, as `host:port`.
        endpoint: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Every endpoint of the upstream is ejected or failing its health check.
    #[error("no healthy endpoint of the upstream")]
    NoHealthyEndpoint,
    /// The upstream's circuit breaker is open: its connection and pending-request limits
    /// are reached.
    #[error(
        "the upstream is at its limit of {max_connections} connections and {max_pending} waiting requests"
    )]
    CircuitOpen {
        /// `circuitBreaker.maxConnections`.
        max_connections: u32,
        /// `circuitBreaker.maxPending`.
        max_pending: u32,
    },
    /// The request URI is longer than the gateway accepts.
    #[error("the request URI is longer than {limit} bytes")]
    UriTooLong {
        /// The limit.
        limit: usize,
    },
    /// The request body is larger than the API accepts (`spec.maxRequestBodyBytes`).
    #[error("the request body is larger than this API accepts")]
    PayloadTooLarge,
    /// The upstream URI could not be built (a bug or an invalid request).
    #[error("could not build the upstream request: {0}")]
    BadUpstreamRequest(String),
    /// The request body stopped arriving, or arrived too slowly, before the upstream
    /// answered.
    #[error(transparent)]
    SlowRequestBody(crate::upstream::SlowBody),
    /// The request body could not be read (the client broke it off).
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// No room to read the request body ahead (the gateway's read-ahead memory, or this
    /// client address's share of it, stayed full for the body timeout).
    #[error("the gateway cannot take this request body now; try again")]
    RequestBufferFull,
}

impl GatewayError {
    /// The status code the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_)
            | GatewayError::BadUpstreamRequest(_)
            | GatewayError::ClientBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::SlowRequestBody(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UpstreamConnect { .. } | GatewayError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::NoHealthyEndpoint
            | GatewayError::CircuitOpen { .. }
            | GatewayError::RequestBufferFull => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable, machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) => "bad_path",
            GatewayError::NoRoute => "no_route",
            GatewayError::UriTooLong { .. } => "uri_too_long",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::UpstreamConnect { .. } => "upstream_unreachable",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::Upstream { .. } => "upstream_error",
            GatewayError::BadUpstreamRequest(_) => "bad_request",
            GatewayError::NoHealthyEndpoint => "no_healthy_endpoint",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::SlowRequestBody(_) => "request_timeout",
            GatewayError::ClientBody(_) => "bad_request_body",
            GatewayError::RequestBufferFull => "request_buffer_full",
        }
    }

    /// The message the client receives. Upstream failures are described without the
    /// endpoint's address or the low-level cause (they are for the gateway's log, not for
    /// clients on the internet).
    pub fn public_message(&self) -> String {
        match self {
            GatewayError::UpstreamConnect { .. } => {
                "the upstream service is unreachable".to_string()
            }
            GatewayError::UpstreamTimeout { timeout_ms, .. } => {
                format!("the upstream service did not answer within {timeout_ms} ms")
            }
            GatewayError::Upstream { .. } => "the upstream service failed to answer".to_string(),
            GatewayError::BadUpstreamRequest(_) => "the request cannot be forwarded".to_string(),
            GatewayError::ClientBody(_) => "the request body could not be read".to_string(),
            GatewayError::NoHealthyEndpoint => {
                "no endpoint of the upstream service is healthy".to_string()
            }
            GatewayError::CircuitOpen { .. } => {
                "the upstream service is at its connection limit".to_string()
            }
            other => other.to_string(),
        }
    }

    /// Whether the error is the upstream's (worth a line in the gateway's log), rather than
    /// the client's.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamConnect { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::Upstream { .. }
                | GatewayError::NoHealthyEndpoint
                | GatewayError::CircuitOpen { .. }
        )
    }

    /// The response the client receives: the status and
    /// `{"error": {"code": "...", "message": "..."}}`.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut response = json_error(status, self.code(), &self.public_message());
        if let GatewayError::MethodNotAllowed { allow } = &self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            response.headers_mut().insert(header::ALLOW, value);
        }
        if matches!(
            self,
            GatewayError::SlowRequestBody(_)
                | GatewayError::ClientBody(_)
                | GatewayError::RequestBufferFull
        ) {
            // the rest of the body was not read: the connection cannot carry another request
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A 401 with its `WWW-Authenticate` challenge, as the authentication policies refuse.
#[cfg(any(feature = "api-key", feature = "basic-auth"))]
pub(crate) fn unauthorized(code: &str, message: &str, challenge: &HeaderValue) -> Response<Body> {
    let mut response = json_error(StatusCode::UNAUTHORIZED, code, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.clone());
    response
}

/// The answer to a request that reached gw without the connection's information (a
/// [`ConnInfo`](crate::extensions::ConnInfo) in its extensions, or axum's `ConnectInfo` with
/// the `axum` feature): a 500, since a policy that judges the client's address (an IP deny
/// list, a rate limit per address) must not guess it. Only an embedder's server can send one.
pub(crate) fn conn_info_missing() -> Response<Body> {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "connection_info_missing",
        "the gateway was not told the client's connection",
    )
}

/// A JSON error response: `{"error": {"code": code, "message": message}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(body::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error and its causes on one line (`a: b: c`), each cause once: what a log needs to
/// tell a TLS handshake refused for an unknown issuer from one refused for a missing client
/// certificate.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Turns an error of a stack into the response the client receives (the "rescue"): a
/// [`GatewayError`] keeps its status and code; what else to say, log or count is the
/// implementor's.
///
/// Implemented by any `Fn(BoxError) -> Response<Body>`; placed around a service with
/// [`RescueLayer`].
pub trait Rescue {
    /// The response for `error`.
    fn rescue(&self, error: BoxError) -> Response<Body>;
}

impl<F> Rescue for F
where
    F: Fn(BoxError) -> Response<Body>,
{
    fn rescue(&self, error: BoxError) -> Response<Body> {
        self(error)
    }
}

impl<R: Rescue + ?Sized> Rescue for Arc<R> {
    fn rescue(&self, error: BoxError) -> Response<Body> {
        (**self).rescue(error)
    }
}

/// Places a [`Rescue`] around a service: its errors become responses.
///
/// ```
/// use gw_core::error::{GatewayError, RescueLayer, json_error};
/// use gw_core::{Body, BoxError};
/// use http::{Request, Response, StatusCode};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// let failing = service_fn(|_: Request<Body>| async {
///     Err::<Response<Body>, BoxError>(GatewayError::NoHealthyEndpoint.into())
/// });
/// let rescue = |error: BoxError| match error.downcast::<GatewayError>() {
///     Ok(error) => error.into_response(),
///     Err(_) => json_error(StatusCode::BAD_GATEWAY, "gateway_error", "the request failed"),
/// };
/// let service = RescueLayer::new(rescue).layer(failing);
/// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let response = runtime
///     .block_on(service.oneshot(Request::new(gw_core::body::empty())))
///     .unwrap();
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// ```
#[derive(Debug, Clone)]
pub struct RescueLayer<R> {
    rescue: R,
}

impl<R> RescueLayer<R> {
    /// A layer that answers its service's errors with `rescue`.
    pub fn new(rescue: R) -> Self {
        Self { rescue }
    }
}

impl<S, R: Clone> tower::Layer<S> for RescueLayer<R> {
    type Service = Rescued<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescued::new(inner, self.rescue.clone())
    }
}

/// A service whose errors are answered by a [`Rescue`] (see [`RescueLayer`]). Errors of
/// readiness are not requests' and pass through.
#[derive(Debug, Clone)]
pub struct Rescued<S, R> {
    inner: S,
    rescue: R,
}

impl<S, R> Rescued<S, R> {
    /// `inner`, with its errors answered by `rescue`.
    pub fn new(inner: S, rescue: R) -> Self {
        Self { inner, rescue }
    }
}

impl<S, R, Request> tower::Service<Request> for Rescued<S, R>
where
    S: tower::Service<Request, Response = Response<Body>>,
    S::Error: Into<BoxError>,
    R: Rescue + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RescueFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(request),
            rescue: self.rescue.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Rescued`].
    pub struct RescueFuture<F, R> {
        #[pin]
        inner: F,
        rescue: R,
    }
}

impl<F, R, E> Future for RescueFuture<F, R>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
    R: Rescue,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(error) => this.rescue.rescue(error.into()),
        }))
    }
}

impl<F, R> std::fmt::Debug for RescueFuture<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RescueFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    fn rescue(error: BoxError) -> Response<Body> {
        match error.downcast::<GatewayError>() {
            Ok(error) => error.into_response(),
            Err(_) => json_error(StatusCode::BAD_GATEWAY, "other", "other"),
        }
    }

    /// Errors become the rescue's responses; responses pass through untouched.
    #[tokio::test]
    async fn a_rescued_service_answers_its_errors() {
        let service = tower::service_fn(|request: Request<Body>| async move {
            match request.uri().path() {
                "/ok" => Ok(Response::new(body::empty())),
                "/timeout" => Err(BoxError::from(GatewayError::UpstreamTimeout {
                    endpoint: "10.0.0.1:80".to_string(),
                    timeout_ms: 5,
                })),
                _ => Err(BoxError::from("something else")),
            }
        });
        let mut rescued = RescueLayer::new(rescue).layer(service);
        for (path, status) in [
            ("/ok", StatusCode::OK),
            ("/timeout", StatusCode::GATEWAY_TIMEOUT),
            ("/other", StatusCode::BAD_GATEWAY),
        ] {
            let request = Request::builder().uri(path).body(body::empty()).unwrap();
            let response = rescued.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(response.status(), status, "{path}");
        }
    }

    /// The rescue answers requests' failures, not a service that cannot take requests.
    #[tokio::test]
    async fn readiness_errors_pass_through() {
        #[derive(Clone)]
        struct Broken;
        impl tower::Service<Request<Body>> for Broken {
            type Response = Response<Body>;
            type Error = BoxError;
            type Future = std::future::Ready<Result<Response<Body>, BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Err("closed".into()))
            }
            fn call(&mut self, _: Request<Body>) -> Self::Future {
                std::future::ready(Ok(Response::new(body::empty())))
            }
        }
        let mut rescued = Rescued::new(Broken, Arc::new(rescue));
        assert!(rescued.ready().await.is_err());
    }
}
