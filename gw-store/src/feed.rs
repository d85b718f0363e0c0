//! The change feed: every change after a revision, in order, exactly once.
//!
//! A [`ChangeFeed`] reads the change log from the revision its consumer last applied. It wakes
//! on the store's hints (NOTIFY on PostgreSQL, in-process on SQLite) and on a safety poll, so
//! a lost notification delays a change by at most one poll interval. Since writers are
//! serialized, revisions are dense; the feed checks that, and when the log has been compacted
//! past its position, or a gap shows that something outside gw edited it, it starts over
//! from a snapshot ([`FeedEvent::Resync`]) rather than skip anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Change, Snapshot, Store, StoreError};

/// What the feed delivers.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// The next changes, in revision order, starting right after the last one delivered.
    Changes(Vec<Change>),
    /// The consumer must replace its whole state with this snapshot.
    Resync(Snapshot),
}

/// Reads the change log in order; see the module docs.
#[derive(Debug)]
pub struct ChangeFeed {
    store: Arc<dyn Store>,
    last: i64,
    poll_interval: Duration,
    hints: watch::Receiver<u64>,
    batch: i64,
}

impl ChangeFeed {
    /// A feed of the changes after revision `after`.
    pub fn new(store: Arc<dyn Store>, after: i64, poll_interval: Duration) -> Self {
        let hints = store.hints();
        Self {
            store,
            last: after,
            poll_interval,
            hints,
            batch: 1000,
        }
    }

    /// The revision of the last change delivered (or of the last resync).
    pub fn last_revision(&self) -> i64 {
        self.last
    }

    /// Waits for and returns the next changes. On an error (the store is unreachable) the
    /// position is kept: calling again resumes where the feed was.
    pub async fn next(&mut self) -> Result<FeedEvent, StoreError> {
        loop {
            // mark the hints seen before reading: a change committed during the read bumps
            // them again and makes the wait below return at once
            self.hints.borrow_and_update();
            match self.store.changes_since(self.last, self.batch).await {
                Ok(changes) if !changes.is_empty() => {
                    let dense = changes
                        .iter()
                        .zip(self.last + 1..)
                        .all(|(change, expected)| change.revision == expected);
                    if !dense {
                        tracing::warn!(
                            after = self.last,
                            first = changes[0].revision,
                            "the change log has a gap; reloading the full state"
                        );
                        return self.resync().await;
                    }
                    self.last = changes.last().map_or(self.last, |c| c.revision);
                    return Ok(FeedEvent::Changes(changes));
                }
                Ok(_) => {}
                Err(StoreError::Compacted { .. }) => return self.resync().await,
                Err(err) => return Err(err),
            }
            tokio::select! {
                changed = self.hints.changed() => {
                    if changed.is_err() {
                        // the store stopped announcing; the poll still works
                        tokio::time::sleep(self.poll_interval).await;
                    }
                }
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    async fn resync(&mut self) -> Result<FeedEvent, StoreError> {
        let snapshot = self.store.snapshot().await?;
        self.last = snapshot.revision;
        Ok(FeedEvent::Resync(snapshot))
    }
}
