//! The built-in policies through a real runtime (standalone, from a file): each test deploys
//! the policy on an API in front of a loopback upstream that echoes what it received.

use gw_e2e::{Upstream, standalone};

/// An API document named `name` at `context` with `policies` (YAML flow or block text
/// indented for `spec`) in front of `upstream`.
fn api(name: &str, context: &str, upstream: &Upstream, policies: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: {context}\n  upstream:\n    endpoints: [{{url: '{}'}}]\n{policies}\n---\n",
        upstream.url("/")
    )
}

#[tokio::test]
async fn header_transforms_and_termination() {
    let upstream = Upstream::start("u").await;
    let yaml = [
        api(
            "headers",
            "/headers",
            &upstream,
            "  policies:
    - name: request-headers
      params:
        rename: {x-old: x-new}
        remove: [x-secret]
        set: {x-api: '${api.name}', x-client: '${client.ip}'}
        add: {x-via: 'gw ${request.method}'}
    - name: response-headers
      params:
        set: {x-path: '${request.path}'}
        remove: [content-type]",
        ),
        api(
            "closed",
            "/closed",
            &upstream,
            "  policies:
    - name: request-termination
      params: {status: 503, message: down for maintenance, headers: {retry-after: '120'}}",
        ),
    ]
    .concat();
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();

    let response = client
        .get(format!("http://{proxy}/headers/a"))
        .header("x-old", "1")
        .header("x-secret", "s")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-path"], "/headers/a");
    assert!(response.headers().get("content-type").is_none());
    let seen: serde_json::Value = response.json().await.unwrap();
    let headers = &seen["headers"];
    assert_eq!(headers["x-api"], "headers", "{seen}");
    assert_eq!(headers["x-client"], "127.0.0.1", "{seen}");
    assert_eq!(headers["x-new"], "1", "{seen}");
    assert!(headers.get("x-old").is_none(), "{seen}");
    assert!(headers.get("x-secret").is_none(), "{seen}");
    assert_eq!(headers["x-via"], "gw GET", "{seen}");

    let response = client
        .get(format!("http://{proxy}/closed/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "120");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_terminated");
    assert_eq!(body["error"]["message"], "down for maintenance");
}
