//! The keys that sign and verify bundles.
//!
//! Two schemes, told apart by the key's text:
//!
//! - **Ed25519**: the controller holds a PKCS#8 private key in PEM (`-----BEGIN PRIVATE
//!   KEY-----`, as `openssl genpkey -algorithm ed25519` writes it), runtimes hold the public
//!   key in PEM (`-----BEGIN PUBLIC KEY-----`, `openssl pkey -pubout`). A runtime cannot sign.
//! - **HMAC-SHA256**: controllers and runtimes share a secret of at least 32 bytes (any text
//!   that is not PEM, surrounding whitespace ignored, for example `openssl rand -hex 32`).
//!
//! Keys never show in `Debug` output or in errors.

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

/// The shortest HMAC secret accepted, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The name of the Ed25519 scheme in a bundle's header.
pub const ED25519: &str = "ed25519";
/// The name of the HMAC-SHA256 scheme in a bundle's header.
pub const HMAC_SHA256: &str = "hmac-sha256";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE, the algorithm
/// identifier 1.3.101.112, and a BIT STRING of 32 bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key was refused. Never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The key a controller signs bundles with.
pub enum SigningKey {
    /// An Ed25519 key pair.
    Ed25519(Ed25519KeyPair),
    /// A shared HMAC-SHA256 secret.
    Hmac(ring::hmac::Key),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.algorithm())
    }
}

/// The key a runtime verifies bundles with.
pub enum VerifyKey {
    /// An Ed25519 public key (32 bytes).
    Ed25519([u8; 32]),
    /// A shared HMAC-SHA256 secret.
    Hmac(ring::hmac::Key),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({}, <redacted>)", self.algorithm())
    }
}

/// A PEM block: its label and its decoded content.
fn pem(text: &str) -> Result<Option<(String, Vec<u8>)>, KeyError> {
    let Some(rest) = text.strip_prefix("-----BEGIN ") else {
        return Ok(None);
    };
    let (label, rest) = rest
        .split_once("-----")
        .ok_or_else(|| KeyError("malformed PEM: no end of the BEGIN line".into()))?;
    let end = format!("-----END {label}-----");
    let (body, _) = rest
        .split_once(&end)
        .ok_or_else(|| KeyError(format!("malformed PEM: no {end:?} line")))?;
    let body: String = body.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| KeyError(format!("malformed PEM: the {label} block is not base64")))?;
    Ok(Some((label.to_string(), der)))
}

fn hmac_key(text: &str) -> Result<ring::hmac::Key, KeyError> {
    if text.len() < MIN_HMAC_SECRET_BYTES {
        return Err(KeyError(format!(
            "an HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes (it is {}); generate one \
             with `openssl rand -hex 32`, or use an Ed25519 key in PEM",
            text.len()
        )));
    }
    Ok(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        text.as_bytes(),
    ))
}

fn key_text(bytes: &[u8]) -> Result<&str, KeyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyError("the key is not text (PEM, or an HMAC secret)".into()))?
        .trim();
    if text.is_empty() {
        return Err(KeyError("the key is empty".into()));
    }
    Ok(text)
}

impl SigningKey {
    /// Parses a signing key: an Ed25519 private key in PKCS#8 PEM, or an HMAC secret.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let text = key_text(bytes)?;
        match pem(text)? {
            None => Ok(Self::Hmac(hmac_key(text)?)),
            Some((label, der)) if label == "PRIVATE KEY" => {
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                    .map(Self::Ed25519)
                    .map_err(|_| {
                        KeyError(
                            "the private key is not an Ed25519 key in PKCS#8 (create one with \
                             `openssl genpkey -algorithm ed25519`)"
                                .into(),
                        )
                    })
            }
            Some((label, _)) if label == "PUBLIC KEY" => Err(KeyError(
                "this is a public key, which verifies but cannot sign: give the controller the \
                 private key"
                    .into(),
            )),
            Some((label, _)) => Err(KeyError(format!(
                "unsupported PEM block {label:?}: use an Ed25519 PRIVATE KEY (PKCS#8)"
            ))),
        }
    }

    /// The scheme's name, as written in a bundle's header.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => ED25519,
            Self::Hmac(_) => HMAC_SHA256,
        }
    }

    /// Signs `content`.
    pub fn sign(&self, content: &[u8]) -> Vec<u8> {
        match self {
            Self::Ed25519(pair) => pair.sign(content).as_ref().to_vec(),
            Self::Hmac(key) => ring::hmac::sign(key, content).as_ref().to_vec(),
        }
    }

    /// The key that verifies this key's signatures.
    pub fn verify_key(&self) -> VerifyKey {
        match self {
            Self::Ed25519(pair) => {
                let mut public = [0u8; 32];
                public.copy_from_slice(pair.public_key().as_ref());
                VerifyKey::Ed25519(public)
            }
            Self::Hmac(key) => VerifyKey::Hmac(key.clone()),
        }
    }
}

