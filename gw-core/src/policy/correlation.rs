//! `correlation-id`: gives every request an id, kept from the client when it sent a valid one,
//! otherwise a new random UUID. The id goes upstream in a header, into the request's
//! extensions as [`RequestId`] (where `${request.id}` templates and the access log read it),
//! and back to the client in the same header.
//!
//! Outside a gateway, [`CorrelationIdLayer`] is the same policy as a `tower` middleware for
//! any stack, over any request and response bodies:
//!
//! ```
//! use gw_core::policy::RequestId;
//! use gw_core::policy::correlation::{CorrelationIdConfig, CorrelationIdLayer};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(CorrelationIdLayer::new(CorrelationIdConfig::default())?)
//!     .service_fn(|request: Request<()>| async move {
//!         assert!(request.extensions().get::<RequestId>().is_some());
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//!
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.headers()["x-request-id"].len(), 36);
//! # Ok(())
//! # }
//! ```

use http::{HeaderName, HeaderValue, Request, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::header_names::header_name;
use super::{Filter, Phase, Policy, PolicyContext, RequestId, RouteLayer, filter_layer};
use crate::body::Body;
use crate::model::FieldError;

/// The configuration of `correlation-id`: its params in an API definition, or the typed
/// config of a [`CorrelationIdLayer`]. The default keeps a valid incoming `X-Request-ID`
/// and echoes the id.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct CorrelationIdConfig {
    /// The header that carries the id, to the upstream and back (default `X-Request-ID`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Whether a valid id sent by the client (1 to 128 visible ASCII characters) is kept;
    /// otherwise every request gets a new one. Default true.
    #[serde(default = "yes")]
    pub trust_incoming: bool,
    /// Whether the response carries the id in the same header. Default true.
    #[serde(default = "yes")]
    pub echo: bool,
}

fn default_header() -> String {
    "X-Request-ID".to_string()
}

fn yes() -> bool {
    true
}

impl Default for CorrelationIdConfig {
    fn default() -> Self {
        Self {
            header: default_header(),
            trust_incoming: true,
            echo: true,
        }
    }
}

/// `correlation-id` as a `tower::Layer` for any stack.
pub type CorrelationIdLayer = FilterLayer<CorrelationIdFilter>;

/// The service of a [`CorrelationIdLayer`] around `S`.
pub type CorrelationId<S> = FilterService<CorrelationIdFilter, S>;

impl CorrelationIdLayer {
    /// Checks and compiles `config`: the same rules as the params of `correlation-id`.
    pub fn new(config: CorrelationIdConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&CorrelationIdPolicy, config, |config| {
            CorrelationIdFilter::build(&config)
        })
    }
}

/// The longest incoming id that is kept.
const MAX_ID_LEN: usize = 128;

/// `correlation-id`.
#[derive(Debug)]
pub(crate) struct CorrelationIdPolicy;

impl Policy for CorrelationIdPolicy {
    type Params = CorrelationIdConfig;

    fn phase(&self) -> Phase {
        Phase::Observe
    }

    fn check(&self, params: &CorrelationIdConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        match header_name(&params.header, true) {
            Ok(_) => Vec::new(),
            Err(message) => vec![FieldError::new("header", message)],
        }
    }

    fn layer(
        &self,
        params: CorrelationIdConfig,
        _ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        CorrelationIdFilter::build(&params).map(filter_layer)
    }
}

impl CorrelationIdFilter {
    fn build(params: &CorrelationIdConfig) -> Result<Self, String> {
        Ok(Self {
            header: header_name(&params.header, true)?,
            trust_incoming: params.trust_incoming,
            echo: params.echo,
        })
    }
}

/// The compiled `correlation-id` policy: the [`Filter`] of a [`CorrelationIdLayer`].
#[derive(Debug)]
pub struct CorrelationIdFilter {
    header: HeaderName,
    trust_incoming: bool,
    echo: bool,
}

