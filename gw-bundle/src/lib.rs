//! Signed fallback bundles: a gateway group's whole configuration, exported by controllers
//! to a directory or to S3-compatible object storage, so that a runtime that starts with no
//! last-known-good cache while no controller answers can still serve.
//!
//! - this module: the bundle's content ([`Bundle`]) and its signed encoding ([`seal`],
//!   [`open`]);
//! - [`key`]: the signing and verification keys (Ed25519 or HMAC-SHA256);
//! - [`storage`]: where bundles live ([`storage::BundleTarget`]: a directory or S3), their
//!   names, listing and pruning.
//!
//! A bundle is one file: a header line, then the content, a JSON document. The signature
//! covers the content's exact bytes:
//!
//! ```text
//! gw-bundle 1 <algorithm> <content length> <signature, base64>
//! {"format":1,"group":"default","storeId":"…","revision":42,"createdAt":"…","createdBy":"…",
//!  "kinds":["api","certificate","consumer"],"resources":[{"kind":"api","name":"…","revision":41,"definition":{…}}]}
//! ```
//!
//! The content carries what a runtime's sync stream would carry in a Snapshot: canonical
//! definitions, consumers sealed (keys and passwords as hashes only). Certificates carry their
//! private keys, as on the sync stream and in the runtime's cache: the storage must be
//! private to the gateway's operators.
//!
//! This crate never touches the database, and [`open`] trusts nothing it has not verified.
#![warn(missing_docs)]

pub mod key;
pub mod storage;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use gw_sync::proto::Resource;
use serde::{Deserialize, Serialize};

pub use key::{KeyError, SigningKey, VerifyKey};

/// The first word of a bundle's header line.
pub const MAGIC: &str = "gw-bundle";
/// The version of the format this crate reads and writes.
pub const FORMAT: u32 = 1;
/// The largest bundle written or read (a runtime's sync stream accepts as much).
pub const MAX_BYTES: usize = gw_sync::MAX_MESSAGE_BYTES;

/// A group's configuration at a revision, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: u32,
    /// The gateway group.
    pub group: String,
    /// The store the revision belongs to; a runtime that loads the bundle resumes from it
    /// with a delta when a controller of that store answers.
    pub store_id: String,
    /// The revision of the configuration.
    pub revision: i64,
    /// When the bundle was made.
    pub created_at: DateTime<Utc>,
    /// The controller that made it.
    pub created_by: String,
    /// The resource kinds the bundle holds every one of.
    pub kinds: Vec<String>,
    /// The group's resources, sorted by kind and name.
    pub resources: Vec<BundleResource>,
}

/// One resource of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleResource {
    /// `api`, `certificate` or `consumer`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The revision of its last change.
    pub revision: i64,
    /// The canonical definition.
    pub definition: serde_json::Value,
}

impl BundleResource {
    /// From a resource as the sync protocol carries it.
    pub fn from_resource(resource: &Resource) -> Result<Self, BundleError> {
        let definition = serde_json::from_slice(&resource.body).map_err(|e| {
            BundleError::Malformed(format!(
                "{} {:?} is not JSON: {e}",
                resource.kind, resource.name
            ))
        })?;
        Ok(Self {
            kind: resource.kind.clone(),
            name: resource.name.clone(),
            revision: resource.revision,
            definition,
        })
    }

    /// As the sync protocol carries it.
    pub fn to_resource(&self) -> Resource {
        Resource {
            kind: self.kind.clone(),
            name: self.name.clone(),
            revision: self.revision,
            body: self.definition.to_string().into_bytes(),
        }
    }
}

/// Why a bundle could not be made, stored, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with a bundle header: an unsigned file.
    #[error("not a signed gw bundle (no '{MAGIC}' header line)")]
    Unsigned,
    /// The header or the content is not what this version writes.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// The content is shorter or longer than the header says.
    #[error("truncated bundle: the header announces {expected} bytes of content, {found} follow")]
    Truncated {
        /// Bytes announced.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// Signed with another scheme than the verification key's.
    #[error("the bundle is signed with {bundle}, the verification key is {key}")]
    Algorithm {
        /// The bundle's scheme.
        bundle: String,
        /// The key's scheme.
        key: &'static str,
    },
    /// The signature does not match the content.
    #[error("bad signature: the content was changed, or signed with another key")]
    BadSignature,
    /// Larger than [`MAX_BYTES`].
    #[error("the bundle is {0} bytes, over the limit of {MAX_BYTES}")]
    TooLarge(u64),
    /// Grew past [`MAX_BYTES`] while it was read.
    #[error("the bundle grew past the limit of {MAX_BYTES} bytes while it was read")]
    Grew,
    /// A directory operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An object storage operation failed.
    #[error("{what} {location}: {source}")]
    ObjectStore {
        /// What was being done.
        what: &'static str,
        /// The object or prefix.
        location: String,
        /// The cause, summed up: never the response body (an S3 error body can carry the
        /// access key id, the canonical request and a session token).
        #[source]
        source: storage::StoreFailure,
    },
    /// The storage location is not usable.
    #[error("invalid bundle location: {0}")]
    Location(String),
}

