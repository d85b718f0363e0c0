//! Who calls the admin API: the named tokens' text ([`NamedToken`]) and the identity a
//! request is authenticated as ([`Identity`]), which travels in the request's extensions.
//!
//! This module uses nothing of the admin API: handlers, the authentication middleware and
//! (later) the audit log all read it.

use std::fmt;
use std::str::FromStr;

use gw_store::AdminRole;
use gw_sync::secret::IdSecret;

/// The prefix and version of a named token's text.
const PREFIX: &str = "gwadm1";

/// A named admin token: `gwadm1.<id>.<secret>`.
///
/// - `id` (16 hex digits) names the token in the store and in `/api/v1/tokens`, so that it
///   is listed and revoked without its secret, and found by a request that presents it;
/// - `secret` (32 hex digits, 128 random bits) proves the caller was given it; the store
///   keeps only its SHA-256 ([`NamedToken::secret_hash`]).
///
/// The whole text is a secret: `Debug` shows the id only, there is no `Display`, and the
/// text is had through [`NamedToken::reveal`], once, for the operator who made it.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken(IdSecret);

impl fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedToken")
            .field("id", &self.0.id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A text that does not read as a named token; the message never repeats the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an admin token ({0}); a token reads gwadm1.<16 hex digits>.<32 hex digits>, as POST \
     /api/v1/tokens answered it"
)]
pub struct InvalidNamedToken(&'static str);

impl NamedToken {
    /// A new token with a random id and secret.
    pub fn generate() -> Self {
        Self(IdSecret::generate())
    }

    /// Whether `text` is meant as a named token (it has the prefix), well formed or not.
    pub fn looks_like(text: &str) -> bool {
        text.trim().starts_with("gwadm1.")
    }

    /// The token's id: not a secret.
    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// The SHA-256 of the secret (hex): what the store keeps.
    pub fn secret_hash(&self) -> String {
        self.0.secret_hash()
    }

    /// Whether the secret is the one whose hash is `stored` (in constant time).
    pub fn matches(&self, stored: &str) -> bool {
        self.0.matches(stored)
    }

    /// The token's full text, secret included: shown to the operator once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}.{}", self.0.text())
    }
}

impl FromStr for NamedToken {
    type Err = InvalidNamedToken;

    fn from_str(text: &str) -> Result<Self, InvalidNamedToken> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(InvalidNamedToken("it does not start with gwadm1."));
        }
        let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(InvalidNamedToken("it does not have three parts"));
        };
        IdSecret::read(id, secret)
            .map(Self)
            .map_err(InvalidNamedToken)
    }
}

/// Who a request of the admin API was authenticated as; the authentication middleware puts
/// it in the request's extensions for the handlers (and the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name; [`Identity::BREAK_GLASS`] for `GW_ADMIN_TOKEN`; `oidc:<subject>`
    /// for a person signed in through OIDC ([`Identity::OIDC_PREFIX`]).
    pub name: String,
    /// What it may do.
    pub role: AdminRole,
    /// The gateway groups it may write to; empty for every group.
    pub groups: Vec<String>,
}

impl Identity {
    /// The actor name of `GW_ADMIN_TOKEN`.
    pub const BREAK_GLASS: &'static str = "break-glass";
    /// The actor name of a request in development mode without `GW_ADMIN_TOKEN` that
    /// presents no named token.
    pub const ANONYMOUS: &'static str = "anonymous";
    /// The prefix of the name of a person signed in through OIDC, before the subject: a
    /// named token's name cannot hold a `:`, so the two are never confused.
    pub const OIDC_PREFIX: &'static str = "oidc:";

    /// `GW_ADMIN_TOKEN`: an admin of every group.
    pub fn break_glass() -> Self {
        Self::admin(Self::BREAK_GLASS)
    }

    /// A caller without credentials in development mode without `GW_ADMIN_TOKEN` (the
    /// admin API is open there).
    pub fn anonymous() -> Self {
        Self::admin(Self::ANONYMOUS)
    }

