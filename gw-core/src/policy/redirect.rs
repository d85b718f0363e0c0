//! `redirect`: answers every request at the gateway with a redirect to a [`Template`]
//! location (`https://new.example.com${request.path}`), optionally with the request's query
//! string. The upstream is not called.
//!
//! Outside a gateway, [`RedirectLayer`] is the same policy as a `tower` middleware for any
//! stack, over any request and response bodies:
//!
//! ```
//! use gw_core::policy::redirect::{RedirectConfig, RedirectLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let moved = RedirectLayer::new(RedirectConfig {
//!     location: "https://new.example.com${request.path}".into(),
//!     status: 308,
//!     keep_query: true,
//! })?;
//! let service = ServiceBuilder::new()
//!     .layer(moved)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("not called")))
//!     });
//!
//! let response = service.oneshot(Request::get("/orders?page=2").body(())?).await?;
//! assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
//! assert_eq!(response.headers()["location"], "https://new.example.com/orders?page=2");
//! # Ok(())
//! # }
//! ```

use http::header::LOCATION;
use http::{HeaderValue, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService, standalone};
use super::{Filter, Policy, PolicyContext, RouteLayer, Template, filter_layer};
use crate::body::{self, Body};
use crate::error::json_error;
use crate::model::FieldError;

/// The configuration of `redirect`: its params in an API definition, or the typed config of
/// a [`RedirectLayer`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Where to: a path on this host (`/v2/orders`) or an absolute `http://` or `https://`
    /// URL. May use `${...}` variables (`${request.path}`, `${request.host}`, ...); the host of
    /// an absolute URL may use `${request.host}` only.
    pub location: String,
    /// The status: 301, 302, 303, 307 or 308 (default 302).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Whether the request's query string is appended to the location (after `&` when the
    /// location has a query of its own). Default false.
    #[serde(default)]
    pub keep_query: bool,
}

fn default_status() -> u16 {
    302
}

const STATUSES: &[u16] = &[301, 302, 303, 307, 308];

/// Variables that may stand in the host of an absolute location: the others come from the
/// client and would let it choose where it is sent.
const HOST_VARIABLES: &[&str] = &["${request.host}", "${api.name}"];

/// `redirect`.
#[derive(Debug)]
pub(crate) struct RedirectPolicy;

/// `redirect` as a `tower::Layer` for any stack: answers every request with a redirect;
/// the inner service is never called.
pub type RedirectLayer = FilterLayer<RedirectFilter>;

/// The service of a [`RedirectLayer`] around `S`.
pub type Redirect<S> = FilterService<RedirectFilter, S>;

impl RedirectLayer {
    /// Checks and compiles `config`: the same rules as the params of `redirect`. The
    /// location may use the [`Template`] variables that do not need an operation's path.
    pub fn new(config: RedirectConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&RedirectPolicy, config, |config| {
            RedirectFilter::build(&config, &standalone())
        })
    }
}

impl Policy for RedirectPolicy {
    type Params = RedirectConfig;

    fn check(&self, params: &RedirectConfig, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(message) = Template::parse(&params.location, ctx) {
            errors.push(FieldError::new("location", message));
        } else if let Err(message) = check_location(&params.location) {
            errors.push(FieldError::new("location", message));
        }
        if !STATUSES.contains(&params.status) {
            errors.push(FieldError::new(
                "status",
                "must be 301, 302, 303, 307 or 308",
            ));
        }
        errors
    }

    fn layer(&self, params: RedirectConfig, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        RedirectFilter::build(&params, ctx).map(filter_layer)
    }
}

impl RedirectFilter {
    fn build(params: &RedirectConfig, ctx: &PolicyContext<'_>) -> Result<Self, String> {
        check_location(&params.location)?;
        if !STATUSES.contains(&params.status) {
            return Err("status: must be 301, 302, 303, 307 or 308".to_string());
        }
        Ok(Self {
            location: Template::parse(&params.location, ctx)?,
            status: StatusCode::from_u16(params.status).map_err(|e| e.to_string())?,
            keep_query: params.keep_query,
        })
    }
}

