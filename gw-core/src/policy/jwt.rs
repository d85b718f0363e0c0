//! `jwt`: authenticates a request by a signed JSON Web Token (RFC 7519), a bearer token
//! (RFC 6750) in `Authorization`, in another header or in a cookie.
//!
//! Keys come from an inline JWKS, a JWKS URL (fetched and cached by the `remote` module), PEM public keys or a shared
//! HS256 secret; each key verifies exactly one algorithm (the `keys` module), and a token is only
//! checked against keys of its header's `alg`. After the signature, the claims: `exp`
//! (required unless `requireExp: false`), `nbf`, `iss`, `aud`, required claims, then scopes
//! (403). A valid token names a consumer through the consumers' `jwt` credentials; its
//! claims may be forwarded as headers; the token itself never goes upstream.
//!
//! The request path reads the keys without locking and allocates little beyond what the
//! signature check needs: the JOSE header is decoded on the stack, and of the payload only
//! the claims the policy looks at are kept. A token is never logged.
//!
//! Outside a gateway, [`JwtLayer`] is the same policy as a `tower` middleware for any stack
//! (its inner service must be `Clone + Send`: a key fetch may be awaited before the call):
//!
//! ```
//! use gw_core::consumers::ConsumerStore;
//! use gw_core::policy::jwt::{JwtAlgorithm, JwtConfig, JwtLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let jwt = JwtLayer::new(
//!     JwtConfig {
//!         algorithms: vec![JwtAlgorithm::Hs256],
//!         // base64 of the shared secret, 32 bytes or more
//!         secret: Some("YSBzaGFyZWQgc2VjcmV0IG9mIDMyIGJ5dGVzIG9yIG1vcmU=".into()),
//!         issuer: vec!["https://idp.example".into()],
//!         ..JwtConfig::default()
//!     },
//!     ConsumerStore::default(),
//! )?;
//! let service = ServiceBuilder::new()
//!     .layer(jwt)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//!
//! let request = Request::get("/").header("authorization", "Bearer not.a.token").body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```

mod keys;
mod remote;
#[cfg(test)]
mod tests;
mod verifier;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

pub use self::keys::JwtAlgorithm;
use self::keys::{AlgorithmSet, Origin};
use self::remote::Remote;
use self::verifier::Signed;
pub use self::verifier::{JwtVerifier, VerifyError};
use super::deferred::{Decision, DeferredFilter, DeferredFuture, DeferredLayer, DeferredService};
use super::filter::{ConfigError, standalone};
use super::header_names::header_name;
use super::{Consumer, Phase, Policy, PolicyContext, RouteLayer};
use crate::body::Body;
use crate::consumers::{ConsumerSet, ConsumerStore};
use crate::model::secret::SecretField;
use crate::model::{FieldError, HumanDuration};

/// The longest token looked at, in bytes.
const MAX_TOKEN: usize = 16 * 1024;
/// The largest JOSE header, decoded, in bytes.
const MAX_JOSE_HEADER: usize = 1024;
/// The most keys one token is checked against.
const MAX_ATTEMPTS: usize = 8;
/// The largest `leeway`.
const MAX_LEEWAY: Duration = Duration::from_mins(5);

/// A PEM public key and the one algorithm it verifies.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// The key: PEM `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` or `CERTIFICATE`.
    pub pem: String,
    /// `RS256` (an RSA key), `ES256` (a P-256 key) or `EdDSA` (an Ed25519 key).
    pub algorithm: JwtAlgorithm,
    /// The `kid` that tokens signed with this key carry, if they carry one.
    #[serde(default)]
    pub kid: Option<String>,
}

