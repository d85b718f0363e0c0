//! [`DeferredFilter`]: the shape of a policy that decides most requests at once but some only
//! after work of its own (a password verification, a key fetch, a check in Redis), run as a
//! plain `tower` middleware ([`DeferredLayer`], [`DeferredService`]) in any stack, and in a
//! route's stack as a layer of its own (`RouteLayer::from` a `DeferredLayer`).
//!
//! Like a [`Filter`](super::Filter), a deferred filter is generic over the request and
//! response bodies, and an answer it makes is a gw [`Body`] handed out in a
//! [`ResponseBody`]. Unlike a filter, its service needs an inner service that is
//! `Clone + Send`: the request waits for the policy's work before the inner call, so the
//! ready service goes with the future and a clone stays for the next call. Only that path
//! allocates (its future is boxed); a request decided at once costs what a filter's does.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use gw_core::body::Body;
//! use gw_core::policy::deferred::{Decision, DeferredFilter, DeferredLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! /// Lets a request through at once if it says `x-ticket: ok`, after a wait if it says
//! /// `x-ticket: later`, and refuses it otherwise.
//! #[derive(Debug)]
//! struct Ticket;
//!
//! impl DeferredFilter for Ticket {
//!     type Pending = ();
//!     type State = ();
//!
//!     fn decide<B>(&self, request: &mut Request<B>) -> Decision<(), ()> {
//!         match request.headers().get("x-ticket").map(|v| v.as_bytes()) {
//!             Some(b"ok") => Decision::Accept(()),
//!             Some(b"later") => Decision::Defer(()),
//!             _ => Decision::Refuse(refused()),
//!         }
//!     }
//!
//!     async fn settle<B: Send>(&self, (): (), _: &mut Request<B>) -> Result<(), Response<Body>> {
//!         tokio::task::yield_now().await;
//!         Ok(())
//!     }
//! }
//!
//! fn refused() -> Response<Body> {
//!     let mut response = Response::new(gw_core::body::empty());
//!     *response.status_mut() = StatusCode::FORBIDDEN;
//!     response
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(DeferredLayer::from_filter(Ticket))
//!     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//! for (ticket, status) in [("ok", 200), ("later", 200), ("no", 403)] {
//!     let request = Request::get("/").header("x-ticket", ticket).body(())?;
//!     let response = service.clone().oneshot(request).await?;
//!     assert_eq!(response.status(), status);
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::RouteLayer;
use super::filter::{PolicyLayer, PolicyService, ResponseBody};
use crate::body::Body;

/// A policy that decides a request at once ([`DeferredFilter::decide`]) or, when it cannot,
/// after work of its own ([`DeferredFilter::settle`]); then the inner service is called,
/// and what the decision kept ([`DeferredFilter::State`]) may change the response.
pub trait DeferredFilter: Send + Sync + fmt::Debug + 'static {
    /// What [`decide`](DeferredFilter::decide) hands to [`settle`](DeferredFilter::settle):
    /// the work left to do.
    type Pending: Send + 'static;

    /// What a request let through keeps for its response (`()` when the policy does not
    /// touch responses).
    type State: OnResponse;

    /// Decides without waiting: answers the request at the gateway, lets it through (having
    /// changed it as the policy does: a consumer in its extensions, a credential removed),
    /// or leaves it to [`settle`](DeferredFilter::settle).
    fn decide<B>(&self, request: &mut Request<B>) -> Decision<Self::State, Self::Pending>;

    /// Does the work `decide` left and decides: `Err` answers the request at the gateway,
    /// `Ok` lets it through (changed as in `decide`).
    // the refusal is a whole response, as a filter's is
    #[allow(clippy::result_large_err)]
    fn settle<B: Send>(
        &self,
        pending: Self::Pending,
        request: &mut Request<B>,
    ) -> impl Future<Output = Result<Self::State, Response<Body>>> + Send;
}

/// What a [`DeferredFilter`] decided without waiting.
#[derive(Debug)]
pub enum Decision<State, Pending> {
    /// Answered at the gateway with this response; the inner service is not called.
    Refuse(Response<Body>),
    /// Let through at once.
    Accept(State),
    /// Decided after the policy's own work.
    Defer(Pending),
}

