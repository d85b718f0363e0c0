//! The TLS of the sync channel: TLS 1.3 only, HTTP/2 by ALPN, the controller's certificate
//! checked by the runtime and the runtime's by the controller.
//!
//! A runtime trusts its controllers in one of two ways ([`ServerTrust`]): by a CA it holds
//! (the cluster CA it was given at enrollment, or an operator's own CA), or, before it has
//! one, by the [`CaHash`] of its enrollment token. The second is checked on the chain the
//! controller presents: the certificate whose public key has that hash becomes the one
//! trust anchor, and the controller's certificate must chain to it and name the address
//! dialled, as with any CA.
//!
//! A controller asks every client for a certificate under its client CA. A configuration
//! may let a client without one finish the handshake (`allow_anonymous`, for the
//! enrollment of new runtimes); the sync service still serves no stream without a runtime's
//! certificate ([`ServerTls`]).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::pki::{CaHash, PkiError};

mod files;

pub use self::files::{
    CertFiles, ClientFiles, FOLLOW_INTERVAL, FileError, FileProblem, ServerFiles, Stamps, follow,
};

/// The one crypto provider of the sync channel.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocol of gRPC.
const H2: &[u8] = b"h2";

fn pem_error(what: &'static str) -> impl FnOnce(rustls::pki_types::pem::Error) -> PkiError {
    move |err| PkiError::Invalid {
        what,
        reason: err.to_string(),
    }
}

fn tls_error(what: &'static str) -> impl FnOnce(TlsError) -> PkiError {
    move |err| PkiError::Invalid {
        what,
        reason: err.to_string(),
    }
}

/// The certificates of a PEM chain, leaf first; an empty chain is an error.
fn chain(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(what))?;
    if certs.is_empty() {
        return Err(PkiError::Invalid {
            what,
            reason: "no certificate in it".to_string(),
        });
    }
    Ok(certs)
}

fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(pem_error(what))
}

fn roots(ca_pem: &str, what: &'static str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in chain(ca_pem, what)? {
        roots.add(cert).map_err(tls_error(what))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key (PEM): what a side presents.
pub struct Identity<'a> {
    /// The certificate, then any intermediates (a controller adds the CA so that a runtime
    /// that pins its hash finds it).
    pub chain_pem: &'a str,
    /// The private key.
    pub key_pem: &'a str,
}

impl fmt::Debug for Identity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// The controller's side: TLS 1.3, its certificate, and client certificates checked against
/// `client_ca_pem`. With `allow_anonymous`, a client without a certificate completes the
/// handshake too (to enroll); a client with one that does not verify never does.
pub fn server_config(
    identity: &Identity<'_>,
    client_ca_pem: &str,
    allow_anonymous: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots(client_ca_pem, "client CA")?,
        Arc::clone(&provider),
    );
    let verifier = if allow_anonymous {
        verifier.allow_unauthenticated()
    } else {
        verifier
    }
    .build()
    .map_err(|err| PkiError::Invalid {
        what: "client CA",
        reason: err.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain(identity.chain_pem, "server certificate")?,
            key(identity.key_pem, "server key")?,
        )
        .map_err(tls_error("server certificate"))?;
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS of a sync listener: the server configuration, replaced in place when its
/// certificate is renewed or its files change (connections made before keep theirs).
///
/// A sync port with TLS serves a stream only to a runtime whose certificate names the node
/// id and the group of its Hello ([`RuntimeIdentity`](crate::pki::RuntimeIdentity)),
/// whatever the configuration lets through the handshake: a client without a certificate
/// (where [`server_config`] allows anonymous clients) is refused before its Hello is read.
pub struct ServerTls {
    config: arc_swap::ArcSwap<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Serves with `config` ([`server_config`]).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            config: arc_swap::ArcSwap::new(config),
        }
    }

    /// Replaces the configuration for the connections accepted from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.config.store(config);
    }

    /// The configuration for a new connection.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }
}

