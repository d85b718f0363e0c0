//! The cluster's own PKI for the sync channel: the internal CA that the controllers of a
//! cluster share, the certificates it issues, and the identity a runtime's certificate
//! carries.
//!
//! - The **cluster CA** ([`ClusterCa`]) is an ECDSA P-256 key and a self-signed CA
//!   certificate (path length 0: it signs leaves only). The controllers keep it in their
//!   database, the key sealed; the first controller makes it and the others load it.
//! - A controller serves sync with a **server certificate** the CA issues for its advertised
//!   names ([`ClusterCa::issue_server`]).
//! - A runtime makes its key pair itself and sends a certificate signing request; the CA
//!   takes only the request's public key from it and issues a short-lived **client
//!   certificate** whose identity the controller decides ([`ClusterCa::sign_runtime`]): the
//!   node id and the group, as the URI `urn:gw:runtime:<group>:<node-id>` in its subject
//!   alternative names ([`RuntimeIdentity`]). What the request asks for is ignored, so a
//!   runtime cannot name itself another node or another group.
//! - A runtime that has never met the cluster checks the controller against the
//!   [`CaHash`] that its enrollment token carries (the SHA-256 of the CA's public key, as
//!   kubeadm's discovery hash): it trusts the controller from the first byte, with no CA file
//!   to copy around.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest, Sha256};

use crate::{validate_group, validate_node_id};

/// How long the cluster CA is valid: ten years. Rotating it is a deliberate act.
const CA_LIFETIME: Duration = Duration::from_hours(10 * 365 * 24);

/// How far back a certificate's validity starts, for clocks a little behind the issuer's.
const BACKDATE: Duration = Duration::from_mins(5);

/// The prefix of a runtime's identity URI.
const RUNTIME_URI: &str = "urn:gw:runtime:";

/// What went wrong with a certificate, a key or a request.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A PEM or DER input that does not read as what it should be.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was read (`certificate signing request`, `CA certificate`).
        what: &'static str,
        /// Why it does not read.
        reason: String,
    },
    /// A certificate that carries no runtime identity, or a malformed one.
    #[error("the certificate names no runtime: {0}")]
    NoIdentity(String),
    /// Making or signing a certificate failed.
    #[error("cannot issue the certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

fn invalid(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |err| PkiError::Invalid {
        what,
        reason: err.to_string(),
    }
}

/// Reads a DER certificate.
fn parse_certificate<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|err| PkiError::Invalid {
            what,
            reason: err.to_string(),
        })
}

/// A certificate and its private key, both PEM, as issued.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The SHA-256 of a CA's public key (its DER `SubjectPublicKeyInfo`): what an enrollment
/// token carries so that a runtime knows the cluster's CA before it has seen it. Written
/// `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaHash([u8; 32]);

impl CaHash {
    /// The hash of a public key given as its DER `SubjectPublicKeyInfo`.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// The hash of the public key of a DER certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_certificate(cert_der, "certificate")?;
        Ok(Self::of_spki(cert.tbs_certificate.subject_pki.raw))
    }
}

impl fmt::Display for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CaHash {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::Invalid {
            what: "CA hash",
            reason: format!("{reason}; expected sha256: and 64 hex digits"),
        };
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("no sha256: prefix"))?;
        if hex.len() != 64 {
            return Err(bad(&format!("{} hex digits", hex.len())));
        }
        let mut hash = [0u8; 32];
        for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad("not hex"))?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad("not hex"))?;
        }
        Ok(Self(hash))
    }
}

/// Who a runtime is, as its client certificate says: the node id it must give in its Hello
/// and the one gateway group it may be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeIdentity {
    /// The group it serves.
    pub group: String,
    /// Its node id.
    pub node_id: String,
}

impl RuntimeIdentity {
    /// An identity whose names hold by the protocol's rules.
    pub fn new(group: &str, node_id: &str) -> Result<Self, PkiError> {
        validate_group(group).map_err(|err| PkiError::NoIdentity(format!("group {err}")))?;
        validate_node_id(node_id).map_err(PkiError::NoIdentity)?;
        Ok(Self {
            group: group.to_string(),
            node_id: node_id.to_string(),
        })
    }

    /// The URI that names it in a certificate.
    pub fn uri(&self) -> String {
        format!("{RUNTIME_URI}{}:{}", self.group, self.node_id)
    }