/// Whether an incoming id is kept: 1 to 128 visible ASCII characters.
fn is_valid_id(id: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

/// A random UUID (version 4), as lower-case text.
fn new_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits: u128 = rand::random();
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0b11 << 62)) | (0b10 << 62); // variant RFC 9562
    let mut text = [0u8; 36];
    let mut nibble = 0;
    for (i, byte) in text.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *byte = b'-';
        } else {
            *byte = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
            nibble += 1;
        }
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl<ReqB, ResB> Filter<ReqB, ResB> for CorrelationIdFilter {
    /// The id, when the response echoes it.
    type State = Option<HeaderValue>;

    fn request(&self, request: &mut Request<ReqB>) -> Result<Self::State, Response<Body>> {
        let incoming = if self.trust_incoming {
            request
                .headers()
                .get(&self.header)
                .filter(|id| is_valid_id(id.as_bytes()))
                .cloned()
        } else {
            None
        };
        let id = incoming.unwrap_or_else(new_id);
        request.headers_mut().insert(&self.header, id.clone());
        request.extensions_mut().insert(RequestId(id.clone()));
        Ok(self.echo.then_some(id))
    }

    fn response(&self, id: Self::State, response: &mut Response<ResB>) {
        if let Some(id) = id {
            response.headers_mut().insert(&self.header, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, ctx};

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: CorrelationIdConfig = serde_json::from_value(params).unwrap();
        CorrelationIdPolicy.layer(params, &ctx()).unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().uri("/orders/1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(body::empty()).unwrap()
    }

    fn assert_uuid_v4(id: &str) {
        assert_eq!(id.len(), 36, "{id}");
        for (i, c) in id.chars().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{id}");
            } else {
                assert!(matches!(c, '0'..='9' | 'a'..='f'), "{id}");
            }
        }
        assert_eq!(&id[14..15], "4", "version: {id}");
        assert!(
            matches!(&id[19..20], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
    }

    #[test]
    fn params_are_checked_with_paths() {
        let registry = PolicyRegistry::builtin();
        for bad in ["bad header", "content-length", "host"] {
            let errors = registry.validate_params(
                "correlation-id",
                &serde_json::json!({ "header": bad }),
                &ctx(),
            );
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["header"], "{bad}: {errors:?}");
        }
        let errors = registry.validate_params(
            "correlation-id",
            &serde_json::json!({"echo": "yes", "trustIncomin": true}),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["echo"], "{errors:?}");
        let errors = registry.validate_params(
            "correlation-id",
            &serde_json::json!({"trustIncomin": true}),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["trustIncomin"], "{errors:?}");
        assert!(
            registry
                .validate_params("correlation-id", &serde_json::Value::Null, &ctx())
                .is_empty()
        );
        assert_eq!(registry.phase("correlation-id"), Phase::Observe);
    }

    #[test]
    fn generated_ids_are_uuid_v4_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_uuid_v4(a.to_str().unwrap());
        assert_uuid_v4(b.to_str().unwrap());
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn generates_an_id_and_echoes_it() {
        let correlate = layer(serde_json::json!({}));
        let (seen, response) = call(&correlate, request(&[])).await;
        let id = seen.headers()["x-request-id"].clone();
        assert_uuid_v4(id.to_str().unwrap());
        assert_eq!(
            seen.extensions().get::<RequestId>(),
            Some(&RequestId(id.clone()))
        );
        assert_eq!(response.headers()["x-request-id"], id);
        assert_eq!(response.headers()["server"], "upstream");
    }

    #[tokio::test]
    async fn keeps_a_valid_incoming_id() {
        let correlate = layer(serde_json::json!({}));
        let (seen, response) = call(&correlate, request(&[("x-request-id", "abc-123")])).await;
        assert_eq!(seen.headers()["x-request-id"], "abc-123");
        assert_eq!(seen.extensions().get::<RequestId>().unwrap().0, "abc-123");
        assert_eq!(response.headers()["x-request-id"], "abc-123");

        let longest = "a".repeat(MAX_ID_LEN);
        let (seen, _) = call(&correlate, request(&[("x-request-id", &longest)])).await;
        assert_eq!(seen.headers()["x-request-id"], longest.as_str());
    }

    #[tokio::test]
    async fn replaces_an_invalid_incoming_id() {
        let correlate = layer(serde_json::json!({}));
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        for bad in ["", "has space", "tab\there", too_long.as_str(), "caf\u{e9}"] {
            let mut request = request(&[]);
            request.headers_mut().insert(
                "x-request-id",
                HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            let (seen, response) = call(&correlate, request).await;
            let values: Vec<_> = seen.headers().get_all("x-request-id").iter().collect();
            assert_eq!(values.len(), 1, "{bad:?}");
            assert_uuid_v4(values[0].to_str().unwrap());
            assert_eq!(response.headers()["x-request-id"], values[0]);
        }
    }

    #[tokio::test]
    async fn untrusted_header_and_no_echo() {
        let correlate = layer(serde_json::json!({
            "header": "X-Correlation-ID", "trustIncoming": false, "echo": false
        }));
        let (seen, response) =
            call(&correlate, request(&[("x-correlation-id", "from-client")])).await;
        let id = seen.headers()["x-correlation-id"].to_str().unwrap();
        assert_uuid_v4(id);
        assert_eq!(seen.extensions().get::<RequestId>().unwrap().0, id);
        assert!(seen.headers().get("x-request-id").is_none());
        assert!(response.headers().get("x-correlation-id").is_none());
    }
}
