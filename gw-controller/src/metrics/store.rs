//! Store operations: `gw_store_operation_duration_seconds{operation}` and
//! `gw_store_errors_total{operation, kind}`, measured by a decorator around any [`Store`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gw_store::{
    AdminTokenCredential, AdminTokenRecord, Audit, AuditQuery, AuditRecord, Backend, Change,
    DeleteOutcome, DeleteResourceOutcome, EnrollmentRecord, EnrollmentTokenRecord, NewAdminToken,
    NewEnrollmentToken, PoolStatus, Precondition, PutApi, PutOutcome, PutResource,
    PutResourceOutcome, ResourceRecord, RuntimeRecord, Snapshot, Store, StoreError, TokenRefusal,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// The `operation` label values: the [`Store`] methods that reach the database.
pub(crate) const OPERATIONS: [&str; 42] = [
    "ping",
    "put_api",
    "delete_api",
    "get_api",
    "put_resource",
    "delete_resource",
    "get_resource",
    "list_resources",
    "snapshot",
    "current_revision",
    "changes_since",
    "compact",
    "register_runtime",
    "record_refusal",
    "update_runtime",
    "list_runtimes",
    "prune_runtimes",
    "cluster_secret",
    "create_enrollment_token",
    "list_enrollment_tokens",
    "revoke_enrollment_token",
    "use_enrollment_token",
    "delete_expired_enrollment_tokens",
    "enroll_runtime",
    "forget_runtime",
    "prune_runtime_enrollments",
    "prune_admin_tokens",
    "renew_runtime",
    "runtime_serial_in_use",
    "revoke_runtime",
    "runtime_enrollments",
    "create_admin_token",
    "list_admin_tokens",
    "admin_token",
    "revoke_admin_token",
    "touch_admin_token",
    "append_audit",
    "list_audit",
    "prune_audit",
    "reseal",
    "reseal_change",
    "reseal_cluster_secret",
];

/// The `kind` label values of `gw_store_errors_total`.
const ERROR_KINDS: [&str; 2] = ["unavailable", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

fn duration_histogram() -> Histogram {
    // 0.25 ms to about 8 s (the default store timeout is 5 s)
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The store's metrics. [`StoreMetrics::default`] counts without exporting.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
        }
    }
}

impl StoreMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gw_store_operation_duration_seconds",
            "Store operations, by Store method, from the call to its result (an operation its \
             caller gave up on counts with the time it ran)",
            metrics.duration.clone(),
        );
        registry.register(
            "gw_store_errors",
            "Store operations that failed: unavailable (the database did not answer in time, or \
             refused the connection) or error (it refused a statement, or stored data could not \
             be read). Answers such as not found or a failed precondition are not errors",
            metrics.errors.clone(),
        );
        // every series exists from the start, at 0, so that the first failure shows in a rate
        for operation in OPERATIONS {
            for kind in ERROR_KINDS {
                let _ = metrics
                    .errors
                    .get_or_create(&ErrorLabels { operation, kind });
            }
        }
        metrics
    }

    fn observe(&self, operation: &'static str, started: Instant, error: Option<&StoreError>) {
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
        if let Some(kind) = error.and_then(error_kind) {
            self.errors
                .get_or_create(&ErrorLabels { operation, kind })
                .inc();
        }
    }
}

/// The `kind` of a failure; `None` for an answer that is not one (the caller's request
/// could not be met: not found, already exists, a failed precondition, a route conflict, a
/// compacted change log).
fn error_kind(error: &StoreError) -> Option<&'static str> {
    match error {
        StoreError::Unavailable(_) => Some("unavailable"),
        StoreError::Database(_)
        | StoreError::Corrupt(_)
        | StoreError::Migration(_)
        | StoreError::InvalidInput(_)
        | StoreError::InvalidUrl(_) => Some("error"),
        StoreError::NotFound { .. }
        | StoreError::AlreadyExists { .. }
        | StoreError::PreconditionFailed { .. }
        | StoreError::RouteConflict { .. }
        | StoreError::Compacted { .. } => None,
    }
}

/// Records an operation when it ends, or when its caller drops it unfinished.
struct Measure<'a> {
    metrics: &'a StoreMetrics,
    operation: &'static str,
    started: Instant,
    done: bool,
}

