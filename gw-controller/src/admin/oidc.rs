//! OIDC for people on the admin API: a bearer that is a JSON Web Token of the configured
//! identity provider, its claims mapped to a role.
//!
//! The token is verified by gw-core's [`JwtVerifier`], the `jwt` policy's own checks: its
//! signature by a key of the provider's JWKS (fetched from `--oidc-jwks-url` by the policy's
//! fetcher: bounded in time and size, refreshed, fetched again at most every 30 s for a
//! token naming an unknown `kid`, so a key rotation at the provider is picked up), then
//! `exp` and `nbf` (30 s of leeway), `iss` and `aud`. A token that fails is a 401 whose
//! reason never quotes it; while no key has ever been fetched, a 503.
//!
//! A valid token's roles claim (`--oidc-roles-claim`, `groups` by default; a dotted path
//! reaches into objects, as Keycloak's `realm_access.roles`) is a string or a list of
//! strings. Each value an `--oidc-role` mapping names gives its role; several give the
//! highest, and an operator's groups are the union of its mappings' (a mapping with none
//! is every group). A token mapped to no role is a 403 that says so. The identity is named
//! `oidc:<subject>` (the `sub` claim, or `--oidc-subject-claim`): that is the actor of the
//! audit records, and a named token's name cannot hold a `:`.
//!
//! The token text is never logged, kept, or put in an answer.

use std::fmt;
use std::str::FromStr;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gw_core::policy::jwt::{JwtAlgorithm, JwtConfig, JwtVerifier, Reject, VerifyError};
use gw_store::AdminRole;
use serde_json::{Map, Value};

use super::ApiError;
use super::identity::Identity;

/// The largest bearer token verified as a JWT, in bytes; a larger one is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest subject taken as an identity's name, in characters.
const MAX_SUBJECT: usize = 256;
/// The most values of the roles claim looked at.
const MAX_ROLE_VALUES: usize = 256;

/// The algorithms accepted when none are given: those of keys a JWKS URL can serve
/// (`HS256` needs a shared secret, which gw never takes from a URL).
pub const DEFAULT_ALGORITHMS: [JwtAlgorithm; 3] = [
    JwtAlgorithm::Rs256,
    JwtAlgorithm::Es256,
    JwtAlgorithm::EdDsa,
];

/// How the admin API takes OIDC tokens (`--oidc-*`). `Debug` shows the JWKS URL without
/// its password or query, which may hold a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcOptions {
    /// The accepted issuer: the tokens' `iss`, exactly.
    pub issuer: String,
    /// The accepted audiences: a token's `aud` must hold one (the client id the provider
    /// gives gw).
    pub audiences: Vec<String>,
    /// The provider's JWKS (`https://`, or `http://` on a loopback address).
    pub jwks_url: String,
    /// The accepted signature algorithms ([`DEFAULT_ALGORITHMS`] by default).
    pub algorithms: Vec<JwtAlgorithm>,
    /// The claim holding the values mapped to roles: a claim name, or a dotted path into
    /// objects (`realm_access.roles`).
    pub roles_claim: String,
    /// The claim naming the person (`sub`).
    pub subject_claim: String,
    /// The mappings from a claim value to a role.
    pub roles: Vec<RoleMapping>,
}

impl std::fmt::Debug for OidcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (base, query) = self
            .jwks_url
            .split_once('?')
            .map_or((self.jwks_url.as_str(), false), |(base, _)| (base, true));
        let jwks_url = format!(
            "{:?}{}",
            gw_core::model::secret::RedactedUrl(base),
            if query { "?<redacted>" } else { "" }
        );
        f.debug_struct("OidcOptions")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("jwks_url", &jwks_url)
            .field("algorithms", &self.algorithms)
            .field("roles_claim", &self.roles_claim)
            .field("subject_claim", &self.subject_claim)
            .field("roles", &self.roles)
            .finish()
    }
}

