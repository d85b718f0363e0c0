//! The admin API in process, on a SQLite store: the paths that are awkward to reach through
//! a real process (no store yet, streamed bodies, runtimes that lag or reject).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use gw_controller::admin::{self, AdminOptions, AppState};
use gw_controller::keys::EncryptionKey;
use gw_controller::sealed::Sealer;
use gw_core::policy::PolicyRegistry;
use gw_store::{RuntimeRecord, Store, StoreOptions};
use gw_sync::state::DesiredState;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The handlers' state, and the sender that signals the controller's shutdown.
fn state(store: Option<Arc<dyn Store>>) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    let cell = OnceLock::new();
    let loaded = store.is_some();
    if let Some(store) = store {
        let _ = cell.set(store);
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        store: cell,
        loaded: AtomicBool::new(loaded),
        desired: Arc::new(DesiredState::new(100)),
        token: None,
        policies: PolicyRegistry::builtin(),
        controller_id: "ctl".into(),
        options: AdminOptions {
            max_body_bytes: 64 * 1024,
            default_wait: Duration::from_secs(30),
            max_wait: Duration::from_mins(1),
        },
        stopping,
        all_in_one: false,
        embedded: OnceLock::new(),
        sealer: Arc::new(Sealer::new(&EncryptionKey::from_bytes([7; 32]))),
    });
    (state, stop)
}

async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}/gw.db", dir.path().display());
    gw_store::open(&url, &StoreOptions::default())
        .await
        .unwrap()
}

async fn send(state: &Arc<AppState>, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = admin::router(Arc::clone(state))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
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
    // no connected runtime in the group: nothing to wait for
    let (status, body) = send(
        &state,
        put("/api/v1/apis/a?wait=applied", api("a", "/a", "[default]")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["applied"], serde_json::json!([]));

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
    gw_controller::watcher::load(&store, &same, &state.sealer)
        .await
        .unwrap();
    assert_eq!(same.snapshot("default").1.len(), 1);

    let other = Sealer::new(&EncryptionKey::from_bytes([8; 32]));
    let err = gw_controller::watcher::load(&store, &DesiredState::new(100), &other)
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
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
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
