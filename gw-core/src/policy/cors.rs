//! `cors`: Cross-Origin Resource Sharing. Preflights are answered at the gateway; other
//! requests from an allowed origin go upstream and their responses get the
//! `Access-Control-Allow-*` headers. The policy is the one authority on CORS for its route:
//! the upstream's own `Access-Control-Allow-Origin`, `-Credentials` and `-Expose-Headers`
//! are replaced or removed.
//!
//! Everything is compiled when the policy is built: origins into a set, origin patterns into
//! literal pieces and wildcards, header lists into header values. A request costs a header
//! lookup or two, a set lookup and, for a pattern, a scan of the origin on the stack.
//!
//! Outside a gateway, [`CorsLayer`] is the same policy as a `tower` middleware for any
//! stack, over any request and response bodies:
//!
//! ```
//! use gw_core::policy::cors::{CorsConfig, CorsLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cors = CorsLayer::new(CorsConfig {
//!     allow_origins: vec!["https://app.example.com".into()],
//!     max_age: Some(600),
//!     ..CorsConfig::default()
//! })?;
//! let service = ServiceBuilder::new()
//!     .layer(cors)
//!     .service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     });
//!
//! let preflight = Request::options("/orders")
//!     .header("origin", "https://app.example.com")
//!     .header("access-control-request-method", "PUT")
//!     .body(String::new())?;
//! let response = service.oneshot(preflight).await?;
//! assert_eq!(response.status(), StatusCode::NO_CONTENT);
//! assert_eq!(response.headers()["access-control-allow-methods"], "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderName,
    HeaderValue, ORIGIN, VARY,
};
use http::{Method, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::{Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::{self, Body};
use crate::error::json_error;
use crate::model::FieldError;

/// The configuration of `cors`: its params in an API definition, or the typed config of a
/// [`CorsLayer`]. [`CorsConfig::default`] allows no origin yet (list some) and the default
/// methods.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed, exactly (`https://app.example.com`: scheme, host and a port other
    /// than the scheme's default; no path), or `"*"` for any origin (not with
    /// `allowCredentials`).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Origin patterns allowed, where `*` stands for one or more characters of one host
    /// label (letters, digits, `-`, `_`; never `.`, `:` or `/`): `https://*.example.com`
    /// allows `https://app.example.com` but not `https://a.b.example.com` nor
    /// `https://example.com`.
    #[serde(default)]
    pub allow_origin_patterns: Vec<String>,
    /// Methods a preflight may ask for (default `GET, HEAD, POST, PUT, PATCH, DELETE,
    /// OPTIONS`); case-sensitive.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed, or `["*"]` for any (not with `allowCredentials`; browsers do
    /// not count `Authorization` under `*`). Default: the headers the preflight asks for.
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the browser lets the page read besides the safelisted ones, or
    /// `["*"]` for all (not with `allowCredentials`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether the browser may send cookies and HTTP authentication, and let the page read
    /// the answer (`Access-Control-Allow-Credentials: true`). Default false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long, in seconds, a browser may cache a preflight's answer
    /// (`Access-Control-Max-Age`). Default: not sent (browsers cache for 5 seconds).
    #[serde(default)]
    pub max_age: Option<u32>,
}

const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Methods whose lower-case spelling in `allowMethods` is a mistake, not an extension method.
const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

fn default_methods() -> Vec<String> {
    DEFAULT_METHODS.iter().map(ToString::to_string).collect()
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            allow_origin_patterns: Vec::new(),
            allow_methods: default_methods(),
            allow_headers: None,
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age: None,
        }
    }
}

/// `cors` as a `tower::Layer` for any stack: [`CorsLayer::new`] compiles a [`CorsConfig`]
/// once; its services ([`Cors`]) answer preflights and put the CORS headers on the inner
/// service's responses.
pub type CorsLayer = FilterLayer<CorsFilter>;

/// The service of a [`CorsLayer`] around `S`.
pub type Cors<S> = FilterService<CorsFilter, S>;

impl CorsLayer {
    /// Checks and compiles `config`: the same rules as the params of the `cors` policy.
    pub fn new(config: CorsConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&CorsPolicy, config, |config| CorsFilter::build(&config))
    }
}

