//! All-in-one on the embedded SQLite store: one `gw-controller --all-in-one` process.

use std::time::Duration;

use gw_e2e::{Admin, ControllerSpec, TOKEN, Upstream, api_yaml, call, controller, eventually};
use reqwest::Method;

fn spec(dev: bool) -> ControllerSpec {
    ControllerSpec {
        database_url: None,
        dev,
        all_in_one: true,
        node_id: "aio".to_string(),
    }
}

#[tokio::test]
async fn deploy_call_replace_upstream_delete() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller(&spec(true), dir.path());
    let admin = Admin::new(ctl.addr("admin"), None);
    let proxy = ctl.addr("proxy");
    admin.wait_ready().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let client = reqwest::Client::new();

    let response = admin.deploy("orders", "/orders/v1", &a.url("/api")).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["revision"], 1);
    assert_eq!(body["applied"], serde_json::json!(["aio-runtime"]));

    // applied means served: no polling needed after wait=applied
    let (status, seen) = call(&client, proxy, "/orders/v1/items/42?b=2&a=%201").await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["upstream"], "a");
    assert_eq!(seen["path"], "/api/items/42");
    assert_eq!(seen["query"], "b=2&a=%201");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");

    // replace the upstream
    let response = admin.deploy("orders", "/orders/v1", &b.url("/v2")).await;
    assert_eq!(response.status(), 200);
    let (status, seen) = call(&client, proxy, "/orders/v1/items/42").await;
    assert_eq!((status, seen["upstream"].as_str()), (200, Some("b")));
    assert_eq!(seen["path"], "/v2/items/42");

    // no route: 404 with a JSON body
    let (status, body) = call(&client, proxy, "/nothing/here").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "no_route");

    // delete: the route goes away
    let response = admin.delete_api("orders").await;
    assert_eq!(response.status(), 200);
    eventually(
        "the route to disappear",
        Duration::from_secs(10),
        || async { call(&client, proxy, "/orders/v1/items/42").await.0 == 404 },
    )
    .await;
    assert_eq!(admin.delete_api("orders").await.status(), 404);

    // an upstream that is down: 502 with a JSON body naming the cause
    drop(a);
    let down = api_yaml("down", "/down", "http://127.0.0.1:9/");
    assert_eq!(
        admin.put_api("down", &down, "?wait=applied").await.status(),
        201
    );
    let (status, body) = call(&client, proxy, "/down/x").await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "upstream_unreachable");

    // the runtime's status endpoints
    let status_addr = ctl.addr("status");
    let (code, ready) = call(&client, status_addr, "/status/ready").await;
    assert_eq!(code, 200);
    assert_eq!(ready["source"], "controller");
    // the process stops as a whole: its runtime has no drain endpoint
    let drain = client
        .post(format!("http://{status_addr}/status/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 404);
    assert_eq!(call(&client, status_addr, "/status/ready").await.0, 200);
    let metrics = client
        .get(format!("http://{status_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gw_requests_total{api=\"down\",operation=\"*\",class=\"5xx\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller(&spec(true), dir.path());
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let up = Upstream::start("a").await;

    // malformed YAML
    let response = admin.put_api("orders", "spec: [unclosed", "").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_document");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );

    // invalid fields: every one reported with its path
    let bad = "apiVersion: gw/v1\nkind: Api\nmetadata: {name: orders}\nspec:\n  context: orders\n  colour: red\n  upstream:\n    endpoints: [{url: 'ftp://x'}]\n  operations: [{method: FETCH, path: /a}]\n";
    let response = admin.put_api("orders", bad, "").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed");
    let mut fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "spec.colour",
            "spec.context",
            "spec.operations[0].method",
            "spec.upstream.endpoints[0].url"
        ]
    );

    // the name in the URL must match the document
    let response = admin
        .put_api("other", &api_yaml("orders", "/o", &up.url("")), "")
        .await;
    assert_eq!(response.status(), 400);

    // media type, size
    let response = admin
        .request(Method::PUT, "/api/v1/apis/orders")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // an oversize body is refused from its Content-Length, before it is read (a raw
    // request: HTTP clients that keep writing after the answer see a broken pipe instead;
    // for localhost, as development mode without a token requires)
    let head = oversize_request(ctl.addr("admin")).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");

    // JSON works as well as YAML, and POST refuses to overwrite
    let json = serde_json::json!({
        "apiVersion": "gw/v1", "kind": "Api", "metadata": {"name": "orders"},
        "spec": {"context": "/orders", "upstream": {"endpoints": [{"url": up.url("")}]}}
    });
    let response = admin
        .request(Method::POST, "/api/v1/apis")
        .json(&json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let response = admin
        .request(Method::POST, "/api/v1/apis")
        .json(&json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // optimistic concurrency: a stale ETag gives 412, the current one succeeds
    let put = |tag: &str| {
        admin
            .request(Method::PUT, "/api/v1/apis/orders")
            .header("if-match", tag)
            .json(&json)
            .send()
    };
    assert_eq!(put(&etag).await.unwrap().status(), 200);
    assert_eq!(put(&etag).await.unwrap().status(), 412);

    // another API on the same context is a conflict
    let clash = api_yaml("clash", "/orders", &up.url(""));
    let response = admin.put_api("clash", &clash, "").await;
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_conflict");

    // reads
    let (status, body) = admin.get_json("/api/v1/apis/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = admin.get_json("/api/v1/apis").await;
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["name"], "orders");
    let yaml = admin
        .request(Method::GET, "/api/v1/apis/orders")
        .header("accept", "application/yaml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(yaml.contains("context: /orders"), "{yaml}");
    let (status, schema) = admin.get_json("/api/v1/schema/api").await;
    assert_eq!(status, 200);
    assert_eq!(schema["title"], "gw API definition");
    let (status, _) = admin.get_json("/api/v1/nothing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn production_mode_requires_a_token_and_a_key() {
    // without a token or a key the controller refuses to start and says what to set
    let dir = tempfile::tempdir().unwrap();
    let mut refused = gw_e2e::Process::start(
        "no-token",
        &gw_e2e::binary("gw-controller"),
        &[
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
    );
    assert_ne!(refused.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(refused.logged("GW_ADMIN_TOKEN"), "{}", refused.log());

    let ctl = controller(&spec(false), dir.path());
    let addr = ctl.addr("admin");
    let anonymous = Admin::new(addr, None);
    let wrong = Admin::new(addr, Some("wrong-token-wrong-token"));
    let right = Admin::new(addr, Some(TOKEN));
    // probes need no token
    right.wait_ready().await;
    assert_eq!(anonymous.get_json("/healthz").await.0, 200);
    assert_eq!(anonymous.get_json("/readyz").await.0, 200);

    let (status, body) = anonymous.get_json("/api/v1/apis").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(wrong.get_json("/api/v1/apis").await.0, 401);
    let response = anonymous
        .put_api("a", &api_yaml("a", "/a", "http://127.0.0.1:9"), "")
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(right.get_json("/api/v1/apis").await.0, 200);
    assert_eq!(
        right
            .put_api("a", &api_yaml("a", "/a", "http://127.0.0.1:9"), "")
            .await
            .status(),
        201
    );
    // the token never reaches the log
    assert!(!ctl.logged(TOKEN));
}

/// In production the embedded runtime is served over mutual TLS from the cluster CA like any
/// runtime: the controller enrolls it with a token of its own, and after a restart it
/// connects with the certificate it kept.
#[tokio::test]
async fn production_all_in_one_enrolls_its_runtime_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = controller(&spec(false), dir.path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    assert!(
        ctl.logged("runtimes enroll with tokens") && ctl.logged("\"enrolled\""),
        "{}",
        ctl.log()
    );
    assert!(!ctl.logged("the sync port is plaintext"), "{}", ctl.log());
    assert!(dir.path().join("runtime/sync-identity.json").exists());
    let up = Upstream::start("a").await;
    let client = reqwest::Client::new();
    let response = admin.deploy("orders", "/orders", &up.url("")).await;
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["applied"], serde_json::json!(["aio-runtime"]));
    let (status, seen) = call(&client, ctl.addr("proxy"), "/orders/1").await;
    assert_eq!((status, seen["upstream"].as_str()), (200, Some("a")));

    // restarted, the runtime is served with the certificate it kept
    assert_eq!(ctl.terminate(), Some(0), "{}", ctl.log());
    ctl.restart(&[]);
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let response = admin.deploy("orders", "/orders", &up.url("/v2")).await;
    assert_eq!(response.status(), 200);
    let (status, seen) = call(&client, ctl.addr("proxy"), "/orders/1").await;
    assert_eq!((status, seen["path"].as_str()), (200, Some("/v2/1")));
    assert!(
        !ctl.logged("\"enrolled\""),
        "a second enrollment: {}",
        ctl.log()
    );
}

/// Sends a PUT that declares a 2 MiB body without sending it; returns the response head.
async fn oversize_request(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"PUT /api/v1/apis/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\n\
              Content-Length: 2097152\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the controller answers without waiting for the body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
