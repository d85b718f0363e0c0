//! Connections to an upstream's endpoints: the checkout of one for an attempt (an idle one
//! from the pool, a new one within the circuit breaker's limit, or the next one released),
//! and the [`Lease`] that holds it for one exchange and gives it back to the pool when the
//! response body ends.
//!
//! What a connection counts for is the breaker's business (see `breaker`); how one is
//! opened (DNS, TCP, TLS, the HTTP handshake) and where idle ones wait is the endpoint's
//! (see `endpoint`). This module decides which of those a request gets, and nothing else:
//! it does not time out (the caller bounds it with the request's deadline), retry, or judge
//! the endpoint's health.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::Upstream;
use super::breaker::{Limits, OpenSlot, Owner};
use super::endpoint::{ConnectError, EndpointState, Sender};

/// How an upstream's connections are made and kept: built once per upstream.
#[derive(Debug)]
pub(super) struct Connector {
    /// The circuit breaker's counters (shared with the connections, which give their slot
    /// back when they close).
    pub(super) limits: Arc<Limits>,
    /// `protocol: h2`: HTTP/2 with prior knowledge to every endpoint, one shared connection
    /// per endpoint.
    pub(super) h2: bool,
    /// Bounds the TCP connect and the TLS handshake, each.
    pub(super) connect_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    pub(super) idle_timeout: Duration,
    /// How long a host name's addresses are kept.
    pub(super) dns_refresh: Duration,
}

/// Why no connection was handed out.
pub(super) enum CheckoutError {
    /// The breaker is open: every connection is taken and `maxPending` requests wait.
    Overflow,
    /// A new connection could not be opened.
    Connect(ConnectError),
}

impl Connector {
    /// A connection to `endpoints[index]`: an idle one, a new one, or (at the connection
    /// limit) the next one released; with what it counts for, when it may be pooled.
    pub(super) async fn checkout(
        &self,
        endpoints: &[EndpointState],
        index: usize,
    ) -> Result<(Sender, Option<Owner>), CheckoutError> {
        let endpoint = &endpoints[index];
        let limits = &self.limits;
        if self.h2 {
            let sender = self.checkout_h2(endpoint).await?;
            return Ok((sender, None));
        }
        let mut waiting = None;
        loop {
            // once waiting, registered before the checks, so that a release in between
            // still wakes us (the fast path, with a connection at hand, skips the Notify)
            let notified = limits.released.notified();
            tokio::pin!(notified);
            if waiting.is_some() {
                notified.as_mut().enable();
            }
            while let Some((sender, owner)) = endpoint.take_idle(self.idle_timeout, limits) {
                let mut sender = Sender::H1(sender);
                if sender.ready().await.is_ok() {
                    return Ok((sender, Some(owner)));
                }
            }
            if let Some(slot) = OpenSlot::acquire(limits) {
                // the slot is released when the connection closes, or here if connecting
                // fails or is abandoned
                let owner = Owner::new(slot, &endpoint.metrics.connections);
                let on_close = {
                    let owner = owner.clone();
                    move || owner.close()
                };
                // boxed: the connect state machine (TCP, TLS, the HTTP handshake) is
                // large, and it would otherwise be part of every request's future and be
                // moved with it, for the few requests that open a connection
                let sender = Box::pin(endpoint.connect(
                    false,
                    self.connect_timeout,
                    self.dns_refresh,
                    on_close,
                ))
                .await
                .map_err(CheckoutError::Connect)?;
                return Ok((sender, Some(owner)));
            }
            if waiting.is_none() {
                waiting = Some(limits.wait_in_line().ok_or(CheckoutError::Overflow)?);
                // counted as waiting now: register and look again before sleeping (a
                // release that came before the count did not notify)
                continue;
            }
            // at the limit: make room by closing a connection idle on another endpoint
            evict_idle_elsewhere(endpoints, index, limits);
            notified.await;
        }
    }

