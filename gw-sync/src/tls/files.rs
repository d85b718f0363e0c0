//! TLS material from files that an operator's PKI (cert-manager, a corporate CA) writes and
//! renews: loaded at start, where a problem stops the process with the file's name, and
//! reloaded when the files change, where a problem keeps the material in use and is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};

use super::{ClientTls, Identity, ServerTls, ServerTrust, client_config, server_config};
use crate::pki::{PkiError, RuntimeIdentity};

/// How often the files are looked at for a change.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

/// A problem with one of the files.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    #[source]
    pub source: FileProblem,
}

/// What is wrong with a file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    /// It cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    /// It does not hold what it should.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|err| FileError {
        path: path.to_path_buf(),
        source: err.into(),
    })
}

/// Blames `path` for `err`.
fn blame(path: &Path) -> impl FnOnce(PkiError) -> FileError + '_ {
    move |err| FileError {
        path: path.to_path_buf(),
        source: err.into(),
    }
}

/// A certificate chain file and its key file.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate, then any intermediates (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    /// An HTTPS server configuration with this certificate, for an API that people and
    /// their tools call (the admin API): TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN, no
    /// client certificates.
    pub fn https_config(&self) -> Result<Arc<ServerConfig>, FileError> {
        let chain_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let chain = super::chain(&chain_pem, "certificate").map_err(blame(&self.cert))?;
        let key = super::key(&key_pem, "private key").map_err(blame(&self.key))?;
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(super::tls_error("TLS versions"))
            .map_err(blame(&self.cert))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(super::tls_error("certificate"))
            .map_err(blame(&self.cert))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The files, for [`follow`].
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }
}

/// A controller's sync TLS from files: its certificate and key, and the CA that vouches
/// for runtimes' client certificates.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The controller's certificate and key.
    pub identity: CertFiles,
    /// The CA of runtimes' certificates (PEM; several CAs may follow each other).
    pub client_ca: PathBuf,
}

impl ServerFiles {
    /// Reads the files into a server configuration (mutual TLS: every client presents a
    /// certificate of the client CA).
    pub fn load(&self) -> Result<Arc<ServerConfig>, FileError> {
        let chain = read(&self.identity.cert)?;
        let key = read(&self.identity.key)?;
        let ca = read(&self.client_ca)?;
        server_config(
            &Identity {
                chain_pem: &chain,
                key_pem: &key,
            },
            &ca,
            false,
        )
        // the chain, the key or the CA: the message names which, the path is the chain's
        .map_err(|err| match err {
            PkiError::Invalid {
                what: "client CA", ..
            } => blame(&self.client_ca)(err),
            PkiError::Invalid {
                what: "server key", ..
            } => blame(&self.identity.key)(err),
            other => blame(&self.identity.cert)(other),
        })
    }

    /// The files, for [`follow`].
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![
            self.identity.cert.clone(),
            self.identity.key.clone(),
            self.client_ca.clone(),
        ]
    }
}

/// A runtime's sync TLS from files: the CA of the controllers' certificates, and the
/// runtime's own certificate and key.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The CA of controllers' certificates (PEM).
    pub controller_ca: PathBuf,
    /// The runtime's certificate and key, which name it
    /// ([`RuntimeIdentity`]); controllers serve no runtime without them.
    pub identity: CertFiles,
}

impl ClientFiles {
    /// Reads the files into a client configuration, and the identity the certificate names.
    pub fn load(&self) -> Result<(Arc<ClientConfig>, RuntimeIdentity), FileError> {
        let ca = read(&self.controller_ca)?;
        let chain = read(&self.identity.cert)?;
        let key = read(&self.identity.key)?;
        let leaf = super::chain(&chain, "client certificate")
            .map_err(blame(&self.identity.cert))?
            .swap_remove(0);
        let identity =
            RuntimeIdentity::of_certificate(&leaf).map_err(blame(&self.identity.cert))?;
        let config = client_config(
            &ServerTrust::Ca(ca),
            Some(&Identity {
                chain_pem: &chain,
                key_pem: &key,
            }),
        )
        .map_err(|err| match err {
            PkiError::Invalid {
                what: "controller CA",
                ..
            } => blame(&self.controller_ca)(err),
            PkiError::Invalid {
                what: "client key", ..
            } => blame(&self.identity.key)(err),
            other => blame(&self.identity.cert)(other),
        })?;
        Ok((config, identity))
    }

