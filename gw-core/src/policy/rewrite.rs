//! `rewrite`: changes the request's path under the API's context, its method, or both, before
//! it goes upstream. A new path may use the operation's path parameters: operation
//! `/items/{id}` with path `/v2/products/{id}` sends `GET /orders/items/7?x` (context
//! `/orders`) on as `GET /orders/v2/products/7?x`, which the upstream service maps under its
//! base path as for any request (context stripped).
//!
//! A path without placeholders is one precomputed value. With placeholders, the request's
//! path after the context is matched against the operation's template (a `matchit` router of
//! one route, built with the layer) and the new path is written in one allocation.
//! Captured values are copied as they are, percent-encoded bytes included.
//!
//! Outside a gateway, [`RewriteLayer`] is the same policy as a `tower` middleware for any
//! stack, over any request and response bodies:
//!
//! ```
//! use gw_core::policy::rewrite::{RewriteConfig, RewriteLayer};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let rewrite = RewriteLayer::with_template(
//!     RewriteConfig { path: Some("/v2/products/{id}".into()), method: None },
//!     "/items/{id}",
//! )?;
//! let service = ServiceBuilder::new()
//!     .layer(rewrite)
//!     .service_fn(|request: Request<()>| async move {
//!         assert_eq!(request.uri(), "/v2/products/7?x=1");
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//!
//! let response = service.oneshot(Request::get("/items/7?x=1").body(())?).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```

use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService, checked_in, standalone};
use super::{Filter, OperationContext, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::Body;
use crate::error::json_error;
use crate::model::FieldError;

/// The configuration of `rewrite`: its params in an API definition, or the typed config
/// of a [`RewriteLayer`]; give `path`, `method` or both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RewriteConfig {
    /// The new path under the API's context, starting with `/`. `{name}` is replaced by the
    /// operation's path parameter `name` (`/v2/products/{id}` for operation
    /// `/items/{id}`); the query string is kept.
    #[serde(default)]
    pub path: Option<String>,
    /// The new method (any case; sent upper case).
    #[serde(default)]
    pub method: Option<String>,
}

/// `rewrite`.
#[derive(Debug)]
pub(crate) struct RewritePolicy;

/// `rewrite` as a `tower::Layer` for any stack: changes the request's path, method or
/// both before the inner service sees it.
pub type RewriteLayer = FilterLayer<RewriteFilter>;

/// The service of a [`RewriteLayer`] around `S`.
pub type Rewrite<S> = FilterService<RewriteFilter, S>;

impl RewriteLayer {
    /// Checks and compiles `config` for requests at the root: a new path without
    /// placeholders, a new method, or both.
    pub fn new(config: RewriteConfig) -> Result<Self, ConfigError> {
        Self::build(config, &standalone())
    }

    /// Checks and compiles `config` for requests whose path matches `template`
    /// (`/items/{id}`, with matchit's syntax): the new path may use its parameters.
    pub fn with_template(config: RewriteConfig, template: &str) -> Result<Self, ConfigError> {
        let ctx = PolicyContext {
            operation: Some(OperationContext {
                method: "",
                path: template,
            }),
            ..standalone()
        };
        Self::build(config, &ctx)
    }

    fn build(config: RewriteConfig, ctx: &PolicyContext<'_>) -> Result<Self, ConfigError> {
        checked_in(&RewritePolicy, ctx, config, |config| {
            RewriteFilter::build(&config, ctx)
        })
        .map(FilterLayer::from_filter)
    }
}

impl Policy for RewritePolicy {
    type Params = RewriteConfig;

    fn check(&self, params: &RewriteConfig, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if params.path.is_none() && params.method.is_none() {
            errors.push(FieldError::new("", "give path, method or both"));
        }
        if let Some(path) = &params.path
            && let Err(message) = parse_path(path, ctx)
        {
            errors.push(FieldError::new("path", message));
        }
        if let Some(method) = &params.method
            && let Err(message) = parse_method(method)
        {
            errors.push(FieldError::new("method", message));
        }
        errors
    }

    fn layer(&self, params: RewriteConfig, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        RewriteFilter::build(&params, ctx).map(filter_layer)
    }
}

