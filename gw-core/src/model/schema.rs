//! The JSON Schemas of the API, certificate and consumer definitions, generated from the Rust types so that it cannot
//! drift from what the parser accepts.

use super::{ApiDefinition, CertificateDefinition, ConsumerDefinition};

/// The JSON Schema (draft 2020-12) of [`ApiDefinition`].
///
/// It describes the document's shape; rules that span fields (unique operations, valid
/// URLs, names) are checked by [`super::validate`] and listed in `docs/api-definition.md`.
pub fn api_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ApiDefinition);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}

/// The JSON Schema (draft 2020-12) of [`CertificateDefinition`].
pub fn certificate_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(CertificateDefinition);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}

/// The JSON Schema (draft 2020-12) of [`ConsumerDefinition`]. Which fields a credential
/// takes depends on its `type`; that rule, and the rest listed in `docs/consumers.md`, are
/// checked by the validation.
pub fn consumer_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ConsumerDefinition);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}