impl OidcOptions {
    /// Options for `issuer`, `audiences` and `jwks_url`, with the default algorithms and
    /// claims (`groups`, `sub`) and no mapping yet.
    pub fn new(issuer: &str, audiences: &[&str], jwks_url: &str) -> Self {
        Self {
            issuer: issuer.to_string(),
            audiences: audiences.iter().map(ToString::to_string).collect(),
            jwks_url: jwks_url.to_string(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            roles_claim: "groups".to_string(),
            subject_claim: "sub".to_string(),
            roles: Vec::new(),
        }
    }

    /// Every problem of the options, each naming its flag.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.issuer.trim().is_empty() {
            problems.push("--oidc-issuer must not be empty".to_string());
        }
        if self.audiences.iter().all(|a| a.trim().is_empty()) {
            problems.push(
                "--oidc-audience is required with --oidc-issuer: the client id the identity \
                 provider puts in `aud` for gw (a token for another application is refused)"
                    .to_string(),
            );
        }
        if let Err(reason) = gw_core::policy::jwt::check_jwks_url(&self.jwks_url) {
            problems.push(format!("--oidc-jwks-url {reason}"));
        }
        if self.algorithms.is_empty() {
            problems.push("--oidc-algorithms must name at least one algorithm".to_string());
        }
        if self.algorithms.contains(&JwtAlgorithm::Hs256) {
            problems.push(
                "--oidc-algorithms: HS256 needs a shared secret, which is never taken from a \
                 JWKS URL; use RS256, ES256 or EdDSA"
                    .to_string(),
            );
        }
        for (flag, claim) in [
            ("--oidc-roles-claim", &self.roles_claim),
            ("--oidc-subject-claim", &self.subject_claim),
        ] {
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                problems.push(format!(
                    "{flag} must be a claim name or a dotted path (realm_access.roles)"
                ));
            }
        }
        if self.roles.is_empty() {
            problems.push(
                "give at least one --oidc-role VALUE=ROLE[:GROUP,...] (gw-admins=admin): \
                 without one, every OIDC token would be refused"
                    .to_string(),
            );
        }
        let mut values: Vec<&str> = self.roles.iter().map(|m| m.value.as_str()).collect();
        values.sort_unstable();
        if let Some(&[twice, _]) = values.windows(2).find(|w| w[0] == w[1]) {
            problems.push(format!(
                "--oidc-role maps {twice:?} twice: give each claim value one role"
            ));
        }
        problems
    }
}

/// `VALUE=ROLE` or `VALUE=operator:GROUP,GROUP` (`--oidc-role`): the token's claim value
/// `VALUE` gives `ROLE`; an operator may be scoped to groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    /// The claim value (a group or role name at the identity provider).
    pub value: String,
    /// The role it gives.
    pub role: AdminRole,
    /// The groups of an operator; empty: every group.
    pub groups: Vec<String>,
}

impl FromStr for RoleMapping {
    type Err = String;

    /// The value ends at the last `=` (a value may hold `=`, `:` or `/`, as Keycloak's
    /// group paths do; a role and a group cannot).
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "a mapping reads VALUE=ROLE or VALUE=operator:GROUP,GROUP \
                     (gw-admins=admin, team-a=operator:team-a)";
        let (value, grant) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("{text:?} has no '=': {usage}"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{text:?} maps an empty value: {usage}"));
        }
        let (role, groups) = match grant.split_once(':') {
            Some((role, groups)) => (role, Some(groups)),
            None => (grant, None),
        };
        let role: AdminRole = role
            .trim()
            .parse()
            .map_err(|err| format!("{text:?}: {err}"))?;
        let mut groups: Vec<String> = match groups {
            Some(list) => list.split(',').map(|g| g.trim().to_string()).collect(),
            None => Vec::new(),
        };
        for group in &groups {
            gw_sync::validate_group(group)
                .map_err(|reason| format!("{text:?}: group {group:?}: {reason}"))?;
        }
        if !groups.is_empty() && role != AdminRole::Operator {
            return Err(format!(
                "{text:?}: only an operator is scoped to groups (an admin acts on every group, \
                 a viewer reads every group)"
            ));
        }
        groups.sort();
        groups.dedup();
        Ok(Self {
            value: value.to_string(),
            role,
            groups,
        })
    }
}