/// Origins longer than this never match a pattern (a host name is at most 253 bytes).
const MAX_ORIGIN_LEN: usize = 320;

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");

/// `cors`.
#[derive(Debug)]
pub(crate) struct CorsPolicy;

impl Policy for CorsPolicy {
    type Params = CorsConfig;

    fn phase(&self) -> Phase {
        Phase::Cors
    }

    fn check(&self, params: &CorsConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if params.allow_origins.is_empty() && params.allow_origin_patterns.is_empty() {
            errors.push(FieldError::new(
                "allowOrigins",
                "list at least one origin here or in allowOriginPatterns",
            ));
        }
        for (i, origin) in params.allow_origins.iter().enumerate() {
            if origin == "*" {
                if params.allow_credentials {
                    errors.push(FieldError::new(
                        format!("allowOrigins[{i}]"),
                        "\"*\" cannot be used with allowCredentials: list the origins",
                    ));
                }
            } else if let Err(message) = parse_origin(origin) {
                errors.push(FieldError::new(format!("allowOrigins[{i}]"), message));
            }
        }
        for (i, pattern) in params.allow_origin_patterns.iter().enumerate() {
            if let Err(message) = OriginPattern::parse(pattern) {
                errors.push(FieldError::new(
                    format!("allowOriginPatterns[{i}]"),
                    message,
                ));
            }
        }
        if params.allow_methods.is_empty() {
            errors.push(FieldError::new("allowMethods", "list at least one method"));
        }
        for (i, method) in params.allow_methods.iter().enumerate() {
            if let Err(message) = parse_method(method) {
                errors.push(FieldError::new(format!("allowMethods[{i}]"), message));
            }
        }
        let lists = [
            (
                "allowHeaders",
                params.allow_headers.as_deref().unwrap_or(&[]),
            ),
            ("exposeHeaders", params.expose_headers.as_slice()),
        ];
        for (field, names) in lists {
            for (i, name) in names.iter().enumerate() {
                if name == "*" {
                    if params.allow_credentials {
                        errors.push(FieldError::new(
                            format!("{field}[{i}]"),
                            "\"*\" cannot be used with allowCredentials: list the headers",
                        ));
                    }
                } else if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    errors.push(FieldError::new(
                        format!("{field}[{i}]"),
                        format!("{name:?} is not a header name"),
                    ));
                }
            }
        }
        errors
    }

    fn layer(&self, params: CorsConfig, _ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(CorsFilter::build(&params)?))
    }
}

/// An exact origin in its serialized form (lower case, no default port, no path).
fn parse_origin(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let not_an_origin =
        || format!("{text:?} is not an origin: scheme://host[:port], without a path");
    let url = url::Url::parse(&lower).map_err(|_| not_an_origin())?;
    let origin = url.origin();
    if !origin.is_tuple() {
        return Err(not_an_origin());
    }
    let serialized = origin.ascii_serialization();
    if serialized != lower {
        return Err(format!(
            "{text:?} is not an origin as browsers send it: write {serialized:?}"
        ));
    }
    Ok(lower)
}

fn parse_method(text: &str) -> Result<Method, String> {
    if text == "*" {
        return Err("list the methods: \"*\" is not supported".to_string());
    }
    let upper = text.to_ascii_uppercase();
    if upper != text && KNOWN_METHODS.contains(&upper.as_str()) {
        return Err(format!("methods are case-sensitive: write {upper:?}"));
    }
    Method::from_bytes(text.as_bytes()).map_err(|_| format!("{text:?} is not a method name"))
}

/// A byte a pattern's `*` may stand for: a host label's.
fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[derive(Debug)]
enum Piece {
    /// Bytes compared without regard to ASCII case.
    Literal(Box<[u8]>),
    /// One or more label bytes.
    Wildcard,
}

/// A compiled `allowOriginPatterns` entry.
#[derive(Debug)]
struct OriginPattern {
    pieces: Vec<Piece>,
}

