//! Consumers and authentication end to end: consumers deployed through the controller, their
//! credentials checked by a runtime, and a revoked key refused once the runtime applied the
//! revocation.

use std::time::{Duration, Instant};

use gw_e2e::{Admin, ControllerSpec, Upstream, controller, eventually, hs256};
use reqwest::Method;

fn spec() -> ControllerSpec {
    ControllerSpec {
        database_url: None,
        dev: true,
        all_in_one: true,
        node_id: "auth".to_string(),
    }
}

async fn put(admin: &Admin, path: &str, yaml: &str) -> (u16, serde_json::Value) {
    let response = admin
        .request(Method::PUT, path)
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn api_keys_basic_auth_acls_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller(&spec(), dir.path());
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let upstream = Upstream::start("u").await;
    let proxy = ctl.addr("proxy");
    let client = reqwest::Client::new();

    let shop = format!(
        "{}  policies:
    - name: api-key
    - name: acl
      params: {{allow: [gold]}}
    - name: request-headers
      params: {{set: {{x-consumer: '${{consumer.name}}'}}}}
",
        gw_e2e::api_yaml("shop", "/shop", &upstream.url("/"))
    );
    let (status, body) = put(&admin, "/api/v1/apis/shop?wait=applied", &shop).await;
    assert_eq!(status, 201, "{body}");
    let partners = format!(
        "{}  policies: [{{name: basic-auth}}]\n",
        gw_e2e::api_yaml("partners", "/partners", &upstream.url("/"))
    );
    let (status, body) = put(&admin, "/api/v1/apis/partners?wait=applied", &partners).await;
    assert_eq!(status, 201, "{body}");

    // alice gets a generated key, shown once; bob brings his own
    let (status, body) = put(
        &admin,
        "/api/v1/consumers/alice?wait=applied",
        "apiVersion: gw/v1
kind: Consumer
metadata: {name: alice}
spec:
  aclGroups: [gold]
  credentials:
    - {type: api-key, id: k1}
    - {type: basic-auth, id: b1, username: alice, password: correct horse battery}
",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let alice_key = body["generatedKeys"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(body["generatedKeys"][0]["id"], "k1", "{body}");
    let (status, body) = put(
        &admin,
        "/api/v1/consumers/bob?wait=applied",
        "apiVersion: gw/v1
kind: Consumer
metadata: {name: bob}
spec:
  aclGroups: [silver]
  credentials: [{type: api-key, id: k1, key: bob-key-0123456789abcdef}]
",
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // reads never show a secret or a hash
    let (_, alice) = admin.get_json("/api/v1/consumers/alice").await;
    let text = alice.to_string();
    assert!(
        !text.contains(&alice_key) && !text.contains("sha256:") && !text.contains("argon2"),
        "{text}"
    );

    let get = |path: &str, key: Option<&str>| {
        let mut request = client.get(format!("http://{proxy}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let response = get("/shop/a", Some(&alice_key)).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-consumer"], "alice", "{seen}");
    assert!(
        seen["headers"].get("x-api-key").is_none(),
        "the key went upstream: {seen}"
    );
    // bob is authenticated but not in the allowed group; no key and a wrong key are 401
    assert_eq!(
        get("/shop/a", Some("bob-key-0123456789abcdef"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(get("/shop/a", None).await.unwrap().status(), 401);
    assert_eq!(
        get("/shop/a", Some("not-a-key-0123456789"))
            .await
            .unwrap()
            .status(),
        401
    );

    // basic auth, with the password never forwarded
    let response = client
        .get(format!("http://{proxy}/partners/x"))
        .basic_auth("alice", Some("correct horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    let response = client
        .get(format!("http://{proxy}/partners/x"))
        .basic_auth("alice", Some("wrong horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // per-consumer metrics
    let count: Option<u64> = gw_e2e::metric(
        ctl.addr("status"),
        "gw_consumer_requests_total{api=\"shop\",consumer=\"alice\",class=\"2xx\"}",
    )
    .await;
    assert_eq!(count, Some(1));

    // revoke alice's key: refused once the runtime has applied the revision
    let started = Instant::now();
    let response = admin
        .request(
            Method::DELETE,
            "/api/v1/consumers/alice/credentials/k1?wait=applied",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(
        get("/shop/a", Some(&alice_key)).await.unwrap().status(),
        401
    );
    println!(
        "revocation: key refused {:?} after the DELETE was sent",
        started.elapsed()
    );
    // her password still works: only the key was revoked
    let response = client
        .get(format!("http://{proxy}/partners/x"))
        .basic_auth("alice", Some("correct horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // deleting the consumer ends the rest
    let response = admin
        .request(Method::DELETE, "/api/v1/consumers/alice?wait=applied")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(
        "the password to stop working",
        Duration::from_secs(5),
        || async {
            client
                .get(format!("http://{proxy}/partners/x"))
                .basic_auth("alice", Some("correct horse battery"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 401)
        },
    )
    .await;

    // each write to alice is in the audit log with the client's address, and logged as a
    // JSON line of target gw_audit
    let (status, audit) = admin
        .get_json("/api/v1/audit?kind=consumer&name=alice")
        .await;
    assert_eq!(status, 200, "{audit}");
    let records = audit["items"].as_array().unwrap();
    assert_eq!(records[0]["action"], "delete", "newest first: {audit}");
    assert!(
        records
            .iter()
            .all(|r| r["actor"] == "anonymous" && r["source"] == "127.0.0.1"),
        "{audit}"
    );
    let request_id = records[0]["requestId"].as_str().unwrap().to_string();
    eventually(
        "the audit line of the delete",
        Duration::from_secs(5),
        || {
            let found = ctl
                .log()
                .lines()
                .any(|line| line.contains("\"target\":\"gw_audit\"") && line.contains(&request_id));
            async move { found }
        },
    )
    .await;
    assert!(!ctl.log().contains("correct horse battery"));
}

#[tokio::test]
async fn jwt_through_a_standalone_runtime_with_consumers_from_the_file() {
    use base64::Engine as _;
    let upstream = Upstream::start("u").await;
    let secret = b"0123456789abcdef0123456789abcdef-e2e";
    let yaml = format!(
        "{}  policies:
    - name: jwt
      params:
        algorithms: [HS256]
        secret: '{}'
        issuer: [https://idp.test]
        audience: [orders]
        scopes: [orders.read]
        forwardClaims: {{sub: x-subject}}
        consumerRequired: true
    - name: acl
      params: {{allow: [gold]}}
---
apiVersion: gw/v1
kind: Consumer
metadata: {{name: carol}}
spec:
  aclGroups: [gold]
  credentials: [{{type: jwt, id: j1, subject: carol@idp, issuer: https://idp.test}}]
",
        gw_e2e::api_yaml("tokens", "/tokens", &upstream.url("/")),
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    let (runtime, _dir) = gw_e2e::standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |sub: &str, exp: u64| {
        serde_json::json!({
            "iss": "https://idp.test", "aud": "orders", "sub": sub, "exp": exp,
            "scope": "orders.read orders.write"
        })
    };
    let call = |token: String| {
        client
            .get(format!("http://{proxy}/tokens/x"))
            .bearer_auth(token)
            .send()
    };

    let response = call(hs256(&claims("carol@idp", now + 300), secret))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-subject"], "carol@idp", "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");

    // expired, another key, a subject no consumer has
    assert_eq!(
        call(hs256(&claims("carol@idp", now - 3600), secret))
            .await
            .unwrap()
            .status(),
        401
    );
    let other = b"another-secret-another-secret-0000";
    assert_eq!(
        call(hs256(&claims("carol@idp", now + 300), other))
            .await
            .unwrap()
            .status(),
        401
    );
    let response = call(hs256(&claims("mallory@idp", now + 300), secret))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_consumer");
}
