//! TLS: the certificates a gateway serves, chosen by the client's server name (SNI), and the
//! client side of `https://` upstreams.
//!
//! A [`CertificateSet`] is built with each configuration, off the hot path, from the
//! `Certificate` documents; the listener's [`server_config`] resolves every handshake
//! against the set currently installed, so a rotated certificate is served from the next
//! handshake on, without a restart and without touching open connections.
//!
//! Which certificate a name gets: an exact name first, then a wildcard (`*.example.com`
//! covers one label), then the certificate listed for `*` (also used when the client sends
//! no name). When several certificates claim one name, the one that expires last wins, so a
//! renewed certificate deployed beside the old one takes over at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

#[cfg(feature = "tls")]
use arc_swap::ArcSwap;
#[cfg(feature = "tls")]
use rustls::ServerConfig;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
#[cfg(feature = "tls")]
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};

use crate::model::{CertificateDefinition, UpstreamTls};

/// The ALPN protocols the listeners offer, in order of preference.
#[cfg(feature = "tls")]
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider every TLS configuration of the gateway uses (ring).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// A certificate ready to serve.
pub struct ServedCertificate {
    /// Its definition.
    pub definition: Arc<CertificateDefinition>,
    /// The chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The names it is served for.
    pub names: Vec<String>,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The leaf's serial number, in hexadecimal.
    pub serial: String,
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCertificate")
            .field("name", &self.definition.metadata.name)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The certificates of one configuration, indexed by server name.
#[derive(Debug, Default)]
pub struct CertificateSet {
    by_name: BTreeMap<String, Arc<ServedCertificate>>,
    exact: HashMap<String, Arc<ServedCertificate>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Arc<ServedCertificate>>,
    fallback: Option<Arc<ServedCertificate>>,
}

impl CertificateSet {
    /// Builds the set, reusing from `previous` every certificate whose definition is
    /// unchanged. Returns one reason per certificate that cannot be used.
    pub fn build(
        definitions: impl IntoIterator<Item = Arc<CertificateDefinition>>,
        previous: Option<&CertificateSet>,
    ) -> Result<Self, Vec<String>> {
        let mut set = Self::default();
        let mut reasons = Vec::new();
        for definition in definitions {
            let name = definition.metadata.name.clone();
            let reused = previous
                .and_then(|p| p.by_name.get(&name))
                .filter(|served| served.definition == definition)
                .cloned();
            let served = match reused {
                Some(served) => served,
                None => match serve(definition) {
                    Ok(served) => Arc::new(served),
                    Err(reason) => {
                        reasons.push(format!("certificate {name:?}: {reason}"));
                        continue;
                    }
                },
            };
            set.by_name.insert(name, served);
        }
        if !reasons.is_empty() {
            return Err(reasons);
        }
        set.index();
        Ok(set)
    }

    /// Fills the name indexes; among certificates claiming one name, the one that expires
    /// last wins (then the first by resource name).
    fn index(&mut self) {
        self.exact.clear();
        self.wildcard.clear();
        self.fallback = None;
        let better = |new: &Arc<ServedCertificate>, old: &Arc<ServedCertificate>| {
            new.not_after > old.not_after
        };
        for served in self.by_name.values() {
            for name in &served.names {
                let map_slot = if name == "*" {
                    None
                } else if let Some(suffix) = name.strip_prefix("*.") {
                    Some(self.wildcard.entry(suffix.to_string()))
                } else {
                    Some(self.exact.entry(name.clone()))
                };
                match map_slot {
                    None => match &self.fallback {
                        Some(old) if !better(served, old) => {}
                        _ => self.fallback = Some(Arc::clone(served)),
                    },
                    Some(std::collections::hash_map::Entry::Vacant(entry)) => {
                        entry.insert(Arc::clone(served));
                    }
                    Some(std::collections::hash_map::Entry::Occupied(mut entry)) => {
                        if better(served, entry.get()) {
                            entry.insert(Arc::clone(served));
                        }
                    }
                }
            }
        }
    }

