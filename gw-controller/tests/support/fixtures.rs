//! Fixtures of the tests of identities, roles and the audit log: a controller with
//! `GW_ADMIN_TOKEN` and a cluster CA, calls with a bearer token, and documents of each kind.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gw_controller::admin::AppState;
use gw_controller::keys::AdminToken;
use gw_store::Store;
use serde_json::{Value, json};

use crate::support::{app_state, send};

/// `GW_ADMIN_TOKEN` of the tests' controller.
pub(crate) const BREAK_GLASS: &str = "the-break-glass-token-0123";

/// A controller on `store` with `GW_ADMIN_TOKEN`, serving sync TLS from a cluster CA (so
/// that enrollment tokens can be made).
pub(crate) fn controller(
    store: Arc<dyn Store>,
) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    let (state, stop) = app_state(Some(store), None, Some(AdminToken::new(BREAK_GLASS)));
    state
        .sync_ca
        .set(gw_sync::pki::CaHash::of_spki(
            b"the cluster CA's public key",
        ))
        .unwrap();
    (state, stop)
}

/// `method path` with `token` as bearer and `body` as JSON.
pub(crate) fn call(method: &str, path: &str, token: &str, body: Option<&Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

/// Makes a token through the API as the break-glass admin; its text.
pub(crate) async fn make_token(state: &Arc<AppState>, body: &Value) -> String {
    let (status, answer) = send(
        state,
        call("POST", "/api/v1/tokens", BREAK_GLASS, Some(body)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["token"].as_str().unwrap().to_string()
}

pub(crate) fn api(name: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "gw/v1", "kind": "Api", "metadata": {"name": name},
        "spec": {"context": format!("/{name}"), "groups": groups,
                 "upstream": {"endpoints": [{"url": "http://127.0.0.1:9"}]}},
    })
}

pub(crate) fn certificate(name: &str, groups: &[&str]) -> Value {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    json!({
        "apiVersion": "gw/v1", "kind": "Certificate", "metadata": {"name": name},
        "spec": {"groups": groups, "certificate": cert.pem(), "privateKey": key.serialize_pem()},
    })
}

pub(crate) fn consumer(name: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": name},
        "spec": {"groups": groups,
                 "credentials": [{"type": "jwt", "id": "sso", "subject": format!("{name}@example.com")}]},
    })
}