impl RewriteFilter {
    fn build(params: &RewriteConfig, ctx: &PolicyContext<'_>) -> Result<Self, String> {
        let prefix = if ctx.context == "/" { "" } else { ctx.context };
        let path = match &params.path {
            None => None,
            Some(path) => {
                let parts = parse_path(path, ctx)?;
                Some(if parts.iter().any(|p| matches!(p, Part::Param(_))) {
                    let template = ctx
                        .operation
                        .map(|op| op.path)
                        .ok_or("path: placeholders need an operation")?;
                    let mut router = matchit::Router::new();
                    router
                        .insert(template, ())
                        .map_err(|e| format!("operation path {template:?}: {e}"))?;
                    NewPath::Captured { router, parts }
                } else {
                    let fixed = format!("{prefix}{path}");
                    NewPath::Fixed(PathAndQuery::try_from(fixed).map_err(|e| format!("path: {e}"))?)
                })
            }
        };
        let method = params.method.as_deref().map(parse_method).transpose()?;
        Ok(Self {
            prefix: prefix.into(),
            path,
            method,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A path parameter, by name.
    Param(String),
}

/// The names of a path template's parameters: `{id}` and `{*rest}` name `id` and `rest`.
fn template_params(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + end];
        names.push(name.strip_prefix('*').unwrap_or(name));
        rest = &rest[start + end + 1..];
    }
    names
}

/// A character that may stand in a path as it is.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)
}

/// Parses a new path into literals and placeholders, and checks the placeholders against
/// the operation's path parameters.
fn parse_path(text: &str, ctx: &PolicyContext<'_>) -> Result<Vec<Part>, String> {
    if !text.starts_with('/') {
        return Err("must start with '/'".to_string());
    }
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let literal_end = rest.find('{').unwrap_or(rest.len());
        let literal = &rest[..literal_end];
        if literal.contains('}') {
            return Err("'}' without '{'".to_string());
        }
        if let Some(bad) = literal.chars().find(|&c| !is_path_char(c)) {
            return Err(format!(
                "character {bad:?} is not allowed: use letters, digits, -._~!$&'()*+,;=:@ and \
                 percent-encoding (the query string is kept as it is)"
            ));
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.to_string()));
        }
        if literal_end == rest.len() {
            break;
        }
        let after = &rest[literal_end + 1..];
        let end = after.find('}').ok_or("'{' without '}'")?;
        let raw = &after[..end];
        let name = raw.strip_prefix('*').unwrap_or(raw);
        if !crate::model::is_param_name(name) {
            return Err(format!(
                "placeholder {{{raw}}} must be a parameter name of letters, digits and '_'"
            ));
        }
        parts.push(Part::Param(name.to_string()));
        rest = &after[end + 1..];
    }
    // Literal segments only: a placeholder fills a whole value.
    let shape: String = parts
        .iter()
        .map(|p| match p {
            Part::Literal(text) => text.as_str(),
            Part::Param(_) => "x",
        })
        .collect();
    if shape.contains("//") {
        return Err("must not contain empty segments ('//')".to_string());
    }
    if shape.split('/').any(|s| s == "." || s == "..") {
        return Err("must not contain '.' or '..' segments".to_string());
    }
    if let Some(at) = shape.find('%')
        && !shape[at..]
            .split('%')
            .skip(1)
            .all(|s| s.len() >= 2 && s.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit))
    {
        return Err("'%' must start a percent-encoded byte (%2F)".to_string());
    }
    let used: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Param(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
        .collect();
    if let Some(first) = used.first() {
        let Some(operation) = ctx.operation else {
            return Err(format!(
                "{{{first}}}: placeholders take the values of an operation's path parameters, \
                 and an API-level rewrite has no operation; attach the rewrite to an operation"
            ));
        };
        let known = template_params(operation.path);
        if let Some(unknown) = used.iter().find(|name| !known.contains(name)) {
            let list = if known.is_empty() {
                "it has none".to_string()
            } else {
                format!("its parameters: {}", known.join(", "))
            };
            return Err(format!(
                "{{{unknown}}} is not a parameter of the operation's path {:?}; {list}",
                operation.path
            ));
        }
    }
    Ok(parts)
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{text:?} is not a method name"))
}

