//! The admin API in process, on a SQLite store: the paths that are awkward to reach through
//! a real process (no store yet, streamed bodies, runtimes that lag or reject).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use gw_controller::admin::{AppState, DevGuard};
use gw_controller::keys::EncryptionKey;
use gw_controller::sealed::Sealer;
use gw_store::{RuntimeRecord, Store};
use gw_sync::state::DesiredState;

mod support;
use support::{send, send_raw, sqlite};

/// The handlers' state, and the sender that signals the controller's shutdown.
fn state(store: Option<Arc<dyn Store>>) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    state_with(store, None)
}

/// [`state`], in development mode without a token when `dev_guard` is given.
fn state_with(
    store: Option<Arc<dyn Store>>,
    dev_guard: Option<DevGuard>,
) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    support::app_state(store, dev_guard, None)
}

fn put(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::put(path)
        .header("content-type", "application/yaml")
        .body(body.into())
        .unwrap()
}

fn api(name: &str, context: &str, groups: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: {context}\n  groups: {groups}\n  upstream: {{endpoints: [{{url: 'http://127.0.0.1:9'}}]}}\n"
    )
}

fn runtime(node: &str, group: &str, applied: i64) -> RuntimeRecord {
    let now = Utc::now();
    RuntimeRecord {
        node_id: node.into(),
        group: group.into(),
        controller_id: "ctl".into(),
        session_id: format!("{node}-session"),
        session_epoch: 1,
        heartbeat_interval_ms: 10_000,
        address: "127.0.0.1:1".into(),
        runtime_version: "test".into(),
        applied_revision: applied,
        connected: true,
        connected_at: now,
        last_seen: now,
        last_error: None,
        last_error_revision: None,
        refused: None,
    }
}

