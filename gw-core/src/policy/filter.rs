//! [`Filter`]: the shape of most policies (look at or change the request, perhaps answer it
//! at the gateway, then look at or change the response), run by a route's stack without a
//! service or a future of its own.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use http::{Request, Response};

use super::RouteLayer;
use crate::body::Body;

/// A policy that works on the request before the upstream call and on the response after
/// it. Whatever [`Filter::request`] needs to pass to [`Filter::response`] (an origin, a
/// rendered header) travels in its `State`.
pub trait Filter: Send + Sync + fmt::Debug + 'static {
    /// What the request half hands to the response half.
    type State: Send + Unpin + 'static;

    /// Looks at or changes the request. `Err` answers the request at the gateway with that
    /// response: the inner layers and the upstream are not called, and the response halves
    /// of the filters outside this one run on the answer at once.
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

/// The layer of a [`Filter`]. In a route's stack, filters next to each other run in one
/// service with one future (see [`stack`](super::stack)).
pub fn filter_layer<F: Filter>(filter: F) -> RouteLayer {
    RouteLayer::filter(Arc::new(filter))
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