/// Why an OIDC token gets no identity; answered as a JSON error that never quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcRefusal {
    /// Larger than [`MAX_TOKEN_BYTES`]: 401.
    TooLarge,
    /// Not valid (signature, time, issuer, audience, shape): 401.
    Invalid(Reject),
    /// No key of the identity provider has been fetched yet: 503.
    Unavailable,
    /// The subject claim is missing or not a plain string: 401.
    Subject,
    /// Valid, but no value of its roles claim is mapped to a role: 403.
    Unmapped {
        /// The identity's name (`oidc:<subject>`).
        name: String,
    },
}

impl OidcRefusal {
    /// The `outcome` label of the verification's metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Invalid(Reject::Expired) => "expired",
            Self::TooLarge | Self::Invalid(_) | Self::Subject => "invalid",
            Self::Unavailable => "unavailable",
            Self::Unmapped { .. } => "unmapped",
        }
    }
}

impl fmt::Display for OidcRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => write!(
                f,
                "the bearer token is larger than {} KiB",
                MAX_TOKEN_BYTES / 1024
            ),
            Self::Invalid(reject) => write!(f, "the OIDC token is refused: {reject}"),
            Self::Unavailable => f.write_str(
                "the identity provider's keys (--oidc-jwks-url) could not be fetched yet, so \
                 OIDC tokens cannot be verified; retry shortly, or use GW_ADMIN_TOKEN or a \
                 named admin token",
            ),
            Self::Subject => write!(
                f,
                "the OIDC token is refused: its subject claim is missing, or not a string of 1 \
                 to {MAX_SUBJECT} printable characters"
            ),
            Self::Unmapped { name } => write!(
                f,
                "OIDC user {} has no role on this admin API: no value of the token's roles \
                 claim is mapped to a role (--oidc-role); ask an administrator to map one of \
                 your groups",
                display_subject(name)
            ),
        }
    }
}

impl IntoResponse for OidcRefusal {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::TooLarge | Self::Invalid(_) | Self::Subject => {
                (StatusCode::UNAUTHORIZED, "invalid_token")
            }
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable"),
            Self::Unmapped { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        };
        let mut response = ApiError::new(status, code, self.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gw\", error=\"invalid_token\""),
            );
        }
        response
    }
}

/// `oidc:alice` -> `alice`.
fn display_subject(name: &str) -> &str {
    name.strip_prefix(Identity::OIDC_PREFIX).unwrap_or(name)
}

/// Whether a bearer token is shaped as a JWT (three base64url parts), so that OIDC, and
/// not the named tokens, answers it.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// Verifies OIDC tokens and maps them to identities (see the module docs).
#[derive(Debug)]
pub struct OidcAuthenticator {
    verifier: JwtVerifier,
    roles_claim: String,
    subject_claim: String,
    roles: Vec<RoleMapping>,
}

impl OidcAuthenticator {
    /// Checks `options` (every problem at once) and builds the verifier; inside a Tokio
    /// runtime, the JWKS's first fetch starts at once.
    pub fn new(options: &OidcOptions) -> Result<Self, String> {
        let problems = options.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let verifier = JwtVerifier::new(JwtConfig {
            algorithms: options.algorithms.clone(),
            jwks_url: Some(options.jwks_url.clone()),
            issuer: vec![options.issuer.clone()],
            audience: options
                .audiences
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            ..JwtConfig::default()
        })
        .map_err(|err| err.to_string())?;
        Ok(Self {
            verifier,
            roles_claim: options.roles_claim.clone(),
            subject_claim: options.subject_claim.clone(),
            roles: options.roles.clone(),
        })
    }

