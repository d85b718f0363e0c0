//! [`Filter`]: the shape of most policies (look at or change the request, perhaps answer it
//! at the gateway, then look at or change the response), run by a route's stack without a
//! service or a future of its own, or as a plain `tower` middleware ([`FilterLayer`],
//! [`FilterService`]) in any stack.
//!
//! A filter is generic over the request and response body types where it does not need
//! gw's own [`Body`]: the same compiled policy serves gw's fused route stack (with gw's
//! bodies) and an axum or tonic stack (with theirs). An answer made at the gateway (a 401,
//! a 429, a CORS preflight) is always a gw [`Body`]; [`FilterService`] hands it out in a
//! [`ResponseBody`], which is either that answer or the inner service's body, as
//! tower-http's middlewares do. The layer and service types ([`PolicyLayer`],
//! [`PolicyService`]) also serve the policies that may await work of their own
//! ([`deferred`](super::deferred)).
//!
//! ```
//! use gw_core::body::Body;
//! use gw_core::policy::Filter;
//! use gw_core::policy::filter::FilterLayer;
//! use http::{HeaderValue, Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! /// Refuses a request without `x-tenant` with 400, and names the tenant on the response.
//! #[derive(Debug)]
//! struct Tenant;
//!
//! impl<ReqB, ResB> Filter<ReqB, ResB> for Tenant {
//!     type State = HeaderValue;
//!
//!     fn request(&self, request: &mut Request<ReqB>) -> Result<HeaderValue, Response<Body>> {
//!         request.headers().get("x-tenant").cloned().ok_or_else(|| {
//!             let mut refusal = Response::new(gw_core::body::empty());
//!             *refusal.status_mut() = StatusCode::BAD_REQUEST;
//!             refusal
//!         })
//!     }
//!
//!     fn response(&self, tenant: HeaderValue, response: &mut Response<ResB>) {
//!         response.headers_mut().insert("x-served-tenant", tenant);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // any inner service and body type: here a closure answering with a `String`
//! let service = ServiceBuilder::new()
//!     .layer(FilterLayer::from_filter(Tenant))
//!     .service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     });
//! let refused = service.clone().oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
//! let request = Request::builder().header("x-tenant", "acme").body(String::new()).unwrap();
//! let served = service.oneshot(request).await.unwrap();
//! assert_eq!(served.headers()["x-served-tenant"], "acme");
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};

use super::{Policy, PolicyContext, RouteLayer};
use crate::body::{Body, BoxError};
use crate::model::FieldError;

/// A policy that works on the request before the inner call and on the response after it.
/// Whatever [`Filter::request`] needs to pass to [`Filter::response`] (an origin, a
/// rendered header) travels in its `State`.
///
/// `ReqB` and `ResB` are the request and response body types it works on; both are gw's
/// [`Body`] unless said otherwise, which is what a route's stack needs. A filter that does
/// not touch the bodies implements `Filter<ReqB, ResB>` for every `ReqB` and `ResB`, and
/// then serves any `tower` stack through [`FilterLayer`].
pub trait Filter<ReqB = Body, ResB = Body>: Send + Sync + fmt::Debug + 'static {
    /// What the request half hands to the response half.
    type State: Send + Unpin + 'static;

    /// Looks at or changes the request. `Err` answers the request at the gateway with that
    /// response: the inner layers and the upstream are not called, and the response halves
    /// of the filters outside this one run on the answer at once.
    // The refusal is a whole response by design: it is moved into the layer's future as it
    // is, and boxing it would add an allocation to every refusal for nothing.
    #[allow(clippy::result_large_err)]
    fn request(&self, request: &mut Request<ReqB>) -> Result<Self::State, Response<Body>>;

    /// Looks at or changes the response, which may be the upstream's or one made by an
    /// inner policy or by the gateway (a 502, a 504).
    fn response(&self, state: Self::State, response: &mut Response<ResB>) {
        let _ = (state, response);
    }
}

/// The layer of a [`Filter`] in a route's stack. In a route's stack, filters next to each
/// other run in one service with one future (see [`stack`](super::stack)).
pub fn filter_layer<F: Filter>(filter: F) -> RouteLayer {
    RouteLayer::filter(Arc::new(filter))
}

/// A policy's typed configuration that does not hold: every problem, with the path of the
/// field it is in (the same paths as the policy's JSON params).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", super::join(.0))]
pub struct ConfigError(Vec<FieldError>);

impl ConfigError {
    /// The problems, one per field.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// `errors` as an error, unless there is none.
    pub(crate) fn check(errors: Vec<FieldError>) -> Result<(), Self> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Self(errors))
        }
    }

    /// A problem that is not about one field.
    pub(crate) fn message(message: impl Into<String>) -> Self {
        Self(vec![FieldError::new("", message)])
    }
}

