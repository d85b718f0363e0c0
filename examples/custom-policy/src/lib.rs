//! A policy of your own: `require-header` refuses requests that lack a header, with the
//! status of your choice. It shows the three pieces of every policy:
//!
//! - a params type, deserialized and checked at deploy time (by the controller) and again
//!   when a runtime applies the configuration: unknown fields and bad values are reported
//!   with their paths, such as `spec.policies[0].params.status`;
//! - a [`Filter`] (or any `tower::Layer`), built once per configuration, never per request;
//! - a name in a [`PolicyRegistry`], which both the controller and the runtime get: the
//!   binaries `custom-controller` and `custom-runtime` of this crate are the stock ones with
//!   [`registry`].
//!
//! A stock runtime that is sent an API using `require-header` does not know it: it refuses
//! that configuration (the controller shows the rejection in `GET /api/v1/runtimes`) and
//! keeps serving the one it had.

use gw_core::body::Body;
use gw_core::model::FieldError;
use gw_core::policy::{
    Filter, Phase, Policy, PolicyContext, PolicyRegistry, RouteLayer, filter_layer,
};
use http::{HeaderName, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

/// The built-in policies and `require-header`.
pub fn registry() -> PolicyRegistry {
    PolicyRegistry::builtin().register_policy("require-header", RequireHeader)
}

/// The params of `require-header`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RequireHeaderParams {
    /// The header every request must carry.
    pub header: String,
    /// The status of a refusal (400 to 499; default 400).
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    400
}

/// `require-header`.
#[derive(Debug)]
pub struct RequireHeader;

impl Policy for RequireHeader {
    type Params = RequireHeaderParams;

    fn check(&self, params: &RequireHeaderParams, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if HeaderName::from_bytes(params.header.as_bytes()).is_err() {
            errors.push(FieldError::new("header", "not a header name"));
        }
        if !(400..=499).contains(&params.status) {
            errors.push(FieldError::new("status", "must be 400 to 499"));
        }
        errors
    }

    /// Before authentication: a request without the header is refused before any
    /// credential is checked.
    fn phase(&self) -> Phase {
        Phase::Admission
    }

    fn layer(
        &self,
        params: RequireHeaderParams,
        _ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        let header = HeaderName::from_bytes(params.header.as_bytes()).map_err(|e| e.to_string())?;
        let status = StatusCode::from_u16(params.status).map_err(|e| e.to_string())?;
        let message = format!("the {header} header is required");
        Ok(filter_layer(Require {
            header,
            status,
            message,
        }))
    }
}

#[derive(Debug)]
struct Require {
    header: HeaderName,
    status: StatusCode,
    message: String,
}

impl Filter for Require {
    type State = ();

    fn request(&self, request: &mut Request<Body>) -> Result<(), Response<Body>> {
        if request.headers().contains_key(&self.header) {
            Ok(())
        } else {
            Err(gw_core::error::json_error(
                self.status,
                "header_required",
                &self.message,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked_with_their_paths() {
        let ctx = PolicyContext {
            consumers: gw_core::consumers::ConsumerStore::empty(),
            api: "a",
            context: "/",
            operation: None,
        };
        let errors = registry().validate_params(
            "require-header",
            &serde_json::json!({"header": "bad header", "status": 503, "extra": true}),
            &ctx,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "header", "status"], "{errors:?}");
        let missing = registry().validate_params("require-header", &serde_json::Value::Null, &ctx);
        assert_eq!(
            missing,
            [FieldError::new("header", "required field is missing")]
        );
    }
}