/// The params of `jwt`. Its `Debug` shows no `secret` and no password of `jwksUrl`.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct JwtConfig {
    /// The algorithms accepted: `RS256`, `ES256`, `EdDSA`, `HS256` (at least one; never
    /// `none`).
    pub algorithms: Vec<JwtAlgorithm>,
    /// An inline JWKS: `{"keys": [...]}`.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// A URL (http or https) serving the identity provider's JWKS.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again (default `10m`).
    #[serde(default = "default_refresh")]
    pub refresh_interval: HumanDuration,
    /// The least time between two fetches asked for by tokens naming an unknown `kid`
    /// (default `30s`).
    #[serde(default = "default_min_refresh")]
    pub min_refresh_interval: HumanDuration,
    /// PEM public keys.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyConfig>,
    /// An HS256 shared secret, in base64 (at least 32 bytes). Stored in the API
    /// definition: for tests and simple setups.
    #[serde(default)]
    pub secret: Option<String>,
    /// The accepted issuers (`iss`); any issuer when empty.
    #[serde(default)]
    pub issuer: Vec<String>,
    /// The accepted audiences: the token's `aud` must hold one; any when empty.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Whether tokens must have `exp` (default true).
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Clock skew allowed on `exp` and `nbf` (default `30s`, at most `5m`).
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Claims that must be present (and not null).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Scopes the token must have (in `scope` or `scp`), else 403.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claims forwarded upstream: claim name -> request header name.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// The header carrying the token (default `Authorization`, with the `Bearer` scheme;
    /// another header carries the bare token); `""` for none.
    #[serde(default = "default_header")]
    pub header: String,
    /// A cookie carrying the token, looked at when the header has none.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Whether a valid token must name a consumer (default false).
    #[serde(default)]
    pub consumer_required: bool,
}

/// The members of a JWK that hold a secret: an `oct` key's `k` (an HS256 key), and the
/// private parts of an RSA or EC key pasted whole (which verification does not need).
const JWK_SECRET_MEMBERS: [&str; 8] = ["k", "d", "p", "q", "dp", "dq", "qi", "oth"];

/// The pointers (relative to `jwks`) of the secret members of its keys.
fn jwk_secrets(jwks: &Value) -> Vec<String> {
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return Vec::new();
    };
    keys.iter()
        .enumerate()
        .flat_map(|(i, key)| {
            JWK_SECRET_MEMBERS
                .iter()
                .filter(move |member| key.get(**member).is_some())
                .map(move |member| format!("/keys/{i}/{member}"))
        })
        .collect()
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::model::secret::{REDACTED, RedactedUrl};
        let jwks = self.jwks.as_ref().map(|jwks| {
            let mut shown = jwks.clone();
            for pointer in jwk_secrets(jwks) {
                if let Some(member) = shown.pointer_mut(&pointer) {
                    *member = Value::String(REDACTED.to_string());
                }
            }
            shown
        });
        f.debug_struct("JwtConfig")
            .field("algorithms", &self.algorithms)
            .field("jwks", &jwks)
            .field("jwks_url", &self.jwks_url.as_deref().map(RedactedUrl))
            .field("refresh_interval", &self.refresh_interval)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("public_keys", &self.public_keys)
            .field("secret", &self.secret.as_ref().map(|_| REDACTED))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("require_exp", &self.require_exp)
            .field("leeway", &self.leeway)
            .field("required_claims", &self.required_claims)
            .field("scopes", &self.scopes)
            .field("forward_claims", &self.forward_claims)
            .field("header", &self.header)
            .field("cookie", &self.cookie)
            .field("consumer_required", &self.consumer_required)
            .finish()
    }
}

fn default_refresh() -> HumanDuration {
    HumanDuration::from_secs(600)
}

fn default_min_refresh() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_leeway() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_header() -> String {
    "Authorization".to_string()
}

fn yes() -> bool {
    true
}

impl Default for JwtConfig {
    /// No algorithm and no key yet (give both), and the defaults of the policy's params.
    fn default() -> Self {
        Self {
            algorithms: Vec::new(),
            jwks: None,
            jwks_url: None,
            refresh_interval: default_refresh(),
            min_refresh_interval: default_min_refresh(),
            public_keys: Vec::new(),
            secret: None,
            issuer: Vec::new(),
            audience: Vec::new(),
            require_exp: true,
            leeway: default_leeway(),
            required_claims: Vec::new(),
            scopes: Vec::new(),
            forward_claims: BTreeMap::new(),
            header: default_header(),
            cookie: None,
            consumer_required: false,
        }
    }
}

/// `jwt` as a `tower::Layer` for any stack. Its services ([`Jwt`]) answer a request
/// without a valid token with 401 (403 for a missing scope); a request with one goes on
/// without the token, with its forwarded claims and, when a consumer's `jwt` credential
/// binds it, the consumer in its extensions ([`Consumer`]).
pub type JwtLayer = DeferredLayer<JwtFilter>;

