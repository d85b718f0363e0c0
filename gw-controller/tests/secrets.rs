//! Secrets of API definitions at rest: sealed in the store (the row and the change log),
//! shown to no one (not even an admin), sent opened to runtimes; and a key rotation with a
//! reseal that takes no revision and loses no concurrent write. On PostgreSQL.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gw_controller::keys::EncryptionKey;
use gw_controller::reseal::{ResealReport, pending, reseal};
use gw_controller::sealed::{SealError, Sealer};
use gw_controller::watcher::Opener;
use gw_core::policy::PolicyRegistry;
use gw_store::testing::TestDatabase;
use gw_store::{ChangeOp, Store, StoreOptions};
use gw_sync::state::DesiredState;
use serde_json::{Value, json};

mod support;
use support::{app_state_sealed, send, send_raw};

/// The HS256 key (base64 of 36 bytes).
const HS256: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM0NTY3";
/// Every secret the API below holds, as written.
const SECRETS: [&str; 4] = [HS256, "redis-pass", "Bearer upstream-token", "op-key-0123"];

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn api() -> Value {
    json!({
        "apiVersion": "gw/v1",
        "kind": "Api",
        "metadata": {"name": "orders"},
        "spec": {
            "context": "/orders",
            "upstream": {"endpoints": [{"url": "http://127.0.0.1:9"}]},
            "policies": [
                {"name": "jwt", "params": {"algorithms": ["HS256"], "secret": HS256}},
                {"name": "rate-limit", "params": {
                    "limits": [{"requests": 10, "window": "second"}],
                    "backend": "redis",
                    "redis": {"url": "redis://:redis-pass@127.0.0.1:6379/0"},
                }},
                {"name": "request-headers", "params": {
                    "set": {"Authorization": "Bearer upstream-token", "x-team": "a"},
                }},
            ],
            "operations": [{"method": "GET", "path": "/items", "policies": [
                {"name": "request-headers", "params": {"set": {"x-api-key": "op-key-0123"}}},
            ]}],
        },
    })
}

async fn postgres() -> (TestDatabase, Arc<dyn Store>) {
    let db = TestDatabase::create().await;
    let store = gw_store::open(db.url(), &StoreOptions::default())
        .await
        .unwrap();
    (db, store)
}

async fn put(state: &Arc<gw_controller::admin::AppState>, document: &Value) -> (StatusCode, Value) {
    send(
        state,
        Request::put("/api/v1/apis/orders")
            .header("content-type", "application/json")
            .body(Body::from(document.to_string()))
            .unwrap(),
    )
    .await
}

/// The strings sealed in `spec`, with the key id each is sealed under.
fn sealed_values(spec: &Value) -> Vec<String> {
    match spec {
        Value::String(text) if Sealer::is_sealed(text) => vec![text.clone()],
        Value::Object(fields) => fields.values().flat_map(sealed_values).collect(),
        Value::Array(items) => items.iter().flat_map(sealed_values).collect(),
        _ => Vec::new(),
    }
}

/// What runtimes are sent of API `orders`, loaded as a controller with `opener` would.
async fn sent(store: &Arc<dyn Store>, opener: Opener<'_>) -> Result<Value, String> {
    let desired = DesiredState::new(100);
    gw_controller::watcher::load(store, &desired, opener)
        .await
        .map_err(|err| err.to_string())?;
    let (_, resources) = desired.snapshot("default");
    let api = resources.iter().find(|r| r.name == "orders").unwrap();
    Ok(serde_json::from_slice(&api.body).unwrap())
}

