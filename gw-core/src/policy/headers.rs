//! `request-headers` and `response-headers`: set, add, remove and rename headers, with
//! values that may use [`Template`] variables.
//!
//! Outside a gateway, [`RequestHeadersLayer`] and [`ResponseHeadersLayer`] are the same
//! policies as `tower` middlewares for any stack, over any request and response bodies:
//!
//! ```
//! use gw_core::policy::headers::{HeadersConfig, RequestHeadersLayer, ResponseHeadersLayer};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut request_headers = HeadersConfig::default();
//! request_headers.set.insert("x-forwarded-path".into(), "${request.path}".into());
//! request_headers.remove.push("cookie".into());
//! let mut response_headers = HeadersConfig::default();
//! response_headers.set.insert("cache-control".into(), "no-store".into());
//!
//! let service = ServiceBuilder::new()
//!     .layer(RequestHeadersLayer::new(request_headers)?)
//!     .layer(ResponseHeadersLayer::new(response_headers)?)
//!     .service_fn(|request: Request<()>| async move {
//!         assert!(request.headers().get("cookie").is_none());
//!         let path = request.headers()["x-forwarded-path"].clone();
//!         Ok::<_, std::convert::Infallible>(Response::new(path.to_str().unwrap_or("").to_string()))
//!     });
//!
//! let request = Request::get("/orders/7").header("cookie", "a=b").body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.headers()["cache-control"], "no-store");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService, standalone};
use super::header_names::header_name;
use super::{Filter, Policy, PolicyContext, RouteLayer, Template, filter_layer};
use crate::body::Body;
use crate::model::FieldError;
use crate::model::secret::{REDACTED, SecretField, header_secret_fields, is_sensitive_header};

/// The configuration of both header policies: their params in an API definition, or the
/// typed config of a [`RequestHeadersLayer`] or a [`ResponseHeadersLayer`]. The operations
/// run in this order: rename, remove, set, add. Its `Debug` shows the values of
/// credentials (`Authorization`...) as `<redacted>`.
#[derive(Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Headers renamed, old name to new name; every value moves.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers set, replacing any value they had; values may use `${...}` variables.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers appended to any value they have; values may use `${...}` variables.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// `request-headers` as a `tower::Layer` for any stack: changes the request's headers
/// before the inner service sees them.
pub type RequestHeadersLayer = FilterLayer<RequestHeadersFilter>;

/// The service of a [`RequestHeadersLayer`] around `S`.
pub type RequestHeaders<S> = FilterService<RequestHeadersFilter, S>;

impl RequestHeadersLayer {
    /// Checks and compiles `config`: the same rules as the params of `request-headers`.
    /// Values may use the [`Template`] variables that do not need an operation's path.
    pub fn new(config: HeadersConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&RequestHeadersPolicy, config, |config| {
            config.build(&standalone(), true).map(RequestHeadersFilter)
        })
    }
}

/// `response-headers` as a `tower::Layer` for any stack: changes the inner service's
/// response headers, with values rendered from the request.
pub type ResponseHeadersLayer = FilterLayer<ResponseHeadersFilter>;

/// The service of a [`ResponseHeadersLayer`] around `S`.
pub type ResponseHeaders<S> = FilterService<ResponseHeadersFilter, S>;

impl ResponseHeadersLayer {
    /// Checks and compiles `config`: the same rules as the params of `response-headers`.
    pub fn new(config: HeadersConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&ResponseHeadersPolicy, config, |config| {
            config
                .build(&standalone(), false)
                .map(ResponseHeadersFilter)
        })
    }
}

