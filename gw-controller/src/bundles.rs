//! The export of signed fallback bundles ([`gw_bundle`]): every gateway group's whole
//! configuration, as a runtime's Snapshot would carry it, signed and written to a directory
//! or S3-compatible object storage, periodically and on demand (`POST /api/v1/bundles`).
//!
//! The exporter only reads the desired state this controller already serves; it never waits
//! on the store, the admin API or the sync server, and its failures touch neither: they are
//! logged (at most once a minute, with a count of the others) and counted in
//! `gw_bundle_exports_total{result="failed"}`.
//!
//! The periodic export retries only the groups whose last bundle written is behind the
//! desired state: a group that keeps failing does not make every tick rewrite (and prune)
//! the others. An object storage that cannot be reached (a refused connection, a timeout)
//! ends the round: the groups left are reported as not attempted rather than each waiting
//! for its own timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gw_bundle::storage::BundleTarget;
use gw_bundle::{Bundle, BundleError, SigningKey};
use gw_sync::KINDS;
use gw_sync::state::DesiredState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// The shortest interval between two failure log lines.
const LOG_EVERY: Duration = Duration::from_mins(1);

/// How bundles are exported. Its `Debug` shows no key material: the keys' `Debug` is redacted.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    /// Where to.
    pub target: BundleTarget,
    /// What signs them.
    pub key: Arc<SigningKey>,
    /// How often the exporter checks for a new revision to export.
    pub interval: Duration,
    /// Bundles kept per group (at least 1); older ones are deleted after each export.
    pub keep: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The exporter's metrics.
#[derive(Debug, Clone, Default)]
pub struct BundleMetrics {
    exports: Family<ResultLabels, Counter>,
    revision: Gauge,
}

impl BundleMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gw_bundle_exports",
            "Bundles exported (one per group), by result (written, failed)",
            metrics.exports.clone(),
        );
        registry.register(
            "gw_bundle_exported_revision",
            "Revision of the last complete export of every group",
            metrics.revision.clone(),
        );
        metrics
    }

    fn count(&self, result: &'static str) {
        self.exports.get_or_create(&ResultLabels { result }).inc();
    }
}

/// One bundle written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exported {
    /// Its group.
    pub group: String,
    /// Its revision.
    pub revision: i64,
    /// Where it was written.
    pub location: String,
    /// Its size.
    pub bytes: usize,
    /// Resources in it.
    pub resources: usize,
    /// Older bundles of the group deleted after it was written.
    pub pruned: Vec<i64>,
    /// Why the older bundles could not be pruned (listed or deleted), if so: the bundle is
    /// written all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_error: Option<String>,
}

/// A group whose bundle could not be exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupFailure {
    /// The group; `None` when the target's groups could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Why (locations, never credentials).
    pub error: String,
}

impl std::fmt::Display for GroupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(group) => write!(f, "group {group:?}: {}", self.error),
            None => write!(f, "listing the groups: {}", self.error),
        }
    }
}

/// What one export did, group by group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// The bundles written, by group name.
    pub written: Vec<Exported>,
    /// The failures, by group name.
    pub failed: Vec<GroupFailure>,
}

impl ExportReport {
    /// Whether there were failures and nothing was written.
    pub fn all_failed(&self) -> bool {
        self.written.is_empty() && !self.failed.is_empty()
    }
}

/// Warning lines at a bounded rate.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line may be logged now, with the number of lines left out since the last
    /// one; `None` (and one more left out) within [`LOG_EVERY`] of it.
    fn admit(limit: &Mutex<Self>) -> Option<u64> {
        let mut log = limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.last.is_some_and(|last| last.elapsed() < LOG_EVERY) {
            log.suppressed += 1;
            return None;
        }
        log.last = Some(Instant::now());
        Some(std::mem::take(&mut log.suppressed))
    }
}

/// What this controller has exported.
#[derive(Debug, Default)]
struct Progress {
    /// The revision of the last complete export.
    complete: i64,
    /// The revision of the last bundle written, by group.
    groups: HashMap<String, i64>,
}

