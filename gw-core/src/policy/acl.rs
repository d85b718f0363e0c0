//! `acl`: allows or denies the authenticated consumer by its ACL groups
//! (`spec.aclGroups` of the Consumer). It runs after authentication; a request without a
//! consumer (no authentication policy on the route) is refused.
//!
//! Outside a gateway, [`AclLayer`] is the same policy as a `tower` middleware for any
//! stack, inside an authentication layer (which puts the [`Consumer`] in the request's
//! extensions):
//!
//! ```
//! use gw_core::consumers::{ConsumerSet, ConsumerStore};
//! use gw_core::policy::acl::{AclConfig, AclLayer};
//! use gw_core::policy::apikey::ApiKeyLayer;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let consumers = ConsumerSet::from_documents([serde_json::json!({
//!     "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
//!     "spec": {"aclGroups": ["silver"],
//!              "credentials": [{"type": "api-key", "id": "k1", "key": "alice-key-0123456789"}]}
//! })])
//! .map_err(|errors| errors.join("; "))?;
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(ConsumerStore::new(consumers)))
//!     .layer(AclLayer::new(AclConfig { allow: vec!["gold".into()], deny: vec![] })?)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//!
//! let request = Request::get("/").header("x-api-key", "alice-key-0123456789").body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;

use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::filter::{ConfigError, FilterLayer, FilterService};
use super::{Consumer, Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::Body;
use crate::model::FieldError;

/// The configuration of `acl`: its params in an API definition, or the typed config of an
/// [`AclLayer`].
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct AclConfig {
    /// ACL groups allowed: a consumer in none of them is refused. Empty: every consumer
    /// not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// ACL groups denied: a consumer in any of them is refused (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `acl` as a `tower::Layer` for any stack: refuses with 403 a request whose consumer is
/// not allowed, or that has none.
pub type AclLayer = FilterLayer<AclFilter>;

/// The service of an [`AclLayer`] around `S`.
pub type Acl<S> = FilterService<AclFilter, S>;

impl AclLayer {
    /// Checks `config`: the same rules as the params of `acl`.
    pub fn new(config: AclConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&AclPolicy, config, |config| Ok(AclFilter::build(config)))
    }
}

/// `acl`.
#[derive(Debug)]
pub(crate) struct AclPolicy;

impl Policy for AclPolicy {
    type Params = AclConfig;

    fn check(&self, params: &AclConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if params.allow.is_empty() && params.deny.is_empty() {
            errors.push(FieldError::new("allow", "give allow, deny or both"));
        }
        for (field, groups) in [("allow", &params.allow), ("deny", &params.deny)] {
            for (i, group) in groups.iter().enumerate() {
                if let Err(message) = crate::model::validate_name(group) {
                    errors.push(FieldError::new(format!("{field}[{i}]"), message));
                }
            }
        }
        errors
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn layer(&self, params: AclConfig, _ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(AclFilter::build(params)))
    }
}

/// The compiled `acl` policy: the [`Filter`] of an [`AclLayer`].
#[derive(Debug)]
pub struct AclFilter {
    allow: HashSet<String>,
    deny: HashSet<String>,
}

impl AclFilter {
    fn build(config: AclConfig) -> Self {
        Self {
            allow: config.allow.into_iter().collect(),
            deny: config.deny.into_iter().collect(),
        }
    }

    fn permits(&self, consumer: &Consumer) -> bool {
        let mut allowed = self.allow.is_empty();
        for group in consumer.groups.iter() {
            if self.deny.contains(group) {
                return false;
            }
            allowed |= self.allow.contains(group);
        }
        allowed
    }
}

impl<ReqB, ResB> Filter<ReqB, ResB> for AclFilter {
    type State = ();

    fn request(&self, request: &mut Request<ReqB>) -> Result<(), Response<Body>> {
        match request.extensions().get::<Consumer>() {
            Some(consumer) if self.permits(consumer) => Ok(()),
            Some(_) => Err(crate::error::json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this consumer may not call this operation",
            )),
            None => Err(crate::error::json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no authenticated consumer; the acl policy needs an authentication policy on the same route",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::body;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call_seen, ctx};

    fn request(groups: Option<&[&str]>) -> Request<Body> {
        let mut request = Request::builder().uri("/o").body(body::empty()).unwrap();
        if let Some(groups) = groups {
            request.extensions_mut().insert(Consumer {
                name: Arc::from("c"),
                groups: groups.iter().map(ToString::to_string).collect(),
                credential: None,
            });
        }
        request
    }

    async fn passes(params: serde_json::Value, groups: Option<&[&str]>) -> bool {
        let params: AclConfig = serde_json::from_value(params).unwrap();
        let layer = AclPolicy.layer(params, &ctx()).unwrap();
        let (seen, response) = call_seen(&layer, request(groups)).await;
        if seen.is_none() {
            assert_eq!(response.status(), 403);
        }
        seen.is_some()
    }

    #[tokio::test]
    async fn allow_and_deny_by_group() {
        let allow = serde_json::json!({"allow": ["gold", "silver"]});
        assert!(passes(allow.clone(), Some(&["bronze", "gold"])).await);
        assert!(!passes(allow.clone(), Some(&["bronze"])).await);
        assert!(!passes(allow.clone(), Some(&[])).await);
        assert!(!passes(allow, None).await, "no consumer, no entry");
        let deny = serde_json::json!({"deny": ["banned"]});
        assert!(passes(deny.clone(), Some(&["gold"])).await);
        assert!(!passes(deny, Some(&["gold", "banned"])).await);
        let both = serde_json::json!({"allow": ["gold"], "deny": ["banned"]});
        assert!(!passes(both, Some(&["gold", "banned"])).await, "deny wins");
    }

    #[test]
    fn params_are_checked() {
        let registry = PolicyRegistry::builtin();
        let errors = registry.validate_params("acl", &serde_json::json!({}), &ctx());
        assert_eq!(errors[0].field, "allow");
        let errors = registry.validate_params(
            "acl",
            &serde_json::json!({"deny": ["ok", "Not OK"]}),
            &ctx(),
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "deny[1]");
    }
}
