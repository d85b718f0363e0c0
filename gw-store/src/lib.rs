//! gw's store: where controllers keep the desired state and the fleet.
//!
//! One [`Store`] trait with two implementations: [`postgres::PgStore`] (shared by every
//! controller of a cluster) and [`sqlite::SqliteStore`] (an embedded file for a single node).
//! Migrations are embedded in the binary, one directory per backend.
//!
//! Every write commits the resource and its entry in the change log (`changes`, an outbox)
//! in one transaction, under a global revision taken in that transaction. Writers are
//! serialized, so revisions become visible in order and a reader that remembers "last seen =
//! N" never skips a change ([`feed::ChangeFeed`]). On PostgreSQL the transaction ends with
//! `NOTIFY`; the feed treats it as a hint and also polls, so a lost notification delays a
//! change by at most one poll interval and never loses it.
//!
//! The store knows nothing of the API model: it stores canonical JSON and the routing keys
//! the caller derives from it. APIs (kind [`KIND_API`]) have a table of their own because they
//! own routes; every other kind (such as `certificate`) is a [`ResourceRecord`] keyed by kind
//! and name, written with the same guarantees and sharing the same revisions and change log.
#![warn(missing_docs)]

mod admin_tokens;
pub mod audit;
mod enrollment;
mod error;
pub mod feed;
pub mod postgres;
mod sql;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

pub use admin_tokens::{
    AdminRole, AdminTokenCredential, AdminTokenRecord, AdminTokenState, NewAdminToken, UnknownRole,
};
pub use audit::{Audit, AuditQuery, AuditRecord};
pub use enrollment::{
    EnrollmentRecord, EnrollmentTokenRecord, NewEnrollmentToken, Renewal, TokenRefusal,
};
pub use error::StoreError;

/// The kind of APIs, in the change log. APIs are written with [`Store::put_api`], never as a
/// generic resource.
pub const KIND_API: &str = "api";

/// An API as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRecord {
    /// The API's name (its id).
    pub name: String,
    /// The canonical definition.
    pub spec: serde_json::Value,
    /// The revision of the last write to this API; also its ETag.
    pub revision: i64,
    /// When it was first created.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// A resource of a kind other than `api` (such as `certificate`), as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRecord {
    /// The resource kind (`certificate`, …); never [`KIND_API`].
    pub kind: String,
    /// The resource's name, unique within its kind.
    pub name: String,
    /// The canonical definition.
    pub spec: serde_json::Value,
    /// The revision of the last write to this resource; also its ETag.
    pub revision: i64,
    /// When it was first created.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

