//! What every write of the admin API shares, whatever the kind: its query
//! (`?wait=applied&timeout=…`), its preconditions (`If-Match`, `If-None-Match`) and its
//! answer.
//!
//! A write commits the resource and its change-log entry in one store transaction under the
//! next global revision. The answer carries the revision as `ETag`; `If-Match` with a stale
//! ETag gives 412. With `?wait=applied` the answer comes once every connected runtime of the
//! resource's groups (before and after the change) has applied the revision, or after
//! `timeout` (default 30s) with the runtimes that have not, or that rejected it. When no
//! connected runtime serves those groups there is nothing to wait for: the answer says so
//! (`warning`, and a `Warning` header).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gw_core::model::{self, FieldError, HumanDuration};
use gw_store::Precondition;
use serde_json::json;

use super::{ApiError, AppState};
use crate::fleet::{self, ApplyReport};
use crate::watcher::groups_of;

/// `?wait=applied&timeout=…`
#[derive(Debug, Default)]
pub(super) struct WriteParams {
    wait: Option<Duration>,
}

impl WriteParams {
    pub(super) fn parse(query: Option<&str>, state: &AppState) -> Result<Self, ApiError> {
        let mut wait = false;
        let mut timeout = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "wait" if value == "applied" => wait = true,
                "wait" => {
                    return Err(ApiError::field(
                        "wait",
                        format!("unsupported value {value:?}; use wait=applied"),
                    ));
                }
                "timeout" => {
                    let parsed: HumanDuration =
                        value.parse().map_err(|e: model::DurationError| {
                            ApiError::field("timeout", e.to_string())
                        })?;
                    if parsed.as_duration() > state.options.max_wait {
                        return Err(ApiError::field(
                            "timeout",
                            format!(
                                "at most {}",
                                HumanDuration::from_millis(
                                    u64::try_from(state.options.max_wait.as_millis())
                                        .unwrap_or(u64::MAX)
                                )
                            ),
                        ));
                    }
                    timeout = Some(parsed.as_duration());
                }
                other => {
                    return Err(ApiError::field(
                        other,
                        "unknown query parameter; supported: wait, timeout",
                    ));
                }
            }
        }
        if timeout.is_some() && !wait {
            return Err(ApiError::field(
                "timeout",
                "only meaningful with wait=applied",
            ));
        }
        Ok(Self {
            wait: wait.then(|| timeout.unwrap_or(state.options.default_wait)),
        })
    }
}

/// Where a write's precondition comes from, which decides the answer when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Basis {
    /// The client's `If-Match` or `If-None-Match` (or none): 412.
    Client,
    /// A POST, which creates: a taken name is a 409 `already_exists`.
    Create,
    /// The read the write builds on (a consumer's stored secrets): a change since is a
    /// concurrent write, 409 `concurrent_change`.
    Read,
}

/// `If-Match: "<revision>"` and `If-None-Match: *`.
pub(super) fn precondition(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    if let Some(value) = headers.get(header::IF_MATCH) {
        let text = value.to_str().unwrap_or("").trim();
        let tag = text.trim_start_matches("W/").trim_matches('"');
        return match tag.parse::<i64>() {
            Ok(revision) => Ok(Some(Precondition::Revision(revision))),
            Err(_) => Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("If-Match {text:?} matches no revision; send the ETag of a GET"),
            )),
        };
    }
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        if value.to_str().unwrap_or("").trim() == "*" {
            return Ok(Some(Precondition::Absent));
        }
        return Err(ApiError::field(
            "If-None-Match",
            "only `*` is supported on writes",
        ));
    }
    Ok(None)
}

