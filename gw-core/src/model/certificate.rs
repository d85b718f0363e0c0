//! The `Certificate` document: a TLS certificate chain and its private key. Runtimes serve
//! it on their HTTPS listeners for the server names it covers (chosen by SNI), and present it
//! to upstreams that ask for a client certificate (`spec.upstream.tls.clientCertificate`).
//! Its `Debug` output never shows the key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FieldError, Metadata, ModelError, default_groups, deserialize_document};

/// The `kind` of a certificate document.
pub const KIND_CERTIFICATE: &str = "Certificate";
/// The longest chain accepted (the certificate and its intermediates).
const MAX_CHAIN: usize = 10;
/// The largest PEM text accepted per field.
const MAX_PEM_BYTES: usize = 64 * 1024;

/// A certificate as deployed: `apiVersion`, `kind`, `metadata` and `spec`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, title = "gw certificate")]
pub struct CertificateDefinition {
    /// Always `gw/v1`.
    pub api_version: String,
    /// Always `Certificate`.
    pub kind: String,
    /// Identity and labels.
    pub metadata: Metadata,
    /// The certificate, its key and where it is served.
    pub spec: CertificateSpec,
}

/// The content of a certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct CertificateSpec {
    /// Gateway groups whose runtimes receive the certificate.
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    /// PEM: the certificate first, then its intermediates (at most 10 in all).
    pub certificate: String,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 RSA or SEC1 EC). The admin API
    /// never returns it.
    pub private_key: String,
    /// Server names the certificate is served for: exact names or `*.example.com` (one
    /// label). `*` also makes it the certificate for clients that send no server name or
    /// one no certificate covers. Default: the certificate's DNS names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<String>,
}

impl std::fmt::Debug for CertificateDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateDefinition")
            .field("name", &self.metadata.name)
            .field("groups", &self.spec.groups)
            .field("sni", &self.spec.sni)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key
        f.debug_struct("CertificateSpec")
            .field("groups", &self.groups)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// A certificate's PEM decoded: what TLS needs and what operators are shown.
pub struct ParsedCertificate {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's DNS names (subject alternative names), lower case.
    pub dns_names: Vec<String>,
    /// Start of validity, in seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The leaf's serial number, in hexadecimal.
    pub serial: String,
    /// The leaf's issuer, as a distinguished name.
    pub issuer: String,
}

impl std::fmt::Debug for ParsedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedCertificate")
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl CertificateDefinition {
    /// Deserializes, canonicalizes and validates a parsed document (see
    /// [`ApiDefinition::from_value_validated`](super::ApiDefinition::from_value_validated)).
    pub fn from_value_validated(value: &serde_json::Value) -> Result<Self, ModelError> {
        let (definition, mut errors) = deserialize_document::<Self>(value);
        let Some(mut definition) = definition else {
            return Err(ModelError::Invalid(errors));
        };
        definition.canonicalize();
        errors.extend(super::validate::validate_certificate(&definition));
        if errors.is_empty() {
            Ok(definition)
        } else {
            Err(ModelError::Invalid(errors))
        }
    }

    /// Server names lower case, without a trailing dot.
    pub fn canonicalize(&mut self) {
        for name in &mut self.spec.sni {
            *name = name.trim_end_matches('.').to_ascii_lowercase();
        }
    }

    /// Decodes the PEM fields and checks that the key belongs to the certificate.
    pub fn parse_pem(&self) -> Result<ParsedCertificate, Vec<FieldError>> {
        parse_pem(&self.spec.certificate, &self.spec.private_key)
    }

    /// The names the certificate is served for: `spec.sni`, or else its DNS names.
    pub fn server_names(&self, parsed: &ParsedCertificate) -> Vec<String> {
        if self.spec.sni.is_empty() {
            parsed.dns_names.clone()
        } else {
            self.spec.sni.clone()
        }
    }

    /// The definition as canonical JSON, the form stored and sent to runtimes.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The definition as JSON without its private key, as the admin API shows it.
    pub fn to_public_json(&self) -> serde_json::Value {
        let mut value = self.to_json();
        if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) {
            spec.remove("privateKey");
        }
        value
    }
}

