//! Test helpers for policies: a context and an inner service that records the request.

use std::sync::{Arc, Mutex};

use http::{Request, Response};

use super::{PolicyContext, RouteLayer, RouteService};
use crate::body::{self, Body};

/// The context of a policy on API `orders` at `/orders`.
pub(crate) fn ctx() -> PolicyContext<'static> {
    PolicyContext {
        consumers: crate::consumers::ConsumerStore::empty(),
        api: "orders",
        context: "/orders",
        operation: None,
    }
}

/// Calls `layer` around an upstream that answers 200 with `server: upstream` and body
/// `upstream`; returns the request the upstream saw (`None` when the policy answered) and
/// the response.
pub(crate) async fn call_seen(
    layer: &RouteLayer,
    request: Request<Body>,
) -> (Option<Request<Body>>, Response<Body>) {
    let seen: Arc<Mutex<Option<Request<Body>>>> = Arc::default();
    let record = Arc::clone(&seen);
    let inner = RouteService::new(tower::service_fn(move |request: Request<Body>| {
        let record = Arc::clone(&record);
        async move {
            *record.lock().unwrap() = Some(request);
            let mut response = Response::new(body::full("upstream"));
            response
                .headers_mut()
                .insert("server", http::HeaderValue::from_static("upstream"));
            Ok::<_, crate::body::BoxError>(response)
        }
    }));
    let service = tower::Layer::layer(layer, inner);
    let response = tower::ServiceExt::oneshot(service, request).await.unwrap();
    let seen = seen.lock().unwrap().take();
    (seen, response)
}

/// [`call_seen`] where the upstream must have been called.
pub(crate) async fn call(
    layer: &RouteLayer,
    request: Request<Body>,
) -> (Request<Body>, Response<Body>) {
    let (seen, response) = call_seen(layer, request).await;
    (seen.expect("the upstream was not called"), response)
}

/// The body of a response, as text.
pub(crate) async fn text(response: Response<Body>) -> String {
    use http_body_util::BodyExt as _;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A consumer store holding `alice` (ACL group `gold`) with `credentials`, sealed.
#[cfg(any(feature = "api-key", feature = "basic-auth", feature = "jwt"))]
#[allow(clippy::needless_pass_by_value)] // json! literals read better passed by value
pub(crate) fn store_with(credentials: serde_json::Value) -> crate::consumers::ConsumerStore {
    let value = serde_json::json!({
        "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
        "spec": {"aclGroups": ["gold"], "credentials": credentials}
    });
    let mut definition =
        crate::model::ConsumerDefinition::from_value_validated(&value, false).unwrap();
    crate::credential::seal(&mut definition).unwrap();
    crate::consumers::ConsumerStore::new(
        crate::consumers::ConsumerSet::build([Arc::new(definition)]).unwrap(),
    )
}

/// A request for `/orders` from `peer` (an address without port), as `consumer` (with the
/// credential `<consumer>-key`) when given, with `headers`.
#[cfg(feature = "rate-limit")]
pub(crate) fn request_from(
    peer: &str,
    consumer: Option<&str>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut builder = Request::builder().uri("/orders");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(body::empty()).unwrap();
    request.extensions_mut().insert(crate::gateway::ConnInfo {
        peer: format!("{peer}:40000").parse().unwrap(),
        secure: false,
    });
    if let Some(name) = consumer {
        request.extensions_mut().insert(super::Consumer {
            name: name.into(),
            groups: Arc::from(Vec::new()),
            credential: Some(format!("{name}-key").into()),
        });
    }
    request
}
