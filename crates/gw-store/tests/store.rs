//! The same behaviour, checked on both backends: SQLite in a temporary file, PostgreSQL in a
//! database of its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use gw_store::feed::{ChangeFeed, FeedEvent};
use gw_store::testing::TestDatabase;
use gw_store::{
    ChangeOp, Precondition, PutApi, RouteKey, RuntimeRecord, Store, StoreError, StoreOptions,
};
use serde_json::json;

struct Fixture {
    store: Arc<dyn Store>,
    _db: Option<TestDatabase>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gw.db", dir.path().display());
    Fixture {
        store: gw_store::open(&url, &StoreOptions::default())
            .await
            .unwrap(),
        _db: None,
        _dir: Some(dir),
    }
}

async fn postgres() -> Fixture {
    let db = TestDatabase::create().await;
    Fixture {
        store: gw_store::open(db.url(), &StoreOptions::default())
            .await
            .unwrap(),
        _db: Some(db),
        _dir: None,
    }
}

fn route(context: &str) -> RouteKey {
    RouteKey {
        group: "default".into(),
        host: "*".into(),
        context: context.into(),
    }
}

fn put(name: &str, context: &str, precondition: Precondition) -> PutApi {
    PutApi {
        name: name.into(),
        spec: json!({"name": name, "context": context}),
        routes: vec![route(context)],
        precondition,
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await).await })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres().await).await })*
        }
    };
}

both_backends!(
    crud_and_revisions,
    preconditions,
    route_conflicts_are_refused_and_roll_back,
    change_log_and_compaction,
    feed_delivers_in_order_and_resyncs_after_compaction,
    fleet,
);

async fn crud_and_revisions(f: Fixture) {
    let s = &f.store;
    assert_eq!(s.store_id().len(), 32, "a random id: {}", s.store_id());
    assert_eq!(s.current_revision().await.unwrap(), 0);
    s.ping().await.unwrap();

    let created = s
        .put_api(put("orders", "/orders", Precondition::None))
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.record.revision, 1);
    let updated = s
        .put_api(PutApi {
            spec: json!({"v": 2}),
            ..put("orders", "/orders", Precondition::None)
        })
        .await
        .unwrap();
    assert!(!updated.created);
    assert_eq!(updated.record.revision, 2);
    assert_eq!(updated.record.created_at, created.record.created_at);
    assert_eq!(updated.previous, Some(created.record.spec.clone()));

    let got = s.get_api("orders").await.unwrap().unwrap();
    assert_eq!(got.spec, json!({"v": 2}));
    assert_eq!(got.revision, 2);

    s.put_api(put("users", "/users", Precondition::None))
        .await
        .unwrap();
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.revision, 3);
    let names: Vec<_> = snap.apis.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["orders", "users"]);

    let deleted = s.delete_api("orders", Precondition::None).await.unwrap();
    assert_eq!(deleted.revision, 4);
    assert_eq!(deleted.previous.revision, 2);
    assert!(s.get_api("orders").await.unwrap().is_none());
    assert!(matches!(
        s.delete_api("orders", Precondition::None).await,
        Err(StoreError::NotFound { .. })
    ));
    // a failed write does not consume a revision
    assert_eq!(s.current_revision().await.unwrap(), 4);
}

async fn preconditions(f: Fixture) {
    let s = &f.store;
    s.put_api(put("a", "/a", Precondition::Absent))
        .await
        .unwrap();
    assert!(matches!(
        s.put_api(put("a", "/a", Precondition::Absent)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.put_api(put("a", "/a", Precondition::Revision(7))).await,
        Err(StoreError::PreconditionFailed {
            expected: 7,
            actual: Some(1),
            ..
        })
    ));
    s.put_api(put("a", "/a", Precondition::Revision(1)))
        .await
        .unwrap();
    assert!(matches!(
        s.delete_api("a", Precondition::Revision(1)).await,
        Err(StoreError::PreconditionFailed {
            actual: Some(2),
            ..
        })
    ));
    assert!(matches!(
        s.put_api(put("b", "/b", Precondition::Revision(1))).await,
        Err(StoreError::PreconditionFailed { actual: None, .. })
    ));
    s.delete_api("a", Precondition::Revision(2)).await.unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 3);
}

async fn route_conflicts_are_refused_and_roll_back(f: Fixture) {
    let s = &f.store;
    s.put_api(put("orders", "/orders", Precondition::None))
        .await
        .unwrap();
    let err = s
        .put_api(put("clash", "/orders", Precondition::None))
        .await
        .unwrap_err();
    match err {
        StoreError::RouteConflict {
            holder, context, ..
        } => {
            assert_eq!(holder, "orders");
            assert_eq!(context, "/orders");
        }
        other => panic!("expected a route conflict, got {other:?}"),
    }
    assert!(s.get_api("clash").await.unwrap().is_none());
    assert_eq!(s.current_revision().await.unwrap(), 1);
    // same context on another host or group is fine
    let mut other_host = put("other-host", "/orders", Precondition::None);
    other_host.routes[0].host = "api.example.com".into();
    s.put_api(other_host).await.unwrap();
    // moving an API frees its old context
    s.put_api(put("orders", "/orders-v2", Precondition::None))
        .await
        .unwrap();
    s.put_api(put("clash", "/orders", Precondition::None))
        .await
        .unwrap();
    // deleting frees it too
    s.delete_api("clash", Precondition::None).await.unwrap();
    s.put_api(put("third", "/orders", Precondition::None))
        .await
        .unwrap();
}

