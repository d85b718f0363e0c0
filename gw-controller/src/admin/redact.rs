//! The placeholder that stands for a secret in what reads show, the refusal of a document
//! that carries it back, and, for roles that may not see secrets (operator, viewer), a
//! second net over API definitions.
//!
//! Certificates' private keys and consumers' keys and passwords are never shown to anyone.
//! The fields of an API definition that its policies or the model mark secret
//! ([`gw_core::model::secret`]: the `jwt` policy's HS256 `secret`, the password of a Redis
//! or upstream URL, a credential header a policy injects) are stored sealed and shown to no
//! role ([`super::apis`]). For operators and viewers, the fields a policy does not mark but
//! whose name says they hold a secret ([`SECRET_FIELDS`]) and the password of any URL are
//! hidden too: an embedder's policy may not mark its own.
//!
//! A write whose document still holds [`REDACTED`] is refused (400, naming the field),
//! rather than made to keep the stored secret at that place: a writer that may not read a
//! secret could otherwise keep it while changing what it is sent to (the host of a Redis or
//! upstream URL, the upstream that receives an injected `Authorization`), and so have it
//! sent to a server of its own. A definition read, edited and written back must give its
//! secrets again.

use gw_core::model::secret::{redact_url, url_password_span};
use serde_json::Value;

use super::ApiError;

/// What stands in for a hidden value.
pub(super) const REDACTED: &str = gw_core::model::secret::REDACTED;

/// Field names (compared without case) whose values are secrets wherever they appear.
const SECRET_FIELDS: [&str; 12] = [
    "secret",
    "password",
    "token",
    "apikey",
    "api-key",
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "clientsecret",
    "client_secret",
    "privatekey",
];

/// Replaces every secret in `value` by [`REDACTED`] (see the module docs).
pub(super) fn hide_secrets(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                let name = name.to_ascii_lowercase();
                if SECRET_FIELDS.contains(&name.as_str()) && !field.is_null() {
                    *field = Value::String(REDACTED.to_string());
                } else {
                    hide_secrets(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_secrets),
        Value::String(text) if url_password_span(text).is_some() => {
            *text = redact_url(text);
        }
        _ => {}
    }
}

/// Refuses a document that holds [`REDACTED`] (400, naming the field): it was read without
/// its secrets, and writing it back would deploy the placeholder.
pub(super) fn refuse_redacted(document: &Value) -> Result<(), ApiError> {
    if let Some(path) = find_text(document, REDACTED, String::new()) {
        return Err(ApiError::field(
            &path,
            format!(
                "holds {REDACTED:?}, which stands for a secret that reads never show: give \
                 the secret itself"
            ),
        ));
    }
    // the controller opens whatever it stored sealed: a value that only looks sealed would
    // not open, and a sealed value copied from elsewhere is bound to where it was
    if let Some(path) = find_text(document, crate::sealed::SEALED_PREFIX, String::new()) {
        return Err(ApiError::field(
            &path,
            format!(
                "holds {:?}, the mark of a value sealed at rest: give the secret itself",
                crate::sealed::SEALED_PREFIX
            ),
        ));
    }
    Ok(())
}

/// The path of the first string that holds `needle`.
fn find_text(value: &Value, needle: &str, path: String) -> Option<String> {
    match value {
        Value::String(text) if text.contains(needle) => Some(path),
        Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            let path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            find_text(field, needle, path)
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_text(item, needle, format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_hidden_and_the_rest_is_shown() {
        let mut api = json!({"spec": {
            "upstream": {"endpoints": [
                {"url": "http://svc:user:pw@backend:8080/x"},
                {"url": "http://backend:8080/a@b"},
                {"url": "https://user@backend/"},
            ]},
            "policies": [
                {"name": "jwt", "params": {"secret": "c2VjcmV0", "issuer": ["me"]}},
                {"name": "rate-limit", "params": {"redis": {"url": "redis://:s3cret@127.0.0.1:6379/0"}}},
                {"name": "request-headers", "params": {"set": {"Authorization": "Bearer x", "x-team": "a"}}},
            ],
        }});
        hide_secrets(&mut api);
        let shown = api.to_string();
        for secret in ["c2VjcmV0", "s3cret", "Bearer x", ":pw@"] {
            assert!(!shown.contains(secret), "{secret}: {shown}");
        }
        let policies = &api["spec"]["policies"];
        assert_eq!(policies[0]["params"]["issuer"], json!(["me"]));
        assert_eq!(
            policies[1]["params"]["redis"]["url"],
            "redis://:<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(policies[2]["params"]["set"]["x-team"], "a");
        let endpoints = &api["spec"]["upstream"]["endpoints"];
        assert_eq!(endpoints[1]["url"], "http://backend:8080/a@b");
        assert_eq!(endpoints[2]["url"], "https://user@backend/");
    }

    #[test]
    fn a_document_with_a_hidden_value_is_refused_at_its_field() {
        assert!(refuse_redacted(&json!({"spec": {"a": ["x"]}})).is_ok());
        let mut api = json!({"spec": {"policies": [{"name": "jwt", "params": {"secret": "k"}}]}});
        hide_secrets(&mut api);
        let err = format!("{:?}", refuse_redacted(&api).unwrap_err());
        assert!(err.contains("spec.policies[0].params.secret"), "{err}");
        // nor one that holds a value as the controller seals it, wherever it is
        let copied = json!({"spec": {"policies": [{"name": "request-headers",
            "params": {"set": {"x-team": "gw-sealed:v1:0123abcd:AAAA"}}}]}});
        let err = format!("{:?}", refuse_redacted(&copied).unwrap_err());
        assert!(err.contains("spec.policies[0].params.set.x-team"), "{err}");
        assert!(err.contains("sealed at rest"), "{err}");
    }
}
