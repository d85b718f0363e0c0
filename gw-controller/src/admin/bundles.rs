//! `/api/v1/bundles`: fallback bundles on demand.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// The longest wait for the desired state to catch up with the store.
const CATCH_UP: Duration = Duration::from_secs(5);

/// `POST /api/v1/bundles`: exports every group's bundle now and answers what was written
/// and what failed, group by group (`{"revision", "target", "items": [{"group",
/// "revision", "location", "bytes", "resources", "pruned"}], "failed": [{"group",
/// "error"}]}`, a failure without a group being the listing of the target's groups): 200
/// when at least one group was written (or there was nothing to export), 502
/// `bundle_export_failed` when every attempt failed.
pub(super) async fn export(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if !state.loaded.load(Ordering::Acquire) {
        state.store()?;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the controller is still loading its desired state",
        ));
    }
    let Some(exporter) = state.bundles.get() else {
        return Err(ApiError::conflict(
            "bundles_not_configured",
            "this controller exports no bundles: start it with --bundle-dir or --bundle-url \
             and a signing key",
        ));
    };
    // what was written before this call is in the bundles: wait (briefly) for this
    // controller's state to reach the store's newest revision
    let store = state.store()?;
    let newest = store
        .current_revision()
        .await
        .map_err(ApiError::from_store)?;
    if !state.desired.wait_for(newest, CATCH_UP).await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "this controller has not caught up with revision {newest} within {CATCH_UP:?}; \
                 retry"
            ),
        ));
    }
    let report = exporter.export().await;
    if report.all_failed() {
        let failures: Vec<String> = report.failed.iter().map(ToString::to_string).collect();
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bundle_export_failed",
            format!(
                "the bundle export failed for every group: {}",
                failures.join("; ")
            ),
        ));
    }
    let revision = report.written.iter().map(|i| i.revision).max().unwrap_or(0);
    Ok(axum::Json(serde_json::json!({
        "revision": revision,
        "target": exporter.target().to_string(),
        "items": report.written,
        "failed": report.failed,
    }))
    .into_response())
}
