//! The fleet: every runtime connected to this controller, recorded in the store so that any
//! controller can list the whole fleet and wait for a revision to be applied everywhere.
//!
//! Sync sessions report events to [`FleetRecorder`] without waiting: it updates the record in
//! memory and marks it dirty, and one writer task persists the newest record of each dirty
//! runtime (coalescing bursts, retrying while the store is unreachable). A stopping controller
//! calls [`FleetRecorder::stop`] once its sessions have ended, and waits for the writer to
//! persist what is left: the runtimes it served are then recorded as disconnected, not left
//! connected until they turn stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use gw_store::{RuntimeRecord, Store};
use gw_sync::server::{FleetObserver, SessionInfo};
use serde::Serialize;
use tokio::sync::Notify;

use crate::metrics::FleetMetrics;

#[derive(Debug)]
struct Pending {
    record: RuntimeRecord,
    /// A new session: replace the row instead of updating it.
    register: bool,
    /// A refusal: replace the row only if it holds no session seen since then.
    refusal: Option<DateTime<Utc>>,
}

/// Records fleet events; see the module docs.
#[derive(Debug)]
pub struct FleetRecorder {
    controller_id: String,
    /// This controller's runtimes, by node id.
    local: Mutex<HashMap<String, RuntimeRecord>>,
    dirty: Mutex<HashMap<String, Pending>>,
    wake: Notify,
    metrics: FleetMetrics,
    /// Set by [`FleetRecorder::stop`]: the writer returns once nothing is left to write.
    stopping: AtomicBool,
}

