//! Credentials' secrets: [`seal`] turns a consumer's clear keys and passwords into their
//! hashes before it is stored or served, and, with the `basic-auth` feature,
//! [`hash_password`] and [`verify_password`] do the password hashing.
//!
//! The model ([`crate::model::ConsumerDefinition`]) describes and validates credentials and
//! hashes nothing slowly: argon2 and bcrypt are compiled only with `basic-auth`, the one
//! policy that verifies passwords. An API key's hash is a SHA-256
//! ([`crate::model::api_key_hash`]), which every build has.

use crate::model::{ConsumerDefinition, FieldError, api_key_hash};

/// Replaces the clear secrets of `consumer` with their hashes: `key` with `keyHash`,
/// `password` with an argon2id `passwordHash`. Slow when there are passwords (argon2 is
/// meant to be): call it off the async threads. Without the `basic-auth` feature a clear
/// password cannot be hashed, and is an error on its field.
///
/// ```
/// use gw_core::model::ConsumerDefinition;
///
/// let value = serde_json::json!({
///     "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
///     "spec": {"credentials": [{"type": "api-key", "id": "k", "key": "alice-key-0123456789"}]}
/// });
/// let mut alice = ConsumerDefinition::from_value_validated(&value, false).unwrap();
/// gw_core::credential::seal(&mut alice).unwrap();
/// assert!(alice.is_sealed());
/// ```
pub fn seal(consumer: &mut ConsumerDefinition) -> Result<(), FieldError> {
    for (i, credential) in consumer.spec.credentials.iter_mut().enumerate() {
        if let Some(key) = credential.key.take() {
            credential.key_hash = Some(api_key_hash(&key));
        }
        if let Some(password) = credential.password.take() {
            let field = || format!("spec.credentials[{i}].password");
            #[cfg(feature = "basic-auth")]
            {
                let hash = hash_password(&password).map_err(|e| FieldError::new(field(), e))?;
                credential.password_hash = Some(hash);
            }
            #[cfg(not(feature = "basic-auth"))]
            {
                drop(password);
                return Err(FieldError::new(
                    field(),
                    "passwords cannot be hashed by this build of gw (gw-core without its \
                     `basic-auth` feature): give passwordHash instead",
                ));
            }
        }
    }
    Ok(())
}

/// An argon2id hash of `password` (PHC string), with the OWASP-recommended parameters
/// (19 MiB, 2 passes) and a random salt.
#[cfg(feature = "basic-auth")]
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher as _;
    use argon2::password_hash::SaltString;
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (argon2 PHC or bcrypt). Slow by design: call it off
/// the async threads, and cache successes.
#[cfg(feature = "basic-auth")]
pub fn verify_password(password: &[u8], hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        use argon2::PasswordVerifier as _;
        let Ok(parsed) = argon2::password_hash::PasswordHash::new(hash) else {
            return false;
        };
        argon2::Argon2::default()
            .verify_password(password, &parsed)
            .is_ok()
    } else if crate::model::is_bcrypt(hash) {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelError, api_key_digest, parse_key_hash};

    #[allow(clippy::needless_pass_by_value)] // json! literals read better passed by value
    fn parse(spec: serde_json::Value) -> Result<ConsumerDefinition, ModelError> {
        let value = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"}, "spec": spec
        });
        ConsumerDefinition::from_value_validated(&value, false)
    }

    #[test]
    fn sealing_hashes_keys() {
        let mut consumer = parse(serde_json::json!({"credentials": [
            {"type": "api-key", "id": "k", "key": "alice-key-0123456789"}
        ]}))
        .unwrap();
        assert!(!consumer.is_sealed());
        seal(&mut consumer).unwrap();
        assert!(consumer.is_sealed());
        let key = &consumer.spec.credentials[0];
        assert_eq!(
            key.key_hash.as_deref(),
            Some(api_key_hash("alice-key-0123456789").as_str())
        );
        assert_eq!(
            parse_key_hash(key.key_hash.as_deref().unwrap()),
            Some(api_key_digest(b"alice-key-0123456789"))
        );
        assert!(!format!("{consumer:?}").contains("sha256"));
        assert!(!consumer.to_public_json().to_string().contains("keyHash"));
    }

    #[cfg(not(feature = "basic-auth"))]
    #[test]
    fn without_basic_auth_a_password_is_refused() {
        let mut consumer = parse(serde_json::json!({"credentials": [
            {"type": "basic-auth", "id": "b", "username": "alice", "password": "correct horse"}
        ]}))
        .unwrap();
        let error = seal(&mut consumer).unwrap_err();
        assert_eq!(error.field, "spec.credentials[0].password");
        assert!(error.message.contains("basic-auth"), "{error}");
    }

    #[cfg(feature = "basic-auth")]
    #[test]
    fn sealing_hashes_passwords_and_reads_hide_hashes() {
        let mut consumer = parse(serde_json::json!({"credentials": [
            {"type": "api-key", "id": "k", "key": "alice-key-0123456789"},
            {"type": "basic-auth", "id": "b", "username": "alice", "password": "correct horse"}
        ]}))
        .unwrap();
        seal(&mut consumer).unwrap();
        assert!(consumer.is_sealed());
        let hash = consumer.spec.credentials[1].password_hash.clone().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(b"correct horse", &hash));
        assert!(!verify_password(b"correct horsf", &hash));
        let public = consumer.to_public_json().to_string();
        assert!(
            !public.contains("keyHash") && !public.contains("argon2"),
            "{public}"
        );
        let debug = format!("{consumer:?}");
        assert!(
            !debug.contains("sha256") && !debug.contains("argon2"),
            "{debug}"
        );
        // a sealed document is valid as it is (what runtimes receive)
        assert!(ConsumerDefinition::from_value_validated(&consumer.to_json(), false).is_ok());
    }

    #[cfg(feature = "basic-auth")]
    #[test]
    fn bcrypt_hashes_verify() {
        let hash = bcrypt::hash("imported pw", 4).unwrap();
        let value = serde_json::json!({"credentials": [
            {"type": "basic-auth", "id": "b", "username": "alice", "passwordHash": hash}
        ]});
        assert!(parse(value).is_ok(), "the model accepts it");
        assert!(verify_password(b"imported pw", &hash));
        assert!(!verify_password(b"imported px", &hash));
        assert!(!verify_password(b"x", "$md5$nope"));
    }
}