impl Measure<'_> {
    fn finish<T>(self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.end(result.as_ref().err());
        result
    }

    /// Ends a use of a token: a refusal is an answer, only the store's failure is an error.
    fn finish_use<T>(self, result: Result<T, TokenRefusal>) -> Result<T, TokenRefusal> {
        self.end(result.as_ref().err().and_then(TokenRefusal::store_error));
        result
    }

    fn end(mut self, error: Option<&StoreError>) {
        self.done = true;
        self.metrics.observe(self.operation, self.started, error);
    }
}

impl Drop for Measure<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.observe(self.operation, self.started, None);
        }
    }
}

/// A [`Store`] that measures every operation of the store it wraps, under the method's name.
#[derive(Debug)]
pub struct MeasuredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl MeasuredStore {
    /// Measures `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }

    fn start(&self, operation: &'static str) -> Measure<'_> {
        Measure {
            metrics: &self.metrics,
            operation,
            started: Instant::now(),
            done: false,
        }
    }
}

#[async_trait]
impl Store for MeasuredStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn hints(&self) -> watch::Receiver<u64> {
        self.inner.hints()
    }

    fn store_id(&self) -> &str {
        self.inner.store_id()
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        self.inner.pool_status()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let measure = self.start("ping");
        measure.finish(self.inner.ping().await)
    }

    async fn put_api(&self, put: PutApi) -> Result<PutOutcome, StoreError> {
        let measure = self.start("put_api");
        measure.finish(self.inner.put_api(put).await)
    }

    async fn delete_api(
        &self,
        name: &str,
        precondition: Precondition,
        audit: Option<&Audit>,
    ) -> Result<DeleteOutcome, StoreError> {
        let measure = self.start("delete_api");
        measure.finish(self.inner.delete_api(name, precondition, audit).await)
    }

    async fn get_api(&self, name: &str) -> Result<Option<gw_store::ApiRecord>, StoreError> {
        let measure = self.start("get_api");
        measure.finish(self.inner.get_api(name).await)
    }

    async fn put_resource(&self, put: PutResource) -> Result<PutResourceOutcome, StoreError> {
        let measure = self.start("put_resource");
        measure.finish(self.inner.put_resource(put).await)
    }