pub(super) fn etag(revision: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Waits for `revision` on the runtimes of `groups` when asked to; a timeout or a rejection
/// becomes an error that still says the write was stored.
pub(super) async fn wait_if_asked(
    state: &AppState,
    params: &WriteParams,
    groups: &[String],
    revision: i64,
) -> Result<Option<ApplyReport>, ApiError> {
    let Some(timeout) = params.wait else {
        return Ok(None);
    };
    let store = state.store()?;
    let unconfirmed = |why: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "apply_unconfirmed",
            format!(
                "stored at revision {revision}, but {why} before the runtimes confirmed it; \
                 the change reaches them when they can be served"
            ),
        )
        .with_etag(revision)
    };
    let mut stopping = state.stopping.clone();
    let report = tokio::select! {
        report = fleet::wait_applied(store, groups, revision, timeout) => {
            report.map_err(|err| {
                tracing::warn!(error = %err, revision, "cannot confirm that runtimes applied a write");
                unconfirmed("the database became unavailable")
            })?
        }
        _ = stopping.wait_for(|stopping| *stopping) => {
            return Err(unconfirmed("the controller is shutting down"));
        }
    };
    if !report.rejected.is_empty() {
        let details = report
            .rejected
            .iter()
            .map(|(node, reason)| FieldError::new(format!("runtimes.{node}"), reason.clone()))
            .collect();
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "apply_rejected",
            format!(
                "stored at revision {revision}, but {} runtime(s) rejected it and keep serving their previous configuration",
                report.rejected.len()
            ),
        )
        .with_details(details)
        .with_etag(revision));
    }
    if !report.pending.is_empty() {
        let details = report
            .pending
            .iter()
            .map(|(node, applied)| {
                FieldError::new(
                    format!("runtimes.{node}"),
                    format!("still serves revision {applied}"),
                )
            })
            .collect();
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "apply_timeout",
            format!(
                "stored at revision {revision}, but {} runtime(s) had not applied it within {}",
                report.pending.len(),
                HumanDuration::from_millis(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            ),
        )
        .with_details(details)
        .with_etag(revision));
    }
    Ok(Some(report))
}

/// A write the store committed, as the answer describes it.
pub(super) struct Written<'a> {
    /// The groups of the resource now.
    pub(super) groups: Vec<String>,
    /// The definition it replaced, whose groups are waited for too.
    pub(super) previous: Option<&'a serde_json::Value>,
    pub(super) revision: i64,
    pub(super) created: bool,
    /// What the answer shows of the resource.
    pub(super) body: serde_json::Value,
    pub(super) location: String,
}

/// Answers a committed write: waits for the runtimes of the groups the resource was and is
/// in when asked, then 201 (created) or 200 with the ETag and the Location.
pub(super) async fn written(
    state: &AppState,
    params: &WriteParams,
    write: Written<'_>,
) -> Result<Response, ApiError> {
    let mut groups = write.groups;
    if let Some(previous) = write.previous {
        groups.extend(groups_of(previous));
    }
    groups.sort();
    groups.dedup();
    let report = match wait_if_asked(state, params, &groups, write.revision).await {
        Ok(report) => report,
        Err(mut error) => {
            // committed all the same: a key generated by this write is shown now or never
            for field in ["generatedKeys", "key"] {
                if let Some(value) = write.body.get(field) {
                    error = error.with_extra(field, value.clone());
                }
            }
            return Err(error);
        }
    };
    let mut body = write.body;
    let warning = report.and_then(|report| report.describe(&groups, write.revision, &mut body));
    let status = if write.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    add_warning(headers, warning.as_deref());
    headers.insert(header::ETAG, etag(write.revision));
    if let Ok(location) = HeaderValue::from_str(&write.location) {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The precondition of a DELETE: `If-Match` only.
pub(super) fn delete_precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    match precondition(headers)? {
        Some(Precondition::Absent) => {
            Err(ApiError::field("If-None-Match", "not supported on DELETE"))
        }
        other => Ok(other.unwrap_or_default()),
    }
}

/// Answers a committed delete: waits for the runtimes of the groups the resource was in
/// when asked, then 200 with the revision of the delete as ETag.
pub(super) async fn deleted(
    state: &AppState,
    params: &WriteParams,
    name: &str,
    revision: i64,
    previous: &serde_json::Value,
) -> Result<Response, ApiError> {
    let groups = groups_of(previous);
    let report = wait_if_asked(state, params, &groups, revision).await?;
    let mut body = json!({"name": name, "revision": revision, "deleted": true});
    let warning = report.and_then(|report| report.describe(&groups, revision, &mut body));
    let mut response = axum::Json(body).into_response();
    add_warning(response.headers_mut(), warning.as_deref());
    response.headers_mut().insert(header::ETAG, etag(revision));
    Ok(response)
}

/// `Warning: 299 gw "<text>"` (a miscellaneous persistent warning, RFC 7234), for clients
/// that show warnings of a successful answer.
fn add_warning(headers: &mut HeaderMap, text: Option<&str>) {
    if let Some(text) = text
        && let Ok(value) = HeaderValue::from_str(&format!("299 gw \"{}\"", text.replace('"', "'")))
    {
        headers.insert(header::WARNING, value);
    }
}