/// Decodes a certificate chain and its key from PEM; errors name `spec.certificate` or
/// `spec.privateKey` and never quote the key.
pub fn parse_pem(
    certificate: &str,
    private_key: &str,
) -> Result<ParsedCertificate, Vec<FieldError>> {
    const CERT: &str = "spec.certificate";
    const KEY: &str = "spec.privateKey";
    let mut errors = Vec::new();
    if certificate.len() > MAX_PEM_BYTES {
        errors.push(FieldError::new(
            CERT,
            format!("longer than {MAX_PEM_BYTES} bytes"),
        ));
    }
    if private_key.len() > MAX_PEM_BYTES {
        errors.push(FieldError::new(
            KEY,
            format!("longer than {MAX_PEM_BYTES} bytes"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let chain: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(certificate.as_bytes()).collect();
    let chain = match chain {
        Ok(chain) if chain.is_empty() => {
            errors.push(FieldError::new(
                CERT,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
            Vec::new()
        }
        Ok(chain) if chain.len() > MAX_CHAIN => {
            errors.push(FieldError::new(
                CERT,
                format!(
                    "holds {} certificates; the limit is {MAX_CHAIN}",
                    chain.len()
                ),
            ));
            Vec::new()
        }
        Ok(chain) => chain,
        Err(err) => {
            errors.push(FieldError::new(
                CERT,
                format!("is not valid PEM: {}", super::messages::pem_error(&err)),
            ));
            Vec::new()
        }
    };
    let key = match PrivateKeyDer::from_pem_slice(private_key.as_bytes()) {
        Ok(key) => Some(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            errors.push(FieldError::new(
                KEY,
                "holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
            ));
            None
        }
        Err(_) => {
            // the parser's message could quote the key: say only what is wrong
            errors.push(FieldError::new(KEY, "is not a valid PEM private key"));
            None
        }
    };
    let leaf_info = describe_chain(&chain, &mut errors);
    if let (Some(key), Some(leaf)) = (&key, chain.first())
        && leaf_info.is_some()
    {
        let provider = rustls::crypto::ring::default_provider();
        match provider.key_provider.load_private_key(key.clone_key()) {
            Ok(signing) => {
                let certified = rustls::sign::CertifiedKey::new(vec![leaf.clone()], signing);
                if certified.keys_match().is_err() {
                    errors.push(FieldError::new(
                        KEY,
                        "does not belong to the certificate (the public keys differ)",
                    ));
                }
            }
            Err(_) => errors.push(FieldError::new(
                KEY,
                "is not a supported key (RSA of 2048 bits or more, ECDSA P-256 or P-384, or Ed25519)",
            )),
        }
    }
    match (errors.is_empty(), key, leaf_info) {
        (true, Some(key), Some((dns_names, not_before, not_after, serial, issuer))) => {
            Ok(ParsedCertificate {
                chain,
                key,
                dns_names,
                not_before,
                not_after,
                serial,
                issuer,
            })
        }
        _ => Err(errors),
    }
}

type LeafInfo = (Vec<String>, i64, i64, String, String);

/// The leaf's names, validity, serial and issuer, when every certificate of `chain` is
/// valid X.509; an error on `spec.certificate` for each one that is not.
#[cfg(feature = "tls")]
fn describe_chain(chain: &[CertificateDer<'_>], errors: &mut Vec<FieldError>) -> Option<LeafInfo> {
    let mut leaf_info = None;
    for (i, der) in chain.iter().enumerate() {
        match x509_parser::parse_x509_certificate(der.as_ref()) {
            Ok((_, cert)) if i == 0 => leaf_info = Some(describe(&cert)),
            Ok(_) => {}
            Err(err) => errors.push(FieldError::new(
                "spec.certificate",
                format!(
                    "certificate {} of the chain is not valid X.509: {}",
                    i + 1,
                    super::messages::x509_error(&err)
                ),
            )),
        }
    }
    leaf_info
}

/// Without the `tls` feature there is no X.509 parser: a certificate is refused.
#[cfg(not(feature = "tls"))]
fn describe_chain(chain: &[CertificateDer<'_>], errors: &mut Vec<FieldError>) -> Option<LeafInfo> {
    if !chain.is_empty() {
        errors.push(FieldError::new(
            "spec.certificate",
            "certificates are not supported by this build of gw (gw-core without its `tls` feature)",
        ));
    }
    None
}

#[cfg(feature = "tls")]
fn describe(cert: &x509_parser::certificate::X509Certificate<'_>) -> LeafInfo {
    use x509_parser::extensions::GeneralName;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                dns_names.push(dns.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    (
        dns_names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        cert.raw_serial_as_string().replace(':', ""),
        cert.issuer().to_string(),
    )
}
