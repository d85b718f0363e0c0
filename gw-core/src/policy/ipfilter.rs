//! `ip-filter`: lets a request through, or refuses it with 403, by the client's address.
//!
//! The address is the connection's peer, or, when the peer is one of `trustedProxies`, the
//! address those proxies report in `X-Forwarded-For` ([`client_ip`]). A client that does
//! not come through a trusted proxy cannot choose its address with that header.
//!
//! Outside a gateway, [`IpFilterLayer`] is the same policy as a `tower` middleware for any
//! stack. The peer's address is read from gw's [`ConnInfo`] in the request's extensions
//! (gw's listeners insert it; a service of your own inserts it from its connection, or, with
//! the `axum` feature, serves with axum's `into_make_service_with_connect_info`): a request
//! without it is refused with 500 `connection_info_missing`, never let through a deny list.
//!
//! ```
//! use gw_core::ConnInfo;
//! use gw_core::policy::ipfilter::{IpFilterConfig, IpFilterLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{Service as _, ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let only_internal = IpFilterLayer::new(IpFilterConfig {
//!     allow: vec!["10.0.0.0/8".into()],
//!     ..IpFilterConfig::default()
//! })?;
//! let mut service = ServiceBuilder::new()
//!     .layer(only_internal)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//!
//! let mut request = Request::new(());
//! request.extensions_mut().insert(ConnInfo { peer: "192.0.2.7:4000".parse()?, secure: false });
//! let response = service.ready().await?.call(request).await?;
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//!
//! // no connection information: the address is not guessed
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! # Ok(())
//! # }
//! ```

use std::net::IpAddr;

use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::{Cidr, Filter, Phase, Policy, PolicyContext, RouteLayer, client_ip, filter_layer};
use crate::body::Body;
use crate::gateway::ConnInfo;
use crate::model::FieldError;

/// The configuration of `ip-filter`: its params in an API definition, or the typed config
/// of an [`IpFilterLayer`]. At least one of `allow` and `deny` is given.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Addresses or CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`) that may pass;
    /// when the list is not empty, no other address passes.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Addresses or CIDR blocks refused, even when `allow` lists them.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed; from any
    /// other peer the header is ignored and the peer's address is the client's.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// Parses the CIDR blocks of the list `field`, reporting each bad entry at `field[i]`.
pub(super) fn parse_cidrs(field: &str, list: &[String], errors: &mut Vec<FieldError>) -> Vec<Cidr> {
    let mut blocks = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        match text.trim().parse::<Cidr>() {
            Ok(block) => blocks.push(block),
            Err(message) => errors.push(FieldError::new(format!("{field}[{i}]"), message)),
        }
    }
    blocks
}

/// The client's address of `request`, as [`client_ip`] reads it; `None` when the request
/// carries no connection information ([`ConnInfo::of`]): only an embedder's server can send
/// one, and a policy that judges addresses refuses it (500) rather than guess.
pub(super) fn request_ip<B>(request: &Request<B>, trusted: &[Cidr]) -> Option<IpAddr> {
    ConnInfo::of(request).map(|conn| client_ip(request.headers(), conn.peer.ip(), trusted))
}

/// `ip-filter` as a `tower::Layer` for any stack: refuses with 403 a request from an
/// address that is not allowed.
pub type IpFilterLayer = FilterLayer<IpFilterFilter>;

/// The service of an [`IpFilterLayer`] around `S`.
pub type IpFilter<S> = FilterService<IpFilterFilter, S>;

impl IpFilterLayer {
    /// Checks and compiles `config`: the same rules as the params of `ip-filter`.
    pub fn new(config: IpFilterConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&IpFilterPolicy, config, |config| {
            IpFilterFilter::build(&config)
        })
    }
}

/// `ip-filter`.
#[derive(Debug)]
pub(crate) struct IpFilterPolicy;

impl Policy for IpFilterPolicy {
    type Params = IpFilterConfig;

    fn phase(&self) -> Phase {
        Phase::Admission
    }

    fn check(&self, params: &IpFilterConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if params.allow.is_empty() && params.deny.is_empty() {
            errors.push(FieldError::new("allow", "give allow, deny or both"));
        }
        parse_cidrs("allow", &params.allow, &mut errors);
        parse_cidrs("deny", &params.deny, &mut errors);
        parse_cidrs("trustedProxies", &params.trusted_proxies, &mut errors);
        errors
    }

    fn layer(
        &self,
        params: IpFilterConfig,
        _ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        IpFilterFilter::build(&params).map(filter_layer)
    }
}

/// The compiled `ip-filter` policy: the [`Filter`] of an [`IpFilterLayer`].
#[derive(Debug)]
pub struct IpFilterFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    trusted: Vec<Cidr>,
}

impl IpFilterFilter {
    fn build(params: &IpFilterConfig) -> Result<Self, String> {
        let mut errors = Vec::new();
        let filter = Self {
            allow: parse_cidrs("allow", &params.allow, &mut errors),
            deny: parse_cidrs("deny", &params.deny, &mut errors),
            trusted: parse_cidrs("trustedProxies", &params.trusted_proxies, &mut errors),
        };
        match errors.first() {
            Some(error) => Err(error.to_string()),
            None => Ok(filter),
        }
    }

