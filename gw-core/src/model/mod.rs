//! The API definition: the document an operator deploys, in YAML or JSON.
//!
//! This module owns the types of the `gw/v1` `Api` document, its parsing (with every unknown
//! field reported by its path), its validation ([`validate`]) and the JSON Schema served by the
//! controller ([`schema`]). It performs no I/O and knows nothing of the store or the network.
//!
//! ```
//! use gw_core::model::{ApiDefinition, Format};
//!
//! let yaml = r"
//! apiVersion: gw/v1
//! kind: Api
//! metadata: {name: orders}
//! spec:
//!   context: /orders/v1
//!   upstream:
//!     endpoints: [{url: 'http://127.0.0.1:9001/api'}]
//! ";
//! let api = ApiDefinition::parse(yaml.as_bytes(), Format::Yaml).unwrap();
//! assert_eq!(api.metadata.name, "orders");
//! assert_eq!(api.spec.groups, vec!["default".to_string()]);
//! ```

mod certificate;
mod consumer;
mod duration;
mod messages;
pub mod schema;
pub mod secret;
mod upstream;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use certificate::{
    CertificateDefinition, CertificateSpec, KIND_CERTIFICATE, ParsedCertificate, parse_pem,
};
#[cfg(feature = "basic-auth")]
pub(crate) use consumer::is_bcrypt;
pub use consumer::{
    ConsumerDefinition, ConsumerSpec, Credential, CredentialClaim, CredentialType, KIND_CONSUMER,
    MAX_CREDENTIALS, MIN_KEY_LEN, MIN_PASSWORD_LEN, api_key_digest, api_key_hash,
    conflicting_claims, generate_api_key, parse_key_hash,
};
pub use duration::{DurationError, HumanDuration};
pub use upstream::{
    Algorithm, CircuitBreaker, Endpoint, HashOn, HealthCheck, HostHeader, LoadBalancing,
    OutlierDetection, Retries, Timeouts, UpstreamProtocol, UpstreamSpec, UpstreamTls,
};
#[cfg(feature = "transform")]
pub(crate) use validate::is_param_name;
pub(crate) use validate::routed_template;
pub use validate::{
    Attachment, Collision, PolicyCatalog, RouteKey, ValidationContext, check_collisions, validate,
    validate_certificate, validate_name,
};

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "gw/v1";
/// The `kind` of an API definition.
pub const KIND_API: &str = "Api";
/// The largest document accepted, in bytes, before any parsing happens.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// The gateway group an API joins when `spec.groups` is omitted.
pub const DEFAULT_GROUP: &str = "default";

/// An API as deployed: Kubernetes-style `apiVersion`, `kind`, `metadata` and `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, title = "gw API definition")]
pub struct ApiDefinition {
    /// Always `gw/v1`.
    pub api_version: String,
    /// Always `Api`.
    pub kind: String,
    /// Identity and labels.
    pub metadata: Metadata,
    /// What the gateway serves and where it sends it.
    pub spec: ApiSpec,
}

/// Identity of an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// Unique id in the admin API: 1 to 63 characters, lowercase letters, digits and `-`,
    /// starting and ending with a letter or digit.
    pub name: String,
    /// Free-form key/value pairs for operators (team, tier, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The serving part of an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ApiSpec {
    /// Human readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Version label of the API (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Base path the API is served under, such as `/orders/v1`. Unique per host within a
    /// group. It is stripped before the request goes upstream.
    pub context: String,
    /// Whether the context and the operations' paths match ignoring case, as an upstream
    /// that ignores case (IIS) reads a path: ASCII case, trailing dots and spaces of a
    /// segment, and the few letters outside ASCII that fold to ASCII ones. A request that
    /// reaches such an API while another API or operation matches the path better when
    /// read that way is refused with 400. Default `false`: paths match exactly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_insensitive: bool,
    /// Virtual hosts (`api.example.com`, `*.example.com`); empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateway groups the API is deployed to; runtimes serve the groups they join.
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    /// Where requests go.
    pub upstream: UpstreamSpec,
    /// The largest request body accepted, in bytes (default: no limit); 413 beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// The operations served; empty means every method and path under the context.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// API-level policies, applied to every operation.
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
}

