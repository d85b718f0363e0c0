//! `POST /api/v1/reseal`: rewrites every secret sealed at rest under this controller's
//! current encryption key (see [`crate::reseal`]), the last step of a key rotation.
//!
//! It takes the admin role (the route is in no family of [`super::access`]'s table) and is
//! audited (action `reseal`, with the counts). Runtimes see nothing: no revision is taken.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::audit::{self, Author};
use super::{ApiError, AppState};
use crate::reseal::{ResealError, reseal};

/// `POST /api/v1/reseal`: answers `{"key", "resealed", "alreadyCurrent",
/// "changesResealed"}`; 500 `reseal_failed` with the reason (never a secret) when a value
/// does not open or the store fails, 409 `reseal_busy` when writes kept landing on one
/// resource (what was resealed before stays resealed: run it again).
pub(super) async fn reseal_all(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
) -> Result<Response, ApiError> {
    let store = Arc::clone(state.store()?);
    // on a task of its own, as its audit record: a client that goes away does not stop it
    // half-way, unrecorded
    let task = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let report = reseal(store.as_ref(), &state.sealer, &state.policies).await;
            if let Ok(report) = &report {
                let detail = format!(
                    "resealed {}, already current {}, changes resealed {}",
                    report.resealed, report.already_current, report.changes_resealed
                );
                audit::append(
                    &state,
                    author,
                    "reseal",
                    "secrets",
                    state.sealer.key_id(),
                    Some(detail),
                )
                .await;
            }
            report
        })
    };
    let report = task
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|err| match err {
            ResealError::Store(err) => ApiError::from_store(err),
            err @ ResealError::Busy { .. } => ApiError::conflict("reseal_busy", err.to_string()),
            err => {
                tracing::error!(error = %err, "reseal failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "reseal_failed",
                    err.to_string(),
                )
            }
        })?;
    let mut body = serde_json::to_value(report).unwrap_or_default();
    body["key"] = serde_json::Value::String(state.sealer.key_id().to_string());
    Ok(axum::Json(body).into_response())
}
