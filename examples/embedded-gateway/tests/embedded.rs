//! The example as shipped: its binary, started on an ephemeral port with definitions of the
//! test's own, in front of an upstream on loopback.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, Uri};

/// An upstream that answers with the path and the `X-Forwarded-For` it received.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|uri: Uri, headers: HeaderMap| async move {
        let xff = headers
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap().to_string());
        Json(serde_json::json!({"path": uri.path(), "xff": xff}))
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The example's process, killed when dropped.
struct Example {
    child: Child,
    addr: SocketAddr,
}

impl Example {
    /// Starts the example on `127.0.0.1:0` with `definitions`, and waits for the address
    /// it prints.
    fn start(definitions: &str) -> (Self, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), definitions).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_embedded-gateway"))
            .arg(file.path())
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_mins(1)).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the example did not start: {line:?}"))
            .parse()
            .unwrap();
        (Self { child, addr }, file)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose connections come from `source` (a loopback address of its own, so that
/// the client address the gateway sees is known).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const DEFINITIONS: &str = "
apiVersion: gw/v1
kind: Api
metadata: {name: orders}
spec:
  context: /orders/v1
  upstream: {endpoints: [{url: 'UPSTREAM/api'}]}
---
apiVersion: gw/v1
kind: Api
metadata: {name: office}
spec:
  context: /office
  upstream: {endpoints: [{url: 'UPSTREAM'}]}
  policies: [{name: ip-filter, params: {allow: [127.0.0.7]}}]
---
apiVersion: gw/v1
kind: Api
metadata: {name: partners}
spec:
  context: /partners
  upstream: {endpoints: [{url: 'UPSTREAM'}]}
  policies: [{name: api-key}]
---
apiVersion: gw/v1
kind: Consumer
metadata: {name: acme}
spec:
  credentials: [{type: api-key, id: k1, key: acme-example-key-0123456789}]
";

#[tokio::test]
async fn the_app_serves_its_routes_and_the_gateway_the_rest() {
    let up = upstream().await;
    let (example, _file) =
        Example::start(&DEFINITIONS.replace("UPSTREAM", &format!("http://{up}")));
    let client = client_from("127.0.0.7");

    // the app's own route
    let response = client.get(example.url("/hello")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "hello from the service itself\n"
    );

    // proxied, with the real peer as the client address: not what the client claims
    let response = client
        .get(example.url("/orders/v1/items/42"))
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/api/items/42");
    assert_eq!(body["xff"], "127.0.0.7");

    // gw's 404
    let (status, body) = json(client.get(example.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "no_route", "{body}");

    // an IP filter sees the peer
    let (status, _) = json(client.get(example.url("/office")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let other = client_from("127.0.0.1");
    let (status, body) = json(other.get(example.url("/office")).send().await.unwrap()).await;
    assert_eq!(status, 403, "{body}");

    // the consumer's clear key from the file was hashed and is served
    let (status, body) = json(client.get(example.url("/partners")).send().await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let response = client
        .get(example.url("/partners"))
        .header("x-api-key", "acme-example-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
