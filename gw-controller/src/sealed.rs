//! Secrets at rest: values the controller stores sealed with AES-256-GCM under
//! `GW_ENCRYPTION_KEY`: the private keys of certificates, the cluster CA's key, and every
//! field of an API definition that its policies or the model mark secret
//! ([`gw_core::model::secret`]: an HS256 key, the password of a Redis or upstream URL, an
//! injected `Authorization`).
//!
//! A sealed value reads `gw-sealed:v1:<key id>:<base64 of nonce, ciphertext and tag>`. The
//! key id (the first 8 hex digits of the key's SHA-256) tells a value sealed under another
//! key from a damaged one, and finds the key among the previous ones during a rotation.
//! The resource a value belongs to (`certificate/<name>`, `api/<name>/<field path>`) is
//! authenticated with it, so a sealed value copied into another resource does not open.
//! Reads never show these values, sealed or opened, to any role.
//! Every controller of a cluster needs the same key; runtimes receive the values opened,
//! over the sync stream.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use gw_core::model::PolicyCatalog;
use gw_core::model::secret::{REDACTED, SecretPart, api_secret_fields};
use serde_json::Value;

use crate::keys::EncryptionKey;

const PREFIX: &str = "gw-sealed:v1:";

/// What every sealed value starts with, whatever its version: a client's document that holds
/// it is refused (the controller opens every value it stored sealed).
pub(crate) const SEALED_PREFIX: &str = "gw-sealed:";

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// It was sealed under a key this controller does not have.
    #[error(
        "sealed under key {sealed_with}, which is neither this controller's GW_ENCRYPTION_KEY \
         (key {ours}) nor one of its GW_ENCRYPTION_KEYS_PREVIOUS ({previous}): every \
         controller needs the same key, and a key is dropped only after a reseal"
    )]
    OtherKey {
        /// The id of the key it was sealed with.
        sealed_with: String,
        /// The id of this controller's current key.
        ours: String,
        /// The ids of its previous keys (`none`).
        previous: String,
    },
    /// It is damaged, or was sealed for another resource.
    #[error("the sealed value is damaged or belongs to another resource")]
    Damaged,
}

/// One key and its id.
struct KeyEntry {
    key: LessSafeKey,
    id: String,
}

impl KeyEntry {
    fn new(key: &EncryptionKey) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key.bytes()).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(unbound),
            id: key_id(key),
        }
    }
}

/// The id of `key`: the first 8 hex digits of its SHA-256 (sealed values carry it).
pub fn key_id(key: &EncryptionKey) -> String {
    let digest = Sha256::digest(key.bytes());
    let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    format!("{id:08x}")
}

