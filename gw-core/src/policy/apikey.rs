//! `api-key`: authenticates a request by an API key in a header or a query parameter,
//! against the consumers' `api-key` credentials. The key never reaches the upstream.
//!
//! Outside a gateway, [`ApiKeyLayer`] is the same policy as a `tower` middleware for any
//! stack, over any request and response bodies, against a [`ConsumerStore`] of your own:
//!
//! ```
//! use gw_core::consumers::{ConsumerSet, ConsumerStore};
//! use gw_core::policy::Consumer;
//! use gw_core::policy::apikey::ApiKeyLayer;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let consumers = ConsumerSet::from_documents([serde_json::json!({
//!     "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
//!     "spec": {"credentials": [{"type": "api-key", "id": "k1", "key": "alice-key-0123456789"}]}
//! })])
//! .map_err(|errors| errors.join("; "))?;
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(ConsumerStore::new(consumers)))
//!     .service_fn(|request: Request<()>| async move {
//!         // the consumer the key belongs to; the key itself is gone
//!         let name = request.extensions().get::<Consumer>().map(|c| c.name.to_string());
//!         assert!(request.headers().get("x-api-key").is_none());
//!         Ok::<_, std::convert::Infallible>(Response::new(name.unwrap_or_default()))
//!     });
//!
//! let without = Request::get("/orders").body(())?;
//! let response = service.clone().oneshot(without).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//!
//! let with = Request::get("/orders").header("x-api-key", "alice-key-0123456789").body(())?;
//! let response = service.oneshot(with).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::header_names::header_name;
use super::{Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::Body;
use crate::consumers::ConsumerStore;
use crate::error::unauthorized;
use crate::model::FieldError;

/// The configuration of `api-key`: its params in an API definition, or the typed config of
/// an [`ApiKeyLayer`]. The default looks for the key in `X-API-Key`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The header that carries the key (default `X-API-Key`); `""` to accept none.
    #[serde(default = "default_header")]
    pub header: String,
    /// A query parameter that carries the key, when clients cannot set headers (browsers'
    /// `EventSource`, links); none by default. The header is looked at first.
    #[serde(default)]
    pub query: Option<String>,
}

fn default_header() -> String {
    "X-API-Key".to_string()
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            header: default_header(),
            query: None,
        }
    }
}

/// `api-key` as a `tower::Layer` for any stack. Its services ([`ApiKey`]) answer a request
/// without a valid key with 401 and a `WWW-Authenticate` challenge; a request with one goes
/// on without the key, with the consumer it belongs to in its extensions
/// ([`Consumer`](super::Consumer)).
pub type ApiKeyLayer = FilterLayer<ApiKeyFilter>;

/// The service of an [`ApiKeyLayer`] around `S`.
pub type ApiKey<S> = FilterService<ApiKeyFilter, S>;

impl ApiKeyLayer {
    /// Authenticates by the key in `X-API-Key` against `consumers`' `api-key` credentials.
    /// The store is read per request: a set stored into it later (a key added or revoked)
    /// takes effect at once.
    pub fn new(consumers: ConsumerStore) -> Self {
        FilterLayer::from_filter(ApiKeyFilter {
            header: Some(HeaderName::from_static("x-api-key")),
            query: None,
            challenge: HeaderValue::from_static("ApiKey header=\"x-api-key\""),
            consumers,
        })
    }

    /// Authenticates by the key where `config` says, against `consumers`.
    pub fn with_config(
        config: ApiKeyConfig,
        consumers: ConsumerStore,
    ) -> Result<Self, ConfigError> {
        FilterLayer::checked(&ApiKeyPolicy, config, |config| {
            ApiKeyFilter::build(config, consumers)
        })
    }
}

const MAX_QUERY_NAME: usize = 64;

/// `api-key`.
#[derive(Debug)]
pub(crate) struct ApiKeyPolicy;

impl Policy for ApiKeyPolicy {
    type Params = ApiKeyConfig;

