use std::convert::Infallible;
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
    Arc::new(ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap())
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
