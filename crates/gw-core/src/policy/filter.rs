//! [`Filter`]: the shape of most policies (look at or change the request, perhaps answer it
//! at the gateway, then look at or change the response) as one `tower::Layer`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::{RouteLayer, RouteService};
use crate::body::{Body, BoxError};

/// A policy that works on the request before the upstream call and on the response after
/// it. Whatever [`Filter::request`] needs to pass to [`Filter::response`] (an origin, a
/// rendered header) travels in its `State`.
pub trait Filter: Send + Sync + fmt::Debug + 'static {
    /// What the request half hands to the response half.
    type State: Send + Unpin + 'static;

    /// Looks at or changes the request. `Err` answers the request at the gateway with that
    /// response: the inner layers and the upstream are not called.
    // The refusal is a whole response by design: it is moved into the layer's future as it
    // is, and boxing it would add an allocation to every refusal for nothing.
    #[allow(clippy::result_large_err)]
    fn request(&self, request: &mut Request<Body>) -> Result<Self::State, Response<Body>>;

    /// Looks at or changes the response, which may be the upstream's or one made by an
    /// inner policy or by the gateway (a 502, a 504).
    fn response(&self, state: Self::State, response: &mut Response<Body>) {
        let _ = (state, response);
    }
}

/// The layer of a [`Filter`].
pub fn filter_layer<F: Filter>(filter: F) -> RouteLayer {
    RouteLayer::new(FilterLayer {
        filter: Arc::new(filter),
    })
}

#[derive(Debug)]
struct FilterLayer<F> {
    filter: Arc<F>,
}

impl<F> Clone for FilterLayer<F> {
    fn clone(&self) -> Self {
        Self {
            filter: Arc::clone(&self.filter),
        }
    }
}

impl<F: Filter> tower::Layer<RouteService> for FilterLayer<F> {
    type Service = FilterService<F>;

    fn layer(&self, inner: RouteService) -> Self::Service {
        FilterService {
            inner,
            filter: Arc::clone(&self.filter),
        }
    }
}

struct FilterService<F> {
    inner: RouteService,
    filter: Arc<F>,
}

impl<F> Clone for FilterService<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            filter: Arc::clone(&self.filter),
        }
    }
}

type Inner = super::RouteFuture;

impl<F: Filter> tower::Service<Request<Body>> for FilterService<F> {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = FilterFuture<F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.filter.request(&mut request) {
            Ok(state) => FilterFuture::Inner {
                future: self.inner.call(request),
                state: Some(state),
                filter: Arc::clone(&self.filter),
            },
            Err(response) => FilterFuture::Answered(Some(response)),
        }
    }
}

/// The future of a [`Filter`]'s service: the inner call, then the response half.
pub(crate) enum FilterFuture<F: Filter> {
    Answered(Option<Response<Body>>),
    Inner {
        future: Inner,
        state: Option<F::State>,
        filter: Arc<F>,
    },
}

impl<F: Filter> Future for FilterFuture<F> {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            FilterFuture::Answered(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Ready(Err("filter future polled after completion".into())),
            },
            FilterFuture::Inner {
                future,
                state,
                filter,
            } => {
                let mut response = std::task::ready!(future.as_mut().poll(cx))?;
                if let Some(state) = state.take() {
                    filter.response(state, &mut response);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<F> fmt::Debug for FilterService<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterService").finish_non_exhaustive()
    }
}