fn default_groups() -> Vec<String> {
    vec![DEFAULT_GROUP.to_string()]
}

/// An operation: a method and a path template under the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Operation {
    /// HTTP method: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or TRACE.
    pub method: String,
    /// Path template relative to the context, such as `/items/{id}`; `/` is the context
    /// itself. Parameters take a whole segment.
    pub path: String,
    /// Operation-level policies; one with the same name as an API-level policy replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRef>,
}

/// A policy attached to an API or an operation. Its `Debug` shows the params' field names,
/// not their values: which of them are secrets only the policy knows
/// ([`PolicyCatalog::secret_params`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PolicyRef {
    /// The policy's registered name.
    pub name: String,
    /// The policy's parameters, validated by the policy itself.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
}

impl fmt::Debug for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&str> = self
            .params
            .as_object()
            .map(|params| params.keys().map(String::as_str).collect())
            .unwrap_or_default();
        f.debug_struct("PolicyRef")
            .field("name", &self.name)
            .field("params", &fields)
            .finish()
    }
}

/// The serialization of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML 1.2 (JSON is accepted too, as YAML is a superset). Without the `yaml` feature,
    /// only JSON text is accepted in this format.
    Yaml,
    /// JSON.
    Json,
}

/// One problem in a document, located by its field path
/// (`spec.upstream.endpoints[0].url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path of the field, with `[i]` for list items; empty for the whole document.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a document was refused: every problem found, each with its field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("document is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Size of the document.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The text is not well-formed YAML or JSON.
    #[error("malformed {format} document: {message}")]
    Syntax {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's message, with a line and column where it gives one.
        message: String,
    },
    /// The document parsed but its content is invalid.
    #[error("invalid definition: {}", join_errors(.0))]
    Invalid(Vec<FieldError>),
}

impl ModelError {
    /// The per-field problems, if the error has any.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ModelError::Invalid(errors) => errors,
            _ => &[],
        }
    }

    /// The error without anything the document said, for documents that may hold secrets
    /// (consumers' keys and passwords): a syntax error keeps its position and loses the
    /// excerpt of the text that the YAML parser quotes, and a type error on a secret field
    /// (`key`, `keyHash`, `password`, `passwordHash`), whose message quotes the value, says
    /// only what was expected.
    #[must_use]
    pub fn redacted(self) -> Self {
        match self {
            ModelError::Syntax { format, message } => ModelError::Syntax {
                format,
                message: message.lines().next().unwrap_or_default().to_string(),
            },
            ModelError::Invalid(errors) => ModelError::Invalid(
                errors
                    .into_iter()
                    .map(|mut error| {
                        let last = error.field.rsplit('.').next().unwrap_or_default();
                        if SECRET_FIELDS.contains(&last) && error.message.starts_with("invalid") {
                            error.message = "must be a string".to_string();
                        } else if error.field.contains("spec.credentials")
                            && error.message.starts_with("invalid")
                        {
                            // `invalid type: string "<a key>", expected a mapping`:
                            // the value goes, what was expected stays
                            let kind = error.message.split(':').next().unwrap_or("invalid");
                            error.message = match error.message.find(", expected") {
                                Some(i) => format!("{kind}{}", &error.message[i..]),
                                None => kind.to_string(),
                            };
                        }
                        error
                    })
                    .collect(),
            ),
            other @ ModelError::TooLarge { .. } => other,
        }
    }
}