/// The service of a [`JwtLayer`] around `S`.
pub type Jwt<S> = DeferredService<JwtFilter, S>;

/// The future of a [`Jwt`] call: an answer at once, the inner call, or a wait for the
/// JWKS (a first fetch, or a refetch for an unknown key id) and then either.
pub type ResponseFuture<F, ResB, E> = DeferredFuture<F, (), ResB, E>;

impl JwtLayer {
    /// Checks and compiles `config` (the same rules as the params of `jwt`), with
    /// `consumers` for the tokens' subjects (an empty store when tokens name none).
    // by value, as every layer's constructor takes its config (and the store is kept)
    #[allow(clippy::needless_pass_by_value)]
    pub fn new(config: JwtConfig, consumers: ConsumerStore) -> Result<Self, ConfigError> {
        let ctx = PolicyContext {
            consumers: &consumers,
            ..standalone()
        };
        Self::checked(&JwtPolicy, config, |config| JwtFilter::build(config, &ctx))
    }
}

/// `jwt`.
#[derive(Debug)]
pub(crate) struct JwtPolicy;

impl Policy for JwtPolicy {
    type Params = JwtConfig;

    /// The HS256 `secret`, and the password of a `jwksUrl` that has one.
    fn secret_params(&self, params: &Value) -> Vec<SecretField> {
        let mut fields = vec![
            SecretField::whole("/secret"),
            SecretField::url_password("/jwksUrl"),
        ];
        if let Some(jwks) = params.get("jwks") {
            fields.extend(
                jwk_secrets(jwks)
                    .into_iter()
                    .map(|pointer| SecretField::whole(format!("/jwks{pointer}"))),
            );
        }
        fields
    }

    fn check(&self, params: &JwtConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError::new(field, message));
        let algorithms: AlgorithmSet = params.algorithms.iter().copied().collect();
        if params.algorithms.is_empty() {
            err("algorithms".into(), "give at least one algorithm".into());
        }
        if params.jwks.is_none()
            && params.jwks_url.is_none()
            && params.public_keys.is_empty()
            && params.secret.is_none()
        {
            err(
                "jwks".into(),
                "give keys: jwks, jwksUrl, publicKeys or secret".into(),
            );
        }
        if let Some(jwks) = &params.jwks {
            match keys::from_jwks(jwks, Origin::Inline, Some(algorithms)) {
                Ok((_, problems)) => {
                    for (i, reason) in problems {
                        err(format!("jwks.keys[{i}]"), reason);
                    }
                }
                Err(reason) => err("jwks".into(), reason),
            }
        }
        if let Some(url) = &params.jwks_url
            && let Err(reason) = Remote::check_url(url)
        {
            err("jwksUrl".into(), reason);
        }
        let refresh = params.refresh_interval.as_duration();
        if !(Duration::from_mins(1)..=Duration::from_hours(24)).contains(&refresh) {
            err("refreshInterval".into(), "must be 1m to 24h".into());
        }
        let min_refresh = params.min_refresh_interval.as_duration();
        if min_refresh < Duration::from_secs(1) || min_refresh > refresh {
            err(
                "minRefreshInterval".into(),
                "must be at least 1s and at most refreshInterval".into(),
            );
        }
        for (i, key) in params.public_keys.iter().enumerate() {
            if !algorithms.contains(key.algorithm) {
                err(
                    format!("publicKeys[{i}].algorithm"),
                    "is not in algorithms".into(),
                );
            } else if let Err(reason) = keys::from_pem(&key.pem, key.algorithm, None) {
                err(format!("publicKeys[{i}].pem"), reason);
            }
            if key.kid.as_deref().is_some_and(str::is_empty) {
                err(format!("publicKeys[{i}].kid"), "must not be empty".into());
            }
        }
        if let Some(secret) = &params.secret {
            if !algorithms.contains(JwtAlgorithm::Hs256) {
                err("secret".into(), "needs HS256 in algorithms".into());
            }
            if let Err(reason) = keys::from_secret(secret) {
                err("secret".into(), reason);
            }
        }
        for (field, list) in [("issuer", &params.issuer), ("audience", &params.audience)] {
            for (i, value) in list.iter().enumerate() {
                if value.is_empty() {
                    err(format!("{field}[{i}]"), "must not be empty".into());
                }
            }
        }
        if params.leeway.as_duration() > MAX_LEEWAY {
            err("leeway".into(), "must be at most 5m".into());
        }
        for (i, claim) in params.required_claims.iter().enumerate() {
            if claim.is_empty() {
                err(format!("requiredClaims[{i}]"), "must not be empty".into());
            }
        }
        for (i, scope) in params.scopes.iter().enumerate() {
            // RFC 6749, section 3.3: a scope token
            if scope.is_empty()
                || !scope
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                err(
                    format!("scopes[{i}]"),
                    "must be visible ASCII characters without '\"' or '\\'".into(),
                );
            }
        }
        for (claim, header) in &params.forward_claims {
            if claim.is_empty() {
                err(
                    "forwardClaims".into(),
                    "a claim name must not be empty".into(),
                );
            }
            if let Err(reason) = forward_header(header, &params.header) {
                err(format!("forwardClaims.{claim}"), reason);
            }
        }
        if !params.header.is_empty()
            && let Err(reason) = header_name(&params.header, true)
        {
            err("header".into(), reason);
        }
        if let Some(cookie) = &params.cookie
            && (cookie.is_empty()
                || !cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
        {
            err("cookie".into(), "is not a cookie name".into());
        }
        if params.header.is_empty() && params.cookie.is_none() {
            err("header".into(), "give a header, a cookie or both".into());
        }
        errors
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn layer(&self, params: JwtConfig, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
        JwtFilter::build(params, ctx).map(|filter| JwtLayer::from_filter(filter).into())
    }
}

