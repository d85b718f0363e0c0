//! The types that travel in a request's extensions: what the edge, the policies and the
//! upstream call tell each other about a request.
//!
//! A leaf module: it uses nothing of the crate, so every layer may read and write these
//! types without depending on the layer that made them (a policy does not depend on the
//! gateway to read the connection's address, nor the upstream call on the policies to know
//! the consumer). [`crate::arrival`] is the other leaf of this kind: what the edge read from
//! a request's hop-by-hop headers.
//!
//! | type | put in by | read by |
//! |---|---|---|
//! | [`ConnInfo`] | the edge ([`crate::Gateway::handle`], or the embedder for a [`crate::gateway::GatewayService`]) | IP filters, rate limits by address, templates, the access log, forwarding headers |
//! | [`Consumer`] | authentication policies ([`authenticate`]) | ACLs, rate limits per consumer, templates |
//! | [`Exchange`] | the gateway, on routes with an authentication or observation policy | the metrics, the access log, traces |
//! | [`RequestId`] | `correlation-id` | templates, the access log |
//! | [`RequestTimeout`] | `timeout` | the upstream call |

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::{HeaderValue, Request};

/// What the gateway knows about the connection a request came on; the edge puts it in the
/// request's extensions for policies and the upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub secure: bool,
}

impl ConnInfo {
    /// The connection's information in `request`'s extensions, if the server put it there:
    /// a `ConnInfo`, or, with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (taken as
    /// plain HTTP).
    pub fn of<B>(request: &http::Request<B>) -> Option<ConnInfo> {
        let extensions = request.extensions();
        if let Some(conn) = extensions.get::<ConnInfo>() {
            return Some(*conn);
        }
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(peer)) =
            extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(ConnInfo {
                peer: *peer,
                secure: false,
            });
        }
        None
    }
}

/// The consumer a request was authenticated as: authentication policies put it in the
/// request's extensions, and later policies (ACLs, rate limits per consumer, header
/// templates, the access log) read it from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's name.
    pub name: Arc<str>,
    /// The consumer's groups, used by ACLs.
    pub groups: Arc<[String]>,
    /// The id of the credential it presented, when it has one.
    pub credential: Option<Arc<str>>,
}

/// What the gateway learns about a request while its stack runs, for the metrics and the
/// access log, which look at it once the response is made: the consumer that authentication
/// found and the upstream endpoint that answered. The gateway puts one in the request's
/// extensions on routes that have an authentication or observation policy.
#[derive(Debug, Default)]
pub struct Exchange {
    operation: Arc<str>,
    consumer: Mutex<Option<Consumer>>,
    endpoint: OnceLock<Arc<str>>,
}

impl Exchange {
    /// The exchange of a request routed to `operation` (`GET /items/{id}`, or `*`).
    pub fn new(operation: Arc<str>) -> Self {
        Self {
            operation,
            ..Self::default()
        }
    }

    /// The operation the request was routed to: `GET /items/{id}`, or `*` for an API
    /// without operations.
    pub fn operation(&self) -> &Arc<str> {
        &self.operation
    }

    /// The authenticated consumer, if any: the one later policies see (the last
    /// authentication to succeed).
    pub fn consumer(&self) -> Option<Consumer> {
        self.consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The upstream endpoint (its URL) that answered, if one did.
    pub fn endpoint(&self) -> Option<&Arc<str>> {
        self.endpoint.get()
    }

    pub(crate) fn set_endpoint(&self, endpoint: &Arc<str>) {
        let _ = self.endpoint.set(Arc::clone(endpoint));
    }
}

/// Marks a request as the consumer's: later policies find the [`Consumer`] in its
/// extensions, and the metrics and the access log in its [`Exchange`]. Authentication
/// policies (built-in or your own) call this on success.
pub fn authenticate<B>(request: &mut Request<B>, consumer: Consumer) {
    if let Some(exchange) = request.extensions().get::<Arc<Exchange>>() {
        // the same consumer as the request's extension: the one ACLs and limits use
        *exchange
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(consumer.clone());
    }
    request.extensions_mut().insert(consumer);
}

/// The request's id, put in the request's extensions by `correlation-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

/// The time a request's upstream response headers are allowed (from the start of the
/// upstream call, retries included), replacing `spec.upstream.timeouts.request` for that
/// request: the `timeout` policy puts it in the request's extensions, and so may a layer of
/// an embedder's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeout(pub Duration);

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Consumer {
        Consumer {
            name: Arc::from("acme"),
            groups: Arc::from(vec!["gold".to_string()]),
            credential: Some(Arc::from("key-1")),
        }
    }

    /// The consumer is in the request's extensions for later policies, and in its exchange
    /// for the metrics and the access log; the last authentication to succeed wins.
    #[test]
    fn authenticate_fills_the_extensions_and_the_exchange() {
        let exchange = Arc::new(Exchange::new(Arc::from("GET /items/{id}")));
        let mut request = Request::new(());
        request.extensions_mut().insert(Arc::clone(&exchange));
        authenticate(&mut request, acme());
        assert_eq!(request.extensions().get::<Consumer>(), Some(&acme()));
        assert_eq!(exchange.consumer(), Some(acme()));
        let other = Consumer {
            name: Arc::from("other"),
            ..acme()
        };
        authenticate(&mut request, other.clone());
        assert_eq!(exchange.consumer(), Some(other));
        assert_eq!(&**exchange.operation(), "GET /items/{id}");
    }

    #[test]
    fn authenticate_without_an_exchange_sets_the_extension_only() {
        let mut request = Request::new(());
        authenticate(&mut request, acme());
        assert_eq!(request.extensions().get::<Consumer>(), Some(&acme()));
    }
}