impl VerifyKey {
    /// Parses a verification key: an Ed25519 public key in PEM (SubjectPublicKeyInfo), or an
    /// HMAC secret.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let text = key_text(bytes)?;
        match pem(text)? {
            None => Ok(Self::Hmac(hmac_key(text)?)),
            Some((label, der)) if label == "PUBLIC KEY" => der
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
                .map(Self::Ed25519)
                .ok_or_else(|| {
                    KeyError(
                        "the public key is not an Ed25519 key (derive it from the signing key \
                         with `openssl pkey -in KEY -pubout`)"
                            .into(),
                    )
                }),
            Some((label, _)) if label == "PRIVATE KEY" => Err(KeyError(
                "this is a private key: give runtimes the public key only \
                 (`openssl pkey -in KEY -pubout`)"
                    .into(),
            )),
            Some((label, _)) => Err(KeyError(format!(
                "unsupported PEM block {label:?}: use an Ed25519 PUBLIC KEY"
            ))),
        }
    }

    /// The scheme's name, as written in a bundle's header.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => ED25519,
            Self::Hmac(_) => HMAC_SHA256,
        }
    }

    /// Whether `signature` is this key's signature of `content` (in constant time for
    /// HMAC).
    pub fn verify(&self, content: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Ed25519(public) => signature::UnparsedPublicKey::new(&signature::ED25519, public)
                .verify(content, signature)
                .is_ok(),
            Self::Hmac(key) => ring::hmac::verify(key, content, signature).is_ok(),
        }
    }
}

/// The bytes of a key given either as a file (`file`) or as the value of the environment
/// variable `variable` (never as a flag's value, which `ps` shows); `None` when neither is
/// set. Both set is an error, as is an unreadable file. Errors name the file, never the key.
pub fn key_bytes(
    file: Option<&std::path::Path>,
    variable: &str,
) -> Result<Option<Vec<u8>>, KeyError> {
    let inline = std::env::var_os(variable).filter(|v| !v.is_empty());
    match (file, inline) {
        (Some(_), Some(_)) => Err(KeyError(format!(
            "the key is given twice, as a file and in {variable}: keep one"
        ))),
        (Some(path), None) => std::fs::read(path)
            .map(Some)
            .map_err(|e| KeyError(format!("cannot read the key file {}: {e}", path.display()))),
        (None, Some(value)) => Ok(Some(value.into_encoded_bytes())),
        (None, None) => Ok(None),
    }
}

/// Keys for tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    /// A fresh Ed25519 key pair in PEM: the private key (PKCS#8 v2, as ring makes it) and
    /// the public key.
    pub fn ed25519_pem() -> (String, String) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's random source works");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ring reads the key it made");
        let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        let private = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64(pkcs8.as_ref())
        );
        let mut spki = super::ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let public = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64(&spki)
        );
        (private, public)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::ed25519_pem;
    use super::*;

    /// What `openssl genpkey -algorithm ed25519` writes (PKCS#8 v1, no public key), with its
    /// public key from `openssl pkey -pubout` (RFC 8410's example key).
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----";
    const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----";

    #[test]
    fn ed25519_keys_in_openssl_pem_sign_and_verify() {
        let signing = SigningKey::parse(OPENSSL_PRIVATE.as_bytes()).unwrap();
        let verify = VerifyKey::parse(OPENSSL_PUBLIC.as_bytes()).unwrap();
        assert_eq!(signing.algorithm(), ED25519);
        let signature = signing.sign(b"content");
        assert!(verify.verify(b"content", &signature));
        assert!(!verify.verify(b"c0ntent", &signature));
        // the public key derived from the private one is the same
        let VerifyKey::Ed25519(derived) = signing.verify_key() else {
            panic!("not ed25519")
        };
        let VerifyKey::Ed25519(given) = verify else {
            panic!("not ed25519")
        };
        assert_eq!(derived, given);
    }

    #[test]
    fn another_ed25519_key_does_not_verify() {
        let (private, _) = ed25519_pem();
        let (_, other_public) = ed25519_pem();
        let signing = SigningKey::parse(private.as_bytes()).unwrap();
        let other = VerifyKey::parse(other_public.as_bytes()).unwrap();
        assert!(!other.verify(b"content", &signing.sign(b"content")));
    }

    #[test]
    fn hmac_secrets_sign_and_verify() {
        let secret = "0123456789abcdef0123456789abcdef";
        let signing = SigningKey::parse(format!("{secret}\n").as_bytes()).unwrap();
        let verify = VerifyKey::parse(secret.as_bytes()).unwrap();
        assert_eq!(verify.algorithm(), HMAC_SHA256);
        let signature = signing.sign(b"content");
        assert!(verify.verify(b"content", &signature));
        assert!(!verify.verify(b"content!", &signature));
        let other = VerifyKey::parse(b"fedcba9876543210fedcba9876543210").unwrap();
        assert!(!other.verify(b"content", &signature));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason_that_does_not_quote_them() {
        let secret = "short-s3cret";
        let err = SigningKey::parse(secret.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains(secret), "{err}");
        assert!(
            SigningKey::parse(b"  \n")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        // the wrong half of a pair
        let err = SigningKey::parse(OPENSSL_PUBLIC.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("cannot sign"), "{err}");
        let err = VerifyKey::parse(OPENSSL_PRIVATE.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("public key only"), "{err}");
        // broken PEM
        let broken = OPENSSL_PRIVATE.replace("MC4C", "!!!!");
        let err = SigningKey::parse(broken.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not base64"), "{err}");
        assert!(!err.contains("1bbY8fdp"), "{err}");
        let err =
            SigningKey::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .unwrap_err();
        assert!(err.to_string().contains("unsupported"), "{err}");
        // not Ed25519
        let err = VerifyKey::parse(
            b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an Ed25519"), "{err}");
        // keys are not shown
        let signing = SigningKey::parse(b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            format!("{signing:?}"),
            "SigningKey(hmac-sha256, <redacted>)"
        );
    }
}
