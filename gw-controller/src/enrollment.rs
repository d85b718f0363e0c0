//! The sync port on the cluster's internal CA: the controller's own server certificate,
//! and the enrollment of runtimes ([`StoreEnroller`]).
//!
//! - The controller serves sync with a certificate the cluster CA issues it for its
//!   advertised names ([`server_names`]), re-issued every day ([`SERVER_CERT_LIFETIME`]).
//! - A runtime enrolls with a token made through the admin API: the token's use is taken in
//!   the store, so controllers racing for its last use cannot both give it; the certificate
//!   names the runtime's node id and the token's group, and the store records its serial.
//! - Every controller keeps the enrollments in memory, read again from the store every few
//!   seconds ([`StoreEnroller::follow`]): a stream whose certificate is revoked or replaced
//!   by a later enrollment of its node ends, on whichever controller serves it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use gw_store::{EnrollmentRecord, Renewal, Store, TokenRefusal};
use gw_sync::enroll::EnrollmentToken;
use gw_sync::pki::{CertFacts, ClusterCa, RuntimeIdentity};
use gw_sync::server::{EnrollRefusal, Enroller, IssuedCertificate};
use gw_sync::tls::{Identity, ServerTls, server_config};
use rustls::pki_types::pem::PemObject as _;
use tokio::sync::watch;

/// How long a controller's sync server certificate is valid; it is re-issued after a
/// seventh of that, so that a controller always holds one with days to go.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_hours(7 * 24);

/// How often a controller reads the enrollments again (revocations made through another
/// controller take at most this long to end a stream here).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// The names a controller's sync certificate is issued for: the advertised ones, the host
/// name, and the listening address (loopback names too when it listens on every address or
/// on loopback, where runtimes on the same host dial it).
pub fn server_names(advertised: &[String], sync_addr: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = advertised.to_vec();
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty() && gw_sync::pki::is_dns_name(host));
    names.extend(host);
    let ip = sync_addr.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    }
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(name.clone()));
    names
}

/// The sync port's TLS from the cluster CA: a server certificate for `names`, and client
/// certificates of the CA required for streams (anonymous clients pass the handshake only to
/// enroll).
pub fn server_tls(ca: &ClusterCa, names: &[String]) -> Result<Arc<rustls::ServerConfig>, String> {
    let issued = ca
        .issue_server(names, SystemTime::now(), SERVER_CERT_LIFETIME)
        .map_err(|err| err.to_string())?;
    // the CA follows the certificate: a runtime that pins its hash finds it there
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    server_config(
        &Identity {
            chain_pem: &chain,
            key_pem: &issued.key_pem,
        },
        ca.cert_pem(),
        true,
    )
    .map_err(|err| err.to_string())
}

/// Re-issues the controller's server certificate every seventh of its lifetime.
pub async fn reissue_server_certificate(
    tls: Arc<ServerTls>,
    ca: Arc<ClusterCa>,
    names: Vec<String>,
) {
    loop {
        tokio::time::sleep(SERVER_CERT_LIFETIME / 7).await;
        match server_tls(&ca, &names) {
            Ok(config) => {
                tls.replace(config);
                tracing::info!("sync server certificate re-issued");
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot re-issue the sync server certificate");
            }
        }
    }
}

/// What a controller knows of one enrolled runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    group: String,
    serial: String,
    previous_serial: Option<String>,
    revoked: bool,
    enrolled_at: SystemTime,
    not_after: SystemTime,
}

impl From<&EnrollmentRecord> for Known {
    fn from(record: &EnrollmentRecord) -> Self {
        Self {
            group: record.group.clone(),
            serial: record.serial.clone(),
            previous_serial: record.previous_serial.clone(),
            revoked: record.revoked_at.is_some(),
            enrolled_at: record.enrolled_at.into(),
            not_after: record.not_after.into(),
        }
    }
}

