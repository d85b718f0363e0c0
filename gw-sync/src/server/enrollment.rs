//! The Enrollment service of a sync port that issues runtimes their certificates (see
//! [`Enroller`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status};

use super::SyncMetrics;
use super::metrics::SyncLimit;
use super::transport::SyncConn;
use crate::enroll::EnrollmentToken;
use crate::pki::{CertFacts, RuntimeIdentity};
use crate::proto::enrollment_server::{Enrollment, EnrollmentServer};
use crate::proto::{Certificate, EnrollRequest, RenewRequest};

/// A certificate issued to a runtime.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate (PEM).
    pub certificate_pem: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
    /// When the runtime should renew it.
    pub renew_after: SystemTime,
}

/// Why a certificate is not issued. The reasons reach the runtime: they never say whether a
/// token that does not match exists.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnrollRefusal {
    /// No token of this cluster has this id and secret: what a guess gets (counted against
    /// the client's address, see the sync port's limit on failed enrollments).
    #[error("{0}")]
    UnknownToken(String),
    /// The token is expired, used up or revoked; or the certificate is revoked or
    /// superseded.
    #[error("{0}")]
    Unauthenticated(String),
    /// What the runtime asks for is not what its token allows (another group).
    #[error("{0}")]
    Denied(String),
    /// The request does not read (a bad CSR, node id or group).
    #[error("{0}")]
    Invalid(String),
    /// The controller cannot issue now (its store does not answer): try again, here or at
    /// another controller.
    #[error("{0}")]
    Unavailable(String),
}

impl From<EnrollRefusal> for Status {
    fn from(refusal: EnrollRefusal) -> Self {
        match refusal {
            EnrollRefusal::UnknownToken(reason) | EnrollRefusal::Unauthenticated(reason) => {
                Status::unauthenticated(reason)
            }
            EnrollRefusal::Denied(reason) => Status::permission_denied(reason),
            EnrollRefusal::Invalid(reason) => Status::invalid_argument(reason),
            EnrollRefusal::Unavailable(reason) => Status::unavailable(reason),
        }
    }
}