/// Seals values with the controller's current encryption key, and opens values sealed
/// under it or under one of its previous keys (`GW_ENCRYPTION_KEYS_PREVIOUS`), found by
/// the key id a sealed value carries: during a key rotation, values sealed under the old
/// key keep opening until a reseal ([`crate::reseal`]) has rewritten them.
pub struct Sealer {
    current: KeyEntry,
    previous: Vec<KeyEntry>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.current.id)
            .field("previous", &self.previous_ids())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with `key` and no previous key.
    pub fn new(key: &EncryptionKey) -> Self {
        Self::with_previous(key, &[])
    }

    /// A sealer that seals with `key` and opens with it or any of `previous` (a previous
    /// key equal to the current one is ignored).
    pub fn with_previous(key: &EncryptionKey, previous: &[EncryptionKey]) -> Self {
        let current = KeyEntry::new(key);
        let mut kept: Vec<KeyEntry> = Vec::new();
        for key in previous {
            let entry = KeyEntry::new(key);
            if entry.id != current.id && !kept.iter().any(|k| k.id == entry.id) {
                kept.push(entry);
            }
        }
        Self {
            current,
            previous: kept,
        }
    }

    /// The id of the key values are sealed with.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// The ids of the previous keys.
    pub fn previous_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.id.as_str()).collect()
    }

    /// Whether `value` is sealed (rather than a plain value stored before sealing existed).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// The id of the key `value` is sealed under, if it is sealed.
    pub fn sealed_with(value: &str) -> Option<&str> {
        value
            .strip_prefix(PREFIX)?
            .split_once(':')
            .map(|(id, _)| id)
    }

    /// Whether `value` is sealed under the current key.
    pub fn is_current(&self, value: &str) -> bool {
        Self::sealed_with(value) == Some(self.current.id.as_str())
    }

    /// Seals `plaintext` for the resource `context` (`certificate/<name>`).
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.as_bytes().to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any input of this size");
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&data);
        format!("{PREFIX}{}:{}", self.current.id, STANDARD.encode(sealed))
    }

    /// Opens a value sealed for `context` under the current key or a previous one; a value
    /// that is not sealed is returned as is.
    pub fn open(&self, value: &str, context: &str) -> Result<String, SealError> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let (key_id, encoded) = rest.split_once(':').ok_or(SealError::Damaged)?;
        let entry = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| SealError::OtherKey {
                sealed_with: key_id.to_string(),
                ours: self.current.id.clone(),
                previous: if self.previous.is_empty() {
                    "none".to_string()
                } else {
                    self.previous_ids().join(", ")
                },
            })?;
        let mut sealed = STANDARD.decode(encoded).map_err(|_| SealError::Damaged)?;
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let mut data = sealed.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&sealed).map_err(|_| SealError::Damaged)?;
        let plaintext = entry
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Damaged)?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| SealError::Damaged)
    }

    /// `value` (sealed for `context`) sealed under the current key: `None` when it already
    /// is. A plain value is sealed.
    pub fn reseal(&self, value: &str, context: &str) -> Result<Option<String>, SealError> {
        if self.is_current(value) {
            // it must open all the same: a damaged value is reported, not kept quietly
            self.open(value, context)?;
            return Ok(None);
        }
        let opened = self.open(value, context)?;
        Ok(Some(self.seal(&opened, context)))
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

    /// Seals every secret field of the API document `spec` (named `name`) in place: the
    /// fields its policies and the model mark ([`api_secret_fields`]), each bound to the
    /// API and the field's path. A value that merely looks sealed is sealed too: it came
    /// from a client.
    pub fn seal_api(&self, spec: &mut Value, name: &str, catalog: &dyn PolicyCatalog) {
        for field in api_secret_fields(spec, catalog) {
            if let Some(Value::String(text)) = spec.pointer_mut(&field.pointer)
                && (field.holds_secret(text) || Self::is_sealed(text))
            {
                *text = self.seal(text, &api_context(name, &field.pointer));
            }
        }
    }

    /// The API document `spec` with its sealed fields opened: what runtimes are sent.
    pub fn open_api(&self, spec: &Value, name: &str) -> Result<Value, SealError> {
        // every sealed value, wherever it is: one sealed when the policies marked a field
        // that they no longer mark still opens (clients cannot store a sealed-looking value)
        let mut opened = spec.clone();
        each_sealed(&mut opened, &mut String::new(), &mut |pointer, text| {
            *text = self.open(text, &api_context(name, pointer))?;
            Ok(())
        })?;
        Ok(opened)
    }

    /// Replaces every secret of the API document `spec` (as stored: sealed, or plain if it
    /// was stored before sealing existed) by [`REDACTED`], in place: what any read shows.
    /// A URL keeps everything but its password.
    pub fn hide_api_secrets(&self, spec: &mut Value, name: &str, catalog: &dyn PolicyCatalog) {
        let fields = api_secret_fields(spec, catalog);
        // a sealed value no field of the catalog marks (any more) is hidden whole
        let _ = each_sealed(spec, &mut String::new(), &mut |pointer, text| {
            if !fields.iter().any(|field| field.pointer == pointer) {
                *text = REDACTED.to_string();
            }
            Ok(())
        });
        for field in fields {
            if let Some(Value::String(text)) = spec.pointer_mut(&field.pointer) {
                if field.part == SecretPart::Whole {
                    // nothing of it is shown: no need to open it
                    *text = REDACTED.to_string();
                    continue;
                }
                let opened = if Self::is_sealed(text) {
                    self.open(text, &api_context(name, &field.pointer)).ok()
                } else {
                    Some(text.clone())
                };
                *text = match opened {
                    Some(opened) if field.holds_secret(&opened) => field.redact(&opened),
                    Some(opened) => opened,
                    None => REDACTED.to_string(),
                };
            }
        }
    }

    /// Reseals, under the current key, every sealed value of the API document `spec` (and
    /// seals a secret stored in the clear before sealing existed). Returns the document
    /// rewritten, or `None` when every value already is under the current key.
    pub fn reseal_api(
        &self,
        spec: &Value,
        name: &str,
        catalog: &dyn PolicyCatalog,
    ) -> Result<Option<Value>, SealError> {
        let mut resealed = spec.clone();
        let mut changed = false;
        // every sealed value, wherever it is (see `open_api`)…
        each_sealed(&mut resealed, &mut String::new(), &mut |pointer, text| {
            if let Some(new) = self.reseal(text, &api_context(name, pointer))? {
                *text = new;
                changed = true;
            }
            Ok(())
        })?;
        // …and the secrets stored in the clear before sealing existed
        for field in api_secret_fields(spec, catalog) {
            if let Some(Value::String(text)) = resealed.pointer_mut(&field.pointer)
                && !Self::is_sealed(text)
                && field.holds_secret(text)
            {
                *text = self.seal(text, &api_context(name, &field.pointer));
                changed = true;
            }
        }
        Ok(changed.then_some(resealed))
    }

    /// A certificate document whose `spec.privateKey` is resealed under the current key,
    /// or `None` when it already is.
    pub fn reseal_certificate(&self, spec: &Value, name: &str) -> Result<Option<Value>, SealError> {
        let mut resealed = spec.clone();
        let Some(Value::String(text)) = resealed.pointer_mut("/spec/privateKey") else {
            return Ok(None);
        };
        let context = certificate_context(name);
        let new = if Self::is_sealed(text) {
            self.reseal(text, &context)?
        } else {
            Some(self.seal(text, &context))
        };
        let Some(new) = new else {
            return Ok(None);
        };
        *text = new;
        Ok(Some(resealed))
    }
}