/// Checks a JWKS URL as `jwksUrl` is checked: `https://` (or `http://` on a loopback
/// address only: whoever is on the path of a plain-HTTP JWKS can mint tokens), a host, no
/// user name, password or fragment. The reason does not quote the URL.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    Remote::check_url(url).map(drop)
}

/// A forwarded claim's header: a request header that is not the token's own.
fn forward_header(name: &str, token_header: &str) -> Result<HeaderName, String> {
    let parsed = header_name(name, true)?;
    if parsed == http::header::AUTHORIZATION
        || parsed == http::header::COOKIE
        || parsed.as_str().eq_ignore_ascii_case(token_header)
    {
        return Err(format!("{name:?} cannot carry a claim"));
    }
    Ok(parsed)
}

/// Why a token (or a request, for want of one) is refused; its [`Display`](fmt::Display) is
/// the reason the policy answers, which never quotes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// The request carries no token.
    Missing,
    /// The request carries more than one token.
    Several,
    /// The token is not a well-formed JWS, or its claims not a JSON object.
    Malformed,
    /// The token's `alg` is not among the accepted algorithms.
    Algorithm,
    /// The key the token names verifies another algorithm.
    KeyAlgorithm,
    /// No key has the token's `kid`.
    UnknownKey,
    /// No key verifies the token's algorithm.
    NoKey,
    /// The signature does not verify.
    Signature,
    /// The token has no `exp` and one is required.
    NoExpiry,
    /// `exp` has passed (leeway included).
    Expired,
    /// `nbf` has not come yet (leeway included).
    NotYetValid,
    /// `iss` is not an accepted issuer.
    Issuer,
    /// `aud` holds no accepted audience.
    Audience,
    /// A required claim is missing.
    MissingClaim,
    /// The token names no known consumer, and one is required.
    UnknownConsumer,
    /// A required scope is missing (403, where the others are 401).
    Scope,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe().1)
    }
}

impl Reject {
    /// The error code the policy answers (`invalid_token`, `insufficient_scope`, ...).
    pub fn code(self) -> &'static str {
        self.describe().0
    }
}

/// An RFC 6750 `invalid_token` refusal: its description and its challenge.
macro_rules! invalid_token {
    ($description:literal) => {
        (
            $description,
            concat!(
                "Bearer realm=\"gw\", error=\"invalid_token\", error_description=\"",
                $description,
                "\""
            ),
        )
    };
}