/// What a controller does for enrollment: checks a token and issues a runtime its first
/// certificate, renews a certificate, and tells which certificates still hold (not revoked,
/// not superseded by a later enrollment of the node).
#[async_trait::async_trait]
pub trait Enroller: Send + Sync + 'static {
    /// Issues `identity` a certificate for the key of `csr_pem`, if `token` allows it.
    async fn enroll(
        &self,
        token: &EnrollmentToken,
        identity: &RuntimeIdentity,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal>;

    /// Issues a new certificate for the key of `csr_pem` to the runtime that presented the
    /// certificate `cert` naming `identity`.
    async fn renew(
        &self,
        identity: &RuntimeIdentity,
        cert: &CertFacts,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal>;

    /// Whether the certificate `cert` naming `identity` still holds, from memory: called for
    /// the streams open whenever [`Enroller::changes`] changes.
    fn admits(&self, identity: &RuntimeIdentity, cert: &CertFacts) -> bool;

    /// Whether the certificate `cert` naming `identity` holds, at the start of a stream: an
    /// enroller may look further than its memory for a certificate it does not know (one
    /// issued through another controller a moment ago). By default, [`Enroller::admits`].
    async fn admit(&self, identity: &RuntimeIdentity, cert: &CertFacts) -> bool {
        self.admits(identity, cert)
    }

    /// Changes whenever what [`Enroller::admits`] answers may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The most enrollments and renewals served at once by one controller: each costs a store
/// round trip and a signature, and anyone who reaches the port may ask.
const MAX_CONCURRENT: usize = 16;

/// The most enrollments with a guessed token (one that does not read, or that matches no
/// token of the cluster: [`EnrollRefusal::UnknownToken`]) from one client address (an IPv6
/// address by its `/64`) in one minute; more enrollments from it are refused until the
/// minute ends, before their token is read. A runtime holds a real token, which is never
/// counted even when spent, expired or another group's: a runtime that retries with it does
/// not lock out the others behind its address.
const MAX_FAILURES_PER_MINUTE: u32 = 20;

/// The most addresses whose failures are counted at once. A client with more addresses
/// than this fills the table for a minute: past it, new addresses are not counted (the
/// limit on enrollments served at once still bounds what they cost).
const MAX_FAILING_ADDRESSES: usize = 4096;

/// Failed enrollments per client address, in the current minute (of `now`, milliseconds
/// since the Unix epoch).
#[derive(Default)]
struct Failures(Mutex<HashMap<IpAddr, (u64, u32)>>);

impl Failures {
    /// The seconds until `peer` may enroll again, when it failed too often this minute.
    fn blocked(&self, peer: IpAddr, now: u64) -> Option<u64> {
        let failures = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match failures.get(&gw_conn::address_key(peer)) {
            Some(&(minute, count))
                if minute == now / 60_000 && count >= MAX_FAILURES_PER_MINUTE =>
            {
                Some(60 - now / 1000 % 60)
            }
            _ => None,
        }
    }

    /// Counts a failed enrollment from `peer`.
    fn record(&self, peer: IpAddr, now: u64) {
        let minute = now / 60_000;
        let key = gw_conn::address_key(peer);
        let mut failures = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= MAX_FAILING_ADDRESSES && !failures.contains_key(&key) {
            failures.retain(|_, &mut (at, _)| at == minute);
            if failures.len() >= MAX_FAILING_ADDRESSES {
                return;
            }
        }
        let entry = failures.entry(key).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// The Enrollment service.
pub(crate) struct EnrollmentService {
    enroller: Arc<dyn Enroller>,
    /// The second of the last refusal logged at warning level, and the refusals not logged
    /// since: anyone may ask, and a flood of bad tokens must not flood the log.
    warned: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
    metrics: SyncMetrics,
    /// For enrollments, which anyone who reaches the port may ask for.
    enrollments: Arc<Semaphore>,
    /// For renewals, which only enrolled runtimes make: a flood of enrollments does not
    /// keep them waiting.
    renewals: Arc<Semaphore>,
    /// Failed enrollments per client address.
    failures: Failures,
}

impl EnrollmentService {
    pub(crate) fn server(
        enroller: Arc<dyn Enroller>,
        metrics: SyncMetrics,
    ) -> EnrollmentServer<Self> {
        // requests and answers are a CSR and a certificate: small
        EnrollmentServer::new(Self {
            enroller,
            warned: std::sync::atomic::AtomicU64::new(0),
            unlogged: std::sync::atomic::AtomicU64::new(0),
            metrics,
            enrollments: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            renewals: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            failures: Failures::default(),
        })
        .max_decoding_message_size(16 * 1024)
        .max_encoding_message_size(64 * 1024)
    }

    /// Whether a refusal may be logged at warning level now (at most one a second), and
    /// how many were not since the last one.
    fn may_warn(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = crate::unix_millis() / 1000;
        let last = self.warned.load(Ordering::Relaxed);
        if now > last
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    #[allow(
        clippy::result_large_err,
        reason = "tonic's Status, as every handler returns"
    )]
    fn permit(
        &self,
        permits: &Arc<Semaphore>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(permits).try_acquire_owned().map_err(|_| {
            self.metrics.rejected(SyncLimit::Enrollments);
            Status::resource_exhausted("too many enrollments at once; try again shortly")
        })
    }
}

fn answer(issued: IssuedCertificate) -> Response<Certificate> {
    let unix = |at: SystemTime| {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    Response::new(Certificate {
        certificate_pem: issued.certificate_pem,
        ca_pem: issued.ca_pem,
        not_after_unix: unix(issued.not_after),
        renew_after_unix: unix(issued.renew_after),
    })
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<Certificate>, Status> {
        let peer = request.extensions().get::<SyncConn>().map(|conn| conn.peer);
        if let Some(wait) =
            peer.and_then(|peer| self.failures.blocked(peer.ip(), crate::unix_millis()))
        {
            self.metrics.rejected(SyncLimit::FailedEnrollments);
            return Err(Status::resource_exhausted(format!(
                "too many failed enrollments from this address in the last minute; try again \
                 in {wait} s"
            )));
        }
        let failed = |status: Status| {
            if let Some(peer) = peer {
                self.failures.record(peer.ip(), crate::unix_millis());
            }
            status
        };
        let request = request.into_inner();
        let token: EnrollmentToken =
            request
                .token
                .parse()
                .map_err(|err: crate::enroll::InvalidToken| {
                    failed(Status::unauthenticated(err.to_string()))
                })?;
        let identity = RuntimeIdentity::new(&request.group, &request.node_id)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let permit = self.permit(&self.enrollments)?;
        // on a task of its own: a client that goes away does not cut the enrollment between
        // the use of its token and the record of its certificate
        let enroller = Arc::clone(&self.enroller);
        let (task_token, task_identity) = (token.clone(), identity.clone());
        let outcome = tokio::spawn(async move {
            let _permit = permit;
            enroller
                .enroll(&task_token, &task_identity, &request.csr_pem)
                .await
        })
        .await
        .unwrap_or_else(|err| {
            Err(EnrollRefusal::Unavailable(format!(
                "the enrollment failed: {err}"
            )))
        });
        match outcome {
            Ok(issued) => {
                tracing::info!(
                    node = %identity.node_id, group = %identity.group, token = %token.id(),
                    ?peer, "runtime enrolled"
                );
                Ok(answer(issued))
            }
            Err(refusal) => {
                if let Some(unlogged) = self.may_warn() {
                    tracing::warn!(
                        node = %identity.node_id, group = %identity.group, token = %token.id(),
                        ?peer, reason = %refusal, unlogged, "enrollment refused"
                    );
                } else {
                    tracing::debug!(
                        node = %identity.node_id, token = %token.id(), ?peer,
                        reason = %refusal, "enrollment refused"
                    );
                }
                match refusal {
                    // a guess; the other refusals answer a client that holds a real token
                    // (spent, another group's: a runtime behind the same address as others
                    // must not lock them out) or are the controller's own failure
                    EnrollRefusal::UnknownToken(_) => Err(failed(refusal.into())),
                    refusal => Err(refusal.into()),
                }
            }
        }
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<Certificate>, Status> {
        let conn = request.extensions().get::<SyncConn>().cloned();
        let (Some(identity), Some(cert)) = (
            conn.as_ref().and_then(|conn| conn.identity.clone()),
            conn.as_ref().and_then(|conn| conn.cert.clone()),
        ) else {
            self.metrics.rejected(SyncLimit::Identity);
            return Err(Status::unauthenticated(
                "a renewal is made with the certificate it renews (a runtime certificate from \
                 the cluster CA); a runtime without one enrolls",
            ));
        };
        let permit = self.permit(&self.renewals)?;
        let csr = request.into_inner().csr_pem;
        let enroller = Arc::clone(&self.enroller);
        let (task_identity, task_cert) = (Arc::clone(&identity), Arc::clone(&cert));
        let outcome = tokio::spawn(async move {
            let _permit = permit;
            enroller.renew(&task_identity, &task_cert, &csr).await
        })
        .await
        .unwrap_or_else(|err| {
            Err(EnrollRefusal::Unavailable(format!(
                "the renewal failed: {err}"
            )))
        });
        match outcome {
            Ok(issued) => {
                tracing::info!(node = %identity.node_id, group = %identity.group, "runtime certificate renewed");
                Ok(answer(issued))
            }
            Err(refusal) => {
                tracing::warn!(
                    node = %identity.node_id, group = %identity.group, reason = %refusal,
                    "renewal refused"
                );
                Err(refusal.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_that_fails_too_often_waits_for_the_next_minute() {
        let failures = Failures::default();
        let now = 1_000 * MINUTE + 15_000;
        for _ in 0..MAX_FAILURES_PER_MINUTE - 1 {
            failures.record(ip("192.0.2.1"), now);
        }
        assert_eq!(failures.blocked(ip("192.0.2.1"), now), None);
        failures.record(ip("192.0.2.1"), now);
        assert_eq!(failures.blocked(ip("192.0.2.1"), now), Some(45));
        // another address is not held back; an IPv6 host is counted by its /64
        assert_eq!(failures.blocked(ip("192.0.2.2"), now), None);
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            failures.record(ip("2001:db8::1"), now);
        }
        assert!(failures.blocked(ip("2001:db8::ffff"), now).is_some());
        assert_eq!(failures.blocked(ip("2001:db8:0:1::1"), now), None);
        // the next minute starts afresh
        let later = now + MINUTE;
        assert_eq!(failures.blocked(ip("192.0.2.1"), later), None);
        failures.record(ip("192.0.2.1"), later);
        assert_eq!(failures.blocked(ip("192.0.2.1"), later), None);
    }

    #[test]
    fn the_table_of_failing_addresses_is_bounded() {
        let failures = Failures::default();
        let now = 7 * MINUTE;
        let address = |n: usize| {
            IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0000 + u32::try_from(n).unwrap(),
            ))
        };
        for n in 0..MAX_FAILING_ADDRESSES + 10 {
            failures.record(address(n), now);
        }
        assert_eq!(failures.0.lock().unwrap().len(), MAX_FAILING_ADDRESSES);
        // an address already counted still is
        for _ in 1..MAX_FAILURES_PER_MINUTE {
            failures.record(address(0), now);
        }
        assert!(failures.blocked(address(0), now).is_some());
        // a minute later the old entries make room
        failures.record(address(MAX_FAILING_ADDRESSES + 20), now + MINUTE);
        assert_eq!(failures.0.lock().unwrap().len(), 1);
    }
}