impl Known {
    /// Whether `cert`, naming `identity`, is one of this enrollment's: of its group, not
    /// revoked, and its current or previous certificate, or one issued since the enrollment
    /// (a renewal this controller has not read yet, or the one before the previous: a
    /// stream opened with it keeps going until it expires). A certificate issued before a
    /// later enrollment of the node is not.
    fn holds(&self, identity: &RuntimeIdentity, cert: &CertFacts) -> bool {
        // the database's timestamps keep microseconds; a certificate's, seconds
        let slack = Duration::from_secs(1);
        !self.revoked
            && self.group == identity.group
            && (self.serial == cert.serial
                || self.previous_serial.as_deref() == Some(cert.serial.as_str())
                || cert.issued_at() + slack >= self.enrolled_at)
    }
}

/// The controller's [`Enroller`]: tokens and enrollments in the store, certificates from
/// the cluster CA.
pub struct StoreEnroller {
    ca: Arc<ClusterCa>,
    store: Arc<dyn Store>,
    /// How long a runtime's certificate is valid.
    lifetime: Duration,
    known: RwLock<HashMap<String, Known>>,
    changes: watch::Sender<u64>,
    /// When the store was last read for a certificate not known here.
    looked_up: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// Held while the enrollments are read.
    reading: tokio::sync::Mutex<()>,
    /// The serial of each node that this controller recorded as in use.
    in_use: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// Certificates seen in use, for the task that records them ([`StoreEnroller::load`]).
    to_record: tokio::sync::mpsc::Sender<(String, String)>,
}

/// The most certificates seen in use waiting to be recorded; past it (the store slow or down
/// while many runtimes reconnect) one is recorded at its next stream instead.
const RECORD_QUEUE: usize = 4096;

impl std::fmt::Debug for StoreEnroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreEnroller")
            .field("ca", &self.ca)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: impl std::fmt::Display) -> EnrollRefusal {
    tracing::warn!(error = %err, "enrollment: the store did not answer");
    EnrollRefusal::Unavailable(
        "this controller cannot reach its store; try again, or another controller".to_string(),
    )
}

fn utc(at: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(at)
}

impl StoreEnroller {
    /// An enroller that issues certificates valid for `lifetime`, knowing the enrollments
    /// the store holds now.
    pub async fn load(
        ca: Arc<ClusterCa>,
        store: Arc<dyn Store>,
        lifetime: Duration,
    ) -> Result<Self, gw_store::StoreError> {
        let in_use = Arc::default();
        let (to_record, recording) = tokio::sync::mpsc::channel(RECORD_QUEUE);
        tokio::spawn(record_in_use(
            Arc::clone(&store),
            Arc::clone(&in_use),
            recording,
        ));
        let enroller = Self {
            ca,
            store,
            lifetime,
            known: RwLock::default(),
            changes: watch::channel(0).0,
            looked_up: tokio::sync::Mutex::default(),
            in_use,
            to_record,
            reading: tokio::sync::Mutex::default(),
        };
        enroller.refresh().await?;
        Ok(enroller)
    }

    /// Reads the enrollments again; the open streams are checked when anything changed.
    pub async fn refresh(&self) -> Result<(), gw_store::StoreError> {
        // one read at a time: an older read never replaces a newer one
        let _reading = self.reading.lock().await;
        let records = self.store.runtime_enrollments().await?;
        let fresh: HashMap<String, Known> = records
            .iter()
            .map(|record| (record.node_id.clone(), Known::from(record)))
            .collect();
        let changed = {
            let mut known = self
                .known
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let changed = *known != fresh;
            *known = fresh;
            changed
        };
        if changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// Reads the enrollments every [`FOLLOW_INTERVAL`], for as long as the task lives; a
    /// store that does not answer leaves what was known.
    pub async fn follow(self: Arc<Self>) {
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            if let Err(err) = self.refresh().await {
                tracing::debug!(error = %err, "enrollments not read again this time");
            }
        }
    }

