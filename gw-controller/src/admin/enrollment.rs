//! `/api/v1/enrollment-tokens`: the join tokens with which new runtimes enroll.
//!
//! A token names a group, a lifetime and a number of uses. Its text (secret included) is
//! shown once, in the answer to its creation; the store keeps the secret's SHA-256 only, and
//! listings show each token's state and uses, never its secret. A token carries the hash of
//! the cluster's internal CA, so a controller that does not serve sync TLS from that CA makes
//! none (409 `enrollment_unavailable`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use gw_core::model::{FieldError, Format, HumanDuration, parse_value};
use gw_store::audit::KIND_ENROLLMENT_TOKEN;
use gw_store::{EnrollmentTokenRecord, NewEnrollmentToken};
use gw_sync::enroll::EnrollmentToken;
use serde::Deserialize;
use serde_json::json;

use super::audit::Author;
use super::format::{read_body, request_format};
use super::{ApiError, AppState};

/// A token's lifetime when the request names none, and the bounds of one it names.
const DEFAULT_TTL: TimeDelta = TimeDelta::hours(24);
const MIN_TTL: Duration = Duration::from_mins(1);
const MAX_TTL: Duration = Duration::from_hours(30 * 24);
/// The most runtimes one token enrolls.
const MAX_USES: i64 = 10_000;
/// The longest description, in characters.
const MAX_DESCRIPTION: usize = 256;

/// The body of `POST /api/v1/enrollment-tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    group: String,
    ttl: Option<String>,
    uses: Option<i64>,
    description: Option<String>,
}

