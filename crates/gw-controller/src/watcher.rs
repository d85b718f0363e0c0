//! The change-feed watcher: keeps this controller's [`DesiredState`] equal to the store.
//!
//! At start-up it loads a snapshot and the recent change log (so that runtimes resuming from a
//! slightly older revision still get a delta). Then it follows the change feed: NOTIFY on
//! PostgreSQL (so a deploy through any controller reaches the runtimes of all of them in
//! milliseconds), plus a safety poll; after any store error it resumes from the last
//! revision it applied, so nothing written meanwhile is missed.

use std::sync::Arc;
use std::time::Duration;

use gw_store::feed::{ChangeFeed, FeedEvent};
use gw_store::{ApiRecord, Change, ChangeOp, ResourceRecord, Snapshot, Store, StoreError};
use gw_sync::proto::Resource;
use gw_sync::state::{DesiredState, Entry, StateChange};
use gw_sync::{KIND_API, KIND_CERTIFICATE};

use crate::sealed::Sealer;

/// How many past changes are kept for deltas.
pub const HISTORY: usize = 10_000;

/// The groups of a stored definition (`spec.groups`; `default` when absent).
pub fn groups_of(spec: &serde_json::Value) -> Vec<String> {
    spec.pointer("/spec/groups")
        .and_then(serde_json::Value::as_array)
        .map_or_else(
            || vec![gw_core::model::DEFAULT_GROUP.to_string()],
            |groups| {
                groups
                    .iter()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect()
            },
        )
}

/// A stored resource of any kind (`api`, `certificate`) as sent to runtimes: its canonical
/// JSON, to the groups it names.
fn entry(kind: &str, name: &str, revision: i64, spec: &serde_json::Value) -> Entry {
    Entry {
        groups: groups_of(spec),
        resource: Resource {
            kind: kind.to_string(),
            name: name.to_string(),
            revision,
            body: serde_json::to_vec(spec).unwrap_or_default(),
        },
    }
}

fn api_entry(record: &ApiRecord) -> Entry {
    entry(KIND_API, &record.name, record.revision, &record.spec)
}

/// A stored resource as runtimes receive it: a certificate with its private key opened.
/// A key that does not open (another controller's key, a damaged row) leaves the
/// certificate out, loudly: runtimes then stop serving it rather than refuse their whole
/// configuration.
fn opened_entry(
    sealer: &Sealer,
    kind: &str,
    name: &str,
    revision: i64,
    spec: &serde_json::Value,
) -> Option<Entry> {
    if kind != KIND_CERTIFICATE {
        return Some(entry(kind, name, revision, spec));
    }
    match sealer.open_certificate(spec, name) {
        Ok(opened) => Some(entry(kind, name, revision, &opened)),
        Err(err) => {
            tracing::error!(certificate = %name, revision, error = %err, "cannot open the private key of a certificate; runtimes will not serve it");
            None
        }
    }
}

/// Every resource of a snapshot, APIs and the other kinds.
fn snapshot_entries<'a>(
    snapshot: &'a Snapshot,
    sealer: &'a Sealer,
) -> impl Iterator<Item = Entry> + 'a {
    snapshot
        .apis
        .iter()
        .map(api_entry)
        .chain(snapshot.resources.iter().filter_map(|r: &ResourceRecord| {
            opened_entry(sealer, &r.kind, &r.name, r.revision, &r.spec)
        }))
}

fn state_change(change: Change, sealer: &Sealer) -> StateChange {
    let entry = match &change.op {
        ChangeOp::Upsert(spec) => {
            opened_entry(sealer, &change.kind, &change.name, change.revision, spec)
        }
        ChangeOp::Delete => None,
    };
    StateChange {
        revision: change.revision,
        kind: change.kind,
        name: change.name,
        entry,
    }
}

/// Loads the state at the store's newest revision, with as much recent history as the change
/// log holds (up to [`HISTORY`]); returns that revision.
pub async fn load(
    store: &Arc<dyn Store>,
    state: &DesiredState,
    sealer: &Sealer,
) -> Result<i64, StoreError> {
    let snapshot = store.snapshot().await?;
    let revision = snapshot.revision;
    let mut floor = (revision - i64::try_from(HISTORY).unwrap_or(i64::MAX)).max(0);
    let changes = match store
        .changes_since(floor, i64::try_from(HISTORY).unwrap_or(i64::MAX))
        .await
    {
        Ok(changes) => changes,
        Err(StoreError::Compacted {
            compacted_through, ..
        }) => {
            floor = compacted_through.min(revision);
            store
                .changes_since(floor, i64::try_from(HISTORY).unwrap_or(i64::MAX))
                .await?
        }
        Err(err) => return Err(err),
    };
    let history: Vec<(i64, String, String)> = changes
        .into_iter()
        .filter(|c| c.revision <= revision)
        .map(|c| (c.revision, c.kind, c.name))
        .collect();
    state.reset(
        revision,
        snapshot_entries(&snapshot, sealer),
        history,
        floor,
    );
    tracing::info!(
        revision,
        apis = snapshot.apis.len(),
        other = snapshot.resources.len(),
        "desired state loaded"
    );
    Ok(revision)
}

/// Follows the change feed from `revision` until the task is dropped.
pub async fn follow(
    store: Arc<dyn Store>,
    state: Arc<DesiredState>,
    sealer: Arc<Sealer>,
    revision: i64,
    poll_interval: Duration,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut feed = ChangeFeed::new(store, revision, poll_interval);
    let mut backoff = Duration::from_millis(100);
    loop {
        match feed.next().await {
            Ok(FeedEvent::Changes(changes)) => {
                let last = changes.last().map_or(0, |c| c.revision);
                state.apply(changes.into_iter().map(|c| state_change(c, &sealer)));
                tracing::debug!(revision = last, "desired state advanced");
                backoff = Duration::from_millis(100);
                healthy.store(true, std::sync::atomic::Ordering::Release);
            }
            Ok(FeedEvent::Resync(snapshot)) => {
                tracing::warn!(
                    revision = snapshot.revision,
                    "change log compacted past this controller's position; reloaded the full state"
                );
                state.reset(
                    snapshot.revision,
                    snapshot_entries(&snapshot, &sealer),
                    [],
                    snapshot.revision,
                );
                healthy.store(true, std::sync::atomic::Ordering::Release);
            }
            Err(err) => {
                if healthy.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    tracing::warn!(error = %err, revision = feed.last_revision(), "cannot read the change log; serving the last known state and retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Compacts the change log every `every`, keeping the newest `keep` revisions.
pub async fn compact_periodically(store: Arc<dyn Store>, keep: i64, every: Duration) {
    loop {
        match store.current_revision().await {
            Ok(newest) if newest > keep => match store.compact(newest - keep).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, through = newest - keep, "change log compacted");
                }
                Err(err) => tracing::warn!(error = %err, "change log compaction failed"),
            },
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "compaction skipped"),
        }
        tokio::time::sleep(every).await;
    }
}