impl FleetRecorder {
    /// A recorder for the runtimes of `controller_id`.
    pub fn new(controller_id: String) -> Self {
        Self {
            controller_id,
            local: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            metrics: FleetMetrics::default(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Counts rejections and refusals in `metrics` (registered with
    /// [`FleetMetrics::register`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: FleetMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Makes [`FleetRecorder::write_loop`] return once it has written every pending record,
    /// or once a write fails (no retries then; each write still waits for the store as long
    /// as the store's timeout allows: bound the wait).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Changes this controller's record of a session and queues it for the store.
    fn update(&self, session: &SessionInfo, change: impl FnOnce(&mut RuntimeRecord)) {
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(record) = local
            .get_mut(&session.node_id)
            .filter(|r| r.session_id == session.session_id)
        else {
            return;
        };
        change(record);
        record.last_seen = Utc::now();
        let record = record.clone();
        drop(local);
        self.mark(record, false);
    }

    fn mark(&self, record: RuntimeRecord, register: bool) {
        let mut dirty = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let register = register
            || dirty
                .get(&record.node_id)
                .is_some_and(|p| p.register && p.record.session_id == record.session_id);
        dirty.insert(
            record.node_id.clone(),
            Pending {
                record,
                register,
                refusal: None,
            },
        );
        drop(dirty);
        self.wake.notify_one();
    }

    /// Queues a refusal, unless a session's record is waiting to be written: that wins.
    fn mark_refusal(&self, record: RuntimeRecord, live_since: DateTime<Utc>) {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(record.node_id.clone())
            .or_insert(Pending {
                record,
                register: false,
                refusal: Some(live_since),
            });
        self.wake.notify_one();
    }

    /// Whether this controller still holds the session of `record`.
    fn holds(&self, record: &RuntimeRecord) -> bool {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&record.node_id)
            .is_some_and(|r| r.session_id == record.session_id)
    }

    /// Persists dirty records until the task is dropped, or until [`FleetRecorder::stop`]
    /// was called and none is left.
    pub async fn write_loop(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stopping.load(Ordering::Acquire)
                && self
                    .dirty
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_empty()
            {
                return;
            }
            self.wake.notified().await;
            loop {
                let batch: Vec<Pending> = {
                    let mut dirty = self
                        .dirty
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    dirty.drain().map(|(_, p)| p).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let mut failed = Vec::new();
                for mut pending in batch {
                    let result = if let Some(live_since) = pending.refusal {
                        store.record_refusal(&pending.record, live_since).await
                    } else if pending.register {
                        store.register_runtime(&pending.record).await
                    } else {
                        match store.update_runtime(&pending.record).await {
                            // no row for this session (pruned during an outage, say) while the
                            // runtime is still connected here: write the whole row again
                            Ok(false) if self.holds(&pending.record) => {
                                pending.register = true;
                                store.register_runtime(&pending.record).await
                            }
                            other => other,
                        }
                    };
                    if pending.register && matches!(result, Ok(false)) {
                        tracing::info!(
                            node = %pending.record.node_id, session = %pending.record.session_id,
                            "not recording a runtime session: the fleet holds a newer one"
                        );
                    }
                    if let Err(err) = result {
                        tracing::warn!(node = %pending.record.node_id, error = %err, "cannot record runtime state; will retry");
                        failed.push(pending);
                    }
                }
                if failed.is_empty() {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                if self.stopping.load(Ordering::Acquire) {
                    // the store fails while the controller stops: no retries to wait for
                    tracing::warn!(
                        runtimes = failed.len(),
                        "stopping without recording the last state of some runtimes"
                    );
                    return;
                }
                {
                    let mut dirty = self
                        .dirty
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for pending in failed {
                        // a newer record for the same runtime wins
                        dirty
                            .entry(pending.record.node_id.clone())
                            .or_insert(pending);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl FleetObserver for FleetRecorder {
    fn connected(&self, session: &SessionInfo, applied_revision: i64) {
        self.metrics.connected(&session.group);
        let now = Utc::now();
        let record = RuntimeRecord {
            node_id: session.node_id.clone(),
            group: session.group.clone(),
            controller_id: self.controller_id.clone(),
            session_id: session.session_id.clone(),
            session_epoch: i64::try_from(session.session_epoch).unwrap_or(i64::MAX),
            heartbeat_interval_ms: i64::try_from(session.heartbeat_interval.as_millis())
                .unwrap_or(i64::MAX),
            address: session.address.clone(),
            runtime_version: session.runtime_version.clone(),
            applied_revision,
            connected: true,
            connected_at: DateTime::<Utc>::from(session.connected_at),
            last_seen: now,
            last_error: None,
            last_error_revision: None,
            refused: None,
        };
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(session.node_id.clone(), record.clone());
        self.mark(record, true);
    }

    fn applied(&self, session: &SessionInfo, revision: i64) {
        self.update(session, |r| r.applied_revision = revision);
    }

    fn rejected(&self, session: &SessionInfo, revision: i64, errors: &[String]) {
        self.metrics.rejected(&session.group);
        let message: String = errors.join("; ").chars().take(4000).collect();
        self.update(session, |r| {
            r.last_error = Some(message);
            r.last_error_revision = Some(revision);
        });
    }

    fn seen(&self, session: &SessionInfo, applied_revision: i64) {
        self.update(session, |r| r.applied_revision = applied_revision);
    }

    fn disconnected(&self, session: &SessionInfo, applied_revision: i64) {
        self.update(session, |r| {
            r.applied_revision = applied_revision;
            r.connected = false;
        });
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if local
            .get(&session.node_id)
            .is_some_and(|r| r.session_id == session.session_id)
        {
            local.remove(&session.node_id);
        }
    }

    fn refused(&self, runtime: &SessionInfo, applied_revision: i64, reason: &str) {
        self.metrics.refused();
        // a Hello refused for its node id cannot be listed under it, and a runtime holding a
        // session here is not replaced by another process that claims its id
        if gw_sync::validate_node_id(&runtime.node_id).is_err()
            || self
                .local
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(&runtime.node_id)
        {
            return;
        }
        let now = Utc::now();
        let clip = |text: &str, max: usize| gw_sync::clip(text, max).to_string();
        let record = RuntimeRecord {
            node_id: runtime.node_id.clone(),
            group: clip(&runtime.group, 128),
            controller_id: self.controller_id.clone(),
            session_id: runtime.session_id.clone(),
            // no session: any later one of this runtime replaces the record
            session_epoch: 0,
            heartbeat_interval_ms: i64::try_from(runtime.heartbeat_interval.as_millis())
                .unwrap_or(i64::MAX),
            address: clip(&runtime.address, 256),
            runtime_version: runtime.runtime_version.clone(),
            applied_revision: applied_revision.max(0),
            connected: false,
            connected_at: now,
            last_seen: now,
            last_error: None,
            last_error_revision: None,
            refused: Some(clip(reason, 4000)),
        };
        // a session is live while it is not stale (see `view`)
        let live_since = chrono::Duration::from_std(stale_after(&record))
            .ok()
            .and_then(|stale| now.checked_sub_signed(stale))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.mark_refusal(record, live_since);
    }
}

/// A runtime as `GET /api/v1/runtimes` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeView {
    /// The stored record.
    #[serde(flatten)]
    pub record: RuntimeRecord,
    /// `connected`, `stale` (connected, but silent for three heartbeat intervals: its
    /// controller may be gone), `disconnected`, or `refused` (a controller refused its Hello;
    /// `refused` says why).
    pub status: &'static str,
    /// How many revisions it is behind the newest.
    pub lag: i64,
}

/// How long a connected runtime may be silent before it counts as stale: three of its
/// heartbeat intervals and five seconds.
fn stale_after(record: &RuntimeRecord) -> Duration {
    let heartbeat = Duration::from_millis(u64::try_from(record.heartbeat_interval_ms).unwrap_or(0));
    heartbeat
        .saturating_mul(3)
        .saturating_add(Duration::from_secs(5))
}

/// Classifies a stored runtime.
pub fn view(record: RuntimeRecord, newest: i64, now: SystemTime) -> RuntimeView {
    let now: DateTime<Utc> = now.into();
    let silent = (now - record.last_seen).to_std().unwrap_or_default();
    let status = match (record.connected, silent > stale_after(&record)) {
        (false, _) if record.refused.is_some() => "refused",
        (true, false) => "connected",
        (true, true) => "stale",
        (false, _) => "disconnected",
    };
    RuntimeView {
        lag: (newest - record.applied_revision).max(0),
        status,
        record,
    }
}

/// Where a revision stands across the runtimes of some groups.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Node ids that applied it.
    pub applied: Vec<String>,
    /// Runtimes that have not, with the revision they serve.
    pub pending: Vec<(String, i64)>,
    /// Runtimes that rejected it, with their reason.
    pub rejected: Vec<(String, String)>,
    /// Runtimes of the groups that no controller serves (a refused Hello), with the reason:
    /// they cannot apply it until they are upgraded or fixed.
    pub refused: Vec<(String, String)>,
}

impl ApplyReport {
    /// Whether no runtime took part: no connected runtime serves the groups (or each one
    /// that would is refused), so nothing applied the revision and nothing was waited for.
    pub fn reached_nobody(&self) -> bool {
        self.applied.is_empty() && self.pending.is_empty() && self.rejected.is_empty()
    }

    /// Adds the report of `revision` on the runtimes of `groups` to a write's answer:
    /// `applied`, `refused` when some runtimes of the groups are refused, and `warning`
    /// (`{"code": "no_runtime", "message"}`) when no runtime took part. Returns the text of
    /// that warning for a `Warning` header (plain words, no quotes).
    pub fn describe(
        self,
        groups: &[String],
        revision: i64,
        body: &mut serde_json::Value,
    ) -> Option<String> {
        let warning = self.reached_nobody().then(|| {
            let (noun, quoted, plain) = group_words(groups);
            let message = if self.refused.is_empty() {
                format!(
                    "no connected runtime serves {noun} {quoted}: revision {revision} is \
                     stored, and no runtime has applied it; runtimes of the {noun} get it when \
                     they connect"
                )
            } else {
                format!(
                    "no runtime of {noun} {quoted} can apply revision {revision}: {} refused \
                     (see refused); the revision is stored, and runtimes of the {noun} get it \
                     when they are served",
                    self.refused.len()
                )
            };
            body["warning"] = serde_json::json!({"code": "no_runtime", "message": message});
            format!(
                "no connected runtime serves {noun} {plain}; nothing applied revision {revision}"
            )
        });
        body["applied"] = serde_json::json!(self.applied);
        if !self.refused.is_empty() {
            let refused: Vec<_> = self
                .refused
                .into_iter()
                .map(|(node, reason)| serde_json::json!({"nodeId": node, "reason": reason}))
                .collect();
            body["refused"] = serde_json::Value::Array(refused);
        }
        warning
    }
}

/// `group`/`groups`, the names quoted (`"a", "b"`), and plain (`a, b`).
fn group_words(groups: &[String]) -> (&'static str, String, String) {
    let noun = if groups.len() == 1 { "group" } else { "groups" };
    let quoted: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
    (noun, quoted.join(", "), groups.join(", "))
}

/// Waits until every connected runtime of `groups` has applied `revision` (or rejected it),
/// polling the store (runtimes of every controller are there), for at most `timeout`.
pub async fn wait_applied(
    store: &Arc<dyn Store>,
    groups: &[String],
    revision: i64,
    timeout: Duration,
) -> Result<ApplyReport, gw_store::StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = SystemTime::now();
        let mut report = ApplyReport::default();
        for record in store.list_runtimes().await? {
            if !groups.contains(&record.group) {
                continue;
            }
            let runtime = view(record, revision, now);
            if runtime.status == "refused" {
                let reason = runtime.record.refused.unwrap_or_default();
                report.refused.push((runtime.record.node_id, reason));
                continue;
            }
            if runtime.status != "connected" {
                continue;
            }
            let record = runtime.record;
            if record.applied_revision >= revision {
                report.applied.push(record.node_id);
            } else if record.last_error_revision.is_some_and(|r| r >= revision) {
                report
                    .rejected
                    .push((record.node_id, record.last_error.unwrap_or_default()));
            } else {
                report
                    .pending
                    .push((record.node_id, record.applied_revision));
            }
        }
        if report.pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