/// See the module docs.
pub struct BundleExporter {
    state: Arc<DesiredState>,
    options: BundleOptions,
    store_id: String,
    controller_id: String,
    metrics: BundleMetrics,
    /// Held during an export, so that exports of this controller never overlap.
    exported: tokio::sync::Mutex<Progress>,
    /// Export failures.
    log: Mutex<LogLimit>,
    /// Names above the revision written.
    above: Mutex<LogLimit>,
}

impl std::fmt::Debug for BundleExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // not the desired state: it holds certificates' private keys
        f.debug_struct("BundleExporter")
            .field("options", &self.options)
            .field("store_id", &self.store_id)
            .field("controller_id", &self.controller_id)
            .finish_non_exhaustive()
    }
}

impl BundleExporter {
    /// An exporter of `state` (of the store `store_id`), made by `controller_id`.
    pub fn new(
        state: Arc<DesiredState>,
        options: BundleOptions,
        store_id: &str,
        controller_id: &str,
        metrics: BundleMetrics,
    ) -> Self {
        Self {
            state,
            options,
            store_id: store_id.to_string(),
            controller_id: controller_id.to_string(),
            metrics,
            exported: tokio::sync::Mutex::new(Progress::default()),
            log: Mutex::new(LogLimit::default()),
            above: Mutex::new(LogLimit::default()),
        }
    }

    /// Where bundles go.
    pub fn target(&self) -> &BundleTarget {
        &self.options.target
    }

    /// Exports every group now: the groups that have resources, and those that have bundles
    /// already (a group emptied since gets an empty bundle rather than keep a stale one).
    /// A group that fails does not stop the others, but for an object storage that cannot
    /// be reached: the groups left are then reported as not attempted. Each failure is in
    /// the report, logged and counted. A target whose groups cannot be listed is a failure
    /// too, and the groups of the desired state are exported all the same.
    pub async fn export(&self) -> ExportReport {
        self.round(false).await
    }

    /// One export of every group (`behind_only`: of the groups whose last bundle written is
    /// older than the desired state).
    async fn round(&self, behind_only: bool) -> ExportReport {
        let mut progress = self.exported.lock().await;
        let revision = self.state.revision();
        let report = self.export_all(&mut progress, revision, behind_only).await;
        for failure in &report.failed {
            self.log_failure(failure);
        }
        if report.failed.is_empty() && revision > 0 {
            progress.complete = revision;
            self.metrics.revision.set(revision);
        }
        if !report.written.is_empty() {
            tracing::info!(
                revision,
                groups = report.written.len(),
                failed = report.failed.len(),
                bundles = %self.options.target,
                "bundles exported"
            );
        }
        report
    }

    async fn export_all(
        &self,
        progress: &mut Progress,
        revision: i64,
        behind_only: bool,
    ) -> ExportReport {
        let mut report = ExportReport::default();
        if revision == 0 {
            // nothing was ever deployed (or the state is not loaded): nothing to fall back on
            return report;
        }
        // set once the object storage could not be reached: the rest is not attempted
        let mut unreachable: Option<String> = None;
        let mut groups = self.state.groups();
        match self.options.target.groups().await {
            Ok(stored) => groups.extend(stored),
            Err(err) => {
                self.metrics.count("failed");
                if err.is_transport() {
                    unreachable = Some(err.to_string());
                }
                report.failed.push(GroupFailure {
                    group: None,
                    error: err.to_string(),
                });
            }
        }
        groups.sort();
        groups.dedup();
        for group in groups {
            if behind_only && progress.groups.get(&group).is_some_and(|&r| r >= revision) {
                continue;
            }
            if let Some(cause) = &unreachable {
                self.metrics.count("failed");
                report.failed.push(GroupFailure {
                    group: Some(group),
                    error: format!("not attempted: the object storage is unreachable ({cause})"),
                });
                continue;
            }
            match self.export_group(&group).await {
                Ok((mut one, prune_error)) => {
                    self.metrics.count("written");
                    progress.groups.insert(group, one.revision);
                    if let Some(err) = prune_error {
                        if err.is_transport() {
                            unreachable = Some(err.to_string());
                        }
                        if let Some(suppressed) = LogLimit::admit(&self.log) {
                            tracing::warn!(
                                group = one.group,
                                error = %err,
                                bundles = %self.options.target,
                                suppressed,
                                "bundle written, but older bundles could not be pruned"
                            );
                        }
                        one.prune_error = Some(err.to_string());
                    }
                    report.written.push(one);
                }
                Err(err) => {
                    self.metrics.count("failed");
                    if err.is_transport() {
                        unreachable = Some(err.to_string());
                    }
                    report.failed.push(GroupFailure {
                        group: Some(group),
                        error: err.to_string(),
                    });
                }
            }
        }
        report
    }

