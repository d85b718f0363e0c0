//! A runtime's certificate from the cluster's internal CA: enrolled once with an enrollment
//! token (`GW_ENROLL_TOKEN`), kept in the data directory, renewed before it expires.
//!
//! - At the first start the runtime makes a key pair, checks a controller against the CA
//!   hash the token carries, and sends the token with a certificate signing request; it
//!   gets a certificate naming its node id and group ([`gw_sync::enroll::enroll`]).
//! - Key, certificate and the cluster CA are kept in `<data-dir>/sync-identity.json`
//!   (mode 0600, written whole or not at all): a restart needs no token.
//! - Two thirds into the certificate's life the runtime renews it with a new key over a
//!   connection that presents the current one ([`gw_sync::enroll::renew`]); the open stream
//!   keeps its connection, the next connection uses the new certificate.
//! - A certificate that expired (the runtime was stopped past its life) or names another
//!   node or group than the runtime's is enrolled again when a token is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gw_sync::enroll::{EnrollError, EnrollmentToken};
use gw_sync::pki::{CertFacts, RuntimeIdentity, runtime_key_and_request};
use gw_sync::tls::{ClientTls, Identity, ServerTrust, client_config};
use rustls::pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::RuntimeError;

/// The file of the enrolled identity, in the data directory.
pub(crate) const IDENTITY_FILE: &str = "sync-identity.json";

/// The longest wait between two attempts to enroll or renew.
const MAX_BACKOFF: Duration = Duration::from_mins(5);

/// The least time between two renewals that succeed.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// The enrolled identity as kept: certificate, key, cluster CA (PEM).
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    certificate: String,
    key: String,
    ca: String,
}

/// A certificate this runtime holds, read.
#[derive(Clone)]
struct Held {
    stored: Stored,
    identity: RuntimeIdentity,
    facts: CertFacts,
    /// When to renew it, and when it expires, on this process's monotonic clock: measured
    /// from when it was received (or, for one read from the file, from the wall clock at
    /// start), so that a clock that differs from the controllers' cannot make renewals
    /// follow each other without a pause.
    due: Instant,
    expires: Instant,
}

impl Held {
    fn read(stored: Stored) -> Result<Self, String> {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(stored.certificate.as_bytes())
            .map_err(|err| format!("its certificate does not read: {err}"))?;
        let identity = RuntimeIdentity::of_certificate(&der).map_err(|err| err.to_string())?;
        let facts = CertFacts::of_certificate(&der).map_err(|err| err.to_string())?;
        // as if received now: the wall clock says how far into its life it is
        let now = SystemTime::now();
        let left = |at: SystemTime| at.duration_since(now).unwrap_or_default();
        let due = Instant::now() + left(facts.renew_after());
        let expires = Instant::now() + left(facts.not_after);
        Ok(Self {
            stored,
            identity,
            facts,
            due,
            expires,
        })
    }

    /// Schedules this certificate as received just now: renewed two thirds into the life it
    /// was issued for (at least [`MIN_RENEW_INTERVAL`] from now).
    fn received_now(mut self) -> Self {
        let now = Instant::now();
        let lifetime = self.facts.lifetime();
        self.due = now + (lifetime * 2 / 3).max(MIN_RENEW_INTERVAL);
        self.expires = now + lifetime;
        let skew = match self.facts.issued_at().duration_since(SystemTime::now()) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if skew > Duration::from_mins(1) {
            tracing::warn!(
                ?skew,
                "this host's clock and the controller's differ: certificates are checked \
                 against clocks; synchronize them (NTP)"
            );
        }
        self
    }

    /// The sync client's TLS with this certificate, trusting the cluster CA.
    fn config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        client_config(
            &ServerTrust::Ca(self.stored.ca.clone()),
            Some(&Identity {
                chain_pem: &self.stored.certificate,
                key_pem: &self.stored.key,
            }),
        )
        .map_err(|err| err.to_string())
    }
}

