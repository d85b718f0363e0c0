//! Upstreams: an API's endpoints, the choice among them, and the proxying service at the
//! bottom of every per-route stack.
//!
//! An [`Upstream`] is built once per API definition and shared by the API's routes; it keeps
//! a pooled keep-alive HTTP client, so connections survive configuration swaps that do not
//! change the API. [`UpstreamService`] rewrites the request for the upstream (context
//! stripped, base path prefixed, query kept byte for byte, hop-by-hop headers removed,
//! `X-Forwarded-*` added) and maps failures to [`GatewayError`]s.

mod headers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::{self, Body, BoxError};
use crate::error::GatewayError;
use crate::gateway::ConnInfo;
use crate::model::UpstreamSpec;

/// One endpoint, parsed once.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Base path without a trailing slash; empty for the root.
    base_path: Box<str>,
}

/// An API's upstream: endpoints, round robin, client and timeouts.
#[derive(Debug)]
pub struct Upstream {
    targets: Box<[Target]>,
    next: AtomicUsize,
    client: Client<HttpConnector, Body>,
    request_timeout: Duration,
}

/// Why an upstream could not be built from its spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {url:?}: {message}")]
pub struct UpstreamError {
    url: String,
    message: String,
}

impl Upstream {
    /// Builds the upstream of a validated spec.
    pub fn new(spec: &UpstreamSpec) -> Result<Self, UpstreamError> {
        let mut targets = Vec::with_capacity(spec.endpoints.len());
        for endpoint in &spec.endpoints {
            let error = |message: String| UpstreamError {
                url: endpoint.url.clone(),
                message,
            };
            let uri: Uri = endpoint.url.parse().map_err(|e| error(format!("{e}")))?;
            let scheme = uri
                .scheme()
                .cloned()
                .ok_or_else(|| error("no scheme".into()))?;
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| error("no host".into()))?;
            let base_path = uri.path().trim_end_matches('/').into();
            targets.push(Target {
                scheme,
                authority,
                base_path,
            });
        }
        if targets.is_empty() {
            return Err(UpstreamError {
                url: String::new(),
                message: "no endpoints".to_string(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.timeouts.connect.as_duration()));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            targets: targets.into_boxed_slice(),
            next: AtomicUsize::new(0),
            client,
            request_timeout: spec.timeouts.request.as_duration(),
        })
    }

    /// The next endpoint, round robin.
    fn pick(&self) -> &Target {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        &self.targets[i]
    }

    async fn forward(
        &self,
        request: Request<Body>,
        context_len: usize,
    ) -> Result<Response<Body>, GatewayError> {
        let target = self.pick();
        let endpoint = target.authority.as_str();
        let (mut parts, body) = request.into_parts();
        let original_host = headers::original_host(&parts.headers, &parts.uri);
        parts.uri = upstream_uri(target, &parts.uri, context_len)?;
        parts.version = Version::HTTP_11;
        let conn = parts.extensions.get::<ConnInfo>().copied();
        headers::prepare_request(&mut parts.headers, conn.as_ref(), original_host);
        let call = self.client.request(Request::from_parts(parts, body));
        let response = match tokio::time::timeout(self.request_timeout, call).await {
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    endpoint: endpoint.to_string(),
                    timeout_ms: self.request_timeout.as_millis(),
                });
            }
            Ok(Err(err)) if err.is_connect() => {
                return Err(GatewayError::UpstreamConnect {
                    endpoint: endpoint.to_string(),
                    source: Box::new(err),
                });
            }
            Ok(Err(err)) => {
                return Err(GatewayError::Upstream {
                    endpoint: endpoint.to_string(),
                    source: Box::new(err),
                });
            }
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        // the client connection speaks its own version (an HTTP/1.0 upstream must not make
        // the gateway answer in HTTP/1.0)
        parts.version = Version::default();
        headers::prepare_response(&mut parts.headers);
        Ok(Response::from_parts(parts, body::boxed(body)))
    }
}

/// `scheme://authority` + base path + the request path after the context + `?query`.
fn upstream_uri(target: &Target, uri: &Uri, context_len: usize) -> Result<Uri, GatewayError> {
    let path = uri.path();
    let rest = path.get(context_len..).unwrap_or("");
    let query = uri.query();
    let mut pq = String::with_capacity(
        target.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
    );
    pq.push_str(&target.base_path);
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
    Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| GatewayError::BadUpstreamRequest(e.to_string()))
}

/// The service at the bottom of a per-route stack: sends the request to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamService {
    upstream: Arc<Upstream>,
    context_len: usize,
}

impl UpstreamService {
    /// A service for an API whose context is `context_len` bytes long (0 for `/`).
    pub fn new(upstream: Arc<Upstream>, context_len: usize) -> Self {
        Self {
            upstream,
            context_len,
        }
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
        Box::pin(async move {
            upstream
                .forward(request, context_len)
                .await
                .map_err(BoxError::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        let uri: Uri = url.parse().unwrap();
        Target {
            scheme: uri.scheme().unwrap().clone(),
            authority: uri.authority().unwrap().clone(),
            base_path: uri.path().trim_end_matches('/').into(),
        }
    }

    #[test]
    fn strips_context_and_prefixes_base_path() {
        let t = target("http://127.0.0.1:9001/api");
        let cases = [
            (
                "/orders/v1/items/1?b=2&a=1",
                10,
                "http://127.0.0.1:9001/api/items/1?b=2&a=1",
            ),
            ("/orders/v1", 10, "http://127.0.0.1:9001/api"),
            ("/orders/v1/", 10, "http://127.0.0.1:9001/api/"),
            ("/x?", 0, "http://127.0.0.1:9001/api/x?"),
            (
                "/x?a=%20+%2F&&",
                0,
                "http://127.0.0.1:9001/api/x?a=%20+%2F&&",
            ),
        ];
        for (path, context_len, expected) in cases {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(
                upstream_uri(&t, &uri, context_len).unwrap().to_string(),
                expected
            );
        }
        let root = target("http://127.0.0.1:9001");
        let uri: Uri = "/orders/v1".parse().unwrap();
        assert_eq!(
            upstream_uri(&root, &uri, 10).unwrap().to_string(),
            "http://127.0.0.1:9001/"
        );
    }
}