impl HeadersConfig {
    fn check(&self, ctx: &PolicyContext<'_>, request_side: bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut name = |field: String, name: &str| {
            if let Err(message) = header_name(name, request_side) {
                errors.push(FieldError::new(field, message));
            }
        };
        for (old, new) in &self.rename {
            name(format!("rename.{old}"), old);
            name(format!("rename.{old}"), new);
        }
        for (i, removed) in self.remove.iter().enumerate() {
            name(format!("remove[{i}]"), removed);
        }
        for (key, map) in [("set", &self.set), ("add", &self.add)] {
            for header in map.keys() {
                name(format!("{key}.{header}"), header);
            }
        }
        for (key, map) in [("set", &self.set), ("add", &self.add)] {
            for (header, value) in map {
                if let Err(message) = Template::parse(value, ctx) {
                    errors.push(FieldError::new(format!("{key}.{header}"), message));
                }
            }
        }
        errors
    }

    fn build(self, ctx: &PolicyContext<'_>, request_side: bool) -> Result<HeaderOps, String> {
        let parse = |map: BTreeMap<String, String>| -> Result<Vec<(HeaderName, Template)>, String> {
            map.into_iter()
                .map(|(name, value)| {
                    Ok((
                        header_name(&name, request_side)?,
                        Template::parse(&value, ctx)?,
                    ))
                })
                .collect()
        };
        let rename = self
            .rename
            .iter()
            .map(|(old, new)| {
                Ok((
                    header_name(old, request_side)?,
                    header_name(new, request_side)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let remove = self
            .remove
            .iter()
            .map(|name| header_name(name, request_side))
            .collect::<Result<Vec<_>, String>>()?;
        let set = parse(self.set)?;
        let add = parse(self.add)?;
        let dynamic = set.iter().chain(&add).any(|(_, t)| t.constant().is_none());
        Ok(HeaderOps {
            rename,
            remove,
            set,
            add,
            dynamic,
        })
    }
}

impl std::fmt::Debug for HeadersConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadersConfig")
            .field("rename", &self.rename)
            .field("remove", &self.remove)
            .field("set", &ShownValues(&self.set))
            .field("add", &ShownValues(&self.add))
            .finish()
    }
}

/// Header values as `Debug` shows them: a credential's as `<redacted>`.
struct ShownValues<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for ShownValues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if is_sensitive_header(name) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (name, shown)
            }))
            .finish()
    }
}

/// The compiled operations of one header policy. Its `Debug` shows the names of the
/// headers set and added, not their values (which may be credentials).
struct HeaderOps {
    rename: Vec<(HeaderName, HeaderName)>,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
    /// Whether a value depends on the request.
    dynamic: bool,
}

impl std::fmt::Debug for HeaderOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |ops: &[(HeaderName, Template)]| -> Vec<HeaderName> {
            ops.iter().map(|(name, _)| name.clone()).collect()
        };
        f.debug_struct("HeaderOps")
            .field("rename", &self.rename)
            .field("remove", &self.remove)
            .field("set", &names(&self.set))
            .field("add", &names(&self.add))
            .field("dynamic", &self.dynamic)
            .finish()
    }
}

impl HeaderOps {
    /// The values of `set` then `add` for this request, when any depends on it.
    fn render<B>(&self, request: &Request<B>) -> Vec<Option<HeaderValue>> {
        if !self.dynamic {
            return Vec::new();
        }
        self.set
            .iter()
            .chain(&self.add)
            .map(|(_, template)| template.render(request))
            .collect()
    }

    fn apply(&self, headers: &mut HeaderMap, rendered: &[Option<HeaderValue>]) {
        for (old, new) in &self.rename {
            let values: Vec<HeaderValue> = match headers.entry(old) {
                http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => continue,
            };
            for value in values {
                headers.append(new, value);
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
        let value = |i: usize, template: &Template| -> Option<HeaderValue> {
            match template.constant() {
                Some(constant) => Some(constant.clone()),
                None => rendered.get(i).cloned().flatten(),
            }
        };
        for (i, (name, template)) in self.set.iter().enumerate() {
            if let Some(value) = value(i, template) {
                headers.insert(name, value);
            }
        }
        for (i, (name, template)) in self.add.iter().enumerate() {
            if let Some(value) = value(self.set.len() + i, template) {
                headers.append(name, value);
            }
        }
    }
}

/// `request-headers`: changes the request's headers before it goes upstream.
#[derive(Debug)]
pub(crate) struct RequestHeadersPolicy;

/// The compiled `request-headers` policy: the [`Filter`] of a [`RequestHeadersLayer`].
#[derive(Debug)]
pub struct RequestHeadersFilter(HeaderOps);

impl<ReqB, ResB> Filter<ReqB, ResB> for RequestHeadersFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        let rendered = self.0.render(request);
        self.0.apply(request.headers_mut(), &rendered);
        Ok(())
    }
}

impl Policy for RequestHeadersPolicy {
    type Params = HeadersConfig;

    fn check(&self, params: &HeadersConfig, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        params.check(ctx, true)
    }