impl OriginPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let Some(scheme_end) = lower.find("://") else {
            return Err(format!(
                "{text:?} is not an origin pattern: scheme://host[:port], like https://*.example.com"
            ));
        };
        if lower[..scheme_end].contains('*') {
            return Err("\"*\" may only stand in the host".to_string());
        }
        if lower.contains("**") {
            return Err("\"**\" is not a pattern: use one \"*\" per label".to_string());
        }
        // With each `*` replaced by a label, the pattern must be an origin in its
        // serialized form; a `*` in the port makes it fail.
        let example = lower.replace('*', "x");
        match parse_origin(&example) {
            Ok(_) => {}
            Err(_) if lower.contains('*') => {
                return Err(format!(
                    "{text:?} is not an origin pattern: scheme://host[:port], without a path, \
                     lower case, with \"*\" standing in the host only"
                ));
            }
            Err(message) => return Err(message),
        }
        let mut pieces = Vec::new();
        for (i, literal) in lower.split('*').enumerate() {
            if i > 0 {
                pieces.push(Piece::Wildcard);
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal.as_bytes().into()));
            }
        }
        Ok(Self { pieces })
    }

    /// Whether `origin` matches, ASCII case aside. The set of positions in `origin` that
    /// the pieces so far can reach is kept on the stack.
    fn matches(&self, origin: &[u8]) -> bool {
        let n = origin.len();
        if n > MAX_ORIGIN_LEN {
            return false;
        }
        let mut reach = [false; MAX_ORIGIN_LEN + 1];
        reach[0] = true;
        for piece in &self.pieces {
            let mut next = [false; MAX_ORIGIN_LEN + 1];
            let mut any = false;
            match piece {
                Piece::Literal(literal) => {
                    for p in 0..=n.saturating_sub(literal.len()) {
                        if reach[p]
                            && origin
                                .get(p..p + literal.len())
                                .is_some_and(|s| s.eq_ignore_ascii_case(literal))
                        {
                            next[p + literal.len()] = true;
                            any = true;
                        }
                    }
                }
                Piece::Wildcard => {
                    let mut run = false;
                    for q in 1..=n {
                        run = is_label_byte(origin[q - 1]) && (reach[q - 1] || run);
                        next[q] = run;
                        any |= run;
                    }
                }
            }
            if !any {
                return false;
            }
            reach = next;
        }
        reach[n]
    }
}

/// The compiled `cors` policy: the [`Filter`] of a [`CorsLayer`].
#[derive(Debug)]
pub struct CorsFilter {
    /// `"*"` is listed: every origin is allowed and answered with `*`.
    any_origin: bool,
    /// Exact origins, lower case.
    origins: HashSet<Box<str>>,
    patterns: Vec<OriginPattern>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// `None`: echo `Access-Control-Request-Headers`.
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    /// The preflight's `Vary`, when it has one.
    preflight_vary: Option<HeaderValue>,
}

fn join(items: &[String]) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&items.join(", ")).map_err(|_| format!("{items:?}: not a header value"))
}

/// A header list as one value: `*` alone when `*` is listed, `None` when empty.
fn header_list(items: &[String]) -> Result<Option<HeaderValue>, String> {
    if items.iter().any(|h| h == "*") {
        return Ok(Some(ANY));
    }
    for name in items {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?}: not a header name"))?;
    }
    if items.is_empty() {
        return Ok(None);
    }
    join(items).map(Some)
}

impl CorsFilter {
    fn build(params: &CorsConfig) -> Result<Self, String> {
        let any_origin = params.allow_origins.iter().any(|o| o == "*");
        if any_origin && params.allow_credentials {
            return Err("allowOrigins: \"*\" cannot be used with allowCredentials".to_string());
        }
        let origins = params
            .allow_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| parse_origin(o).map(String::into_boxed_str))
            .collect::<Result<HashSet<_>, _>>()?;
        let patterns = params
            .allow_origin_patterns
            .iter()
            .map(|p| OriginPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let methods = params
            .allow_methods
            .iter()
            .map(|m| parse_method(m))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_headers = match &params.allow_headers {
            Some(list) => Some(header_list(list)?.unwrap_or(HeaderValue::from_static(""))),
            None => None,
        };
        let expose_headers = header_list(&params.expose_headers)?;
        let preflight_vary = match (any_origin, allow_headers.is_none()) {
            (true, false) => None,
            (true, true) => Some(HeaderValue::from_static("Access-Control-Request-Headers")),
            (false, false) => Some(HeaderValue::from_static("Origin")),
            (false, true) => Some(HeaderValue::from_static(
                "Origin, Access-Control-Request-Headers",
            )),
        };
        Ok(Self {
            any_origin,
            origins,
            patterns,
            allow_methods: join(&params.allow_methods)?,
            methods,
            allow_headers,
            expose_headers,
            credentials: params.allow_credentials,
            max_age: params.max_age.map(HeaderValue::from),
            preflight_vary,
        })
    }

