//! Verification keys, each pinned to exactly one algorithm.
//!
//! Keys are parsed when a configuration is built (inline JWKS, PEM public keys, the shared
//! secret) or when a JWKS is fetched, never per request. A key's algorithm is the JWK's
//! `alg` or, without one, the only algorithm its type allows (RSA: RS256, EC P-256: ES256,
//! OKP Ed25519: EdDSA, oct: HS256); a token is only ever checked against keys of its own
//! header's `alg`, which is what makes `alg: none` and RS256/HS256 confusion impossible.
//! This module must not log key material.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey};
use schemars::JsonSchema;
use serde::Deserialize;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::{PublicKey, RSAPublicKey};
use x509_parser::x509::SubjectPublicKeyInfo;

/// The algorithms gw verifies. There is no `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// HMAC with SHA-256, with a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
}

impl JwtAlgorithm {
    /// The algorithm named `name` in a JOSE header or a JWK (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            "HS256" => Some(Self::Hs256),
            _ => None,
        }
    }

    /// The algorithm's name in a JOSE header (`RS256`, `EdDSA`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
        }
    }

    pub(crate) fn jsonwebtoken(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
            Self::Hs256 => Algorithm::HS256,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Rs256 => 1,
            Self::Es256 => 2,
            Self::EdDsa => 4,
            Self::Hs256 => 8,
        }
    }
}

/// A set of algorithms (the policy's `algorithms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AlgorithmSet(u8);

impl AlgorithmSet {
    pub(crate) fn contains(self, alg: JwtAlgorithm) -> bool {
        self.0 & alg.bit() != 0
    }
}

impl FromIterator<JwtAlgorithm> for AlgorithmSet {
    fn from_iter<I: IntoIterator<Item = JwtAlgorithm>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, alg| bits | alg.bit()))
    }
}

/// One verification key.
pub(crate) struct Key {
    /// The JWK's `kid` (or the `kid` given to a PEM key), if any.
    pub(crate) kid: Option<Box<str>>,
    /// The one algorithm this key verifies.
    pub(crate) alg: JwtAlgorithm,
    pub(crate) verifier: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Keys from one source (the params, or one JWKS fetch).
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Key>,
}

impl KeySet {
    /// Whether some key has `kid`.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Where a JWKS comes from: a symmetric (`oct`) key is only accepted inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Inline,
    Fetched,
}

/// The most keys taken from one JWKS.
pub(crate) const MAX_JWKS_KEYS: usize = 100;

/// The keys of a JWKS document (`{"keys": [...]}`), and a reason for each key that cannot
/// be used (by index). `algorithms`, when given, also refuses keys of other algorithms.
pub(crate) fn from_jwks(
    jwks: &serde_json::Value,
    origin: Origin,
    algorithms: Option<AlgorithmSet>,
) -> Result<(KeySet, Vec<(usize, String)>), String> {
    let Some(list) = jwks.get("keys").and_then(serde_json::Value::as_array) else {
        return Err("must be a JWKS: an object with a \"keys\" list".to_string());
    };
    if list.len() > MAX_JWKS_KEYS {
        return Err(format!("holds more than {MAX_JWKS_KEYS} keys"));
    }
    let mut set = KeySet::default();
    let mut problems = Vec::new();
    for (i, value) in list.iter().enumerate() {
        match from_jwk(value, origin) {
            Ok(key) if algorithms.is_some_and(|a| !a.contains(key.alg)) => problems.push((
                i,
                format!("is an {} key, not in algorithms", key.alg.as_str()),
            )),
            Ok(key) => set.keys.push(key),
            Err(reason) => problems.push((i, reason)),
        }
    }
    Ok((set, problems))
}

/// The fields of a JWK that gw reads.
#[derive(Deserialize)]
struct Jwk<'a> {
    #[serde(borrow)]
    kty: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(default, rename = "use", borrow)]
    usage: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    key_ops: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    crv: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    n: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    e: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    x: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    y: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    k: Option<Cow<'a, str>>,
}

