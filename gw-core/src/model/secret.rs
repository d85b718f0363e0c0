//! Which fields of an API definition hold secrets, so that a control plane can seal them at
//! rest and leave them out of what it shows.
//!
//! A field is named by a JSON pointer into the definition's JSON
//! (`/spec/policies/0/params/secret`) and says which part of its string is the secret: all
//! of it ([`SecretPart::Whole`]: an HS256 key, an injected `Authorization` value) or the
//! password of a URL ([`SecretPart::UrlPassword`]: `redis://:pw@host`, an upstream
//! endpoint's `http://user:pw@host`). The model marks the endpoints' URLs; each policy marks
//! its own params ([`crate::policy::PolicyFactory::secret_params`]), and
//! [`api_secret_fields`] gathers both through a [`PolicyCatalog`]. The marks are read on the
//! JSON, not on parsed params, so that a document whose secrets are sealed (no longer valid
//! params) is marked exactly as its plain form is.

use std::fmt;

use serde_json::Value;

use super::PolicyCatalog;
use super::PolicyRef;

/// What stands in for a secret in what is shown or printed.
pub const REDACTED: &str = "<redacted>";

/// Which part of a string field is a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretPart {
    /// The whole value.
    Whole,
    /// The password of the URL the field holds, when it has one (the field is a secret only
    /// then).
    UrlPassword,
}

/// A field that holds a secret: a JSON pointer (RFC 6901) and the part of its string that
/// is secret. A pointer to a field that is absent, or not a string, marks nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretField {
    /// Where the field is: relative to a policy's params in what a policy returns, relative
    /// to the whole definition in what [`api_secret_fields`] returns.
    pub pointer: String,
    /// Which part of it is secret.
    pub part: SecretPart,
}

impl SecretField {
    /// The whole value at `pointer` is a secret.
    pub fn whole(pointer: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            part: SecretPart::Whole,
        }
    }

    /// The password of the URL at `pointer` is a secret.
    pub fn url_password(pointer: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            part: SecretPart::UrlPassword,
        }
    }

    /// This field, under `prefix` (a pointer).
    #[must_use]
    pub fn under(self, prefix: &str) -> Self {
        Self {
            pointer: format!("{prefix}{}", self.pointer),
            part: self.part,
        }
    }

    /// Whether `text`, the value of this field, holds a secret: always for
    /// [`SecretPart::Whole`], when it has a password for [`SecretPart::UrlPassword`].
    pub fn holds_secret(&self, text: &str) -> bool {
        match self.part {
            SecretPart::Whole => true,
            SecretPart::UrlPassword => url_password_span(text).is_some(),
        }
    }

    /// `text`, the value of this field, as it may be shown: [`REDACTED`] in place of the
    /// secret part.
    pub fn redact(&self, text: &str) -> String {
        match self.part {
            SecretPart::Whole => REDACTED.to_string(),
            SecretPart::UrlPassword => redact_url(text),
        }
    }
}

/// One token of a JSON pointer, escaped (`~` as `~0`, `/` as `~1`).
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Where the password of the URL `text` is (`scheme://user:password@host/...`), if it has
/// one (an empty password is none).
pub fn url_password_span(text: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find("://")? + 3;
    let authority_end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    let at = text[start..authority_end].rfind('@')? + start;
    let colon = text[start..at].find(':')? + start + 1;
    (colon < at).then_some(colon..at)
}

/// The URL `text` with its password, if any, replaced by [`REDACTED`].
pub fn redact_url(text: &str) -> String {
    match url_password_span(text) {
        Some(span) => format!("{}{REDACTED}{}", &text[..span.start], &text[span.end..]),
        None => text.to_string(),
    }
}

/// A URL as `Debug` prints it: with its password replaced by [`REDACTED`].
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

