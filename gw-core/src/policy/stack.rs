//! A route's stack: the built policies' layers around the upstream service, with the
//! filter policies next to each other run as one service with one future.
//!
//! A stack of `tower` layers costs, per request, one clone of every level's boxed service
//! and one boxed future per level. Most policies are [`Filter`](super::Filter)s, which need
//! neither: [`stack`] runs each run of consecutive filters in one [`RouteStack`], which
//! calls their request halves in order, the inner service once, then their response halves
//! in reverse order, as nested layers would.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::util::BoxCloneSyncServiceLayer;

use super::filter::ErasedFilter;
use super::{PolicyRef, PolicyRegistry, RouteFuture, RouteService};
use crate::body::{Body, BoxError};

/// A policy's layer, built once per configuration: a [`Filter`](super::Filter) (made by
/// [`filter_layer`](super::filter_layer)) or any `tower::Layer` (made by
/// [`RouteLayer::new`]). It is cheap to clone, and clones share the policy's state (an
/// API-level rate limit shared by the API's operations counts them together).
#[derive(Clone)]
pub struct RouteLayer(Kind);

#[derive(Clone)]
enum Kind {
    Layer(BoxCloneSyncServiceLayer<RouteService, Request<Body>, Response<Body>, BoxError>),
    Filter(Arc<dyn ErasedFilter>),
}

impl RouteLayer {
    /// The layer of a policy written as a `tower::Layer`, whose services take and give
    /// the gateway's requests and responses.
    pub fn new<L>(layer: L) -> Self
    where
        L: tower::Layer<RouteService> + Send + Sync + 'static,
        L::Service: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
    {
        Self(Kind::Layer(BoxCloneSyncServiceLayer::new(layer)))
    }

    pub(super) fn filter(filter: Arc<dyn ErasedFilter>) -> Self {
        Self(Kind::Filter(filter))
    }
}

impl tower::Layer<RouteService> for RouteLayer {
    type Service = RouteService;

    fn layer(&self, inner: RouteService) -> RouteService {
        match &self.0 {
            Kind::Layer(layer) => layer.layer(inner),
            Kind::Filter(filter) => {
                RouteService::new(RouteStack::new(vec![Arc::clone(filter)], inner))
            }
        }
    }
}

impl fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Layer(_) => f.write_str("RouteLayer(layer)"),
            // not the filter's own Debug: its params may hold secrets (an injected header)
            Kind::Filter(_) => f.write_str("RouteLayer(filter)"),
        }
    }
}

/// Wraps `inner` in built layers, phase by phase ([`Phase`](super::Phase), as
/// [`PolicyRegistry::phase_of`] tells for each policy and its params), in the given
/// order within a phase, the first outermost. A layer may be shared by several stacks (an
/// API-level policy's layer wraps every operation of the API, so that, for example, its
/// rate limit counts the API's requests, not each operation's).
pub fn stack(
    registry: &PolicyRegistry,
    mut layers: Vec<(&PolicyRef, RouteLayer)>,
    inner: RouteService,
) -> RouteStack {
    layers.sort_by_key(|(policy, _)| registry.phase_of(policy));
    let mut service = inner;
    // the filters met since the last other layer, innermost first
    let mut run: Vec<Arc<dyn ErasedFilter>> = Vec::new();
    for (_, layer) in layers.into_iter().rev() {
        match layer.0 {
            Kind::Filter(filter) => run.push(filter),
            Kind::Layer(layer) => {
                if !run.is_empty() {
                    run.reverse();
                    service = RouteService::new(RouteStack::new(std::mem::take(&mut run), service));
                }
                service = tower::Layer::layer(&layer, service);
            }
        }
    }
    run.reverse();
    RouteStack::new(run, service)
}

/// Filters, outermost first, run as one service around `inner` (the rest of the stack).
#[derive(Clone)]
pub struct RouteStack {
    filters: Arc<[Arc<dyn ErasedFilter>]>,
    inner: RouteService,
}

impl RouteStack {
    fn new(filters: Vec<Arc<dyn ErasedFilter>>, inner: RouteService) -> Self {
        Self {
            filters: filters.into(),
            inner,
        }
    }
}

impl fmt::Debug for RouteStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteStack")
            .field("filters", &self.filters.len())
            .finish_non_exhaustive()
    }
}

/// What the request halves of the filters that ran hand to their response halves, in the
/// order they ran.
type States = Vec<Box<dyn Any + Send>>;

/// Runs the response halves of the first `states.len()` filters, innermost first.
fn respond(filters: &[Arc<dyn ErasedFilter>], states: States, response: &mut Response<Body>) {
    for (filter, state) in filters.iter().zip(states).rev() {
        filter.response(state, response);
    }
}

impl tower::Service<Request<Body>> for RouteStack {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = StackFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> StackFuture {
        let mut states = States::with_capacity(self.filters.len());
        for filter in self.filters.iter() {
            match filter.request(&mut request) {
                Ok(state) => states.push(state),
                Err(mut response) => {
                    // answered at the gateway: the filters outside this one see the answer
                    respond(&self.filters, states, &mut response);
                    return StackFuture(State::Answered(Some(response)));
                }
            }
        }
        StackFuture(State::Inner {
            future: self.inner.call(request),
            states,
            filters: Arc::clone(&self.filters),
        })
    }
}

/// The future of a [`RouteStack`] call: the inner call, then the filters' response halves.
pub struct StackFuture(State);

enum State {
    Answered(Option<Response<Body>>),
    Inner {
        future: RouteFuture,
        states: States,
        filters: Arc<[Arc<dyn ErasedFilter>]>,
    },
}