/// What a request's [`DeferredFilter::State`] does to the response of the inner service.
pub trait OnResponse: Send + 'static {
    /// Changes the response (its headers, as a rate limit's do).
    fn on_response<B>(self, response: &mut Response<B>);
}

/// Nothing to do on the response.
impl OnResponse for () {
    fn on_response<B>(self, _response: &mut Response<B>) {}
}

/// How the services of a [`DeferredLayer`] run its policy: decided at once or after the
/// policy's work, then the inner call.
#[derive(Debug)]
pub enum Deferring {}

/// A [`DeferredFilter`] as a `tower::Layer`, for any stack: its services
/// ([`DeferredService`]) take any request and answer with a [`ResponseBody`]. Clones share
/// the policy (and so its state: a cache of verified credentials, a connection).
pub type DeferredLayer<P> = PolicyLayer<P, Deferring>;

/// The service of a [`DeferredLayer`]: the policy's decision, perhaps after its work, then
/// the inner service unless the policy answered.
pub type DeferredService<P, S> = PolicyService<P, Deferring, S>;

/// The policy's layer in a route's stack: its answers and the inner service's responses
/// both in gw's body again (no allocation: both are a [`Body`] already).
impl<P: DeferredFilter> From<DeferredLayer<P>> for RouteLayer {
    fn from(layer: DeferredLayer<P>) -> Self {
        RouteLayer::new(tower::layer::layer_fn(move |inner| {
            tower::util::MapResponse::new(
                tower::Layer::layer(&layer, inner),
                ResponseBody::into_gateway_body as fn(_) -> _,
            )
        }))
    }
}

impl<P, S, ReqB, ResB> tower::Service<Request<ReqB>> for PolicyService<P, Deferring, S>
where
    P: DeferredFilter,
    S: tower::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    ReqB: Send + 'static,
    ResB: 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = DeferredFuture<S::Future, P::State, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let pending = match self.filter.decide(&mut request) {
            Decision::Refuse(answer) => return DeferredFuture::answered(answer),
            Decision::Accept(state) => {
                return DeferredFuture::inner(self.inner.call(request), state);
            }
            Decision::Defer(pending) => pending,
        };
        // the ready service goes with the future; a clone stays for the next call
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let filter = Arc::clone(&self.filter);
        DeferredFuture::deferred(Box::pin(async move {
            let state = match filter.settle(pending, &mut request).await {
                Ok(state) => state,
                Err(answer) => return Ok(answer.map(ResponseBody::gateway)),
            };
            let mut response = inner.call(request).await?;
            state.on_response(&mut response);
            Ok(response.map(ResponseBody::inner))
        }))
    }
}

/// What a [`DeferredFuture`] awaits before it answers: the policy's own work, then perhaps
/// the inner call.
pub type Deferred<ResB, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<ResB>>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of a [`DeferredService`] call: an answer at once, the inner call at once,
    /// or first the policy's own work, boxed, as only that path needs to.
    pub struct DeferredFuture<F, T, ResB, E> {
        #[pin]
        kind: Kind<F, T, ResB, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, T, ResB, E> {
        Answered { answer: Option<Response<Body>> },
        Inner { #[pin] future: F, state: Option<T> },
        Deferred { future: Deferred<ResB, E> },
    }
}

impl<F, T, ResB, E> DeferredFuture<F, T, ResB, E> {
    /// An answer made at the gateway.
    pub fn answered(answer: Response<Body>) -> Self {
        Self {
            kind: Kind::Answered {
                answer: Some(answer),
            },
        }
    }

    /// The inner service's call, whose response `state` then changes.
    pub fn inner(future: F, state: T) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                state: Some(state),
            },
        }
    }

    /// Work of the policy's own, which ends with an answer or the inner call.
    pub fn deferred(future: Deferred<ResB, E>) -> Self {
        Self {
            kind: Kind::Deferred { future },
        }
    }
}

impl<F, T, ResB, E> Future for DeferredFuture<F, T, ResB, E>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    T: OnResponse,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Answered { answer } => Poll::Ready(Ok(ResponseBody::answer(answer))),
            KindProj::Inner { future, state } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(state) = state.take() {
                    state.on_response(&mut response);
                }
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            KindProj::Deferred { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, T, ResB, E> fmt::Debug for DeferredFuture<F, T, ResB, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredFuture").finish_non_exhaustive()
    }
}