    /// The files, for [`follow`].
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![
            self.controller_ca.clone(),
            self.identity.cert.clone(),
            self.identity.key.clone(),
        ]
    }
}

/// What a file looks like now: its modification time and length (`None`: unreadable).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// What some files looked like at one moment: taken just before they are read, so that a
/// change between the read and the start of [`follow`] is not missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamps(Vec<Option<(SystemTime, u64)>>);

impl Stamps {
    /// How `paths` look now.
    pub fn of(paths: &[PathBuf]) -> Self {
        Self(paths.iter().map(|path| stamp(path)).collect())
    }
}

/// Looks at `paths` every `interval`, and when any changed since `since` (taken before the
/// material in use was read), calls `reload`; runs until the task is dropped. A reload that
/// fails is logged (with the file's name and the problem, never a key) and the material in
/// use stays; it is tried again at the next change. A PKI that writes the files one by one
/// may be caught half-way: the next look finds the rest.
pub async fn follow(
    what: &'static str,
    paths: Vec<PathBuf>,
    since: Stamps,
    interval: Duration,
    mut reload: impl FnMut() -> Result<(), FileError> + Send,
) {
    let mut seen = since;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = Stamps::of(&paths);
        if now == seen {
            continue;
        }
        match reload() {
            Ok(()) => {
                seen = now;
                tracing::info!(what, "TLS files changed: reloaded");
            }
            Err(err) => {
                // retried when the files change again (or finish changing)
                seen = now;
                tracing::warn!(what, error = %err, "TLS files changed but do not load; the previous ones stay in use");
            }
        }
    }
}

impl ServerTls {
    /// Keeps this configuration following `files`, as they were at `since` when it was
    /// read (see [`follow`]).
    pub async fn follow(self: Arc<Self>, files: ServerFiles, since: Stamps, interval: Duration) {
        let paths = files.paths();
        follow("sync server", paths, since, interval, move || {
            self.replace(files.load()?);
            Ok(())
        })
        .await;
    }
}

