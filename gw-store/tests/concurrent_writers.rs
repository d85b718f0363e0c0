//! Revision order is gap-safe under concurrent writers on PostgreSQL: many writers on
//! separate connections (and stores, as separate controllers would have) commit at once while
//! feeds read; every feed sees every change exactly once, in order, without falling back to a
//! resync.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use gw_store::feed::{ChangeFeed, FeedEvent};
use gw_store::testing::TestDatabase;
use gw_store::{Precondition, PutApi, RouteKey, Store, StoreOptions};
use serde_json::json;

const WRITERS: usize = 16;
const WRITES_EACH: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feeds_never_skip_a_change_under_concurrent_writers() {
    let db = TestDatabase::create().await;
    let options = StoreOptions {
        max_connections: 20,
        ..StoreOptions::default()
    };
    // two stores on one database: two controllers
    let a = gw_store::open(db.url(), &options).await.unwrap();
    let b = gw_store::open(db.url(), &options).await.unwrap();
    let total = WRITERS * WRITES_EACH;

    // feeds with a long poll, so that they run on notifications and reads that race the
    // commits; one per store
    let feeds: Vec<_> = [&a, &b]
        .into_iter()
        .map(|store| {
            let mut feed = ChangeFeed::new(Arc::clone(store), 0, Duration::from_millis(250));
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(total);
                while seen.len() < total {
                    match feed.next().await.unwrap() {
                        FeedEvent::Changes(changes) => {
                            seen.extend(changes.iter().map(|c| c.revision));
                        }
                        FeedEvent::Resync(s) => panic!("the feed resynced at {}", s.revision),
                    }
                }
                seen
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store: Arc<dyn Store> = Arc::clone(if w % 2 == 0 { &a } else { &b });
            tokio::spawn(async move {
                let mut revisions = Vec::with_capacity(WRITES_EACH);
                for i in 0..WRITES_EACH {
                    let name = format!("api-{w}-{i}");
                    let outcome = store
                        .put_api(PutApi {
                            spec: json!({"writer": w, "i": i}),
                            routes: vec![RouteKey {
                                group: "default".into(),
                                host: "*".into(),
                                context: format!("/{name}"),
                            }],
                            name,
                            precondition: Precondition::None,
                            audit: None,
                        })
                        .await
                        .unwrap();
                    revisions.push(outcome.record.revision);
                }
                revisions
            })
        })
        .collect();

    let mut written = BTreeSet::new();
    for writer in writers {
        for revision in writer.await.unwrap() {
            assert!(
                written.insert(revision),
                "revision {revision} handed out twice"
            );
        }
    }
    let expected: Vec<i64> = (1..=i64::try_from(total).unwrap()).collect();
    assert_eq!(written.iter().copied().collect::<Vec<_>>(), expected);

    for feed in feeds {
        let seen = tokio::time::timeout(Duration::from_secs(30), feed)
            .await
            .expect("a feed did not catch up")
            .unwrap();
        assert_eq!(seen, expected, "a feed skipped or reordered changes");
    }
}