impl From<ResourceRecord> for ApiRecord {
    /// An API read as a resource of kind [`KIND_API`] (its kind is dropped).
    fn from(record: ResourceRecord) -> Self {
        Self {
            name: record.name,
            spec: record.spec,
            revision: record.revision,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

impl From<ApiRecord> for ResourceRecord {
    /// An API as a resource of kind [`KIND_API`], for code that treats every kind alike.
    fn from(record: ApiRecord) -> Self {
        Self {
            kind: KIND_API.to_string(),
            name: record.name,
            spec: record.spec,
            revision: record.revision,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// A place in the routing table: a context on a host (`*` for any) within a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// Gateway group.
    pub group: String,
    /// Host, or `*`.
    pub host: String,
    /// Context.
    pub context: String,
}

/// What must hold before a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Nothing: create or replace.
    #[default]
    None,
    /// The resource must not exist ([`StoreError::AlreadyExists`] otherwise).
    Absent,
    /// The resource must exist at exactly this revision ([`StoreError::PreconditionFailed`]
    /// otherwise).
    Revision(i64),
}

/// A create-or-replace of an API.
#[derive(Debug, Clone)]
pub struct PutApi {
    /// The API's name.
    pub name: String,
    /// The canonical definition.
    pub spec: serde_json::Value,
    /// The routing keys it occupies.
    pub routes: Vec<RouteKey>,
    /// What must hold first.
    pub precondition: Precondition,
    /// Who makes the write: its audit record is written in its transaction.
    pub audit: Option<Audit>,
}

/// The result of a put: of an API ([`ApiRecord`], the default) or of another resource
/// ([`PutResourceOutcome`]).
#[derive(Debug, Clone)]
pub struct PutOutcome<R = ApiRecord> {
    /// The resource as stored now.
    pub record: R,
    /// Whether it did not exist before.
    pub created: bool,
    /// The definition it replaced, if any.
    pub previous: Option<serde_json::Value>,
}

impl<R> PutOutcome<R> {
    /// The same outcome with its record as another type.
    #[must_use]
    pub fn into_record<T: From<R>>(self) -> PutOutcome<T> {
        PutOutcome {
            record: self.record.into(),
            created: self.created,
            previous: self.previous,
        }
    }
}

/// The result of a delete: of an API ([`ApiRecord`], the default) or of another resource
/// ([`DeleteResourceOutcome`]).
#[derive(Debug, Clone)]
pub struct DeleteOutcome<R = ApiRecord> {
    /// The revision of the delete.
    pub revision: i64,
    /// The resource as it was.
    pub previous: R,
}

impl<R> DeleteOutcome<R> {
    /// The same outcome with its record as another type.
    #[must_use]
    pub fn into_record<T: From<R>>(self) -> DeleteOutcome<T> {
        DeleteOutcome {
            revision: self.revision,
            previous: self.previous.into(),
        }
    }
}

/// A create-or-replace of a resource.
#[derive(Debug, Clone)]
pub struct PutResource {
    /// The resource kind; neither empty nor [`KIND_API`].
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The canonical definition.
    pub spec: serde_json::Value,
    /// What must hold first.
    pub precondition: Precondition,
    /// Who makes the write: its audit record is written in its transaction.
    pub audit: Option<Audit>,
}

/// The result of a put of a resource.
pub type PutResourceOutcome = PutOutcome<ResourceRecord>;

/// The result of a delete of a resource.
pub type DeleteResourceOutcome = DeleteOutcome<ResourceRecord>;

/// What a change did.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOp {
    /// The resource was created or replaced with this definition.
    Upsert(serde_json::Value),
    /// The resource was deleted.
    Delete,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its revision; revisions are dense and increase by one per change.
    pub revision: i64,
    /// The resource kind ([`KIND_API`], `certificate`, …).
    pub kind: String,
    /// The resource name.
    pub name: String,
    /// What happened.
    pub op: ChangeOp,
    /// When.
    pub at: DateTime<Utc>,
}

/// The full state at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The revision the state is at.
    pub revision: i64,
    /// Every API.
    pub apis: Vec<ApiRecord>,
    /// Every resource of the other kinds, by kind then name.
    pub resources: Vec<ResourceRecord>,
}

/// A runtime as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeRecord {
    /// The runtime's node id.
    pub node_id: String,
    /// The gateway group it serves.
    pub group: String,
    /// The controller it is (or was last) connected to.
    pub controller_id: String,
    /// Identifies one connection; updates from another connection are ignored.
    pub session_id: String,
    /// Orders the connections of one runtime (a later one has a larger epoch); a register
    /// from an older one is ignored.
    pub session_epoch: i64,
    /// The runtime's heartbeat interval: it is stale after three silent ones.
    pub heartbeat_interval_ms: i64,
    /// The runtime's address as the controller saw it.
    pub address: String,
    /// The runtime's version.
    pub runtime_version: String,
    /// The last revision it acknowledged.
    pub applied_revision: i64,
    /// Whether its stream is open.
    pub connected: bool,
    /// When its current (or last) stream opened.
    pub connected_at: DateTime<Utc>,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
    /// Its last rejection of a configuration.
    pub last_error: Option<String>,
    /// The revision it rejected.
    pub last_error_revision: Option<i64>,
    /// Why a controller refused its last Hello (an incompatible protocol version, say); then
    /// it has no session.
    pub refused: Option<String>,
}

/// The connection pool of a store, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open, in use or idle.
    pub open: u32,
    /// Open connections that no operation is using.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, shared by a cluster of controllers.
    Postgres,
    /// An embedded SQLite file, for one node.
    Sqlite,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        })
    }
}