impl BundleError {
    /// Whether the object storage could not be reached or did not answer in time (a
    /// connection refused or reset, a timeout): the next request to it would most likely
    /// fail the same way.
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::ObjectStore { source, .. } if source.transport)
    }
}

impl Bundle {
    /// A bundle of `resources` (a group's snapshot) made now by `created_by`.
    pub fn new(
        group: &str,
        store_id: &str,
        revision: i64,
        created_by: &str,
        kinds: &[&str],
        resources: &[Resource],
    ) -> Result<Self, BundleError> {
        let mut resources = resources
            .iter()
            .map(BundleResource::from_resource)
            .collect::<Result<Vec<_>, _>>()?;
        resources.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        Ok(Self {
            format: FORMAT,
            group: group.to_string(),
            store_id: store_id.to_string(),
            revision,
            created_at: Utc::now(),
            created_by: created_by.to_string(),
            kinds: kinds.iter().map(ToString::to_string).collect(),
            resources,
        })
    }

    /// The resources as the sync protocol carries them.
    pub fn to_resources(&self) -> Vec<Resource> {
        self.resources
            .iter()
            .map(BundleResource::to_resource)
            .collect()
    }
}

/// Encodes `bundle` and signs it with `key`: the bytes of a bundle file.
pub fn seal(bundle: &Bundle, key: &SigningKey) -> Result<Vec<u8>, BundleError> {
    let content = serde_json::to_vec(bundle)
        .map_err(|e| BundleError::Malformed(format!("cannot encode: {e}")))?;
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&content));
    let mut out = format!(
        "{MAGIC} {FORMAT} {} {} {signature}\n",
        key.algorithm(),
        content.len()
    )
    .into_bytes();
    out.extend_from_slice(&content);
    if out.len() > MAX_BYTES {
        return Err(BundleError::TooLarge(
            u64::try_from(out.len()).unwrap_or(u64::MAX),
        ));
    }
    Ok(out)
}