    /// Deny wins; a non-empty allow list admits only its addresses.
    fn admits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|block| block.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|block| block.contains(ip))
    }
}

impl<ReqB, ResB> Filter<ReqB, ResB> for IpFilterFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        let Some(ip) = request_ip(request, &self.trusted) else {
            return Err(crate::error::conn_info_missing());
        };
        if self.admits(ip) {
            Ok(())
        } else {
            Err(crate::error::json_error(
                StatusCode::FORBIDDEN,
                "ip_forbidden",
                "requests from this address are not allowed",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, call_seen, ctx, text};

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: IpFilterConfig = serde_json::from_value(params).unwrap();
        assert!(IpFilterPolicy.check(&params, &ctx()).is_empty());
        IpFilterPolicy.layer(params, &ctx()).unwrap()
    }

    fn from(peer: &str, forwarded: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri("/orders");
        if let Some(forwarded) = forwarded {
            builder = builder.header("x-forwarded-for", forwarded);
        }
        let mut request = builder.body(body::empty()).unwrap();
        request.extensions_mut().insert(ConnInfo {
            peer: format!("{peer}:40000").parse().unwrap(),
            secure: false,
        });
        request
    }

    async fn status(layer: &RouteLayer, request: Request<Body>) -> u16 {
        call_seen(layer, request).await.1.status().as_u16()
    }

    #[test]
    fn params_are_checked_with_paths() {
        let registry = PolicyRegistry::builtin();
        let errors = registry.validate_params(
            "ip-filter",
            &serde_json::json!({
                "allow": ["10.0.0.0/8", "10.1.2.3/16", "ten"],
                "deny": ["::1/129"],
                "trustedProxies": ["192.0.2.1", "x"],
                "extra": true
            }),
            &ctx(),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "extra",
                "allow[1]",
                "allow[2]",
                "deny[0]",
                "trustedProxies[1]"
            ],
            "{errors:?}"
        );
        assert!(errors[1].message.contains("10.1.0.0/16"), "{errors:?}");

        let errors = registry.validate_params("ip-filter", &serde_json::Value::Null, &ctx());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "allow");
        let errors = registry.validate_params(
            "ip-filter",
            &serde_json::json!({"allow": "10.0.0.0/8"}),
            &ctx(),
        );
        assert_eq!(errors[0].field, "allow", "{errors:?}");
        assert!(
            registry
                .validate_params("ip-filter", &serde_json::json!({"deny": ["::1"]}), &ctx())
                .is_empty()
        );
        assert_eq!(registry.phase("ip-filter"), Phase::Admission);
    }

    #[tokio::test]
    async fn allow_list_admits_only_its_addresses() {
        let layer = layer(serde_json::json!({"allow": ["10.0.0.0/8", "2001:db8::/32"]}));
        let (seen, response) = call(&layer, from("10.1.2.3", None)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(seen.uri(), "/orders");
        assert_eq!(status(&layer, from("[2001:db8::5]", None)).await, 200);
        // an IPv4-mapped peer is its IPv4 address
        assert_eq!(status(&layer, from("[::ffff:10.9.9.9]", None)).await, 200);

        let (seen, response) = call_seen(&layer, from("192.0.2.1", None)).await;
        assert!(seen.is_none(), "the upstream must not be called");
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(text(response).await.contains("\"ip_forbidden\""));

        // no connection information: refused, the address is not guessed
        let bare = || Request::builder().uri("/").body(body::empty()).unwrap();
        assert_eq!(status(&layer, bare()).await, 500);
        let deny_only = self::layer(serde_json::json!({"deny": ["203.0.113.0/24"]}));
        assert_eq!(status(&deny_only, bare()).await, 500);
    }

    #[tokio::test]
    async fn deny_wins_over_allow() {
        let layer = layer(serde_json::json!({
            "allow": ["10.0.0.0/8"],
            "deny": ["10.6.0.0/16"]
        }));
        assert_eq!(status(&layer, from("10.5.0.1", None)).await, 200);
        assert_eq!(status(&layer, from("10.6.0.1", None)).await, 403);

        let deny_only = self::layer(serde_json::json!({"deny": ["203.0.113.0/24"]}));
        assert_eq!(status(&deny_only, from("203.0.113.7", None)).await, 403);
        assert_eq!(status(&deny_only, from("198.51.100.7", None)).await, 200);
    }

    #[tokio::test]
    async fn forwarded_for_counts_only_from_trusted_proxies() {
        let layer = layer(serde_json::json!({
            "deny": ["203.0.113.0/24"],
            "trustedProxies": ["10.0.0.0/8"]
        }));
        // through the trusted proxy: the forwarded address is the client's
        assert_eq!(
            status(&layer, from("10.0.0.1", Some("203.0.113.9"))).await,
            403
        );
        assert_eq!(
            status(&layer, from("10.0.0.1", Some("198.51.100.9"))).await,
            200
        );
        // a client cannot hide behind a forged header
        let forged = self::layer(serde_json::json!({"allow": ["10.0.0.0/8"]}));
        assert_eq!(
            status(&forged, from("198.51.100.9", Some("10.0.0.1"))).await,
            403
        );
    }
}