/// The fields of a document whose values are secret (or hashes of secrets).
const SECRET_FIELDS: [&str; 4] = ["key", "keyHash", "password", "passwordHash"];

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiDefinition {
    /// Parses a YAML or JSON document and validates it on its own (see [`validate`]), with
    /// an empty [`ValidationContext`] (no policy is known).
    pub fn parse(bytes: &[u8], format: Format) -> Result<Self, ModelError> {
        Self::parse_with(bytes, format, &ValidationContext::default())
    }

    /// Parses a document and validates it against `ctx` (for example the policies the
    /// caller knows). The result is canonical: see [`ApiDefinition::canonicalize`].
    pub fn parse_with(
        bytes: &[u8],
        format: Format,
        ctx: &ValidationContext<'_>,
    ) -> Result<Self, ModelError> {
        let value = parse_value(bytes, format)?;
        Self::from_value_validated(&value, ctx)
    }

    /// Deserializes, canonicalizes and validates a parsed document, reporting unknown fields,
    /// the first type error and every validation problem together.
    pub fn from_value_validated(
        value: &serde_json::Value,
        ctx: &ValidationContext<'_>,
    ) -> Result<Self, ModelError> {
        let (api, mut errors) = Self::deserialize_tracked(value);
        let Some(mut api) = api else {
            return Err(ModelError::Invalid(errors));
        };
        api.canonicalize();
        errors.extend(validate(&api, ctx));
        if errors.is_empty() {
            Ok(api)
        } else {
            Err(ModelError::Invalid(errors))
        }
    }

    /// Deserializes a parsed document, reporting every unknown field by its path and the
    /// first type error by its path. No validation beyond the document's shape.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ModelError> {
        match Self::deserialize_tracked(value) {
            (Some(api), errors) if errors.is_empty() => Ok(api),
            (_, errors) => Err(ModelError::Invalid(errors)),
        }
    }

    fn deserialize_tracked(value: &serde_json::Value) -> (Option<Self>, Vec<FieldError>) {
        deserialize_document(value)
    }

    /// Puts the definition in the one form the gateway stores and compares: methods upper
    /// case, hosts lower case, trailing slashes removed from the context and endpoint paths.
    pub fn canonicalize(&mut self) {
        let spec = &mut self.spec;
        if spec.context.len() > 1 {
            let trimmed = spec.context.trim_end_matches('/');
            spec.context = if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            };
        }
        for host in &mut spec.hosts {
            *host = host.trim_end_matches('.').to_ascii_lowercase();
        }
        for op in &mut spec.operations {
            op.method = op.method.to_ascii_uppercase();
        }
        for endpoint in &mut spec.upstream.endpoints {
            if endpoint.url.ends_with('/') {
                let trimmed = endpoint.url.trim_end_matches('/');
                if !trimmed.ends_with(':') && !trimmed.ends_with("//") {
                    endpoint.url = trimmed.to_string();
                }
            }
        }
    }

    /// The definition as canonical JSON, the form stored and sent to runtimes.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The `(group, host, context)` keys this API occupies; two APIs may not share one.
    /// The context of a key is its [`crate::path::case_fold`]: two contexts of a host that
    /// a case-insensitive server reads as one are one place.
    pub fn route_keys(&self) -> Vec<RouteKey> {
        validate::route_keys(self)
    }
}

/// A document (unless a type error stopped deserialization) and its shape errors: every
/// unknown field by its path, and the first type error by its path.
pub(crate) fn deserialize_tracked<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> (Option<T>, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        serde_ignored::deserialize(de, |path| {
            errors.push(FieldError::new(ignored_path(&path), "unknown field"));
        })
    };
    match result {
        Ok(document) => (Some(document), errors),
        Err(err) => {
            let path = track.path().to_string();
            errors.push(type_error(&path, &err.to_string()));
            (None, errors)
        }
    }
}

/// [`deserialize_tracked`] for a whole document, which must be a mapping (serde would read a
/// sequence as the fields in order, and report `[0]` for a list of numbers).
pub(crate) fn deserialize_document<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> (Option<T>, Vec<FieldError>) {
    let found = match value {
        serde_json::Value::Object(_) => return deserialize_tracked(value),
        serde_json::Value::Array(_) => "a sequence",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Null => "null",
    };
    let message =
        format!("the document is {found}; it must be a mapping (apiVersion, kind, metadata, spec)");
    (None, vec![FieldError::new("", message)])
}