/// Checks the signature of a bundle file with `key`, then decodes its content. Nothing in
/// the content is read before the signature is checked.
pub fn open(bytes: &[u8], key: &VerifyKey) -> Result<Bundle, BundleError> {
    if bytes.len() > MAX_BYTES {
        return Err(BundleError::TooLarge(
            u64::try_from(bytes.len()).unwrap_or(u64::MAX),
        ));
    }
    if !bytes.starts_with(format!("{MAGIC} ").as_bytes()) {
        return Err(BundleError::Unsigned);
    }
    let newline = bytes
        .iter()
        .take(1024)
        .position(|&b| b == b'\n')
        .ok_or_else(|| BundleError::Malformed("the header line does not end".into()))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| BundleError::Malformed("the header is not text".into()))?;
    let content = &bytes[newline + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [_, format, algorithm, length, signature] = fields[..] else {
        return Err(BundleError::Malformed(format!(
            "the header has {} fields, not 5",
            fields.len()
        )));
    };
    if format != FORMAT.to_string() {
        return Err(BundleError::Malformed(format!(
            "format {format:?}; this version reads format {FORMAT}"
        )));
    }
    if algorithm != key.algorithm() {
        return Err(BundleError::Algorithm {
            bundle: algorithm.chars().take(32).collect(),
            key: key.algorithm(),
        });
    }
    let expected: usize = length
        .parse()
        .map_err(|_| BundleError::Malformed("the content length is not a number".into()))?;
    if expected != content.len() {
        return Err(BundleError::Truncated {
            expected,
            found: content.len(),
        });
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| BundleError::Malformed("the signature is not base64".into()))?;
    if !key.verify(content, &signature) {
        return Err(BundleError::BadSignature);
    }
    let bundle: Bundle = serde_json::from_slice(content)
        .map_err(|e| BundleError::Malformed(format!("undecodable content: {e}")))?;
    if bundle.format != FORMAT {
        return Err(BundleError::Malformed(format!(
            "content format {}; this version reads format {FORMAT}",
            bundle.format
        )));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn bundle() -> Bundle {
        let resource = |kind: &str, name: &str, revision| Resource {
            kind: kind.into(),
            name: name.into(),
            revision,
            body: format!(r#"{{"metadata":{{"name":"{name}"}}}}"#).into_bytes(),
        };
        Bundle::new(
            "edge",
            "store-1",
            42,
            "controller-a",
            &["api", "consumer"],
            &[
                resource("consumer", "alice", 40),
                resource("api", "items", 41),
            ],
        )
        .unwrap()
    }

    fn keys() -> Vec<(SigningKey, VerifyKey)> {
        let (private, public) = key::testing::ed25519_pem();
        vec![
            (
                SigningKey::parse(private.as_bytes()).unwrap(),
                VerifyKey::parse(public.as_bytes()).unwrap(),
            ),
            (
                SigningKey::parse(SECRET).unwrap(),
                VerifyKey::parse(SECRET).unwrap(),
            ),
        ]
    }

    #[test]
    fn a_sealed_bundle_opens_with_the_matching_key() {
        for (signing, verify) in keys() {
            let sealed = seal(&bundle(), &signing).unwrap();
            let opened = open(&sealed, &verify).unwrap();
            assert_eq!(opened, bundle_with_time(&opened));
            assert_eq!(opened.resources[0].name, "items", "sorted by kind and name");
            let resources = opened.to_resources();
            assert_eq!(resources[1].kind, "consumer");
            assert_eq!(resources[1].body, br#"{"metadata":{"name":"alice"}}"#);
        }
    }

    /// `bundle()` with the creation time of `other`.
    fn bundle_with_time(other: &Bundle) -> Bundle {
        Bundle {
            created_at: other.created_at,
            ..bundle()
        }
    }

    #[test]
    fn a_tampered_bundle_is_refused() {
        for (signing, verify) in keys() {
            let sealed = seal(&bundle(), &signing).unwrap();
            let text = String::from_utf8(sealed.clone()).unwrap();
            // same length, another revision
            let tampered = text.replace("\"revision\":42", "\"revision\":99");
            assert_ne!(tampered, text);
            assert!(matches!(
                open(tampered.as_bytes(), &verify),
                Err(BundleError::BadSignature)
            ));
            // one bit of the content
            let mut flipped = sealed.clone();
            let last = flipped.len() - 2;
            flipped[last] ^= 0x01;
            assert!(matches!(
                open(&flipped, &verify),
                Err(BundleError::BadSignature)
            ));
            // the signature itself
            let (header, content) = text.split_once('\n').unwrap();
            let (rest, signature) = header.rsplit_once(' ').unwrap();
            let other = if signature.starts_with('A') { "B" } else { "A" };
            let forged = format!("{rest} {other}{}\n{content}", &signature[1..]);
            assert!(matches!(
                open(forged.as_bytes(), &verify),
                Err(BundleError::BadSignature)
            ));
        }
    }

    #[test]
    fn another_key_is_refused() {
        let sealed = seal(&bundle(), &SigningKey::parse(SECRET).unwrap()).unwrap();
        let other = VerifyKey::parse(b"another-secret-of-32-bytes-or-more").unwrap();
        assert!(matches!(
            open(&sealed, &other),
            Err(BundleError::BadSignature)
        ));
        // an Ed25519 key does not accept an HMAC bundle, whatever its signature
        let (_, public) = key::testing::ed25519_pem();
        let err = open(&sealed, &VerifyKey::parse(public.as_bytes()).unwrap()).unwrap_err();
        assert!(matches!(err, BundleError::Algorithm { .. }), "{err}");
        assert!(err.to_string().contains("hmac-sha256"), "{err}");
    }

    #[test]
    fn unsigned_truncated_and_malformed_bundles_are_refused() {
        let verify = VerifyKey::parse(SECRET).unwrap();
        let signing = SigningKey::parse(SECRET).unwrap();
        // the bare content: unsigned
        let content = serde_json::to_vec(&bundle()).unwrap();
        assert!(matches!(
            open(&content, &verify),
            Err(BundleError::Unsigned)
        ));
        assert!(matches!(open(b"", &verify), Err(BundleError::Unsigned)));
        // a header without a signature
        let mut unsigned = format!("{MAGIC} 1 hmac-sha256 {}\n", content.len()).into_bytes();
        unsigned.extend_from_slice(&content);
        assert!(matches!(
            open(&unsigned, &verify),
            Err(BundleError::Malformed(_))
        ));
        // truncated anywhere
        let sealed = seal(&bundle(), &signing).unwrap();
        for cut in [sealed.len() - 1, sealed.len() / 2, 20, 10] {
            let err = open(&sealed[..cut], &verify).unwrap_err();
            assert!(
                matches!(
                    err,
                    BundleError::Truncated { .. }
                        | BundleError::Malformed(_)
                        | BundleError::Unsigned
                ),
                "cut at {cut}: {err}"
            );
        }
        // bytes appended
        let mut longer = sealed.clone();
        longer.extend_from_slice(b"\n");
        assert!(matches!(
            open(&longer, &verify),
            Err(BundleError::Truncated { .. })
        ));
        // another format version
        let text = String::from_utf8(sealed).unwrap();
        let future = text.replacen("gw-bundle 1 ", "gw-bundle 2 ", 1);
        let err = open(future.as_bytes(), &verify).unwrap_err();
        assert!(err.to_string().contains("format \"2\""), "{err}");
        // signed, but not a bundle's content
        let garbage = b"[1, 2, 3]";
        let signature = base64::engine::general_purpose::STANDARD.encode(signing.sign(garbage));
        let mut signed_garbage =
            format!("{MAGIC} 1 hmac-sha256 {} {signature}\n", garbage.len()).into_bytes();
        signed_garbage.extend_from_slice(garbage);
        let err = open(&signed_garbage, &verify).unwrap_err();
        assert!(err.to_string().contains("undecodable content"), "{err}");
    }
}