/// The shape of a location: a path that stays on this host, or an absolute URL whose host
/// the client cannot choose.
fn check_location(text: &str) -> Result<(), String> {
    // Every variable replaced by a plain value, for the syntax checks.
    let mut example = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        example.push_str(&rest[..start]);
        example.push('x');
        rest = rest[start..]
            .find('}')
            .map_or("", |end| &rest[start + end + 1..]);
    }
    example.push_str(rest);
    if !example.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be a URL without spaces or control characters (percent-encode them)".to_string(),
        );
    }
    if let Some(path) = text.strip_prefix('/') {
        if path.starts_with('/') || path.starts_with('\\') || path.starts_with("${") {
            return Err(
                "a path must start with '/' and a character other than '/', '\\' or a variable \
                 (\"//host\" would send the client to another host)"
                    .to_string(),
            );
        }
        return Ok(());
    }
    let lower = text.to_ascii_lowercase();
    let Some(after_scheme) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return Err(
            "must be a path starting with '/' or an absolute http:// or https:// URL".to_string(),
        );
    };
    // `${request.path}` starts with '/', so it ends the host too.
    let host_end = after_scheme
        .find(['/', '?', '#', '\\'])
        .into_iter()
        .chain(after_scheme.find("${request.path}"))
        .min()
        .unwrap_or(after_scheme.len());
    let mut host = after_scheme[..host_end].to_string();
    if host.is_empty() {
        return Err("the URL has no host".to_string());
    }
    for variable in HOST_VARIABLES {
        host = host.replace(variable, "x");
    }
    if host.contains("${") {
        return Err(
            "the URL's host may use ${request.host} only: other variables would let the client \
             choose where it is sent"
                .to_string(),
        );
    }
    url::Url::parse(&example).map_err(|e| format!("not a URL: {e}"))?;
    Ok(())
}

