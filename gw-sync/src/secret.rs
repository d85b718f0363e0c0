//! The id and secret that gw's bearer tokens share (enrollment tokens, the controller's
//! named admin tokens): a public id that names the token where it is stored, listed and
//! revoked, and a secret of 128 random bits that the store keeps as its SHA-256 only.

use std::fmt;

use sha2::{Digest, Sha256};

/// Hex digits of an id.
const ID_DIGITS: usize = 16;
/// Hex digits of a secret.
const SECRET_DIGITS: usize = 32;

/// A token's id and secret. `Debug` shows the id only; the secret is had through
/// [`IdSecret::text`] alone.
#[derive(Clone, PartialEq, Eq)]
pub struct IdSecret {
    id: String,
    secret: String,
}

impl fmt::Debug for IdSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdSecret")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

/// Whether `text` is `digits` lowercase hex digits.
pub fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl IdSecret {
    /// A random id (16 hex digits) and secret (32 hex digits).
    pub fn generate() -> Self {
        let id: [u8; ID_DIGITS / 2] = rand::random();
        let secret: [u8; SECRET_DIGITS / 2] = rand::random();
        Self {
            id: hex(&id),
            secret: hex(&secret),
        }
    }

    /// Reads an id and a secret, or says which does not read (never repeating either).
    pub fn read(id: &str, secret: &str) -> Result<Self, &'static str> {
        if !is_hex(id, ID_DIGITS) {
            return Err("its id is not 16 lowercase hex digits");
        }
        if !is_hex(secret, SECRET_DIGITS) {
            return Err("its secret is not 32 lowercase hex digits");
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The id: not a secret.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The SHA-256 of the secret (hex): what a store keeps and compares. The secret has 128
    /// random bits, so a fast hash is enough: nobody guesses it from its hash.
    pub fn secret_hash(&self) -> String {
        hex(&Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether the secret is the one whose hash is `stored` (in constant time).
    pub fn matches(&self, stored: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.secret_hash()
            .as_bytes()
            .ct_eq(stored.as_bytes())
            .into()
    }

    /// `<id>.<secret>`: the secret included, for a token's full text.
    pub fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_and_secret_read_back_and_never_show_the_secret() {
        let made = IdSecret::generate();
        let text = made.text();
        let (id, secret) = text.split_once('.').unwrap();
        let read = IdSecret::read(id, secret).unwrap();
        assert_eq!(read, made);
        assert!(read.matches(&made.secret_hash()));
        assert!(!IdSecret::generate().matches(&made.secret_hash()));
        assert!(!format!("{made:?}").contains(secret));
        assert!(IdSecret::read("XYZ", secret).unwrap_err().contains("id"));
        assert!(
            IdSecret::read(id, &"G".repeat(32))
                .unwrap_err()
                .contains("secret")
        );
    }
}
