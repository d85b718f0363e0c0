use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::model::Format;

/// An upstream on loopback that answers `<tag> <method> <path-and-query>` and echoes the
/// forwarded headers; the path `/slow` answers after a long delay.
async fn upstream(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    if req.uri().path().ends_with("/slow") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let text = format!(
                        "{tag} {} {} host={} xff={} xfh={} conn={}",
                        req.method(),
                        req.uri(),
                        header("host"),
                        header("x-forwarded-for"),
                        header("x-forwarded-host"),
                        header("x-hop"),
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn api(name: &str, context: &str, upstream: &str, extra: &str) -> Arc<ApiDefinition> {
    let doc = format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: {context}\n  upstream:\n    endpoints: [{{url: '{upstream}'}}]\n    timeouts: {{request: 300ms}}\n{extra}"
    );
    let registry = test_registry();
    let ctx = crate::model::ValidationContext {
        policies: Some(&registry),
    };
    Arc::new(ApiDefinition::parse_with(doc.as_bytes(), Format::Yaml, &ctx).unwrap())
}

fn gateway() -> Gateway {
    Gateway::new(PolicyRegistry::new(), ProxyMetrics::unregistered())
}

fn conn() -> ConnInfo {
    ConnInfo {
        peer: "127.0.0.9:40000".parse().unwrap(),
        secure: false,
    }
}

async fn call(gw: &Gateway, method: &str, uri: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "gw.test")
        .header("connection", "x-hop")
        .header("x-hop", "must-not-pass")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.handle(req, conn()).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn proxies_with_context_stripped_and_base_path_prefixed() {
    let up = upstream("A").await;
    let gw = gateway();
    gw.apply(
        1,
        [api("orders", "/orders/v1", &format!("http://{up}/api"), "")],
    )
    .unwrap();

    let (status, body) = call(&gw, "GET", "/orders/v1/items/7?z=1&a=%20").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("A GET /api/items/7?z=1&a=%20 "), "{body}");
    assert!(body.contains(&format!("host={up}")), "{body}");
    assert!(body.contains("xff=127.0.0.9"), "{body}");
    assert!(body.contains("xfh=gw.test"), "{body}");
    assert!(body.contains("conn=-"), "hop-by-hop header leaked: {body}");

    let (status, body) = call(&gw, "GET", "/orders/v1//items/./8/../9").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("A GET /api/items/9 "), "{body}");

    let (status, _) = call(&gw, "GET", "/orders/v2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&gw, "GET", "/orders/v1/%2e%2e/admin").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("bad_path"), "{body}");
}

#[tokio::test]
async fn operations_route_by_template_and_method() {
    let up = upstream("A").await;
    let ops = "  operations:\n    - {method: GET, path: '/items/{id}'}\n    - {method: POST, path: /items}\n    - {method: GET, path: /}\n";
    let gw = gateway();
    gw.apply(1, [api("orders", "/orders", &format!("http://{up}"), ops)])
        .unwrap();

    assert_eq!(call(&gw, "GET", "/orders/items/1").await.0, StatusCode::OK);
    assert_eq!(call(&gw, "POST", "/orders/items").await.0, StatusCode::OK);
    assert_eq!(call(&gw, "GET", "/orders").await.0, StatusCode::OK);
    assert_eq!(
        call(&gw, "GET", "/orders/other").await.0,
        StatusCode::NOT_FOUND
    );
    let req = Request::builder()
        .method("DELETE")
        .uri("/orders/items/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.handle(req, conn()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET");
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let up = upstream("A").await;
    let gw = gateway();
    gw.apply(
        1,
        [
            api("down", "/down", &format!("http://{closed}"), ""),
            api("slow", "/slow", &format!("http://{up}"), ""),
        ],
    )
    .unwrap();
    let (status, body) = call(&gw, "GET", "/down/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("upstream_unreachable"), "{body}");
    let (status, body) = call(&gw, "GET", "/slow/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("upstream_timeout"), "{body}");
}

#[tokio::test]
async fn apply_swaps_atomically_and_keeps_unchanged_apis() {
    let a = upstream("A").await;
    let b = upstream("B").await;
    let gw = gateway();
    let orders = api("orders", "/orders", &format!("http://{a}"), "");
    let users = api("users", "/users", &format!("http://{a}"), "");
    let first = gw.apply(1, [orders.clone(), users.clone()]).unwrap();
    assert!(call(&gw, "GET", "/orders/1").await.1.starts_with("A "));

    let orders_b = api("orders", "/orders", &format!("http://{b}"), "");
    let second = gw.apply(2, [orders_b, users.clone()]).unwrap();
    assert_eq!(second.revision(), 2);
    assert!(call(&gw, "GET", "/orders/1").await.1.starts_with("B "));
    // the unchanged API is reused, not rebuilt
    assert!(Arc::ptr_eq(&first.apis["users"], &second.apis["users"]));
    assert!(!Arc::ptr_eq(&first.apis["orders"], &second.apis["orders"]));

    // a colliding set is refused and the served configuration stays
    let clash = api("clash", "/users", &format!("http://{b}"), "");
    let err = gw.apply(3, [users, clash]).unwrap_err();
    assert!(err.reasons[0].contains("both claim context"), "{err}");
    assert_eq!(gw.config().revision(), 2);
}

#[tokio::test]
async fn in_flight_requests_survive_a_swap() {
    let a = upstream("A").await;
    let gw = Arc::new(gateway());
    let slow = api("slow", "/s", &format!("http://{a}"), "");
    gw.apply(1, [slow]).unwrap();
    let in_flight = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { call(&gw, "GET", "/s/x").await })
    };
    tokio::task::yield_now().await;
    gw.apply(2, []).unwrap();
    let (status, body) = in_flight.await.unwrap();
    // routed before the swap, so served by the old configuration
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(call(&gw, "GET", "/s/x").await.0, StatusCode::NOT_FOUND);
}

