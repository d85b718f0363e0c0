//! The desired state a controller serves: every resource at the newest revision, with the
//! groups it belongs to, and a bounded history of which names changed at which revision, from
//! which per-group deltas are computed.
//!
//! The controller's change-feed watcher is the only writer; every runtime session reads. A
//! `watch` channel carries the newest revision, so a session that falls behind wakes once and
//! computes one merged delta rather than replaying a queue.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::watch;

use crate::proto::{Resource, ResourceRef};

/// The groups a history entry touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// The resource's groups before and after the change.
    Known(Vec<String>),
    /// Not known (history seeded from the store at start-up): treat as every group.
    All,
}

impl Groups {
    fn contains(&self, group: &str) -> bool {
        match self {
            Groups::Known(groups) => groups.iter().any(|g| g == group),
            Groups::All => true,
        }
    }
}

/// A resource and the groups it is deployed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The groups.
    pub groups: Vec<String>,
    /// The resource, as sent to runtimes.
    pub resource: Resource,
}

/// One change to apply to the state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// Its revision.
    pub revision: i64,
    /// The resource kind ([`crate::KIND_API`], [`crate::KIND_CERTIFICATE`],
    /// [`crate::KIND_CONSUMER`]).
    pub kind: String,
    /// The resource name.
    pub name: String,
    /// The new resource, or `None` for a deletion.
    pub entry: Option<Entry>,
}

/// The changes of one group between two revisions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupDelta {
    /// The revision the delta brings the runtime to.
    pub revision: i64,
    /// Resources created or changed.
    pub upserts: Vec<Resource>,
    /// Resources removed from the group.
    pub removals: Vec<ResourceRef>,
}

/// A resource's identity: its kind and name.
type Key = (String, String);

#[derive(Debug, Default)]
struct Inner {
    revision: i64,
    resources: HashMap<Key, Entry>,
    /// `(revision, resource, groups touched)`, ascending by revision.
    history: VecDeque<(i64, Key, Groups)>,
    /// Deltas can be computed from any revision at or above this one.
    floor: i64,
}

/// See the module docs.
#[derive(Debug)]
pub struct DesiredState {
    inner: RwLock<Inner>,
    revision: watch::Sender<i64>,
    max_history: usize,
}