/// Whether a location that is an absolute URL has a non-empty host.
fn has_host_if_absolute(location: &[u8]) -> bool {
    let after = [&b"https://"[..], b"http://"].iter().find_map(|scheme| {
        (location.len() >= scheme.len() && location[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &location[scheme.len()..])
    });
    match after {
        None => true,
        Some(rest) => {
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
                .unwrap_or(rest.len());
            end > 0 && !rest[..end].starts_with(b":")
        }
    }
}

/// The compiled `redirect` policy: the [`Filter`] of a [`RedirectLayer`].
#[derive(Debug)]
pub struct RedirectFilter {
    location: Template,
    status: StatusCode,
    keep_query: bool,
}

/// `location` with `query` appended: before any `#fragment`, after `?` or `&`.
fn with_query(location: &HeaderValue, query: &str) -> Option<HeaderValue> {
    let bytes = location.as_bytes();
    let end = bytes.iter().position(|&b| b == b'#').unwrap_or(bytes.len());
    let (head, fragment) = bytes.split_at(end);
    let separator: &[u8] = match head.iter().position(|&b| b == b'?') {
        None => b"?",
        Some(_) if head.ends_with(b"?") || head.ends_with(b"&") => b"",
        Some(_) => b"&",
    };
    let mut out = Vec::with_capacity(bytes.len() + separator.len() + query.len());
    out.extend_from_slice(head);
    out.extend_from_slice(separator);
    out.extend_from_slice(query.as_bytes());
    out.extend_from_slice(fragment);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

impl<ReqB, ResB> Filter<ReqB, ResB> for RedirectFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        let query = if self.keep_query {
            request.uri().query().filter(|q| !q.is_empty())
        } else {
            None
        };
        let location = self
            .location
            .render(request)
            .and_then(|location| match query {
                Some(query) => with_query(&location, query),
                None => Some(location),
            });
        let Some(location) = location else {
            return Err(json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "redirect_failed",
                "the redirect location could not be built",
            ));
        };
        if !has_host_if_absolute(location.as_bytes()) {
            // `https://${request.host}/...` for a request without a (valid) host: the
            // browser would read the path's first segment as the host
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "bad_host",
                "the request has no valid Host to redirect to",
            ));
        }
        let mut response = Response::new(body::empty());
        *response.status_mut() = self.status;
        response.headers_mut().insert(LOCATION, location);
        Err(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call_seen, ctx, text};

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: RedirectConfig = serde_json::from_value(params).unwrap();
        assert!(RedirectPolicy.check(&params, &ctx()).is_empty());
        RedirectPolicy.layer(params, &ctx()).unwrap()
    }

    fn request(uri: &str) -> Request<Body> {
        Request::builder()
            .uri(uri)
            .header("host", "api.example.com")
            .header("x-target", "evil.com")
            .body(body::empty())
            .unwrap()
    }

    async fn location(layer: &RouteLayer, uri: &str) -> (StatusCode, String) {
        let (seen, response) = call_seen(layer, request(uri)).await;
        assert!(seen.is_none(), "the upstream must not be called");
        let status = response.status();
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(text(response).await, "");
        (status, location)
    }

    #[test]
    fn params_are_checked_with_paths() {
        let registry = PolicyRegistry::builtin();
        let fields = |params: serde_json::Value| -> Vec<String> {
            registry
                .validate_params("redirect", &params, &ctx())
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(serde_json::json!({})), ["location"]);
        assert_eq!(
            fields(serde_json::json!({"location": "/a", "status": 200, "keep": true})),
            ["keep", "status"]
        );
        for bad in [
            "${nope}",
            "relative/path",
            "//evil.com/x",
            "/${header.x-target}",
            "/\\evil.com",
            "https://${header.x-target}/x",
            "https://",
            "ftp://files.example.com",
            "/with space",
            "javascript:alert(1)",
        ] {
            assert_eq!(
                fields(serde_json::json!({ "location": bad })),
                ["location"],
                "{bad}"
            );
        }
        for good in [
            "/",
            "/v2${request.path}",
            "https://new.example.com${request.path}",
            "https://${request.host}${request.path}",
            "HTTP://old.example.com:8080/a?b=c#d",
        ] {
            assert!(
                fields(serde_json::json!({ "location": good })).is_empty(),
                "{good}"
            );
        }
    }

    #[tokio::test]
    async fn answers_with_the_location() {
        let moved = layer(serde_json::json!({"location": "https://new.example.com/a"}));
        assert_eq!(
            location(&moved, "/orders/1?x=1").await,
            (StatusCode::FOUND, "https://new.example.com/a".to_string())
        );
        let https = layer(serde_json::json!({
            "location": "https://${request.host}${request.path}", "status": 308, "keepQuery": true
        }));
        assert_eq!(
            location(&https, "/orders/1?x=1&y=%20").await,
            (
                StatusCode::PERMANENT_REDIRECT,
                "https://api.example.com/orders/1?x=1&y=%20".to_string()
            )
        );
        assert_eq!(
            location(&https, "/orders/1").await.1,
            "https://api.example.com/orders/1"
        );
    }

    #[tokio::test]
    async fn keep_query_joins_an_existing_query_before_the_fragment() {
        let cases = [
            ("/new?a=1#top", "/new?a=1&q=2#top"),
            ("/new?", "/new?q=2"),
            ("/new#top", "/new?q=2#top"),
        ];
        for (target, expected) in cases {
            let redirect = layer(serde_json::json!({
                "location": target, "status": 301, "keepQuery": true
            }));
            assert_eq!(
                location(&redirect, "/orders?q=2").await,
                (StatusCode::MOVED_PERMANENTLY, expected.to_string())
            );
            assert_eq!(location(&redirect, "/orders?").await.1, target);
        }
    }

    #[tokio::test]
    async fn a_request_without_a_valid_host_is_not_redirected_elsewhere() {
        let layer =
            layer(serde_json::json!({"location": "https://${request.host}${request.path}"}));
        for host in [None, Some("evil.com?.example.com")] {
            let mut builder = Request::builder().uri("/evil.com/x");
            if let Some(host) = host {
                builder = builder.header("host", host);
            }
            let (seen, response) = call_seen(&layer, builder.body(body::empty()).unwrap()).await;
            assert!(seen.is_none());
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{host:?}");
            assert!(response.headers().get(LOCATION).is_none());
        }
        assert!(has_host_if_absolute(b"/relative"));
        assert!(has_host_if_absolute(b"HTTPS://a.example/x"));
        assert!(!has_host_if_absolute(b"https:///evil.com/x"));
        assert!(!has_host_if_absolute(b"http://:80/x"));
    }
}