/// A request that passed validation.
struct Create {
    group: String,
    ttl: TimeDelta,
    uses: i64,
    description: Option<String>,
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
                    "{reason}; the body is {{\"group\": \"...\", \"ttl\": \"24h\", \"uses\": 1, \
                     \"description\": \"...\"}}, only group required"
                ),
            )
        };
        let value = parse_value(bytes, format).map_err(ApiError::from_model)?;
        // (serde would read a list as the fields in order)
        if !value.is_object() {
            return Err(refused("the body is not an object".to_string()));
        }
        serde_json::from_value(value).map_err(|err| refused(err.to_string()))
    }

    /// Checks every field, reporting all that are wrong at once (400 `validation_failed`).
    fn validate(self) -> Result<Create, ApiError> {
        let mut details = Vec::new();
        if let Err(message) = gw_sync::validate_group(&self.group) {
            details.push(FieldError::new("group", message));
        }
        let ttl = match self.ttl.as_deref().map_or(Ok(DEFAULT_TTL), parse_ttl) {
            Ok(ttl) => Some(ttl),
            Err(message) => {
                details.push(FieldError::new("ttl", message));
                None
            }
        };
        let uses = self.uses.unwrap_or(1);
        if !(1..=MAX_USES).contains(&uses) {
            details.push(FieldError::new(
                "uses",
                format!("{uses} is not between 1 and {MAX_USES}"),
            ));
        }
        if let Some(description) = &self.description {
            let chars = description.chars().count();
            if chars > MAX_DESCRIPTION {
                details.push(FieldError::new(
                    "description",
                    format!("is {chars} characters long; the limit is {MAX_DESCRIPTION}"),
                ));
            }
        }
        match ttl {
            Some(ttl) if details.is_empty() => Ok(Create {
                group: self.group,
                ttl,
                uses,
                description: self.description,
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

/// A token's lifetime: a whole number and a unit, `m`, `h` or `d` (`s` and `ms` read too),
/// from one minute to 30 days.
fn parse_ttl(text: &str) -> Result<TimeDelta, String> {
    parse_lifetime(text, MIN_TTL, MAX_TTL)
}

/// A lifetime: a whole number and a unit, `m`, `h` or `d` (`s` and `ms` read too), within
/// `min..=max` (which the refusal names in the same units).
pub(crate) fn parse_lifetime(
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<TimeDelta, String> {
    let days = text
        .strip_suffix('d')
        .filter(|n| (1..=5).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok());
    let ttl = match days {
        Some(days) => Duration::from_hours(days * 24),
        None => HumanDuration::from_str(text)
            .map_err(|_| {
                format!(
                    "{text:?} is not a duration: write a whole number and a unit (m, h or d), \
                     like 30m, 24h or 7d"
                )
            })?
            .into(),
    };
    (min..=max)
        .contains(&ttl)
        .then(|| TimeDelta::from_std(ttl).ok())
        .flatten()
        .ok_or_else(|| {
            format!(
                "{text} is not between {} and {}",
                in_units(min),
                in_units(max)
            )
        })
}

/// `1m`, `30d`: a bound of a lifetime, in its largest whole unit.
fn in_units(bound: Duration) -> String {
    let secs = bound.as_secs();
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The 409 of a controller that does not serve sync TLS from the cluster's internal CA.
fn unavailable() -> ApiError {
    ApiError::conflict(
        "enrollment_unavailable",
        "enrollment needs the cluster's internal CA: this controller does not serve sync TLS \
         from it (it runs with its own sync certificate files, or without sync TLS), so a \
         runtime could not check it with a token's CA hash",
    )
}

/// What the API shows of a token: never its secret.
fn view(record: &EnrollmentTokenRecord, now: DateTime<Utc>) -> serde_json::Value {
    json!({
        "id": record.id,
        "group": record.group,
        "uses": record.uses_max,
        "used": record.uses,
        "usesLeft": (record.uses_max - record.uses).max(0),
        "state": record.state(now),
        "expiresAt": record.expires_at,
        "createdAt": record.created_at,
        "revokedAt": record.revoked_at,
        "description": record.description,
    })
}

/// `POST /api/v1/enrollment-tokens`: makes a token and answers it, the only time its text
/// is shown (201, `Cache-Control: no-store`).
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ca_hash = *state.sync_ca.get().ok_or_else(unavailable)?;
    let format = request_format(&headers)?;
    let bytes = read_body(&headers, body, state.options.max_body_bytes).await?;
    let request = CreateRequest::read(&bytes, format)?.validate()?;
    let store = state.store()?;
    let token = EnrollmentToken::generate(ca_hash);
    let now = Utc::now().trunc_subsecs(6);
    let record = EnrollmentTokenRecord {
        id: token.id().to_string(),
        group: request.group,
        uses_max: request.uses,
        uses: 0,
        expires_at: now + request.ttl,
        created_at: now,
        revoked_at: None,
        description: request.description,
    };
    store
        .create_enrollment_token(
            &NewEnrollmentToken {
                id: record.id.clone(),
                secret_hash: token.secret_hash(),
                group: record.group.clone(),
                uses_max: record.uses_max,
                expires_at: record.expires_at,
                created_at: record.created_at,
                description: record.description.clone(),
            },
            Some(&author),
        )
        .await
        .map_err(ApiError::from_store)?;
    tracing::info!(id = %record.id, group = %record.group, uses = record.uses_max, expires_at = %record.expires_at, "enrollment token created");
    let mut body = view(&record, now);
    body["token"] = json!(token.reveal());
    body["caHash"] = json!(ca_hash.to_string());
    Ok(shown_once(body))
}

/// The answer of a token's creation (enrollment or admin token), whose `body` holds the
/// token's text, shown this once: 201, and never kept by a cache.
pub(super) fn shown_once(body: serde_json::Value) -> Response {
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// `GET /api/v1/enrollment-tokens`: every token, newest first, with its state.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    listing(state.store()?.list_enrollment_tokens().await, view)
}

/// `DELETE /api/v1/enrollment-tokens/{id}`: revokes a token (204); runtimes that enrolled
/// with it keep their certificates.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Author(author): Author,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::from_path(&e))?;
    let found = state
        .store()?
        .revoke_enrollment_token(&id, Utc::now(), Some(&author))
        .await;
    revoked(
        found,
        KIND_ENROLLMENT_TOKEN,
        &id,
        "/api/v1/enrollment-tokens",
    )
}

/// The answer of a token listing (enrollment or admin tokens): `{"items": [...]}`, each
/// record as `view` shows it now.
pub(super) fn listing<T>(
    records: Result<Vec<T>, gw_store::StoreError>,
    view: impl Fn(&T, DateTime<Utc>) -> serde_json::Value,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let items: Vec<_> = records
        .map_err(ApiError::from_store)?
        .iter()
        .map(|record| view(record, now))
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

/// The answer of a token revocation (`kind` `enrollment-token` or `admin-token`), whose
/// audit record the store wrote with it: 204, or 404 saying where the tokens are listed.
pub(super) fn revoked(
    found: Result<bool, gw_store::StoreError>,
    kind: &'static str,
    id: &str,
    listed_at: &str,
) -> Result<Response, ApiError> {
    let what = kind.replace('-', " ");
    if !found.map_err(ApiError::from_store)? {
        return Err(ApiError::not_found(format!(
            "no {what} {id:?}; GET {listed_at} lists them"
        )));
    }
    tracing::info!(%id, "{what} revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::parse_ttl;

    #[test]
    fn a_ttl_is_minutes_to_thirty_days() {
        for (text, secs) in [
            ("1m", 60),
            ("30m", 1800),
            ("24h", 86_400),
            ("7d", 604_800),
            ("30d", 2_592_000),
            ("720h", 2_592_000),
            ("90s", 90),
        ] {
            assert_eq!(parse_ttl(text), Ok(TimeDelta::seconds(secs)), "{text}");
        }
        for (text, reason) in [
            ("59s", "between"),
            ("0d", "between"),
            ("31d", "between"),
            ("721h", "between"),
            ("99999d", "between"),
            ("", "not a duration"),
            ("d", "not a duration"),
            ("7 d", "not a duration"),
            ("1w", "not a duration"),
            ("-1d", "not a duration"),
            ("999999d", "not a duration"),
        ] {
            let err = parse_ttl(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }
}