    /// The endpoint's shared HTTP/2 connection, opened by the first request that needs it.
    /// An HTTP/2 connection is never released for another endpoint's use, so at the
    /// connection limit the answer is 503 at once rather than a wait.
    async fn checkout_h2(&self, endpoint: &EndpointState) -> Result<Sender, CheckoutError> {
        if let Some(sender) = endpoint.h2_sender() {
            let mut sender = Sender::H2(sender);
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let _connecting = endpoint.h2_connecting.lock().await;
        // another request may have connected while this one waited for the lock
        if let Some(sender) = endpoint.h2_sender() {
            return Ok(Sender::H2(sender));
        }
        let slot = OpenSlot::acquire(&self.limits).ok_or(CheckoutError::Overflow)?;
        let owner = Owner::new(slot, &endpoint.metrics.connections);
        let on_close = move || owner.close();
        // boxed, as above
        let sender =
            Box::pin(endpoint.connect(true, self.connect_timeout, self.dns_refresh, on_close))
                .await
                .map_err(CheckoutError::Connect)?;
        if let Sender::H2(h2) = &sender {
            endpoint.set_h2(Some(h2.clone()));
        }
        Ok(sender)
    }
}

/// Closes one idle connection that counts for the upstream of `limits` on an endpoint other
/// than `index`, if there is one.
fn evict_idle_elsewhere(endpoints: &[EndpointState], index: usize, limits: &Arc<Limits>) {
    for (i, endpoint) in endpoints.iter().enumerate() {
        if i != index && endpoint.drop_one_idle(limits) {
            return;
        }
    }
}

/// One attempt's hold on an endpoint: counts it in flight and owns its connection until
/// the response body ends, then returns the connection to the pool.
pub(super) struct Lease {
    pub(super) upstream: Arc<Upstream>,
    pub(super) index: usize,
    /// The connection; `None` once it must not be reused (the exchange failed, or the
    /// connection became a tunnel).
    pub(super) sender: Option<Sender>,
    /// What an HTTP/1.1 connection counts for: this upstream.
    pub(super) owner: Option<Owner>,
    /// Set when the request has a body: whether it has been sent to the end.
    body_done: Option<Arc<AtomicBool>>,
}

impl Lease {
    /// Counts an attempt in flight on `upstream.endpoints[index]`, until the lease drops.
    pub(super) fn new(upstream: &Arc<Upstream>, index: usize) -> Self {
        upstream.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self {
            upstream: Arc::clone(upstream),
            index,
            sender: None,
            owner: None,
            body_done: None,
        }
    }

    /// Watches `body` being sent: the connection is reusable only once it is sent whole.
    pub(super) fn watch_body(&mut self, body: crate::body::Body) -> crate::body::Body {
        let done = Arc::new(AtomicBool::new(false));
        self.body_done = Some(Arc::clone(&done));
        crate::body::boxed(Watched {
            inner: body,
            hook: SentFlag(done),
        })
    }

    /// The response body, which returns the connection to the pool when it ends (and
    /// closes it when it fails or is dropped halfway).
    pub(super) fn carry(self, body: hyper::body::Incoming) -> crate::body::Body {
        crate::body::boxed(Watched {
            inner: body,
            hook: self,
        })
    }

    /// Whether the request body (if any) has been sent to the end.
    pub(super) fn body_sent(&self) -> bool {
        self.body_done
            .as_ref()
            .is_none_or(|done| done.load(Ordering::Acquire))
    }

    /// The exchange is complete: the connection can serve another request.
    fn reuse(&mut self) {
        // an HTTP/2 sender is a handle on the shared connection: nothing to return; an
        // HTTP/1.1 connection still sending the request body (the upstream answered early)
        // is not reusable and closes
        if !self.body_sent() {
            self.sender = None;
            return;
        }
        if let (Some(Sender::H1(sender)), Some(owner)) = (self.sender.take(), self.owner.take()) {
            self.upstream.endpoints[self.index].put_idle(sender, owner);
            self.upstream.connector.limits.release();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a [`Watched`] body tells its owner.
trait EndHook {
    /// The body was read to its end (or dropped when there was nothing left to read: an
    /// empty body, as of HEAD, 204 or 304, may never be polled).
    fn ended(&mut self);
    /// The body failed halfway.
    fn failed(&mut self) {}
}

/// A body that tells `hook` when it ends or fails, and is otherwise the body itself.
struct Watched<B: http_body::Body, H: EndHook> {
    inner: B,
    hook: H,
}

impl<B, H> http_body::Body for Watched<B, H>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    H: EndHook + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.hook.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.hook.ended(),
            Poll::Ready(Some(Err(_))) => this.hook.failed(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body, H: EndHook> Drop for Watched<B, H> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.hook.ended();
        }
    }
}

/// A request body's end: the connection may be reused once it has been sent whole.
struct SentFlag(Arc<AtomicBool>);

impl EndHook for SentFlag {
    fn ended(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The upstream's response body's end returns the connection to the pool; a body that
/// fails, or is abandoned halfway, closes it (the lease drops its sender).
impl EndHook for Lease {
    fn ended(&mut self) {
        self.reuse();
    }

    fn failed(&mut self) {
        self.sender = None;
    }
}