    /// Records what this controller just wrote, so that its own streams see it at once
    /// (after any read under way, which would otherwise replace it with what it read).
    async fn remember(&self, node_id: &str, known: Known) {
        let _reading = self.reading.lock().await;
        self.known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node_id.to_string(), known);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Has it recorded in the store, once per certificate and off the stream's admission,
    /// that a stream opened with `cert`: if it is the node's current one, its previous one no
    /// longer renews from then on (see [`Store::renew_runtime`]). (Whether it is current,
    /// the store decides: this controller may not have read a renewal made through another
    /// yet.)
    fn record_in_use(&self, identity: &RuntimeIdentity, cert: &CertFacts) {
        let recorded = self
            .in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&identity.node_id)
            == Some(&cert.serial);
        if !recorded {
            // a full queue: recorded at a later stream
            let _ = self
                .to_record
                .try_send((identity.node_id.clone(), cert.serial.clone()));
        }
    }

    /// Whether `identity` may enroll over the node's enrollment `known`: not when that is
    /// revoked (until an operator forgets it), nor when it is another group's and has not
    /// expired (a token for one group does not take another group's node).
    fn check_takeover(
        identity: &RuntimeIdentity,
        known: &Known,
        now: SystemTime,
    ) -> Result<(), EnrollRefusal> {
        let node = &identity.node_id;
        if known.revoked {
            return Err(EnrollRefusal::Denied(format!(
                "node {node:?} was revoked; it enrolls again only once an operator forgets \
                 its enrollment (DELETE /api/v1/runtimes/{node}/enrollment), or under another \
                 node id"
            )));
        }
        if known.group != identity.group && known.not_after > now {
            return Err(EnrollRefusal::Denied(format!(
                "node {node:?} is enrolled in group {:?}: a token for group {:?} cannot take \
                 it; revoke and forget it first, or use another node id",
                known.group, identity.group
            )));
        }
        Ok(())
    }

    /// A certificate for `identity` and the key of `csr_pem`, and its facts.
    fn issue(
        &self,
        identity: &RuntimeIdentity,
        csr_pem: &str,
    ) -> Result<(IssuedCertificate, CertFacts), EnrollRefusal> {
        let pem = self
            .ca
            .sign_runtime(csr_pem, identity, SystemTime::now(), self.lifetime)
            .map_err(|err| EnrollRefusal::Invalid(err.to_string()))?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|err| EnrollRefusal::Invalid(err.to_string()))?;
        let facts = CertFacts::of_certificate(&der)
            .map_err(|err| EnrollRefusal::Invalid(err.to_string()))?;
        let issued = IssuedCertificate {
            certificate_pem: pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: facts.not_after,
            renew_after: facts.renew_after(),
        };
        Ok((issued, facts))
    }
}