/// The documents of a configuration file, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentSet {
    /// The APIs, in file order.
    pub apis: Vec<ApiDefinition>,
    /// The certificates, in file order.
    pub certificates: Vec<CertificateDefinition>,
    /// The consumers, in file order, as written: their clear keys and passwords are not
    /// sealed yet ([`crate::credential::seal`]).
    pub consumers: Vec<ConsumerDefinition>,
}

/// The largest file of several definitions ([`parse_set`]) accepted, in bytes.
pub const MAX_SET_BYTES: usize = 64 * 1024 * 1024;

/// Parses YAML or JSON text into a JSON value, refusing documents over
/// [`MAX_DOCUMENT_BYTES`].
pub fn parse_value(bytes: &[u8], format: Format) -> Result<serde_json::Value, ModelError> {
    check_size(bytes, MAX_DOCUMENT_BYTES)?;
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|err| ModelError::Syntax {
            format: "JSON",
            message: err.to_string(),
        }),
        Format::Yaml => yaml::document(bytes),
    }
}

/// YAML text into JSON values (serde-saphyr), or, without the `yaml` feature, an error that
/// says so.
mod yaml {
    use super::ModelError;

    fn text(bytes: &[u8]) -> Result<&str, ModelError> {
        std::str::from_utf8(bytes).map_err(|err| ModelError::Syntax {
            format: "YAML",
            message: format!("not UTF-8: {err}"),
        })
    }

    /// One document; an empty one is an error.
    #[cfg(feature = "yaml")]
    pub(super) fn document(bytes: &[u8]) -> Result<serde_json::Value, ModelError> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text(bytes)?).map_err(|err| ModelError::Syntax {
                format: "YAML",
                message: super::messages::yaml_error(&err),
            })?;
        if value.is_null() {
            return Err(ModelError::Syntax {
                format: "YAML",
                message: "the document is empty".to_string(),
            });
        }
        Ok(value)
    }

    /// A stream of documents separated by `---`, the empty ones left out.
    #[cfg(feature = "yaml")]
    pub(super) fn documents(bytes: &[u8]) -> Result<Vec<serde_json::Value>, ModelError> {
        Ok(
            serde_saphyr::from_multiple::<serde_json::Value>(text(bytes)?)
                .map_err(|err| ModelError::Syntax {
                    format: "YAML",
                    message: super::messages::yaml_error(&err),
                })?
                .into_iter()
                .filter(|doc| !doc.is_null())
                .collect(),
        )
    }

    #[cfg(not(feature = "yaml"))]
    fn unsupported() -> ModelError {
        ModelError::Syntax {
            format: "YAML",
            message: "YAML is not supported by this build of gw (gw-core without its `yaml` \
                      feature): write the documents as JSON"
                .to_string(),
        }
    }

    /// Without a YAML parser, JSON text (a subset of YAML) is still read.
    #[cfg(not(feature = "yaml"))]
    pub(super) fn document(bytes: &[u8]) -> Result<serde_json::Value, ModelError> {
        serde_json::from_str(text(bytes)?).map_err(|_| unsupported())
    }

    /// Without a YAML parser, a JSON array of documents or a single JSON document.
    #[cfg(not(feature = "yaml"))]
    pub(super) fn documents(bytes: &[u8]) -> Result<Vec<serde_json::Value>, ModelError> {
        match document(bytes)? {
            serde_json::Value::Array(items) => Ok(items),
            single => Ok(vec![single]),
        }
    }
}

