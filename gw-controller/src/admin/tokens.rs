//! `/api/v1/tokens`: the named admin tokens (admin role only; see [`super::access`]).
//!
//! A token has a name, a role and, for an operator, the gateway groups it may write to.
//! Its text (`gwadm1.<id>.<secret>`) is shown once, in the answer to its creation; the store
//! keeps the secret's SHA-256 only, and listings show each token's state and last use, never
//! its secret. A revoked token is refused from the next request on, by every controller.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use gw_core::model::{FieldError, Format, parse_value};
use gw_store::audit::KIND_ADMIN_TOKEN;
use gw_store::{AdminRole, AdminTokenRecord, NewAdminToken, StoreError};
use serde::Deserialize;
use serde_json::json;

use super::audit::Author;
use super::enrollment::{listing, parse_lifetime, revoked, shown_once};
use super::format::{read_body, request_format};
use super::identity::{Identity, NamedToken};
use super::{ApiError, AppState};

/// The bounds of `expiresIn`.
const MIN_LIFETIME: Duration = Duration::from_mins(1);
const MAX_LIFETIME: Duration = Duration::from_hours(365 * 24);
/// The longest name, in characters.
const MAX_NAME: usize = 64;

/// The body of `POST /api/v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateRequest {
    name: String,
    role: String,
    groups: Option<Vec<String>>,
    expires_in: Option<String>,
}

/// A request that passed validation.
struct Create {
    name: String,
    role: AdminRole,
    groups: Vec<String>,
    lifetime: Option<TimeDelta>,
}

impl CreateRequest {
    /// Reads the body, refusing an unknown field or a value of the wrong type (400
    /// `invalid_document`).
    fn read(bytes: &[u8], format: Format) -> Result<Self, ApiError> {
        let refused = |reason: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_document",
                format!(
                    "{reason}; the body is {{\"name\": \"...\", \"role\": \"admin|operator|viewer\", \
                     \"groups\": [\"...\"], \"expiresIn\": \"90d\"}}, name and role required"
                ),
            )
        };
        let value = parse_value(bytes, format).map_err(ApiError::from_model)?;
        if !value.is_object() {
            return Err(refused("the body is not an object".to_string()));
        }
        serde_json::from_value(value).map_err(|err| refused(err.to_string()))
    }

    /// Checks every field, reporting all that are wrong at once (400 `validation_failed`).
    fn validate(self) -> Result<Create, ApiError> {
        let mut details = Vec::new();
        if let Err(message) = validate_name(&self.name) {
            details.push(FieldError::new("name", message));
        }
        let role = self
            .role
            .parse::<AdminRole>()
            .map_err(|err| details.push(FieldError::new("role", err.to_string())))
            .ok();
        let mut groups = self.groups.unwrap_or_default();
        for (i, group) in groups.iter().enumerate() {
            if let Err(message) = gw_sync::validate_group(group) {
                details.push(FieldError::new(format!("groups[{i}]"), message));
            }
        }
        groups.sort();
        groups.dedup();
        if !groups.is_empty() && role.is_some_and(|role| role != AdminRole::Operator) {
            details.push(FieldError::new(
                "groups",
                "only an operator's writes are scoped to groups: an admin acts on every group \
                 and a viewer reads every group; give no groups",
            ));
        }
        let lifetime = self
            .expires_in
            .as_deref()
            .map(|text| parse_lifetime(text, MIN_LIFETIME, MAX_LIFETIME))
            .transpose()
            .map_err(|message| details.push(FieldError::new("expiresIn", message)))
            .ok();
        match (role, lifetime) {
            (Some(role), Some(lifetime)) if details.is_empty() => Ok(Create {
                name: self.name,
                role,
                groups,
                lifetime,
            }),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                format!("the request has {} problem(s)", details.len()),
            )
            .with_details(details)),
        }
    }
}

/// A token's name: 1 to 64 characters of `a-z`, `0-9`, `.`, `_` and `-`.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "must be 1 to {MAX_NAME} characters long (it is {})",
            name.chars().count()
        ));
    }
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b);
    if !name.bytes().all(ok) {
        return Err("use lowercase letters, digits, '.', '_' and '-'".to_string());
    }
    // the names the audit log gives GW_ADMIN_TOKEN and an open development API
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} names another identity in the audit log; choose another name"
        ));
    }
    Ok(())
}

/// Actor names that are not tokens'.
const RESERVED_NAMES: [&str; 2] = [Identity::BREAK_GLASS, Identity::ANONYMOUS];

/// What the API shows of a token: never its secret.
fn view(record: &AdminTokenRecord, now: DateTime<Utc>) -> serde_json::Value {
    json!({
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "groups": record.groups,
        "state": record.state(now),
        "createdAt": record.created_at,
        "expiresAt": record.expires_at,
        "revokedAt": record.revoked_at,
        "lastUsedAt": record.last_used_at,
    })
}

/// `POST /api/v1/tokens`: makes a token and answers it, the only time its text is shown
/// (201, `Cache-Control: no-store`). 409 `already_exists` when a token that is not revoked
/// has the name.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = request_format(&headers)?;
    let bytes = read_body(&headers, body, state.options.max_body_bytes).await?;
    let request = CreateRequest::read(&bytes, format)?.validate()?;
    let store = state.store()?;
    let token = NamedToken::generate();
    let now = Utc::now().trunc_subsecs(6);
    let record = AdminTokenRecord {
        id: token.id().to_string(),
        name: request.name,
        role: request.role,
        groups: request.groups,
        created_at: now,
        expires_at: request.lifetime.map(|lifetime| now + lifetime),
        revoked_at: None,
        last_used_at: None,
    };
    store
        .create_admin_token(
            &NewAdminToken {
                id: record.id.clone(),
                name: record.name.clone(),
                secret_hash: token.secret_hash(),
                role: record.role,
                groups: record.groups.clone(),
                created_at: record.created_at,
                expires_at: record.expires_at,
            },
            Some(&author),
        )
        .await
        .map_err(|err| match err {
            StoreError::AlreadyExists { name } => ApiError::conflict(
                "already_exists",
                format!(
                    "an admin token named {name:?} exists; revoke it first \
                     (DELETE /api/v1/tokens/{{id}}) or choose another name"
                ),
            ),
            other => ApiError::from_store(other),
        })?;
    tracing::info!(id = %record.id, name = %record.name, role = %record.role, groups = ?record.groups, expires_at = ?record.expires_at, "admin token created");
    let body = json!({
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "groups": record.groups,
        "token": token.reveal(),
        "createdAt": record.created_at,
        "expiresAt": record.expires_at,
    });
    Ok(shown_once(body))
}

/// `GET /api/v1/tokens`: every token, newest first, with its state and last use.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    listing(state.store()?.list_admin_tokens().await, view)
}

/// `DELETE /api/v1/tokens/{id}`: revokes a token (204), refused from the next request on;
/// 404 for an unknown id.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::from_path(&e))?;
    let found = state
        .store()?
        .revoke_admin_token(&id, Utc::now(), Some(&author))
        .await;
    revoked(found, KIND_ADMIN_TOKEN, &id, "/api/v1/tokens")
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn a_name_is_short_and_plain() {
        for good in ["ci", "ci-deployer", "team.a_b-2", &"a".repeat(64)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            ("", "1 to 64"),
            (&"a".repeat(65), "1 to 64"),
            ("CI", "lowercase"),
            ("a b", "lowercase"),
            ("é", "lowercase"),
            ("break-glass", "another identity"),
            ("anonymous", "another identity"),
        ] {
            let err = validate_name(bad).unwrap_err();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }
}