#[async_trait::async_trait]
impl Enroller for StoreEnroller {
    async fn enroll(
        &self,
        token: &EnrollmentToken,
        identity: &RuntimeIdentity,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal> {
        if token.ca_hash() != self.ca.hash() {
            return Err(EnrollRefusal::UnknownToken(
                "the token names another cluster's CA".to_string(),
            ));
        }
        // the request, and whether the node may enroll, are checked before a use is taken
        check_request(csr_pem)?;
        let now = SystemTime::now();
        let known = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&identity.node_id)
            .cloned();
        if let Some(known) = known {
            Self::check_takeover(identity, &known, now)?;
        }
        match self
            .store
            .use_enrollment_token(token.id(), &token.secret_hash(), &identity.group, utc(now))
            .await
        {
            Ok(()) => {}
            Err(TokenRefusal::Store(err)) => return Err(unavailable(err)),
            Err(refusal @ TokenRefusal::OtherGroup(_)) => {
                return Err(EnrollRefusal::Denied(format!(
                    "{refusal}; this runtime serves group {:?}",
                    identity.group
                )));
            }
            Err(refusal @ TokenRefusal::Unknown) => {
                return Err(EnrollRefusal::UnknownToken(refusal.to_string()));
            }
            Err(refusal) => return Err(EnrollRefusal::Unauthenticated(refusal.to_string())),
        }
        let (issued, facts) = self.issue(identity, csr_pem)?;
        let record = EnrollmentRecord::new(
            &identity.node_id,
            &identity.group,
            &facts.serial,
            utc(facts.not_after),
            Some(token.id()),
            utc(now),
        );
        let written = self
            .store
            .enroll_runtime(&record)
            .await
            .map_err(unavailable)?;
        if !written {
            // taken or revoked through another controller since this one read it
            let _ = self.refresh().await;
            let known = self
                .known
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&identity.node_id)
                .cloned();
            return Err(known
                .and_then(|known| Self::check_takeover(identity, &known, now).err())
                .unwrap_or_else(|| {
                    EnrollRefusal::Denied(format!(
                        "node {:?} cannot be enrolled now; try again",
                        identity.node_id
                    ))
                }));
        }
        self.remember(&identity.node_id, Known::from(&record)).await;
        Ok(issued)
    }

    async fn renew(
        &self,
        identity: &RuntimeIdentity,
        cert: &CertFacts,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal> {
        let refused = || {
            EnrollRefusal::Unauthenticated(
                "this certificate was revoked or replaced; enroll the runtime again".to_string(),
            )
        };
        if !self.admit(identity, cert).await {
            return Err(refused());
        }
        check_request(csr_pem)?;
        let (issued, facts) = self.issue(identity, csr_pem)?;
        let renewal = self
            .store
            .renew_runtime(
                &identity.node_id,
                &cert.serial,
                &facts.serial,
                utc(facts.not_after),
                utc(SystemTime::now()),
            )
            .await
            .map_err(unavailable)?;
        match renewal {
            Renewal::Renewed => {}
            Renewal::Refused => return Err(refused()),
            Renewal::Reused => {
                tracing::error!(
                    node = %identity.node_id, group = %identity.group, serial = %cert.serial,
                    "a superseded certificate of this runtime asked for renewal after its \
                     successor was in use: two parties hold the runtime's key (a copy of its \
                     data directory?); the runtime is revoked, and enrolls again once an \
                     operator forgets it"
                );
                self.refresh().await.map_err(unavailable)?;
                return Err(refused());
            }
        }
        let known = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&identity.node_id)
            .cloned();
        if let Some(known) = known {
            self.remember(
                &identity.node_id,
                Known {
                    previous_serial: Some(known.serial.clone()),
                    serial: facts.serial,
                    not_after: facts.not_after,
                    ..known
                },
            )
            .await;
        }
        Ok(issued)
    }

    fn admits(&self, identity: &RuntimeIdentity, cert: &CertFacts) -> bool {
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&identity.node_id)
            .is_some_and(|known| known.holds(identity, cert))
    }

    async fn admit(&self, identity: &RuntimeIdentity, cert: &CertFacts) -> bool {
        if self.admits(identity, cert) {
            self.record_in_use(identity, cert);
            return true;
        }
        // a certificate this controller has not heard of yet (issued through another one
        // since the last read) is looked up in the store, at most once a second: a revoked
        // runtime that keeps reconnecting does not make a query each time
        let known_revoked = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&identity.node_id)
            .is_some_and(|known| known.revoked);
        if known_revoked {
            return false;
        }
        {
            let mut last = self.looked_up.lock().await;
            if last.is_some_and(|at| at.elapsed() < LOOKUP_INTERVAL) {
                return false;
            }
            *last = Some(tokio::time::Instant::now());
        }
        if let Err(err) = self.refresh().await {
            tracing::debug!(error = %err, "enrollments not read for an unknown certificate");
        }
        let admitted = self.admits(identity, cert);
        if admitted {
            self.record_in_use(identity, cert);
        }
        admitted
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Records the certificates seen in use ([`StoreEnroller::record_in_use`]) one after the
/// other, until the enroller goes. One the store does not take is left for a later stream.
async fn record_in_use(
    store: Arc<dyn Store>,
    in_use: Arc<std::sync::Mutex<HashMap<String, String>>>,
    mut recording: tokio::sync::mpsc::Receiver<(String, String)>,
) {
    while let Some((node, serial)) = recording.recv().await {
        let recorded = in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&node)
            == Some(&serial);
        if recorded {
            continue;
        }
        match store
            .runtime_serial_in_use(&node, &serial, utc(SystemTime::now()))
            .await
        {
            Ok(()) => {
                in_use
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(node, serial);
            }
            Err(err) => {
                tracing::debug!(node = %node, error = %err, "certificate in use not recorded");
            }
        }
    }
}

