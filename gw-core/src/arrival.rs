//! What the gateway learned about a request when it arrived, before any policy ran.
//!
//! A leaf module: its types travel in request extensions, and it uses nothing of the crate,
//! so that every layer may read them. The edge ([`crate::Gateway::handle`]) fills an
//! [`Arrival`] from the request's hop-by-hop headers and its connection, then removes those
//! headers (and the ones `Connection` names), so that no policy sees a header that describes
//! the client's hop, and a client cannot have a header a policy sets removed on the way out
//! (`Connection: x-consumer`). The upstream call reads the facts from the [`Arrival`]
//! instead of the headers.

use std::net::IpAddr;

/// Facts about a request, taken on arrival from its hop-by-hop headers (which are removed
/// then) and from its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    /// The request asks to switch to WebSocket: HTTP/1.1 `Connection: upgrade` with
    /// `Upgrade: websocket`. The upstream call sends those two headers again.
    pub websocket: bool,
    /// The request says `TE: trailers` (gRPC does): an HTTP/2 upstream receives it again.
    pub te_trailers: bool,
    /// The connection's peer is one of the gateway's trusted proxies: its `X-Forwarded-*`
    /// and `Forwarded` headers are believed and extended, not replaced.
    pub trusted_peer: bool,
    /// The client's address: the peer's, or, from a trusted proxy, the first address of
    /// `X-Forwarded-For` from the right that is not a trusted proxy. `None` when a trusted
    /// proxy does not say it.
    pub client: Option<IpAddr>,
}