    /// Writes the bundle of `group`, then prunes: the error of the pruning, if any, comes
    /// with the bundle written.
    async fn export_group(
        &self,
        group: &str,
    ) -> Result<(Exported, Option<BundleError>), BundleError> {
        let (revision, resources) = self.state.snapshot(group);
        let bundle = Bundle::new(
            group,
            &self.store_id,
            revision,
            &self.controller_id,
            &KINDS,
            &resources,
        )?;
        let bytes = gw_bundle::seal(&bundle, &self.options.key)?;
        let size = bytes.len();
        let target = &self.options.target;
        let location = target.write(group, revision, bytes).await?;
        let (pruned, prune_error) = match target.prune(group, revision, self.options.keep).await {
            Ok(pruned) => {
                self.warn_above(group, revision, &pruned.newer);
                (pruned.deleted, None)
            }
            Err(err) => (Vec::new(), Some(err)),
        };
        tracing::debug!(group, revision, %location, bytes = size, ?pruned, "bundle written");
        let exported = Exported {
            group: group.to_string(),
            revision,
            location,
            bytes: size,
            resources: resources.len(),
            pruned,
            prune_error: None,
        };
        Ok((exported, prune_error))
    }

    /// Logs the names above `revision` (just written) of `group`: at debug when they are no
    /// further ahead than this controller's state now or one revision (a peer controller
    /// that exported a newer revision first), else as a warning at a bounded rate.
    fn warn_above(&self, group: &str, revision: i64, newer: &[i64]) {
        let Some(&newest) = newer.first() else {
            return;
        };
        let others = newer.len() - 1;
        let target = &self.options.target;
        let peer = newest <= self.state.revision().max(revision.saturating_add(1));
        if peer {
            tracing::debug!(
                group,
                revision,
                newest,
                others,
                bundles = %target,
                "a newer bundle (a peer controller's) is above the revision just written"
            );
            return;
        }
        if let Some(suppressed) = LogLimit::admit(&self.above) {
            tracing::warn!(
                group,
                revision,
                newest,
                others,
                bundles = %target,
                suppressed,
                "bundle names above the revision just written (junk, another store's \
                 bundles, or a recreated database): left alone, and runtimes try them first \
                 (at most 100 names per attempt: with 100 or more above, runtimes never \
                 reach this controller's bundles)"
            );
        }
    }

    fn log_failure(&self, failure: &GroupFailure) {
        if let Some(suppressed) = LogLimit::admit(&self.log) {
            tracing::warn!(
                error = %failure,
                bundles = %self.options.target,
                suppressed,
                "bundle export failed (sync and the admin API are not affected)"
            );
        }
    }