/// The least time between two reads of the enrollments for certificates this controller
/// does not know.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate signing request that does not read is refused before anything else.
fn check_request(csr_pem: &str) -> Result<(), EnrollRefusal> {
    gw_sync::pki::check_request(csr_pem).map_err(|err| EnrollRefusal::Invalid(err.to_string()))
}

#[cfg(test)]
mod tests {
    use gw_store::{NewEnrollmentToken, StoreOptions};
    use gw_sync::pki::runtime_key_and_request;

    use super::*;

    const HOUR: Duration = Duration::from_hours(1);

    /// Two controllers' enrollers on one store, and a way to make tokens in it.
    struct Cluster {
        store: Arc<dyn Store>,
        a: StoreEnroller,
        b: StoreEnroller,
        ca: Arc<ClusterCa>,
    }

    async fn cluster() -> Cluster {
        let store = gw_store::open("sqlite::memory:", &StoreOptions::default())
            .await
            .unwrap();
        let ca = Arc::new(ClusterCa::generate(SystemTime::now()).unwrap());
        let a = StoreEnroller::load(Arc::clone(&ca), Arc::clone(&store), HOUR)
            .await
            .unwrap();
        let b = StoreEnroller::load(Arc::clone(&ca), Arc::clone(&store), HOUR)
            .await
            .unwrap();
        Cluster { store, a, b, ca }
    }

    impl Cluster {
        async fn token(&self, group: &str, uses: i64) -> EnrollmentToken {
            let token = EnrollmentToken::generate(self.ca.hash());
            let now = Utc::now();
            self.store
                .create_enrollment_token(
                    &NewEnrollmentToken {
                        id: token.id().to_string(),
                        secret_hash: token.secret_hash(),
                        group: group.to_string(),
                        uses_max: uses,
                        expires_at: now + chrono::Duration::hours(1),
                        created_at: now,
                        description: None,
                    },
                    None,
                )
                .await
                .unwrap();
            token
        }
    }

    fn facts(issued: &IssuedCertificate) -> CertFacts {
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
                .unwrap();
        CertFacts::of_certificate(&der).unwrap()
    }

    fn csr() -> String {
        runtime_key_and_request("rt-1").unwrap().cert_pem
    }

    #[tokio::test]
    async fn a_runtime_enrolled_through_one_controller_is_admitted_by_another() {
        let cluster = cluster().await;
        let rt = RuntimeIdentity::new("edge", "rt-1").unwrap();
        let token = cluster.token("edge", 1).await;
        let issued = cluster.a.enroll(&token, &rt, &csr()).await.unwrap();
        let serial = facts(&issued);
        assert!(cluster.a.admits(&rt, &serial));
        // b has not read the enrollments since: from memory it does not know the runtime,
        // and at the start of a stream it looks in the store
        assert!(!cluster.b.admits(&rt, &serial));
        assert!(cluster.b.admit(&rt, &serial).await);
        assert!(cluster.b.admits(&rt, &serial));
        // not as another group's runtime
        let elsewhere = RuntimeIdentity::new("payments", "rt-1").unwrap();
        assert!(!cluster.b.admit(&elsewhere, &serial).await);
    }

