//! The gateway as a `tower::Service`, driven with `ServiceExt::oneshot` as a server (or an
//! axum `Router`) would drive it.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use super::*;
use crate::metrics::ProxyMetrics;
use crate::model::Format;
use crate::policy::PolicyRegistry;

/// An upstream on loopback that answers with the forwarding headers it received:
/// `xff=<X-Forwarded-For> proto=<X-Forwarded-Proto>`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let text = format!(
                        "xff={} proto={}",
                        header("x-forwarded-for"),
                        header("x-forwarded-proto")
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

/// A gateway serving `/open` and `/office` (only 192.0.2.0/24 may pass) from `upstream`.
async fn gateway(upstream: SocketAddr) -> Arc<Gateway> {
    gateway_with(upstream, ProxyMetrics::unregistered()).await
}

async fn gateway_with(upstream: SocketAddr, metrics: ProxyMetrics) -> Arc<Gateway> {
    let definitions = format!(
        "
apiVersion: gw/v1
kind: Api
metadata: {{name: open}}
spec:
  context: /open
  upstream: {{endpoints: [{{url: 'http://{upstream}'}}]}}
---
apiVersion: gw/v1
kind: Api
metadata: {{name: office}}
spec:
  context: /office
  upstream: {{endpoints: [{{url: 'http://{upstream}'}}]}}
  policies: [{{name: ip-filter, params: {{allow: [192.0.2.0/24]}}}}]
"
    );
    let gateway = Arc::new(Gateway::new(PolicyRegistry::builtin(), metrics));
    gateway
        .apply_definitions(1, definitions.as_bytes(), Format::Yaml)
        .await
        .unwrap();
    gateway
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .header("x-forwarded-for", "203.0.113.66")
        .body(Empty::new())
        .unwrap()
}

fn from(peer: &str, secure: bool, mut request: Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    request.extensions_mut().insert(ConnInfo {
        peer: peer.parse().unwrap(),
        secure,
    });
    request
}

async fn text(response: Response<Body>) -> (StatusCode, String) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn call<B>(service: &GatewayService, request: Request<B>) -> (StatusCode, String)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let response = service.clone().oneshot(request).await.unwrap();
    text(response).await
}

/// The upstream and the policies see the peer of the request's `ConnInfo`, never what the
/// client wrote in `X-Forwarded-For`.
#[tokio::test]
async fn the_connection_comes_from_the_request_extensions() {
    let service = gateway(upstream().await).await.service();

    let (status, body) = call(&service, from("192.0.2.7:50000", false, request("/open/x"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "xff=192.0.2.7 proto=http");
    let (status, body) = call(&service, from("192.0.2.7:50000", true, request("/open/x"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "xff=192.0.2.7 proto=https");

    let (status, _) = call(&service, from("192.0.2.7:50000", false, request("/office"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &service,
        from("198.51.100.1:50000", false, request("/office")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = call(
        &service,
        from("192.0.2.7:50000", false, request("/nowhere")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "no_route", "{body}");
}

/// Without the connection's information, a request is refused before routing, whatever
/// the route's policies: neither an IP filter nor the upstream sees a made-up client.
#[tokio::test]
async fn a_request_without_connection_info_is_refused() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let service = gateway_with(upstream().await, metrics).await.service();
    for path in ["/open/x", "/office", "/nowhere"] {
        let (status, body) = call(&service, request(path)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["code"], "connection_info_missing", "{body}");
    }
    let mut scrape = String::new();
    prometheus_client::encoding::text::encode(&mut scrape, &registry).unwrap();
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("gw_unrouted_requests_total{status=\"500\"} 3")),
        "{scrape}"
    );
}

/// A clone serves the same gateway (and the configurations applied to it later), is ready
/// at once, and takes any request body.
#[tokio::test]
async fn clones_are_ready_and_serve_the_current_configuration() {
    let up = upstream().await;
    let gateway = Arc::new(Gateway::new(
        PolicyRegistry::builtin(),
        ProxyMetrics::unregistered(),
    ));
    let mut service = GatewayService::new(Arc::clone(&gateway));
    let mut clone = service.clone();
    assert!(Arc::ptr_eq(clone.gateway(), &gateway));

    let conn = ConnInfo {
        peer: "192.0.2.7:50000".parse().unwrap(),
        secure: false,
    };
    let mut full = Request::builder()
        .uri("/open/y")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    full.extensions_mut().insert(conn);
    let response = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap()
        .call(full)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    gateway
        .apply_definitions(
            2,
            format!(
                "{{apiVersion: gw/v1, kind: Api, metadata: {{name: open}}, spec: {{context: /open, upstream: {{endpoints: [{{url: 'http://{up}'}}]}}}}}}"
            )
            .as_bytes(),
            Format::Yaml,
        )
        .await
        .unwrap();
    let response = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut clone)
        .await
        .unwrap()
        .call(from("192.0.2.7:50000", false, request("/open/y")))
        .await
        .unwrap();
    assert_eq!(text(response).await.0, StatusCode::OK);
}

/// With the `axum` feature, axum's `ConnectInfo<SocketAddr>` is the connection (plain
/// HTTP); a `ConnInfo` put in by the server wins over it.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_connect_info_is_the_connection() {
    use axum::extract::ConnectInfo;

    let service = gateway(upstream().await).await.service();
    let axum_peer = |mut request: Request<Empty<Bytes>>| {
        let peer: SocketAddr = "192.0.2.9:41000".parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    };
    let (status, body) = call(&service, axum_peer(request("/open/x"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "xff=192.0.2.9 proto=http");
    let (_, body) = call(
        &service,
        axum_peer(from("198.51.100.1:50000", true, request("/open/x"))),
    )
    .await;
    assert_eq!(body, "xff=198.51.100.1 proto=https");
}
