//! Who may call what under `/api/v1`: authentication of the bearer token, and the roles.
//!
//! A request's bearer token is either `GW_ADMIN_TOKEN` (the break-glass admin) or a named
//! token (`gwadm1.<id>.<secret>`, made through `/api/v1/tokens`), found by its id in the
//! store and its secret's hash compared in constant time. An unknown, wrong, revoked or
//! expired token gets one and the same 401, so that an answer never tells which. A store
//! that does not answer while a named token is checked gives 503, never an open door;
//! `GW_ADMIN_TOKEN` needs no store. With OIDC configured (`--oidc-issuer`), a bearer that is
//! neither and is shaped as a JWT is verified by [`super::oidc`] and mapped to a role; its
//! refusals say why (401 invalid, 403 mapped to no role, 503 no key fetched yet). In
//! development mode without `GW_ADMIN_TOKEN` the admin API is open: a request without a
//! named token (or an OIDC one) is an anonymous admin.
//!
//! The authenticated [`Identity`] goes into the request's extensions. Then the route's
//! [`Family`] and the method decide whether its role may call it ([`ROLES`]); a write of a
//! resource is further checked against the identity's groups by the handler, which knows
//! the resource ([`refuse_groups`]).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use gw_store::AdminRole;

use super::identity::{Identity, NamedToken};
use super::oidc::{MAX_TOKEN_BYTES, looks_like_jwt};
use super::{ApiError, AppState};

/// The families of routes under `/api/v1`, as the roles see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// APIs, certificates and consumers (and consumers' credentials): written within the
    /// caller's groups.
    Resources,
    /// `GET /runtimes`: the fleet.
    Fleet,
    /// `DELETE /runtimes/{node}` and `/runtimes/{node}/enrollment`: revoking and forgetting a
    /// runtime's enrollment.
    RuntimeRevocation,
    /// `/enrollment-tokens`: the join tokens of new runtimes.
    EnrollmentTokens,
    /// `/tokens`: the admin tokens themselves.
    Tokens,
    /// `POST /bundles`: fallback bundles of every group, on demand.
    Bundles,
    /// `/schema/*` and `/policies`: what documents may say.
    Catalog,
}

impl Family {
    /// The family of a route template under `/api/v1` (`/apis/{name}`); `None` for one this
    /// table does not know, which only an admin may call.
    pub(super) fn of(route: &str, method: &Method) -> Option<Self> {
        let route = route.strip_prefix("/api/v1").unwrap_or(route);
        let first = route.trim_start_matches('/').split('/').next()?;
        Some(match first {
            "apis" | "certificates" | "consumers" => Family::Resources,
            "runtimes" if *method == Method::DELETE => Family::RuntimeRevocation,
            "runtimes" => Family::Fleet,
            "enrollment-tokens" => Family::EnrollmentTokens,
            "tokens" => Family::Tokens,
            "bundles" => Family::Bundles,
            "schema" | "policies" => Family::Catalog,
            _ => return None,
        })
    }

    /// What a refusal says the caller wanted.
    fn wanted(self, write: bool) -> &'static str {
        match (self, write) {
            (Family::Resources, false) => "read APIs, certificates and consumers",
            (Family::Resources, true) => "write APIs, certificates and consumers",
            (Family::Fleet, _) => "read the fleet",
            (Family::RuntimeRevocation, _) => "revoke a runtime",
            (Family::EnrollmentTokens, _) => "manage enrollment tokens",
            (Family::Tokens, _) => "manage admin tokens",
            (Family::Bundles, _) => "export fallback bundles",
            (Family::Catalog, _) => "read the schemas and policies",
        }
    }
}

/// What a role may do with a family: read it (GET), write it (any other method), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grant {
    /// Nothing.
    None,
    /// GET and HEAD.
    Read,
    /// Every method (a resource's groups are checked by its handler).
    Write,
}