    /// Reads the identity from a URI of [`RuntimeIdentity::uri`]'s form.
    pub fn from_uri(uri: &str) -> Result<Self, PkiError> {
        let rest = uri
            .strip_prefix(RUNTIME_URI)
            .ok_or_else(|| PkiError::NoIdentity(format!("{uri:?} is not a runtime URI")))?;
        // a group has no ':', a node id may
        let (group, node_id) = rest
            .split_once(':')
            .ok_or_else(|| PkiError::NoIdentity(format!("{uri:?} names no node")))?;
        Self::new(group, node_id)
    }

    /// The identity in a DER certificate: its one runtime URI among its subject alternative
    /// names. A certificate with none, or with more than one, names no runtime.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_certificate(cert_der, "certificate")?;
        let names = cert
            .subject_alternative_name()
            .map_err(|err| PkiError::NoIdentity(err.to_string()))?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let mut uris = names.iter().filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(RUNTIME_URI) => {
                Some(*uri)
            }
            _ => None,
        });
        match (uris.next(), uris.next()) {
            (Some(uri), None) => Self::from_uri(uri),
            (None, _) => Err(PkiError::NoIdentity("no runtime URI".to_string())),
            (Some(_), Some(_)) => Err(PkiError::NoIdentity(
                "more than one runtime URI".to_string(),
            )),
        }
    }
}

/// What a controller records of a certificate it issued, and what a runtime reads of its
/// own: the serial number (lowercase hex, as its DER bytes), to tell a current certificate
/// from a superseded or revoked one, and the validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The start of its validity.
    pub not_before: SystemTime,
    /// The end of its validity.
    pub not_after: SystemTime,
}

impl CertFacts {
    /// The facts of a DER certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PkiError> {
        use std::fmt::Write as _;
        let cert = parse_certificate(cert_der, "certificate")?;
        let serial = cert
            .tbs_certificate
            .raw_serial()
            .iter()
            .fold(String::new(), |mut text, b| {
                let _ = write!(text, "{b:02x}");
                text
            });
        let at =
            |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs());
        Ok(Self {
            serial,
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        })
    }

    /// When a certificate of the cluster CA should be renewed: two thirds into the life it
    /// was issued for (its validity starts five minutes before it was issued, for clocks a
    /// little behind, and that margin is not counted).
    pub fn renew_after(&self) -> SystemTime {
        self.issued_at() + self.lifetime() * 2 / 3
    }

    /// When a certificate of the cluster CA was issued: five minutes after the start of its
    /// validity.
    pub fn issued_at(&self) -> SystemTime {
        (self.not_before + BACKDATE).min(self.not_after)
    }

    /// How long a certificate of the cluster CA was issued for (from [`CertFacts::issued_at`]).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.issued_at())
            .unwrap_or_default()
    }
}

/// The cluster's internal CA.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

