//! Enrollment tokens: what an operator gives a new runtime so that it can join the cluster.
//!
//! A token is `gwjoin1.<id>.<secret>.<ca-hash>`:
//! - `id` (16 hex digits) names the token in the controller's records and in its admin API,
//!   so that it can be listed and revoked without its secret;
//! - `secret` (32 hex digits, 128 random bits) proves that the runtime was given it; the
//!   controller keeps only its SHA-256 ([`EnrollmentToken::secret_hash`]);
//! - `ca-hash` (64 hex digits) is the [`CaHash`] of the cluster CA, so that the runtime
//!   checks the controller from the first byte it receives, before it sends the secret.
//!
//! The whole token is a secret: its `Debug` output shows the id only, and it has no
//! `Display` (its text is had through [`EnrollmentToken::reveal`], once, for the operator).
//!
//! A runtime uses it once, through [`enroll`]: it checks the controller against the token's
//! CA hash, sends the token with a certificate signing request for a key it made, and gets
//! its certificate. It renews that certificate before it expires through [`renew`], over a
//! connection that presents it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::pki::{CaHash, RuntimeIdentity};
use crate::proto::enrollment_client::EnrollmentClient;
use crate::proto::{EnrollRequest, RenewRequest};
use crate::secret::{IdSecret, is_hex};
use crate::server::IssuedCertificate;
use crate::tls::ServerTrust;

/// The prefix and version of the token's text.
const PREFIX: &str = "gwjoin1";

/// An enrollment token (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    key: IdSecret,
    ca_hash: CaHash,
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("id", &self.key.id())
            .field("secret", &"<redacted>")
            .field("ca_hash", &self.ca_hash)
            .finish()
    }
}

/// A token's text that does not read as one; the message never repeats the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an enrollment token ({0}); a token reads gwjoin1.<16 hex digits>.<32 hex digits>.<64 hex \
     digits>, as POST /api/v1/enrollment-tokens answered it"
)]
pub struct InvalidToken(&'static str);

impl EnrollmentToken {
    /// A new token for the cluster whose CA has `ca_hash`, with a random id and secret.
    pub fn generate(ca_hash: CaHash) -> Self {
        Self {
            key: IdSecret::generate(),
            ca_hash,
        }
    }

    /// The token's id: not a secret.
    pub fn id(&self) -> &str {
        self.key.id()
    }

    /// The hash of the cluster CA the token names.
    pub fn ca_hash(&self) -> CaHash {
        self.ca_hash
    }

    /// The SHA-256 of the secret (hex): what a controller stores and compares.
    pub fn secret_hash(&self) -> String {
        self.key.secret_hash()
    }

    /// Whether the secret is the one whose hash is `stored` (in constant time).
    pub fn matches(&self, stored: &str) -> bool {
        self.key.matches(stored)
    }

    /// The token's full text, secret included: to be shown to the operator once, or sent
    /// by a runtime to a controller it has authenticated.
    pub fn reveal(&self) -> String {
        let hash = self.ca_hash.to_string();
        let hash = hash.strip_prefix("sha256:").unwrap_or(&hash);
        format!("{PREFIX}.{}.{hash}", self.key.text())
    }
}

impl FromStr for EnrollmentToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, InvalidToken> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(InvalidToken("it does not start with gwjoin1."));
        }
        let (Some(id), Some(secret), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidToken("it does not have four parts"));
        };
        let key = IdSecret::read(id, secret).map_err(InvalidToken)?;
        if !is_hex(hash, 64) {
            return Err(InvalidToken("its CA hash is not 64 lowercase hex digits"));
        }
        let ca_hash = format!("sha256:{hash}")
            .parse()
            .map_err(|_| InvalidToken("its CA hash does not read"))?;
        Ok(Self { key, ca_hash })
    }
}

/// Why an enrollment or a renewal did not give a certificate.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The controller's address does not read, or names plaintext.
    #[error("{0}")]
    Address(String),
    /// No TLS connection to the controller (unreachable, or not the cluster the token
    /// names: its certificate does not chain to the token's CA hash).
    #[error("cannot reach the controller over TLS: {0}")]
    Connect(String),
    /// The controller refused: the reason is its own.
    #[error("the controller refused: {0}")]
    Refused(String),
    /// The controller could not issue now (its store does not answer), or was too busy.
    #[error("the controller cannot issue now: {0}")]
    Unavailable(String),
    /// What the controller answered does not read.
    #[error("the controller's answer does not read: {0}")]
    Answer(String),
}

impl EnrollError {
    /// Whether trying again (later, or at another controller) may help: an unreachable or
    /// busy controller, not a refused token.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Unavailable(_))
    }
}

