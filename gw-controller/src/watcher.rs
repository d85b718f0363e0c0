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

use crate::sealed::{SealError, Sealer};

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

/// A stored resource of any kind (`api`, `certificate`, `consumer`) as sent to runtimes: its
/// canonical JSON (a consumer's is sealed as stored), to the groups it names.
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

/// What opens the secrets of stored resources: the controller's keys (every sealed value
/// opens where it is stored, whichever policy marked it).
#[derive(Debug, Clone, Copy)]
pub struct Opener<'a> {
    /// The controller's keys.
    pub sealer: &'a Sealer,
}

/// A stored secret that does not open with this controller's keys.
#[derive(Debug, thiserror::Error)]
#[error("{resource} (revision {revision}): {source}")]
pub struct Unopened {
    /// `<kind> "<name>"`.
    resource: String,
    revision: i64,
    #[source]
    source: SealError,
}

/// A stored resource as runtimes receive it: a certificate with its private key opened, an
/// API with its secret fields opened. A value that does not open (a key this controller
/// lacks, a damaged row) is an error: this controller must not serve a state that differs
/// from its peers' at the same revision.
fn opened_entry(
    opener: Opener<'_>,
    kind: &str,
    name: &str,
    revision: i64,
    spec: &serde_json::Value,
) -> Result<Entry, Unopened> {
    let opened = match kind {
        KIND_CERTIFICATE => opener.sealer.open_certificate(spec, name),
        KIND_API => opener.sealer.open_api(spec, name),
        _ => return Ok(entry(kind, name, revision, spec)),
    };
    let opened = opened.map_err(|source| Unopened {
        resource: format!("{kind} {name:?}"),
        revision,
        source,
    })?;
    Ok(entry(kind, name, revision, &opened))
}

/// Every resource of a snapshot, APIs and the other kinds.
fn snapshot_entries(snapshot: &Snapshot, opener: Opener<'_>) -> Result<Vec<Entry>, Unopened> {
    snapshot
        .apis
        .iter()
        .map(|api: &ApiRecord| opened_entry(opener, KIND_API, &api.name, api.revision, &api.spec))
        .chain(
            snapshot.resources.iter().map(|r: &ResourceRecord| {
                opened_entry(opener, &r.kind, &r.name, r.revision, &r.spec)
            }),
        )
        .collect()
}

fn state_change(change: Change, opener: Opener<'_>) -> Result<StateChange, Unopened> {
    let entry = match &change.op {
        ChangeOp::Upsert(spec) => Some(opened_entry(
            opener,
            &change.kind,
            &change.name,
            change.revision,
            spec,
        )?),
        ChangeOp::Delete => None,
    };
    Ok(StateChange {
        revision: change.revision,
        kind: change.kind,
        name: change.name,
        entry,
    })
}

/// Loads the state at the store's newest revision, with as much recent history as the change
/// log holds (up to [`HISTORY`]); returns that revision.
pub async fn load(
    store: &Arc<dyn Store>,
    state: &DesiredState,
    opener: Opener<'_>,
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
    // a key that does not open stops the controller at start, with the reason
    let entries =
        snapshot_entries(&snapshot, opener).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    state.reset(revision, entries, history, floor);
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
    let opener = Opener { sealer: &sealer };
    let mut feed = ChangeFeed::new(Arc::clone(&store), revision, poll_interval);
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = match feed.next().await {
            Ok(FeedEvent::Changes(changes)) => {
                let last = changes.last().map_or(0, |c| c.revision);
                changes
                    .into_iter()
                    .map(|c| state_change(c, opener))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|changes| {
                        state.apply(changes);
                        tracing::debug!(revision = last, "desired state advanced");
                    })
            }
            Ok(FeedEvent::Resync(snapshot)) => snapshot_entries(&snapshot, opener).map(|entries| {
                tracing::warn!(
                    revision = snapshot.revision,
                    "change log compacted past this controller's position; reloaded the full state"
                );
                state.reset(snapshot.revision, entries, [], snapshot.revision);
            }),
            Err(err) => {
                if healthy.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    tracing::warn!(error = %err, revision = feed.last_revision(), "cannot read the change log; serving the last known state and retrying");
                }
                tokio::time::sleep(backoff).await;
                // short: after an outage the state catches up within a second of the
                // database's return
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match opened {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                healthy.store(true, std::sync::atomic::Ordering::Release);
            }
            Err(err) => {
                // this controller cannot serve what its peers serve at this revision: it
                // stays at the last state it could open and reads again
                healthy.store(false, std::sync::atomic::Ordering::Release);
                tracing::error!(error = %err, revision = state.revision(), "cannot open a stored secret: this controller's GW_ENCRYPTION_KEY (or one of GW_ENCRYPTION_KEYS_PREVIOUS) must be the one the others use; serving the last state it could open");
                tokio::time::sleep(Duration::from_secs(5)).await;
                feed = ChangeFeed::new(Arc::clone(&store), state.revision(), poll_interval);
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