    /// The certificate for a client's server name (`None`: the client sent none).
    pub fn resolve(&self, server_name: Option<&str>) -> Option<&Arc<ServedCertificate>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.');
            let lower;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = name.to_ascii_lowercase();
                lower.as_str()
            } else {
                name
            };
            if let Some(served) = self.exact.get(name) {
                return Some(served);
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(served) = self.wildcard.get(parent)
            {
                return Some(served);
            }
        }
        self.fallback.as_ref()
    }

    /// A certificate by its resource name.
    pub fn get(&self, name: &str) -> Option<&Arc<ServedCertificate>> {
        self.by_name.get(name)
    }

    /// Every certificate, by resource name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<ServedCertificate>> {
        self.by_name.values()
    }

    /// Whether the set holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn serve(definition: Arc<CertificateDefinition>) -> Result<ServedCertificate, String> {
    let parsed = definition.parse_pem().map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(parsed.key.clone_key())
        .map_err(|_| "spec.privateKey: is not a supported key".to_string())?;
    let names = definition.server_names(&parsed);
    Ok(ServedCertificate {
        key: Arc::new(CertifiedKey::new(parsed.chain.clone(), signing)),
        names,
        not_after: parsed.not_after,
        serial: parsed.serial.clone(),
        definition,
    })
}

/// Resolves each handshake against the certificates installed at that moment.
#[cfg(feature = "tls")]
#[derive(Debug)]
struct SniResolver {
    certificates: Arc<ArcSwap<CertificateSet>>,
}

#[cfg(feature = "tls")]
impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.certificates.load();
        let served = set.resolve(hello.server_name());
        if served.is_none() {
            tracing::debug!(
                server_name = hello.server_name().unwrap_or(""),
                "TLS handshake refused: no certificate for this server name"
            );
        }
        served.map(|s| Arc::clone(&s.key))
    }
}

/// The TLS configuration of an HTTPS listener: TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`,
/// and the certificate of each handshake chosen from what `certificates` holds then.
#[cfg(feature = "tls")]
pub fn server_config(certificates: Arc<ArcSwap<CertificateSet>>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certificates }));
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The system's CA certificates, loaded at the first `https://` upstream without `tls.ca`.
/// When none can be loaded the store is empty: every handshake with such an upstream then
/// fails (502, logged as an unknown issuer) rather than the whole configuration, and the
/// next configuration tries to load them again.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::Mutex<Option<Arc<RootCertStore>>> = std::sync::Mutex::new(None);
    let mut cached = ROOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(roots) = cached.as_ref() {
        return Arc::clone(roots);
    }
    let loaded = rustls_native_certs::load_native_certs();
    for err in &loaded.errors {
        tracing::warn!(error = %err, "a system CA certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    let roots = Arc::new(roots);
    if added == 0 {
        tracing::error!(
            "no system CA certificates were found: https upstreams without spec.upstream.tls.ca \
             cannot be verified (install the ca-certificates package, or set tls.ca)"
        );
    } else {
        *cached = Some(Arc::clone(&roots));
    }
    roots
}

/// Presents one certificate whenever the server asks.
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client side of TLS to an upstream, built once per configuration.
#[derive(Clone)]
pub(crate) struct UpstreamTlsClient {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// `spec.upstream.tls.serverName`, if set (else each endpoint's host).
    pub(crate) server_name: Option<ServerName<'static>>,
    /// The client certificate shown, to tell whether a rebuilt set changed it.
    pub(crate) client_certificate: Option<Arc<ServedCertificate>>,
}

impl std::fmt::Debug for UpstreamTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsClient")
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.client_certificate)
            .finish_non_exhaustive()
    }
}

