//! One request's upstream call, prepared once and sent by one attempt or more: the headers
//! rewritten for the upstream (hop-by-hop removed, forwarding headers written), the body
//! read ahead, and for each attempt the URI and `Host` of its endpoint; then the answer's
//! head made the client's.
//!
//! It neither chooses endpoints, connects, times out nor retries: the attempt loop of
//! [`Upstream`](super::Upstream) does, asking this for what to send.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::connector::Lease;
use super::deadline::Deadline;
use super::endpoint::EndpointState;
use super::tunnel::Switch;
use super::{Upstream, headers, pace};
use crate::body::{self, Body};
use crate::error::GatewayError;
use crate::gateway::ConnInfo;
use crate::policy::Exchange;

/// How the `Host` header sent upstream is chosen (`hostHeader`).
#[derive(Debug)]
pub(super) enum HostMode {
    /// The endpoint's `host:port`.
    Endpoint,
    /// The client's, else the endpoint's.
    Preserve,
    /// This value.
    Rewrite(HeaderValue),
}

/// A request on its way to the upstream.
pub(super) struct Call {
    /// The request's head (rewritten for the upstream) and body, until an attempt takes
    /// them; those of a replayable request stay, and each attempt sends a copy.
    pending: Option<(Parts, Body)>,
    /// The client's URI: every attempt rewrites it for its endpoint.
    client_uri: Uri,
    /// The host the client asked for.
    original_host: Option<HeaderValue>,
    /// The length of the API's context, stripped from the path.
    context_len: usize,
    /// The balancer's hash key.
    pub(super) key: Option<u64>,
    /// The time the upstream's response headers are allowed.
    pub(super) timeout: Duration,
    /// Whether the request may be sent again after an attempt that reached the upstream.
    pub(super) replayable: bool,
    /// The protocol switch the request asks for.
    pub(super) switch: Option<Switch>,
    /// Told which endpoint answered, for the policies that observe the exchange.
    exchange: Option<Arc<Exchange>>,
    /// What the read-ahead body did, when it was read ahead.
    body: Option<Arc<pace::BodyState>>,
    /// The client's address.
    peer: Option<std::net::IpAddr>,
}

impl Call {
    /// Prepares `request` for `upstream`: its headers rewritten once for every attempt, and
    /// the request counted into the retry budget (its body is read ahead by
    /// [`Call::read_ahead`]).
    pub(super) fn new(upstream: &Upstream, request: Request<Body>, context_len: usize) -> Self {
        let h2 = upstream.connector.h2;
        let (mut parts, body) = request.into_parts();
        let conn = parts.extensions.get::<ConnInfo>().copied();
        let peer = conn.map(|c| c.peer.ip());
        let exchange = parts.extensions.get::<Arc<Exchange>>().cloned();
        let timeout = Deadline::timeout_of(&parts.extensions, upstream.request_timeout);
        let key = upstream.balancer.key(&parts.headers, peer);
        let original_host = headers::original_host(&parts.headers, &parts.uri);
        // what the hop-by-hop headers said, read on arrival (by the gateway, or here for a
        // request that did not come through one)
        let arrival = match parts.extensions.get::<crate::arrival::Arrival>() {
            Some(arrival) => *arrival,
            None => headers::arrive(&mut parts.headers, peer, &[]),
        };
        let switch = Switch::take(&mut parts.extensions, &arrival, h2);
        let client_uri = parts.uri.clone();
        headers::prepare_request(
            &mut parts.headers,
            conn.as_ref(),
            &arrival,
            original_host.clone(),
            h2,
        );
        if let Some(switch) = &switch {
            switch.ask(&mut parts.headers);
        }
        parts.version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let replayable =
            upstream
                .retry
                .replays(&parts.method, body.is_end_stream(), switch.is_some());
        upstream.retry.deposit();
        Self {
            pending: Some((parts, body)),
            client_uri,
            original_host,
            context_len,
            key,
            timeout,
            replayable,
            switch,
            exchange,
            body: None,
            peer,
        }
    }