/// The context a policy's typed configuration is checked in: no API, no operation and no
/// consumers, as for a layer used outside a gateway.
pub(crate) fn standalone() -> PolicyContext<'static> {
    PolicyContext {
        api: "",
        context: "/",
        operation: None,
        consumers: crate::consumers::ConsumerStore::empty(),
    }
}

/// Checks a typed configuration by the rules of its policy's params.
pub(crate) fn check_config<P: Policy>(policy: &P, config: &P::Params) -> Result<(), ConfigError> {
    ConfigError::check(policy.check(config, &standalone()))
}

/// What `build` makes of `config` once `config` holds by the rules of `policy`'s params in
/// `ctx`: every problem with its field path, or `build`'s own error as a [`ConfigError`].
/// The typed constructors of the policy layers are this.
pub(crate) fn checked_in<P: Policy, T>(
    policy: &P,
    ctx: &PolicyContext<'_>,
    config: P::Params,
    build: impl FnOnce(P::Params) -> Result<T, String>,
) -> Result<T, ConfigError> {
    ConfigError::check(policy.check(&config, ctx))?;
    build(config).map_err(ConfigError::message)
}

/// A built-in policy as a `tower::Layer`, for any stack: the compiled policy `P`, shared by
/// the layer's clones and the services they make (and so its state: a rate limit's counts).
/// `K` says how the services ([`PolicyService`]) run it: [`Filtered`] (a [`Filter`]: the
/// layer is a [`FilterLayer`]) or [`Deferring`](super::deferred::Deferring) (a
/// [`DeferredFilter`](super::deferred::DeferredFilter): a
/// [`DeferredLayer`](super::deferred::DeferredLayer)).
pub struct PolicyLayer<P, K> {
    pub(super) filter: Arc<P>,
    kind: PhantomData<fn() -> K>,
}

/// How the services of a [`FilterLayer`] run its policy: the [`Filter`]'s halves around
/// the inner call.
#[derive(Debug)]
pub enum Filtered {}

/// A [`Filter`] as a `tower::Layer`, for any stack: its services ([`FilterService`]) take
/// any request whose body the filter works on, and answer with a [`ResponseBody`]. Clones
/// share the filter (and so its state: a rate limit's counts).
///
/// Each built-in filter policy names its own: `cors::CorsLayer`, `api_key::ApiKeyLayer`,
/// and so on.
pub type FilterLayer<F> = PolicyLayer<F, Filtered>;

impl<P, K> PolicyLayer<P, K> {
    /// The layer of `filter`.
    pub fn from_filter(filter: P) -> Self {
        Self {
            filter: Arc::new(filter),
            kind: PhantomData,
        }
    }

    /// The layer of the policy `build` makes of `config`, once `config` holds by the rules
    /// of `policy`'s params (checked as for a layer used outside a gateway: no API, no
    /// operation, no consumers). Every problem comes back with its field path; an error of
    /// `build` as a problem of the whole config.
    pub fn checked<Q: Policy>(
        policy: &Q,
        config: Q::Params,
        build: impl FnOnce(Q::Params) -> Result<P, String>,
    ) -> Result<Self, ConfigError> {
        checked_in(policy, &standalone(), config, build).map(Self::from_filter)
    }

    /// The policy.
    pub fn filter(&self) -> &P {
        &self.filter
    }
}

impl<P, K> Clone for PolicyLayer<P, K> {
    fn clone(&self) -> Self {
        Self {
            filter: Arc::clone(&self.filter),
            kind: PhantomData,
        }
    }
}

impl<P, K> fmt::Debug for PolicyLayer<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // not the policy's own Debug: its config may hold secrets (an injected header)
        f.debug_struct("PolicyLayer")
            .field("filter", &std::any::type_name::<P>())
            .finish()
    }
}

impl<P, K, S> tower::Layer<S> for PolicyLayer<P, K> {
    type Service = PolicyService<P, K, S>;

    fn layer(&self, inner: S) -> PolicyService<P, K, S> {
        PolicyService {
            filter: Arc::clone(&self.filter),
            inner,
            kind: PhantomData,
        }
    }
}

/// A filter's layer in a route's stack, where it is fused with the filters next to it.
impl<F: Filter> From<FilterLayer<F>> for RouteLayer {
    fn from(layer: FilterLayer<F>) -> Self {
        RouteLayer::filter(layer.filter)
    }
}

/// The service of a [`PolicyLayer`] around `S`.
pub struct PolicyService<P, K, S> {
    pub(super) filter: Arc<P>,
    pub(super) inner: S,
    kind: PhantomData<fn() -> K>,
}

