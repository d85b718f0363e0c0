//! `/api/v1/runtimes`: the fleet, as every controller recorded it.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

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