fn check_size(bytes: &[u8], limit: usize) -> Result<(), ModelError> {
    if bytes.len() > limit {
        return Err(ModelError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(())
}

/// Parses a set of documents (`kind: Api`, `kind: Certificate` or `kind: Consumer`), as a
/// standalone runtime reads them from a file: a YAML stream of documents separated by `---`,
/// a JSON array, or a single document. Every problem of every document is reported, with
/// paths prefixed by `documents[i].`, and so are duplicate names (per kind) and route
/// collisions across documents.
///
/// Consumers may carry clear keys and passwords (there is no controller to generate a
/// missing key: an api-key credential needs `key` or `keyHash`); seal them before serving.
/// A credential claimed by two consumers is refused when the set is applied
/// ([`crate::consumers::ConsumerSet::build`]).
pub fn parse_set(
    bytes: &[u8],
    format: Format,
    ctx: &ValidationContext<'_>,
) -> Result<DocumentSet, ModelError> {
    check_size(bytes, MAX_SET_BYTES)?;
    let documents: Vec<serde_json::Value> = match format {
        Format::Json => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|err| ModelError::Syntax {
                    format: "JSON",
                    message: err.to_string(),
                })?;
            match value {
                serde_json::Value::Array(items) => items,
                single => vec![single],
            }
        }
        Format::Yaml => yaml::documents(bytes)?,
    };
    let mut errors = Vec::new();
    let mut apis = Vec::with_capacity(documents.len());
    let mut certificates = Vec::new();
    let mut consumers = Vec::new();
    for (i, document) in documents.iter().enumerate() {
        let prefix = |e: &FieldError| {
            let field = if e.field.is_empty() {
                format!("documents[{i}]")
            } else {
                format!("documents[{i}].{}", e.field)
            };
            FieldError::new(field, e.message.clone())
        };
        let parsed = match document.get("kind").and_then(|k| k.as_str()) {
            Some(KIND_CERTIFICATE) => CertificateDefinition::from_value_validated(document)
                .map(|certificate| certificates.push((i, certificate))),
            Some(KIND_CONSUMER) => ConsumerDefinition::from_value_validated(document, false)
                .map(|consumer| consumers.push((i, consumer))),
            _ => ApiDefinition::from_value_validated(document, ctx).map(|api| apis.push((i, api))),
        };
        if let Err(err) = parsed {
            errors.extend(err.field_errors().iter().map(prefix));
        }
    }
    errors.extend(duplicate_names(
        "certificate",
        certificates.iter().map(|(i, c)| (*i, &c.metadata)),
    ));
    errors.extend(duplicate_names(
        "consumer",
        consumers.iter().map(|(i, c)| (*i, &c.metadata)),
    ));
    errors.extend(duplicate_names(
        "API",
        apis.iter().map(|(i, api)| (*i, &api.metadata)),
    ));
    for collision in check_collisions(apis.iter().map(|(_, api)| api)) {
        errors.push(FieldError::new(
            "",
            format!(
                "APIs {:?} and {:?} both claim context {:?} on host {:?} in group {:?}",
                collision.existing,
                collision.other,
                collision.key.context,
                collision.key.host,
                collision.key.group
            ),
        ));
    }
    if errors.is_empty() {
        Ok(DocumentSet {
            apis: apis.into_iter().map(|(_, api)| api).collect(),
            certificates: certificates.into_iter().map(|(_, c)| c).collect(),
            consumers: consumers.into_iter().map(|(_, c)| c).collect(),
        })
    } else {
        Err(ModelError::Invalid(errors))
    }
}

/// A document of kind `kind` named like an earlier one, for each of `documents` (index in
/// the file, metadata).
fn duplicate_names<'a>(
    kind: &str,
    documents: impl IntoIterator<Item = (usize, &'a Metadata)>,
) -> Vec<FieldError> {
    let mut first_of = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for (i, metadata) in documents {
        let name = metadata.name.as_str();
        if let Some(first) = first_of.insert(name, i) {
            errors.push(FieldError::new(
                format!("documents[{i}].metadata.name"),
                format!("{kind} name {name:?} is already used by documents[{first}]"),
            ));
        }
    }
    errors
}

/// Formats a `serde_ignored` path as `spec.upstream.endpoints[0].url`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Turns serde's "missing field `x`" at path `p` into `p.x: required field is missing`.
fn type_error(path: &str, message: &str) -> FieldError {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(field) = rest.split('`').next()
    {
        let full = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return FieldError::new(full, "required field is missing");
    }
    FieldError::new(path, messages::type_error_text(message))
}

// YAML documents, certificates among them
#[cfg(all(test, feature = "yaml", feature = "tls"))]
mod tests;