    #[tokio::test]
    async fn tokens_are_checked_and_a_group_is_the_token_s() {
        let cluster = cluster().await;
        let rt = RuntimeIdentity::new("edge", "rt-1").unwrap();
        // another group's token, which the attempt does not use up
        let payments = cluster.token("payments", 1).await;
        let err = cluster.a.enroll(&payments, &rt, &csr()).await.unwrap_err();
        assert!(matches!(err, EnrollRefusal::Denied(_)), "{err}");
        assert!(err.to_string().contains("--group payments"), "{err}");
        assert!(err.to_string().contains("took no use"), "{err}");
        let payments_rt = RuntimeIdentity::new("payments", "rt-9").unwrap();
        cluster
            .a
            .enroll(&payments, &payments_rt, &csr())
            .await
            .unwrap();
        // a token of another cluster's CA
        let other = ClusterCa::generate(SystemTime::now()).unwrap();
        let foreign = EnrollmentToken::generate(other.hash());
        let err = cluster.a.enroll(&foreign, &rt, &csr()).await.unwrap_err();
        assert!(err.to_string().contains("another cluster"), "{err}");
        assert!(matches!(err, EnrollRefusal::UnknownToken(_)), "{err}");
        // a token of this cluster that was never made: a guess
        let guess = EnrollmentToken::generate(cluster.ca.hash());
        let err = cluster.a.enroll(&guess, &rt, &csr()).await.unwrap_err();
        assert!(matches!(err, EnrollRefusal::UnknownToken(_)), "{err}");
        // a request that does not read takes no use
        let once = cluster.token("edge", 1).await;
        let err = cluster.a.enroll(&once, &rt, "garbage").await.unwrap_err();
        assert!(matches!(err, EnrollRefusal::Invalid(_)), "{err}");
        cluster.a.enroll(&once, &rt, &csr()).await.unwrap();
        // spent
        let err = cluster.b.enroll(&once, &rt, &csr()).await.unwrap_err();
        assert!(matches!(err, EnrollRefusal::Unauthenticated(_)), "{err}");
    }

    #[tokio::test]
    async fn renewal_keeps_the_previous_certificate_and_revocation_ends_both() {
        let cluster = cluster().await;
        let rt = RuntimeIdentity::new("edge", "rt-1").unwrap();
        let token = cluster.token("edge", 2).await;
        let first = facts(&cluster.a.enroll(&token, &rt, &csr()).await.unwrap());
        let mut changes = cluster.b.changes();
        let second = facts(&cluster.b.renew(&rt, &first, &csr()).await.unwrap());
        // the stream opened with the first certificate is not cut by the renewal
        assert!(cluster.b.admits(&rt, &first) && cluster.b.admits(&rt, &second));
        // a certificate issued before the enrollment (another cluster's, an earlier
        // enrollment's) is neither admitted nor renewed
        let before = CertFacts {
            serial: "00ff".into(),
            not_before: first.not_before - Duration::from_mins(10),
            not_after: first.not_after,
        };
        assert!(!cluster.a.admits(&rt, &before));
        let err = cluster.a.renew(&rt, &before, &csr()).await.unwrap_err();
        assert!(err.to_string().contains("revoked or replaced"), "{err}");

        // revoked through the store (the admin API of any controller): the next read ends
        // both certificates, and the open streams hear of it
        assert!(
            cluster
                .store
                .revoke_runtime("rt-1", Utc::now(), None)
                .await
                .unwrap()
        );
        changes.borrow_and_update();
        cluster.b.refresh().await.unwrap();
        assert!(changes.has_changed().unwrap());
        assert!(!cluster.b.admits(&rt, &first) && !cluster.b.admits(&rt, &second));
        assert!(!cluster.b.admit(&rt, &second).await);
        let err = cluster.b.renew(&rt, &second, &csr()).await.unwrap_err();
        assert!(matches!(err, EnrollRefusal::Unauthenticated(_)), "{err}");
        // revoked stays revoked: enrolling again is refused until an operator forgets it
        let err = cluster.a.enroll(&token, &rt, &csr()).await.unwrap_err();
        assert!(err.to_string().contains("was revoked"), "{err}");
        assert!(cluster.store.forget_runtime("rt-1", None).await.unwrap());
        cluster.a.refresh().await.unwrap();
        let token = cluster.token("edge", 1).await;
        let third = facts(&cluster.a.enroll(&token, &rt, &csr()).await.unwrap());
        cluster.b.refresh().await.unwrap();
        assert!(cluster.b.admits(&rt, &third));
    }