    fn admin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            role: AdminRole::Admin,
            groups: Vec::new(),
        }
    }

    /// Whether it may act on resources of gateway group `group`.
    pub fn covers(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }

    /// Whether it may act on every group.
    pub fn covers_every_group(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether reads show it secrets: only admins see them.
    pub fn sees_secrets(&self) -> bool {
        self.role == AdminRole::Admin
    }
}

/// `token ci-deployer (operator of groups [edge])`, `GW_ADMIN_TOKEN (break-glass admin)`,
/// `OIDC user alice (viewer)`: how a refusal names the caller.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name.as_str() {
            Self::BREAK_GLASS => f.write_str("GW_ADMIN_TOKEN (break-glass admin)"),
            Self::ANONYMOUS => f.write_str("an anonymous caller (development mode)"),
            name if name.starts_with(Self::OIDC_PREFIX) => {
                let subject = &name[Self::OIDC_PREFIX.len()..];
                if self.groups.is_empty() {
                    write!(f, "OIDC user {subject} ({})", self.role)
                } else {
                    write!(
                        f,
                        "OIDC user {subject} ({} of groups [{}])",
                        self.role,
                        self.groups.join(", ")
                    )
                }
            }
            name if self.groups.is_empty() => write!(f, "token {name} ({})", self.role),
            name => write!(
                f,
                "token {name} ({} of groups [{}])",
                self.role,
                self.groups.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_written() {
        let token = NamedToken::generate();
        let text = token.reveal();
        assert!(text.starts_with("gwadm1."), "{text}");
        assert!(NamedToken::looks_like(&text));
        let read: NamedToken = text.parse().unwrap();
        assert_eq!(read, token);
        assert!(read.matches(&token.secret_hash()));
        let other = NamedToken::generate();
        assert_ne!(other.id(), token.id());
        assert!(!other.matches(&token.secret_hash()));
    }

    #[test]
    fn its_secret_never_shows_in_debug_output_or_errors() {
        let token = NamedToken::generate();
        let text = token.reveal();
        let secret = text.split('.').nth(2).unwrap();
        let debug = format!("{token:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(token.id()), "{debug}");
        let cut = &text[..text.len() - 1];
        let err = cut.parse::<NamedToken>().unwrap_err().to_string();
        assert!(!err.contains(secret), "{err}");
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        let good = NamedToken::generate().reveal();
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            (String::new(), "does not start"),
            (good.replacen("gwadm1", "gwadm2", 1), "does not start"),
            (parts[..2].join("."), "three parts"),
            (format!("{good}.x"), "three parts"),
            (good.replacen(parts[1], "XYZ", 1), "id"),
            (good.replacen(parts[2], &"G".repeat(32), 1), "secret"),
            (good.replacen(parts[2], &parts[2][1..], 1), "secret"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<NamedToken>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        assert!(format!(" {good}\n").parse::<NamedToken>().is_ok());
    }

    #[test]
    fn an_identity_names_its_role_and_groups() {
        let operator = Identity {
            name: "ci-deployer".into(),
            role: AdminRole::Operator,
            groups: vec!["edge".into(), "staging".into()],
        };
        assert_eq!(
            operator.to_string(),
            "token ci-deployer (operator of groups [edge, staging])"
        );
        assert!(operator.covers("edge") && !operator.covers("payments"));
        assert!(!operator.covers_every_group() && !operator.sees_secrets());
        let viewer = Identity {
            groups: vec![],
            role: AdminRole::Viewer,
            ..operator
        };
        assert_eq!(viewer.to_string(), "token ci-deployer (viewer)");
        assert!(viewer.covers("payments"));
        let person = Identity {
            name: "oidc:alice@example.com".into(),
            role: AdminRole::Operator,
            groups: vec!["team-a".into()],
        };
        assert_eq!(
            person.to_string(),
            "OIDC user alice@example.com (operator of groups [team-a])"
        );
        let admin = Identity::break_glass();
        assert_eq!(admin.to_string(), "GW_ADMIN_TOKEN (break-glass admin)");
        assert!(admin.sees_secrets() && admin.covers_every_group());
    }
}
