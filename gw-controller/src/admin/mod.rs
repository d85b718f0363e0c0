//! The admin REST API under `/api/v1`, and the health endpoints.
//!
//! Every call under `/api/v1` needs a bearer token when `GW_ADMIN_TOKEN` is configured
//! (always in production mode): `GW_ADMIN_TOKEN` itself, the break-glass admin, or a named
//! token with a role (docs/security/admin-access.md says who may call what; `/api/v1/tokens`),
//! or, with `--oidc-issuer`, a person's token from the identity provider. The
//! health endpoints need none: probes call them without credentials. Every successful write
//! is recorded in the audit log (`GET /api/v1/audit`), and every answer carries an
//! `x-request-id`.
//! Errors are JSON: `{"error": {"code", "message", "details": [{"field", "message"}]}}`.

mod access;
mod apis;
mod audit;
mod bundles;
mod certificates;
mod consumers;
mod dev;
mod enrollment;
mod error;
mod format;
mod identity;
mod kind;
mod oidc;
mod redact;
mod reseal;
mod runtimes;
mod tokens;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gw_core::policy::PolicyRegistry;
use gw_store::Store;
use gw_sync::state::DesiredState;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

pub use audit::ClientAddr;
pub use dev::DevGuard;
pub(crate) use enrollment::parse_lifetime;
pub use error::ApiError;
pub use identity::{Identity, InvalidNamedToken, NamedToken};
pub use oidc::{
    DEFAULT_ALGORITHMS as DEFAULT_OIDC_ALGORITHMS, MAX_TOKEN_BYTES as MAX_OIDC_TOKEN_BYTES,
    OidcAuthenticator, OidcOptions, OidcRefusal, RoleMapping,
};

use crate::keys::AdminToken;

/// Limits and timings of the admin API.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long `?wait=applied` waits when no `timeout` is given.
    pub default_wait: Duration,
    /// The longest `timeout` accepted.
    pub max_wait: Duration,
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Set once the store is open.
    pub store: OnceLock<Arc<dyn Store>>,
    /// Set once the desired state is loaded.
    pub loaded: AtomicBool,
    /// The desired state this controller serves.
    pub desired: Arc<DesiredState>,
    /// The admin token; `None` only in development mode.
    pub token: Option<AdminToken>,
    /// The policies deployments may use.
    pub policies: PolicyRegistry,
    /// This controller's id.
    pub controller_id: String,
    /// Limits and timings.
    pub options: AdminOptions,
    /// Turns true when the controller stops: waits for runtimes end at once.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// All-in-one mode: whether the controller runs a runtime in process, and that
    /// runtime's state once it is started. `/readyz` waits for it to receive its
    /// configuration, so that "ready" means traffic is served.
    pub all_in_one: bool,
    /// The in-process runtime's state (all-in-one mode).
    pub embedded: OnceLock<Arc<gw_runtime::state::ConfigState>>,
    /// Seals secrets before they are stored (certificates' private keys).
    pub sealer: Arc<crate::sealed::Sealer>,
    /// Serializes this controller's consumer writes from their uniqueness check to their
    /// commit (see `admin/consumers.rs`).
    pub consumer_writes: tokio::sync::Mutex<()>,
    /// The fallback bundle exporter, once the store is open (never, when no export is
    /// configured).
    pub bundles: OnceLock<Arc<crate::bundles::BundleExporter>>,
    /// The controller's metrics (`GET /metrics`).
    pub metrics: prometheus_client::registry::Registry,
    /// Counts the admin API's requests (registered in [`AppState::metrics`]).
    pub requests: crate::metrics::AdminMetrics,
    /// Reads the store and the fleet for each scrape of `GET /metrics` (registered in
    /// [`AppState::metrics`]).
    pub sampler: Arc<crate::metrics::Sampler>,
    /// The controller is stopping: `/readyz` answers 503 while the drain period runs.
    pub draining: AtomicBool,
    /// Development mode without an admin token: the checks that keep web pages out of the
    /// admin API (`Host`, and `Content-Type` on writes; see [`DevGuard`]). `None`: none.
    pub dev_guard: Option<DevGuard>,
    /// The hash of the cluster's internal CA, which enrollment tokens carry; set when this
    /// controller serves sync TLS from that CA. Unset, `POST /api/v1/enrollment-tokens`
    /// answers 409.
    pub sync_ca: OnceLock<gw_sync::pki::CaHash>,
    /// OIDC for people (`--oidc-issuer`), set at start when configured: bearer JWTs of that
    /// issuer are verified and mapped to roles. Unset, only `GW_ADMIN_TOKEN` and named
    /// tokens are taken.
    pub oidc: OnceLock<Arc<OidcAuthenticator>>,
}

impl AppState {
    fn store(&self) -> Result<&Arc<dyn Store>, ApiError> {
        self.store.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the controller is still connecting to its database",
            )
        })
    }
}

