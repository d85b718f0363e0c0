//! What the in-process tests of the admin API share: the handlers' state on a store, and
//! one request sent through the router.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gw_controller::admin::{self, AdminOptions, AppState, DevGuard};
use gw_controller::keys::{AdminToken, EncryptionKey};
use gw_controller::metrics::{ControllerMetrics, MeasuredStore};
use gw_controller::sealed::Sealer;
use gw_core::policy::PolicyRegistry;
use gw_store::{Store, StoreOptions};
use gw_sync::state::DesiredState;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The handlers' state on `store` (none: still connecting), with `GW_ADMIN_TOKEN` set to
/// `token` (none: development mode, open unless `dev_guard` keeps web pages out), and the
/// sender that signals the controller's shutdown.
#[allow(dead_code)] // tests/secrets.rs gives its own keys
pub(crate) fn app_state(
    store: Option<Arc<dyn Store>>,
    dev_guard: Option<DevGuard>,
    token: Option<AdminToken>,
) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    let sealer = Sealer::new(&EncryptionKey::from_bytes([7; 32]));
    app_state_sealed(store, dev_guard, token, sealer)
}

/// [`app_state`] with the keys of `sealer`.
pub(crate) fn app_state_sealed(
    store: Option<Arc<dyn Store>>,
    dev_guard: Option<DevGuard>,
    token: Option<AdminToken>,
    sealer: Sealer,
) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    let cell = OnceLock::new();
    let loaded = store.is_some();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    if let Some(store) = store {
        let measured: Arc<dyn Store> = Arc::new(MeasuredStore::new(store, metrics.store));
        let _ = cell.set(measured);
    }
    let state = Arc::new(AppState {
        store: cell,
        loaded: AtomicBool::new(loaded),
        desired: Arc::new(DesiredState::new(100)),
        token,
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
        sealer: Arc::new(sealer),
        consumer_writes: tokio::sync::Mutex::new(()),
        bundles: OnceLock::new(),
        metrics: registry,
        requests: metrics.admin,
        sampler: metrics.sampler,
        draining: AtomicBool::new(false),
        dev_guard,
        sync_ca: OnceLock::new(),
        oidc: OnceLock::new(),
    });
    (state, stop)
}

/// What opens the stored secrets for `state`'s controller (its key and policies).
#[allow(dead_code)] // not every test binary loads a desired state
pub(crate) fn opener(state: &AppState) -> gw_controller::watcher::Opener<'_> {
    gw_controller::watcher::Opener {
        sealer: &state.sealer,
    }
}

/// A store in a SQLite file in `dir`.
pub(crate) async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}/gw.db", dir.path().display());
    gw_store::open(&url, &StoreOptions::default())
        .await
        .unwrap()
}

/// Sends `request` through the admin router: its status and its body as JSON (`null` when
/// it is none).
pub(crate) async fn send(
    state: &Arc<AppState>,
    request: Request<Body>,
) -> (StatusCode, serde_json::Value) {
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

/// `send`, with the response's headers and its body as text.
pub(crate) async fn send_raw(
    state: &Arc<AppState>,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = admin::router(Arc::clone(state))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}