    /// The identity of `token`, or why it gets none.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, OidcRefusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcRefusal::TooLarge);
        }
        let claims = self.verifier.verify(token).await.map_err(|err| match err {
            VerifyError::Rejected(reject) => OidcRefusal::Invalid(reject),
            VerifyError::KeysUnavailable => OidcRefusal::Unavailable,
        })?;
        self.identity(&claims)
    }

    /// The identity of verified `claims`.
    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, OidcRefusal> {
        let subject = match claim(claims, &self.subject_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(OidcRefusal::Subject),
        };
        if subject.is_empty()
            || subject.chars().count() > MAX_SUBJECT
            || subject.chars().any(char::is_control)
        {
            return Err(OidcRefusal::Subject);
        }
        let name = format!("{}{subject}", Identity::OIDC_PREFIX);
        let values: Vec<&str> = match claim(claims, &self.roles_claim) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(list)) => list
                .iter()
                .take(MAX_ROLE_VALUES)
                .filter_map(Value::as_str)
                .collect(),
            _ => Vec::new(),
        };
        let Some((role, groups)) = map_roles(&self.roles, &values) else {
            return Err(OidcRefusal::Unmapped { name });
        };
        Ok(Identity { name, role, groups })
    }
}

/// The claim at `path`: a claim of that name, else the dotted path into objects.
fn claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The role `values` give through `mappings`: the highest of the matching mappings'; for
/// an operator, the union of the groups of its matching mappings (empty, every group, when
/// one of them has none). `None` when no value matches.
fn map_roles(mappings: &[RoleMapping], values: &[&str]) -> Option<(AdminRole, Vec<String>)> {
    let rank = |role: AdminRole| AdminRole::ALL.iter().position(|r| *r == role);
    let matched: Vec<&RoleMapping> = mappings
        .iter()
        .filter(|m| values.contains(&m.value.as_str()))
        .collect();
    let role = matched.iter().map(|m| m.role).min_by_key(|r| rank(*r))?;
    let mut groups = Vec::new();
    if role == AdminRole::Operator {
        let operators = matched.iter().filter(|m| m.role == AdminRole::Operator);
        if operators.clone().all(|m| !m.groups.is_empty()) {
            groups = operators.flat_map(|m| m.groups.iter().cloned()).collect();
            groups.sort();
            groups.dedup();
        }
    }
    Some((role, groups))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapping(text: &str) -> RoleMapping {
        text.parse().unwrap()
    }

    #[test]
    fn a_mapping_reads_value_role_and_groups() {
        assert_eq!(
            mapping("gw-admins=admin"),
            RoleMapping {
                value: "gw-admins".into(),
                role: AdminRole::Admin,
                groups: vec![],
            }
        );
        assert_eq!(
            mapping(" /teams/a=b = operator: team-b ,team-a,team-b"),
            RoleMapping {
                value: "/teams/a=b".into(),
                role: AdminRole::Operator,
                groups: vec!["team-a".into(), "team-b".into()],
            }
        );
        assert_eq!(mapping("readers=viewer").role, AdminRole::Viewer);
        for (bad, reason) in [
            ("gw-admins", "no '='"),
            ("=admin", "empty value"),
            ("x=root", "not a role"),
            ("x=admin:edge", "only an operator"),
            ("x=viewer:edge", "only an operator"),
            ("x=operator:Edge", "group \"Edge\""),
            ("x=operator:", "group \"\""),
        ] {
            let err = bad.parse::<RoleMapping>().unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn the_highest_role_wins_and_operator_groups_add_up() {
        let mappings = [
            mapping("admins=admin"),
            mapping("team-a=operator:team-a"),
            mapping("team-b=operator:team-b,shared"),
            mapping("all-ops=operator"),
            mapping("readers=viewer"),
        ];
        let role = |values: &[&str]| map_roles(&mappings, values);
        assert_eq!(role(&["nobody"]), None);
        assert_eq!(role(&[]), None);
        assert_eq!(role(&["readers"]), Some((AdminRole::Viewer, vec![])));
        assert_eq!(
            role(&["readers", "team-b", "team-a"]),
            Some((
                AdminRole::Operator,
                vec!["shared".into(), "team-a".into(), "team-b".into()]
            ))
        );
        assert_eq!(
            role(&["team-a", "all-ops"]),
            Some((AdminRole::Operator, vec![])),
            "an unscoped operator mapping is every group"
        );
        assert_eq!(
            role(&["team-a", "admins", "readers"]),
            Some((AdminRole::Admin, vec![]))
        );
    }

    #[test]
    fn a_claim_is_a_name_or_a_dotted_path() {
        let claims = json!({
            "groups": ["a"],
            "https://example.com/roles": ["b"],
            "realm_access": {"roles": ["c"]},
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(claim(claims, "groups"), Some(&json!(["a"])));
        assert_eq!(
            claim(claims, "https://example.com/roles"),
            Some(&json!(["b"]))
        );
        assert_eq!(claim(claims, "realm_access.roles"), Some(&json!(["c"])));
        assert_eq!(claim(claims, "realm_access.nothing"), None);
        assert_eq!(claim(claims, "groups.x"), None);
    }

    #[test]
    fn debug_hides_the_credentials_of_the_jwks_url() {
        let options = OidcOptions::new(
            "https://idp.example",
            &["gw"],
            "https://user:url-password@idp.example/keys?api_key=query-secret",
        );
        let shown = format!("{options:?}");
        assert!(shown.contains("idp.example/keys"), "{shown}");
        for secret in ["url-password", "query-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn options_are_checked_flag_by_flag() {
        let mut options = OidcOptions::new(
            "https://idp.example/realms/gw",
            &["gw"],
            "https://idp.example/realms/gw/protocol/openid-connect/certs",
        );
        options.roles.push(mapping("gw-admins=admin"));
        assert!(options.problems().is_empty(), "{:?}", options.problems());
        let local = OidcOptions {
            jwks_url: "http://127.0.0.1:8080/jwks".into(),
            ..options.clone()
        };
        assert!(local.problems().is_empty(), "http on loopback");
        let bad = OidcOptions {
            issuer: " ".into(),
            audiences: vec![],
            jwks_url: "http://idp.example/jwks".into(),
            algorithms: vec![JwtAlgorithm::Hs256],
            roles_claim: "realm_access..roles".into(),
            subject_claim: String::new(),
            roles: vec![mapping("a=admin"), mapping("a=viewer")],
        };
        let problems = bad.problems().join("\n");
        for reason in [
            "--oidc-issuer must not be empty",
            "--oidc-audience is required",
            "--oidc-jwks-url must be an https:// URL",
            "HS256",
            "--oidc-roles-claim",
            "--oidc-subject-claim",
            "maps \"a\" twice",
        ] {
            assert!(problems.contains(reason), "{reason}: {problems}");
        }
        let none = OidcOptions {
            roles: vec![],
            ..options
        };
        assert!(none.problems()[0].contains("at least one --oidc-role"));
        assert!(OidcAuthenticator::new(&none).is_err());
    }

    #[test]
    fn only_jwt_shaped_bearers_go_to_oidc() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJzdWIi.c2ln"));
        for other in [
            "gwadm1.0123.abcd.x",
            "a-plain-admin-token",
            "a.b",
            "a.b c.d",
        ] {
            assert!(!looks_like_jwt(other), "{other}");
        }
    }

    #[test]
    fn refusals_never_quote_the_token_and_say_why() {
        let unmapped = OidcRefusal::Unmapped {
            name: "oidc:alice".into(),
        };
        assert!(
            unmapped
                .to_string()
                .starts_with("OIDC user alice has no role")
        );
        assert_eq!(
            OidcRefusal::Invalid(Reject::Expired).to_string(),
            "the OIDC token is refused: the token has expired"
        );
        assert_eq!(OidcRefusal::Invalid(Reject::Expired).outcome(), "expired");
        for (refusal, status) in [
            (OidcRefusal::TooLarge, StatusCode::UNAUTHORIZED),
            (OidcRefusal::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (unmapped, StatusCode::FORBIDDEN),
        ] {
            assert_eq!(refusal.into_response().status(), status);
        }
    }
}