impl Reject {
    /// The JSON code, the description and the `WWW-Authenticate` challenge.
    fn describe(self) -> (&'static str, &'static str, &'static str) {
        let (description, challenge) = match self {
            Reject::Missing => ("a bearer token is required", "Bearer realm=\"gw\""),
            Reject::Several => invalid_token!("the request carries more than one token"),
            Reject::Malformed => invalid_token!("the token is malformed"),
            Reject::Algorithm => invalid_token!("the token's algorithm is not accepted"),
            Reject::KeyAlgorithm => invalid_token!("the token's algorithm is not its key's"),
            Reject::UnknownKey => invalid_token!("the token's key is unknown"),
            Reject::NoKey => invalid_token!("no key verifies the token's algorithm"),
            Reject::Signature => invalid_token!("the token's signature is not valid"),
            Reject::NoExpiry => invalid_token!("the token has no expiry"),
            Reject::Expired => invalid_token!("the token has expired"),
            Reject::NotYetValid => invalid_token!("the token is not valid yet"),
            Reject::Issuer => invalid_token!("the token's issuer is not accepted"),
            Reject::Audience => invalid_token!("the token's audience is not accepted"),
            Reject::MissingClaim => invalid_token!("the token lacks a required claim"),
            Reject::UnknownConsumer => invalid_token!("the token names no known consumer"),
            Reject::Scope => ("the token lacks a required scope", ""),
        };
        let code = match self {
            Reject::Missing => "missing_credentials",
            Reject::UnknownConsumer => "unknown_consumer",
            Reject::Scope => "insufficient_scope",
            _ => "invalid_token",
        };
        (code, description, challenge)
    }
}

/// What a request's token leads to.
enum Verdict {
    Admit(Admission),
    Refuse(Reject),
    /// Wait for the JWKS URL's first fetch, then decide again.
    Settle,
    /// Fetch the JWKS again for this `kid`, then decide again.
    Refetch(Box<str>),
}

/// What an admitted request gets.
struct Admission {
    consumer: Option<Consumer>,
    forward: Vec<(HeaderName, HeaderValue)>,
}

/// The compiled `jwt` policy, built once per configuration: the [`DeferredFilter`] of a
/// [`JwtLayer`].
pub struct JwtFilter {
    api: Box<str>,
    /// The keys, and the checks of a token's claims.
    verifier: JwtVerifier,
    /// The header carrying the token, and whether it is `Authorization: Bearer`.
    header: Option<(HeaderName, bool)>,
    cookie: Option<Box<str>>,
    forward: Box<[(Box<str>, HeaderName)]>,
    consumer_required: bool,
    consumers: ConsumerStore,
    scope_challenge: HeaderValue,
}

