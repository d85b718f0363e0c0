//! `request-headers` and `response-headers`: set, add, remove and rename headers, with
//! values that may use [`Template`] variables.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::header_names::header_name;
use super::{Filter, Policy, PolicyContext, RouteLayer, Template, filter_layer};
use crate::body::Body;
use crate::model::FieldError;

/// The params of both header policies. The operations run in this order: rename, remove,
/// set, add.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub(crate) struct HeaderParams {
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

impl HeaderParams {
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

/// The compiled operations of one header policy.
#[derive(Debug)]
struct HeaderOps {
    rename: Vec<(HeaderName, HeaderName)>,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
    /// Whether a value depends on the request.
    dynamic: bool,
}

impl HeaderOps {
    /// The values of `set` then `add` for this request, when any depends on it.
    fn render(&self, request: &Request<Body>) -> Vec<Option<HeaderValue>> {
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
pub(crate) struct RequestHeaders;

#[derive(Debug)]
struct RequestHeaderFilter(HeaderOps);

impl Filter for RequestHeaderFilter {
    type State = ();

    fn request(&self, request: &mut Request<Body>) -> Result<(), Response<Body>> {
        let rendered = self.0.render(request);
        self.0.apply(request.headers_mut(), &rendered);
        Ok(())
    }
}

impl Policy for RequestHeaders {
    type Params = HeaderParams;

    fn check(&self, params: &HeaderParams, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        params.check(ctx, true)
    }

    fn layer(&self, params: HeaderParams, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(RequestHeaderFilter(params.build(ctx, true)?)))
    }
}

/// `response-headers`: changes the response's headers before it goes to the client. The
/// values are rendered from the request, as it arrived at this policy.
#[derive(Debug)]
pub(crate) struct ResponseHeaders;

#[derive(Debug)]
struct ResponseHeaderFilter(HeaderOps);

impl Filter for ResponseHeaderFilter {
    type State = Vec<Option<HeaderValue>>;

    fn request(&self, request: &mut Request<Body>) -> Result<Self::State, Response<Body>> {
        Ok(self.0.render(request))
    }

    fn response(&self, rendered: Self::State, response: &mut Response<Body>) {
        self.0.apply(response.headers_mut(), &rendered);
    }
}

impl Policy for ResponseHeaders {
    type Params = HeaderParams;

    fn check(&self, params: &HeaderParams, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        params.check(ctx, false)
    }

    fn layer(&self, params: HeaderParams, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(ResponseHeaderFilter(
            params.build(ctx, false)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, ctx};

    fn params(json: serde_json::Value) -> HeaderParams {
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
        let layer = filter_layer(RequestHeaderFilter(ops));
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
        let layer = filter_layer(ResponseHeaderFilter(ops));
        let request = Request::builder()
            .uri("/orders/7")
            .body(body::empty())
            .unwrap();
        let (_, response) = call(&layer, request).await;
        assert_eq!(response.headers()["x-path"], "/orders/7");
        assert!(response.headers().get("server").is_none());
    }
}
