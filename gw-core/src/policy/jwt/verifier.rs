//! The checks of a token that need no request: its signature against the keys, then its
//! claims (`exp`, `nbf`, `iss`, `aud`, required claims, scopes).
//!
//! The `jwt` policy runs them on the token of each request ([`super::JwtFilter`]); anything
//! else that takes JSON Web Tokens from an identity provider (the controller's admin API,
//! for people signing in through OIDC) runs the same through [`JwtVerifier::verify`], with
//! the same keys, the same JWKS fetcher and the same rules, rather than a copy of them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::keys::{self, AlgorithmSet, Key, KeySet, Origin};
use super::remote::Remote;
use super::{
    Claims, JoseHeader, JwtAlgorithm, JwtConfig, JwtPolicy, MAX_ATTEMPTS, MAX_JOSE_HEADER, Reject,
    as_token,
};
use crate::model::FieldError;
use crate::policy::filter::{ConfigError, checked_in, standalone};

/// Verifies JSON Web Tokens as the `jwt` policy does, for code that has the token's text
/// rather than a request: an admin API that takes tokens from an identity provider, a
/// service of an embedder.
///
/// It is built from the policy's own params ([`JwtConfig`]), checked by the same rules:
/// the keys (`jwks`, `jwksUrl`, `publicKeys`, `secret`, each pinned to one algorithm), the
/// accepted `algorithms`, `issuer` and `audience`, `requireExp`, `leeway`,
/// `requiredClaims` and `scopes`. What only makes sense on a request (`header`, `cookie`)
/// is not used; `forwardClaims` and `consumerRequired` are refused. A `jwksUrl` is fetched
/// by the same cache as the policy's, with its bounds: a fetch takes at most 5 s and 1 MiB,
/// follows no redirect, is refreshed every `refreshInterval`, and a token naming an unknown
/// `kid` makes it fetched again at most once per `minRefreshInterval`.
///
/// ```
/// use gw_core::policy::jwt::{JwtAlgorithm, JwtConfig, JwtVerifier, Reject, VerifyError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let verifier = JwtVerifier::new(JwtConfig {
///     algorithms: vec![JwtAlgorithm::Hs256],
///     secret: Some("YSBzaGFyZWQgc2VjcmV0IG9mIDMyIGJ5dGVzIG9yIG1vcmU=".into()),
///     issuer: vec!["https://idp.example".into()],
///     ..JwtConfig::default()
/// })?;
/// let refused = verifier.verify("not.a.token").await;
/// assert_eq!(refused, Err(VerifyError::Rejected(Reject::Malformed)));
/// # Ok(())
/// # }
/// ```
pub struct JwtVerifier {
    algorithms: AlgorithmSet,
    /// The keys of `jwks`, `publicKeys` and `secret`.
    keys: KeySet,
    pub(super) remote: Option<Arc<Remote>>,
    pub(super) issuers: Box<[Box<str>]>,
    audiences: Box<[Box<str>]>,
    require_exp: bool,
    leeway: u64,
    pub(super) required_claims: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.keys.len())
            .field("remote", &self.remote)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

/// Why [`JwtVerifier::verify`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token is not valid: the reason, as the `jwt` policy gives it.
    #[error("{0}")]
    Rejected(Reject),
    /// No key can verify the token because none is known yet: the JWKS URL has not been
    /// fetched (the identity provider does not answer). Worth a retry, unlike
    /// [`VerifyError::Rejected`].
    #[error("the keys of the identity provider are not available yet")]
    KeysUnavailable,
}

impl From<Reject> for VerifyError {
    fn from(reject: Reject) -> Self {
        Self::Rejected(reject)
    }
}

/// What the signature check of a token leads to.
pub(super) enum Signed {
    /// The signature holds: the payload, decoded (its claims not checked yet).
    Payload(Vec<u8>),
    /// Wait for the JWKS URL's first fetch, then check again.
    Settle,
    /// Fetch the JWKS again for this `kid`, then check again.
    Refetch(Box<str>),
}

fn boxed(list: &[String]) -> Box<[Box<str>]> {
    list.iter().map(|s| s.as_str().into()).collect()
}

