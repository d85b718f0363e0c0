//! Development mode without an admin token: the admin API answers whoever reaches it, and a
//! web page open in the developer's browser reaches `localhost` too. Two checks keep such a
//! page out:
//!
//! - `Host` must name a loopback address, `localhost`, or a name given with
//!   `--dev-allowed-hosts` (421 otherwise): a page whose own name an attacker rebinds to
//!   127.0.0.1 (DNS rebinding) sends its own name, and is refused. The health endpoints,
//!   which tell nothing, answer whatever the `Host` (container health checks use names of
//!   their own).
//! - A write with a body must say what it sends, and the admin API must accept it (415
//!   otherwise): the types a page may post without a CORS preflight (`text/plain`, forms, or
//!   none at all) are all refused, and the admin API answers no preflight.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// The `Host` names accepted in development mode without a token (besides `localhost` and
/// loopback addresses).
#[derive(Debug, Clone, Default)]
pub struct DevGuard {
    allowed_hosts: Vec<String>,
}

impl DevGuard {
    /// Accepts `allowed_hosts` too (names or addresses, without a port; case does not
    /// matter).
    pub fn new(allowed_hosts: &[String]) -> Self {
        Self {
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// Whether `host` (a `Host` header's value, a port allowed) is accepted.
    fn allows(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if name == "localhost" {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>()
            && ip.to_canonical().is_loopback()
        {
            return true;
        }
        self.allowed_hosts.iter().any(|allowed| allowed == name)
    }
}

/// The name of `host`, without its port and, for an IPv6 address, without its brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        // one colon: a port; more: an IPv6 address without brackets
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// The checks of the module docs, when the state has a [`DevGuard`].
pub(super) async fn guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(guard) = &state.dev_guard else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let health = matches!(
        path,
        "/healthz" | "/readyz" | "/api/v1/healthz" | "/api/v1/readyz"
    );
    if health && matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str));
    if !host.is_some_and(|h| guard.allows(h)) {
        let shown = host.map_or_else(
            || "none".to_string(),
            |h| format!("{:?}", gw_sync::clip(h, 64)),
        );
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "development mode without GW_ADMIN_TOKEN answers requests for localhost or a \
                 loopback address only (Host: {shown}); add the name with --dev-allowed-hosts, \
                 or set GW_ADMIN_TOKEN"
            ),
        )
        .into_response();
    }
    let writes = matches!(
        *request.method(),
        Method::PUT | Method::POST | Method::PATCH | Method::DELETE
    );
    if writes && !request.body().is_end_stream() {
        if !request.headers().contains_key(header::CONTENT_TYPE) {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "development mode without GW_ADMIN_TOKEN requires a Content-Type on request \
                 bodies: send application/yaml or application/json",
            )
            .into_response();
        }
        if let Err(err) = super::format::request_format(request.headers()) {
            return err.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_listed_hosts_are_allowed() {
        let guard = DevGuard::new(&["Dev.Example.".to_string(), " 10.0.0.5 ".to_string()]);
        for host in [
            "localhost",
            "LOCALHOST:9090",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.1.2.3:80",
            "[::1]:9090",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]:9090",
            "dev.example:9090",
            "10.0.0.5:9090",
        ] {
            assert!(guard.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.6",
            "[::2]:9090",
            "",
            "0.0.0.0:9090",
        ] {
            assert!(!guard.allows(host), "{host}");
        }
    }
}
