//! The sync server's metrics, registered in the controller's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// A limit that refused or closed a sync connection, as counted in
/// `gw_sync_limit_rejections_total{limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncLimit {
    /// Every connection slot was taken: the new connection was closed at once.
    Connections,
    /// The client's address held its share of the slots.
    ConnectionsPerAddress,
    /// The connection opened no authenticated stream in time.
    FirstStreamTimeout,
    /// The connection had no stream open for the idle timeout.
    IdleTimeout,
    /// The runtime did not take a message in time.
    SendTimeout,
    /// The runtime did not acknowledge a configuration message in time.
    AckTimeout,
    /// The TLS handshake failed (no certificate where one is required, one the client CA
    /// does not vouch for, a plaintext client, TLS 1.2).
    TlsHandshake,
    /// A stream whose Hello names another node or group than the runtime's certificate,
    /// or comes without a runtime's certificate where one is required.
    Identity,
    /// Enrollments and renewals beyond the number served at once.
    Enrollments,
    /// Enrollments from an address that failed too many this minute.
    FailedEnrollments,
    /// A stream whose certificate was revoked or superseded.
    Revoked,
}

impl SyncLimit {
    fn label(self) -> &'static str {
        match self {
            SyncLimit::Connections => "connections",
            SyncLimit::ConnectionsPerAddress => "connections_per_address",
            SyncLimit::FirstStreamTimeout => "first_stream_timeout",
            SyncLimit::IdleTimeout => "idle_timeout",
            SyncLimit::SendTimeout => "send_timeout",
            SyncLimit::AckTimeout => "ack_timeout",
            SyncLimit::TlsHandshake => "tls_handshake",
            SyncLimit::Identity => "identity",
            SyncLimit::Enrollments => "enrollments",
            SyncLimit::FailedEnrollments => "failed_enrollments",
            SyncLimit::Revoked => "revoked",
        }
    }
}

/// Why a session waited before it could send a configuration message, as counted in
/// `gw_sync_inflight_waits_total{limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflightLimit {
    /// The bytes of unacknowledged configuration messages were at their limit.
    Bytes,
    /// The client's address had its share of unacknowledged messages.
    PerAddress,
}

impl InflightLimit {
    fn label(self) -> &'static str {
        match self {
            InflightLimit::Bytes => "bytes",
            InflightLimit::PerAddress => "per_address",
        }
    }
}

/// The sync server's metrics. [`SyncMetrics::default`] counts without exporting.
#[derive(Debug, Clone, Default)]
pub struct SyncMetrics {
    pub(crate) connections: Gauge,
    pub(crate) sessions: Gauge,
    pub(crate) inflight_bytes: Gauge,
    rejections: Family<LimitLabels, Counter>,
    waits: Family<LimitLabels, Counter>,
}

impl SyncMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gw_sync_connections",
            "Open connections on the sync port",
            metrics.connections.clone(),
        );
        registry.register(
            "gw_sync_sessions",
            "Open runtime sessions (streams past their Hello)",
            metrics.sessions.clone(),
        );
        registry.register(
            "gw_sync_inflight_bytes",
            "Bytes of configuration messages sent to runtimes and not yet acknowledged",
            metrics.inflight_bytes.clone(),
        );
        registry.register(
            "gw_sync_limit_rejections",
            "Sync connections refused or closed by a limit: connections, connections_per_address, \
             first_stream_timeout, idle_timeout, send_timeout, ack_timeout, tls_handshake, identity, \
             enrollments, failed_enrollments, revoked",
            metrics.rejections.clone(),
        );
        registry.register(
            "gw_sync_inflight_waits",
            "Configuration messages that waited for room among the unacknowledged ones: bytes \
             (over every session), per_address",
            metrics.waits.clone(),
        );
        // every series exists from the start, at 0
        for limit in [
            SyncLimit::Connections,
            SyncLimit::ConnectionsPerAddress,
            SyncLimit::FirstStreamTimeout,
            SyncLimit::IdleTimeout,
            SyncLimit::SendTimeout,
            SyncLimit::AckTimeout,
            SyncLimit::TlsHandshake,
            SyncLimit::Identity,
            SyncLimit::Enrollments,
            SyncLimit::FailedEnrollments,
            SyncLimit::Revoked,
        ] {
            let _ = metrics.rejections.get_or_create(&LimitLabels {
                limit: limit.label(),
            });
        }
        for limit in [InflightLimit::Bytes, InflightLimit::PerAddress] {
            let _ = metrics.waits.get_or_create(&LimitLabels {
                limit: limit.label(),
            });
        }
        metrics
    }

    pub(crate) fn rejected(&self, limit: SyncLimit) {
        self.rejections
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }

    pub(crate) fn waited(&self, limit: InflightLimit) {
        self.waits
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }
}