    /// The `Access-Control-Allow-Origin` for `origin`, or `None` when it is not allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            return Some(ANY);
        }
        let bytes = origin.as_bytes();
        let exact = match origin.to_str() {
            Ok(text) if bytes.iter().any(u8::is_ascii_uppercase) => {
                self.origins.contains(text.to_ascii_lowercase().as_str())
            }
            Ok(text) => self.origins.contains(text),
            Err(_) => return None,
        };
        if exact || self.patterns.iter().any(|p| p.matches(bytes)) {
            Some(origin.clone())
        } else {
            None
        }
    }

    /// The answer to a preflight.
    fn preflight<B>(&self, request: &Request<B>, allow: Option<HeaderValue>) -> Response<Body> {
        let method_allowed = request
            .headers()
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| {
                self.methods
                    .iter()
                    .any(|x| x.as_str().as_bytes() == m.as_bytes())
            });
        let mut response = match allow {
            None => forbidden("the origin is not allowed"),
            Some(_) if !method_allowed => forbidden("the method is not allowed"),
            Some(origin) => {
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                let headers = response.headers_mut();
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                if self.credentials {
                    headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
                }
                headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
                let allow_headers = match &self.allow_headers {
                    Some(list) => Some(list.clone()),
                    None => request
                        .headers()
                        .get(ACCESS_CONTROL_REQUEST_HEADERS)
                        .cloned(),
                };
                if let Some(list) = allow_headers.filter(|v| !v.is_empty()) {
                    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, list);
                }
                if let Some(max_age) = &self.max_age {
                    headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
                }
                if let Some(vary) = &self.preflight_vary {
                    headers.append(VARY, vary.clone());
                }
                return response;
            }
        };
        if !self.any_origin {
            response
                .headers_mut()
                .append(VARY, HeaderValue::from_static("Origin"));
        }
        response
    }
}

fn forbidden(message: &str) -> Response<Body> {
    json_error(StatusCode::FORBIDDEN, "cors_forbidden", message)
}

/// Whether `Vary` already names `Origin` (or is `*`).
fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|token| token == b"*" || token.eq_ignore_ascii_case(b"origin"))
    })
}

impl<ReqB, ResB> Filter<ReqB, ResB> for CorsFilter {
    /// The `Access-Control-Allow-Origin` of the response; `None`: no CORS headers.
    type State = Option<HeaderValue>;