/// The desired state and the fleet, on PostgreSQL or SQLite.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The database behind this store.
    fn backend(&self) -> Backend;

    /// A counter that changes whenever new changes may be readable (a notification arrived,
    /// or the notification channel reconnected and notifications may have been lost). The
    /// feed waits on it and then re-reads; it is a hint, never the data.
    fn hints(&self) -> watch::Receiver<u64>;

    /// The id of this database, random and fixed when it was created.
    fn store_id(&self) -> &str;

    /// Its connection pool now, read without waiting; `None` for a store without one.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates or replaces an API and appends the change, in one transaction.
    async fn put_api(&self, put: PutApi) -> Result<PutOutcome, StoreError>;

    /// Deletes an API and appends the change (and, with `audit`, its audit record), in one
    /// transaction.
    async fn delete_api(
        &self,
        name: &str,
        precondition: Precondition,
        audit: Option<&Audit>,
    ) -> Result<DeleteOutcome, StoreError>;

    /// One API.
    async fn get_api(&self, name: &str) -> Result<Option<ApiRecord>, StoreError>;

    /// Creates or replaces a resource of a kind other than [`KIND_API`] and appends the
    /// change, in one transaction; [`StoreError::InvalidInput`] for kind `api` or an empty
    /// kind.
    async fn put_resource(&self, put: PutResource) -> Result<PutResourceOutcome, StoreError>;

    /// Deletes a resource of a kind other than [`KIND_API`] and appends the change (and,
    /// with `audit`, its audit record), in one transaction; [`StoreError::InvalidInput`] for
    /// kind `api` or an empty kind.
    async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        precondition: Precondition,
        audit: Option<&Audit>,
    ) -> Result<DeleteResourceOutcome, StoreError>;

    /// One resource.
    async fn get_resource(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<ResourceRecord>, StoreError>;

    /// Every resource of `kind`, by name.
    async fn list_resources(&self, kind: &str) -> Result<Vec<ResourceRecord>, StoreError>;

    /// Every API by name and every other resource by kind and name, and the revision they
    /// are at, all read at one point in time.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// The newest revision.
    async fn current_revision(&self) -> Result<i64, StoreError>;

    /// Up to `limit` changes with a revision above `after`, in revision order; or
    /// [`StoreError::Compacted`] when some of them are no longer in the log.
    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError>;

    /// Deletes the changes at or below `through` from the log; readers behind it get
    /// [`StoreError::Compacted`] and start over from a snapshot. Returns how many went.
    async fn compact(&self, through: i64) -> Result<u64, StoreError>;

    /// Records a runtime that has just connected (a new session), replacing its row unless
    /// the row holds a later session (this write comes late, from a controller the runtime
    /// has since left); returns whether it wrote.
    async fn register_runtime(&self, runtime: &RuntimeRecord) -> Result<bool, StoreError>;

    /// Records that a controller refused a runtime (`runtime.refused`), replacing its row only
    /// when that holds no live session: one that is disconnected, or silent since
    /// `live_since`. Returns whether it wrote.
    async fn record_refusal(
        &self,
        runtime: &RuntimeRecord,
        live_since: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Updates a runtime's row if its session is still the current one; returns whether it
    /// did (a runtime that moved to another controller is no longer ours to update).
    async fn update_runtime(&self, runtime: &RuntimeRecord) -> Result<bool, StoreError>;

    /// Every runtime, by node id.
    async fn list_runtimes(&self) -> Result<Vec<RuntimeRecord>, StoreError>;

    /// Deletes runtimes last seen before `cutoff`; returns how many went.
    async fn prune_runtimes(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The value the cluster keeps under `name` (its internal CA), made once: if there is
    /// none yet, `candidate` becomes it. Controllers that start together agree on one value,
    /// whichever was inserted first; the others' candidates are dropped.
    async fn cluster_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;

    /// Stores a new enrollment token, unused and not revoked (and, with `audit`, its audit
    /// record, in the same transaction); [`StoreError::AlreadyExists`] when its id is taken.
    async fn create_enrollment_token(
        &self,
        token: &NewEnrollmentToken,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError>;

    /// Every enrollment token, newest first; never their secrets' hashes.
    async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>, StoreError>;

    /// Revokes the token `id` at `at` (a token revoked before keeps its first time) and, with
    /// `audit`, records it in the same transaction; returns whether it exists (an unknown id
    /// records nothing).
    async fn revoke_enrollment_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError>;

    /// Takes one use of the token `id` whose secret has the hash `secret_hash`, when it
    /// enrolls runtimes of `group`, is neither revoked nor expired at `now` and has a use
    /// left. One conditional update does it, so that controllers racing for the last use
    /// cannot both have it; a refusal takes no use and says why (a wrong secret reads as
    /// [`TokenRefusal::Unknown`], a runtime of another group as
    /// [`TokenRefusal::OtherGroup`]).
    async fn use_enrollment_token(
        &self,
        id: &str,
        secret_hash: &str,
        group: &str,
        now: DateTime<Utc>,
    ) -> Result<(), TokenRefusal>;

    /// Deletes the tokens that expired before `before`; returns how many went.
    async fn delete_expired_enrollment_tokens(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Records a runtime's enrollment; returns whether it did. An earlier enrollment of the
    /// same node is replaced (its certificates superseded) only when it is not revoked and is
    /// of the same group, or has expired at the new one's `enrolled_at`: a token for one
    /// group cannot take a live node of another, and a revoked node stays revoked until
    /// [`Store::forget_runtime`]. The record's `previous_serial`, `renewed_at` and
    /// `revoked_at` are not written (a new enrollment has none).
    async fn enroll_runtime(&self, enrollment: &EnrollmentRecord) -> Result<bool, StoreError>;

    /// Deletes the enrollment of `node_id`, revoked or not: the node id may enroll again.
    /// With `audit`, records it in the same transaction. Returns whether there was one (none
    /// records nothing).
    async fn forget_runtime(
        &self,
        node_id: &str,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError>;

    /// Deletes the enrollments whose certificate expired before `before` and that are not
    /// revoked (a revocation holds until [`Store::forget_runtime`]); returns how many went.
    async fn prune_runtime_enrollments(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Deletes the admin tokens revoked, or expired, before `before`; returns how many went.
    async fn prune_admin_tokens(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Replaces the certificate of the enrolled runtime `node_id` with `new_serial` (expiring
    /// at `not_after`) when it is not revoked and `presented_serial` is its current serial,
    /// or its previous one while the current one has not been seen in use
    /// ([`Store::runtime_serial_in_use`]: the answer of the renewal that made it may have
    /// been lost). The current serial becomes the previous. The previous serial presented
    /// once the current one is in use means two holders of the identity: the node is
    /// revoked ([`Renewal::Reused`]).
    async fn renew_runtime(
        &self,
        node_id: &str,
        presented_serial: &str,
        new_serial: &str,
        not_after: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Renewal, StoreError>;

    /// Records that the current certificate `serial` of `node_id` was seen in use (a stream
    /// opened with it), if it is still current and not recorded yet.
    async fn runtime_serial_in_use(
        &self,
        node_id: &str,
        serial: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Revokes the enrollment of `node_id` at `at` (one revoked before keeps its first time)
    /// and, with `audit`, records it in the same transaction; returns whether the node has
    /// one (a node without records nothing).
    async fn revoke_runtime(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError>;

    /// Every runtime enrollment, revoked ones included, by node id.
    async fn runtime_enrollments(&self) -> Result<Vec<EnrollmentRecord>, StoreError>;

    /// Stores a new admin token, not revoked and never used (and, with `audit`, its audit
    /// record, in the same transaction); [`StoreError::AlreadyExists`] when a token that is
    /// not revoked has its name (or, which does not happen with random ids, its id).
    async fn create_admin_token(
        &self,
        token: &NewAdminToken,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError>;

    /// Every admin token, revoked and expired ones included, newest first; never their
    /// secrets' hashes.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError>;

    /// The admin token `id` with its secret's hash, to authenticate a request with it.
    async fn admin_token(&self, id: &str) -> Result<Option<AdminTokenCredential>, StoreError>;

    /// Rewrites the spec of the stored `kind` `name` (an API or another resource), and of
    /// its entry in the change log, if it is still at `revision`: without a new revision, a
    /// change or a notification. Only for a rewrite that changes no meaning, such as
    /// resealing its secrets under a new key (runtimes, which receive them opened, see
    /// nothing). Returns whether it was rewritten: `false` when it was written or deleted
    /// meanwhile (read it again).
    async fn reseal(
        &self,
        kind: &str,
        name: &str,
        revision: i64,
        spec: &serde_json::Value,
    ) -> Result<bool, StoreError>;

    /// Rewrites the spec of the change log's upsert of `kind` `name` at `revision` (an older
    /// version, kept for deltas), as [`Store::reseal`] does; `false` when the log has no
    /// such entry (compacted).
    async fn reseal_change(
        &self,
        kind: &str,
        name: &str,
        revision: i64,
        spec: &serde_json::Value,
    ) -> Result<bool, StoreError>;

    /// Replaces the cluster secret `name` by `value` if it still is `current` (resealed);
    /// `false` otherwise.
    async fn reseal_cluster_secret(
        &self,
        name: &str,
        current: &str,
        value: &str,
    ) -> Result<bool, StoreError>;

    /// Revokes the admin token `id` at `at` (a token revoked before keeps its first time)
    /// and, with `audit`, records it in the same transaction; returns whether it exists (an
    /// unknown id records nothing).
    async fn revoke_admin_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError>;

    /// Appends the audit record of an operation that is not one write, made by `audit` to
    /// `kind` `name`, once it completed: a reseal, which rewrites each sealed value in a
    /// conditional update of its own and changes no meaning. Every write records in its own
    /// transaction instead (its `audit`). [`StoreError::InvalidInput`] when `audit` names no
    /// action.
    async fn append_audit(
        &self,
        audit: &Audit,
        kind: &str,
        name: &str,
    ) -> Result<AuditRecord, StoreError>;

    /// The audit records `query` selects, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes the audit records made before `before`; returns how many went.
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Records that the admin token `id` authenticated a request at `at`, unless it was
    /// recorded less than a minute before: a busy token costs one write a minute, not one a
    /// request.
    async fn touch_admin_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Longest wait for a connection or a statement before [`StoreError::Unavailable`].
    pub timeout: Duration,
    /// Most connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_connections: 10,
        }
    }
}

/// Opens the store at `url` (`postgres://…` or `sqlite://…`) and runs its migrations.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url, options).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, options).await?))
    } else {
        Err(StoreError::InvalidUrl(
            "the database URL must start with postgres://, postgresql:// or sqlite:".to_string(),
        ))
    }
}

/// Applies a precondition to the revision of the existing row (if any).
fn check_precondition(
    name: &str,
    precondition: Precondition,
    existing: Option<i64>,
) -> Result<(), StoreError> {
    match (precondition, existing) {
        (Precondition::Absent, Some(_)) => Err(StoreError::AlreadyExists {
            name: name.to_string(),
        }),
        (Precondition::Revision(expected), actual) if actual != Some(expected) => {
            Err(StoreError::PreconditionFailed {
                name: name.to_string(),
                expected,
                actual,
            })
        }
        _ => Ok(()),
    }
}

/// The error of a write that needs an existing row and found none: the precondition's
/// failure when it named a revision, else [`StoreError::NotFound`].
fn missing(name: &str, precondition: Precondition) -> StoreError {
    match precondition {
        Precondition::Revision(expected) => StoreError::PreconditionFailed {
            name: name.to_string(),
            expected,
            actual: None,
        },
        _ => StoreError::NotFound {
            name: name.to_string(),
        },
    }
}

/// Refuses the kinds that cannot be written as a generic resource.
fn check_resource_kind(kind: &str) -> Result<(), StoreError> {
    if kind.is_empty() {
        Err(StoreError::InvalidInput(
            "a resource kind must not be empty".to_string(),
        ))
    } else if kind == KIND_API {
        Err(StoreError::InvalidInput(format!(
            "resources of kind {KIND_API:?} are written as APIs (put_api), which own routes"
        )))
    } else {
        Ok(())
    }
}

/// Turns a stored `op` and `spec` into a [`ChangeOp`].
fn change_op(op: &str, spec: Option<serde_json::Value>) -> Result<ChangeOp, StoreError> {
    match (op, spec) {
        ("upsert", Some(spec)) => Ok(ChangeOp::Upsert(spec)),
        ("delete", _) => Ok(ChangeOp::Delete),
        (other, _) => Err(StoreError::Corrupt(format!(
            "change with op {other:?} and no spec"
        ))),
    }
}

/// The name of the notification channel on PostgreSQL.
pub const NOTIFY_CHANNEL: &str = "gw_changes";