    fn check(&self, params: &ApiKeyConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !params.header.is_empty()
            && let Err(message) = header_name(&params.header, true)
        {
            errors.push(FieldError::new("header", message));
        }
        if let Some(query) = &params.query
            && (query.is_empty()
                || query.len() > MAX_QUERY_NAME
                || !query
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        {
            errors.push(FieldError::new(
                "query",
                format!("must be 1 to {MAX_QUERY_NAME} letters, digits, '-', '_' or '.'"),
            ));
        }
        if params.header.is_empty() && params.query.is_none() {
            errors.push(FieldError::new(
                "header",
                "give a header, a query parameter or both",
            ));
        }
        errors
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn layer(&self, params: ApiKeyConfig, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        ApiKeyFilter::build(params, ctx.consumers.clone()).map(filter_layer)
    }
}

impl ApiKeyFilter {
    fn build(params: ApiKeyConfig, consumers: ConsumerStore) -> Result<Self, String> {
        let header = if params.header.is_empty() {
            None
        } else {
            Some(header_name(&params.header, true)?)
        };
        let challenge = HeaderValue::from_str(&match (&header, &params.query) {
            (Some(h), _) => format!("ApiKey header=\"{h}\""),
            (None, Some(q)) => format!("ApiKey query=\"{q}\""),
            (None, None) => "ApiKey".to_string(),
        })
        .map_err(|e| e.to_string())?;
        Ok(ApiKeyFilter {
            header,
            query: params.query,
            challenge,
            consumers,
        })
    }
}

/// The compiled `api-key` policy: the [`Filter`] of an [`ApiKeyLayer`].
#[derive(Debug)]
pub struct ApiKeyFilter {
    header: Option<HeaderName>,
    query: Option<String>,
    challenge: HeaderValue,
    consumers: ConsumerStore,
}

impl ApiKeyFilter {
    /// The first key of the query parameter, and the query without any occurrence of it
    /// (`None` when the parameter is absent).
    fn key_in_query<'a>(&self, query: &'a str) -> Option<(&'a str, String)> {
        let name = self.query.as_deref()?;
        let mut key = None;
        let mut rest = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name {
                key.get_or_insert(v);
                continue;
            }
            if !rest.is_empty() {
                rest.push('&');
            }
            rest.push_str(pair);
        }
        key.map(|key| (key, rest))
    }
}

impl<ReqB, ResB> Filter<ReqB, ResB> for ApiKeyFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        // every copy of the query parameter goes, whichever key is used: none reaches the
        // upstream
        let in_query = request.uri().query().and_then(|q| self.key_in_query(q));
        let from_header = self
            .header
            .as_ref()
            .and_then(|name| request.headers().get(name));
        let consumers = self.consumers.load();
        // the key is looked up where it is (a header's bytes need no copy)
        let (found, new_query) = match (from_header, in_query) {
            (Some(key), in_query) => (
                consumers.by_api_key(key.as_bytes()),
                in_query.map(|(_, rest)| rest),
            ),
            (None, Some((key, rest))) => (consumers.by_api_key(&percent_decode(key)), Some(rest)),
            (None, None) => {
                return Err(unauthorized(
                    "missing_credentials",
                    "an API key is required",
                    &self.challenge,
                ));
            }
        };
        let Some(consumer) = found.cloned() else {
            return Err(unauthorized(
                "invalid_credentials",
                "the API key is not valid",
                &self.challenge,
            ));
        };
        super::authenticate(request, consumer);
        // the key never goes upstream
        if let Some(name) = &self.header {
            request.headers_mut().remove(name);
        }
        if let Some(rest) = new_query {
            let path = request.uri().path();
            let pq = if rest.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{rest}")
            };
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = pq.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        Ok(())
    }
}