impl fmt::Debug for JwtFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtFilter")
            .field("api", &self.api)
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl JwtFilter {
    fn build(params: JwtConfig, ctx: &PolicyContext<'_>) -> Result<Self, String> {
        let verifier = JwtVerifier::build(&params)?;
        let header = if params.header.is_empty() {
            None
        } else {
            let name = header_name(&params.header, true)?;
            let bearer = name == http::header::AUTHORIZATION;
            Some((name, bearer))
        };
        let forward = params
            .forward_claims
            .iter()
            .map(|(claim, header)| {
                Ok((
                    claim.clone().into_boxed_str(),
                    forward_header(header, &params.header)?,
                ))
            })
            .collect::<Result<_, String>>()?;
        let scope_challenge = HeaderValue::from_str(&format!(
            "Bearer realm=\"gw\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"{}\"",
            params.scopes.join(" ")
        ))
        .map_err(|_| "scopes: not valid in a header".to_string())?;
        Ok(Self {
            api: ctx.api.into(),
            verifier,
            header,
            cookie: params.cookie.map(String::into_boxed_str),
            forward,
            consumer_required: params.consumer_required,
            consumers: ctx.consumers.clone(),
            scope_challenge,
        })
    }

    /// The response to a refused request.
    fn refuse(&self, reject: Reject) -> Response<Body> {
        let (code, description, challenge) = reject.describe();
        tracing::debug!(api = %self.api, reason = description, "jwt: request refused");
        let status = if reject == Reject::Scope {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut response = crate::error::json_error(status, code, description);
        let challenge = if reject == Reject::Scope {
            self.scope_challenge.clone()
        } else {
            HeaderValue::from_static(challenge)
        };
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, challenge);
        response
    }

    /// The token of the request: in the header, else in the cookie.
    fn token<'r>(&self, headers: &'r HeaderMap) -> Result<&'r str, Reject> {
        if let Some((name, bearer)) = &self.header {
            let mut values = headers.get_all(name).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() {
                    return Err(Reject::Several);
                }
                let bytes = value.as_bytes();
                let token = if *bearer {
                    bearer_token(bytes)
                } else {
                    Some(bytes.trim_ascii())
                };
                if let Some(token) = token.filter(|t| !t.is_empty()) {
                    return as_token(token);
                }
            }
        }
        if let Some(cookie) = &self.cookie
            && let Some(token) = cookie_value(headers, cookie.as_bytes())
        {
            return as_token(token);
        }
        Err(Reject::Missing)
    }

    /// The verdict on a request; `retry` after a JWKS fetch made for it.
    fn verdict(&self, headers: &HeaderMap, retry: bool) -> Verdict {
        let token = match self.token(headers) {
            Ok(token) => token,
            Err(reject) => return Verdict::Refuse(reject),
        };
        let consumers = self.consumers.load();
        match self.verify(token, &consumers, retry) {
            Ok(verdict) => verdict,
            Err(reject) => Verdict::Refuse(reject),
        }
    }

    fn verify(&self, token: &str, consumers: &ConsumerSet, retry: bool) -> Result<Verdict, Reject> {
        let payload = match self.verifier.signed(token, retry)? {
            Signed::Payload(payload) => payload,
            Signed::Settle => return Ok(Verdict::Settle),
            Signed::Refetch(kid) => return Ok(Verdict::Refetch(kid)),
        };
        let wanted = |name: &str| {
            self.verifier.required_claims.iter().any(|c| &**c == name)
                || self.forward.iter().any(|(c, _)| &**c == name)
                || consumers.subject_claims().iter().any(|c| c == name)
        };
        let claims = Claims::parse(&payload, &wanted).map_err(|_| Reject::Malformed)?;
        self.verifier.validate(&claims)?;

        // A binding to an issuer matches only for an issuer this policy lists: the token's
        // `iss` is only as trustworthy as the keys that verified it, and a key of another
        // identity provider (or a shared secret) could sign any `iss`. Without a listed
        // issuer, only bindings to no issuer match.
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .filter(|iss| self.verifier.issuers.iter().any(|listed| &**listed == *iss));
        let consumer = consumers.subject_claims().iter().find_map(|claim| {
            let subject: Cow<'_, str> = match claims.get(claim)? {
                Value::String(s) => Cow::Borrowed(s),
                Value::Number(n) => Cow::Owned(n.to_string()),
                _ => return None,
            };
            consumers.by_subject(claim, &subject, issuer).cloned()
        });
        if consumer.is_none() && self.consumer_required {
            return Err(Reject::UnknownConsumer);
        }
        if !self.verifier.has_scopes(&claims) {
            return Err(Reject::Scope);
        }
        let forward = self
            .forward
            .iter()
            .filter_map(|(claim, header)| {
                let value = match claims.get(claim)? {
                    Value::Null => return None,
                    Value::String(s) => HeaderValue::from_str(s),
                    other @ (Value::Number(_) | Value::Bool(_)) => {
                        HeaderValue::from_str(&other.to_string())
                    }
                    other => HeaderValue::from_str(&serde_json::to_string(other).ok()?),
                };
                Some((header.clone(), value.ok()?))
            })
            .collect();
        Ok(Verdict::Admit(Admission { consumer, forward }))
    }

    /// Marks the request as admitted: the consumer, the forwarded claims (any copy the
    /// client sent removed first), and no token left for the upstream.
    fn admit<B>(&self, request: &mut Request<B>, admission: Admission) {
        let headers = request.headers_mut();
        if let Some((name, _)) = &self.header {
            headers.remove(name);
        }
        if let Some(cookie) = &self.cookie {
            strip_cookie(headers, cookie.as_bytes());
        }
        for (_, name) in &self.forward {
            headers.remove(name);
        }
        for (name, value) in admission.forward {
            headers.append(name, value);
        }
        if let Some(consumer) = admission.consumer {
            super::authenticate(request, consumer);
        }
    }
}