    /// Exports every `interval` when the desired state has moved since the last complete
    /// export (and at once, for a controller that has just started), until the task is
    /// dropped: only the groups behind are exported again.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.options.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let last = self.exported.lock().await.complete;
            if self.state.revision() > last {
                // logged and counted inside
                let _ = self.round(true).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gw_sync::KIND_API;
    use gw_sync::proto::Resource;
    use gw_sync::state::{Entry, StateChange};

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn change(revision: i64, name: &str, groups: &[&str]) -> StateChange {
        StateChange {
            revision,
            kind: KIND_API.into(),
            name: name.into(),
            entry: Some(Entry {
                groups: groups.iter().map(ToString::to_string).collect(),
                resource: Resource {
                    kind: KIND_API.into(),
                    name: name.into(),
                    revision,
                    body: format!(r#"{{"metadata":{{"name":"{name}"}}}}"#).into_bytes(),
                },
            }),
        }
    }

    fn exporter(state: &Arc<DesiredState>, target: BundleTarget) -> BundleExporter {
        let options = BundleOptions {
            target,
            key: Arc::new(SigningKey::parse(SECRET).unwrap()),
            interval: Duration::from_mins(1),
            keep: 2,
        };
        BundleExporter::new(
            Arc::clone(state),
            options,
            "store-1",
            "ctl-a",
            BundleMetrics::register(&mut Registry::default()),
        )
    }

    #[tokio::test]
    async fn every_group_is_exported_signed_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().to_path_buf());
        let state = Arc::new(DesiredState::new(100));
        let exporter = exporter(&state, target.clone());
        assert_eq!(
            exporter.export().await,
            ExportReport::default(),
            "nothing yet"
        );

        state.apply([change(1, "a", &["default"]), change(2, "b", &["edge"])]);
        let written = exporter.export().await.written;
        let groups: Vec<(&str, i64)> = written
            .iter()
            .map(|e| (e.group.as_str(), e.revision))
            .collect();
        assert_eq!(groups, [("default", 2), ("edge", 2)]);
        let key = gw_bundle::VerifyKey::parse(SECRET).unwrap();
        let bundle = gw_bundle::open(&target.read("edge", 2).await.unwrap(), &key).unwrap();
        assert_eq!(bundle.group, "edge");
        assert_eq!(bundle.store_id, "store-1");
        assert_eq!(bundle.created_by, "ctl-a");
        assert_eq!(bundle.resources.len(), 1);
        assert_eq!(bundle.resources[0].name, "b");
        assert_eq!(bundle.kinds, KINDS);

        // b leaves edge: edge still gets a bundle, an empty one; only two are kept
        state.apply([change(3, "b", &["default"])]);
        assert!(exporter.export().await.failed.is_empty());
        state.apply([change(4, "c", &["default"])]);
        let written = exporter.export().await.written;
        assert_eq!(written[1].group, "edge");
        assert_eq!(written[1].resources, 0);
        assert_eq!(written[1].pruned, [2]);
        assert_eq!(target.revisions("edge").await.unwrap(), [4, 3]);
        assert_eq!(target.revisions("default").await.unwrap(), [4, 3]);
    }