/// The service of a [`FilterLayer`]: the filter's request half, the inner service unless
/// the filter answered, then the filter's response half.
pub type FilterService<F, S> = PolicyService<F, Filtered, S>;

impl<P, K, S> PolicyService<P, K, S> {
    super::inner_service_accessors!();
}

impl<P, K, S: Clone> Clone for PolicyService<P, K, S> {
    fn clone(&self) -> Self {
        Self {
            filter: Arc::clone(&self.filter),
            inner: self.inner.clone(),
            kind: PhantomData,
        }
    }
}

impl<P, K, S: fmt::Debug> fmt::Debug for PolicyService<P, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("filter", &std::any::type_name::<P>())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<F, S, ReqB, ResB> tower::Service<Request<ReqB>> for FilterService<F, S>
where
    F: Filter<ReqB, ResB>,
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<F, S::Future, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let kind = match self.filter.request(&mut request) {
            Ok(state) => Kind::Inner {
                future: self.inner.call(request),
                state: Some(state),
                filter: Arc::clone(&self.filter),
            },
            Err(answer) => Kind::Answered {
                answer: Some(answer),
            },
        };
        ResponseFuture {
            kind,
            _bodies: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`FilterService`] call.
    pub struct ResponseFuture<F, Fut, ReqB, ResB>
    where
        F: Filter<ReqB, ResB>,
    {
        #[pin]
        kind: Kind<F, Fut, ReqB, ResB>,
        _bodies: PhantomData<fn(ReqB, ResB)>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, Fut, ReqB, ResB>
    where
        F: Filter<ReqB, ResB>,
    {
        Answered { answer: Option<Response<Body>> },
        Inner {
            #[pin]
            future: Fut,
            state: Option<F::State>,
            filter: Arc<F>,
        },
    }
}

impl<F, Fut, ReqB, ResB, E> Future for ResponseFuture<F, Fut, ReqB, ResB>
where
    F: Filter<ReqB, ResB>,
    Fut: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Answered { answer } => Poll::Ready(Ok(ResponseBody::answer(answer))),
            KindProj::Inner {
                future,
                state,
                filter,
            } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(state) = state.take() {
                    filter.response(state, &mut response);
                }
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
        }
    }
}

impl<F, Fut, ReqB, ResB> fmt::Debug for ResponseFuture<F, Fut, ReqB, ResB>
where
    F: Filter<ReqB, ResB>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The body of a [`FilterService`]'s response: the inner service's, or an answer the
    /// filter made at the gateway (a JSON error, a preflight's empty body).
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Gateway { body: Body },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: BodyKind::Inner { body },
        }
    }

    /// A body made at the gateway.
    pub fn gateway(body: Body) -> Self {
        Self {
            kind: BodyKind::Gateway { body },
        }
    }

    /// The answer a policy's future made at the gateway, taken out of the future.
    pub(super) fn answer(answer: &mut Option<Response<Body>>) -> Response<Self> {
        answer
            .take()
            .expect("policy future polled after completion")
            .map(Self::gateway)
    }
}

impl ResponseBody<Body> {
    /// The body itself, whichever it is: both are gw's [`Body`] (no allocation). What a
    /// route's stack needs of a layer made for any body.
    pub fn into_gateway_body(response: Response<Self>) -> Response<Body> {
        response.map(|body| match body.kind {
            BodyKind::Inner { body } | BodyKind::Gateway { body } => body,
        })
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            BodyKind::Inner { .. } => "ResponseBody::Inner",
            BodyKind::Gateway { .. } => "ResponseBody::Gateway",
        })
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            BodyKindProj::Gateway { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Gateway { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Gateway { body } => body.size_hint(),
        }
    }
}

/// A [`Filter`] with its state type erased, so that a route's stack can hold any mix of
/// them. A state whose type has no size (most filters' `()`) is boxed without allocating.
pub(super) trait ErasedFilter: Send + Sync + fmt::Debug {
    #[allow(clippy::result_large_err)]
    fn request(&self, request: &mut Request<Body>) -> Result<Box<dyn Any + Send>, Response<Body>>;

    fn response(&self, state: Box<dyn Any + Send>, response: &mut Response<Body>);
}

impl<F: Filter> ErasedFilter for F {
    fn request(&self, request: &mut Request<Body>) -> Result<Box<dyn Any + Send>, Response<Body>> {
        Filter::request(self, request).map(|state| Box::new(state) as Box<dyn Any + Send>)
    }

    fn response(&self, state: Box<dyn Any + Send>, response: &mut Response<Body>) {
        // the state is always this filter's own: the stack hands each state back to the
        // filter that made it
        match state.downcast::<F::State>() {
            Ok(state) => Filter::response(self, *state, response),
            Err(_) => debug_assert!(false, "a filter was handed another filter's state"),
        }
    }
}