/// `when` as the certificate time type.
fn cert_time(when: SystemTime) -> time::OffsetDateTime {
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Parameters valid from a little before `now` for `lifetime`, with a random serial.
fn params_from(now: SystemTime, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = cert_time(now.checked_sub(BACKDATE).unwrap_or(now));
    // a lifetime past the end of time ends there
    params.not_after = now
        .checked_add(lifetime)
        .map_or_else(|| rcgen::date_time_ymd(9999, 12, 31), cert_time);
    let mut serial: [u8; 16] = rand::random();
    // a positive integer of at most 16 bytes
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

impl ClusterCa {
    /// Makes a new CA, valid from `now` for ten years. Its name carries a random id, so that
    /// two clusters' CAs are told apart in a certificate chain.
    pub fn generate(now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = params_from(now, CA_LIFETIME);
        let id: [u8; 4] = rand::random();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!(
                "gw cluster CA {:02x}{:02x}{:02x}{:02x}",
                id[0], id[1], id[2], id[3]
            ),
        );
        name.push(DnType::OrganizationName, "gw");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key (PEM), as stored.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(invalid("CA private key"))?;
        let cert_der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|err| PkiError::Invalid {
                what: "CA certificate",
                reason: err.to_string(),
            })?;
        let parsed = parse_certificate(&cert_der, "CA certificate")?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::Invalid {
                what: "CA private key",
                reason: "it is not the key of the CA certificate".to_string(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(invalid("CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der: cert_der.to_vec(),
            issuer,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA's private key (PKCS#8 PEM), to be stored sealed.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The hash of the CA's public key, for enrollment tokens.
    pub fn hash(&self) -> CaHash {
        CaHash::of_spki(&self.issuer.key().subject_public_key_info())
    }

    /// Issues a controller's sync server certificate, with a key of its own, for `names`
    /// (DNS names and IP addresses), valid from `now` for `lifetime`.
    pub fn issue_server(
        &self,
        names: &[String],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = params_from(now, lifetime);
        let mut subject = DistinguishedName::new();
        subject.push(
            DnType::CommonName,
            names.first().map_or("gw-controller", String::as_str),
        );
        params.distinguished_name = subject;
        params.subject_alt_names =
            names
                .iter()
                .map(|name| match name.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => name.as_str().try_into().map(SanType::DnsName).map_err(
                        |err: rcgen::Error| PkiError::Invalid {
                            what: "server name",
                            reason: format!("{name:?}: {err}"),
                        },
                    ),
                })
                .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a runtime's client certificate for the public key of `csr_pem` (whose
    /// signature must hold), naming `identity`, valid from `now` for `lifetime`. Everything
    /// else the request asks for (names, extensions) is ignored.
    pub fn sign_runtime(
        &self,
        csr_pem: &str,
        identity: &RuntimeIdentity,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(invalid("certificate signing request"))?;
        let mut params = params_from(now, lifetime);
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, identity.node_id.as_str());
        subject.push(DnType::OrganizationalUnitName, identity.group.as_str());
        params.distinguished_name = subject;
        let uri = identity
            .uri()
            .try_into()
            .map_err(|err: rcgen::Error| PkiError::NoIdentity(err.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }
}

/// Whether `name` can be a DNS name in a certificate.
pub fn is_dns_name(name: &str) -> bool {
    rustls::pki_types::DnsName::try_from(name).is_ok()
}

/// Checks that a certificate signing request reads and its signature holds, before
/// anything is done for it.
pub fn check_request(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(invalid("certificate signing request"))
}

/// A runtime's new key pair and a certificate signing request for it (both PEM). The
/// request's contents beyond its key do not matter: the controller decides the identity.
pub fn runtime_key_and_request(node_id: &str) -> Result<Issued, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, node_id);
    params.distinguished_name = subject;
    let request = params.serialize_request(&key)?;
    Ok(Issued {
        cert_pem: request.pem()?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};

    use super::*;

    const DAY: Duration = Duration::from_hours(24);

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// Verifies `leaf` under `ca` at `at` for `usage`, as rustls does; the certificate for
    /// a further name check.
    fn verify<'a>(
        ca: &ClusterCa,
        leaf: &'a CertificateDer<'a>,
        at: SystemTime,
        usage: webpki::KeyUsage,
    ) -> Result<webpki::EndEntityCert<'a>, String> {
        let ca_der = CertificateDer::from(ca.cert_der());
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).map_err(|err| err.to_string())?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|err| err.to_string())?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap()),
            usage,
            None,
            None,
        )
        .map_err(|err| err.to_string())?;
        Ok(cert)
    }

    fn verify_client(ca: &ClusterCa, leaf: &[u8], at: SystemTime) -> Result<(), String> {
        verify(
            ca,
            &CertificateDer::from(leaf),
            at,
            webpki::KeyUsage::client_auth(),
        )
        .map(|_| ())
    }

    #[test]
    fn a_runtime_certificate_names_what_the_controller_decided() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let request = runtime_key_and_request("someone-else").unwrap();
        let identity = RuntimeIdentity::new("edge", "rt-1.eu:7").unwrap();
        let cert = ca
            .sign_runtime(&request.cert_pem, &identity, now, DAY)
            .unwrap();
        let cert = der(&cert);
        // the identity is the controller's, not the request's common name
        assert_eq!(RuntimeIdentity::of_certificate(&cert).unwrap(), identity);
        verify_client(&ca, &cert, now).unwrap();
        // a day later it has expired; another cluster's CA never accepts it
        let err = verify_client(&ca, &cert, now + DAY + Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("Expired"), "{err}");
        let other = ClusterCa::generate(now).unwrap();
        assert!(verify_client(&other, &cert, now).is_err());
    }

    #[test]
    fn a_certificate_s_facts_are_its_serial_and_the_life_it_was_issued_for() {
        // whole seconds: a certificate's times have no fraction
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let ca = ClusterCa::generate(now).unwrap();
        let request = runtime_key_and_request("rt-1").unwrap();
        let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
        let lifetime = Duration::from_secs(30);
        let first = der(&ca
            .sign_runtime(&request.cert_pem, &identity, now, lifetime)
            .unwrap());
        let facts = CertFacts::of_certificate(&first).unwrap();
        assert_eq!(facts.not_before, now - BACKDATE);
        assert_eq!(facts.not_after, now + lifetime);
        // renewed two thirds into the 30 s it was issued for, not into its backdated validity
        assert_eq!(facts.renew_after(), now + Duration::from_secs(20));
        assert!(!facts.serial.is_empty() && facts.serial.bytes().all(|b| b.is_ascii_hexdigit()));
        // every certificate has its own serial
        let second = der(&ca
            .sign_runtime(&request.cert_pem, &identity, now, lifetime)
            .unwrap());
        assert_ne!(
            CertFacts::of_certificate(&second).unwrap().serial,
            facts.serial
        );
        // a request that does not read is refused before anything is done for it
        assert!(check_request(&request.cert_pem).is_ok());
        assert!(check_request("not a request").is_err());
    }

    #[test]
    fn a_request_whose_signature_fails_is_refused() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let request = runtime_key_and_request("rt-1").unwrap();
        let mut bytes = CertificateSigningRequestDer::from_pem_slice(request.cert_pem.as_bytes())
            .unwrap()
            .to_vec();
        // flip a bit in the signature, at the very end
        *bytes.last_mut().unwrap() ^= 1;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
        let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
        let err = ca.sign_runtime(&tampered, &identity, now, DAY).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("certificate signing request") && text.contains("signature"),
            "{text}"
        );
        let err = ca
            .sign_runtime("not a request", &identity, now, DAY)
            .unwrap_err();
        assert!(matches!(err, PkiError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_stored_ca_loads_and_keeps_its_hash() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let loaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.hash(), ca.hash());
        assert_eq!(CaHash::of_certificate(ca.cert_der()).unwrap(), ca.hash());
        // what the loaded CA issues verifies under the original's certificate
        let request = runtime_key_and_request("rt-2").unwrap();
        let identity = RuntimeIdentity::new("default", "rt-2").unwrap();
        let cert = loaded
            .sign_runtime(&request.cert_pem, &identity, now, DAY)
            .unwrap();
        verify_client(&ca, &der(&cert), now).unwrap();
        // a key that is not the certificate's is refused
        let other = ClusterCa::generate(now).unwrap();
        let err = ClusterCa::from_pem(ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("not the key"), "{err}");
        assert!(!format!("{ca:?}").contains("PRIVATE"), "{ca:?}");
    }

    #[test]
    fn a_server_certificate_covers_names_and_addresses() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let issued = ca
            .issue_server(
                &["controller-0.gw".to_string(), "127.0.0.1".to_string()],
                now,
                DAY,
            )
            .unwrap();
        let cert = der(&issued.cert_pem);
        let leaf = CertificateDer::from(cert.as_slice());
        let end = verify(&ca, &leaf, now, webpki::KeyUsage::server_auth()).unwrap();
        for name in ["controller-0.gw", "127.0.0.1"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            end.verify_is_valid_for_subject_name(&name).unwrap();
        }
        let elsewhere = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(end.verify_is_valid_for_subject_name(&elsewhere).is_err());
        // a server certificate names no runtime
        assert!(RuntimeIdentity::of_certificate(&cert).is_err());
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn identities_and_hashes_read_back_and_refuse_what_is_malformed() {
        let identity = RuntimeIdentity::new("edge", "rt:1").unwrap();
        assert_eq!(identity.uri(), "urn:gw:runtime:edge:rt:1");
        assert_eq!(
            RuntimeIdentity::from_uri(&identity.uri()).unwrap(),
            identity
        );
        for uri in [
            "urn:gw:runtime:edge",
            "urn:gw:runtime:Edge:rt-1",
            "urn:gw:runtime:edge:rt 1",
            "https://edge/rt-1",
        ] {
            assert!(RuntimeIdentity::from_uri(uri).is_err(), "{uri}");
        }
        let hash = ClusterCa::generate(SystemTime::now()).unwrap().hash();
        assert_eq!(hash.to_string().parse::<CaHash>().unwrap(), hash);
        for text in [
            "",
            "sha256:",
            "sha1:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(text.parse::<CaHash>().is_err(), "{text}");
        }
    }
}