#[tokio::test]
async fn api_secrets_are_sealed_at_rest_shown_to_no_one_and_sent_opened() {
    let (_db, store) = postgres().await;
    let (state, _stop) =
        app_state_sealed(Some(Arc::clone(&store)), None, None, Sealer::new(&key(7)));
    let (status, body) = put(&state, &api()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // the answer to the write shows none of them
    for secret in SECRETS {
        assert!(!body.to_string().contains(secret), "{secret}: {body}");
    }

    // the row and the change log: each secret sealed, under key 7, and nothing in clear
    let row = store.get_api("orders").await.unwrap().unwrap();
    let changes = store.changes_since(0, 10).await.unwrap();
    let ChangeOp::Upsert(logged) = &changes[0].op else {
        panic!("an upsert")
    };
    let ours = Sealer::new(&key(7));
    for stored in [&row.spec, logged] {
        let text = stored.to_string();
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} stored in the clear: {text}"
            );
        }
        let sealed = sealed_values(stored);
        assert_eq!(sealed.len(), SECRETS.len(), "{text}");
        assert!(sealed.iter().all(|v| ours.is_current(v)), "{sealed:?}");
        // what is not secret is stored as it is
        assert_eq!(
            stored["spec"]["policies"][2]["params"]["set"]["x-team"],
            "a"
        );
        assert_eq!(
            stored["spec"]["policies"][1]["params"]["redis"]["url"]
                .as_str()
                .map(Sealer::is_sealed),
            Some(true)
        );
    }

    // reads, by an admin: a placeholder in each place, the rest as written
    let (status, _, text) = send_raw(
        &state,
        Request::get("/api/v1/apis/orders")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let shown: Value = serde_json::from_str(&text).unwrap();
    let policies = &shown["spec"]["policies"];
    assert_eq!(policies[0]["params"]["secret"], "<redacted>");
    assert_eq!(
        policies[1]["params"]["redis"]["url"],
        "redis://:<redacted>@127.0.0.1:6379/0"
    );
    assert_eq!(policies[2]["params"]["set"]["Authorization"], "<redacted>");
    assert_eq!(policies[2]["params"]["set"]["x-team"], "a");
    assert_eq!(
        shown["spec"]["operations"][0]["policies"][0]["params"]["set"]["x-api-key"],
        "<redacted>"
    );
    let (status, _, listed) = send_raw(
        &state,
        Request::get("/api/v1/apis").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for text in [&text, &listed] {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
        assert!(!text.contains("gw-sealed"), "{text}");
    }

    // written back as read: refused at the placeholder's field, the stored secret kept
    let (status, body) = put(&state, &shown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string()
            .contains("spec.operations[0].policies[0].params.set.x-api-key"),
        "{body}"
    );
    assert_eq!(store.get_api("orders").await.unwrap().unwrap(), row);

    // runtimes get the values as written
    let sent = sent(&store, Opener { sealer: &ours }).await.unwrap();
    assert_eq!(sent, api_as_stored_opened(&state.policies));

    // a sealed value moved to another field (or API) does not open there
    let mut moved = row.spec.clone();
    moved["spec"]["policies"][2]["params"]["set"]["Authorization"] =
        moved["spec"]["policies"][0]["params"]["secret"].clone();
    assert_eq!(ours.open_api(&moved, "orders"), Err(SealError::Damaged));
    assert_eq!(ours.open_api(&row.spec, "other"), Err(SealError::Damaged));
}

/// The API as a controller stores it (canonical) with its secrets as written.
fn api_as_stored_opened(policies: &PolicyRegistry) -> Value {
    let ctx = gw_core::model::ValidationContext {
        policies: Some(policies),
    };
    gw_core::model::ApiDefinition::from_value_validated(&api(), &ctx)
        .unwrap()
        .to_json()
}

/// A rotation: controllers with the new key as previous, then as current; a reseal
/// rewrites every sealed value (API secrets, certificate keys, the cluster CA's key, the
/// change log) under the new key without a new revision, and runtimes are sent the same
/// values throughout; then the old key can go.
#[tokio::test]
async fn a_key_rotation_reseals_everything_without_a_revision_on_postgres() {
    let (_db, store) = postgres().await;
    a_key_rotation_reseals_everything_without_a_revision(store).await;
}

#[tokio::test]
async fn a_key_rotation_reseals_everything_without_a_revision_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_key_rotation_reseals_everything_without_a_revision(support::sqlite(&dir).await).await;
}