/// The longest an enrollment or a renewal call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A TLS channel to `address` (`host:port` or `https://host:port`) with `config`.
async fn channel(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, EnrollError> {
    let authority = match address.split_once("://") {
        None => address,
        Some(("https", authority)) => authority,
        Some(_) => {
            return Err(EnrollError::Address(format!(
                "{address}: enrollment is made over TLS only; give https://host:port or host:port"
            )));
        }
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| EnrollError::Address(format!("{address} is not a controller address")))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    endpoint
        .connect_with_connector(crate::client::tls_connector(config))
        .await
        .map_err(|err| EnrollError::Connect(crate::client::causes(&err)))
}

fn refusal(status: &tonic::Status) -> EnrollError {
    let message = crate::clip(status.message(), 512).to_string();
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::ResourceExhausted
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown => EnrollError::Unavailable(message),
        _ => EnrollError::Refused(message),
    }
}

fn issued(answer: crate::proto::Certificate) -> Result<IssuedCertificate, EnrollError> {
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs());
    if answer.certificate_pem.is_empty() || answer.ca_pem.is_empty() {
        return Err(EnrollError::Answer("no certificate in it".to_string()));
    }
    Ok(IssuedCertificate {
        certificate_pem: answer.certificate_pem,
        ca_pem: answer.ca_pem,
        not_after: at(answer.not_after_unix),
        renew_after: at(answer.renew_after_unix),
    })
}

/// Enrolls `identity` at the controller at `address` with `token`: the controller is
/// checked against the token's CA hash before the token is sent; the answer is a
/// certificate for the key of `csr_pem`.
pub async fn enroll(
    address: &str,
    token: &EnrollmentToken,
    identity: &RuntimeIdentity,
    csr_pem: &str,
) -> Result<IssuedCertificate, EnrollError> {
    let config = crate::tls::client_config(&ServerTrust::Pinned(token.ca_hash()), None)
        .map_err(|err| EnrollError::Address(err.to_string()))?;
    let mut client = EnrollmentClient::new(channel(address, config).await?);
    let answer = client
        .enroll(EnrollRequest {
            token: token.reveal(),
            node_id: identity.node_id.clone(),
            group: identity.group.clone(),
            csr_pem: csr_pem.to_string(),
        })
        .await
        .map_err(|status| refusal(&status))?;
    issued(answer.into_inner())
}

/// Renews a certificate at the controller at `address`, over a connection made with
/// `config` (which presents the certificate to renew): the answer is a certificate for the
/// key of `csr_pem`, naming the same runtime.
pub async fn renew(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    csr_pem: &str,
) -> Result<IssuedCertificate, EnrollError> {
    let mut client = EnrollmentClient::new(channel(address, config).await?);
    let answer = client
        .renew(RenewRequest {
            csr_pem: csr_pem.to_string(),
        })
        .await
        .map_err(|status| refusal(&status))?;
    issued(answer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_hash() -> CaHash {
        CaHash::of_spki(b"a public key")
    }

    #[test]
    fn a_token_reads_back_as_written() {
        let token = EnrollmentToken::generate(ca_hash());
        let text = token.reveal();
        assert!(text.starts_with("gwjoin1."), "{text}");
        let read: EnrollmentToken = text.parse().unwrap();
        assert_eq!(read, token);
        assert_eq!(read.ca_hash(), ca_hash());
        assert!(read.matches(&token.secret_hash()));
        // two tokens differ in id and secret
        let other = EnrollmentToken::generate(ca_hash());
        assert_ne!(other.id(), token.id());
        assert!(!other.matches(&token.secret_hash()));
    }

    #[test]
    fn its_secret_never_shows_in_debug_output_or_errors() {
        let token = EnrollmentToken::generate(ca_hash());
        let text = token.reveal();
        let secret = text.split('.').nth(2).unwrap();
        let debug = format!("{token:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(token.id()), "{debug}");
        // a token cut short: the error does not repeat it
        let cut = &text[..text.len() - 1];
        let err = cut.parse::<EnrollmentToken>().unwrap_err().to_string();
        assert!(!err.contains(secret), "{err}");
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        let good = EnrollmentToken::generate(ca_hash()).reveal();
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            (String::new(), "does not start"),
            (good.replacen("gwjoin1", "gwjoin2", 1), "does not start"),
            (parts[..3].join("."), "four parts"),
            (format!("{good}.x"), "four parts"),
            (good.replacen(parts[1], "XYZ", 1), "id"),
            (good.replacen(parts[2], &"G".repeat(32), 1), "secret"),
            (good.replacen(parts[3], &parts[3][1..], 1), "CA hash"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<EnrollmentToken>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        // blanks around it (a copied line) do not matter
        assert!(format!(" {good}\n").parse::<EnrollmentToken>().is_ok());
    }
}
