//! `/api/v1/runtimes`: the fleet, as every controller recorded it, and the revocation of
//! an enrolled runtime.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::audit::Author;
use super::{ApiError, AppState};
use crate::fleet::view;

/// `GET /api/v1/runtimes`: every runtime any controller has seen, with its controller,
/// applied revision, lag behind the newest revision, last contact and last rejection.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let store = state.store()?;
    let newest = store
        .current_revision()
        .await
        .map_err(ApiError::from_store)?;
    let now = SystemTime::now();
    let items: Vec<_> = store
        .list_runtimes()
        .await
        .map_err(ApiError::from_store)?
        .into_iter()
        .map(|record| view(record, newest, now))
        .collect();
    Ok(axum::Json(serde_json::json!({"revision": newest, "items": items})).into_response())
}

/// `DELETE /api/v1/runtimes/{node}`: revokes the runtime's enrollment (204): its
/// certificates are no longer accepted nor renewed, its streams end, and the node id does
/// not enroll again until its enrollment is forgotten ([`forget`]). 404 for a node that
/// never enrolled.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
    node: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(node) = node.map_err(|e| ApiError::from_path(&e))?;
    let found = state
        .store()?
        .revoke_runtime(&node, chrono::Utc::now(), Some(&author))
        .await
        .map_err(ApiError::from_store)?;
    if !found {
        return Err(ApiError::not_found(format!(
            "runtime {node:?} has no enrollment: only a runtime that enrolled with a token \
             (GW_ENROLL_TOKEN) is revoked this way"
        )));
    }
    tracing::info!(%node, "runtime enrollment revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/v1/runtimes/{node}/enrollment`: forgets the runtime's enrollment, revoked
/// or not (204), so that the node id may enroll again with a token; a certificate it still
/// holds is no longer accepted. 404 for a node that has no enrollment.
pub(super) async fn forget(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
    node: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(node) = node.map_err(|e| ApiError::from_path(&e))?;
    let found = state
        .store()?
        .forget_runtime(&node, Some(&author))
        .await
        .map_err(ApiError::from_store)?;
    if !found {
        return Err(ApiError::not_found(format!(
            "runtime {node:?} has no enrollment to forget"
        )));
    }
    tracing::info!(%node, "runtime enrollment forgotten");
    Ok(StatusCode::NO_CONTENT.into_response())
}