    /// Reads the body ahead (when `requestBuffering` is on), so that a client that does not
    /// send it holds no upstream connection; its pace is watched until the upstream answers.
    pub(super) async fn read_ahead(&mut self, upstream: &Upstream) -> Result<(), GatewayError> {
        if !upstream.request_buffering {
            return Ok(());
        }
        let Some((parts, body)) = &mut self.pending else {
            return Ok(());
        };
        if body.is_end_stream() {
            return Ok(());
        }
        let state = self.body.insert(Arc::default());
        let unread = std::mem::replace(body, body::empty());
        *body = read_ahead(unread, &parts.headers, upstream, state, self.peer).await?;
        Ok(())
    }

    /// The request an attempt on `endpoint` sends: a copy of a replayable request, else the
    /// request itself, whose body the lease watches (the connection is reusable only once
    /// the body is sent whole).
    pub(super) fn attempt(
        &mut self,
        upstream: &Upstream,
        endpoint: &EndpointState,
        lease: &mut Lease,
    ) -> Result<Request<Body>, GatewayError> {
        let h2 = upstream.connector.h2;
        let Some((mut parts, body)) = self.pending.take() else {
            return Err(GatewayError::BadUpstreamRequest(
                "the request body was already sent".to_string(),
            ));
        };
        let (uri, host) = self.target(upstream, endpoint)?;
        if self.replayable {
            let mut request = Request::new(body::empty());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            if !h2 {
                request.headers_mut().insert(header::HOST, host);
            }
            self.pending = Some((parts, body));
            return Ok(request);
        }
        parts.uri = uri;
        if !h2 {
            parts.headers.insert(header::HOST, host);
        }
        if body.is_end_stream() {
            Ok(Request::from_parts(parts, body))
        } else {
            Ok(Request::from_parts(parts, lease.watch_body(body)))
        }
    }

    /// Takes back a request that an attempt did not write (its connection turned out
    /// closed), unless the call kept the original.
    pub(super) fn unsent(&mut self, request: Request<Body>) {
        if self.pending.is_none() {
            self.pending = Some(request.into_parts());
        }
    }

    /// Whether the request can be sent again.
    pub(super) fn can_send(&self) -> bool {
        self.pending.is_some()
    }

    /// The upstream answered: the body's pace is no longer watched.
    pub(super) fn answered(&self) {
        if let Some(state) = &self.body {
            state.answered();
        }
    }