/// Calls `f` with the JSON pointer (RFC 6901, from `pointer`) and the text of every sealed
/// string in `value`; stops at the first error.
fn each_sealed(
    value: &mut Value,
    pointer: &mut String,
    f: &mut dyn FnMut(&str, &mut String) -> Result<(), SealError>,
) -> Result<(), SealError> {
    let mut descend = |value: &mut Value, pointer: &mut String, token: &str| {
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
        let result = each_sealed(value, pointer, f);
        pointer.truncate(len);
        result
    };
    match value {
        Value::String(text) if Sealer::is_sealed(text) => f(pointer, text),
        Value::Object(fields) => fields
            .iter_mut()
            .try_for_each(|(name, field)| descend(field, pointer, name)),
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, item)| descend(item, pointer, &i.to_string())),
        _ => Ok(()),
    }
}

/// What a sealed field of an API is bound to: the API and the field's path, so that a
/// value copied to another field or another API does not open.
fn api_context(name: &str, pointer: &str) -> String {
    format!("api/{name}{pointer}")
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
    fn previous_keys_open_and_the_current_one_seals() {
        let old = Sealer::new(&key(1));
        let sealed_old = old.seal("v", "c");
        let rotated = Sealer::with_previous(&key(2), &[key(1), key(2), key(1)]);
        // the current key among the previous ones, and duplicates, are ignored
        assert_eq!(rotated.previous_ids(), [old.key_id()]);
        assert_eq!(rotated.open(&sealed_old, "c").unwrap(), "v");
        assert!(!rotated.is_current(&sealed_old));
        let sealed_new = rotated.seal("v", "c");
        assert!(rotated.is_current(&sealed_new));
        assert_eq!(Sealer::sealed_with(&sealed_new), Some(rotated.key_id()));
        // a reseal: the old value under the new key; one already current is left alone
        let resealed = rotated.reseal(&sealed_old, "c").unwrap().unwrap();
        assert!(rotated.is_current(&resealed));
        assert_eq!(Sealer::new(&key(2)).open(&resealed, "c").unwrap(), "v");
        assert_eq!(rotated.reseal(&sealed_new, "c").unwrap(), None);
        assert!(rotated.is_current(&rotated.reseal("plain", "c").unwrap().unwrap()));
        // a damaged value is reported, current key or not
        assert_eq!(rotated.reseal(&sealed_new, "d"), Err(SealError::Damaged));
        // a key none of them has: the error names them all, and no value
        let err = Sealer::with_previous(&key(3), &[key(4)])
            .open(&sealed_old, "c")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(old.key_id()), "{text}");
        assert!(text.contains(Sealer::new(&key(4)).key_id()), "{text}");
        assert!(text.contains("GW_ENCRYPTION_KEYS_PREVIOUS"), "{text}");
        let none = Sealer::new(&key(3)).open(&sealed_old, "c").unwrap_err();
        assert!(none.to_string().contains("(none)"), "{none}");
        assert!(!format!("{rotated:?}").contains("key: "), "{rotated:?}");
    }

    #[test]
    fn api_secrets_are_sealed_by_field_and_hidden_when_shown() {
        let policies = gw_core::policy::PolicyRegistry::builtin();
        let plain = serde_json::json!({"spec": {
            "upstream": {"endpoints": [{"url": "http://backend:8080/x"}]},
            "policies": [
                {"name": "jwt", "params": {"secret": "k", "jwksUrl": "https://u:p@idp/jwks"}},
                {"name": "rate-limit", "params": {"redis": {"url": "redis://127.0.0.1:6379/0"}}},
                {"name": "unknown", "params": {"secret": "kept"}},
            ],
        }});
        let sealer = Sealer::new(&key(1));
        let mut stored = plain.clone();
        sealer.seal_api(&mut stored, "a", &policies);
        let params = &stored["spec"]["policies"];
        assert!(Sealer::is_sealed(
            params[0]["params"]["secret"].as_str().unwrap()
        ));
        assert!(Sealer::is_sealed(
            params[0]["params"]["jwksUrl"].as_str().unwrap()
        ));
        // a URL without a password, and what no policy marks, are stored as they are
        assert_eq!(params[1], plain["spec"]["policies"][1]);
        assert_eq!(params[2], plain["spec"]["policies"][2]);
        assert_eq!(stored["spec"]["upstream"], plain["spec"]["upstream"]);
        assert_eq!(sealer.open_api(&stored, "a").unwrap(), plain);
        let mut shown = stored.clone();
        sealer.hide_api_secrets(&mut shown, "a", &policies);
        assert_eq!(shown["spec"]["policies"][0]["params"]["secret"], REDACTED);
        assert_eq!(
            shown["spec"]["policies"][0]["params"]["jwksUrl"],
            "https://u:<redacted>@idp/jwks"
        );
        // a client's value that looks sealed is sealed, and opens to what it gave
        let mut forged = serde_json::json!({"spec": {"policies": [
            {"name": "rate-limit", "params": {"redis": {"url": "gw-sealed:v1:x:y"}}},
        ]}});
        let original = forged.clone();
        sealer.seal_api(&mut forged, "a", &policies);
        assert_ne!(forged, original);
        assert_eq!(sealer.open_api(&forged, "a").unwrap(), original);
        // already current: nothing to reseal
        assert_eq!(sealer.reseal_api(&stored, "a", &policies).unwrap(), None);

        // a value sealed where no policy marks a secret now (a policy of another build, a
        // mark dropped since) still opens where it is, is hidden, and is resealed
        let pointer = "/spec/policies/2/params/secret";
        let mut unmarked = stored.clone();
        *unmarked.pointer_mut(pointer).unwrap() =
            Value::String(sealer.seal("kept", &api_context("a", pointer)));
        assert_eq!(sealer.open_api(&unmarked, "a").unwrap(), plain);
        let mut shown = unmarked.clone();
        sealer.hide_api_secrets(&mut shown, "a", &policies);
        assert_eq!(shown.pointer(pointer).unwrap(), REDACTED);
        let rotated = Sealer::with_previous(&key(2), &[key(1)]);
        let resealed = rotated
            .reseal_api(&unmarked, "a", &policies)
            .unwrap()
            .unwrap();
        let text = resealed.pointer(pointer).unwrap().as_str().unwrap();
        assert!(rotated.is_current(text), "{text}");
        assert_eq!(
            Sealer::new(&key(2)).open_api(&resealed, "a").unwrap(),
            plain
        );
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