/// Header names whose values are credentials: a policy that sets one marks its value.
const SENSITIVE_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Words that make a header name one whose value is a credential (`x-auth-token`,
/// `x-client-secret`, `api-key`).
const SENSITIVE_WORDS: [&str; 5] = ["auth", "token", "secret", "password", "key"];

/// Whether the value of header `name` is a credential (`Authorization`, `Cookie`,
/// `X-Api-Key`, any name with `auth`, `token`, `secret`, `password` or `key` in it:
/// `Ocp-Apim-Subscription-Key`, `X-Functions-Key`; an `X-Idempotency-Key` is hidden too,
/// which costs only its display).
pub fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_HEADERS.contains(&name.as_str()) || SENSITIVE_WORDS.iter().any(|w| name.contains(w))
}

/// Every secret field of the API definition `api` (its JSON): the passwords of its upstream
/// endpoints' URLs, and what each policy it attaches, at API or operation level, marks in
/// its params (a policy `catalog` does not know marks nothing). The pointers are from the
/// definition's root.
pub fn api_secret_fields(api: &Value, catalog: &dyn PolicyCatalog) -> Vec<SecretField> {
    let mut fields = Vec::new();
    let endpoints = api
        .pointer("/spec/upstream/endpoints")
        .and_then(Value::as_array);
    for (i, _) in endpoints.into_iter().flatten().enumerate() {
        fields.push(SecretField::url_password(format!(
            "/spec/upstream/endpoints/{i}/url"
        )));
    }
    let mut policies = |at: &str, list: Option<&Value>| {
        for (i, policy) in list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(name) = policy.get("name").and_then(Value::as_str) else {
                continue;
            };
            let params = policy.get("params").cloned().unwrap_or(Value::Null);
            let policy = PolicyRef {
                name: name.to_string(),
                params,
            };
            let prefix = format!("{at}/{i}/params");
            fields.extend(
                catalog
                    .secret_params(&policy)
                    .into_iter()
                    .map(|f| f.under(&prefix)),
            );
        }
    };
    policies("/spec/policies", api.pointer("/spec/policies"));
    let operations = api.pointer("/spec/operations").and_then(Value::as_array);
    for (j, operation) in operations.into_iter().flatten().enumerate() {
        policies(
            &format!("/spec/operations/{j}/policies"),
            operation.get("policies"),
        );
    }
    fields
}