impl UpstreamTlsClient {
    /// The TLS client of an upstream: verification against `tls.ca` or the system roots,
    /// the client certificate `tls.clientCertificate` from `certificates`, and ALPN for
    /// `h2` or HTTP/1.1.
    pub(crate) fn build(
        tls: Option<&UpstreamTls>,
        h2: bool,
        certificates: &CertificateSet,
    ) -> Result<Self, String> {
        let roots = match tls.and_then(|t| t.ca.as_deref()) {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let der = der.map_err(|e| format!("spec.upstream.tls.ca: {e}"))?;
                    roots
                        .add(der)
                        .map_err(|e| format!("spec.upstream.tls.ca: {e}"))?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let client_certificate = match tls.and_then(|t| t.client_certificate.as_deref()) {
            Some(name) => Some(Arc::clone(certificates.get(name).ok_or_else(|| {
                format!(
                    "spec.upstream.tls.clientCertificate: certificate {name:?} is not deployed to this gateway's group"
                )
            })?)),
            None => None,
        };
        let mut config = match &client_certificate {
            Some(served) => builder
                .with_client_cert_resolver(Arc::new(ClientCertificate(Arc::clone(&served.key)))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = match tls.and_then(|t| t.server_name.as_deref()) {
            Some(name) => Some(
                ServerName::try_from(name.to_string())
                    .map_err(|e| format!("spec.upstream.tls.serverName: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            client_certificate,
        })
    }
}

#[cfg(all(test, feature = "tls", feature = "yaml"))]
mod tests {
    use super::*;
    use crate::model::{CertificateSpec, Metadata, UpstreamTls};

    /// A self-signed certificate for `names`, valid until `until_year`.
    fn issue(names: &[&str], until_year: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )
        .unwrap();
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn definition(
        name: &str,
        (cert, key): (String, String),
        sni: &[&str],
    ) -> Arc<CertificateDefinition> {
        Arc::new(CertificateDefinition {
            api_version: "gw/v1".into(),
            kind: "Certificate".into(),
            metadata: Metadata {
                name: name.into(),
                labels: std::collections::BTreeMap::new(),
            },
            spec: CertificateSpec {
                groups: vec!["default".into()],
                certificate: cert,
                private_key: key,
                sni: sni.iter().map(ToString::to_string).collect(),
            },
        })
    }

    fn served_name<'a>(set: &'a CertificateSet, sni: Option<&str>) -> Option<&'a str> {
        set.resolve(sni)
            .map(|s| s.definition.metadata.name.as_str())
    }

    #[test]
    fn names_resolve_exact_then_wildcard_then_catch_all() {
        let set = CertificateSet::build(
            [
                definition("exact", issue(&["api.example.com"], 2030), &[]),
                definition("wild", issue(&["*.example.com"], 2030), &[]),
                definition("any", issue(&["fallback.test"], 2030), &["*"]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(served_name(&set, Some("api.example.com")), Some("exact"));
        assert_eq!(served_name(&set, Some("API.Example.COM.")), Some("exact"));
        assert_eq!(served_name(&set, Some("www.example.com")), Some("wild"));
        // a wildcard covers one label only
        assert_eq!(served_name(&set, Some("a.b.example.com")), Some("any"));
        assert_eq!(served_name(&set, Some("example.com")), Some("any"));
        assert_eq!(served_name(&set, None), Some("any"));
        // `*` replaced the certificate's own names
        assert_eq!(served_name(&set, Some("fallback.test")), Some("any"));

        let without_catch_all = CertificateSet::build(
            [definition("exact", issue(&["api.example.com"], 2030), &[])],
            None,
        )
        .unwrap();
        assert_eq!(served_name(&without_catch_all, Some("other.test")), None);
        assert_eq!(served_name(&without_catch_all, None), None);
    }

    #[test]
    fn of_two_certificates_for_one_name_the_one_expiring_last_wins() {
        for order in [["old", "new"], ["new", "old"]] {
            let defs = order.map(|name| {
                let year = if name == "old" { 2030 } else { 2032 };
                definition(name, issue(&["api.example.com"], year), &[])
            });
            let set = CertificateSet::build(defs, None).unwrap();
            assert_eq!(served_name(&set, Some("api.example.com")), Some("new"));
        }
    }

    #[test]
    fn unchanged_certificates_are_reused_and_bad_ones_named() {
        let site = definition("site", issue(&["a.test"], 2030), &[]);
        let first = CertificateSet::build([Arc::clone(&site)], None).unwrap();
        let second = CertificateSet::build([Arc::new((*site).clone())], Some(&first)).unwrap();
        assert!(Arc::ptr_eq(
            first.get("site").unwrap(),
            second.get("site").unwrap()
        ));

        let (cert, _) = issue(&["a.test"], 2030);
        let (_, other_key) = issue(&["b.test"], 2030);
        let reasons =
            CertificateSet::build([definition("mixed", (cert, other_key), &[])], None).unwrap_err();
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("\"mixed\""), "{reasons:?}");
        assert!(reasons[0].contains("does not belong"), "{reasons:?}");
        assert!(!reasons[0].contains("PRIVATE KEY"), "{reasons:?}");
    }

    #[test]
    fn an_upstream_client_certificate_must_be_in_the_set() {
        let set =
            CertificateSet::build([definition("client", issue(&["gw.test"], 2030), &[])], None)
                .unwrap();
        let (ca, _) = issue(&["ca.test"], 2030);
        let tls = UpstreamTls {
            ca: Some(ca),
            server_name: Some("upstream.test".into()),
            client_certificate: Some("client".into()),
        };
        let built = UpstreamTlsClient::build(Some(&tls), true, &set).unwrap();
        assert!(built.client_certificate.is_some());
        let missing = UpstreamTls {
            client_certificate: Some("absent".into()),
            ..tls
        };
        let err = UpstreamTlsClient::build(Some(&missing), false, &set).unwrap_err();
        assert!(err.contains("\"absent\""), "{err}");
    }
}
