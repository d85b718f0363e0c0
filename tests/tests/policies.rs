//! The built-in policies through a real runtime (standalone, from a file): each test deploys
//! the policy on an API in front of a loopback upstream that echoes what it received.

use gw_e2e::{Upstream, standalone};

/// An API document named `name` at `context` with `policies` (YAML text indented for
/// `spec`) in front of `upstream`, ending with a document separator.
fn api(name: &str, context: &str, upstream: &Upstream, policies: &str) -> String {
    format!(
        "{}{policies}\n---\n",
        gw_e2e::api_yaml(name, context, &upstream.url("/"))
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

#[tokio::test]
async fn cors_and_correlation_ids() {
    let upstream = Upstream::start("u").await;
    let yaml = [api(
        "web",
        "/web",
        &upstream,
        "  policies:
    - name: correlation-id
    - name: cors
      params:
        allowOrigins: [https://app.example.com]
        allowOriginPatterns: ['https://*.preview.example.com']
        allowMethods: [GET, POST]
        exposeHeaders: [x-total]
        allowCredentials: true
        maxAge: 600
  operations:
    - {method: GET, path: '/items/{id}'}",
    )]
    .concat();
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();

    // a preflight on an operation that is not OPTIONS, answered at the gateway
    let preflight = |origin: &str, method: &str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{proxy}/web/items/1"),
            )
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let response = preflight("https://a.preview.example.com", "GET")
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://a.preview.example.com"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(headers["access-control-allow-headers"], "authorization");
    // the request id is on the gateway's own answers too (observe runs outermost)
    assert!(headers.contains_key("x-request-id"));
    let response = preflight("https://evil.example.net", "GET").await.unwrap();
    assert_eq!(response.status(), 403);
    // no DELETE operation on this path: the preflight is a 405 like a DELETE would be
    let response = preflight("https://app.example.com", "DELETE")
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    // a simple request from an allowed origin goes upstream and gets the CORS headers
    let response = client
        .get(format!("http://{proxy}/web/items/1"))
        .header("origin", "https://app.example.com")
        .header("x-request-id", "client-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-expose-headers"], "x-total");
    assert_eq!(headers["x-request-id"], "client-id-1");
    assert!(headers["vary"].to_str().unwrap().contains("Origin"));
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "client-id-1", "{seen}");

    // a disallowed origin: proxied, without CORS headers; a fresh id when none was sent
    let response = client
        .get(format!("http://{proxy}/web/items/2"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-request-id"],
        generated.as_str(),
        "{seen}"
    );
}

#[tokio::test]
async fn redirects_and_rewrites() {
    let upstream = Upstream::start("u").await;
    let yaml = [
        api(
            "moved",
            "/moved",
            &upstream,
            "  policies:
    - name: redirect
      params: {location: '/new${request.path}', status: 308, keepQuery: true}",
        ),
        api(
            "shop",
            "/shop",
            &upstream,
            "  operations:
    - method: GET
      path: '/items/{id}'
      policies: [{name: rewrite, params: {path: '/v2/products/{id}/detail'}}]
    - method: POST
      path: /items/search
      policies: [{name: rewrite, params: {path: /items, method: GET}}]",
        ),
    ]
    .concat();
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let response = client
        .get(format!("http://{proxy}/moved/a/b?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], "/new/moved/a/b?x=1");

    let response = client
        .get(format!("http://{proxy}/shop/items/a%20b?full=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/v2/products/a%20b/detail", "{seen}");
    assert_eq!(seen["query"], "full=1", "{seen}");

    let response = client
        .post(format!("http://{proxy}/shop/items/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/items", "{seen}");
    assert_eq!(seen["method"], "GET", "{seen}");
}

#[tokio::test]
async fn ip_filters_and_size_limits() {
    let upstream = Upstream::start("u").await;
    let yaml = [
        api(
            "denied",
            "/denied",
            &upstream,
            "  policies: [{name: ip-filter, params: {deny: [127.0.0.0/8]}}]",
        ),
        api(
            "proxied",
            "/proxied",
            &upstream,
            "  policies: [{name: ip-filter, params: {allow: [203.0.113.0/24], trustedProxies: [127.0.0.1]}}]",
        ),
        api(
            "untrusted",
            "/untrusted",
            &upstream,
            "  policies: [{name: ip-filter, params: {allow: [203.0.113.0/24]}}]",
        ),
        api(
            "small",
            "/small",
            &upstream,
            "  policies: [{name: request-size-limit, params: {maxBytes: 10}}]",
        ),
    ]
    .concat();
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();
    let get = |path: &str, forwarded: Option<&str>| {
        let mut request = client.get(format!("http://{proxy}{path}"));
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        request.send()
    };

    let response = get("/denied/x", None).await.unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_forbidden");
    // from a trusted proxy, the forwarded client address decides
    assert_eq!(
        get("/proxied/x", Some("203.0.113.5"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/proxied/x", Some("198.51.100.1"))
            .await
            .unwrap()
            .status(),
        403
    );
    // a client's own X-Forwarded-For, from an untrusted peer, is not believed
    assert_eq!(
        get("/untrusted/x", Some("203.0.113.5"))
            .await
            .unwrap()
            .status(),
        403
    );

    let post = |body: &'static str| {
        client
            .post(format!("http://{proxy}/small/x"))
            .body(body)
            .send()
    };
    assert_eq!(post("0123456789").await.unwrap().status(), 200);
    let response = post("0123456789x").await.unwrap();
    assert_eq!(response.status(), 413);
    // a chunked body that grows past the limit
    let (status, text) = gw_e2e::raw_http(
        proxy,
        b"POST /small/x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}

#[tokio::test]
async fn rate_limits_count_the_whole_api_and_timeouts_apply_per_operation() {
    let echo = gw_e2e::echo_upstream("echo");
    let yaml = format!(
        "apiVersion: gw/v1
kind: Api
metadata: {{name: limited}}
spec:
  context: /limited
  upstream:
    endpoints: [{{url: 'http://{echo}'}}]
    timeouts: {{request: 10s}}
  policies:
    - name: rate-limit
      params: {{key: api, limits: [{{requests: 3, window: minute}}, {{requests: 100, window: hour}}]}}
  operations:
    - {{method: GET, path: /a}}
    - method: GET
      path: /b
      policies: [{{name: timeout, params: {{request: 300ms}}}}]
",
        echo = echo.addr("http")
    );
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{proxy}{path}")).send();

    // three requests across two operations use up the API's limit of 3 per minute
    let first = get("/limited/a").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-limit"], "3");
    assert_eq!(first.headers()["ratelimit-remaining"], "2");
    assert_eq!(get("/limited/b").await.unwrap().status(), 200);
    assert_eq!(get("/limited/a").await.unwrap().status(), 200);
    let refused = get("/limited/b").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // the operation's timeout (300 ms) replaces the upstream's 10 s: a second-long answer
    // is a 504 there and a 200 on the other operation; a new runtime so that the limit above does not interfere
    let yaml = yaml.replace(
        "requests: 3, window: minute",
        "requests: 100, window: minute",
    );
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let slow = |path: &str| {
        client
            .get(format!("http://{proxy}{path}"))
            .header("x-echo-delay-ms", "1000")
            .send()
    };
    let response = slow("/limited/b").await.unwrap();
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(slow("/limited/a").await.unwrap().status(), 200);
}

#[tokio::test]
async fn access_logs_metrics_and_trace_context() {
    let upstream = Upstream::start("u").await;
    let yaml = api(
        "logged",
        "/logged",
        &upstream,
        "  policies:
    - name: correlation-id
    - name: access-log
  operations:
    - {method: GET, path: '/items/{id}'}",
    );
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();

    // no traceparent: one is made; a valid one goes through unchanged
    let seen: serde_json::Value = client
        .get(format!("http://{proxy}/logged/items/7?secret=1"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let made = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(made.len(), 55, "{seen}");
    let trace_id = &made[3..35];
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen: serde_json::Value = client
        .get(format!("http://{proxy}/logged/items/8"))
        .header("traceparent", given)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["traceparent"], given);

    // one access line per request, with the operation, ids, endpoint and bytes; no query
    let line = |needle: &str| {
        runtime
            .log()
            .lines()
            .find(|l| l.contains("\"access_log\"") && l.contains(needle))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    };
    gw_e2e::eventually(
        "the access line",
        std::time::Duration::from_secs(5),
        || async { line("req-42").is_some() },
    )
    .await;
    let entry = line("req-42").unwrap();
    assert_eq!(entry["api"], "logged", "{entry}");
    assert_eq!(entry["operation"], "GET /items/{id}", "{entry}");
    assert_eq!(entry["path"], "/logged/items/7", "{entry}");
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["trace_id"], trace_id, "{entry}");
    assert_eq!(entry["completed"], true, "{entry}");
    assert_eq!(
        entry["upstream"],
        upstream.url("/").trim_end_matches('/'),
        "{entry}"
    );
    assert!(entry["bytes"].as_u64().unwrap() > 0, "{entry}");
    assert!(!entry.to_string().contains("secret"), "{entry}");

    // the requests are counted by operation
    let count: Option<u64> = gw_e2e::metric(
        runtime.addr("status"),
        "gw_requests_total{api=\"logged\",operation=\"GET /items/{id}\",class=\"2xx\"}",
    )
    .await;
    assert_eq!(count, Some(2));
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_still_gets_its_access_line() {
    let echo = gw_e2e::echo_upstream("slow");
    let yaml = format!(
        "apiVersion: gw/v1
kind: Api
metadata: {{name: slow}}
spec:
  context: /slow
  upstream: {{endpoints: [{{url: 'http://{}'}}], timeouts: {{request: 30s}}}}
  policies: [{{name: correlation-id}}, {{name: access-log}}]
",
        echo.addr("http")
    );
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    // the client gives up long before the upstream answers
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let result = client
        .get(format!("http://{proxy}/slow/x"))
        .header("x-request-id", "gone-early")
        .header("x-echo-delay-ms", "5000")
        .send()
        .await;
    assert!(result.is_err(), "the client was meant to time out");
    let line = || {
        runtime
            .log()
            .lines()
            .find(|l| l.contains("\"access_log\"") && l.contains("gone-early"))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    };
    gw_e2e::eventually(
        "the access line of the abandoned request",
        std::time::Duration::from_secs(5),
        || async { line().is_some() },
    )
    .await;
    let entry = line().unwrap();
    assert_eq!(entry["status"], 0, "{entry}");
    assert_eq!(entry["completed"], false, "{entry}");
    assert_eq!(entry["api"], "slow", "{entry}");
}