async fn change_log_and_compaction(f: Fixture) {
    let s = &f.store;
    s.put_api(put("a", "/a", Precondition::None)).await.unwrap();
    s.put_api(put("b", "/b", Precondition::None)).await.unwrap();
    s.delete_api("a", Precondition::None).await.unwrap();

    let changes = s.changes_since(0, 100).await.unwrap();
    let summary: Vec<(i64, &str, bool)> = changes
        .iter()
        .map(|c| {
            (
                c.revision,
                c.name.as_str(),
                matches!(c.op, ChangeOp::Delete),
            )
        })
        .collect();
    assert_eq!(summary, [(1, "a", false), (2, "b", false), (3, "a", true)]);
    assert!(matches!(&changes[0].op, ChangeOp::Upsert(spec) if spec["name"] == "a"));
    assert_eq!(s.changes_since(1, 1).await.unwrap().len(), 1);
    assert!(s.changes_since(3, 100).await.unwrap().is_empty());

    assert_eq!(s.compact(2).await.unwrap(), 2);
    assert!(matches!(
        s.changes_since(1, 100).await,
        Err(StoreError::Compacted {
            requested: 1,
            compacted_through: 2
        })
    ));
    assert_eq!(s.changes_since(2, 100).await.unwrap().len(), 1);
    // compaction never goes past the newest revision
    s.compact(1000).await.unwrap();
    s.put_api(put("c", "/c", Precondition::None)).await.unwrap();
    assert_eq!(s.changes_since(3, 100).await.unwrap()[0].revision, 4);
}

async fn feed_delivers_in_order_and_resyncs_after_compaction(f: Fixture) {
    let s = &f.store;
    let mut feed = ChangeFeed::new(Arc::clone(s), 0, Duration::from_secs(30));
    let writer = {
        let s = Arc::clone(s);
        tokio::spawn(async move {
            for i in 0..5 {
                s.put_api(put(
                    &format!("api-{i}"),
                    &format!("/c{i}"),
                    Precondition::None,
                ))
                .await
                .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    // with a 30 s poll, only the hints can make this finish quickly
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < 5 {
            match feed.next().await.unwrap() {
                FeedEvent::Changes(changes) => seen.extend(changes.iter().map(|c| c.revision)),
                FeedEvent::Resync(_) => panic!("unexpected resync"),
            }
        }
    })
    .await
    .expect("the feed did not deliver the changes in time");
    writer.await.unwrap();
    assert_eq!(seen, [1, 2, 3, 4, 5]);

    // a consumer behind the compaction point starts over from a snapshot
    s.compact(5).await.unwrap();
    let mut behind = ChangeFeed::new(Arc::clone(s), 2, Duration::from_secs(30));
    match behind.next().await.unwrap() {
        FeedEvent::Resync(snapshot) => {
            assert_eq!(snapshot.revision, 5);
            assert_eq!(snapshot.apis.len(), 5);
        }
        FeedEvent::Changes(_) => panic!("expected a resync"),
    }
    assert_eq!(behind.last_revision(), 5);
}

async fn fleet(f: Fixture) {
    let s = &f.store;
    let now = Utc::now();
    let mut r = RuntimeRecord {
        node_id: "rt-1".into(),
        group: "default".into(),
        controller_id: "ctl-a".into(),
        session_id: "s1".into(),
        session_epoch: 10,
        heartbeat_interval_ms: 10_000,
        address: "127.0.0.1:5000".into(),
        runtime_version: "0.1.0".into(),
        applied_revision: 3,
        connected: true,
        connected_at: now,
        last_seen: now,
        last_error: None,
        last_error_revision: None,
    };
    assert!(s.register_runtime(&r).await.unwrap());
    r.applied_revision = 4;
    r.last_error = Some("unknown policy".into());
    r.last_error_revision = Some(5);
    assert!(s.update_runtime(&r).await.unwrap());

    // the runtime moves to another controller: the old session can no longer write
    let mut moved = r.clone();
    moved.controller_id = "ctl-b".into();
    moved.session_id = "s2".into();
    moved.session_epoch = 11;
    assert!(s.register_runtime(&moved).await.unwrap());
    let mut stale = r.clone();
    stale.connected = false;
    assert!(!s.update_runtime(&stale).await.unwrap());

    // a late register of the old session (a retry from the old controller) loses
    assert!(!s.register_runtime(&r).await.unwrap());
    let listed = s.list_runtimes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].controller_id, "ctl-b");
    assert!(listed[0].connected);
    assert_eq!(listed[0].last_error.as_deref(), Some("unknown policy"));

    assert_eq!(
        s.prune_runtimes(now - chrono::Duration::seconds(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.prune_runtimes(now + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(s.list_runtimes().await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_clear_error() {
    let err = gw_store::open("mysql://x", &StoreOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("postgres://"), "{err}");
    let options = StoreOptions {
        timeout: Duration::from_millis(500),
        ..StoreOptions::default()
    };
    // nothing listens on port 1
    let err = gw_store::open("postgres://postgres@127.0.0.1:1/x", &options)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}