/// The admin router.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new();
    let api = kind::routes::<kind::Apis>(api);
    let api = kind::routes::<kind::Certificates>(api);
    let api = kind::routes::<kind::Consumers>(api)
        .route(
            "/consumers/{name}/credentials",
            axum::routing::post(consumers::add_credential),
        )
        .route(
            "/consumers/{name}/credentials/{id}",
            axum::routing::delete(consumers::revoke_credential),
        )
        .route("/runtimes", get(runtimes::list))
        .route("/runtimes/{node}", axum::routing::delete(runtimes::revoke))
        .route(
            "/runtimes/{node}/enrollment",
            axum::routing::delete(runtimes::forget),
        )
        .route(
            "/enrollment-tokens",
            get(enrollment::list).post(enrollment::create),
        )
        .route(
            "/enrollment-tokens/{id}",
            axum::routing::delete(enrollment::revoke),
        )
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/bundles", axum::routing::post(bundles::export))
        .route("/reseal", axum::routing::post(reseal::reseal_all))
        .route("/audit", get(audit::list))
        .route("/schema/api", get(schema))
        .route("/schema/certificate", get(certificate_schema))
        .route("/schema/consumer", get(consumer_schema))
        .route("/policies", get(policies))
        .route("/policies/{name}", get(policy))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            access::authenticate,
        ))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            dev::guard,
        ))
        .layer(middleware::from_fn(audit::request_id))
        .layer(middleware::from_fn(log_request))
        // a bug in a handler answers 500 instead of dropping the connection
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
        // the token is redacted wherever a request is printed
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        // outermost: answers of every layer count, a handler's panic included
        .layer(middleware::from_fn_with_state(Arc::clone(&state), measure))
        .with_state(state)
}

/// One log line per request: method, path, status, latency. Never headers or bodies.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis();
    if path.ends_with("/healthz") || path.ends_with("/readyz") {
        tracing::debug!(%method, %path, status, elapsed_ms, "admin request");
    } else {
        tracing::info!(%method, %path, status, elapsed_ms, "admin request");
    }
    response
}

/// Counts every request by its route template (never its raw path: the label stays
/// bounded), method and status.
async fn measure(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(crate::metrics::UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state.requests.observe(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`: the controller's metrics in Prometheus text format (no credentials, like
/// the health endpoints: counts and revisions, no configuration). The store and the fleet are
/// read for it, at most once a second whoever asks.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let desired = state
        .loaded
        .load(Ordering::Acquire)
        .then_some(state.desired.as_ref());
    state.sampler.refresh(state.store.get(), desired).await;
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
        tracing::warn!(error = %err, "could not encode metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "alive"})).into_response()
}

/// Ready when the store answers and the desired state is loaded (and, all-in-one, when the
/// embedded runtime serves it).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let reason = match state.store.get() {
        _ if state.draining.load(Ordering::Acquire) => Some("draining".to_string()),
        None => Some("connecting to the database".to_string()),
        Some(_) if !state.loaded.load(Ordering::Acquire) => {
            Some("loading the desired state".to_string())
        }
        Some(_)
            if state.all_in_one
                && state.embedded.get().is_none_or(|runtime| {
                    runtime.origin() != gw_runtime::state::Origin::Controller
                }) =>
        {
            Some("the embedded runtime has not received its configuration yet".to_string())
        }
        // no credentials are needed here: the reason is generic, the details are logged
        Some(store) => match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "readiness: the database does not answer");
                Some("the database does not answer".to_string())
            }
            Err(_) => {
                tracing::warn!("readiness: the database did not answer within 2s");
                Some("the database did not answer within 2s".to_string())
            }
        },
    };
    let body = serde_json::json!({
        "ready": reason.is_none(),
        "reason": reason,
        "revision": state.desired.revision(),
        "controller": state.controller_id,
    });
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn schema() -> Response {
    axum::Json(gw_core::model::schema::api_schema()).into_response()
}

async fn certificate_schema() -> Response {
    axum::Json(gw_core::model::schema::certificate_schema()).into_response()
}

async fn consumer_schema() -> Response {
    axum::Json(gw_core::model::schema::consumer_schema()).into_response()
}

/// `GET /api/v1/policies`: the policies this controller accepts, with their phase.
async fn policies(State(state): State<Arc<AppState>>) -> Response {
    let items: Vec<serde_json::Value> = state
        .policies
        .names()
        .into_iter()
        .map(|name| {
            let phase = state.policies.phase(&name).as_str();
            serde_json::json!({"name": name, "phase": phase})
        })
        .collect();
    axum::Json(serde_json::json!({ "items": items })).into_response()
}

/// `GET /api/v1/policies/{name}`: one policy, with the JSON Schema of its params.
async fn policy(
    State(state): State<Arc<AppState>>,
    name: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    // (a rejected path is answered in JSON, like every other error)
    let axum::extract::Path(name) = name.map_err(|e| ApiError::from_path(&e))?;
    if !state.policies.contains(&name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no policy named {name:?}; GET /api/v1/policies lists them"),
        ));
    }
    let phase = state.policies.phase(&name).as_str();
    let schema = state.policies.schema(&name);
    Ok(
        axum::Json(serde_json::json!({"name": name, "phase": phase, "paramsSchema": schema}))
            .into_response(),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the admin API lives under /api/v1",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support that method",
    )
}

/// Marks the desired state as loaded: `/readyz` can turn true.
pub fn mark_loaded(state: &AppState) {
    state.loaded.store(true, Ordering::Release);
}