/// The secret fields of the headers a header policy sets or adds (`set`, `add`: maps of
/// header names to values), relative to its params.
pub fn header_secret_fields(params: &Value) -> Vec<SecretField> {
    let mut fields = Vec::new();
    for map in ["set", "add"] {
        let Some(headers) = params.get(map).and_then(Value::as_object) else {
            continue;
        };
        fields.extend(
            headers
                .keys()
                .filter(|name| is_sensitive_header(name))
                .map(|name| SecretField::whole(format!("/{map}/{}", pointer_token(name)))),
        );
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_found_and_redacted() {
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("http://svc:p@ss@backend:8080/x"),
            "http://svc:<redacted>@backend:8080/x"
        );
        for plain in [
            "http://backend:8080/a@b",
            "https://user@backend/",
            "https://user:@backend/",
            "not a url",
        ] {
            assert_eq!(url_password_span(plain), None, "{plain}");
            assert_eq!(redact_url(plain), plain);
        }
        assert_eq!(
            format!("{:?}", RedactedUrl("redis://u:pw@h/")),
            "\"redis://u:<redacted>@h/\""
        );
    }

    #[test]
    fn sensitive_headers_are_marked_by_name() {
        for name in [
            "Authorization",
            "COOKIE",
            "x-api-key",
            "X-Auth-Token",
            "x-client-secret",
            "Ocp-Apim-Subscription-Key",
            "x-functions-key",
            "x-api_key",
        ] {
            assert!(is_sensitive_header(name), "{name}");
        }
        for name in ["x-team", "accept", "x-forwarded-path"] {
            assert!(!is_sensitive_header(name), "{name}");
        }
        let params = serde_json::json!({
            "set": {"Authorization": "Bearer x", "x-team": "a", "a/b~c-token": "t"},
            "add": {"cookie": "c"},
            "remove": ["authorization"],
        });
        let pointers: Vec<String> = header_secret_fields(&params)
            .into_iter()
            .map(|f| f.pointer)
            .collect();
        assert_eq!(
            pointers,
            ["/set/Authorization", "/set/a~1b~0c-token", "/add/cookie"]
        );
        for pointer in &pointers {
            assert!(params.pointer(pointer).is_some(), "{pointer}");
        }
    }

    #[test]
    fn api_fields_are_gathered_from_the_model_and_the_policies() {
        let registry = crate::policy::PolicyRegistry::builtin();
        let api = serde_json::json!({"spec": {
            "upstream": {"endpoints": [{"url": "http://a"}, {"url": "http://b"}]},
            "policies": [
                {"name": "jwt", "params": {"secret": "k", "jwks": {"keys": [
                    {"kty": "RSA", "n": "public", "e": "AQAB"},
                    {"kty": "oct", "k": "hs256-key"},
                    {"kty": "RSA", "n": "public", "e": "AQAB", "d": "private", "p": "x"},
                ]}}},
                {"name": "not-registered", "params": {"secret": "k"}},
            ],
            "operations": [{"method": "GET", "path": "/", "policies": [
                {"name": "request-headers", "params": {"set": {"Cookie": "c"}}},
            ]}],
        }});
        let pointers: Vec<String> = api_secret_fields(&api, &registry)
            .into_iter()
            .map(|f| f.pointer)
            .collect();
        let mut expected = vec![
            "/spec/upstream/endpoints/0/url",
            "/spec/upstream/endpoints/1/url",
        ];
        if cfg!(feature = "jwt") {
            expected.extend([
                "/spec/policies/0/params/secret",
                "/spec/policies/0/params/jwksUrl",
                "/spec/policies/0/params/jwks/keys/1/k",
                "/spec/policies/0/params/jwks/keys/2/d",
                "/spec/policies/0/params/jwks/keys/2/p",
            ]);
        }
        if cfg!(feature = "transform") {
            expected.push("/spec/operations/0/policies/0/params/set/Cookie");
        }
        assert_eq!(pointers, expected);
    }

    /// `Debug` of the model and of the policies' params never prints a secret.
    #[test]
    fn debug_prints_no_secret() {
        let policy = PolicyRef {
            name: "jwt".into(),
            params: serde_json::json!({"secret": "hs256-secret-value"}),
        };
        let endpoint: crate::model::Endpoint =
            serde_json::from_value(serde_json::json!({"url": "http://u:endpoint-pw@h/"})).unwrap();
        #[cfg_attr(not(any(feature = "jwt", feature = "transform")), allow(unused_mut))]
        let mut printed = vec![format!("{policy:?}"), format!("{endpoint:?}")];
        #[cfg(feature = "jwt")]
        {
            let jwt: crate::policy::jwt::JwtConfig = serde_json::from_value(serde_json::json!({
                "algorithms": ["HS256"],
                "secret": "hs256-secret-value",
                "jwksUrl": "https://u:endpoint-pw@idp/keys",
                "jwks": {"keys": [{"kty": "oct", "kid": "inline", "k": "jwk-secret-value"}]},
            }))
            .unwrap();
            let text = format!("{jwt:?}");
            assert!(text.contains("inline"), "{text}");
            printed.push(text);
        }
        #[cfg(feature = "transform")]
        {
            let headers: crate::policy::headers::HeadersConfig =
                serde_json::from_value(serde_json::json!({
                    "set": {"Authorization": "Bearer header-secret", "x-team": "shown"},
                }))
                .unwrap();
            let text = format!("{headers:?}");
            assert!(text.contains("shown"), "{text}");
            printed.push(text);
        }
        for text in &printed {
            for secret in [
                "hs256-secret-value",
                "endpoint-pw",
                "header-secret",
                "jwk-secret-value",
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(
            printed[0].contains("secret"),
            "the field names show: {}",
            printed[0]
        );
    }
}
