//! Admin tokens as stored: the named bearer tokens of the admin API, each with a role and
//! the gateway groups it may act on.
//!
//! The store keeps a token's secret as its SHA-256 only. Listings ([`AdminTokenRecord`])
//! never carry that hash; only the lookup by id that authenticates a request
//! ([`crate::Store::admin_token`]) returns it, so that the caller compares it in constant
//! time. What a role allows is the controller's business: the store only keeps its name.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What an admin token may do; the controller gives each role its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Everything.
    Admin,
    /// Writes of the resources of its groups; reads without secrets.
    Operator,
    /// Reads without secrets.
    Viewer,
}

impl AdminRole {
    /// Every role, most powerful first.
    pub const ALL: [AdminRole; 3] = [AdminRole::Admin, AdminRole::Operator, AdminRole::Viewer];

    /// The role's name: `admin`, `operator` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::Operator => "operator",
            AdminRole::Viewer => "viewer",
        }
    }
}

impl fmt::Display for AdminRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: use admin, operator or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for AdminRole {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, UnknownRole> {
        AdminRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(text.to_string()))
    }
}

/// A token to store, as the admin API makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAdminToken {
    /// The token's id (public: it is part of the token's text).
    pub id: String,
    /// Its name, unique among the tokens not revoked.
    pub name: String,
    /// The SHA-256 of its secret, in hex.
    pub secret_hash: String,
    /// What it may do.
    pub role: AdminRole,
    /// The gateway groups it may act on; empty for every group.
    pub groups: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored token, without its secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminTokenRecord {
    /// The token's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: AdminRole,
    /// The gateway groups it may act on; empty for every group.
    pub groups: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (to the minute: see
    /// [`crate::Store::touch_admin_token`]).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl AdminTokenRecord {
    /// Whether the token is accepted at `now`: not revoked, not expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.state(now) == AdminTokenState::Active
    }

    /// The token's state at `now`: revoked, else expired, else active.
    pub fn state(&self, now: DateTime<Utc>) -> AdminTokenState {
        if self.revoked_at.is_some() {
            AdminTokenState::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            AdminTokenState::Expired
        } else {
            AdminTokenState::Active
        }
    }
}

/// Whether an admin token is accepted, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminTokenState {
    /// It authenticates requests.
    Active,
    /// Its lifetime is over.
    Expired,
    /// It was revoked.
    Revoked,
}

/// A stored token with its secret's hash: what authenticating a request needs.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokenCredential {
    /// The token.
    pub record: AdminTokenRecord,
    /// The SHA-256 of its secret, in hex.
    pub secret_hash: String,
}

// the hash stays out of logs: it is not the secret, but it is what a guess is checked against
impl fmt::Debug for AdminTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTokenCredential")
            .field("record", &self.record)
            .field("secret_hash", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn roles_read_back_their_names_only() {
        for role in AdminRole::ALL {
            assert_eq!(role.as_str().parse::<AdminRole>(), Ok(role));
        }
        for text in ["", "Admin", "root", "admin "] {
            let err = text.parse::<AdminRole>().unwrap_err();
            assert!(
                err.to_string().contains("admin, operator or viewer"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_token_is_revoked_before_it_is_expired() {
        let now = Utc::now();
        let mut token = AdminTokenRecord {
            id: "a".into(),
            name: "ci".into(),
            role: AdminRole::Viewer,
            groups: vec![],
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        assert_eq!(token.state(now), AdminTokenState::Active);
        token.expires_at = Some(now + TimeDelta::seconds(1));
        assert!(token.is_active(now));
        token.expires_at = Some(now);
        assert_eq!(token.state(now), AdminTokenState::Expired);
        token.revoked_at = Some(now);
        assert_eq!(token.state(now), AdminTokenState::Revoked);
        assert!(!token.is_active(now));
    }
}