    async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        precondition: Precondition,
        audit: Option<&Audit>,
    ) -> Result<DeleteResourceOutcome, StoreError> {
        let measure = self.start("delete_resource");
        measure.finish(
            self.inner
                .delete_resource(kind, name, precondition, audit)
                .await,
        )
    }

    async fn get_resource(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<ResourceRecord>, StoreError> {
        let measure = self.start("get_resource");
        measure.finish(self.inner.get_resource(kind, name).await)
    }

    async fn list_resources(&self, kind: &str) -> Result<Vec<ResourceRecord>, StoreError> {
        let measure = self.start("list_resources");
        measure.finish(self.inner.list_resources(kind).await)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let measure = self.start("snapshot");
        measure.finish(self.inner.snapshot().await)
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let measure = self.start("current_revision");
        measure.finish(self.inner.current_revision().await)
    }

    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let measure = self.start("changes_since");
        measure.finish(self.inner.changes_since(after, limit).await)
    }

    async fn compact(&self, through: i64) -> Result<u64, StoreError> {
        let measure = self.start("compact");
        measure.finish(self.inner.compact(through).await)
    }

    async fn register_runtime(&self, runtime: &RuntimeRecord) -> Result<bool, StoreError> {
        let measure = self.start("register_runtime");
        measure.finish(self.inner.register_runtime(runtime).await)
    }

    async fn record_refusal(
        &self,
        runtime: &RuntimeRecord,
        live_since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let measure = self.start("record_refusal");
        measure.finish(self.inner.record_refusal(runtime, live_since).await)
    }

    async fn update_runtime(&self, runtime: &RuntimeRecord) -> Result<bool, StoreError> {
        let measure = self.start("update_runtime");
        measure.finish(self.inner.update_runtime(runtime).await)
    }

    async fn list_runtimes(&self) -> Result<Vec<RuntimeRecord>, StoreError> {
        let measure = self.start("list_runtimes");
        measure.finish(self.inner.list_runtimes().await)
    }

    async fn prune_runtimes(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let measure = self.start("prune_runtimes");
        measure.finish(self.inner.prune_runtimes(cutoff).await)
    }

    async fn cluster_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        let measure = self.start("cluster_secret");
        measure.finish(self.inner.cluster_secret(name, candidate).await)
    }

    async fn create_enrollment_token(
        &self,
        token: &NewEnrollmentToken,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError> {
        let measure = self.start("create_enrollment_token");
        measure.finish(self.inner.create_enrollment_token(token, audit).await)
    }

    async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>, StoreError> {
        let measure = self.start("list_enrollment_tokens");
        measure.finish(self.inner.list_enrollment_tokens().await)
    }

    async fn revoke_enrollment_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError> {
        let measure = self.start("revoke_enrollment_token");
        measure.finish(self.inner.revoke_enrollment_token(id, at, audit).await)
    }

    async fn use_enrollment_token(
        &self,
        id: &str,
        secret_hash: &str,
        group: &str,
        now: DateTime<Utc>,
    ) -> Result<(), TokenRefusal> {
        let measure = self.start("use_enrollment_token");
        measure.finish_use(
            self.inner
                .use_enrollment_token(id, secret_hash, group, now)
                .await,
        )
    }

    async fn delete_expired_enrollment_tokens(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let measure = self.start("delete_expired_enrollment_tokens");
        measure.finish(self.inner.delete_expired_enrollment_tokens(before).await)
    }

    async fn enroll_runtime(&self, enrollment: &EnrollmentRecord) -> Result<bool, StoreError> {
        let measure = self.start("enroll_runtime");
        measure.finish(self.inner.enroll_runtime(enrollment).await)
    }

    async fn forget_runtime(
        &self,
        node_id: &str,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError> {
        let measure = self.start("forget_runtime");
        measure.finish(self.inner.forget_runtime(node_id, audit).await)
    }

    async fn prune_runtime_enrollments(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let measure = self.start("prune_runtime_enrollments");
        measure.finish(self.inner.prune_runtime_enrollments(before).await)
    }

    async fn prune_admin_tokens(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let measure = self.start("prune_admin_tokens");
        measure.finish(self.inner.prune_admin_tokens(before).await)
    }

    async fn renew_runtime(
        &self,
        node_id: &str,
        presented_serial: &str,
        new_serial: &str,
        not_after: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<gw_store::Renewal, StoreError> {
        let measure = self.start("renew_runtime");
        measure.finish(
            self.inner
                .renew_runtime(node_id, presented_serial, new_serial, not_after, at)
                .await,
        )
    }

    async fn runtime_serial_in_use(
        &self,
        node_id: &str,
        serial: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let measure = self.start("runtime_serial_in_use");
        measure.finish(self.inner.runtime_serial_in_use(node_id, serial, at).await)
    }

    async fn revoke_runtime(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError> {
        let measure = self.start("revoke_runtime");
        measure.finish(self.inner.revoke_runtime(node_id, at, audit).await)
    }

    async fn runtime_enrollments(&self) -> Result<Vec<EnrollmentRecord>, StoreError> {
        let measure = self.start("runtime_enrollments");
        measure.finish(self.inner.runtime_enrollments().await)
    }

    async fn create_admin_token(
        &self,
        token: &NewAdminToken,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError> {
        let measure = self.start("create_admin_token");
        measure.finish(self.inner.create_admin_token(token, audit).await)
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        let measure = self.start("list_admin_tokens");
        measure.finish(self.inner.list_admin_tokens().await)
    }

    async fn admin_token(&self, id: &str) -> Result<Option<AdminTokenCredential>, StoreError> {
        let measure = self.start("admin_token");
        measure.finish(self.inner.admin_token(id).await)
    }

    async fn revoke_admin_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        audit: Option<&Audit>,
    ) -> Result<bool, StoreError> {
        let measure = self.start("revoke_admin_token");
        measure.finish(self.inner.revoke_admin_token(id, at, audit).await)
    }

    async fn reseal(
        &self,
        kind: &str,
        name: &str,
        revision: i64,
        spec: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let measure = self.start("reseal");
        measure.finish(self.inner.reseal(kind, name, revision, spec).await)
    }

    async fn reseal_change(
        &self,
        kind: &str,
        name: &str,
        revision: i64,
        spec: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let measure = self.start("reseal_change");
        measure.finish(self.inner.reseal_change(kind, name, revision, spec).await)
    }

    async fn reseal_cluster_secret(
        &self,
        name: &str,
        current: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let measure = self.start("reseal_cluster_secret");
        measure.finish(self.inner.reseal_cluster_secret(name, current, value).await)
    }

    async fn touch_admin_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let measure = self.start("touch_admin_token");
        measure.finish(self.inner.touch_admin_token(id, at).await)
    }

    async fn append_audit(
        &self,
        audit: &Audit,
        kind: &str,
        name: &str,
    ) -> Result<AuditRecord, StoreError> {
        let measure = self.start("append_audit");
        measure.finish(self.inner.append_audit(audit, kind, name).await)
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let measure = self.start("list_audit");
        measure.finish(self.inner.list_audit(query).await)
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let measure = self.start("prune_audit");
        measure.finish(self.inner.prune_audit(before).await)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use gw_store::{NewAdminToken, Precondition, PutApi, PutResource, Store, StoreOptions};
    use prometheus_client::registry::Registry;
    use sqlx::Connection as _;

    use super::{MeasuredStore, OPERATIONS, StoreMetrics};

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    /// The `operation` labels of the duration histogram's `_count` series and their values.
    fn counts(text: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("gw_store_operation_duration_seconds_count{operation=\"")
            })
            .map(|rest| {
                let (operation, value) = rest.split_once("\"} ").unwrap();
                (operation.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    /// Every method that reaches the database is measured under its own name, once per
    /// call; answers that are not failures are not errors.
    #[tokio::test]
    async fn every_operation_is_measured_under_its_method_name() {
        let mut registry = Registry::default();
        let metrics = StoreMetrics::register(&mut registry);
        let inner = gw_store::open("sqlite::memory:", &StoreOptions::default())
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(MeasuredStore::new(inner, metrics));
        assert!(store.pool_status().is_some());

        let spec = serde_json::json!({"name": "a"});
        store.ping().await.unwrap();
        store
            .put_api(PutApi {
                name: "a".into(),
                spec: spec.clone(),
                routes: vec![],
                precondition: Precondition::None,
                audit: None,
            })
            .await
            .unwrap();
        store.get_api("a").await.unwrap();
        store
            .put_resource(PutResource {
                kind: "certificate".into(),
                name: "c".into(),
                spec,
                precondition: Precondition::None,
                audit: None,
            })
            .await
            .unwrap();
        store.get_resource("certificate", "c").await.unwrap();
        store.list_resources("certificate").await.unwrap();
        store.snapshot().await.unwrap();
        store.current_revision().await.unwrap();
        store.changes_since(0, 10).await.unwrap();
        let now = chrono::Utc::now();
        let runtime = gw_store::RuntimeRecord {
            node_id: "rt".into(),
            group: "default".into(),
            controller_id: "ctl".into(),
            session_id: "s".into(),
            session_epoch: 1,
            heartbeat_interval_ms: 1000,
            address: "127.0.0.1:1".into(),
            runtime_version: "0".into(),
            applied_revision: 0,
            connected: true,
            connected_at: now,
            last_seen: now,
            last_error: None,
            last_error_revision: None,
            refused: None,
        };
        store.register_runtime(&runtime).await.unwrap();
        store.update_runtime(&runtime).await.unwrap();
        store.record_refusal(&runtime, now).await.unwrap();
        store.list_runtimes().await.unwrap();
        store.prune_runtimes(now).await.unwrap();
        store.cluster_secret("s", "v").await.unwrap();
        store.reseal_cluster_secret("s", "v", "w").await.unwrap();
        store
            .reseal("certificate", "c", 1, &serde_json::json!({}))
            .await
            .unwrap();
        store
            .reseal_change("certificate", "c", 1, &serde_json::json!({}))
            .await
            .unwrap();
        store
            .create_enrollment_token(
                &gw_store::NewEnrollmentToken {
                    id: "t".into(),
                    secret_hash: "h".into(),
                    group: "default".into(),
                    uses_max: 1,
                    expires_at: now + chrono::Duration::hours(1),
                    created_at: now,
                    description: None,
                },
                None,
            )
            .await
            .unwrap();
        store.list_enrollment_tokens().await.unwrap();
        // a refused use is an answer, not a failure
        assert!(
            store
                .use_enrollment_token("t", "other", "default", now)
                .await
                .is_err()
        );
        store.revoke_enrollment_token("t", now, None).await.unwrap();
        store.delete_expired_enrollment_tokens(now).await.unwrap();
        let enrollment =
            gw_store::EnrollmentRecord::new("rt", "default", "01", now, Some("t"), now);
        store.enroll_runtime(&enrollment).await.unwrap();
        let _ = store
            .renew_runtime("rt", "01", "02", now, now)
            .await
            .unwrap();
        store.runtime_serial_in_use("rt", "02", now).await.unwrap();
        store.revoke_runtime("rt", now, None).await.unwrap();
        store.runtime_enrollments().await.unwrap();
        store.forget_runtime("rt", None).await.unwrap();
        store.prune_runtime_enrollments(now).await.unwrap();
        store.prune_admin_tokens(now).await.unwrap();
        store
            .create_admin_token(
                &NewAdminToken {
                    id: "a".into(),
                    name: "ci".into(),
                    secret_hash: "h".into(),
                    role: gw_store::AdminRole::Viewer,
                    groups: vec![],
                    created_at: now,
                    expires_at: None,
                },
                None,
            )
            .await
            .unwrap();
        store.list_admin_tokens().await.unwrap();
        store.admin_token("a").await.unwrap();
        store.touch_admin_token("a", now).await.unwrap();
        store.revoke_admin_token("a", now, None).await.unwrap();
        store
            .delete_resource("certificate", "c", Precondition::None, None)
            .await
            .unwrap();
        // a failed precondition is an answer, not a failure
        assert!(
            store
                .delete_api("a", Precondition::Revision(99), None)
                .await
                .is_err()
        );
        store
            .delete_api("a", Precondition::None, None)
            .await
            .unwrap();
        store.compact(1).await.unwrap();
        let audit = gw_store::Audit {
            actor: "ops".into(),
            role: "admin".into(),
            source: None,
            request_id: "r".into(),
            action: Some("reseal".into()),
            detail: None,
        };
        store.append_audit(&audit, "secrets", "k").await.unwrap();
        store
            .list_audit(&gw_store::AuditQuery::default())
            .await
            .unwrap();
        store.prune_audit(now).await.unwrap();

        let text = encode(&registry);
        let measured = counts(&text);
        let names: BTreeSet<&str> = measured.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(names, OPERATIONS.into_iter().collect(), "{text}");
        for (operation, count) in &measured {
            let expected = if operation == "delete_api" { 2 } else { 1 };
            assert_eq!(*count, expected, "{operation}: {text}");
        }
        // every error series exists, and none moved
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gw_store_errors_total{"))
            .collect();
        assert_eq!(errors.len(), OPERATIONS.len() * 2, "{text}");
        assert!(errors.iter().all(|l| l.ends_with(" 0")), "{text}");
    }

    /// A store that does not answer counts as `unavailable`, under the operation that failed.
    #[tokio::test]
    async fn failures_are_counted_by_operation_and_kind() {
        let mut registry = Registry::default();
        let metrics = StoreMetrics::register(&mut registry);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.db");
        let inner = gw_store::open(
            &format!("sqlite://{}", path.display()),
            &StoreOptions {
                timeout: std::time::Duration::from_millis(200),
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap();
        let store = MeasuredStore::new(inner, metrics);
        // another writer holds the database's write lock past the store's timeout
        let mut blocker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut blocker)
            .await
            .unwrap();
        let err = store
            .put_api(PutApi {
                name: "a".into(),
                spec: serde_json::json!({}),
                routes: vec![],
                precondition: Precondition::None,
                audit: None,
            })
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        let text = encode(&registry);
        assert!(
            text.lines().any(
                |l| l == "gw_store_errors_total{operation=\"put_api\",kind=\"unavailable\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "gw_store_errors_total{operation=\"put_api\",kind=\"error\"} 0"),
            "{text}"
        );
    }
}
