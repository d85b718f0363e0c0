//! Runtime enrollment as stored: the join tokens operators make for new runtimes, and the
//! client certificate each enrolled runtime holds.
//!
//! The store keeps a token's secret as its SHA-256 only and never hands that hash back:
//! [`EnrollmentTokenRecord`] is what listings show. A use is taken by one conditional
//! update ([`crate::Store::use_enrollment_token`]), so controllers that race for the last use
//! of a token cannot both have it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::StoreError;

/// A token to store, as the admin API makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentToken {
    /// The token's id (not a secret).
    pub id: String,
    /// The SHA-256 of its secret, in hex.
    pub secret_hash: String,
    /// The gateway group a runtime enrolled with it serves.
    pub group: String,
    /// How many runtimes may enroll with it.
    pub uses_max: i64,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// What the operator wrote about it.
    pub description: Option<String>,
}

/// A stored token, without its secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentTokenRecord {
    /// The token's id.
    pub id: String,
    /// The gateway group a runtime enrolled with it serves.
    pub group: String,
    /// How many runtimes may enroll with it.
    pub uses_max: i64,
    /// How many have.
    pub uses: i64,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// What the operator wrote about it.
    pub description: Option<String>,
}

impl EnrollmentTokenRecord {
    /// The token's state at `now`: revoked, else expired, else used (no use left), else
    /// active.
    pub fn state(&self, now: DateTime<Utc>) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires_at <= now {
            TokenState::Expired
        } else if self.uses >= self.uses_max {
            TokenState::Used
        } else {
            TokenState::Active
        }
    }
}

/// Whether a token can be used, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// A runtime may enroll with it.
    Active,
    /// Its lifetime is over.
    Expired,
    /// Every use was taken.
    Used,
    /// An operator revoked it.
    Revoked,
}

impl TokenState {
    /// Why a token in this state is refused; `None` for an active one.
    pub fn refusal(self) -> Option<TokenRefusal> {
        match self {
            TokenState::Active => None,
            TokenState::Expired => Some(TokenRefusal::Expired),
            TokenState::Used => Some(TokenRefusal::UsedUp),
            TokenState::Revoked => Some(TokenRefusal::Revoked),
        }
    }
}

/// Why [`crate::Store::use_enrollment_token`] did not take a use.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefusal {
    /// No token has this id, or its secret is another: the two are not told apart, so that
    /// a wrong secret does not confirm that the id exists.
    #[error("unknown enrollment token")]
    Unknown,
    /// The token was revoked.
    #[error("the enrollment token was revoked")]
    Revoked,
    /// The token expired.
    #[error("the enrollment token has expired")]
    Expired,
    /// Every use of the token was taken.
    #[error("the enrollment token has been used as many times as it allows")]
    UsedUp,
    /// The token enrolls runtimes of another group (named): the attempt took no use.
    #[error(
        "this token enrolls runtimes of group {0:?}: start the runtime with --group {0}, or make \
         a token for its group (the attempt took no use of the token)"
    )]
    OtherGroup(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenRefusal {
    /// The store's failure, when that is the reason (the others are answers, not failures).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            TokenRefusal::Store(err) => Some(err),
            _ => None,
        }
    }
}

/// What [`crate::Store::renew_runtime`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Renewal {
    /// The certificate was replaced.
    Renewed,
    /// Not renewed: the node is unknown or revoked, or the certificate presented is neither
    /// its current nor its previous one.
    Refused,
    /// Not renewed, and the node revoked: the certificate presented was superseded by one
    /// already in use, so two parties hold the node's identity (a copied key, a restored
    /// backup of the runtime's data directory).
    Reused,
}

impl Renewal {
    /// Whether the certificate was replaced.
    pub fn renewed(self) -> bool {
        self == Renewal::Renewed
    }
}

/// The client certificate an enrolled runtime holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentRecord {
    /// The runtime's node id, which its certificate names.
    pub node_id: String,
    /// The gateway group its certificate names.
    pub group: String,
    /// The serial of its current certificate (hex).
    pub serial: String,
    /// The serial of the certificate it renewed, still accepted until the next renewal.
    pub previous_serial: Option<String>,
    /// When its current certificate expires.
    pub not_after: DateTime<Utc>,
    /// The token it enrolled with.
    pub token_id: Option<String>,
    /// When it enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// When it last renewed its certificate.
    pub renewed_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked runtime needs a new enrollment.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl EnrollmentRecord {
    /// A new enrollment of `node_id` in `group` at `at`, with the certificate `serial` that
    /// expires at `not_after`, made with the token `token_id` (none for one written by other
    /// means): no previous certificate, no renewal, no revocation.
    pub fn new(
        node_id: &str,
        group: &str,
        serial: &str,
        not_after: DateTime<Utc>,
        token_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            node_id: node_id.to_string(),
            group: group.to_string(),
            serial: serial.to_string(),
            previous_serial: None,
            not_after,
            token_id: token_id.map(str::to_string),
            enrolled_at: at,
            renewed_at: None,
            revoked_at: None,
        }
    }
}