    fn layer(&self, params: HeadersConfig, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(RequestHeadersFilter(params.build(ctx, true)?)))
    }

    /// The values of the credentials it sets or adds (`Authorization`, `Cookie`,
    /// `X-Api-Key`...).
    fn secret_params(&self, params: &serde_json::Value) -> Vec<SecretField> {
        header_secret_fields(params)
    }
}

/// `response-headers`: changes the response's headers before it goes to the client. The
/// values are rendered from the request, as it arrived at this policy.
#[derive(Debug)]
pub(crate) struct ResponseHeadersPolicy;

/// The compiled `response-headers` policy: the [`Filter`] of a [`ResponseHeadersLayer`].
#[derive(Debug)]
pub struct ResponseHeadersFilter(HeaderOps);

impl<ReqB, ResB> Filter<ReqB, ResB> for ResponseHeadersFilter {
    type State = Vec<Option<HeaderValue>>;

    fn request(&self, request: &mut Request<ReqB>) -> Result<Self::State, Response<Body>> {
        Ok(self.0.render(request))
    }

    fn response(&self, rendered: Self::State, response: &mut Response<ResB>) {
        self.0.apply(response.headers_mut(), &rendered);
    }
}

impl Policy for ResponseHeadersPolicy {
    type Params = HeadersConfig;

    fn check(&self, params: &HeadersConfig, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        params.check(ctx, false)
    }

    fn layer(&self, params: HeadersConfig, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(ResponseHeadersFilter(
            params.build(ctx, false)?,
        )))
    }

    /// The values of the credentials it sets or adds (`Set-Cookie`...).
    fn secret_params(&self, params: &serde_json::Value) -> Vec<SecretField> {
        header_secret_fields(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, ctx};

    fn params(json: serde_json::Value) -> HeadersConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn params_are_checked_with_paths() {
        let registry = PolicyRegistry::builtin();
        let errors = registry.validate_params(
            "request-headers",
            &serde_json::json!({
                "set": {"x-ok": "${client.ip}", "bad name": "v", "x-t": "${nope}"},
                "remove": ["content-length"],
                "rename": {"host": "x-host"},
                "extra": 1
            }),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "extra",
                "rename.host",
                "remove[0]",
                "set.bad name",
                "set.x-t"
            ],
            "{errors:?}"
        );
        // host may be set on responses, never on requests
        assert!(
            registry
                .validate_params(
                    "response-headers",
                    &serde_json::json!({"set": {"host": "x"}}),
                    &ctx()
                )
                .is_empty()
        );
        assert!(
            registry
                .validate_params(
                    "request-headers",
                    &serde_json::json!({"set": {"x-n": 1}}),
                    &ctx()
                )
                .iter()
                .any(|e| e.field == "set.x-n")
        );
    }

    #[tokio::test]
    async fn request_headers_rename_remove_set_add_in_order() {
        let ops = params(serde_json::json!({
            "rename": {"x-old": "x-new"},
            "remove": ["x-secret"],
            "set": {"x-api": "${api.name}", "x-new": "replaced"},
            "add": {"x-via": "gw ${request.method}"}
        }))
        .build(&ctx(), true)
        .unwrap();
        let layer = filter_layer(RequestHeadersFilter(ops));
        let request = Request::builder()
            .uri("/orders/1")
            .header("x-old", "1")
            .header("x-secret", "s")
            .header("x-via", "proxy")
            .body(body::empty())
            .unwrap();
        let (seen, _) = call(&layer, request).await;
        assert_eq!(seen.headers()["x-api"], "orders");
        assert_eq!(seen.headers()["x-new"], "replaced");
        assert!(seen.headers().get("x-old").is_none());
        assert!(seen.headers().get("x-secret").is_none());
        let via: Vec<_> = seen.headers().get_all("x-via").iter().collect();
        assert_eq!(via, ["proxy", "gw GET"]);
    }

    #[tokio::test]
    async fn response_headers_render_from_the_request() {
        let ops = params(serde_json::json!({
            "set": {"x-path": "${request.path}"},
            "remove": ["server"]
        }))
        .build(&ctx(), false)
        .unwrap();
        let layer = filter_layer(ResponseHeadersFilter(ops));
        let request = Request::builder()
            .uri("/orders/7")
            .body(body::empty())
            .unwrap();
        let (_, response) = call(&layer, request).await;
        assert_eq!(response.headers()["x-path"], "/orders/7");
        assert!(response.headers().get("server").is_none());
    }
}
