//! The JSON Schema of the API definition, generated from the Rust types so that it cannot
//! drift from what the parser accepts.

use super::ApiDefinition;

/// The JSON Schema (draft 2020-12) of [`ApiDefinition`].
///
/// It describes the document's shape; rules that span fields (unique operations, valid
/// URLs, names) are checked by [`super::validate`] and listed in `docs/api-definition.md`.
pub fn api_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ApiDefinition);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}