fn from_jwk(value: &serde_json::Value, origin: Origin) -> Result<Key, String> {
    let jwk = Jwk::deserialize(value).map_err(|e| format!("is not a JWK: {e}"))?;
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Err("is not a signing key (use)".to_string());
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return Err("is not a verification key (key_ops)".to_string());
    }
    let bytes = |name: &str, field: &Option<Cow<'_, str>>| -> Result<Vec<u8>, String> {
        let text = field
            .as_deref()
            .ok_or_else(|| format!("lacks \"{name}\""))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    let (inferred, key) = match (&*jwk.kty, jwk.crv.as_deref()) {
        ("RSA", _) => (
            JwtAlgorithm::Rs256,
            rsa_key(&bytes("n", &jwk.n)?, &bytes("e", &jwk.e)?)?,
        ),
        ("EC", Some("P-256")) => {
            let (x, y) = (bytes("x", &jwk.x)?, bytes("y", &jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("is not a P-256 point".to_string());
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (JwtAlgorithm::Es256, DecodingKey::from_ec_der(&point))
        }
        ("OKP", Some("Ed25519")) => {
            let x = bytes("x", &jwk.x)?;
            if x.len() != 32 {
                return Err("is not an Ed25519 public key".to_string());
            }
            (JwtAlgorithm::EdDsa, DecodingKey::from_ed_der(&x))
        }
        ("oct", _) if origin == Origin::Fetched => {
            return Err("is a symmetric key, which gw does not take from a URL".to_string());
        }
        ("oct", _) => (JwtAlgorithm::Hs256, secret_key(&bytes("k", &jwk.k)?)?),
        ("EC" | "OKP", crv) => {
            return Err(format!(
                "has curve {:?}, which gw does not support",
                crv.unwrap_or("")
            ));
        }
        (kty, _) => return Err(format!("has key type {kty:?}, which gw does not support")),
    };
    let alg = match jwk.alg.as_deref() {
        None => inferred,
        Some(name) => match JwtAlgorithm::from_name(name) {
            Some(alg) if alg == inferred => alg,
            Some(alg) => {
                return Err(format!(
                    "declares alg {} for a key of type {}",
                    alg.as_str(),
                    jwk.kty
                ));
            }
            None => return Err(format!("has alg {name:?}, which gw does not support")),
        },
    };
    Ok(Key {
        kid: jwk.kid.map(|kid| kid.into_owned().into_boxed_str()),
        alg,
        verifier: key,
    })
}

/// An RSA public key of 2048 to 4096 bits with a sane exponent.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    if !(256..=512).contains(&n.len()) {
        return Err("is an RSA key outside 2048 to 4096 bits".to_string());
    }
    let exponent = if e.len() <= 8 {
        let mut buf = [0u8; 8];
        buf[8 - e.len()..].copy_from_slice(e);
        u64::from_be_bytes(buf)
    } else {
        0
    };
    if exponent < 3 || exponent.is_multiple_of(2) {
        return Err("has an invalid RSA exponent".to_string());
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The shortest HS256 secret accepted, in bytes (RFC 7518, section 3.2).
pub(crate) const MIN_SECRET: usize = 32;

fn secret_key(secret: &[u8]) -> Result<DecodingKey, String> {
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "is shorter than {MIN_SECRET} bytes, too short for HS256"
        ));
    }
    Ok(DecodingKey::from_secret(secret))
}

/// The HS256 key of the `secret` param: base64 (standard or URL-safe, padded or not).
pub(crate) fn from_secret(secret: &str) -> Result<Key, String> {
    let text = secret.trim().trim_end_matches('=');
    let decoded = STANDARD_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| "is not base64".to_string())?;
    Ok(Key {
        kid: None,
        alg: JwtAlgorithm::Hs256,
        verifier: secret_key(&decoded)?,
    })
}

/// The key of a PEM public key (`PUBLIC KEY`, `RSA PUBLIC KEY` or a `CERTIFICATE`), which
/// must be a key for `alg`.
pub(crate) fn from_pem(pem: &str, alg: JwtAlgorithm, kid: Option<&str>) -> Result<Key, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.trim_start().as_bytes())
        .map_err(|_| "is not PEM".to_string())?;
    let key = match block.label.as_str() {
        "PUBLIC KEY" => {
            let (_, spki) = SubjectPublicKeyInfo::from_der(&block.contents)
                .map_err(|_| "is not a valid public key".to_string())?;
            spki_key(&spki, alg)?
        }
        "CERTIFICATE" => {
            let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
                .map_err(|_| "is not a valid certificate".to_string())?;
            spki_key(cert.public_key(), alg)?
        }
        "RSA PUBLIC KEY" => {
            let (_, rsa) = RSAPublicKey::from_der(&block.contents)
                .map_err(|_| "is not a valid RSA public key".to_string())?;
            expect(alg, JwtAlgorithm::Rs256, "an RSA key")?;
            rsa_key(rsa.modulus, rsa.exponent)?
        }
        label if label.contains("PRIVATE") => {
            return Err("is a private key: give the public key".to_string());
        }
        label => {
            return Err(format!(
                "is a {label:?} block, not PUBLIC KEY or CERTIFICATE"
            ));
        }
    };
    Ok(Key {
        kid: kid.map(Into::into),
        alg,
        verifier: key,
    })
}

fn expect(alg: JwtAlgorithm, wanted: JwtAlgorithm, what: &str) -> Result<(), String> {
    if alg == wanted {
        Ok(())
    } else {
        Err(format!(
            "is {what}, which verifies {}, not {}",
            wanted.as_str(),
            alg.as_str()
        ))
    }
}

fn spki_key(spki: &SubjectPublicKeyInfo<'_>, alg: JwtAlgorithm) -> Result<DecodingKey, String> {
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        expect(alg, JwtAlgorithm::Rs256, "an RSA key")?;
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa_key(rsa.modulus, rsa.exponent),
            _ => Err("is not a valid RSA public key".to_string()),
        }
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let p256 = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256);
        if !p256 {
            return Err("is an EC key on a curve other than P-256".to_string());
        }
        expect(alg, JwtAlgorithm::Es256, "a P-256 key")?;
        let point = &spki.subject_public_key.data;
        match (point.len(), point.first()) {
            (65, Some(0x04)) | (33, Some(0x02 | 0x03)) => Ok(DecodingKey::from_ec_der(point)),
            _ => Err("is not a valid P-256 point".to_string()),
        }
    } else if *oid == OID_SIG_ED25519 {
        expect(alg, JwtAlgorithm::EdDsa, "an Ed25519 key")?;
        let raw = &spki.subject_public_key.data;
        if raw.len() == 32 {
            Ok(DecodingKey::from_ed_der(raw))
        } else {
            Err("is not a valid Ed25519 public key".to_string())
        }
    } else {
        Err("is a key of a type gw does not support".to_string())
    }
}