impl ClientTls {
    /// Keeps this configuration following `files`, as they were at `since` when it was
    /// read (see [`follow`]). A certificate that names another identity than `identity` is
    /// not taken: the runtime would be refused.
    pub async fn follow(
        self: Arc<Self>,
        files: ClientFiles,
        identity: RuntimeIdentity,
        since: Stamps,
        interval: Duration,
    ) {
        let paths = files.paths();
        follow("sync client", paths, since, interval, move || {
            let (config, named) = files.load()?;
            if named != identity {
                return Err(blame(&files.identity.cert)(PkiError::NoIdentity(format!(
                    "it now names node {:?} of group {:?}; this runtime is node {:?} of group {:?}",
                    named.node_id, named.group, identity.node_id, identity.group
                ))));
            }
            self.replace(config);
            Ok(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterCa, runtime_key_and_request};

    const HOUR: Duration = Duration::from_hours(1);

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A controller's files under `dir`, issued by `ca`.
    fn server_files(dir: &Path, ca: &ClusterCa) -> ServerFiles {
        let issued = ca
            .issue_server(&["127.0.0.1".to_string()], SystemTime::now(), HOUR)
            .unwrap();
        ServerFiles {
            identity: CertFiles {
                cert: write(dir, "tls.crt", &issued.cert_pem),
                key: write(dir, "tls.key", &issued.key_pem),
            },
            client_ca: write(dir, "ca.crt", ca.cert_pem()),
        }
    }

    /// A runtime's files under `dir` for `node` of `group`, issued by `ca`.
    fn client_files(dir: &Path, ca: &ClusterCa, group: &str, node: &str) -> ClientFiles {
        let request = runtime_key_and_request(node).unwrap();
        let identity = RuntimeIdentity::new(group, node).unwrap();
        let cert = ca
            .sign_runtime(&request.cert_pem, &identity, SystemTime::now(), HOUR)
            .unwrap();
        ClientFiles {
            controller_ca: write(dir, "ca.crt", ca.cert_pem()),
            identity: CertFiles {
                cert: write(dir, "tls.crt", &cert),
                key: write(dir, "tls.key", &request.key_pem),
            },
        }
    }

    #[test]
    fn a_file_that_does_not_load_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let files = server_files(dir.path(), &ca);
        files.load().unwrap();
        std::fs::write(&files.client_ca, "not a certificate").unwrap();
        let err = files.load().unwrap_err();
        assert_eq!(err.path, files.client_ca);
        assert!(err.to_string().contains("ca.crt"), "{err}");
        std::fs::remove_file(&files.identity.key).unwrap();
        let err = files.load().unwrap_err();
        assert_eq!(err.path, files.identity.key);
        assert!(err.to_string().contains("cannot read it"), "{err}");
    }

    #[test]
    fn a_runtime_s_files_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let files = client_files(dir.path(), &ca, "edge", "rt-1");
        let (_, identity) = files.load().unwrap();
        assert_eq!(identity, RuntimeIdentity::new("edge", "rt-1").unwrap());
        // a certificate that names no runtime (a server's) is refused with its file
        let server = ca
            .issue_server(&["rt-1".to_string()], SystemTime::now(), HOUR)
            .unwrap();
        std::fs::write(&files.identity.cert, server.cert_pem).unwrap();
        let err = files.load().unwrap_err();
        assert_eq!(err.path, files.identity.cert);
        assert!(err.to_string().contains("names no runtime"), "{err}");
    }

    /// Waits until `changed` holds, within ten seconds.
    async fn eventually(what: &str, changed: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !changed() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn renewed_files_are_taken_and_broken_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let files = server_files(dir.path(), &ca);
        let since = Stamps::of(&files.paths());
        let tls = Arc::new(ServerTls::new(files.load().unwrap()));
        let first = tls.current();
        let follower =
            tokio::spawn(Arc::clone(&tls).follow(files.clone(), since, Duration::from_millis(20)));

        // a half-written renewal (a key that is not a key) is not taken, however often
        // the follower looks
        std::fs::write(&files.identity.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            assert!(Arc::ptr_eq(&tls.current(), &first));
        }
        // the renewal completes: the new certificate and key are taken
        let renewed = server_files(dir.path(), &ca);
        assert_eq!(renewed.identity.cert, files.identity.cert);
        eventually("the renewed files are taken", || {
            !Arc::ptr_eq(&tls.current(), &first)
        })
        .await;
        follower.abort();
    }

    #[tokio::test]
    async fn a_renewal_between_the_read_and_the_follower_s_start_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let files = server_files(dir.path(), &ca);
        let since = Stamps::of(&files.paths());
        let tls = Arc::new(ServerTls::new(files.load().unwrap()));
        let first = tls.current();
        // renewed while the process was still starting (a slow database, say)
        server_files(dir.path(), &ca);
        let follower =
            tokio::spawn(Arc::clone(&tls).follow(files.clone(), since, Duration::from_millis(20)));
        eventually("the renewal made before the follower started", || {
            !Arc::ptr_eq(&tls.current(), &first)
        })
        .await;
        follower.abort();
    }

    #[tokio::test]
    async fn a_runtime_keeps_its_identity_across_renewals() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let files = client_files(dir.path(), &ca, "edge", "rt-1");
        let since = Stamps::of(&files.paths());
        let (config, identity) = files.load().unwrap();
        let tls = Arc::new(ClientTls::new(config));
        let first = tls.current();
        let follower = tokio::spawn(Arc::clone(&tls).follow(
            files.clone(),
            identity,
            since,
            Duration::from_millis(20),
        ));
        // a certificate for another node is not taken
        client_files(dir.path(), &ca, "edge", "rt-2");
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            assert!(Arc::ptr_eq(&tls.current(), &first));
        }
        // one for this node is
        client_files(dir.path(), &ca, "edge", "rt-1");
        eventually("the renewed certificate is taken", || {
            !Arc::ptr_eq(&tls.current(), &first)
        })
        .await;
        follower.abort();
    }
}