    #[tokio::test]
    async fn a_copied_identity_is_caught_renewing_its_superseded_certificate() {
        let cluster = cluster().await;
        let rt = RuntimeIdentity::new("edge", "rt-1").unwrap();
        let token = cluster.token("edge", 1).await;
        let first = facts(&cluster.a.enroll(&token, &rt, &csr()).await.unwrap());
        // the answer of a renewal is lost: the first certificate renews again
        let lost = facts(&cluster.a.renew(&rt, &first, &csr()).await.unwrap());
        let second = facts(&cluster.a.renew(&rt, &first, &csr()).await.unwrap());
        assert_ne!(lost.serial, second.serial);
        // the runtime opens its stream with the second, at the other controller, which
        // records it in use (right after the admission)
        assert!(cluster.b.admit(&rt, &second).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while cluster.b.in_use.lock().unwrap().get("rt-1") != Some(&second.serial) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not recorded in use"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // whoever holds the certificate the second superseded (a copy of the runtime's key,
        // which had the lost answer) renews: the runtime is revoked, and its streams end at
        // the next read of each controller
        let err = cluster.b.renew(&rt, &lost, &csr()).await.unwrap_err();
        assert!(err.to_string().contains("revoked or replaced"), "{err}");
        assert!(!cluster.b.admits(&rt, &second));
        cluster.a.refresh().await.unwrap();
        assert!(!cluster.a.admits(&rt, &second) && !cluster.a.admits(&rt, &first));
        let stored = cluster.store.runtime_enrollments().await.unwrap();
        assert!(stored[0].revoked_at.is_some(), "{stored:?}");
    }

    #[tokio::test]
    async fn a_token_of_one_group_cannot_take_a_live_node_of_another() {
        let cluster = cluster().await;
        let victim = RuntimeIdentity::new("payments", "rt-1").unwrap();
        let cert = facts(
            &cluster
                .a
                .enroll(&cluster.token("payments", 1).await, &victim, &csr())
                .await
                .unwrap(),
        );
        let thief = RuntimeIdentity::new("edge", "rt-1").unwrap();
        let edge = cluster.token("edge", 1).await;
        // refused by a controller that knows the node, before the token's use is taken
        let err = cluster.a.enroll(&edge, &thief, &csr()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("is enrolled in group \"payments\""),
            "{err}"
        );
        // and by one that does not know it yet, by the store
        let err = cluster.b.enroll(&edge, &thief, &csr()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("is enrolled in group \"payments\""),
            "{err}"
        );
        cluster.b.refresh().await.unwrap();
        assert!(cluster.b.admits(&victim, &cert));
        // the same group's token re-enrolls the node (a runtime that lost its data
        // directory): the earlier certificate is superseded
        let again = facts(
            &cluster
                .a
                .enroll(&cluster.token("payments", 1).await, &victim, &csr())
                .await
                .unwrap(),
        );
        cluster.b.refresh().await.unwrap();
        assert!(cluster.b.admits(&victim, &again));
    }
}