/// The roles, as a table: what each role may do with each family. Secrets never show to a
/// role other than admin, whatever it reads (see `Identity::sees_secrets`).
pub(super) const ROLES: [(Family, [Grant; 3]); 7] = [
    //                            admin         operator      viewer
    (
        Family::Resources,
        /*    */ [Grant::Write, Grant::Write, Grant::Read],
    ),
    (
        Family::Fleet,
        /*        */ [Grant::Write, Grant::Read, Grant::Read],
    ),
    (
        Family::RuntimeRevocation,
        [Grant::Write, Grant::None, Grant::None],
    ),
    (
        Family::EnrollmentTokens,
        [Grant::Write, Grant::None, Grant::None],
    ),
    (
        Family::Tokens,
        /*       */ [Grant::Write, Grant::None, Grant::None],
    ),
    (
        Family::Bundles,
        /*      */ [Grant::Write, Grant::None, Grant::None],
    ),
    (
        Family::Catalog,
        /*      */ [Grant::Write, Grant::Read, Grant::Read],
    ),
];

/// What `role` may do with `family`.
pub(super) fn grant(role: AdminRole, family: Family) -> Grant {
    let column = match role {
        AdminRole::Admin => 0,
        AdminRole::Operator => 1,
        AdminRole::Viewer => 2,
    };
    ROLES
        .iter()
        .find(|(f, _)| *f == family)
        .map_or(Grant::None, |(_, grants)| grants[column])
}

/// A 403 `forbidden`: `who` may not do `what`, and `why`.
pub(super) fn forbidden(who: &Identity, what: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{who} cannot {what}: {why}"),
    )
}

/// Refuses a write of `noun` `name` by `who` when `groups` (the resource's, before or after
/// the write) are not all within its groups: `cannot write an API of group payments`.
pub(super) fn refuse_groups(
    who: &Identity,
    action: &str,
    noun: &str,
    name: &str,
    groups: &[String],
) -> Result<(), ApiError> {
    let outside: Vec<&str> = groups
        .iter()
        .filter(|g| !who.covers(g))
        .map(String::as_str)
        .collect();
    if who.role == AdminRole::Viewer {
        return Err(forbidden(
            who,
            &format!("{action} {noun} {name:?}"),
            "a viewer only reads",
        ));
    }
    if outside.is_empty() {
        return Ok(());
    }
    let plural = if outside.len() > 1 { "s" } else { "" };
    Err(forbidden(
        who,
        &format!(
            "{action} {} {noun} of group{plural} {}",
            article(noun),
            outside.join(", ")
        ),
        &format!("{name:?} is outside the token's groups"),
    ))
}

fn article(noun: &str) -> &'static str {
    if noun.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The one answer to a missing, unknown, wrong, revoked or expired token (`oidc`: when
/// the admin API also takes OIDC tokens).
fn unauthorized(oidc: bool) -> Response {
    let message = if oidc {
        "a valid bearer token is required: send Authorization: Bearer <GW_ADMIN_TOKEN>, an \
         admin token made with POST /api/v1/tokens, or an OIDC token of the configured issuer"
    } else {
        "a valid bearer token is required: send Authorization: Bearer <GW_ADMIN_TOKEN> or an \
         admin token made with POST /api/v1/tokens"
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"gw\""),
    );
    response
}

/// The bearer token of a request, if it sends one.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        })
}

/// The identity of a named token's text; `Ok(None)` when it is no valid token (401),
/// `Err` when the store cannot tell (503).
async fn named(state: &AppState, text: &str) -> Result<Option<Identity>, ApiError> {
    let Ok(token) = text.parse::<NamedToken>() else {
        return Ok(None);
    };
    let store = state.store()?;
    let Some(stored) = store
        .admin_token(token.id())
        .await
        .map_err(ApiError::from_store)?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    // the hash is compared before the state, so that a wrong secret learns nothing of it
    if !token.matches(&stored.secret_hash) || !stored.record.is_active(now) {
        return Ok(None);
    }
    let record = stored.record;
    // once a minute at most (the store checks again, for other controllers)
    if record
        .last_used_at
        .is_none_or(|at| now - at >= TimeDelta::minutes(1))
        && let Err(err) = store.touch_admin_token(&record.id, now).await
    {
        tracing::warn!(error = %err, token = %record.name, "could not record the admin token's use");
    }
    Ok(Some(Identity {
        name: record.name,
        role: record.role,
        groups: record.groups,
    }))
}