/// The token of an `Authorization: Bearer` value (the scheme in any case).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

fn as_token(bytes: &[u8]) -> Result<&str, Reject> {
    if bytes.len() > MAX_TOKEN {
        return Err(Reject::Malformed);
    }
    std::str::from_utf8(bytes).map_err(|_| Reject::Malformed)
}

/// The value of cookie `name` (without surrounding quotes), from the first `Cookie` header
/// that has it.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            if pair[..eq].trim_ascii() != name {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            Some(
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value),
            )
        })
        .filter(|value| !value.is_empty())
}

/// Removes cookie `name` from the `Cookie` headers, keeping the others as sent.
fn strip_cookie(headers: &mut HeaderMap, name: &[u8]) {
    let is_it = |pair: &[u8]| {
        let pair = pair.trim_ascii();
        let end = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        pair[..end].trim_ascii() == name
    };
    let cookies = headers.get_all(http::header::COOKIE);
    if !cookies
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b';').any(is_it))
    {
        return;
    }
    let kept: Vec<HeaderValue> = cookies
        .iter()
        .filter_map(|value| {
            let pairs: Vec<&[u8]> = value
                .as_bytes()
                .split(|&b| b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|pair| !pair.is_empty() && !is_it(pair))
                .collect();
            if pairs.is_empty() {
                return None;
            }
            HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok()
        })
        .collect();
    headers.remove(http::header::COOKIE);
    for value in kept {
        headers.append(http::header::COOKIE, value);
    }
}

/// The fields of a JOSE header that gw reads; the others are ignored.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// The claims of a payload that the policy looks at; the others are skipped unparsed.
#[derive(Debug)]
struct Claims<'a> {
    kept: Vec<(Cow<'a, str>, Value)>,
}

/// The registered claims the policy reads.
const READ: [&str; 6] = ["exp", "nbf", "iss", "aud", "scope", "scp"];

impl<'a> Claims<'a> {
    fn parse(payload: &'a [u8], wanted: &dyn Fn(&str) -> bool) -> Result<Self, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let claims = ClaimsSeed { wanted }.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(claims)
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.kept.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

struct ClaimsSeed<'w> {
    wanted: &'w dyn Fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Claims<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
        let mut kept: Vec<(Cow<'de, str>, Value)> = Vec::new();
        while let Some(Name(name)) = map.next_key()? {
            if READ.contains(&&*name) || (self.wanted)(&name) {
                if kept.iter().any(|(n, _)| *n == name) {
                    return Err(de::Error::custom("a claim appears twice"));
                }
                let value: Value = map.next_value()?;
                kept.push((name, value));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Claims { kept })
    }
}

/// A claim name, borrowed from the payload when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// What is left to wait for before a token is decided: the JWKS URL's first fetch, or
/// a fetch for a key id the keys do not have.
#[derive(Debug)]
pub struct Wait(Option<Box<str>>);

impl DeferredFilter for JwtFilter {
    type Pending = Wait;
    type State = ();

    fn decide<B>(&self, request: &mut Request<B>) -> Decision<(), Wait> {
        if let Some(remote) = &self.verifier.remote {
            remote.start();
        }
        match self.verdict(request.headers(), false) {
            Verdict::Admit(admission) => {
                self.admit(request, admission);
                Decision::Accept(())
            }
            Verdict::Refuse(reject) => Decision::Refuse(self.refuse(reject)),
            Verdict::Settle => Decision::Defer(Wait(None)),
            Verdict::Refetch(kid) => Decision::Defer(Wait(Some(kid))),
        }
    }

    async fn settle<B: Send>(
        &self,
        Wait(wait): Wait,
        request: &mut Request<B>,
    ) -> Result<(), Response<Body>> {
        if let Some(remote) = &self.verifier.remote {
            match &wait {
                Some(kid) => remote.refetch_for(kid).await,
                None => remote.settle().await,
            }
        }
        match self.verdict(request.headers(), true) {
            Verdict::Admit(admission) => {
                self.admit(request, admission);
                Ok(())
            }
            Verdict::Refuse(reject) => Err(self.refuse(reject)),
            Verdict::Settle | Verdict::Refetch(_) => Err(self.refuse(Reject::UnknownKey)),
        }
    }
}