    fn request(&self, request: &mut Request<ReqB>) -> Result<Self::State, Response<Body>> {
        let Some(origin) = request.headers().get(ORIGIN) else {
            return Ok(None);
        };
        let allow = self.allow(origin);
        if request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Err(self.preflight(request, allow));
        }
        Ok(allow)
    }

    fn response(&self, allow: Self::State, response: &mut Response<ResB>) {
        let headers = response.headers_mut();
        match allow {
            Some(origin) => {
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                if self.credentials {
                    headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
                } else {
                    headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
                }
                match &self.expose_headers {
                    Some(list) => {
                        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, list.clone());
                    }
                    None => {
                        headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
                    }
                }
            }
            None => {
                headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
                headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
                headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
            }
        }
        // The answer depends on the origin (whether or not this one was allowed, and when
        // there was none): caches must keep one copy per origin.
        if !self.any_origin && !varies_by_origin(headers) {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, call_seen, ctx, text};

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: CorsConfig = serde_json::from_value(params).unwrap();
        assert!(CorsPolicy.check(&params, &ctx()).is_empty());
        CorsPolicy.layer(params, &ctx()).unwrap()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri("/orders/1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(body::empty()).unwrap()
    }

    fn preflight(origin: &str, method: &str) -> Request<Body> {
        request(
            "OPTIONS",
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", "content-type, x-trace"),
            ],
        )
    }

    fn values<'a>(response: &'a Response<Body>, name: &str) -> Vec<&'a str> {
        response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn params_are_checked_with_paths() {
        let registry = PolicyRegistry::builtin();
        let errors = registry.validate_params(
            "cors",
            &serde_json::json!({
                "allowOrigins": ["https://ok.example.com", "https://a.example.com/", "null", "*"],
                "allowOriginPatterns": ["https://*.example.com", "*://x.com", "https://x.com:*", "https://*.x.com/p"],
                "allowMethods": ["GET", "get", "BAD METHOD"],
                "allowHeaders": ["x-ok", "bad header", "*"],
                "exposeHeaders": ["*"],
                "allowCredentials": true,
                "maxAge": 600
            }),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "allowOrigins[1]",
                "allowOrigins[2]",
                "allowOrigins[3]",
                "allowOriginPatterns[1]",
                "allowOriginPatterns[2]",
                "allowOriginPatterns[3]",
                "allowMethods[1]",
                "allowMethods[2]",
                "allowHeaders[1]",
                "allowHeaders[2]",
                "exposeHeaders[0]",
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("\"https://a.example.com\""));
        assert!(errors[6].message.contains("\"GET\""));

        let errors = registry.validate_params(
            "cors",
            &serde_json::json!({"maxAge": -1, "allowMethods": [], "extra": true}),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "maxAge"], "{errors:?}");
        let errors =
            registry.validate_params("cors", &serde_json::json!({"allowMethods": []}), &ctx());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["allowOrigins", "allowMethods"], "{errors:?}");
        assert_eq!(registry.phase("cors"), Phase::Cors);
        let schema = registry.schema("cors").unwrap();
        let description = schema["properties"]["allowOriginPatterns"]["description"]
            .as_str()
            .unwrap();
        assert!(description.contains("one host"), "{schema}");
    }

    #[test]
    fn patterns_match_one_label() {
        let p = OriginPattern::parse("https://*.Example.com").unwrap();
        assert!(p.matches(b"https://app.example.com"));
        assert!(p.matches(b"https://APP-2.example.com"));
        assert!(!p.matches(b"https://example.com"));
        assert!(!p.matches(b"https://.example.com"));
        assert!(!p.matches(b"https://a.b.example.com"));
        assert!(!p.matches(b"https://evil.com/.example.com"));
        assert!(!p.matches(b"https://app.example.com.evil.com"));
        assert!(!p.matches(b"http://app.example.com"));
        assert!(!p.matches(b"https://app.example.com:8443"));
        let p = OriginPattern::parse("http://app-*-*.test:8080").unwrap();
        assert!(p.matches(b"http://app-a-b.test:8080"));
        assert!(p.matches(b"http://app-a-b-c.test:8080"));
        assert!(!p.matches(b"http://app-a.test:8080"));
        assert!(!p.matches(b"http://app-a-b.test:8081"));
        let long = format!("https://{}.example.com", "a".repeat(400));
        assert!(
            !OriginPattern::parse("https://*.example.com")
                .unwrap()
                .matches(long.as_bytes())
        );
    }

    #[tokio::test]
    async fn preflight_is_answered_at_the_gateway() {
        let cors = layer(serde_json::json!({
            "allowOrigins": ["https://app.example.com"],
            "allowOriginPatterns": ["https://*.example.org"],
            "allowMethods": ["GET", "PUT"],
            "allowCredentials": true,
            "maxAge": 600
        }));
        let (seen, response) = call_seen(&cors, preflight("https://app.example.com", "PUT")).await;
        assert!(seen.is_none(), "the upstream must not see a preflight");
        assert_eq!(response.status(), 204);
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-trace");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(
            values(&response, "vary"),
            ["Origin, Access-Control-Request-Headers"]
        );

        let (_, response) = call_seen(&cors, preflight("https://x.example.org", "GET")).await;
        assert_eq!(response.status(), 204);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://x.example.org"
        );

        let (seen, response) =
            call_seen(&cors, preflight("https://app.example.com", "DELETE")).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 403);
        assert_eq!(values(&response, "vary"), ["Origin"]);
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
        assert!(text(response).await.contains("\"cors_forbidden\""));

        let (seen, response) = call_seen(&cors, preflight("https://evil.com", "GET")).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()["content-type"], "application/json");

        // an OPTIONS that is not a preflight goes upstream
        let (seen, _) = call_seen(
            &cors,
            request("OPTIONS", &[("origin", "https://app.example.com")]),
        )
        .await;
        assert!(seen.is_some());
    }

    #[tokio::test]
    async fn preflight_with_a_header_list_and_any_origin() {
        let cors = layer(serde_json::json!({
            "allowOrigins": ["*"],
            "allowHeaders": ["Content-Type", "X-Trace"],
        }));
        let (_, response) = call_seen(&cors, preflight("https://anyone.test", "PATCH")).await;
        assert_eq!(response.status(), 204);
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-allow-headers"], "Content-Type, X-Trace");
        assert_eq!(
            h["access-control-allow-methods"],
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        );
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(h.get("access-control-max-age").is_none());
        assert!(h.get("vary").is_none());

        let star = layer(serde_json::json!({"allowOrigins": ["*"], "allowHeaders": ["*"]}));
        let (_, response) = call_seen(&star, preflight("https://anyone.test", "GET")).await;
        assert_eq!(response.headers()["access-control-allow-headers"], "*");
    }

    #[tokio::test]
    async fn allowed_origins_get_cors_headers_on_the_upstream_response() {
        let cors = layer(serde_json::json!({
            "allowOrigins": ["https://app.example.com"],
            "exposeHeaders": ["x-total", "etag"],
            "allowCredentials": true
        }));
        let (seen, response) = call(
            &cors,
            request("GET", &[("origin", "https://app.example.com")]),
        )
        .await;
        assert_eq!(seen.headers()["origin"], "https://app.example.com");
        let h = response.headers();
        assert_eq!(h["server"], "upstream");
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-total, etag");
        assert_eq!(values(&response, "vary"), ["Origin"]);

        // origins compare without regard to ASCII case
        let (_, response) = call(
            &cors,
            request("GET", &[("origin", "HTTPS://App.Example.com")]),
        )
        .await;
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "HTTPS://App.Example.com"
        );

        for headers in [&[("origin", "https://evil.com")][..], &[]] {
            let (_, response) = call(&cors, request("POST", headers)).await;
            let h = response.headers();
            assert!(h.get("access-control-allow-origin").is_none());
            assert!(h.get("access-control-allow-credentials").is_none());
            assert!(h.get("access-control-expose-headers").is_none());
            assert_eq!(values(&response, "vary"), ["Origin"]);
        }
    }

    #[tokio::test]
    async fn any_origin_answers_star_without_vary() {
        let cors = layer(serde_json::json!({"allowOrigins": ["*"]}));
        let (_, response) = call(&cors, request("GET", &[("origin", "https://a.test")])).await;
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert!(response.headers().get("vary").is_none());
        assert!(
            response
                .headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
    }

    #[test]
    fn response_headers_replace_the_upstream_ones_and_vary_is_appended() {
        let cors = CorsFilter::build(
            &serde_json::from_value(serde_json::json!({
                "allowOrigins": ["https://app.example.com"]
            }))
            .unwrap(),
        )
        .unwrap();
        let upstream = || {
            let mut response = Response::new(body::empty());
            let h = response.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("x"));
            h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
            response
        };
        let mut response = upstream();
        Filter::<Body, Body>::response(
            &cors,
            Some(HeaderValue::from_static("https://app.example.com")),
            &mut response,
        );
        assert_eq!(
            values(&response, "access-control-allow-origin"),
            ["https://app.example.com"]
        );
        assert!(
            response
                .headers()
                .get("access-control-expose-headers")
                .is_none()
        );
        assert_eq!(values(&response, "vary"), ["Accept-Encoding", "Origin"]);

        let mut response = upstream();
        response
            .headers_mut()
            .insert(VARY, HeaderValue::from_static("accept, ORIGIN"));
        Filter::<Body, Body>::response(&cors, None, &mut response);
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
        assert_eq!(values(&response, "vary"), ["accept, ORIGIN"]);
    }
}
