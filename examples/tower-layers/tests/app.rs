//! The service of `tower-layers`, driven without a socket: its layers answer preflights,
//! refuse bodies over the limit and requests without a key, and limit each consumer.

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use tower_layers::{ALLOWED_ORIGIN, MAX_BODY_BYTES, REQUESTS_PER_MINUTE, app, consumers};

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789ab";

fn hello(key: Option<&str>) -> Request<Body> {
    let mut request = Request::get("/hello").header("origin", ALLOWED_ORIGIN);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.body(Body::empty()).unwrap()
}

async fn send(router: &axum::Router, request: Request<Body>) -> (Response<Body>, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    (Response::from_parts(parts, Body::empty()), text)
}

#[tokio::test]
async fn a_preflight_is_answered_without_a_key() {
    let router = app(consumers().unwrap()).unwrap();
    let preflight = Request::options("/hello")
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-api-key")
        .body(Body::empty())
        .unwrap();
    let (response, _) = send(&router, preflight).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], ALLOWED_ORIGIN);
    assert_eq!(headers["access-control-allow-headers"], "x-api-key");
    assert_eq!(headers["access-control-max-age"], "600");

    // from an origin that is not allowed: refused, with gw's JSON error
    let preflight = Request::options("/hello")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .body(Body::empty())
        .unwrap();
    let (response, body) = send(&router, preflight).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(body.contains("\"cors_forbidden\""), "{body}");
}

#[tokio::test]
async fn a_request_needs_a_known_key() {
    let router = app(consumers().unwrap()).unwrap();
    let (response, body) = send(&router, hello(None)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "ApiKey header=\"x-api-key\""
    );
    assert!(body.contains("\"missing_credentials\""), "{body}");
    // the refusal still carries the CORS headers, so the page can read it
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );

    let (response, body) = send(&router, hello(Some("not-a-key-0123456789"))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(body.contains("\"invalid_credentials\""), "{body}");

    let (response, body) = send(&router, hello(Some(ALICE))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "hello, alice\n");
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );
}

#[tokio::test]
async fn each_consumer_is_limited_on_its_own() {
    let router = app(consumers().unwrap()).unwrap();
    for sent in 1..=REQUESTS_PER_MINUTE {
        let (response, _) = send(&router, hello(Some(ALICE))).await;
        assert_eq!(response.status(), StatusCode::OK, "request {sent}");
        let remaining = REQUESTS_PER_MINUTE - sent;
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let (response, body) = send(&router, hello(Some(ALICE))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert!(body.contains("\"rate_limited\""), "{body}");

    // bob has his own count
    let (response, body) = send(&router, hello(Some(BOB))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "hello, bob\n");
}

/// A note of `len` bytes from alice, with its length declared or not.
fn note(len: u64, declared: bool) -> Request<Body> {
    let text = "n".repeat(usize::try_from(len).unwrap());
    let mut request = Request::post("/notes")
        .header("origin", ALLOWED_ORIGIN)
        .header("x-api-key", ALICE);
    if declared {
        request = request.header("content-length", len.to_string());
    }
    request.body(Body::from(text)).unwrap()
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let router = app(consumers().unwrap()).unwrap();
    let (response, body) = send(&router, note(MAX_BODY_BYTES, true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, format!("alice noted {MAX_BODY_BYTES} bytes\n"));

    // declared too large: refused at once with gw's JSON error, before the key is checked
    let mut request = note(MAX_BODY_BYTES + 1, true);
    request.headers_mut().remove("x-api-key");
    let (response, body) = send(&router, request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("\"payload_too_large\""), "{body}");
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );

    // not declared: the body fails as the handler reads it, and axum answers 413
    let (response, body) = send(&router, note(MAX_BODY_BYTES + 1, false)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}