#[derive(Debug)]
enum NewPath {
    /// The context and the new path: the same for every request.
    Fixed(PathAndQuery),
    /// Filled from the parameters the operation's template captures.
    Captured {
        router: matchit::Router<()>,
        parts: Vec<Part>,
    },
}

/// The compiled `rewrite` policy: the [`Filter`] of a [`RewriteLayer`].
#[derive(Debug)]
pub struct RewriteFilter {
    /// The API's context, empty for `/`.
    prefix: Box<str>,
    path: Option<NewPath>,
    method: Option<Method>,
}

impl RewriteFilter {
    /// The new path and the request's query; `None` when the request does not match the
    /// operation's template (which the router has matched: a bug, not the client's error).
    fn path_and_query(&self, path: &NewPath, uri: &Uri) -> Option<PathAndQuery> {
        let query = uri.query();
        let query_len = query.map_or(0, |q| q.len() + 1);
        let mut out = match path {
            NewPath::Fixed(fixed) => {
                let Some(query) = query else {
                    return Some(fixed.clone());
                };
                let mut out = String::with_capacity(fixed.as_str().len() + 1 + query.len());
                out.push_str(fixed.as_str());
                out
            }
            NewPath::Captured { router, parts } => {
                let rest = uri.path().strip_prefix(&*self.prefix)?;
                let rest = if rest.is_empty() { "/" } else { rest };
                // matched as the gateway matched it: `;` parameters ignored (the gateway
                // spelled the context and the literal segments as the API does)
                let rest = crate::path::without_parameters(rest);
                let matched = router.at(&rest).ok()?;
                let mut out =
                    String::with_capacity(self.prefix.len() + rest.len() + query_len + 32);
                out.push_str(&self.prefix);
                for part in parts {
                    match part {
                        Part::Literal(text) => out.push_str(text),
                        Part::Param(name) => out.push_str(matched.params.get(name)?),
                    }
                }
                out
            }
        };
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        PathAndQuery::try_from(out).ok()
    }
}

fn failed() -> Response<Body> {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "rewrite_failed",
        "the request path could not be rewritten",
    )
}

