//! The audit log of the admin API: who wrote what, and `GET /api/v1/audit` to read it.
//!
//! Every successful write under `/api/v1` is recorded (see [`gw_store::audit`]): the
//! author comes from the request ([`Author`]: the authenticated identity, the client's
//! address from [`ClientAddr`] and the request's id from [`RequestId`]) and is handed to the
//! store's write, which inserts the record in the transaction of the change: APIs,
//! certificates, consumers and their credentials, enrollment and admin tokens, revocations
//! and forgetting of runtime enrollments. A write that fails (refused, not found, a
//! conflict, the store down) records nothing, and a record is never lost to a crash after
//! its write. A reseal (`POST /api/v1/reseal`), which rewrites each sealed value on its own
//! and changes no meaning, appends its record once it completed ([`append`]).
//!
//! Reading the log takes the admin role (the route is in no family of
//! [`super::access`]'s table): it names every token and client address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use gw_store::{Audit, AuditQuery};
use serde::Deserialize;
use serde_json::json;

use super::identity::Identity;
use super::{ApiError, AppState};

/// The client's address of a connection to the admin API, put into each request's
/// extensions by the server (absent when a request reaches the router another way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The id of a request: the client's `x-request-id` when it sends a plain one, else one
/// made here; answered as `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestId(String);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's request id is kept when it is 1 to 128 letters, digits, `-`, `_`, `.` or
/// `:` (it goes into the audit log and the logs as it is).
fn plain(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Gives the request its [`RequestId`] and answers it as `x-request-id`.
pub(super) async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| plain(id))
        .map_or_else(
            || format!("{:032x}", rand::random::<u128>()),
            str::to_string,
        );
    let header = HeaderValue::from_str(&id).ok();
    request.extensions_mut().insert(RequestId(id));
    let mut response = next.run(request).await;
    if let Some(header) = header {
        response.headers_mut().insert(X_REQUEST_ID, header);
    }
    response
}

/// The author of a write, read from the request: its identity (authenticated before any
/// handler runs), the client's address and the request's id.
#[derive(Debug, Clone)]
pub(super) struct Author(pub(super) Audit);

impl FromRequestParts<Arc<AppState>> for Author {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, ApiError> {
        let identity = parts
            .extensions
            .get::<Identity>()
            .ok_or_else(ApiError::internal)?;
        Ok(Self(Audit {
            actor: identity.name.clone(),
            role: identity.role.as_str().to_string(),
            source: parts
                .extensions
                .get::<ClientAddr>()
                .map(|ClientAddr(addr)| addr.ip().to_string()),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|RequestId(id)| id.clone())
                .unwrap_or_default(),
            action: None,
            detail: None,
        }))
    }
}

/// Records that `audit` did `action` to `kind` `name`: an operation that is not one write
/// (a reseal, see [`gw_store::Store::append_audit`]), once it completed. A record the store
/// cannot take is logged as an error, with what it would have said, and the operation is
/// answered all the same (it was made).
pub(super) async fn append(
    state: &AppState,
    audit: Audit,
    action: &str,
    kind: &str,
    name: &str,
    detail: Option<String>,
) {
    let audit = audit.doing(action, detail);
    let result = match state.store() {
        Ok(store) => store.append_audit(&audit, kind, name).await,
        Err(_) => return,
    };
    if let Err(err) = result {
        tracing::error!(
            target: gw_store::audit::LOG_TARGET,
            error = %err,
            actor = %audit.actor,
            request_id = %audit.request_id,
            action,
            kind,
            name,
            "the operation was made but its audit record could not be stored"
        );
    }
}

/// The most records one page holds.
const MAX_LIMIT: i64 = 1000;
/// The records of a page when `limit` is not given.
const DEFAULT_LIMIT: i64 = 100;

/// The query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Params {
    since: Option<String>,
    actor: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl Params {
    fn query(self) -> Result<AuditQuery, ApiError> {
        let since = self
            .since
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::field(
                            "since",
                            format!("{text:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"),
                        )
                    })
            })
            .transpose()?;
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::field("limit", format!("a whole number from 1 to {MAX_LIMIT}"))
                })?,
        };
        let before_id = self
            .cursor
            .map(|text| {
                text.parse::<i64>().map_err(|_| {
                    ApiError::field("cursor", "not a cursor: pass the `next` of an answer")
                })
            })
            .transpose()?;
        Ok(AuditQuery {
            since,
            actor: self.actor,
            kind: self.kind,
            name: self.name,
            before_id,
            limit,
        })
    }
}

/// `GET /api/v1/audit?since=&actor=&kind=&name=&limit=&cursor=`: audit records, newest
/// first, `limit` (default 100, at most 1000) a page; `next` is the cursor of the next
/// page, `null` on the last one.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|err| {
        ApiError::field(
            "query",
            format!(
                "{}; supported: since, actor, kind, name, limit, cursor",
                err.body_text()
            ),
        )
    })?;
    let query = params.query()?;
    let items = state
        .store()?
        .list_audit(&query)
        .await
        .map_err(ApiError::from_store)?;
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == query.limit;
    let next = items
        .last()
        .filter(|_| full)
        .map(|last| last.id.to_string());
    Ok(axum::Json(json!({"items": items, "next": next})).into_response())
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn a_plain_request_id_is_kept_and_another_is_not() {
        for good in ["a", "4bf92f35-77b3", "req_1.2:3", &"x".repeat(128)] {
            assert!(plain(good), "{good}");
        }
        for bad in ["", "a b", "a\"b", "é", &"x".repeat(129)] {
            assert!(!plain(bad), "{bad}");
        }
    }
}