#[tokio::test]
async fn without_a_store_writes_answer_503_and_readyz_is_false() {
    let (state, _stop) = state(None);
    let (status, body) = send(
        &state,
        Request::get("/api/v1/apis").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "store_unavailable");
    let (status, body) = send(&state, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    let (status, _) = send(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Development mode without a token: a web page on the developer's machine can neither reach
/// the admin API under its own name (DNS rebinding) nor post to it without a preflight.
#[tokio::test]
async fn development_mode_without_a_token_keeps_web_pages_out() {
    let dir = tempfile::tempdir().unwrap();
    let guard = DevGuard::new(&["gw.test".to_string()]);
    let (state, _stop) = state_with(Some(sqlite(&dir).await), Some(guard));
    let request = |method: &str, host: Option<&str>, content_type: Option<&str>, body: &str| {
        let mut builder = Request::builder().method(method).uri("/api/v1/apis/a");
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        builder.body(Body::from(body.to_string())).unwrap()
    };
    let yaml = api("a", "/a", "[default]");

    // the health endpoints tell nothing: any Host (a container's health check)
    let healthz = Request::get("/healthz")
        .header("host", "gw-controller:9090")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&state, healthz).await.0, StatusCode::OK);
    for host in [Some("evil.example"), Some("evil.example:9090"), None] {
        let (status, body) = send(&state, request("GET", host, None, "")).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host:?}");
        assert_eq!(body["error"]["code"], "host_not_allowed");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--dev-allowed-hosts"),
            "{body}"
        );
    }
    let refused = [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ];
    for content_type in refused {
        for method in ["PUT", "POST", "PATCH", "DELETE"] {
            let (status, body) = send(
                &state,
                request(method, Some("localhost:9090"), content_type, &yaml),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {content_type:?}: {body}"
            );
            assert_eq!(body["error"]["code"], "unsupported_media_type");
        }
    }
    let (status, body) = send(
        &state,
        request(
            "PUT",
            Some("localhost:9090"),
            Some("application/yaml"),
            &yaml,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &state,
        request("PUT", Some("gw.test:9090"), Some("application/yaml"), &yaml),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // a write without a body needs no type
    let (status, body) = send(&state, request("DELETE", Some("[::1]:9090"), None, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn streamed_bodies_are_cut_off_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = state(Some(sqlite(&dir).await));
    let chunks = (0..20).map(|_| Ok::<_, std::io::Error>(vec![b'#'; 8 * 1024]));
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, body) = send(&state, put("/api/v1/apis/a", body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn preconditions_and_query_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = state(Some(sqlite(&dir).await));
    let (status, _) = send(&state, put("/api/v1/apis/a", api("a", "/a", "[default]"))).await;
    assert_eq!(status, StatusCode::CREATED);

    let if_none_match = Request::put("/api/v1/apis/a")
        .header("if-none-match", "*")
        .body(Body::from(api("a", "/a", "[default]")))
        .unwrap();
    let (status, body) = send(&state, if_none_match).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");

    let stale_delete = Request::delete("/api/v1/apis/a")
        .header("if-match", "\"7\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&state, stale_delete).await.0,
        StatusCode::PRECONDITION_FAILED
    );

    for query in [
        "?wait=soon",
        "?timeout=5s",
        "?wait=applied&timeout=1d",
        "?colour=red",
    ] {
        let (status, body) = send(
            &state,
            put(
                &format!("/api/v1/apis/a{query}"),
                api("a", "/a", "[default]"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, body) = send(
        &state,
        put("/api/v1/apis/Bad_Name", api("a", "/a", "[default]")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "name");

    let delete = Request::delete("/api/v1/apis/a")
        .header("if-match", "\"1\"")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&state, delete).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revision"], 2);
}

#[tokio::test]
async fn wait_applied_names_the_runtimes_that_lag_or_reject() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, stop) = state(Some(Arc::clone(&store)));
    // a runtime of another group is not waited for; a disconnected one neither
    store
        .register_runtime(&runtime("other-group", "edge", 0))
        .await
        .unwrap();
    let mut gone = runtime("gone", "default", 0);
    gone.connected = false;
    store.register_runtime(&gone).await.unwrap();
    // a refused one (another protocol version) cannot apply it: it is named, not waited for
    let mut refused = runtime("old", "default", 0);
    refused.connected = false;
    refused.refused = Some("protocol version 0 is not supported".into());
    assert!(
        store
            .record_refusal(&refused, chrono::Utc::now())
            .await
            .unwrap()
    );
    // no connected runtime in the group: nothing to wait for
    let (status, body) = send(
        &state,
        put("/api/v1/apis/a?wait=applied", api("a", "/a", "[default]")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["applied"], serde_json::json!([]));
    assert_eq!(
        body["refused"],
        serde_json::json!([{"nodeId": "old", "reason": "protocol version 0 is not supported"}])
    );
    // and the answer says that nothing applied it
    assert_eq!(body["warning"]["code"], "no_runtime", "{body}");
    let warning = body["warning"]["message"].as_str().unwrap();
    assert!(
        warning.contains("group \"default\"") && warning.contains("1 refused"),
        "{warning}"
    );

    // one that lags
    store
        .register_runtime(&runtime("slow", "default", 1))
        .await
        .unwrap();
    let (status, body) = send(
        &state,
        put(
            "/api/v1/apis/a?wait=applied&timeout=300ms",
            api("a", "/a2", "[default]"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "apply_timeout");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stored at revision 2")
    );
    assert_eq!(body["error"]["details"][0]["field"], "runtimes.slow");
    // the write happened
    let (_, stored) = send(
        &state,
        Request::get("/api/v1/apis/a").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(stored["spec"]["context"], "/a2");

    // one that rejected it
    let mut rejecting = runtime("slow", "default", 2);
    rejecting.last_error = Some("unknown policy \"x\"".into());
    rejecting.last_error_revision = Some(3);
    store.update_runtime(&rejecting).await.unwrap();
    let (status, body) = send(
        &state,
        put(
            "/api/v1/apis/a?wait=applied&timeout=5s",
            api("a", "/a3", "[default]"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "apply_rejected");
    assert_eq!(
        body["error"]["details"][0]["message"],
        "unknown policy \"x\""
    );

    // a controller that stops does not hold a wait open
    let waiting = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            send(
                &state,
                put(
                    "/api/v1/apis/a?wait=applied&timeout=60s",
                    api("a", "/a4", "[default]"),
                ),
            )
            .await
        })
    };
    stop.send_replace(true);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends when the controller stops")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "apply_unconfirmed");
}

/// A `Certificate` document named `site`, for `site.test`, self-signed.
fn certificate_document() -> serde_json::Value {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["site.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    serde_json::json!({
        "apiVersion": "gw/v1",
        "kind": "Certificate",
        "metadata": {"name": "site"},
        "spec": {"certificate": cert.pem(), "privateKey": key.serialize_pem()},
    })
}

/// A certificate's private key is stored sealed: the database row, and the change log
/// runtimes are fed from, never hold it in the clear; reads show the certificate without it.
#[tokio::test]
async fn certificate_keys_are_sealed_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));
    let document = certificate_document();
    let (status, body) = send(
        &state,
        Request::put("/api/v1/certificates/site")
            .header("content-type", "application/json")
            .body(Body::from(document.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["serverNames"], serde_json::json!(["site.test"]));

    let row = store
        .get_resource("certificate", "site")
        .await
        .unwrap()
        .unwrap();
    let stored = row.spec["spec"]["privateKey"].as_str().unwrap();
    assert!(stored.starts_with("gw-sealed:v1:"), "{stored}");
    assert!(!row.spec.to_string().contains("PRIVATE KEY"));
    let logged = store.changes_since(0, 10).await.unwrap();
    assert!(!format!("{logged:?}").contains("PRIVATE KEY"));
    // it opens with the key, for this resource only
    let opened = state.sealer.open_certificate(&row.spec, "site").unwrap();
    assert_eq!(opened["spec"]["privateKey"], document["spec"]["privateKey"]);
    assert!(state.sealer.open_certificate(&row.spec, "other").is_err());

    let (status, list) = send(
        &state,
        Request::get("/api/v1/certificates")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["items"][0]["serverNames"],
        serde_json::json!(["site.test"])
    );
    assert!(list["items"][0].get("error").is_none(), "{list}");
    let (status, shown) = send(
        &state,
        Request::get("/api/v1/certificates/site")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown["spec"].get("privateKey").is_none(), "{shown}");
}

/// A controller whose encryption key differs from the one that sealed a certificate does not
/// start with a state that lacks it: loading fails and says which key is wrong.
#[tokio::test]
async fn a_controller_with_another_key_refuses_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));
    let document = certificate_document();
    let (status, _) = send(
        &state,
        Request::put("/api/v1/certificates/site")
            .header("content-type", "application/json")
            .body(Body::from(document.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let same = DesiredState::new(100);
    gw_controller::watcher::load(&store, &same, support::opener(&state))
        .await
        .unwrap();
    assert_eq!(same.snapshot("default").1.len(), 1);

    let other = Sealer::new(&EncryptionKey::from_bytes([8; 32]));
    let opener = gw_controller::watcher::Opener { sealer: &other };
    let err = gw_controller::watcher::load(&store, &DesiredState::new(100), opener)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("GW_ENCRYPTION_KEY"), "{err}");
    assert!(err.to_string().contains("\"site\""), "{err}");
}

#[tokio::test]
async fn policies_are_listed_with_their_schemas_and_their_params_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = state(Some(sqlite(&dir).await));
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    let (status, body) = send(&state, get("/api/v1/policies")).await;
    assert_eq!(status, StatusCode::OK);
    let items = body["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|p| p["name"] == "request-headers" && p["phase"] == "transform"),
        "{body}"
    );
    let (status, body) = send(&state, get("/api/v1/policies/request-headers")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["paramsSchema"]["properties"]["set"].is_object(),
        "{body}"
    );
    let (status, body) = send(&state, get("/api/v1/policies/nope")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // params are checked at deploy time with their field paths; nothing is stored
    let doc = format!(
        "{}  policies:\n    - name: request-headers\n      params: {{set: {{x-t: '${{nope}}'}}, extra: 1}}\n",
        api("p", "/p", "[default]")
    );
    let (status, body) = send(&state, put("/api/v1/apis/p", doc)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(
        fields,
        [
            "spec.policies[0].params.extra",
            "spec.policies[0].params.set.x-t"
        ],
        "{body}"
    );
    let (status, _) = send(&state, get("/api/v1/apis/p")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn json_request(method: &str, path: &str, body: &serde_json::Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn put_json(path: &str, body: &serde_json::Value) -> Request<Body> {
    json_request("PUT", path, body)
}

fn post_json(path: &str, body: &serde_json::Value) -> Request<Body> {
    json_request("POST", path, body)
}

/// The fields of an error's details.
fn detail_fields(body: &serde_json::Value) -> Vec<&str> {
    body["error"]["details"]
        .as_array()
        .map(|details| details.iter().filter_map(|d| d["field"].as_str()).collect())
        .unwrap_or_default()
}

/// A consumer document with these credentials.
fn consumer(name: &str, credentials: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": name},
        "spec": {"credentials": credentials}
    })
}

/// The stored (sealed) consumer.
async fn stored(store: &Arc<dyn Store>, name: &str) -> serde_json::Value {
    store
        .get_resource("consumer", name)
        .await
        .unwrap()
        .unwrap()
        .spec
}

/// Asserts that no read shows a secret or a hash: neither the fields nor `secrets`.
async fn assert_reads_hide(state: &Arc<AppState>, name: &str, secrets: &[&str]) {
    let path = format!("/api/v1/consumers/{name}");
    let yaml = Request::get(&path)
        .header("accept", "application/yaml")
        .body(Body::empty())
        .unwrap();
    for request in [get(&path), yaml, get("/api/v1/consumers")] {
        let (status, _, text) = send_raw(state, request).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        for hidden in [
            "keyHash",
            "passwordHash",
            "\"key\"",
            "password:",
            "\"password\"",
            "sha256:",
            "$argon2",
        ]
        .iter()
        .chain(secrets)
        {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
    }
}

#[tokio::test]
async fn consumers_are_stored_sealed_and_generated_keys_are_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));
    let yaml = "apiVersion: gw/v1\nkind: Consumer\nmetadata: {name: alice}\nspec:\n  aclGroups: [gold]\n  credentials:\n    - {type: api-key, id: generated}\n    - {type: api-key, id: given, key: alice-given-key-0123}\n    - {type: basic-auth, id: pw, username: alice, password: 'correct horse'}\n    - {type: jwt, id: sso, subject: alice@example.com}\n";
    let (status, headers, text) = send_raw(&state, put("/api/v1/consumers/alice", yaml)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(headers["location"], "/api/v1/consumers/alice");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let generated = body["generatedKeys"].as_array().unwrap();
    assert_eq!(generated.len(), 1, "{body}");
    assert_eq!(generated[0]["id"], "generated");
    let key = generated[0]["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("gwk_"), "{key}");
    assert_eq!(body["aclGroups"], serde_json::json!(["gold"]));
    assert_eq!(body["credentials"].as_array().unwrap().len(), 4);
    for hidden in [
        "keyHash",
        "passwordHash",
        "alice-given-key",
        "correct horse",
    ] {
        assert!(!text.contains(hidden), "{hidden} in {text}");
    }

    // stored, and in the change log runtimes are fed from: hashes only
    let row = stored(&store, "alice").await;
    let credentials = &row["spec"]["credentials"];
    assert_eq!(
        credentials[0]["keyHash"],
        gw_core::model::api_key_hash(&key)
    );
    assert_eq!(
        credentials[1]["keyHash"],
        gw_core::model::api_key_hash("alice-given-key-0123")
    );
    let hash = credentials[2]["passwordHash"].as_str().unwrap();
    assert!(gw_core::credential::verify_password(b"correct horse", hash));
    let logged = format!("{:?}", store.changes_since(0, 10).await.unwrap());
    for secret in [key.as_str(), "alice-given-key-0123", "correct horse"] {
        assert!(!row.to_string().contains(secret));
        assert!(!logged.contains(secret));
    }
    // the desired state sends it to the runtimes of its groups, sealed
    let desired = DesiredState::new(100);
    gw_controller::watcher::load(&store, &desired, support::opener(&state))
        .await
        .unwrap();
    let (_, resources) = desired.snapshot("default");
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0].kind, gw_sync::KIND_CONSUMER);
    let sent = String::from_utf8(resources[0].body.clone()).unwrap();
    assert!(sent.contains("keyHash") && !sent.contains(&key), "{sent}");
    assert!(desired.snapshot("edge").1.is_empty());

    // the key is never shown again
    assert_reads_hide(&state, "alice", &[&key, "alice-given-key", "correct horse"]).await;
    let (status, _, text) = send_raw(&state, get("/api/v1/consumers/alice")).await;
    assert_eq!(status, StatusCode::OK);
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["spec"]["credentials"][2]["username"], "alice");
    assert_eq!(
        shown["spec"]["credentials"][3]["subject"],
        "alice@example.com"
    );

    // POST creates, and refuses a taken name
    let bob = consumer("bob", &serde_json::json!([{"type": "api-key", "id": "k"}]));
    let (status, body) = send(&state, post_json("/api/v1/consumers", &bob)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["generatedKeys"][0]["id"], "k");
    let (status, body) = send(&state, post_json("/api/v1/consumers", &bob)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_exists");
    let (status, body) = send(&state, get("/api/v1/consumers")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revision"], 2);
    assert_eq!(body["items"].as_array().unwrap().len(), 2);

    // delete
    let delete = Request::delete("/api/v1/consumers/bob?wait=applied")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&state, delete).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], true);
    let (status, body) = send(&state, get("/api/v1/consumers/bob")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let delete = Request::delete("/api/v1/consumers/bob")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&state, delete).await.0, StatusCode::NOT_FOUND);

    let (status, body) = send(&state, get("/api/v1/schema/consumer")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["title"], "gw consumer");
}

#[tokio::test]
async fn get_edit_put_keeps_the_stored_keys_and_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));
    let alice = consumer(
        "alice",
        &serde_json::json!([
            {"type": "api-key", "id": "k"},
            {"type": "basic-auth", "id": "pw", "username": "alice", "password": "correct horse"}
        ]),
    );
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &alice)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before = stored(&store, "alice").await;

    // GET, edit, PUT with the ETag: nothing regenerated, nothing rehashed
    let (_, headers, text) = send_raw(&state, get("/api/v1/consumers/alice")).await;
    let mut edited: serde_json::Value = serde_json::from_str(&text).unwrap();
    edited["spec"]["aclGroups"] = serde_json::json!(["gold"]);
    let mut request = put_json("/api/v1/consumers/alice", &edited);
    request
        .headers_mut()
        .insert("if-match", headers["etag"].clone());
    let (status, body) = send(&state, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("generatedKeys").is_none(), "{body}");
    let after = stored(&store, "alice").await;
    assert_eq!(after["spec"]["aclGroups"], serde_json::json!(["gold"]));
    assert_eq!(
        after["spec"]["credentials"], before["spec"]["credentials"],
        "the stored keyHash and passwordHash are unchanged"
    );

    // the same through YAML, without If-Match
    let yaml = Request::get("/api/v1/consumers/alice")
        .header("accept", "application/yaml")
        .body(Body::empty())
        .unwrap();
    let (_, _, text) = send_raw(&state, yaml).await;
    let (status, body) = send(&state, put("/api/v1/consumers/alice", text)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        stored(&store, "alice").await["spec"]["credentials"],
        before["spec"]["credentials"]
    );

    // a stale ETag
    let mut request = put_json("/api/v1/consumers/alice", &edited);
    request
        .headers_mut()
        .insert("if-match", headers["etag"].clone());
    let (status, body) = send(&state, request).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");

    // a renamed basic-auth user needs its password; nothing is written
    let mut renamed = edited.clone();
    renamed["spec"]["credentials"][1]["username"] = "alicia".into();
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &renamed)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let details = &body["error"]["details"];
    assert_eq!(
        details[0]["field"], "spec.credentials[1].password",
        "{body}"
    );
    assert!(
        details[0]["message"].as_str().unwrap().contains("username"),
        "{body}"
    );
    // with the password it is fine
    renamed["spec"]["credentials"][1]["password"] = "another horse".into();
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &renamed)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // an api-key whose id changed is a new credential: a new key, shown once
    let mut new_id = edited;
    new_id["spec"]["credentials"] = serde_json::json!([{"type": "api-key", "id": "k2"}]);
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &new_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["generatedKeys"][0]["id"], "k2");
    assert_ne!(
        stored(&store, "alice").await["spec"]["credentials"][0]["keyHash"],
        before["spec"]["credentials"][0]["keyHash"]
    );
}

