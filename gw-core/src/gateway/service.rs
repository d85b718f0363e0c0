//! [`GatewayService`]: the gateway as a `tower::Service`, to mount in any tower stack (an
//! axum `Router`'s fallback, a hyper server, a tonic server's router).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{ConnInfo, Gateway, LogGate};
use crate::body::{Body, BoxError};

/// The gateway as a `tower::Service<Request<B>>`, for any body `B` that
/// [`Gateway::handle`] accepts: it answers every request (errors are JSON responses, so
/// its error type is [`Infallible`]), is always ready, and is cheap to clone (an
/// `Arc<Gateway>` inside). Configurations applied to the gateway take effect at the
/// service's next request.
///
/// The service reads the connection's information from the request's extensions, where the
/// server in front of it puts it:
///
/// - a [`ConnInfo`], the gateway's own type, which says whether the connection is TLS;
/// - with the `axum` feature, axum's `ConnectInfo<SocketAddr>`, which
///   `Router::into_make_service_with_connect_info::<SocketAddr>()` puts in (the connection
///   is then taken for plain HTTP: behind TLS, insert a [`ConnInfo`] instead).
///
/// A request with neither is refused with a 500 `connection_info_missing` and never
/// reaches a route: the client's address is what IP filters, rate limits by address and the
/// `X-Forwarded-For` sent upstream are made of, and a gateway that served without it would
/// let an IP deny list pass every request and put every client in one rate-limit bucket.
/// The mistake shows at the first request, not in production traffic.
///
/// ```
/// use std::sync::Arc;
///
/// use gw_core::metrics::ProxyMetrics;
/// use gw_core::policy::PolicyRegistry;
/// use gw_core::{ConnInfo, Gateway};
/// use http_body_util::Empty;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Arc::new(Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered()));
/// let service = gateway.service();
///
/// let mut request = http::Request::new(Empty::<bytes::Bytes>::new());
/// request.extensions_mut().insert(ConnInfo {
///     peer: "192.0.2.7:50000".parse().unwrap(),
///     secure: false,
/// });
/// // no API is applied yet: gw's 404
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 404);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
}

impl GatewayService {
    /// The service of `gateway` (a [`Gateway`] or an `Arc` of one, to keep applying
    /// configurations to it).
    pub fn new(gateway: impl Into<Arc<Gateway>>) -> Self {
        Self {
            gateway: gateway.into(),
        }
    }

    /// The gateway it serves.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }
}

impl Gateway {
    /// This gateway as a `tower::Service`: see [`GatewayService`].
    pub fn service(self: &Arc<Self>) -> GatewayService {
        GatewayService::new(Arc::clone(self))
    }
}

impl<B> tower::Service<Request<B>> for GatewayService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        let Some(conn) = ConnInfo::of(&request) else {
            return ResponseFuture::ready(self.gateway.no_conn_info());
        };
        let gateway = Arc::clone(&self.gateway);
        ResponseFuture {
            inner: Box::pin(async move { gateway.handle(request, conn).await }),
        }
    }
}

impl Gateway {
    /// The answer to a request that came without the connection's information: a 500,
    /// counted as unrouted, and a warning at most once a second (the mistake is the
    /// embedder's, and the same for every request).
    fn no_conn_info(&self) -> Response<Body> {
        static WARNED: LogGate = LogGate {
            last_second: std::sync::atomic::AtomicU64::new(0),
        };
        if WARNED.allow() {
            tracing::error!(
                "a request reached the gateway service without the connection's information \
                 (a gw_core::ConnInfo in its extensions): refused with 500"
            );
        }
        self.metrics.unrouted(StatusCode::INTERNAL_SERVER_ERROR);
        crate::error::conn_info_missing()
    }
}

/// The future of a [`GatewayService`] call.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
}

impl ResponseFuture {
    fn ready(response: Response<Body>) -> Self {
        Self {
            inner: Box::pin(std::future::ready(response)),
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

#[cfg(all(test, feature = "yaml"))]
mod tests;