impl JwtVerifier {
    /// Checks `config` by the rules of the `jwt` policy's params and compiles it; every
    /// problem comes back with its field path. Called inside a Tokio runtime, a `jwksUrl`'s
    /// first fetch starts at once.
    // by value, as the layers' constructors take their config
    #[allow(clippy::needless_pass_by_value)]
    pub fn new(config: JwtConfig) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        if !config.forward_claims.is_empty() {
            errors.push(FieldError::new(
                "forwardClaims",
                "is for a request: a verifier returns the claims",
            ));
        }
        if config.consumer_required {
            errors.push(FieldError::new(
                "consumerRequired",
                "is for a request: a verifier names no consumer",
            ));
        }
        ConfigError::check(errors)?;
        checked_in(&JwtPolicy, &standalone(), config, |config| {
            Self::build(&config)
        })
    }

    /// Compiles params already checked: the keys, the JWKS URL's shared cache, the claims'
    /// rules.
    pub(super) fn build(params: &JwtConfig) -> Result<Self, String> {
        let algorithms: AlgorithmSet = params.algorithms.iter().copied().collect();
        let mut keys = KeySet::default();
        if let Some(jwks) = &params.jwks {
            let (set, problems) = keys::from_jwks(jwks, Origin::Inline, Some(algorithms))
                .map_err(|reason| format!("jwks: {reason}"))?;
            if let Some((i, reason)) = problems.into_iter().next() {
                return Err(format!("jwks.keys[{i}]: {reason}"));
            }
            keys.keys.extend(set.keys);
        }
        for (i, key) in params.public_keys.iter().enumerate() {
            keys.keys.push(
                keys::from_pem(&key.pem, key.algorithm, key.kid.as_deref())
                    .map_err(|reason| format!("publicKeys[{i}].pem: {reason}"))?,
            );
        }
        if let Some(secret) = &params.secret {
            keys.keys
                .push(keys::from_secret(secret).map_err(|reason| format!("secret: {reason}"))?);
        }
        let remote = match &params.jwks_url {
            Some(url) => {
                let url = Remote::check_url(url).map_err(|reason| format!("jwksUrl: {reason}"))?;
                Some(
                    Remote::shared(
                        &url,
                        params.refresh_interval.as_duration(),
                        params.min_refresh_interval.as_duration(),
                    )
                    .map_err(|reason| format!("jwksUrl: {reason}"))?,
                )
            }
            None => None,
        };
        Ok(Self {
            algorithms,
            keys,
            remote,
            issuers: boxed(&params.issuer),
            audiences: boxed(&params.audience),
            require_exp: params.require_exp,
            leeway: params.leeway.as_duration().as_secs(),
            required_claims: boxed(&params.required_claims),
            scopes: boxed(&params.scopes),
        })
    }

    /// Verifies `token` (the compact serialization, without `Bearer `) and answers its
    /// claims, all of them, once the signature, `exp`, `nbf`, `iss`, `aud`, the required
    /// claims and the scopes hold. A token larger than 16 KiB is refused unread.
    ///
    /// It may wait for the JWKS URL: for its first fetch, or for a fetch asked for by a
    /// `kid` no key has (at most once per `minRefreshInterval`); each fetch takes at most
    /// 5 s. A token no key can verify because none was ever fetched is
    /// [`VerifyError::KeysUnavailable`].
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, VerifyError> {
        let token = as_token(token.as_bytes())?;
        if let Some(remote) = &self.remote {
            remote.start();
        }
        let mut retry = false;
        let payload = loop {
            let signed = match self.signed(token, retry) {
                Ok(signed) => signed,
                Err(Reject::UnknownKey | Reject::NoKey) if !self.has_keys() => {
                    return Err(VerifyError::KeysUnavailable);
                }
                Err(reject) => return Err(reject.into()),
            };
            match (signed, &self.remote) {
                (Signed::Payload(payload), _) => break payload,
                (Signed::Settle, Some(remote)) if !retry => remote.settle().await,
                (Signed::Refetch(kid), Some(remote)) if !retry => remote.refetch_for(&kid).await,
                _ => return Err(Reject::UnknownKey.into()),
            }
            retry = true;
        };
        let claims = Claims::parse(&payload, &|_| true).map_err(|_| Reject::Malformed)?;
        self.validate(&claims)?;
        if !self.has_scopes(&claims) {
            return Err(Reject::Scope.into());
        }
        Ok(claims
            .kept
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value))
            .collect())
    }

    /// Whether some key is known: given in the params, or fetched.
    pub fn has_keys(&self) -> bool {
        !self.keys.keys.is_empty()
            || self
                .remote
                .as_ref()
                .is_some_and(|remote| !remote.keys().keys.is_empty())
    }

    /// The signature check of `token`; `retry` after a JWKS fetch made for it.
    pub(super) fn signed(&self, token: &str, retry: bool) -> Result<Signed, Reject> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        let message = &token[..header.len() + 1 + payload.len()];

        let mut buf = [0u8; MAX_JOSE_HEADER];
        let len = URL_SAFE_NO_PAD
            .decode_slice(header, &mut buf)
            .map_err(|_| Reject::Malformed)?;
        let jose: JoseHeader<'_> =
            serde_json::from_slice(&buf[..len]).map_err(|_| Reject::Malformed)?;
        if jose.crit.is_some() {
            // no extension is understood, so none can be critical
            return Err(Reject::Malformed);
        }
        let alg = JwtAlgorithm::from_name(&jose.alg)
            .filter(|alg| self.algorithms.contains(*alg))
            .ok_or(Reject::Algorithm)?;
        if signature.is_empty() {
            return Err(Reject::Signature);
        }

        let remote_keys = self.remote.as_ref().map(|remote| remote.keys());
        let fetched: &[Key] = remote_keys.as_ref().map_or(&[], |set| &set.keys);
        let all = || self.keys.keys.iter().chain(fetched);
        let verifies = |key: &&Key| {
            jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &key.verifier,
                alg.jsonwebtoken(),
            )
            .unwrap_or(false)
        };
        let pending = !retry && self.remote.as_ref().is_some_and(|r| r.pending());
        match jose.kid.as_deref() {
            Some(kid) if all().any(|k| k.kid.as_deref() == Some(kid)) => {
                let mut named = all()
                    .filter(|k| k.kid.as_deref() == Some(kid) && k.alg == alg)
                    .take(MAX_ATTEMPTS)
                    .peekable();
                if named.peek().is_none() {
                    return Err(Reject::KeyAlgorithm);
                }
                if !named.any(|k| verifies(&k)) {
                    return Err(Reject::Signature);
                }
            }
            Some(kid) => {
                // no key by that name: keys without a name may still have signed it
                let verified = all()
                    .filter(|k| k.kid.is_none() && k.alg == alg)
                    .take(MAX_ATTEMPTS)
                    .any(|k| verifies(&k));
                if !verified {
                    if pending {
                        return Ok(Signed::Settle);
                    }
                    if !retry && self.remote.as_ref().is_some_and(|r| r.may_refetch()) {
                        return Ok(Signed::Refetch(kid.into()));
                    }
                    return Err(Reject::UnknownKey);
                }
            }
            None => {
                let mut candidates = all().filter(|k| k.alg == alg).take(MAX_ATTEMPTS).peekable();
                let any = candidates.peek().is_some();
                if !candidates.any(|k| verifies(&k)) {
                    if pending {
                        return Ok(Signed::Settle);
                    }
                    return Err(if any {
                        Reject::Signature
                    } else {
                        Reject::NoKey
                    });
                }
            }
        }
        drop(remote_keys);
        URL_SAFE_NO_PAD
            .decode(payload)
            .map(Signed::Payload)
            .map_err(|_| Reject::Malformed)
    }

    /// The time claims, the issuer, the audience and the required claims.
    pub(super) fn validate(&self, claims: &Claims<'_>) -> Result<(), Reject> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        #[allow(clippy::cast_precision_loss)] // at most 300
        let leeway = self.leeway as f64;
        match claims.get("exp") {
            Some(exp) => {
                let exp = exp.as_f64().ok_or(Reject::Malformed)?;
                if now >= exp + leeway {
                    return Err(Reject::Expired);
                }
            }
            None if self.require_exp => return Err(Reject::NoExpiry),
            None => {}
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or(Reject::Malformed)?;
            if now + leeway < nbf {
                return Err(Reject::NotYetValid);
            }
        }
        if !self.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.issuers.iter().any(|i| &**i == iss)) {
                return Err(Reject::Issuer);
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |aud: &str| self.audiences.iter().any(|a| &**a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(Reject::Audience);
            }
        }
        if self
            .required_claims
            .iter()
            .any(|c| claims.get(c).is_none_or(Value::is_null))
        {
            return Err(Reject::MissingClaim);
        }
        Ok(())
    }

    /// Whether every required scope is in `scope` (space-separated) or `scp` (a list, or
    /// space-separated); true when none is required.
    pub(super) fn has_scopes(&self, claims: &Claims<'_>) -> bool {
        let granted = |wanted: &str| {
            ["scope", "scp"]
                .into_iter()
                .filter_map(|name| claims.get(name))
                .any(|value| match value {
                    Value::String(s) => s.split_ascii_whitespace().any(|s| s == wanted),
                    Value::Array(list) => list.iter().any(|s| s.as_str() == Some(wanted)),
                    _ => false,
                })
        };
        self.scopes.iter().all(|scope| granted(scope))
    }
}