impl<ReqB, ResB> Filter<ReqB, ResB> for RewriteFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        if let Some(path) = &self.path {
            let pq = self
                .path_and_query(path, request.uri())
                .ok_or_else(failed)?;
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.path_and_query = Some(pq);
            *request.uri_mut() = Uri::from_parts(parts).map_err(|_| failed())?;
        }
        if let Some(method) = &self.method {
            *request.method_mut() = method.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::testing::{call, call_seen, ctx};
    use crate::policy::{OperationContext, PolicyRegistry};

    fn op(context: &'static str, path: &'static str) -> PolicyContext<'static> {
        PolicyContext {
            consumers: crate::consumers::ConsumerStore::empty(),
            api: "orders",
            context,
            operation: Some(OperationContext {
                method: "GET",
                path,
            }),
        }
    }

    fn layer(params: serde_json::Value, ctx: &PolicyContext<'_>) -> RouteLayer {
        let params: RewriteConfig = serde_json::from_value(params).unwrap();
        assert!(RewritePolicy.check(&params, ctx).is_empty());
        RewritePolicy.layer(params, ctx).unwrap()
    }

    fn request(method: &str, uri: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(body::empty())
            .unwrap()
    }

    fn errors(params: &serde_json::Value, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        PolicyRegistry::builtin().validate_params("rewrite", params, ctx)
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn params_are_checked_with_paths() {
        let item = op("/orders", "/items/{id}");
        let e = errors(&serde_json::json!({}), &item);
        assert_eq!(fields(&e), [""], "{e:?}");
        let e = errors(
            &serde_json::json!({"path": "v2", "method": "BAD METHOD"}),
            &item,
        );
        assert_eq!(fields(&e), ["path", "method"], "{e:?}");
        let e = errors(&serde_json::json!({"path": "/v2/{sku}", "extra": 1}), &item);
        assert_eq!(fields(&e), ["extra", "path"], "{e:?}");
        assert!(e[1].message.contains("its parameters: id"), "{e:?}");
        for bad in [
            "/v2/{id",
            "/v2/id}",
            "/v2/{}",
            "/v2/{1d}",
            "/v2//{id}",
            "/v2/../{id}",
            "/v2/{id}?x=1",
            "/v2/a b",
            "/v2/%zz",
        ] {
            let e = errors(&serde_json::json!({ "path": bad }), &item);
            assert_eq!(fields(&e), ["path"], "{bad}: {e:?}");
        }
        // an API-level rewrite has no parameters to use
        let e = errors(&serde_json::json!({"path": "/v2/{id}"}), &ctx());
        assert_eq!(fields(&e), ["path"], "{e:?}");
        assert!(e[0].message.contains("API-level"), "{e:?}");
        assert!(errors(&serde_json::json!({"path": "/v2/items"}), &ctx()).is_empty());
        assert!(errors(&serde_json::json!({"method": "post"}), &ctx()).is_empty());
        let files = op("/", "/files/{*rest}");
        assert!(errors(&serde_json::json!({"path": "/static/{rest}"}), &files).is_empty());
        assert!(errors(&serde_json::json!({"path": "/static/{*rest}/%2F"}), &files).is_empty());
    }

    #[tokio::test]
    async fn fills_the_operation_parameters_under_the_context() {
        let item = op("/orders", "/items/{id}");
        let rewrite = layer(serde_json::json!({"path": "/v2/products/{id}"}), &item);
        let (seen, response) = call(&rewrite, request("GET", "/orders/items/7?a=1&b=%2F&&")).await;
        assert_eq!(seen.uri(), "/orders/v2/products/7?a=1&b=%2F&&");
        assert_eq!(seen.method(), "GET");
        assert_eq!(response.status(), 200);

        let (seen, _) = call(&rewrite, request("GET", "/orders/items/a%20b%2e")).await;
        assert_eq!(seen.uri(), "/orders/v2/products/a%20b%2e");

        let (seen, _) = call(&rewrite, request("GET", "http://api.test/orders/items/7?")).await;
        assert_eq!(seen.uri(), "http://api.test/orders/v2/products/7?");

        // no match for the template: answered, never sent elsewhere
        let (seen, response) = call_seen(&rewrite, request("GET", "/orders/other/7")).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 500);
    }

    #[tokio::test]
    async fn parameters_can_be_reordered_and_the_rest_captured() {
        let two = op("/shop", "/users/{user}/orders/{order}");
        let rewrite = layer(serde_json::json!({"path": "/o/{order}/u/{user}"}), &two);
        let (seen, _) = call(&rewrite, request("GET", "/shop/users/ann/orders/9")).await;
        assert_eq!(seen.uri(), "/shop/o/9/u/ann");

        let files = op("/", "/files/{*rest}");
        let rewrite = layer(serde_json::json!({"path": "/static/{rest}"}), &files);
        let (seen, _) = call(&rewrite, request("GET", "/files/a/b.txt?v=2")).await;
        assert_eq!(seen.uri(), "/static/a/b.txt?v=2");
    }

    #[tokio::test]
    async fn fixed_path_and_method() {
        let rewrite = layer(
            serde_json::json!({"path": "/internal/health", "method": "get"}),
            &ctx(),
        );
        let (seen, _) = call(&rewrite, request("POST", "/orders/status?deep=1")).await;
        assert_eq!(seen.uri(), "/orders/internal/health?deep=1");
        assert_eq!(seen.method(), Method::GET);

        let root = PolicyContext {
            consumers: crate::consumers::ConsumerStore::empty(),
            context: "/",
            ..ctx()
        };
        let rewrite = layer(serde_json::json!({"path": "/"}), &root);
        let (seen, _) = call(&rewrite, request("GET", "/anything")).await;
        assert_eq!(seen.uri(), "/");

        let method_only = layer(serde_json::json!({"method": "PURGE"}), &ctx());
        let (seen, _) = call(&method_only, request("GET", "/orders/x?y")).await;
        assert_eq!(seen.method().as_str(), "PURGE");
        assert_eq!(seen.uri(), "/orders/x?y");
    }
}