impl Future for StackFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            State::Answered(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Ready(Err("route future polled after completion".into())),
            },
            State::Inner {
                future,
                states,
                filters,
            } => {
                let mut response = std::task::ready!(future.as_mut().poll(cx))?;
                respond(filters, std::mem::take(states), &mut response);
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl fmt::Debug for StackFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::text;
    use crate::policy::{Filter, filter_layer};
    use http::HeaderValue;

    /// Appends its name to `x-trail` on the request and on the response; answers 403 when
    /// the request's `x-stop` names it.
    #[derive(Debug)]
    struct Mark(&'static str);

    fn append(headers: &mut http::HeaderMap, name: &str) {
        let now = headers.get("x-trail").map_or_else(
            || name.to_string(),
            |v| format!("{},{name}", v.to_str().unwrap()),
        );
        headers.insert("x-trail", HeaderValue::from_str(&now).unwrap());
    }

    impl Filter for Mark {
        type State = &'static str;

        fn request(&self, request: &mut Request<Body>) -> Result<&'static str, Response<Body>> {
            if request.headers().get("x-stop").is_some_and(|v| v == self.0) {
                let mut refused = Response::new(crate::body::full("stopped"));
                *refused.status_mut() = http::StatusCode::FORBIDDEN;
                return Err(refused);
            }
            append(request.headers_mut(), self.0);
            Ok(self.0)
        }

        fn response(&self, state: &'static str, response: &mut Response<Body>) {
            assert_eq!(state, self.0);
            append(response.headers_mut(), self.0);
        }
    }

    /// A service that is not a filter: marks the request and the response with `svc`.
    #[derive(Clone)]
    struct Svc(RouteService);

    impl tower::Service<Request<Body>> for Svc {
        type Response = Response<Body>;
        type Error = BoxError;
        type Future = RouteFuture;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, mut request: Request<Body>) -> RouteFuture {
            append(request.headers_mut(), "svc");
            let future = self.0.call(request);
            Box::pin(async move {
                let mut response = future.await?;
                append(response.headers_mut(), "svc");
                Ok(response)
            })
        }
    }

    fn service_layer() -> RouteLayer {
        RouteLayer::new(tower::layer::layer_fn(Svc))
    }

    fn policy(name: &str) -> PolicyRef {
        PolicyRef {
            name: name.to_string(),
            params: serde_json::Value::Null,
        }
    }

    /// An upstream that answers with the trail the request arrived with.
    fn upstream() -> RouteService {
        RouteService::new(tower::service_fn(|request: Request<Body>| async move {
            let trail = request.headers().get("x-trail").cloned();
            let mut response = Response::new(crate::body::full("upstream"));
            if let Some(trail) = trail {
                response.headers_mut().insert("x-seen", trail);
            }
            Ok::<_, BoxError>(response)
        }))
    }

    async fn run(stack: &RouteStack, stop: Option<&str>) -> (String, String, String) {
        let mut request = Request::new(crate::body::empty());
        if let Some(stop) = stop {
            request
                .headers_mut()
                .insert("x-stop", HeaderValue::from_str(stop).unwrap());
        }
        let response = tower::ServiceExt::oneshot(stack.clone(), request)
            .await
            .unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (seen, trail) = (header("x-seen"), header("x-trail"));
        (seen, trail, text(response).await)
    }

    /// Filters fused into one service behave exactly as nested layers: request halves
    /// outermost first, response halves innermost first, a layer that is not a filter in
    /// its place between them, and an answer at the gateway seen by the filters outside
    /// the one that answered (and only by them).
    #[tokio::test]
    async fn fused_filters_run_as_nested_layers_would() {
        let registry = PolicyRegistry::new();
        let names = [policy("a"), policy("b"), policy("svc"), policy("c")];
        let layers = vec![
            (&names[0], filter_layer(Mark("a"))),
            (&names[1], filter_layer(Mark("b"))),
            (&names[2], service_layer()),
            (&names[3], filter_layer(Mark("c"))),
        ];
        let stack = stack(&registry, layers, upstream());
        assert_eq!(stack.filters.len(), 2, "a and b run in one service");

        let (seen, trail, body) = run(&stack, None).await;
        assert_eq!(seen, "a,b,svc,c");
        assert_eq!(trail, "c,svc,b,a");
        assert_eq!(body, "upstream");

        // b answers: a sees the answer, b and what is inside it do not
        let (seen, trail, body) = run(&stack, Some("b")).await;
        assert_eq!((seen.as_str(), trail.as_str()), ("", "a"));
        assert_eq!(body, "stopped");
        // c answers, inside the layer: every filter outside it sees the answer
        let (_, trail, body) = run(&stack, Some("c")).await;
        assert_eq!((trail.as_str(), body.as_str()), ("svc,b,a", "stopped"));

        // the same filters as separate layers give the same trails
        let layer_a = filter_layer(Mark("a"));
        let nested = tower::Layer::layer(
            &layer_a,
            tower::Layer::layer(&filter_layer(Mark("b")), upstream()),
        );
        let response = tower::ServiceExt::oneshot(nested, Request::new(crate::body::empty()))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-seen"], "a,b");
        assert_eq!(response.headers()["x-trail"], "b,a");
    }

    /// An inner error (not a response) goes out as it is: no response half runs.
    #[tokio::test]
    async fn an_inner_error_passes_through() {
        let registry = PolicyRegistry::new();
        let names = [policy("a")];
        let failing = RouteService::new(tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, BoxError>("upstream broke".into())
        }));
        let stack = stack(
            &registry,
            vec![(&names[0], filter_layer(Mark("a")))],
            failing,
        );
        let error = tower::ServiceExt::oneshot(stack, Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "upstream broke");
    }
}