/// The TLS of a sync client: its configuration, replaced in place when the runtime's
/// certificate is renewed or its files change (the open stream keeps its connection; the
/// next connection uses the new one).
pub struct ClientTls {
    config: arc_swap::ArcSwap<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Connects with `config` ([`client_config`]).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self {
            config: arc_swap::ArcSwap::new(config),
        }
    }

    /// Replaces the configuration for the connections made from now on.
    pub fn replace(&self, config: Arc<ClientConfig>) {
        self.config.store(config);
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ClientConfig> {
        self.config.load_full()
    }
}

/// How a runtime knows its controllers.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// By a CA (PEM): the cluster CA, or an operator's own.
    Ca(String),
    /// By the hash of the CA's public key, from an enrollment token.
    Pinned(CaHash),
}

/// The runtime's side: TLS 1.3, the controller checked as `trust` says, and `identity`
/// presented when there is one (there is none before enrollment).
pub fn client_config(
    trust: &ServerTrust,
    identity: Option<&Identity<'_>>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS versions"))?;
    let builder = match trust {
        ServerTrust::Ca(pem) => builder.with_root_certificates(roots(pem, "controller CA")?),
        ServerTrust::Pinned(hash) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCa {
                    hash: *hash,
                    provider,
                }))
        }
    };
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                chain(identity.chain_pem, "client certificate")?,
                key(identity.key_pem, "client key")?,
            )
            .map_err(tls_error("client certificate"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// Checks a controller's chain against the CA whose public key has `hash`: that CA is found
/// among the certificates the controller presents, and then verifies the chain as a root
/// would.
#[derive(Debug)]
struct PinnedCa {
    hash: CaHash,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let anchor = intermediates
            .iter()
            .find(|cert| CaHash::of_certificate(cert).is_ok_and(|hash| hash == self.hash))
            .ok_or(TlsError::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|err| TlsError::General(err.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::pki::{ClusterCa, Issued, RuntimeIdentity, runtime_key_and_request};

    const DAY: Duration = Duration::from_hours(24);

    struct Cluster {
        ca: ClusterCa,
        server: Issued,
    }

    impl Cluster {
        fn new() -> Self {
            let ca = ClusterCa::generate(SystemTime::now()).unwrap();
            let server = ca
                .issue_server(&["127.0.0.1".to_string()], SystemTime::now(), DAY)
                .unwrap();
            Self { ca, server }
        }

        /// The server's chain: its certificate, then the CA's.
        fn server_chain(&self) -> String {
            format!("{}{}", self.server.cert_pem, self.ca.cert_pem())
        }

        fn runtime(&self, group: &str, node: &str) -> Issued {
            let request = runtime_key_and_request(node).unwrap();
            let identity = RuntimeIdentity::new(group, node).unwrap();
            let cert_pem = self
                .ca
                .sign_runtime(&request.cert_pem, &identity, SystemTime::now(), DAY)
                .unwrap();
            Issued {
                cert_pem,
                key_pem: request.key_pem,
            }
        }

        fn server_config(&self, allow_anonymous: bool) -> Arc<ServerConfig> {
            let chain = self.server_chain();
            server_config(
                &Identity {
                    chain_pem: &chain,
                    key_pem: &self.server.key_pem,
                },
                self.ca.cert_pem(),
                allow_anonymous,
            )
            .unwrap()
        }
    }

    /// Runs one handshake over an in-memory pipe and an echo of one byte; answers what the
    /// client saw, and the identity in the certificate the server saw (if any).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<(), String>, Option<RuntimeIdentity>) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server).accept(far).await.ok()?;
            let seen = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|cert| RuntimeIdentity::of_certificate(cert).unwrap());
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()?;
            tls.write_all(&byte).await.ok()?;
            tls.flush().await.ok()?;
            Some(seen)
        });
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let outcome = async {
            let mut tls = TlsConnector::from(client)
                .connect(name, near)
                .await
                .map_err(|err| err.to_string())?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H2));
            assert_eq!(
                tls.get_ref().1.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            tls.write_all(b"x").await.map_err(|err| err.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte)
                .await
                .map_err(|err| err.to_string())?;
            Ok(())
        }
        .await;
        let seen = served.await.unwrap().flatten();
        (outcome, seen)
    }

    #[tokio::test]
    async fn a_runtime_with_a_token_s_hash_trusts_its_controller_and_no_other() {
        let cluster = Cluster::new();
        let pinned = client_config(&ServerTrust::Pinned(cluster.ca.hash()), None).unwrap();
        let (outcome, seen) = handshake(cluster.server_config(true), Arc::clone(&pinned)).await;
        outcome.unwrap();
        assert_eq!(seen, None, "no client certificate before enrollment");

        // another cluster (a man in the middle with a CA of his own) is refused
        let other = Cluster::new();
        let (outcome, _) = handshake(other.server_config(true), pinned).await;
        let err = outcome.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn a_runtime_refuses_a_controller_of_another_ca_even_one_that_shows_its_own() {
        let cluster = Cluster::new();
        let other = Cluster::new();
        // trusting the cluster's CA: another CA's controller is refused
        let trusting =
            client_config(&ServerTrust::Ca(cluster.ca.cert_pem().to_string()), None).unwrap();
        let (outcome, _) = handshake(other.server_config(true), trusting).await;
        let err = outcome.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");

        // pinning the cluster's hash: a man in the middle who presents his own certificate
        // with the cluster's CA certificate beside it (it is public) is refused, as his
        // certificate is not signed by that CA's key
        let forged_chain = format!("{}{}", other.server.cert_pem, cluster.ca.cert_pem());
        let mitm = server_config(
            &Identity {
                chain_pem: &forged_chain,
                key_pem: &other.server.key_pem,
            },
            other.ca.cert_pem(),
            true,
        )
        .unwrap();
        let pinned = client_config(&ServerTrust::Pinned(cluster.ca.hash()), None).unwrap();
        let (outcome, _) = handshake(mitm, pinned).await;
        let err = outcome.expect_err("the man in the middle was trusted");
        assert!(err.contains("invalid peer certificate"), "{err}");
    }

    #[tokio::test]
    async fn the_controller_sees_the_runtime_s_identity() {
        let cluster = Cluster::new();
        let runtime = cluster.runtime("edge", "rt-1");
        let client = client_config(
            &ServerTrust::Ca(cluster.ca.cert_pem().to_string()),
            Some(&Identity {
                chain_pem: &runtime.cert_pem,
                key_pem: &runtime.key_pem,
            }),
        )
        .unwrap();
        let (outcome, seen) = handshake(cluster.server_config(false), client).await;
        outcome.unwrap();
        assert_eq!(seen, Some(RuntimeIdentity::new("edge", "rt-1").unwrap()));
    }

    #[tokio::test]
    async fn a_client_without_a_valid_certificate_is_refused_unless_it_may_enroll() {
        let cluster = Cluster::new();
        let trust = ServerTrust::Ca(cluster.ca.cert_pem().to_string());
        let anonymous = client_config(&trust, None).unwrap();
        let (outcome, _) = handshake(cluster.server_config(false), Arc::clone(&anonymous)).await;
        assert!(outcome.is_err(), "no certificate, no enrollment: refused");
        // a certificate from another cluster's CA is refused even where enrollment is open
        let stranger = Cluster::new().runtime("edge", "rt-1");
        let forged = client_config(
            &trust,
            Some(&Identity {
                chain_pem: &stranger.cert_pem,
                key_pem: &stranger.key_pem,
            }),
        )
        .unwrap();
        let (outcome, _) = handshake(cluster.server_config(true), forged).await;
        assert!(outcome.is_err(), "a foreign certificate: refused");
    }

    #[tokio::test]
    async fn tls_1_2_is_refused() {
        let cluster = Cluster::new();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(cluster.ca.cert_der().to_vec()))
            .unwrap();
        let old = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (outcome, _) = handshake(cluster.server_config(true), Arc::new(old)).await;
        assert!(outcome.is_err(), "TLS 1.2 must not be spoken");
    }

    #[test]
    fn malformed_inputs_are_named() {
        let cluster = Cluster::new();
        let err = server_config(
            &Identity {
                chain_pem: "",
                key_pem: &cluster.server.key_pem,
            },
            cluster.ca.cert_pem(),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("server certificate"), "{err}");
        let err = client_config(&ServerTrust::Ca("nonsense".to_string()), None).unwrap_err();
        assert!(err.to_string().contains("controller CA"), "{err}");
    }
}