/// Decodes `%XX` escapes and `+` (a key in a query string may be form-encoded).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::body;
    use crate::consumers::ConsumerSet;
    use crate::policy::testing::{call, call_seen, store_with, text};
    use crate::policy::{Consumer, PolicyRegistry};

    fn layer(params: &serde_json::Value, store: &ConsumerStore) -> RouteLayer {
        let ctx = PolicyContext {
            consumers: store,
            ..crate::policy::testing::ctx()
        };
        let params: ApiKeyConfig = serde_json::from_value(params.clone()).unwrap();
        ApiKeyPolicy.layer(params, &ctx).unwrap()
    }

    fn request(uri: &str, key: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri(uri);
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.body(body::empty()).unwrap()
    }

    const KEY: &str = "alice-key-0123456789";

    #[tokio::test]
    async fn a_valid_key_names_the_consumer_and_is_not_forwarded() {
        let store = store_with(serde_json::json!([{"type": "api-key", "id": "k1", "key": KEY}]));
        let layer = layer(&serde_json::json!({"query": "apikey"}), &store);
        let (seen, _) = call(&layer, request("/orders/1", Some(KEY))).await;
        assert!(seen.headers().get("x-api-key").is_none());
        let consumer = seen.extensions().get::<Consumer>().unwrap();
        assert_eq!(
            (&*consumer.name, consumer.credential.as_deref()),
            ("alice", Some("k1"))
        );

        // from the query, decoded, and removed from the query with the rest kept as sent
        let uri = format!("/orders/1?a=%20&apikey={}&b=2", KEY.replace('-', "%2D"));
        let (seen, _) = call(&layer, request(&uri, None)).await;
        assert_eq!(seen.uri().query(), Some("a=%20&b=2"));
        assert!(seen.extensions().get::<Consumer>().is_some());
        let (seen, _) = call(&layer, request(&format!("/orders/1?apikey={KEY}"), None)).await;
        assert_eq!(seen.uri().to_string(), "/orders/1");
        // a key in the header: the query's copies (another key, repeats) go too
        let uri = format!("/orders/1?apikey=other-key-0123456789&x=1&apikey={KEY}");
        let (seen, _) = call(&layer, request(&uri, Some(KEY))).await;
        assert_eq!(seen.uri().query(), Some("x=1"));
    }

    #[tokio::test]
    async fn missing_and_wrong_keys_are_refused() {
        let store = store_with(serde_json::json!([{"type": "api-key", "id": "k1", "key": KEY}]));
        let layer = layer(&serde_json::json!({}), &store);
        let (seen, response) = call_seen(&layer, request("/orders/1", None)).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            "ApiKey header=\"x-api-key\""
        );
        assert!(text(response).await.contains("missing_credentials"));
        let (seen, response) =
            call_seen(&layer, request("/orders/1", Some("alice-key-012345678"))).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 401);
        assert!(text(response).await.contains("invalid_credentials"));
        // the query is not looked at unless configured
        let (seen, _) = call_seen(&layer, request(&format!("/o?apikey={KEY}"), None)).await;
        assert!(seen.is_none());
    }

    #[tokio::test]
    async fn revocation_takes_effect_with_the_next_set() {
        let store = store_with(serde_json::json!([{"type": "api-key", "id": "k1", "key": KEY}]));
        let layer = layer(&serde_json::json!({}), &store);
        let (seen, _) = call_seen(&layer, request("/o", Some(KEY))).await;
        assert!(seen.is_some());
        store.store(Arc::new(ConsumerSet::default()));
        let (seen, response) = call_seen(&layer, request("/o", Some(KEY))).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 401);
    }

    #[test]
    fn params_are_checked() {
        let registry = PolicyRegistry::builtin();
        let ctx = crate::policy::testing::ctx();
        let errors = registry.validate_params(
            "api-key",
            &serde_json::json!({"header": "", "query": "a b"}),
            &ctx,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["query"], "{errors:?}");
        let errors = registry.validate_params("api-key", &serde_json::json!({"header": ""}), &ctx);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            registry
                .validate_params("api-key", &serde_json::Value::Null, &ctx)
                .is_empty()
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Db+c%"), b"a-b c%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }
}
