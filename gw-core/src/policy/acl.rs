//! `acl`: allows or denies the authenticated consumer by its ACL groups
//! (`spec.aclGroups` of the Consumer). It runs after authentication; a request without a
//! consumer (no authentication policy on the route) is refused.

use std::collections::HashSet;

use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Consumer, Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::Body;
use crate::model::FieldError;

/// The params of `acl`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub(crate) struct AclParams {
    /// ACL groups allowed: a consumer in none of them is refused. Empty: every consumer
    /// not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// ACL groups denied: a consumer in any of them is refused (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `acl`.
#[derive(Debug)]
pub(crate) struct Acl;

impl Policy for Acl {
    type Params = AclParams;

    fn check(&self, params: &AclParams, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
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

    fn layer(&self, params: AclParams, _ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        Ok(filter_layer(AclFilter {
            allow: params.allow.into_iter().collect(),
            deny: params.deny.into_iter().collect(),
        }))
    }
}

#[derive(Debug)]
struct AclFilter {
    allow: HashSet<String>,
    deny: HashSet<String>,
}

impl AclFilter {
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

impl Filter for AclFilter {
    type State = ();

    fn request(&self, request: &mut Request<Body>) -> Result<(), Response<Body>> {
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
        let params: AclParams = serde_json::from_value(params).unwrap();
        let layer = Acl.layer(params, &ctx()).unwrap();
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