async fn a_key_rotation_reseals_everything_without_a_revision(store: Arc<dyn Store>) {
    let old = Sealer::new(&key(7));
    let registry = PolicyRegistry::builtin();
    let (state, _stop) =
        app_state_sealed(Some(Arc::clone(&store)), None, None, Sealer::new(&key(7)));
    let (status, body) = put(&state, &api()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put(&state, &{
        let mut second = api();
        second["spec"]["policies"][2]["params"]["set"]["x-team"] = json!("b");
        second
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &state,
        Request::put("/api/v1/certificates/site")
            .header("content-type", "application/json")
            .body(Body::from(certificate().to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    gw_controller::cluster_ca::load_or_create(store.as_ref(), &old)
        .await
        .unwrap();
    let opened_before = sent(&store, Opener { sealer: &old }).await.unwrap();
    let revision = store.current_revision().await.unwrap();

    // step 1: the new key as a previous one opens nothing yet, and breaks nothing
    let step1 = Sealer::with_previous(&key(7), &[key(9)]);
    assert_eq!(
        sent(&store, Opener { sealer: &step1 }).await.unwrap(),
        opened_before
    );
    // step 2: the new key current, the old one previous: every value still opens
    let new = Sealer::with_previous(&key(9), &[key(7)]);
    assert_eq!(
        sent(&store, Opener { sealer: &new }).await.unwrap(),
        opened_before
    );
    // a controller with the new key alone cannot open them yet, and says why
    let only_new = Sealer::new(&key(9));
    let err = sent(&store, Opener { sealer: &only_new })
        .await
        .unwrap_err();
    assert!(
        err.contains(old.key_id()) && err.contains("GW_ENCRYPTION_KEYS_PREVIOUS"),
        "{err}"
    );

    // step 3: the reseal: the two APIs' rows... one API and one certificate, the CA, and the
    // change log's older version of the API
    // what is left to reseal: the API and the certificate (the CA is not counted)
    assert_eq!(pending(store.as_ref(), &new, &registry).await.unwrap(), 2);
    let report = reseal(store.as_ref(), &new, &registry).await.unwrap();
    assert_eq!(pending(store.as_ref(), &new, &registry).await.unwrap(), 0);
    assert_eq!(
        report,
        ResealReport {
            resealed: 3,
            already_current: 0,
            changes_resealed: 1,
        }
    );
    assert_eq!(
        store.current_revision().await.unwrap(),
        revision,
        "no new revision"
    );
    // again: nothing left to do
    let again = reseal(store.as_ref(), &new, &registry).await.unwrap();
    assert_eq!(
        again,
        ResealReport {
            resealed: 0,
            already_current: 3,
            changes_resealed: 0,
        }
    );

    // step 4: the old key dropped: every stored value is under the new key and opens
    let snapshot = store.snapshot().await.unwrap();
    let mut sealed: Vec<String> = snapshot
        .apis
        .iter()
        .map(|a| &a.spec)
        .chain(snapshot.resources.iter().map(|r| &r.spec))
        .flat_map(sealed_values)
        .collect();
    for change in store.changes_since(0, 100).await.unwrap() {
        if let ChangeOp::Upsert(spec) = &change.op {
            sealed.extend(sealed_values(spec));
        }
    }
    assert_eq!(sealed.len(), 3 * SECRETS.len() + 2, "{sealed:?}");
    assert!(sealed.iter().all(|v| only_new.is_current(v)), "{sealed:?}");
    assert_eq!(
        sent(&store, Opener { sealer: &only_new }).await.unwrap(),
        opened_before
    );
    gw_controller::cluster_ca::load_or_create(store.as_ref(), &only_new)
        .await
        .unwrap();
    let err = gw_controller::cluster_ca::load_or_create(store.as_ref(), &old)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(only_new.key_id()), "{err}");
}

/// A write that lands between the reseal's read and its rewrite is kept: the conditional
/// rewrite fails, and the row is read again.
#[tokio::test]
async fn a_reseal_never_loses_a_concurrent_write_on_postgres() {
    let (_db, store) = postgres().await;
    a_reseal_never_loses_a_concurrent_write(store).await;
}

#[tokio::test]
async fn a_reseal_never_loses_a_concurrent_write_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_reseal_never_loses_a_concurrent_write(support::sqlite(&dir).await).await;
}

async fn a_reseal_never_loses_a_concurrent_write(store: Arc<dyn Store>) {
    let registry = PolicyRegistry::builtin();
    let (state, _stop) =
        app_state_sealed(Some(Arc::clone(&store)), None, None, Sealer::new(&key(7)));
    let (status, body) = put(&state, &api()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let read = store.get_api("orders").await.unwrap().unwrap();
    // a write lands, under the old key
    let mut changed = api();
    changed["spec"]["policies"][2]["params"]["set"]["x-team"] = json!("changed");
    let (status, body) = put(&state, &changed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // the rewrite prepared from the first read is refused...
    let new = Sealer::with_previous(&key(9), &[key(7)]);
    let stale = new
        .reseal_api(&read.spec, "orders", &registry)
        .unwrap()
        .unwrap();
    assert!(
        !store
            .reseal("api", "orders", read.revision, &stale)
            .await
            .unwrap()
    );
    let now = store.get_api("orders").await.unwrap().unwrap();
    assert_eq!(
        now.spec["spec"]["policies"][2]["params"]["set"]["x-team"],
        "changed"
    );
    // ...and a reseal keeps the write
    reseal(store.as_ref(), &new, &registry).await.unwrap();
    let after = store.get_api("orders").await.unwrap().unwrap();
    assert_eq!(after.revision, now.revision);
    assert_eq!(
        after.spec["spec"]["policies"][2]["params"]["set"]["x-team"],
        "changed"
    );
    assert!(sealed_values(&after.spec).iter().all(|v| new.is_current(v)));
}

/// `POST /api/v1/reseal`: the counts, and an audit record.
#[tokio::test]
async fn the_admin_call_reseals_and_is_audited() {
    let (_db, store) = postgres().await;
    let (old_state, _stop) =
        app_state_sealed(Some(Arc::clone(&store)), None, None, Sealer::new(&key(7)));
    let (status, body) = put(&old_state, &api()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (state, _stop) = app_state_sealed(
        Some(Arc::clone(&store)),
        None,
        None,
        Sealer::with_previous(&key(9), &[key(7)]),
    );
    let (status, body) = send(
        &state,
        Request::post("/api/v1/reseal").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["key"], Sealer::new(&key(9)).key_id());
    // the API, and the cluster CA (made by the reseal: none was there)
    assert_eq!(body["resealed"], 1, "{body}");
    assert_eq!(body["alreadyCurrent"], 1, "{body}");
    let records = store
        .list_audit(&gw_store::AuditQuery::default())
        .await
        .unwrap();
    let record = records
        .iter()
        .find(|r| r.action == "reseal")
        .expect("an audit record of the reseal");
    assert_eq!(record.kind, "secrets");
}

fn certificate() -> Value {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["site.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    json!({
        "apiVersion": "gw/v1",
        "kind": "Certificate",
        "metadata": {"name": "site"},
        "spec": {"certificate": cert.pem(), "privateKey": key.serialize_pem()},
    })
}
