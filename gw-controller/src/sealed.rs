//! Secrets at rest: values the controller stores sealed with AES-256-GCM under
//! `GW_ENCRYPTION_KEY` (today the private keys of certificates).
//!
//! A sealed value reads `gw-sealed:v1:<key id>:<base64 of nonce, ciphertext and tag>`. The
//! key id (the first 8 hex digits of the key's SHA-256) tells a value sealed under another
//! key from a damaged one. The resource a value belongs to (`certificate/<name>`) is
//! authenticated with it, so a sealed value copied into another resource does not open.
//! Every controller of a cluster needs the same key; runtimes receive the values opened,
//! over the sync stream.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use crate::keys::EncryptionKey;

const PREFIX: &str = "gw-sealed:v1:";

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// It was sealed under another key than this controller's.
    #[error(
        "sealed under key {sealed_with}, and this controller's GW_ENCRYPTION_KEY is key {ours}: every controller needs the same key"
    )]
    OtherKey {
        /// The id of the key it was sealed with.
        sealed_with: String,
        /// The id of this controller's key.
        ours: String,
    },
    /// It is damaged, or was sealed for another resource.
    #[error("the sealed value is damaged or belongs to another resource")]
    Damaged,
}

/// Seals and opens values with the controller's encryption key.
pub struct Sealer {
    key: LessSafeKey,
    key_id: String,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with `key`.
    pub fn new(key: &EncryptionKey) -> Self {
        let digest = Sha256::digest(key.bytes());
        let key_id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let key_id = format!("{key_id:08x}");
        let unbound = UnboundKey::new(&AES_256_GCM, key.bytes()).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(unbound),
            key_id,
        }
    }

    /// Whether `value` is sealed (rather than a plain value stored before sealing existed).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// Seals `plaintext` for the resource `context` (`certificate/<name>`).
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any input of this size");
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&data);
        format!("{PREFIX}{}:{}", self.key_id, STANDARD.encode(sealed))
    }

    /// Opens a value sealed for `context`; a value that is not sealed is returned as is.
    pub fn open(&self, value: &str, context: &str) -> Result<String, SealError> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let (key_id, encoded) = rest.split_once(':').ok_or(SealError::Damaged)?;
        if key_id != self.key_id {
            return Err(SealError::OtherKey {
                sealed_with: key_id.to_string(),
                ours: self.key_id.clone(),
            });
        }
        let mut sealed = STANDARD.decode(encoded).map_err(|_| SealError::Damaged)?;
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let mut data = sealed.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&sealed).map_err(|_| SealError::Damaged)?;
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Damaged)?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| SealError::Damaged)
    }

    /// Seals the `spec.privateKey` of a certificate document in place, whatever it holds
    /// (a value that merely looks sealed is sealed too: it came from a client).
    pub fn seal_certificate(&self, spec: &mut serde_json::Value, name: &str) {
        if let Some(key) = spec.pointer_mut("/spec/privateKey")
            && let Some(text) = key.as_str()
        {
            *key = serde_json::Value::String(self.seal(text, &certificate_context(name)));
        }
    }

    /// A certificate document with its `spec.privateKey` opened.
    pub fn open_certificate(
        &self,
        spec: &serde_json::Value,
        name: &str,
    ) -> Result<serde_json::Value, SealError> {
        let mut opened = spec.clone();
        if let Some(key) = opened.pointer_mut("/spec/privateKey")
            && let Some(text) = key.as_str()
        {
            *key = serde_json::Value::String(self.open(text, &certificate_context(name))?);
        }
        Ok(opened)
    }
}

fn certificate_context(name: &str) -> String {
    format!("certificate/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([byte; 32])
    }

    #[test]
    fn sealed_values_open_only_with_the_key_and_for_their_resource() {
        let sealer = Sealer::new(&key(7));
        let sealed = sealer.seal("-----BEGIN PRIVATE KEY-----\nsecret", "certificate/a");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        // a fresh nonce each time
        assert_ne!(
            sealed,
            sealer.seal("-----BEGIN PRIVATE KEY-----\nsecret", "certificate/a")
        );
        assert_eq!(
            sealer.open(&sealed, "certificate/a").unwrap(),
            "-----BEGIN PRIVATE KEY-----\nsecret"
        );
        assert_eq!(
            sealer.open(&sealed, "certificate/b"),
            Err(SealError::Damaged)
        );
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sealer.open(&String::from_utf8(flipped).unwrap(), "certificate/a"),
            Err(SealError::Damaged)
        );
        let other = Sealer::new(&key(8));
        assert!(matches!(
            other.open(&sealed, "certificate/a"),
            Err(SealError::OtherKey { .. })
        ));
        // values stored before sealing existed open as they are
        assert_eq!(sealer.open("plain", "certificate/a").unwrap(), "plain");
    }

    #[test]
    fn certificates_are_sealed_in_place_and_opened_in_a_copy() {
        let sealer = Sealer::new(&key(1));
        let plain = serde_json::json!({"spec": {"certificate": "C", "privateKey": "K"}});
        let mut stored = plain.clone();
        sealer.seal_certificate(&mut stored, "site");
        assert_ne!(stored["spec"]["privateKey"], "K");
        assert_eq!(stored["spec"]["certificate"], "C");
        assert_eq!(sealer.open_certificate(&stored, "site").unwrap(), plain);
        // a client's value that looks sealed is sealed all the same, never stored as is
        let mut forged = serde_json::json!({"spec": {"privateKey": "gw-sealed:v1:x\n-----BEGIN PRIVATE KEY-----"}});
        let original = forged.clone();
        sealer.seal_certificate(&mut forged, "site");
        assert_ne!(forged, original);
        assert_eq!(sealer.open_certificate(&forged, "site").unwrap(), original);
        assert!(sealer.open_certificate(&stored, "other").is_err());
    }
}