    /// Why an attempt's exchange failed, if the client's side made it fail: a body over its
    /// limit, cut for its pace, or broken off. `None` when it is the upstream's failure.
    pub(super) fn client_failure(
        &self,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<GatewayError> {
        if body::is_length_limit(error) {
            return Some(GatewayError::PayloadTooLarge);
        }
        // the body was cut by the gateway, or broken off by the client: the exchange failed
        // on the client's side (an HTTP/2 upstream's error says only that the stream was
        // reset)
        let cut = self.body.as_ref().and_then(|state| state.cut());
        if let Some(slow) = cut.or_else(|| pace::slow_body(error)) {
            return Some(GatewayError::SlowRequestBody(slow));
        }
        if self.body.as_ref().is_some_and(|state| state.broken()) {
            return Some(GatewayError::ClientBody(
                "the client broke off the request body".to_string(),
            ));
        }
        None
    }

    /// The client's response from `endpoint`'s: in the client connection's version, without
    /// hop-by-hop headers, with a body that gives the connection back when it ends.
    pub(super) fn respond(
        &self,
        response: Response<Incoming>,
        endpoint: &EndpointState,
        lease: Lease,
    ) -> Response<Body> {
        if let Some(exchange) = self.exchange.as_ref() {
            exchange.set_endpoint(&endpoint.url);
        }
        let (mut parts, incoming) = response.into_parts();
        // the client connection speaks its own version (an HTTP/1.0 upstream must not make
        // the gateway answer in HTTP/1.0)
        parts.version = Version::default();
        headers::prepare_response(&mut parts.headers);
        Response::from_parts(parts, lease.carry(incoming))
    }

    /// The URI and `Host` header of an attempt on `endpoint`.
    fn target(
        &self,
        upstream: &Upstream,
        endpoint: &EndpointState,
    ) -> Result<(Uri, HeaderValue), GatewayError> {
        let mut uri = upstream_uri(
            &endpoint.target.base_path,
            &self.client_uri,
            self.context_len,
        )?;
        let host = match &upstream.host_header {
            HostMode::Endpoint => endpoint.target.host_header.clone(),
            HostMode::Preserve => self
                .original_host
                .clone()
                .unwrap_or_else(|| endpoint.target.host_header.clone()),
            HostMode::Rewrite(value) => value.clone(),
        };
        if upstream.connector.h2 {
            // HTTP/2 carries the scheme and the host as pseudo-headers (`:authority`)
            let authority = http::uri::Authority::try_from(host.as_bytes())
                .unwrap_or_else(|_| endpoint.target.authority.clone());
            let mut parts = uri.into_parts();
            parts.scheme = Some(endpoint.target.scheme());
            parts.authority = Some(authority);
            uri = Uri::from_parts(parts)
                .map_err(|e| GatewayError::BadUpstreamRequest(e.to_string()))?;
        }
        Ok((uri, host))
    }
}

/// Reads the body ahead (and watches its pace until the upstream answers); a gRPC body up
/// to the end of its first message.
async fn read_ahead(
    body: Body,
    headers: &http::HeaderMap,
    upstream: &Upstream,
    state: &Arc<pace::BodyState>,
    peer: Option<std::net::IpAddr>,
) -> Result<Body, GatewayError> {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let ahead = if grpc {
        pace::Ahead::GrpcMessage
    } else {
        pace::Ahead::Bytes
    };
    match pace::ReadAhead::read(body, &upstream.traffic, Arc::clone(state), peer, ahead).await {
        Ok(ahead) => Ok(body::boxed(ahead)),
        Err(error) => Err(client_body_error(state, error.as_ref())),
    }
}

/// The error of a request body that could not be read ahead.
fn client_body_error(
    state: &pace::BodyState,
    error: &(dyn std::error::Error + 'static),
) -> GatewayError {
    if error.is::<pace::BufferFull>() {
        return GatewayError::RequestBufferFull;
    }
    if let Some(slow) = state.cut().or_else(|| pace::slow_body(error)) {
        GatewayError::SlowRequestBody(slow)
    } else if body::is_length_limit(error) {
        GatewayError::PayloadTooLarge
    } else {
        GatewayError::ClientBody(crate::error::chain(error))
    }
}

/// Base path + the request path after the context + `?query`, in origin form.
fn upstream_uri(base_path: &str, uri: &Uri, context_len: usize) -> Result<Uri, GatewayError> {
    if base_path.is_empty()
        && context_len == 0
        && let Some(pq) = uri.path_and_query()
    {
        // nothing to rewrite: share the client's bytes
        return Ok(Uri::from(pq.clone()));
    }
    let path = uri.path();
    let rest = path.get(context_len..).unwrap_or("");
    let query = uri.query();
    let mut pq =
        String::with_capacity(base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    pq.push_str(base_path);
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
    Ok(Uri::from(pq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_context_and_prefixes_base_path() {
        let cases = [
            (
                "/api",
                "/orders/v1/items/1?b=2&a=1",
                10,
                "/api/items/1?b=2&a=1",
            ),
            ("/api", "/orders/v1", 10, "/api"),
            ("/api", "/orders/v1/", 10, "/api/"),
            ("/api", "/x?", 0, "/api/x?"),
            ("/api", "/x?a=%20+%2F&&", 0, "/api/x?a=%20+%2F&&"),
            ("", "/orders/v1", 10, "/"),
            ("", "/a/b?c=%41", 0, "/a/b?c=%41"),
            ("", "/orders/v1/x?q", 10, "/x?q"),
        ];
        for (base, path, context_len, expected) in cases {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(
                upstream_uri(base, &uri, context_len).unwrap().to_string(),
                expected,
                "{base} {path}"
            );
        }
    }
}