/// A test policy: answers with `status` at the gateway when the request lacks `x-pass`
/// (or, for `answer-preflight`, when it is an `OPTIONS`), in the phase it is registered
/// with.
#[derive(Debug)]
struct Gate {
    phase: crate::policy::Phase,
    preflight_only: bool,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct GateParams {
    status: u16,
}

#[derive(Debug)]
struct GateFilter {
    status: StatusCode,
    preflight_only: bool,
}

impl crate::policy::Filter for GateFilter {
    type State = ();

    fn request(&self, request: &mut Request<Body>) -> Result<(), Response<Body>> {
        let answer = if self.preflight_only {
            request.method() == Method::OPTIONS
        } else {
            !request.headers().contains_key("x-pass")
        };
        if answer {
            Err(crate::error::json_error(self.status, "gate", "gate"))
        } else {
            Ok(())
        }
    }
}

impl crate::policy::Policy for Gate {
    type Params = GateParams;

    fn phase(&self) -> crate::policy::Phase {
        self.phase
    }

    fn layer(
        &self,
        params: GateParams,
        _ctx: &crate::policy::PolicyContext<'_>,
    ) -> Result<crate::policy::RouteLayer, String> {
        Ok(crate::policy::filter_layer(GateFilter {
            status: StatusCode::from_u16(params.status).map_err(|e| e.to_string())?,
            preflight_only: self.preflight_only,
        }))
    }
}

/// The built-in policies and the test's `gate` and `answer-preflight`.
fn test_registry() -> PolicyRegistry {
    PolicyRegistry::builtin()
        .register_policy(
            "gate",
            Gate {
                phase: crate::policy::Phase::Admission,
                preflight_only: false,
            },
        )
        .register_policy(
            "answer-preflight",
            Gate {
                phase: crate::policy::Phase::Cors,
                preflight_only: true,
            },
        )
}

fn policy_gateway() -> Gateway {
    Gateway::new(test_registry(), ProxyMetrics::unregistered())
}

#[tokio::test]
async fn policies_run_phase_by_phase_whatever_their_order() {
    let up = upstream("A").await;
    let gw = policy_gateway();
    let extra = "  policies:\n    - {name: request-termination, params: {status: 418}}\n    - {name: gate, params: {status: 403}}\n";
    gw.apply(1, [api("p", "/p", &format!("http://{up}"), extra)])
        .unwrap();
    // the admission gate runs first though it is listed second
    let (status, _) = call(&gw, "GET", "/p/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let req = Request::builder()
        .uri("/p/x")
        .header("x-pass", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.handle(req, conn()).await;
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
}

#[tokio::test]
async fn policies_see_the_gateways_own_upstream_errors() {
    // nothing listens on port 9 of loopback: a connect failure, rescued into a 502 that the
    // response-headers policy decorates
    let gw = policy_gateway();
    let extra =
        "  policies:\n    - {name: response-headers, params: {set: {x-seen: '${api.name}'}}}\n";
    gw.apply(1, [api("down", "/down", "http://127.0.0.1:9", extra)])
        .unwrap();
    let req = Request::builder()
        .uri("/down/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.handle(req, conn()).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-seen"], "down");
}

#[tokio::test]
async fn a_preflight_runs_the_stack_of_the_operation_it_asks_for() {
    let up = upstream("A").await;
    let gw = policy_gateway();
    let extra = "  operations:\n    - method: GET\n      path: /items/{id}\n      policies: [{name: answer-preflight, params: {status: 204}}]\n    - {method: POST, path: '/items/{id}'}\n";
    gw.apply(1, [api("ops", "/ops", &format!("http://{up}"), extra)])
        .unwrap();
    let preflight = |requested: Option<&str>| {
        let mut req = Request::builder()
            .method("OPTIONS")
            .uri("/ops/items/1")
            .header("origin", "https://app.example.com");
        if let Some(requested) = requested {
            req = req.header("access-control-request-method", requested);
        }
        req.body(Full::new(Bytes::new())).unwrap()
    };
    let resp = gw.handle(preflight(Some("GET")), conn()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // POST has no CORS policy, and a plain OPTIONS is no preflight: both stay 405
    let resp = gw.handle(preflight(Some("POST")), conn()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = gw.handle(preflight(None), conn()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    // without Origin it is no preflight either: the GET stack is not reachable by OPTIONS
    let no_origin = Request::builder()
        .method("OPTIONS")
        .uri("/ops/items/1")
        .header("access-control-request-method", "GET")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.handle(no_origin, conn()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn operation_policies_cannot_be_skipped_by_spelling_the_path_differently() {
    let up = upstream("A").await;
    let gw = policy_gateway();
    let extra = "  operations:\n    - {method: GET, path: '/items/{id}'}\n    - method: GET\n      path: /items/admin\n      policies: [{name: gate, params: {status: 403}}]\n";
    gw.apply(1, [api("ops", "/ops", &format!("http://{up}"), extra)])
        .unwrap();
    for spelling in [
        "/ops/items/admin",
        "/ops/items/%61dmin",
        "/ops/items/admin;x=1",
        "/ops/items/%61dmin;jsessionid=1",
    ] {
        let (status, body) = call(&gw, "GET", spelling).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{spelling}: {body}");
    }
    let (status, _) = call(&gw, "GET", "/ops/items/7").await;
    assert_eq!(status, StatusCode::OK);
}
