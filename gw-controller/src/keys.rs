//! The controller's secrets: the admin token and the encryption keys (the current one and
//! the previous ones of a rotation).
//!
//! Production mode (the default) refuses to start without both. Development mode (`--dev`)
//! allows no token (the admin API is then open) and generates an encryption key into the
//! data directory. Neither value is ever logged.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest admin token accepted in production.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why the controller's secrets are not usable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No admin token in production mode.
    #[error(
        "GW_ADMIN_TOKEN is not set: production mode requires a bearer token for the admin API. \
         Set GW_ADMIN_TOKEN to a random string of at least {MIN_TOKEN_LEN} characters \
         (for example: openssl rand -hex 32), or run with --dev for local development"
    )]
    MissingToken,
    /// The token is too short.
    #[error("GW_ADMIN_TOKEN must be at least {MIN_TOKEN_LEN} characters long")]
    WeakToken,
    /// No encryption key in production mode.
    #[error(
        "GW_ENCRYPTION_KEY is not set: production mode requires a 32-byte key, base64-encoded, \
         to encrypt secrets at rest. Generate one with: openssl rand -base64 32 \
         (or run with --dev, which generates one into the data directory)"
    )]
    MissingKey,
    /// The key is not 32 bytes of base64.
    #[error("{source_name} must be 32 bytes, base64-encoded (openssl rand -base64 32): {reason}")]
    InvalidKey {
        /// Where the key came from.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The development key file could not be read or written.
    #[error("cannot use the development key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The admin API's bearer token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Wraps a configured token.
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token. The comparison takes the same time whatever the
    /// input (digests of equal length, compared in constant time).
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

/// Resolves the admin token: required in production, optional in development.
pub fn admin_token(dev: bool, configured: Option<&str>) -> Result<Option<AdminToken>, KeyError> {
    match configured.map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) if !dev && token.len() < MIN_TOKEN_LEN => Err(KeyError::WeakToken),
        Some(token) => Ok(Some(AdminToken::new(token))),
        None if dev => Ok(None),
        None => Err(KeyError::MissingToken),
    }
}

/// The key that encrypts secrets at rest (AES-256-GCM).
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl EncryptionKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn decode(text: &str, source_name: &str) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::InvalidKey {
            source_name: source_name.to_string(),
            reason,
        };
        let bytes = STANDARD
            .decode(text.trim())
            // (the decoder's message would quote a character of the key)
            .map_err(|_| invalid("it is not base64".to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| invalid(format!("it decodes to {} bytes", b.len())))?;
        Ok(Self(key))
    }
}

/// Resolves the encryption key: `GW_ENCRYPTION_KEY` when set; else, in development mode, the
/// key in `<data-dir>/encryption.key`, generated (mode 0600) on first start.
pub fn encryption_key(
    dev: bool,
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<EncryptionKey, KeyError> {
    if let Some(text) = configured.filter(|t| !t.trim().is_empty()) {
        return EncryptionKey::decode(text, "GW_ENCRYPTION_KEY");
    }
    if !dev {
        return Err(KeyError::MissingKey);
    }
    let path = data_dir.join("encryption.key");
    let file_error = |source| KeyError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => EncryptionKey::decode(&text, &path.display().to_string()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            std::fs::create_dir_all(data_dir).map_err(file_error)?;
            write_private(&path, STANDARD.encode(key).as_bytes()).map_err(file_error)?;
            tracing::warn!(path = %path.display(), "generated a development encryption key");
            Ok(EncryptionKey(key))
        }
        Err(err) => Err(file_error(err)),
    }
}

/// The previous encryption keys (`GW_ENCRYPTION_KEYS_PREVIOUS`: base64 keys separated by
/// commas), which open values sealed before a key rotation; none when unset.
pub fn previous_keys(configured: Option<&str>) -> Result<Vec<EncryptionKey>, KeyError> {
    configured
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .enumerate()
        .map(|(i, text)| {
            EncryptionKey::decode(
                text,
                &format!("GW_ENCRYPTION_KEYS_PREVIOUS (key {} of the list)", i + 1),
            )
        })
        .collect()
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_requires_a_strong_token() {
        assert!(matches!(
            admin_token(false, None),
            Err(KeyError::MissingToken)
        ));
        assert!(matches!(
            admin_token(false, Some("  ")),
            Err(KeyError::MissingToken)
        ));
        assert!(matches!(
            admin_token(false, Some("short")),
            Err(KeyError::WeakToken)
        ));
        let token = admin_token(false, Some("0123456789abcdef-long"))
            .unwrap()
            .unwrap();
        assert!(token.verify("0123456789abcdef-long"));
        assert!(!token.verify("0123456789abcdef-lonG"));
        assert!(!token.verify(""));
        assert!(admin_token(true, None).unwrap().is_none());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn encryption_key_rules() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            encryption_key(false, None, dir.path()),
            Err(KeyError::MissingKey)
        ));
        let err = encryption_key(false, Some("bm90LTMyLWJ5dGVz"), dir.path()).unwrap_err();
        assert!(err.to_string().contains("decodes to 12 bytes"), "{err}");
        let good = STANDARD.encode([7u8; 32]);
        assert_eq!(
            encryption_key(false, Some(&good), dir.path())
                .unwrap()
                .bytes(),
            &[7u8; 32]
        );

        // previous keys: a list, each checked, named by its place
        assert!(previous_keys(None).unwrap().is_empty());
        assert!(previous_keys(Some(" ")).unwrap().is_empty());
        let other = STANDARD.encode([8u8; 32]);
        let keys = previous_keys(Some(&format!("{good}, {other},"))).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].bytes(), &[8u8; 32]);
        let err = previous_keys(Some(&format!("{good},bm90LTMyLWJ5dGVz"))).unwrap_err();
        assert!(err.to_string().contains("key 2 of the list"), "{err}");
        assert!(!err.to_string().contains("bm90"), "{err}");

        // development: generated once, then reused
        let first = encryption_key(true, None, dir.path()).unwrap();
        let second = encryption_key(true, None, dir.path()).unwrap();
        assert_eq!(first.bytes(), second.bytes());
        let mode = std::fs::metadata(dir.path().join("encryption.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }
}