#[tokio::test]
async fn a_credential_belongs_to_one_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = state(Some(sqlite(&dir).await));
    let alice = consumer(
        "alice",
        &serde_json::json!([
            {"type": "api-key", "id": "k", "key": "the-shared-key-0123"},
            {"type": "basic-auth", "id": "pw", "username": "alice", "passwordHash": "$2b$04$abcdefghijklmnopqrstuuHdZUpzlAKgZ8uWFxTQXYIHjGhsQUjkS"},
            {"type": "jwt", "id": "sso", "subject": "alice@example.com"}
        ]),
    );
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &alice)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // alice may write her own credentials again
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for (credential, what) in [
        (
            serde_json::json!({"type": "api-key", "id": "k", "key": "the-shared-key-0123"}),
            "API key",
        ),
        (
            serde_json::json!({"type": "basic-auth", "id": "pw", "username": "alice", "password": "bobs password"}),
            "user name",
        ),
        (
            serde_json::json!({"type": "jwt", "id": "sso", "subject": "alice@example.com"}),
            "JWT",
        ),
    ] {
        let bob = consumer(
            "bob",
            &serde_json::json!([{"type": "jwt", "id": "own", "subject": "bob"}, credential]),
        );
        let (status, _, text) = send_raw(&state, put_json("/api/v1/consumers/bob", &bob)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "credential_conflict", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"alice\""),
            "{body}"
        );
        assert_eq!(
            body["error"]["details"][0]["field"], "spec.credentials[1]",
            "{body}"
        );
        assert!(
            body["error"]["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains(what),
            "{body}"
        );
        assert!(!text.contains("the-shared-key"), "{text}");
    }
    let (status, _) = send(&state, get("/api/v1/consumers/bob")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");

    // nor through the credentials endpoint
    let bob = consumer("bob", &serde_json::json!([]));
    let (status, body) = send(&state, put_json("/api/v1/consumers/bob", &bob)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &state,
        post_json(
            "/api/v1/consumers/bob/credentials",
            &serde_json::json!({"type": "api-key", "id": "k", "key": "the-shared-key-0123"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "credential_conflict");
    assert_eq!(body["error"]["details"][0]["field"], "", "{body}");
}

#[tokio::test]
async fn credentials_are_added_and_revoked_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));
    let alice = consumer(
        "alice",
        &serde_json::json!([{"type": "jwt", "id": "sso", "subject": "alice"}]),
    );
    let (status, _) = send(&state, put_json("/api/v1/consumers/alice", &alice)).await;
    assert_eq!(status, StatusCode::CREATED);

    let add = |body: serde_json::Value| {
        post_json("/api/v1/consumers/alice/credentials?wait=applied", &body)
    };
    let (status, headers, text) = send_raw(
        &state,
        add(serde_json::json!({"type": "api-key", "id": "k2"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(headers["etag"], "\"2\"");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = body["key"].as_str().unwrap().to_string();
    assert_eq!(
        body["credential"],
        serde_json::json!({"type": "api-key", "id": "k2"})
    );
    assert_eq!(body["applied"], serde_json::json!([]));
    let row = stored(&store, "alice").await;
    assert_eq!(
        row["spec"]["credentials"][1]["keyHash"],
        gw_core::model::api_key_hash(&key)
    );
    assert_eq!(
        row["spec"]["credentials"][0]["subject"], "alice",
        "the others stay"
    );
    assert_reads_hide(&state, "alice", &[&key]).await;

    // a taken id, an invalid credential (paths into the body), a stale If-Match
    let (status, body) = send(
        &state,
        add(serde_json::json!({"type": "jwt", "id": "k2", "subject": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = send(
        &state,
        add(serde_json::json!({"type": "basic-auth", "id": "b", "username": "a:b", "colour": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(fields, ["colour", "username", "password"], "{body}");
    let mut stale = add(serde_json::json!({"type": "jwt", "id": "j", "subject": "y"}));
    stale
        .headers_mut()
        .insert("if-match", "\"1\"".parse().unwrap());
    let (status, body) = send(&state, stale).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    let (status, _) = send(
        &state,
        post_json(
            "/api/v1/consumers/nobody/credentials",
            &serde_json::json!({"type": "jwt", "id": "j", "subject": "y"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // revoke
    let revoke = |path: &str| Request::delete(path).body(Body::empty()).unwrap();
    let (status, body) = send(
        &state,
        revoke("/api/v1/consumers/alice/credentials/k2?wait=applied"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revoked"], true);
    assert_eq!(body["revision"], 3);
    let row = stored(&store, "alice").await;
    assert_eq!(row["spec"]["credentials"].as_array().unwrap().len(), 1);
    assert_eq!(row["spec"]["credentials"][0]["id"], "sso");
    let (status, body) = send(&state, revoke("/api/v1/consumers/alice/credentials/k2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = send(&state, revoke("/api/v1/consumers/alice/credentials/Bad_Id")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "id");
}

#[tokio::test]
async fn bad_consumer_documents_give_field_paths_and_never_quote_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = state(Some(sqlite(&dir).await));
    let bad = serde_json::json!({
        "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
        "spec": {
            "aclGroups": ["Gold"],
            "credentials": [
                {"type": "api-key", "id": "k", "key": "short"},
                {"type": "jwt", "id": "j", "subject": "s", "password": "p"}
            ]
        }
    });
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(
        fields,
        [
            "spec.aclGroups[0]",
            "spec.credentials[0].key",
            "spec.credentials[1].password"
        ],
        "{body}"
    );

    // the name in the URL
    let other = consumer("bob", &serde_json::json!([]));
    let (status, body) = send(&state, put_json("/api/v1/consumers/alice", &other)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "metadata.name");

    // a password of the wrong type, and YAML that does not parse: no quote of either
    let typed = consumer(
        "alice",
        &serde_json::json!([{"type": "basic-auth", "id": "b", "username": "a", "password": 987_654_321}]),
    );
    let (status, _, text) = send_raw(&state, put_json("/api/v1/consumers/alice", &typed)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("spec.credentials[0].password"), "{text}");
    assert!(!text.contains("987654321"), "{text}");
    let broken = "apiVersion: gw/v1\nkind: Consumer\nmetadata: {name: alice}\nspec:\n  credentials:\n    - {type: basic-auth, id: b, username: a, password: 'a very secret one'\n";
    let (status, _, text) = send_raw(&state, put("/api/v1/consumers/alice", broken)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text.contains("invalid_document") && text.contains("line"),
        "{text}"
    );
    assert!(!text.contains("very secret"), "{text}");
    let (status, _) = send(&state, get("/api/v1/consumers/alice")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_generated_key_is_shown_even_when_waiting_for_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));
    // a connected runtime of the group that never applies anything
    store
        .register_runtime(&runtime("slow", "default", 0))
        .await
        .unwrap();
    let document = consumer("acme", &serde_json::json!([{"type": "api-key", "id": "k"}]));
    let (status, body) = send(
        &state,
        put_json(
            "/api/v1/consumers/acme?wait=applied&timeout=300ms",
            &document,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "apply_timeout");
    let key = body["generatedKeys"][0]["key"].as_str().unwrap_or_default();
    assert!(
        key.starts_with("gwk_"),
        "the committed key must be shown: {body}"
    );
    // and it is the stored one
    let stored = stored(&store, "acme").await;
    let hash = stored["spec"]["credentials"][0]["keyHash"]
        .as_str()
        .unwrap();
    assert_eq!(hash, gw_core::model::api_key_hash(key));

    let (status, body) = send(
        &state,
        post_json(
            "/api/v1/consumers/acme/credentials?wait=applied&timeout=300ms",
            &serde_json::json!({"type": "api-key", "id": "k2"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        body["key"].as_str().is_some_and(|k| k.starts_with("gwk_")),
        "{body}"
    );
}

/// The lines of `/metrics` that start with `prefix`.
fn series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The value of the series named exactly `name_and_labels`.
fn value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// `/metrics` counts admin requests by route template, never by raw path, and reads the
/// change feed's lag and the fleet by group and state from the store at the scrape.
#[tokio::test]
async fn metrics_count_requests_by_route_and_read_the_feed_and_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = state(Some(Arc::clone(&store)));

    let requests = [
        (get("/api/v1/apis/missing-api"), 404),
        (put("/api/v1/apis/bad", "spec: [not an api"), 400),
        (put("/api/v1/apis/a", api("a", "/a", "[default]")), 201),
        (put("/api/v1/apis/b", api("b", "/b", "[default]")), 201),
        (get("/no/such/path"), 404),
        (get("/api/v1/no-such-thing"), 404),
        (
            Request::patch("/api/v1/apis/a")
                .body(Body::empty())
                .unwrap(),
            405,
        ),
        (get("/api/v1/apis"), 200),
    ];
    for (request, expected) in requests {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body) = send(&state, request).await;
        assert_eq!(status.as_u16(), expected, "{what}: {body}");
    }

    // the fleet as controllers record it: two connected runtimes of `default`, one a revision
    // behind; a stale and a disconnected one of `edge`; one refused whose group is not a name
    let mut stale = runtime("rt-stale", "edge", 2);
    stale.last_seen = Utc::now() - chrono::Duration::hours(1);
    let mut gone = runtime("rt-gone", "edge", 2);
    gone.connected = false;
    for record in [
        runtime("rt-current", "default", 2),
        runtime("rt-behind", "default", 1),
        stale,
        gone,
    ] {
        assert!(store.register_runtime(&record).await.unwrap());
    }
    let mut refused = runtime("rt-refused", "Not A Group\"}", 0);
    refused.connected = false;
    refused.refused = Some("protocol version 99 is not supported".into());
    assert!(store.record_refusal(&refused, Utc::now()).await.unwrap());

    let (status, headers, text) = send_raw(&state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[axum::http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{headers:?}"
    );

    let route = "route=\"/api/v1/apis/{name}\"";
    for (labels, count) in [
        (format!("{route},method=\"GET\",status=\"404\""), 1.0),
        (format!("{route},method=\"PUT\",status=\"400\""), 1.0),
        (format!("{route},method=\"PUT\",status=\"201\""), 2.0),
        (format!("{route},method=\"PATCH\",status=\"405\""), 1.0),
        (
            "route=\"/api/v1/apis\",method=\"GET\",status=\"200\"".to_string(),
            1.0,
        ),
        (
            "route=\"unmatched\",method=\"GET\",status=\"404\"".to_string(),
            2.0,
        ),
    ] {
        let name = format!("gw_admin_requests_total{{{labels}}}");
        assert_eq!(value(&text, &name), Some(count), "{name}:\n{text}");
    }
    // six series, no more: the raw paths never became labels
    assert_eq!(series(&text, "gw_admin_requests_total{").len(), 6, "{text}");
    assert!(
        !text.contains("missing-api") && !text.contains("no-such"),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("gw_admin_request_duration_seconds_count{{{route},method=\"PUT\"}}")
        ),
        Some(3.0),
        "{text}"
    );

    // the store: two writes (the 400 never reached it), no failures, the pool
    assert_eq!(
        value(
            &text,
            "gw_store_operation_duration_seconds_count{operation=\"put_api\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        series(&text, "gw_store_errors_total{")
            .iter()
            .all(|l| l.ends_with(" 0")),
        "{text}"
    );
    assert_eq!(value(&text, "gw_store_pool_max_connections"), Some(8.0));
    let idle = value(&text, "gw_store_pool_connections{state=\"idle\"}").unwrap();
    let in_use = value(&text, "gw_store_pool_connections{state=\"in_use\"}").unwrap();
    assert!(idle + in_use >= 1.0 && idle + in_use <= 8.0, "{text}");

    // no watcher runs here: the desired state is still at revision 0, two behind the store
    assert_eq!(value(&text, "gw_store_revision"), Some(2.0), "{text}");
    assert_eq!(value(&text, "gw_controller_revision"), Some(0.0), "{text}");
    assert_eq!(
        value(&text, "gw_controller_feed_lag_revisions"),
        Some(2.0),
        "{text}"
    );
    let lag_seconds = value(&text, "gw_controller_feed_lag_seconds").unwrap();
    assert!((0.0..60.0).contains(&lag_seconds), "{text}");

    for (group, state, count) in [
        ("default", "connected", 2.0),
        ("default", "stale", 0.0),
        ("default", "disconnected", 0.0),
        ("default", "refused", 0.0),
        ("edge", "connected", 0.0),
        ("edge", "stale", 1.0),
        ("edge", "disconnected", 1.0),
        ("edge", "refused", 0.0),
        ("_invalid", "connected", 0.0),
        ("_invalid", "refused", 1.0),
    ] {
        let name = format!("gw_fleet_runtimes{{group=\"{group}\",state=\"{state}\"}}");
        assert_eq!(value(&text, &name), Some(count), "{name}:\n{text}");
    }
    assert_eq!(series(&text, "gw_fleet_runtimes{").len(), 12, "{text}");
    assert!(!text.contains("Not A Group"), "{text}");
    // only connected runtimes count: the stale one is not behind, it is silent
    assert_eq!(
        value(&text, "gw_fleet_revision_lag_max{group=\"default\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "gw_fleet_revision_lag_max{group=\"edge\"}"),
        Some(0.0),
        "{text}"
    );
}

/// Before the store is open, `/metrics` answers with what it knows, and nothing read from
/// the store.
#[tokio::test]
async fn metrics_without_a_store_leave_out_what_the_store_tells() {
    let (state, _stop) = state(None);
    let (status, _, text) = send_raw(&state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    for absent in [
        "gw_store_revision",
        "gw_controller_revision",
        "gw_controller_feed_lag",
        "gw_fleet_runtimes",
        "gw_store_pool",
    ] {
        assert!(series(&text, absent).is_empty(), "{absent}:\n{text}");
    }
    // the store's error series exist from the start
    assert_eq!(
        value(
            &text,
            "gw_store_errors_total{operation=\"ping\",kind=\"unavailable\"}"
        ),
        Some(0.0),
        "{text}"
    );
}

/// The hash of the cluster CA the enrollment tests' controller serves.
fn sync_ca() -> gw_sync::pki::CaHash {
    gw_sync::pki::CaHash::of_spki(b"the cluster CA's public key")
}

/// A controller on a SQLite store that serves sync TLS from the cluster CA.
async fn enrolling(dir: &tempfile::TempDir) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    let (state, stop) = state(Some(sqlite(dir).await));
    state.sync_ca.set(sync_ca()).unwrap();
    (state, stop)
}

fn delete(path: &str) -> Request<Body> {
    Request::delete(path).body(Body::empty()).unwrap()
}

/// `POST /api/v1/enrollment-tokens` with `body`.
fn create_token(body: &serde_json::Value) -> Request<Body> {
    post_json("/api/v1/enrollment-tokens", body)
}

/// The token `id` as `GET /api/v1/enrollment-tokens` lists it.
async fn listed_token(state: &Arc<AppState>, id: &str) -> serde_json::Value {
    let (status, body) = send(state, get("/api/v1/enrollment-tokens")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {body}"))
}

#[tokio::test]
async fn an_enrollment_token_is_shown_once_and_listed_without_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = enrolling(&dir).await;
    let before = Utc::now();
    let request = serde_json::json!({
        "group": "edge",
        "ttl": "7d",
        "uses": 3,
        "description": "the Paris racks",
    });
    let (status, headers, text) = send_raw(&state, create_token(&request)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(headers["cache-control"], "no-store");
    let created: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token: gw_sync::enroll::EnrollmentToken =
        created["token"].as_str().unwrap().parse().unwrap();
    assert_eq!(token.ca_hash(), sync_ca());
    assert_eq!(created["caHash"], sync_ca().to_string());
    assert_eq!(created["id"], token.id());
    assert_eq!(created["group"], "edge");
    assert_eq!(created["uses"], 3);
    assert_eq!(created["usesLeft"], 3);
    assert_eq!(created["state"], "active");
    assert_eq!(created["description"], "the Paris racks");
    let expires: chrono::DateTime<Utc> =
        serde_json::from_value(created["expiresAt"].clone()).unwrap();
    let lifetime = expires - before;
    assert!(
        lifetime >= chrono::Duration::days(7)
            && lifetime < chrono::Duration::days(7) + chrono::Duration::minutes(1),
        "{created}"
    );

    // the store keeps the secret's hash, against which the token's secret checks
    let store = state.store.get().unwrap();
    // (for its group only)
    let refusal = store
        .use_enrollment_token(token.id(), &token.secret_hash(), "core", Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(&refusal, gw_store::TokenRefusal::OtherGroup(group) if group == "edge"),
        "{refusal}"
    );
    store
        .use_enrollment_token(token.id(), &token.secret_hash(), "edge", Utc::now())
        .await
        .unwrap();

    // listed with its state, never with its secret or its hash
    let listed = listed_token(&state, token.id()).await;
    assert_eq!(listed["state"], "active");
    assert_eq!(
        (&listed["uses"], &listed["used"], &listed["usesLeft"]),
        (
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(2)
        )
    );
    assert_eq!(listed["expiresAt"], created["expiresAt"]);
    assert_eq!(listed["createdAt"], created["createdAt"]);
    assert_eq!(listed["description"], "the Paris racks");
    let (_, _, list_text) = send_raw(&state, get("/api/v1/enrollment-tokens")).await;
    let secret = created["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(2)
        .unwrap();
    for hidden in [secret, token.secret_hash().as_str(), "token\""] {
        assert!(!list_text.contains(hidden), "{hidden}: {list_text}");
    }

    // the defaults: one use, a day
    let (status, body) = send(&state, create_token(&serde_json::json!({"group": "core"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["uses"], 1);
    assert_eq!(body["description"], serde_json::Value::Null);
    let created_at: chrono::DateTime<Utc> =
        serde_json::from_value(body["createdAt"].clone()).unwrap();
    let expires_at: chrono::DateTime<Utc> =
        serde_json::from_value(body["expiresAt"].clone()).unwrap();
    assert_eq!(expires_at - created_at, chrono::Duration::hours(24));
    // a used-up token reads so
    let token: gw_sync::enroll::EnrollmentToken = body["token"].as_str().unwrap().parse().unwrap();
    store
        .use_enrollment_token(token.id(), &token.secret_hash(), "core", Utc::now())
        .await
        .unwrap();
    let used = listed_token(&state, token.id()).await;
    assert_eq!(
        (&used["state"], &used["usesLeft"]),
        (&serde_json::json!("used"), &serde_json::json!(0))
    );
}

#[tokio::test]
async fn enrollment_token_requests_are_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = enrolling(&dir).await;
    let cases = [
        (
            serde_json::json!({"group": "Edge"}),
            "group",
            "not a valid name",
        ),
        (
            serde_json::json!({"group": ""}),
            "group",
            "must not be empty",
        ),
        (
            serde_json::json!({"group": "edge", "ttl": "30s"}),
            "ttl",
            "between 1m and 30d",
        ),
        (
            serde_json::json!({"group": "edge", "ttl": "31d"}),
            "ttl",
            "between 1m and 30d",
        ),
        (
            serde_json::json!({"group": "edge", "ttl": "soon"}),
            "ttl",
            "not a duration",
        ),
        (
            serde_json::json!({"group": "edge", "uses": 0}),
            "uses",
            "between 1 and 10000",
        ),
        (
            serde_json::json!({"group": "edge", "uses": 10_001}),
            "uses",
            "between 1 and 10000",
        ),
        (
            serde_json::json!({"group": "edge", "description": "x".repeat(257)}),
            "description",
            "the limit is 256",
        ),
    ];
    for (request, field, reason) in cases {
        let (status, body) = send(&state, create_token(&request)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        assert_eq!(detail_fields(&body), [field], "{request}: {body}");
        let message = body["error"]["details"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{request}: {message}");
    }
    // every problem at once
    let (status, body) = send(
        &state,
        create_token(&serde_json::json!({"group": "-", "ttl": "1w", "uses": -1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(detail_fields(&body), ["group", "ttl", "uses"], "{body}");
    // 256 characters are enough, counted as characters
    let (status, body) = send(
        &state,
        create_token(&serde_json::json!({"group": "edge", "description": "é".repeat(256)})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // a body that does not read as the request: said, with the shape expected
    let refused = [
        (
            serde_json::json!({"group": "edge", "groups": ["a"]}),
            "unknown field `groups`",
        ),
        (serde_json::json!({"ttl": "1h"}), "missing field `group`"),
        (
            serde_json::json!({"group": "edge", "uses": "two"}),
            "invalid type",
        ),
        (serde_json::json!(["edge"]), "not an object"),
    ];
    for (request, reason) in refused {
        let (status, body) = send(&state, create_token(&request)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(body["error"]["code"], "invalid_document", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{request}: {message}");
    }
    let (status, body) = send(
        &state,
        Request::post("/api/v1/enrollment-tokens")
            .header("content-type", "application/json")
            .body(Body::from("{\"group\":"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_document", "{body}");
    // nothing refused was stored
    let (_, body) = send(&state, get("/api/v1/enrollment-tokens")).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn a_revoked_enrollment_token_is_listed_so_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = enrolling(&dir).await;
    let (_, created) = send(&state, create_token(&serde_json::json!({"group": "edge"}))).await;
    let token: gw_sync::enroll::EnrollmentToken =
        created["token"].as_str().unwrap().parse().unwrap();
    let path = format!("/api/v1/enrollment-tokens/{}", token.id());
    let (status, _, text) = send_raw(&state, delete(&path)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert!(text.is_empty(), "{text}");
    let listed = listed_token(&state, token.id()).await;
    assert_eq!(listed["state"], "revoked");
    assert!(listed["revokedAt"].is_string(), "{listed}");
    // revoking again is harmless
    assert_eq!(send(&state, delete(&path)).await.0, StatusCode::NO_CONTENT);
    let refusal = state
        .store
        .get()
        .unwrap()
        .use_enrollment_token(token.id(), &token.secret_hash(), "edge", Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, gw_store::TokenRefusal::Revoked),
        "{refusal}"
    );

    let (status, body) = send(&state, delete("/api/v1/enrollment-tokens/0123456789abcdef")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

/// A controller that does not serve sync TLS from the cluster CA has no hash to put in a
/// token: it makes none, and says why.
#[tokio::test]
async fn without_the_cluster_ca_no_enrollment_token_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = state(Some(sqlite(&dir).await));
    let (status, body) = send(&state, create_token(&serde_json::json!({"group": "edge"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "enrollment_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("internal CA"), "{message}");
    let (status, body) = send(&state, get("/api/v1/enrollment-tokens")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"], serde_json::json!([]));
}

#[tokio::test]
async fn deleting_a_runtime_revokes_its_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = enrolling(&dir).await;
    let store = Arc::clone(state.store.get().unwrap());
    // a runtime that connected without enrolling (its own certificate, or no TLS)
    store
        .register_runtime(&runtime("rt-byo", "edge", 0))
        .await
        .unwrap();
    let (status, body) = send(&state, delete("/api/v1/runtimes/rt-byo")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no enrollment"), "{message}");

    let now = Utc::now();
    store
        .enroll_runtime(&gw_store::EnrollmentRecord::new(
            "rt-1",
            "edge",
            "01",
            now + chrono::Duration::hours(24),
            None,
            now,
        ))
        .await
        .unwrap();
    store
        .register_runtime(&runtime("rt-1", "edge", 0))
        .await
        .unwrap();
    let (status, _, text) = send_raw(&state, delete("/api/v1/runtimes/rt-1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let enrollments = store.runtime_enrollments().await.unwrap();
    assert!(enrollments[0].revoked_at.is_some(), "{enrollments:?}");
    assert!(
        !store
            .renew_runtime("rt-1", "01", "02", now, now)
            .await
            .unwrap()
            .renewed()
    );
    // the fleet view still lists both
    let (status, body) = send(&state, get("/api/v1/runtimes")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 2, "{body}");

    // forgotten, the node id may enroll again; twice is a 404
    let (status, _, text) = send_raw(&state, delete("/api/v1/runtimes/rt-1/enrollment")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert!(store.runtime_enrollments().await.unwrap().is_empty());
    let (status, body) = send(&state, delete("/api/v1/runtimes/rt-1/enrollment")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// The enrollment calls need the admin token like every other call under /api/v1.
#[tokio::test]
async fn enrollment_calls_need_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, _stop) = enrolling(&dir).await;
    Arc::get_mut(&mut state).unwrap().token = Some(gw_controller::keys::AdminToken::new(
        "a-long-enough-admin-token",
    ));
    let body = serde_json::json!({"group": "edge"});
    let requests = || {
        [
            create_token(&body),
            get("/api/v1/enrollment-tokens"),
            delete("/api/v1/enrollment-tokens/0123456789abcdef"),
            delete("/api/v1/runtimes/rt-1"),
            delete("/api/v1/runtimes/rt-1/enrollment"),
        ]
    };
    for request in requests() {
        let path = request.uri().to_string();
        let (status, body) = send(&state, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let (_, body) = send(&state, get("/api/v1/enrollment-tokens")).await;
    assert_eq!(body["error"]["code"], "unauthorized");
    for mut request in requests() {
        request.headers_mut().insert(
            "authorization",
            "Bearer a-long-enough-admin-token".parse().unwrap(),
        );
        let path = request.uri().to_string();
        let (status, body) = send(&state, request).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
}