impl DesiredState {
    /// An empty state at revision 0 that keeps up to `max_history` changes for deltas.
    pub fn new(max_history: usize) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            revision: watch::channel(0).0,
            max_history: max_history.max(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the whole state with `entries` at `revision`. `history` lists changes at or
    /// below `revision` that the entries already reflect (`(revision, kind, name)`,
    /// ascending); deltas can then be computed from `history_floor`, the revision just before
    /// the first of them (pass `revision` and no history when there is none).
    pub fn reset(
        &self,
        revision: i64,
        entries: impl IntoIterator<Item = Entry>,
        history: impl IntoIterator<Item = (i64, String, String)>,
        history_floor: i64,
    ) {
        {
            let mut inner = self.write();
            inner.revision = revision;
            inner.resources = entries
                .into_iter()
                .map(|e| ((e.resource.kind.clone(), e.resource.name.clone()), e))
                .collect();
            inner.history = history
                .into_iter()
                .filter(|(r, _, _)| *r > history_floor && *r <= revision)
                .map(|(r, kind, name)| (r, (kind, name), Groups::All))
                .collect();
            inner.floor = history_floor.min(revision);
            self.trim(&mut inner);
        }
        self.revision.send_replace(revision);
    }

    /// Applies changes in revision order; changes at or below the current revision are
    /// ignored (the feed may deliver what a reset already covered).
    pub fn apply(&self, changes: impl IntoIterator<Item = StateChange>) {
        let revision = {
            let mut inner = self.write();
            for change in changes {
                if change.revision <= inner.revision {
                    continue;
                }
                let key = (change.kind, change.name);
                let mut touched: Vec<String> = inner
                    .resources
                    .get(&key)
                    .map(|e| e.groups.clone())
                    .unwrap_or_default();
                match change.entry {
                    Some(entry) => {
                        touched.extend(entry.groups.iter().cloned());
                        inner.resources.insert(key.clone(), entry);
                    }
                    None => {
                        inner.resources.remove(&key);
                    }
                }
                touched.sort();
                touched.dedup();
                inner.revision = change.revision;
                inner
                    .history
                    .push_back((change.revision, key, Groups::Known(touched)));
            }
            self.trim(&mut inner);
            inner.revision
        };
        self.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
    }

    fn trim(&self, inner: &mut Inner) {
        while inner.history.len() > self.max_history {
            if let Some((revision, _, _)) = inner.history.pop_front() {
                inner.floor = revision;
            }
        }
    }

    /// The newest revision.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// A receiver that sees every new revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Waits until the state reaches `revision`, for at most `timeout`; returns whether it
    /// did.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Every resource of `group`, and the revision they are at.
    pub fn snapshot(&self, group: &str) -> (i64, Vec<Resource>) {
        let inner = self.read();
        let mut resources: Vec<Resource> = inner
            .resources
            .values()
            .filter(|e| e.groups.iter().any(|g| g == group))
            .map(|e| e.resource.clone())
            .collect();
        resources.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        (inner.revision, resources)
    }

    /// Every group that holds at least one resource, sorted.
    pub fn groups(&self) -> Vec<String> {
        let inner = self.read();
        let groups: BTreeSet<&String> = inner
            .resources
            .values()
            .flat_map(|e| e.groups.iter())
            .collect();
        groups.into_iter().cloned().collect()
    }

    /// What changed in `group` after revision `from`; `None` when the history no longer
    /// reaches back that far (or `from` is ahead of the state), and a snapshot is needed.
    pub fn delta(&self, group: &str, from: i64) -> Option<GroupDelta> {
        let inner = self.read();
        if from < inner.floor || from > inner.revision {
            return None;
        }
        let start = inner.history.partition_point(|(r, _, _)| *r <= from);
        let keys: BTreeSet<&Key> = inner
            .history
            .range(start..)
            .filter(|(_, _, groups)| groups.contains(group))
            .map(|(_, key, _)| key)
            .collect();
        let mut delta = GroupDelta {
            revision: inner.revision,
            ..GroupDelta::default()
        };
        for key in keys {
            match inner.resources.get(key) {
                Some(entry) if entry.groups.iter().any(|g| g == group) => {
                    delta.upserts.push(entry.resource.clone());
                }
                _ => delta.removals.push(ResourceRef {
                    kind: key.0.clone(),
                    name: key.1.clone(),
                }),
            }
        }
        Some(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, groups: &[&str], revision: i64) -> Entry {
        Entry {
            groups: groups.iter().map(ToString::to_string).collect(),
            resource: Resource {
                kind: "api".into(),
                name: name.into(),
                revision,
                body: format!("{{\"rev\":{revision}}}").into_bytes(),
            },
        }
    }

    fn change(revision: i64, name: &str, groups: Option<&[&str]>) -> StateChange {
        StateChange {
            revision,
            kind: "api".into(),
            name: name.into(),
            entry: groups.map(|g| entry(name, g, revision)),
        }
    }

    fn names(delta: &GroupDelta) -> (Vec<&str>, Vec<&str>) {
        (
            delta.upserts.iter().map(|r| r.name.as_str()).collect(),
            delta.removals.iter().map(|r| r.name.as_str()).collect(),
        )
    }

    #[test]
    fn deltas_are_per_group_and_merge_changes() {
        let state = DesiredState::new(100);
        state.apply([
            change(1, "a", Some(&["default"])),
            change(2, "b", Some(&["edge"])),
            change(3, "c", Some(&["default", "edge"])),
        ]);
        assert_eq!(state.revision(), 3);
        let (rev, all) = state.snapshot("default");
        assert_eq!(rev, 3);
        assert_eq!(state.groups(), ["default", "edge"]);
        assert_eq!(
            all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );

        let d = state.delta("default", 1).unwrap();
        assert_eq!(d.revision, 3);
        assert_eq!(names(&d), (vec!["c"], vec![]));

        // a moves from default to edge; c is deleted; a is changed twice
        state.apply([
            change(4, "a", Some(&["edge"])),
            change(5, "c", None),
            change(6, "a", Some(&["edge"])),
        ]);
        assert_eq!(
            names(&state.delta("default", 3).unwrap()),
            (vec![], vec!["a", "c"])
        );
        let edge = state.delta("edge", 3).unwrap();
        assert_eq!(names(&edge), (vec!["a"], vec!["c"]));
        assert_eq!(edge.upserts[0].revision, 6);
        // nothing changed for a group after its revision
        assert_eq!(names(&state.delta("other", 3).unwrap()), (vec![], vec![]));
        // up to date: an empty delta
        assert_eq!(names(&state.delta("edge", 6).unwrap()), (vec![], vec![]));
    }

    #[test]
    fn snapshot_needed_beyond_history_or_ahead_of_state() {
        let state = DesiredState::new(2);
        state.apply((1..=5).map(|r| change(r, &format!("n{r}"), Some(&["default"]))));
        assert!(
            state.delta("default", 2).is_none(),
            "history trimmed past 2"
        );
        assert!(state.delta("default", 3).is_some());
        assert!(state.delta("default", 6).is_none(), "ahead of the state");
    }

    #[test]
    fn reset_replaces_state_and_seeds_history() {
        let state = DesiredState::new(100);
        state.apply([change(1, "old", Some(&["default"]))]);
        state.reset(
            10,
            [entry("a", &["default"], 9)],
            [
                (8, "api".to_string(), "gone".to_string()),
                (9, "api".to_string(), "a".to_string()),
            ],
            7,
        );
        assert_eq!(state.revision(), 10);
        assert!(state.delta("default", 6).is_none());
        let d = state.delta("default", 7).unwrap();
        assert_eq!(names(&d), (vec!["a"], vec!["gone"]));
        // changes already covered by the reset are ignored
        state.apply([change(10, "late", Some(&["default"]))]);
        assert_eq!(state.snapshot("default").1.len(), 1);
    }

    #[test]
    fn kinds_are_separate_resources() {
        let state = DesiredState::new(100);
        let mut certificate = change(2, "shared", Some(&["default"]));
        certificate.kind = "certificate".into();
        if let Some(entry) = &mut certificate.entry {
            entry.resource.kind = "certificate".into();
        }
        state.apply([change(1, "shared", Some(&["default"])), certificate]);
        let (_, all) = state.snapshot("default");
        assert_eq!(
            all.iter()
                .map(|r| (r.kind.as_str(), r.name.as_str()))
                .collect::<Vec<_>>(),
            [("api", "shared"), ("certificate", "shared")]
        );
        // deleting the certificate leaves the API, and the removal names the kind
        state.apply([StateChange {
            revision: 3,
            kind: "certificate".into(),
            name: "shared".into(),
            entry: None,
        }]);
        let d = state.delta("default", 2).unwrap();
        assert!(d.upserts.is_empty());
        assert_eq!(d.removals.len(), 1);
        assert_eq!(d.removals[0].kind, "certificate");
        assert_eq!(state.snapshot("default").1.len(), 1);
        assert_eq!(state.snapshot("default").1[0].kind, "api");
    }

    #[tokio::test]
    async fn wait_for_a_revision() {
        let state = std::sync::Arc::new(DesiredState::new(10));
        assert!(!state.wait_for(1, Duration::from_millis(10)).await);
        let s = std::sync::Arc::clone(&state);
        let waiter = tokio::spawn(async move { s.wait_for(2, Duration::from_secs(10)).await });
        state.apply([change(1, "a", Some(&["g"])), change(2, "b", Some(&["g"]))]);
        assert!(waiter.await.unwrap());
    }
}