/// The enrollment of a runtime: what it holds, and how to get or renew a certificate.
pub(crate) struct Enrollment {
    /// The identity file; `None`: kept in memory only (no data directory).
    file: Option<PathBuf>,
    /// Who this runtime is.
    identity: RuntimeIdentity,
    token: Option<EnrollmentToken>,
    /// The sync client's TLS, replaced when a certificate is had.
    tls: Arc<ClientTls>,
    held: Option<Held>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("file", &self.file)
            .field("identity", &self.identity)
            .field("token", &self.token)
            .field("enrolled", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

fn options_error(reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Options(format!("sync enrollment: {reason}"))
}

impl Enrollment {
    /// The enrollment of the runtime `identity`, from the identity file in `data_dir` when
    /// there is a usable one, or to be made with `token`. A file that does not read, or
    /// names another runtime, is an error without a token (there would be no way to get a
    /// certificate) and is replaced with one.
    pub(crate) fn start(
        data_dir: Option<&Path>,
        identity: RuntimeIdentity,
        token: Option<EnrollmentToken>,
    ) -> Result<Self, RuntimeError> {
        let file = data_dir.map(|dir| dir.join(IDENTITY_FILE));
        let held = match &file {
            Some(path) => match read(path) {
                Ok(held) => held,
                Err(reason) if token.is_some() => {
                    tracing::warn!(file = %path.display(), %reason, "enrolling again");
                    None
                }
                Err(reason) => {
                    return Err(options_error(format!(
                        "{}: {reason}; give GW_ENROLL_TOKEN to enroll again",
                        path.display()
                    )));
                }
            },
            None => None,
        };
        let held = match held {
            Some(held) if held.identity != identity => {
                let reason = format!(
                    "the kept certificate names node {:?} of group {:?}, and this runtime is \
                     node {:?} of group {:?}",
                    held.identity.node_id, held.identity.group, identity.node_id, identity.group
                );
                if token.is_none() {
                    return Err(options_error(format!(
                        "{reason}; give GW_ENROLL_TOKEN to enroll as this runtime"
                    )));
                }
                tracing::warn!(%reason, "enrolling again");
                None
            }
            Some(held) if held.facts.not_after <= SystemTime::now() && token.is_some() => {
                tracing::warn!("the kept sync certificate has expired; enrolling again");
                None
            }
            Some(held) => {
                if held.facts.not_after <= SystemTime::now() {
                    tracing::error!(
                        "the kept sync certificate has expired and no GW_ENROLL_TOKEN is given: \
                         controllers will refuse this runtime until it is enrolled again"
                    );
                }
                Some(held)
            }
            None if token.is_none() => {
                return Err(options_error(
                    "this runtime has no certificate of the cluster's CA: give GW_ENROLL_TOKEN \
                     (from POST /api/v1/enrollment-tokens) to enroll it"
                        .to_string(),
                ));
            }
            None => None,
        };
        let config = match &held {
            Some(held) => held.config().map_err(options_error)?,
            // no certificate yet: the client does not run before one is had
            None => {
                let token = token.as_ref().map(EnrollmentToken::ca_hash);
                let trust = ServerTrust::Pinned(
                    token.unwrap_or_else(|| gw_sync::pki::CaHash::of_spki(b"no cluster CA yet")),
                );
                client_config(&trust, None).map_err(|err| options_error(err.to_string()))?
            }
        };
        Ok(Self {
            file,
            identity,
            token,
            tls: Arc::new(ClientTls::new(config)),
            held,
        })
    }

    /// The sync client's TLS: it presents the certificate once one is had.
    pub(crate) fn tls(&self) -> Arc<ClientTls> {
        Arc::clone(&self.tls)
    }

    /// Whether a certificate is held (the client may run).
    pub(crate) fn is_enrolled(&self) -> bool {
        self.held.is_some()
    }

    /// Enrolls at `controllers`, one after the other, until one issues a certificate.
    pub(crate) async fn enroll(&mut self, controllers: &[String]) {
        let Some(token) = self.token.clone() else {
            return;
        };
        if controllers.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(500);
        for address in controllers.iter().cycle() {
            let request = match runtime_key_and_request(&self.identity.node_id) {
                Ok(request) => request,
                Err(err) => {
                    tracing::error!(error = %err, "cannot make a key pair to enroll");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            let outcome =
                gw_sync::enroll::enroll(address, &token, &self.identity, &request.cert_pem)
                    .await
                    .and_then(|issued| of_cluster(issued, &token));
            match self.take(outcome, request.key_pem) {
                Ok(()) => {
                    tracing::info!(
                        controller = %address, node = %self.identity.node_id,
                        group = %self.identity.group, "enrolled"
                    );
                    return;
                }
                Err(err) => {
                    log_failure("enrollment", address, &err);
                    if !err.is_transient() {
                        backoff = backoff.max(Duration::from_secs(30));
                    }
                }
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Renews the certificate two thirds into its life, at `controllers` one after the
    /// other, for as long as there is a certificate to renew or a token to enroll with. A
    /// certificate that expires unrenewed is enrolled again with the token, if there is one.
    pub(crate) async fn renew_forever(mut self, controllers: Vec<String>) {
        let mut backoff = Duration::from_secs(1);
        let mut next = controllers.iter().cycle();
        loop {
            let Some(held) = &self.held else {
                if self.token.is_none() || controllers.is_empty() {
                    return;
                }
                self.enroll(&controllers).await;
                continue;
            };
            tokio::time::sleep_until(held.due).await;
            if held.expires <= Instant::now() && self.token.is_some() {
                tracing::warn!(
                    "the sync certificate expired before it was renewed; enrolling again"
                );
                self.held = None;
                continue;
            }
            let Some(address) = next.next() else {
                std::future::pending::<()>().await;
                unreachable!()
            };
            let request = match runtime_key_and_request(&self.identity.node_id) {
                Ok(request) => request,
                Err(err) => {
                    tracing::error!(error = %err, "cannot make a key pair to renew");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            let outcome =
                gw_sync::enroll::renew(address, self.tls.current(), &request.cert_pem).await;
            match self.take(outcome, request.key_pem) {
                Ok(()) => {
                    tracing::info!(controller = %address, "sync certificate renewed");
                    backoff = Duration::from_secs(1);
                }
                Err(err) => {
                    log_failure("renewal", address, &err);
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Takes an issued certificate for `key_pem`: checked, kept, and used for the next
    /// connections.
    fn take(
        &mut self,
        outcome: Result<gw_sync::server::IssuedCertificate, EnrollError>,
        key_pem: String,
    ) -> Result<(), EnrollError> {
        let issued = outcome?;
        let stored = Stored {
            certificate: issued.certificate_pem,
            key: key_pem,
            ca: issued.ca_pem,
        };
        let held = Held::read(stored)
            .map_err(EnrollError::Answer)?
            .received_now();
        if held.identity != self.identity {
            return Err(EnrollError::Answer(format!(
                "the certificate names node {:?} of group {:?}",
                held.identity.node_id, held.identity.group
            )));
        }
        let config = held.config().map_err(EnrollError::Answer)?;
        if let Some(path) = &self.file
            && let Err(err) = write(path, &held.stored)
        {
            // the certificate still serves this run, and the one kept before is superseded:
            // presented again by the next start, once this one was in use, it would read as
            // a copy of the runtime's identity and revoke it. The next start enrolls again.
            match std::fs::remove_file(path) {
                Ok(()) => tracing::error!(
                    file = %path.display(), error = %err,
                    "cannot keep the sync certificate (the superseded one was removed); the \
                     next start will need GW_ENROLL_TOKEN"
                ),
                Err(removal) if removal.kind() == std::io::ErrorKind::NotFound => {
                    tracing::error!(
                        file = %path.display(), error = %err,
                        "cannot keep the sync certificate; the next start will need \
                         GW_ENROLL_TOKEN"
                    );
                }
                Err(removal) => tracing::error!(
                    file = %path.display(), error = %err, removal = %removal,
                    "cannot keep the sync certificate, nor remove the superseded one: remove \
                     the file before the next start, which would otherwise present it and \
                     have the runtime revoked as a copy of itself"
                ),
            }
        }
        self.tls.replace(config);
        self.held = Some(held);
        Ok(())
    }
}

/// The certificate issued at enrollment, if the CA it comes with is the one the token
/// names (the controller was checked against it already; this keeps a controller from
/// handing another CA for the runtime to trust from then on).
fn of_cluster(
    issued: gw_sync::server::IssuedCertificate,
    token: &EnrollmentToken,
) -> Result<gw_sync::server::IssuedCertificate, EnrollError> {
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(issued.ca_pem.as_bytes())
        .map_err(|err| EnrollError::Answer(format!("its CA does not read: {err}")))?;
    match gw_sync::pki::CaHash::of_certificate(&ca) {
        Ok(hash) if hash == token.ca_hash() => Ok(issued),
        Ok(hash) => Err(EnrollError::Answer(format!(
            "its CA is {hash}, and the token names {}",
            token.ca_hash()
        ))),
        Err(err) => Err(EnrollError::Answer(err.to_string())),
    }
}

fn log_failure(what: &str, address: &str, err: &EnrollError) {
    if err.is_transient() {
        tracing::warn!(controller = %address, error = %err, "{what} failed; trying again");
    } else {
        tracing::error!(controller = %address, error = %err, "{what} refused");
    }
}

/// Half to all of `backoff`, so that runtimes started together do not call together.
fn jittered(backoff: Duration) -> Duration {
    let millis = u64::try_from(backoff.as_millis())
        .unwrap_or(u64::MAX)
        .max(2);
    Duration::from_millis(rand::random_range(millis / 2..=millis))
}

/// The identity kept in `path`: `None` when there is none.
fn read(path: &Path) -> Result<Option<Held>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read it: {err}")),
    };
    let stored: Stored =
        serde_json::from_str(&text).map_err(|err| format!("it does not read: {err}"))?;
    // written 0600; a copy restored with wider rights is said, not silently used
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(), mode = format!("{mode:o}"),
                "the sync identity file (a private key) can be read by others than its owner; \
                 chmod 600 it"
            );
        }
    }
    Held::read(stored).map(Some)
}

fn write(path: &Path, stored: &Stored) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?;
    crate::data_dir::write_atomically(path, |file| std::io::Write::write_all(file, &text))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use gw_sync::pki::ClusterCa;

    use super::*;

    fn identity() -> RuntimeIdentity {
        RuntimeIdentity::new("edge", "rt-1").unwrap()
    }

    /// A certificate of `ca` for `who`, valid for `lifetime` from `from`, as a controller
    /// would answer it.
    fn issued(
        ca: &ClusterCa,
        who: &RuntimeIdentity,
        from: SystemTime,
        lifetime: Duration,
    ) -> (gw_sync::server::IssuedCertificate, String) {
        let request = runtime_key_and_request(&who.node_id).unwrap();
        let pem = ca
            .sign_runtime(&request.cert_pem, who, from, lifetime)
            .unwrap();
        let issued = gw_sync::server::IssuedCertificate {
            certificate_pem: pem,
            ca_pem: ca.cert_pem().to_string(),
            not_after: from + lifetime,
            renew_after: from,
        };
        (issued, request.key_pem)
    }

    #[test]
    fn an_enrolled_identity_is_kept_private_and_read_back_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let token = EnrollmentToken::generate(ca.hash());
        let mut first = Enrollment::start(Some(dir.path()), identity(), Some(token)).unwrap();
        assert!(!first.is_enrolled());
        let (cert, key) = issued(&ca, &identity(), SystemTime::now(), Duration::from_hours(1));
        first.take(Ok(cert), key.clone()).unwrap();
        assert!(first.is_enrolled());
        let file = dir.path().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        // the next start needs no token
        let again = Enrollment::start(Some(dir.path()), identity(), None).unwrap();
        assert!(again.is_enrolled());
        // its Debug output shows no key
        let debug = format!("{again:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        // another runtime on the same directory is told, without a token
        let other = RuntimeIdentity::new("edge", "rt-2").unwrap();
        let err = Enrollment::start(Some(dir.path()), other.clone(), None).unwrap_err();
        assert!(err.to_string().contains("names node \"rt-1\""), "{err}");
        // with a token, it enrolls again
        let token = EnrollmentToken::generate(ca.hash());
        let fresh = Enrollment::start(Some(dir.path()), other, Some(token)).unwrap();
        assert!(!fresh.is_enrolled());
    }

    #[tokio::test]
    async fn renewals_are_timed_from_receipt_whatever_this_host_s_clock_says() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let token = EnrollmentToken::generate(ca.hash());
        let mut enrollment = Enrollment::start(Some(dir.path()), identity(), Some(token)).unwrap();
        // issued by a controller whose clock is 50 s behind this host's: by this host's
        // wall clock the 60 s certificate is due for renewal already
        let behind = SystemTime::now() - Duration::from_secs(50);
        let (cert, key) = issued(&ca, &identity(), behind, Duration::from_mins(1));
        enrollment.take(Ok(cert), key).unwrap();
        let held = enrollment.held.as_ref().unwrap();
        assert!(held.facts.renew_after() < SystemTime::now());
        // on the monotonic clock it is due 40 s from receipt, and expires 60 s from it
        let due = held.due - Instant::now();
        assert!(
            due > Duration::from_secs(35) && due <= Duration::from_secs(40),
            "{due:?}"
        );
        let expires = held.expires - Instant::now();
        assert!(expires > Duration::from_secs(55), "{expires:?}");
    }

    #[test]
    fn a_certificate_that_comes_with_another_ca_than_the_token_s_is_refused() {
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let token = EnrollmentToken::generate(ca.hash());
        let (ours, _) = issued(&ca, &identity(), SystemTime::now(), Duration::from_hours(1));
        assert!(of_cluster(ours, &token).is_ok());
        let other = ClusterCa::generate(SystemTime::now()).unwrap();
        let (theirs, _) = issued(
            &other,
            &identity(),
            SystemTime::now(),
            Duration::from_hours(1),
        );
        let err = of_cluster(theirs, &token).unwrap_err();
        assert!(err.to_string().contains("the token names"), "{err}");
    }

    #[test]
    fn a_runtime_without_a_certificate_or_a_token_is_told_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Enrollment::start(Some(dir.path()), identity(), None).unwrap_err();
        assert!(err.to_string().contains("give GW_ENROLL_TOKEN"), "{err}");
        // a damaged file, without a token: said, with the file's name
        std::fs::write(dir.path().join(IDENTITY_FILE), "{").unwrap();
        let err = Enrollment::start(Some(dir.path()), identity(), None).unwrap_err();
        assert!(err.to_string().contains(IDENTITY_FILE), "{err}");
    }

    #[test]
    fn a_certificate_for_another_runtime_or_that_expired_is_not_taken_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let token = EnrollmentToken::generate(ca.hash());
        let mut enrollment =
            Enrollment::start(Some(dir.path()), identity(), Some(token.clone())).unwrap();
        let other = RuntimeIdentity::new("payments", "rt-1").unwrap();
        let (cert, key) = issued(&ca, &other, SystemTime::now(), Duration::from_hours(1));
        let err = enrollment.take(Ok(cert), key).unwrap_err();
        assert!(err.to_string().contains("group \"payments\""), "{err}");
        assert!(!enrollment.is_enrolled());

        // an expired certificate kept from an earlier run: enrolled again with a token
        let long_ago = SystemTime::now() - Duration::from_hours(48);
        let (cert, key) = issued(&ca, &identity(), long_ago, Duration::from_hours(24));
        enrollment.take(Ok(cert), key).unwrap();
        let restarted = Enrollment::start(Some(dir.path()), identity(), Some(token)).unwrap();
        assert!(!restarted.is_enrolled());
        // without one, it is kept (the runtime serves its cache; the controllers refuse it)
        let stuck = Enrollment::start(Some(dir.path()), identity(), None).unwrap();
        assert!(stuck.is_enrolled());
    }
}