    #[tokio::test]
    async fn failures_are_reported_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        // a file where the directory should be
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"x").unwrap();
        let state = Arc::new(DesiredState::new(100));
        state.apply([change(1, "a", &["default"])]);
        let exporter = exporter(&state, BundleTarget::Dir(blocked));
        let report = exporter.export().await;
        assert!(report.all_failed(), "{report:?}");
        // the listing, then the group of the desired state all the same
        let groups: Vec<Option<&str>> = report.failed.iter().map(|f| f.group.as_deref()).collect();
        assert_eq!(groups, [None, Some("default")]);
        assert!(report.failed[1].error.contains("cannot"), "{report:?}");
        assert_eq!(
            exporter
                .metrics
                .exports
                .get_or_create(&ResultLabels { result: "failed" })
                .get(),
            2
        );
        assert_eq!(exporter.exported.lock().await.complete, 0, "not exported");
        // the next failures within a minute are counted, not logged
        assert!(exporter.export().await.all_failed());
        assert_eq!(exporter.log.lock().unwrap().suppressed, 3);
    }

    #[tokio::test]
    async fn a_failing_group_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().to_path_buf());
        // edge's folder cannot be made: a file has its name
        std::fs::write(dir.path().join("edge"), b"x").unwrap();
        let state = Arc::new(DesiredState::new(100));
        state.apply([
            change(1, "a", &["default"]),
            change(2, "b", &["edge"]),
            change(3, "c", &["zone"]),
        ]);
        let exporter = exporter(&state, target.clone());
        let report = exporter.export().await;
        assert!(!report.all_failed());
        let written: Vec<&str> = report.written.iter().map(|e| e.group.as_str()).collect();
        assert_eq!(written, ["default", "zone"]);
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(report.failed[0].group.as_deref(), Some("edge"));
        assert_eq!(target.revisions("zone").await.unwrap(), [3]);
        let count = |result| {
            exporter
                .metrics
                .exports
                .get_or_create(&ResultLabels { result })
                .get()
        };
        assert_eq!((count("written"), count("failed")), (2, 1));
        // an incomplete export is not the last complete one: the next tick tries again
        assert_eq!(exporter.exported.lock().await.complete, 0);
    }

    #[tokio::test]
    async fn the_periodic_export_retries_only_the_groups_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().to_path_buf());
        let blocked = dir.path().join("edge");
        std::fs::write(&blocked, b"x").unwrap();
        let state = Arc::new(DesiredState::new(100));
        state.apply([change(1, "a", &["default"]), change(2, "b", &["edge"])]);
        let exporter = exporter(&state, target.clone());
        let count = |result| {
            exporter
                .metrics
                .exports
                .get_or_create(&ResultLabels { result })
                .get()
        };
        let first = exporter.round(true).await;
        assert_eq!(first.written.len(), 1, "{first:?}");
        assert_eq!(first.failed.len(), 1, "{first:?}");
        // the next tick tries edge alone: default is not written (nor pruned) again
        let second = exporter.round(true).await;
        assert!(second.all_failed(), "{second:?}");
        assert_eq!(second.failed[0].group.as_deref(), Some("edge"));
        assert_eq!((count("written"), count("failed")), (1, 2));
        assert_eq!(exporter.exported.lock().await.complete, 0);
        // edge can be written again: it is, alone, and the export is complete
        std::fs::remove_file(&blocked).unwrap();
        let third = exporter.round(true).await;
        let written: Vec<&str> = third.written.iter().map(|e| e.group.as_str()).collect();
        assert_eq!(written, ["edge"], "{third:?}");
        assert!(third.failed.is_empty(), "{third:?}");
        assert_eq!(exporter.exported.lock().await.complete, 2);
        assert!(exporter.round(true).await.written.is_empty());
        // an export on demand writes every group
        assert_eq!(exporter.export().await.written.len(), 2);
        assert_eq!(count("written"), 4);
    }

    #[test]
    fn the_debug_output_leaves_the_desired_state_out() {
        let state = Arc::new(DesiredState::new(100));
        let mut secret = change(1, "a", &["default"]);
        if let Some(entry) = secret.entry.as_mut() {
            entry.resource.body = b"-----BEGIN PRIVATE KEY-----".to_vec();
        }
        state.apply([secret]);
        let exporter = exporter(&state, BundleTarget::Dir("/nonexistent".into()));
        let shown = format!("{exporter:?}");
        assert!(shown.contains("store-1"), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(!shown.contains("state"), "{shown}");
    }

    #[tokio::test]
    async fn concurrent_exports_of_two_controllers_are_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().to_path_buf());
        let state = Arc::new(DesiredState::new(100));
        let a = exporter(&state, target.clone());
        let b = exporter(&state, target.clone());
        let key = gw_bundle::VerifyKey::parse(SECRET).unwrap();
        for revision in 1..=20 {
            state.apply([change(revision, &format!("api{revision}"), &["default"])]);
            let (left, right) = tokio::join!(a.export(), b.export());
            assert!(left.failed.is_empty(), "{left:?}");
            assert!(right.failed.is_empty(), "{right:?}");
            let newest = target.revisions("default").await.unwrap();
            assert_eq!(newest[0], revision);
            assert!(newest.len() <= 2, "{newest:?}");
            let bundle =
                gw_bundle::open(&target.read("default", revision).await.unwrap(), &key).unwrap();
            assert_eq!(bundle.resources.len(), usize::try_from(revision).unwrap());
        }
        // no temporary file is left behind
        let leftovers = std::fs::read_dir(dir.path().join("default"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