/// The identity of the request's bearer token (see the module docs), or the answer that
/// refuses it.
async fn identify(state: &AppState, presented: Option<&str>) -> Result<Identity, Response> {
    let open = state.token.is_none();
    let oidc = state.oidc.get();
    let Some(p) = presented else {
        return if open {
            Ok(Identity::anonymous())
        } else {
            Err(unauthorized(oidc.is_some()))
        };
    };
    if state.token.as_ref().is_some_and(|token| token.verify(p)) {
        return Ok(Identity::break_glass());
    }
    if let Some(oidc) = oidc
        && !NamedToken::looks_like(p)
        && (p.len() > MAX_TOKEN_BYTES || looks_like_jwt(p))
    {
        let verified = oidc.authenticate(p).await;
        state.requests.oidc_verification(match &verified {
            Ok(_) => "accepted",
            Err(refusal) => refusal.outcome(),
        });
        return verified.map_err(|refusal| {
            tracing::debug!(reason = %refusal, "admin API: OIDC token refused");
            refusal.into_response()
        });
    }
    // development mode without GW_ADMIN_TOKEN is open, unless a named token is presented
    if open && !NamedToken::looks_like(p) {
        return Ok(Identity::anonymous());
    }
    match named(state, p).await {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) => Err(unauthorized(oidc.is_some())),
        Err(error) => Err(error.into_response()),
    }
}

/// Authenticates the request (see the module docs), then lets its role call the route or
/// answers 403.
pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = match identify(&state, bearer(&request)).await {
        Ok(identity) => identity,
        Err(refused) => return refused,
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let method = request.method().clone();
    let family = route.as_deref().and_then(|r| Family::of(r, &method));
    let write = !matches!(method, Method::GET | Method::HEAD);
    let allowed = match family.map(|f| grant(identity.role, f)) {
        Some(Grant::Write) => true,
        Some(Grant::Read) => !write,
        Some(Grant::None) => false,
        None => identity.role == AdminRole::Admin,
    };
    if !allowed {
        let what = family.map_or("call this endpoint", |f| f.wanted(write));
        let why = match identity.role {
            AdminRole::Viewer if write && family == Some(Family::Resources) => {
                "a viewer only reads"
            }
            AdminRole::Operator if family == Some(Family::Bundles) => {
                "bundles hold every group's configuration: that takes the admin role"
            }
            _ => "that takes the admin role",
        };
        return forbidden(&identity, what, why).into_response();
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_family_is_in_the_table_once() {
        for family in [
            Family::Resources,
            Family::Fleet,
            Family::RuntimeRevocation,
            Family::EnrollmentTokens,
            Family::Tokens,
            Family::Bundles,
            Family::Catalog,
        ] {
            assert_eq!(
                ROLES.iter().filter(|(f, _)| *f == family).count(),
                1,
                "{family:?}"
            );
            // an admin does everything
            assert_eq!(grant(AdminRole::Admin, family), Grant::Write);
        }
    }

    #[test]
    fn routes_fall_in_their_family() {
        for (route, method, family) in [
            ("/api/v1/apis/{name}", Method::PUT, Some(Family::Resources)),
            (
                "/api/v1/consumers/{name}/credentials/{id}",
                Method::DELETE,
                Some(Family::Resources),
            ),
            ("/api/v1/runtimes", Method::GET, Some(Family::Fleet)),
            (
                "/api/v1/runtimes/{node}",
                Method::DELETE,
                Some(Family::RuntimeRevocation),
            ),
            ("/api/v1/tokens/{id}", Method::DELETE, Some(Family::Tokens)),
            ("/api/v1/schema/api", Method::GET, Some(Family::Catalog)),
            ("/api/v1/audit", Method::GET, None),
        ] {
            assert_eq!(Family::of(route, &method), family, "{method} {route}");
        }
    }

    #[test]
    fn a_refused_write_names_the_token_its_groups_and_the_resource_s() {
        let operator = Identity {
            name: "ci-deployer".into(),
            role: AdminRole::Operator,
            groups: vec!["edge".into()],
        };
        let err = refuse_groups(
            &operator,
            "write",
            "API",
            "pay",
            &["edge".into(), "payments".into()],
        )
        .unwrap_err()
        .into_response();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert!(refuse_groups(&operator, "write", "API", "e", &["edge".into()]).is_ok());
    }
}
