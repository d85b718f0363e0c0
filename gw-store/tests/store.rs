//! The same behaviour, checked on both backends: SQLite in a temporary file, PostgreSQL in a
//! database of its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use gw_store::audit::{KIND_ADMIN_TOKEN, KIND_ENROLLMENT_TOKEN, KIND_RUNTIME};
use gw_store::feed::{ChangeFeed, FeedEvent};
use gw_store::testing::TestDatabase;
use gw_store::{
    AdminRole, AdminTokenState, AuditQuery, ChangeOp, EnrollmentRecord, KIND_API, NewAdminToken,
    NewEnrollmentToken, Precondition, PutApi, PutResource, Renewal, RouteKey, RuntimeRecord, Store,
    StoreError, StoreOptions, TokenRefusal,
};
use serde_json::json;

struct Fixture {
    store: Arc<dyn Store>,
    /// The database's URL, for the tests that reach behind the store.
    url: String,
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
        url,
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
        url: db.url().to_string(),
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
        audit: None,
    }
}

const CERT: &str = "certificate";

fn cert(name: &str, serial: u32, precondition: Precondition) -> PutResource {
    PutResource {
        kind: CERT.into(),
        name: name.into(),
        spec: json!({"name": name, "serial": serial}),
        precondition,
        audit: None,
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
    resource_crud,
    resource_preconditions,
    resource_changes_are_logged_with_their_kind,
    snapshot_holds_apis_and_resources_at_one_revision,
    resource_kind_api_is_refused,
    resources_share_revisions_with_apis,
    pool_status_counts_connections,
    a_cluster_secret_is_made_once,
    enrollment_tokens_are_listed_without_their_secret_and_revoked_once,
    the_last_use_of_a_token_goes_to_one_caller,
    a_wrong_secret_reads_as_unknown_and_takes_no_use,
    expired_and_revoked_tokens_are_refused_and_expired_ones_pruned,
    a_renewal_needs_a_current_serial_and_no_revocation,
    a_superseded_certificate_renewing_after_its_successor_was_used_revokes_the_node,
    a_new_enrollment_supersedes_the_old_one,
    a_live_node_of_another_group_and_a_revoked_node_are_not_taken,
    admin_tokens_are_listed_without_their_hash_and_found_with_it,
    an_admin_token_name_is_free_again_once_revoked,
    an_admin_token_is_touched_at_most_once_a_minute,
    old_enrollments_and_admin_tokens_are_pruned_and_revocations_kept,
    a_resource_write_records_its_audit_in_its_transaction,
    a_failed_write_records_no_audit,
    token_and_enrollment_writes_record_their_audit_in_their_transaction,
    a_failed_token_or_enrollment_write_records_no_audit,
    a_write_whose_audit_record_fails_is_not_made,
    audit_records_are_filtered_paged_and_pruned,
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

    let deleted = s
        .delete_api("orders", Precondition::None, None)
        .await
        .unwrap();
    assert_eq!(deleted.revision, 4);
    assert_eq!(deleted.previous.revision, 2);
    assert!(s.get_api("orders").await.unwrap().is_none());
    assert!(matches!(
        s.delete_api("orders", Precondition::None, None).await,
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
        s.delete_api("a", Precondition::Revision(1), None).await,
        Err(StoreError::PreconditionFailed {
            actual: Some(2),
            ..
        })
    ));
    assert!(matches!(
        s.put_api(put("b", "/b", Precondition::Revision(1))).await,
        Err(StoreError::PreconditionFailed { actual: None, .. })
    ));
    s.delete_api("a", Precondition::Revision(2), None)
        .await
        .unwrap();
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
    s.delete_api("clash", Precondition::None, None)
        .await
        .unwrap();
    s.put_api(put("third", "/orders", Precondition::None))
        .await
        .unwrap();
}

async fn change_log_and_compaction(f: Fixture) {
    let s = &f.store;
    s.put_api(put("a", "/a", Precondition::None)).await.unwrap();
    s.put_api(put("b", "/b", Precondition::None)).await.unwrap();
    s.delete_api("a", Precondition::None, None).await.unwrap();

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
        refused: None,
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

    // a refusal (another process claiming the id, say) does not replace a live session...
    let mut refusal = moved.clone();
    refusal.controller_id = "ctl-a".into();
    refusal.session_id = "r1".into();
    refusal.session_epoch = 0;
    refusal.connected = false;
    refusal.refused = Some("protocol version 2 is not supported".into());
    let live_since = now - chrono::Duration::seconds(35);
    assert!(!s.record_refusal(&refusal, live_since).await.unwrap());
    assert_eq!(s.list_runtimes().await.unwrap()[0].refused, None);
    // ...but one that has gone silent
    assert!(
        s.record_refusal(&refusal, now + chrono::Duration::milliseconds(1))
            .await
            .unwrap()
    );
    let listed = s.list_runtimes().await.unwrap();
    assert_eq!(listed[0].session_id, "r1");
    assert_eq!(
        listed[0].refused.as_deref(),
        Some("protocol version 2 is not supported")
    );
    assert!(!listed[0].connected);
    // refusals repeat while the runtime retries
    assert!(s.record_refusal(&refusal, live_since).await.unwrap());
    // the runtime, upgraded, connects: its session replaces the refusal
    let mut upgraded = moved.clone();
    upgraded.session_id = "s3".into();
    upgraded.session_epoch = 12;
    assert!(s.register_runtime(&upgraded).await.unwrap());
    let listed = s.list_runtimes().await.unwrap();
    assert_eq!(
        (listed[0].session_id.as_str(), listed[0].refused.as_deref()),
        ("s3", None)
    );

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

async fn resource_crud(f: Fixture) {
    let s = &f.store;
    assert!(s.get_resource(CERT, "web").await.unwrap().is_none());
    assert!(s.list_resources(CERT).await.unwrap().is_empty());

    let created = s
        .put_resource(cert("web", 1, Precondition::None))
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.previous, None);
    assert_eq!(created.record.kind, CERT);
    assert_eq!(created.record.revision, 1);
    assert_eq!(created.record.created_at, created.record.updated_at);

    let updated = s
        .put_resource(cert("web", 2, Precondition::None))
        .await
        .unwrap();
    assert!(!updated.created);
    assert_eq!(updated.record.revision, 2);
    assert_eq!(updated.record.created_at, created.record.created_at);
    assert_eq!(updated.previous, Some(created.record.spec.clone()));
    // what a write returns is what a read gives back
    assert_eq!(
        s.get_resource(CERT, "web").await.unwrap(),
        Some(updated.record.clone())
    );

    s.put_resource(cert("api", 1, Precondition::None))
        .await
        .unwrap();
    // same name, another kind: a resource of its own
    s.put_resource(PutResource {
        kind: "consumer".into(),
        ..cert("web", 9, Precondition::None)
    })
    .await
    .unwrap();
    let listed = s.list_resources(CERT).await.unwrap();
    let names: Vec<_> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert!(listed.iter().all(|r| r.kind == CERT));
    assert_eq!(listed[1].spec["serial"], 2);
    assert_eq!(s.list_resources("consumer").await.unwrap().len(), 1);
    // a resource named like an API is not an API, and the reverse
    assert!(s.get_api("api").await.unwrap().is_none());
    assert!(s.get_resource(KIND_API, "api").await.unwrap().is_none());

    let deleted = s
        .delete_resource(CERT, "web", Precondition::None, None)
        .await
        .unwrap();
    assert_eq!(deleted.revision, 5);
    assert_eq!(deleted.previous, updated.record);
    assert!(s.get_resource(CERT, "web").await.unwrap().is_none());
    assert!(s.get_resource("consumer", "web").await.unwrap().is_some());
    match s
        .delete_resource(CERT, "web", Precondition::None, None)
        .await
    {
        Err(StoreError::NotFound { name }) => assert_eq!(name, "web"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // a failed write does not consume a revision
    assert_eq!(s.current_revision().await.unwrap(), 5);
}

async fn resource_preconditions(f: Fixture) {
    let s = &f.store;
    s.put_resource(cert("a", 1, Precondition::Absent))
        .await
        .unwrap();
    assert!(matches!(
        s.put_resource(cert("a", 2, Precondition::Absent)).await,
        Err(StoreError::AlreadyExists { name }) if name == "a"
    ));
    assert!(matches!(
        s.put_resource(cert("a", 2, Precondition::Revision(7)))
            .await,
        Err(StoreError::PreconditionFailed {
            expected: 7,
            actual: Some(1),
            ..
        })
    ));
    s.put_resource(cert("a", 2, Precondition::Revision(1)))
        .await
        .unwrap();
    assert!(matches!(
        s.delete_resource(CERT, "a", Precondition::Revision(1), None)
            .await,
        Err(StoreError::PreconditionFailed {
            actual: Some(2),
            ..
        })
    ));
    assert!(matches!(
        s.put_resource(cert("b", 1, Precondition::Revision(1)))
            .await,
        Err(StoreError::PreconditionFailed { actual: None, .. })
    ));
    // a missing resource with a revision precondition: as for APIs
    assert!(matches!(
        s.delete_resource(CERT, "b", Precondition::Revision(1), None)
            .await,
        Err(StoreError::PreconditionFailed {
            expected: 1,
            actual: None,
            ..
        })
    ));
    // the precondition is per kind: no certificate "a" exists as a consumer
    assert!(matches!(
        s.put_resource(PutResource {
            kind: "consumer".into(),
            ..cert("a", 1, Precondition::Revision(2))
        })
        .await,
        Err(StoreError::PreconditionFailed { actual: None, .. })
    ));
    assert_eq!(
        s.get_resource(CERT, "a").await.unwrap().unwrap().spec["serial"],
        2
    );
    assert!(s.get_resource(CERT, "b").await.unwrap().is_none());
    s.delete_resource(CERT, "a", Precondition::Revision(2), None)
        .await
        .unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 3);
}

async fn resource_changes_are_logged_with_their_kind(f: Fixture) {
    let s = &f.store;
    s.put_api(put("orders", "/orders", Precondition::None))
        .await
        .unwrap();
    let put = s
        .put_resource(cert("web", 1, Precondition::None))
        .await
        .unwrap();
    s.delete_resource(CERT, "web", Precondition::None, None)
        .await
        .unwrap();
    s.delete_api("orders", Precondition::None, None)
        .await
        .unwrap();

    let changes = s.changes_since(0, 100).await.unwrap();
    let summary: Vec<(i64, &str, &str, bool)> = changes
        .iter()
        .map(|c| {
            (
                c.revision,
                c.kind.as_str(),
                c.name.as_str(),
                matches!(c.op, ChangeOp::Delete),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, KIND_API, "orders", false),
            (2, CERT, "web", false),
            (3, CERT, "web", true),
            (4, KIND_API, "orders", true),
        ]
    );
    assert_eq!(changes[1].op, ChangeOp::Upsert(put.record.spec));
    assert_eq!(changes[1].at, put.record.updated_at);
}

async fn snapshot_holds_apis_and_resources_at_one_revision(f: Fixture) {
    let s = &f.store;
    let empty = s.snapshot().await.unwrap();
    assert_eq!(empty.revision, 0);
    assert!(empty.apis.is_empty() && empty.resources.is_empty());

    s.put_resource(cert("web", 1, Precondition::None))
        .await
        .unwrap();
    s.put_api(put("orders", "/orders", Precondition::None))
        .await
        .unwrap();
    s.put_resource(PutResource {
        kind: "consumer".into(),
        ..cert("alice", 1, Precondition::None)
    })
    .await
    .unwrap();
    s.put_resource(cert("admin", 1, Precondition::None))
        .await
        .unwrap();
    s.put_resource(cert("web", 2, Precondition::None))
        .await
        .unwrap();

    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.revision, 5);
    assert_eq!(snap.apis.len(), 1);
    assert_eq!(snap.apis[0].name, "orders");
    let keys: Vec<(&str, &str, i64)> = snap
        .resources
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str(), r.revision))
        .collect();
    assert_eq!(
        keys,
        [
            (CERT, "admin", 4),
            (CERT, "web", 5),
            ("consumer", "alice", 3)
        ]
    );
    assert_eq!(snap.resources[1].spec["serial"], 2);
    assert_eq!(
        snap.resources[1],
        s.get_resource(CERT, "web").await.unwrap().unwrap()
    );

    s.delete_resource(CERT, "web", Precondition::None, None)
        .await
        .unwrap();
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.revision, 6);
    assert_eq!(snap.resources.len(), 2);
    assert!(snap.resources.iter().all(|r| r.name != "web"));
}

async fn resource_kind_api_is_refused(f: Fixture) {
    let s = &f.store;
    s.put_api(put("orders", "/orders", Precondition::None))
        .await
        .unwrap();
    for kind in [KIND_API, ""] {
        let err = s
            .put_resource(PutResource {
                kind: kind.into(),
                ..cert("orders", 1, Precondition::None)
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        let err = s
            .delete_resource(kind, "orders", Precondition::None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    let err = s
        .put_resource(PutResource {
            kind: KIND_API.into(),
            ..cert("orders", 1, Precondition::None)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("put_api"), "{err}");
    // nothing was written: the API is untouched and no revision was taken
    assert_eq!(s.current_revision().await.unwrap(), 1);
    assert_eq!(
        s.get_api("orders").await.unwrap().unwrap().spec["context"],
        "/orders"
    );
    assert!(s.snapshot().await.unwrap().resources.is_empty());
    assert_eq!(s.changes_since(0, 100).await.unwrap().len(), 1);
}

async fn resources_share_revisions_with_apis(f: Fixture) {
    let s = &f.store;
    let mut revisions = Vec::new();
    for i in 0..3 {
        let api = s
            .put_api(put(
                &format!("api-{i}"),
                &format!("/c{i}"),
                Precondition::None,
            ))
            .await
            .unwrap();
        revisions.push(api.record.revision);
        let cert = s
            .put_resource(cert(&format!("cert-{i}"), i, Precondition::None))
            .await
            .unwrap();
        revisions.push(cert.record.revision);
    }
    revisions.push(
        s.delete_resource(CERT, "cert-0", Precondition::None, None)
            .await
            .unwrap()
            .revision,
    );
    revisions.push(
        s.delete_api("api-0", Precondition::None, None)
            .await
            .unwrap()
            .revision,
    );
    assert_eq!(revisions, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(s.current_revision().await.unwrap(), 8);
    let logged: Vec<i64> = s
        .changes_since(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect();
    assert_eq!(logged, revisions);
}

/// The SQLite file holds certificates' private keys: it, and the journal files SQLite makes
/// beside it, are readable by their owner only, even under a permissive umask, and an
/// existing file with wider permissions is tightened.
#[tokio::test]
async fn the_sqlite_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/gw.db");
    let store = gw_store::open(
        &format!("sqlite://{}", path.display()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    store
        .put_resource(cert("site", 1, Precondition::None))
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("new/gw.db-wal");
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);
    drop(store);

    let loose = dir.path().join("loose.db");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = gw_store::open(
        &format!("sqlite://{}", loose.display()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(mode(&loose), 0o600);
}

/// An in-memory database leaves no file behind.
#[tokio::test]
async fn an_in_memory_sqlite_store_makes_no_file() {
    let here = std::env::current_dir().unwrap();
    let in_memory_files = || {
        std::fs::read_dir(&here)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains("memory"))
            })
            .count()
    };
    let _store = gw_store::open("sqlite::memory:", &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        in_memory_files(),
        0,
        "a file appeared in {}",
        here.display()
    );
}

/// The pool's status is read without waiting: its bound, the connections open and those idle.
/// (A connection goes back to the pool in a task of its own, so idle ones show up shortly
/// after an operation ends. On PostgreSQL the change listener holds one at all times.)
async fn pool_status_counts_connections(f: Fixture) {
    let status = f.store.pool_status().expect("both backends have a pool");
    let max = match f.store.backend() {
        gw_store::Backend::Postgres => StoreOptions::default().max_connections,
        gw_store::Backend::Sqlite => StoreOptions::default().max_connections.clamp(1, 8),
    };
    assert_eq!(status.max, max);
    assert!(status.open >= 1 && status.open <= max, "{status:?}");
    assert!(status.idle <= status.open, "{status:?}");
    f.store.ping().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = f.store.pool_status().unwrap();
        assert!(
            status.idle <= status.open && status.open <= max,
            "{status:?}"
        );
        if status.idle >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no idle connection after an operation: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_cluster_secret_is_made_once(f: Fixture) {
    // controllers starting together each offer a candidate; all get the same one
    let offers = (0..4).map(|i| {
        let store = std::sync::Arc::clone(&f.store);
        tokio::spawn(async move { store.cluster_secret("ca", &format!("ca-{i}")).await })
    });
    let mut agreed = Vec::new();
    for offer in offers {
        agreed.push(offer.await.unwrap().unwrap());
    }
    assert!(agreed.iter().all(|v| v == &agreed[0]), "{agreed:?}");
    assert!(agreed[0].starts_with("ca-"), "{agreed:?}");
    // a later start keeps it; another name is another value
    assert_eq!(
        f.store.cluster_secret("ca", "later").await.unwrap(),
        agreed[0]
    );
    assert_eq!(f.store.cluster_secret("other", "x").await.unwrap(), "x");
}

/// Now, at the precision both databases keep (microseconds).
fn now() -> chrono::DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

fn token(id: &str, uses_max: i64, expires_in: chrono::Duration) -> NewEnrollmentToken {
    let created_at = now();
    NewEnrollmentToken {
        id: id.into(),
        secret_hash: format!("hash-of-{id}"),
        group: "edge".into(),
        uses_max,
        expires_at: created_at + expires_in,
        created_at,
        description: Some(format!("token {id}")),
    }
}

fn hours(n: i64) -> chrono::Duration {
    chrono::Duration::hours(n)
}

async fn enrollment_tokens_are_listed_without_their_secret_and_revoked_once(f: Fixture) {
    let s = &f.store;
    assert!(s.list_enrollment_tokens().await.unwrap().is_empty());
    let a = token("a", 2, hours(1));
    s.create_enrollment_token(&a, None).await.unwrap();
    // an id is taken once
    let err = s.create_enrollment_token(&a, None).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");

    let listed = s.list_enrollment_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    let record = &listed[0];
    assert_eq!((record.id.as_str(), record.group.as_str()), ("a", "edge"));
    assert_eq!((record.uses, record.uses_max), (0, 2));
    assert_eq!(record.expires_at, a.expires_at);
    assert_eq!(record.created_at, a.created_at);
    assert_eq!(record.description.as_deref(), Some("token a"));
    assert_eq!(record.revoked_at, None);
    let shown = serde_json::to_string(record).unwrap();
    assert!(!shown.contains("hash-of-a"), "{shown}");

    // revoking twice keeps the first time; an unknown id is told
    let first = now();
    assert!(s.revoke_enrollment_token("a", first, None).await.unwrap());
    assert!(
        s.revoke_enrollment_token("a", first + hours(1), None)
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_enrollment_token("nope", first, None)
            .await
            .unwrap()
    );
    let listed = s.list_enrollment_tokens().await.unwrap();
    assert_eq!(listed[0].revoked_at, Some(first));
}

async fn the_last_use_of_a_token_goes_to_one_caller(f: Fixture) {
    let s = &f.store;
    // two controllers race for a token of one use, then ten for one of three
    for (id, uses_max, callers) in [("one", 1, 2), ("three", 3, 10)] {
        s.create_enrollment_token(&token(id, uses_max, hours(1)), None)
            .await
            .unwrap();
        let at = now();
        let attempts: Vec<_> = (0..callers)
            .map(|_| {
                let store = Arc::clone(&f.store);
                let hash = format!("hash-of-{id}");
                tokio::spawn(async move { store.use_enrollment_token(id, &hash, "edge", at).await })
            })
            .collect();
        let mut granted = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(()) => granted += 1,
                Err(TokenRefusal::UsedUp) => {}
                Err(other) => panic!("{id}: {other}"),
            }
        }
        assert_eq!(granted, uses_max, "{id}");
        let listed = s.list_enrollment_tokens().await.unwrap();
        let record = listed.iter().find(|t| t.id == id).unwrap();
        assert_eq!(record.uses, uses_max, "{id}");
    }
}

async fn a_wrong_secret_reads_as_unknown_and_takes_no_use(f: Fixture) {
    let s = &f.store;
    s.create_enrollment_token(&token("a", 1, hours(1)), None)
        .await
        .unwrap();
    let at = now();
    for (id, hash) in [("a", "hash-of-b"), ("b", "hash-of-b"), ("a", "")] {
        let refusal = s
            .use_enrollment_token(id, hash, "edge", at)
            .await
            .unwrap_err();
        assert!(matches!(refusal, TokenRefusal::Unknown), "{id}: {refusal}");
    }
    // the right secret for another group's runtime: refused, naming the token's group,
    // without taking the use (a wrong secret does not learn the group)
    let refusal = s
        .use_enrollment_token("a", "hash-of-a", "core", at)
        .await
        .unwrap_err();
    assert!(
        matches!(&refusal, TokenRefusal::OtherGroup(group) if group == "edge"),
        "{refusal}"
    );
    let refusal = s
        .use_enrollment_token("a", "hash-of-b", "core", at)
        .await
        .unwrap_err();
    assert!(matches!(refusal, TokenRefusal::Unknown), "{refusal}");
    assert_eq!(s.list_enrollment_tokens().await.unwrap()[0].uses, 0);
    // the right secret still has its use
    s.use_enrollment_token("a", "hash-of-a", "edge", at)
        .await
        .unwrap();
    // a used-up token is not confirmed to a wrong secret either
    let refusal = s
        .use_enrollment_token("a", "x", "edge", at)
        .await
        .unwrap_err();
    assert!(matches!(refusal, TokenRefusal::Unknown), "{refusal}");
    let refusal = s
        .use_enrollment_token("a", "hash-of-a", "edge", at)
        .await
        .unwrap_err();
    assert!(matches!(refusal, TokenRefusal::UsedUp), "{refusal}");
}

async fn expired_and_revoked_tokens_are_refused_and_expired_ones_pruned(f: Fixture) {
    let s = &f.store;
    s.create_enrollment_token(&token("old", 5, -hours(48)), None)
        .await
        .unwrap();
    s.create_enrollment_token(&token("recent", 5, -hours(1)), None)
        .await
        .unwrap();
    s.create_enrollment_token(&token("live", 5, hours(1)), None)
        .await
        .unwrap();
    let at = now();
    for id in ["old", "recent"] {
        let refusal = s
            .use_enrollment_token(id, &format!("hash-of-{id}"), "edge", at)
            .await
            .unwrap_err();
        assert!(matches!(refusal, TokenRefusal::Expired), "{id}: {refusal}");
    }
    // a token that expires right now is expired
    let listed = s.list_enrollment_tokens().await.unwrap();
    let live = listed.iter().find(|t| t.id == "live").unwrap();
    let refusal = s
        .use_enrollment_token("live", "hash-of-live", "edge", live.expires_at)
        .await
        .unwrap_err();
    assert!(matches!(refusal, TokenRefusal::Expired), "{refusal}");

    assert!(s.revoke_enrollment_token("live", at, None).await.unwrap());
    let refusal = s
        .use_enrollment_token("live", "hash-of-live", "edge", at)
        .await
        .unwrap_err();
    assert!(matches!(refusal, TokenRefusal::Revoked), "{refusal}");
    let listed = s.list_enrollment_tokens().await.unwrap();
    assert!(listed.iter().all(|t| t.uses == 0), "{listed:?}");

    // pruning takes the tokens expired before the cutoff (a day ago) only
    assert_eq!(
        s.delete_expired_enrollment_tokens(at - hours(24))
            .await
            .unwrap(),
        1
    );
    let mut left: Vec<String> = s
        .list_enrollment_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    left.sort();
    assert_eq!(left, ["live", "recent"]);
}

fn enrollment(node: &str, serial: &str) -> EnrollmentRecord {
    let at = now();
    EnrollmentRecord::new(node, "edge", serial, at + hours(24), Some("a"), at)
}

async fn enrolled(s: &Arc<dyn Store>, node: &str) -> EnrollmentRecord {
    s.runtime_enrollments()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.node_id == node)
        .unwrap()
}

async fn a_renewal_needs_a_current_serial_and_no_revocation(f: Fixture) {
    let s = &f.store;
    s.enroll_runtime(&enrollment("rt-1", "01")).await.unwrap();
    s.enroll_runtime(&enrollment("rt-2", "0a")).await.unwrap();
    let at = now();
    let later = at + hours(48);
    assert!(
        s.renew_runtime("rt-1", "01", "02", later, at)
            .await
            .unwrap()
            .renewed()
    );
    let renewed = enrolled(s, "rt-1").await;
    assert_eq!(renewed.serial, "02");
    assert_eq!(renewed.previous_serial.as_deref(), Some("01"));
    assert_eq!(renewed.not_after, later);
    assert_eq!(renewed.renewed_at, Some(at));
    // the previous serial still renews (its answer may have been lost); then "02" is the
    // previous one and "01" is stale
    assert!(
        s.renew_runtime("rt-1", "01", "03", later, at)
            .await
            .unwrap()
            .renewed()
    );
    assert!(
        !s.renew_runtime("rt-1", "01", "04", later, at)
            .await
            .unwrap()
            .renewed()
    );
    assert!(
        !s.renew_runtime("rt-1", "0a", "04", later, at)
            .await
            .unwrap()
            .renewed()
    );
    assert!(
        !s.renew_runtime("nope", "01", "04", later, at)
            .await
            .unwrap()
            .renewed()
    );
    let current = enrolled(s, "rt-1").await;
    assert_eq!(
        (current.serial.as_str(), current.previous_serial.as_deref()),
        ("03", Some("02"))
    );

    // revoked: no renewal with any serial; revoking twice keeps the first time
    assert!(s.revoke_runtime("rt-1", at, None).await.unwrap());
    assert!(s.revoke_runtime("rt-1", later, None).await.unwrap());
    assert!(!s.revoke_runtime("nope", at, None).await.unwrap());
    for serial in ["03", "02"] {
        assert!(
            !s.renew_runtime("rt-1", serial, "05", later, at)
                .await
                .unwrap()
                .renewed()
        );
    }
    let revoked = enrolled(s, "rt-1").await;
    assert_eq!(
        (revoked.serial.as_str(), revoked.revoked_at),
        ("03", Some(at))
    );
    // the other node is untouched
    let other = enrolled(s, "rt-2").await;
    assert_eq!(
        (
            other.serial.as_str(),
            other.previous_serial,
            other.revoked_at
        ),
        ("0a", None, None)
    );
}

async fn a_superseded_certificate_renewing_after_its_successor_was_used_revokes_the_node(
    f: Fixture,
) {
    let s = &f.store;
    s.enroll_runtime(&enrollment("rt-1", "01")).await.unwrap();
    let at = now();
    let later = at + hours(48);
    assert_eq!(
        s.renew_runtime("rt-1", "01", "02", later, at)
            .await
            .unwrap(),
        Renewal::Renewed
    );
    // a stream opened with the previous certificate records nothing: only the current
    // one counts
    s.runtime_serial_in_use("rt-1", "01", at).await.unwrap();
    assert_eq!(
        s.renew_runtime("rt-1", "01", "03", later, at)
            .await
            .unwrap(),
        Renewal::Renewed
    );
    // "03" is used: the holder of "02" is not the runtime whose answer was lost
    s.runtime_serial_in_use("rt-1", "03", at).await.unwrap();
    assert_eq!(
        s.renew_runtime("rt-1", "02", "04", later, at)
            .await
            .unwrap(),
        Renewal::Reused
    );
    let revoked = enrolled(s, "rt-1").await;
    assert_eq!(
        (revoked.serial.as_str(), revoked.revoked_at),
        ("03", Some(at))
    );
    // the current certificate no longer renews either, and asking again changes nothing
    for serial in ["03", "02"] {
        assert_eq!(
            s.renew_runtime("rt-1", serial, "05", later, later)
                .await
                .unwrap(),
            Renewal::Refused
        );
    }
    assert_eq!(enrolled(s, "rt-1").await.revoked_at, Some(at));
    // the current certificate renewing is no reuse, and a new certificate is not yet in use
    s.enroll_runtime(&enrollment("rt-2", "0a")).await.unwrap();
    s.runtime_serial_in_use("rt-2", "0a", at).await.unwrap();
    assert!(
        s.renew_runtime("rt-2", "0a", "0b", later, at)
            .await
            .unwrap()
            .renewed()
    );
    assert!(
        s.renew_runtime("rt-2", "0a", "0c", later, at)
            .await
            .unwrap()
            .renewed()
    );
    assert_eq!(enrolled(s, "rt-2").await.revoked_at, None);
}

async fn a_new_enrollment_supersedes_the_old_one(f: Fixture) {
    let s = &f.store;
    assert!(s.enroll_runtime(&enrollment("rt-1", "01")).await.unwrap());
    let at = now();
    assert!(
        s.renew_runtime("rt-1", "01", "02", at, at)
            .await
            .unwrap()
            .renewed()
    );
    // enrolling again in the same group (a runtime that lost its data directory) supersedes
    // the old certificates
    let again = EnrollmentRecord {
        token_id: Some("b".into()),
        // written as none, whatever the caller passes
        previous_serial: Some("02".into()),
        revoked_at: Some(at),
        ..enrollment("rt-1", "10")
    };
    assert!(s.enroll_runtime(&again).await.unwrap());
    let stored = enrolled(s, "rt-1").await;
    assert_eq!(
        stored,
        EnrollmentRecord {
            previous_serial: None,
            revoked_at: None,
            ..again.clone()
        }
    );
    assert!(
        !s.renew_runtime("rt-1", "02", "11", at, at)
            .await
            .unwrap()
            .renewed()
    );
    assert!(
        s.renew_runtime("rt-1", "10", "11", at, at)
            .await
            .unwrap()
            .renewed()
    );
    assert_eq!(s.runtime_enrollments().await.unwrap().len(), 1);
}

async fn a_live_node_of_another_group_and_a_revoked_node_are_not_taken(f: Fixture) {
    let s = &f.store;
    assert!(s.enroll_runtime(&enrollment("rt-1", "01")).await.unwrap());
    // a token of another group cannot take rt-1 while its certificate lives
    let elsewhere = EnrollmentRecord {
        group: "core".into(),
        ..enrollment("rt-1", "66")
    };
    assert!(!s.enroll_runtime(&elsewhere).await.unwrap());
    assert_eq!(enrolled(s, "rt-1").await.serial, "01");
    // once it has expired, the node id is free for another group
    let later = EnrollmentRecord {
        enrolled_at: now() + hours(25),
        ..elsewhere.clone()
    };
    assert!(s.enroll_runtime(&later).await.unwrap());
    assert_eq!(enrolled(s, "rt-1").await.group, "core");
    // revoked: no enrollment takes it, whatever its group, until it is forgotten
    assert!(s.revoke_runtime("rt-1", now(), None).await.unwrap());
    let same = EnrollmentRecord {
        group: "core".into(),
        ..enrollment("rt-1", "77")
    };
    assert!(!s.enroll_runtime(&same).await.unwrap());
    assert!(enrolled(s, "rt-1").await.revoked_at.is_some());
    assert!(s.forget_runtime("rt-1", None).await.unwrap());
    assert!(!s.forget_runtime("rt-1", None).await.unwrap());
    assert!(s.enroll_runtime(&same).await.unwrap());
    assert_eq!(enrolled(s, "rt-1").await.serial, "77");
}

fn admin_token(id: &str, name: &str, role: AdminRole, groups: &[&str]) -> NewAdminToken {
    NewAdminToken {
        id: id.into(),
        name: name.into(),
        secret_hash: format!("hash-of-{id}"),
        role,
        groups: groups.iter().map(ToString::to_string).collect(),
        created_at: now(),
        expires_at: None,
    }
}

async fn admin_tokens_are_listed_without_their_hash_and_found_with_it(f: Fixture) {
    let s = &f.store;
    assert!(s.list_admin_tokens().await.unwrap().is_empty());
    assert!(s.admin_token("a").await.unwrap().is_none());
    let a = admin_token(
        "a",
        "ci-deployer",
        AdminRole::Operator,
        &["edge", "payments"],
    );
    s.create_admin_token(&a, None).await.unwrap();
    let mut b = admin_token("b", "dashboards", AdminRole::Viewer, &[]);
    b.created_at = a.created_at + hours(1);
    b.expires_at = Some(b.created_at + hours(2));
    s.create_admin_token(&b, None).await.unwrap();

    let listed = s.list_admin_tokens().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["dashboards", "ci-deployer"], "newest first");
    let shown = serde_json::to_string(&listed).unwrap();
    assert!(!shown.contains("hash-of"), "{shown}");
    let ci = &listed[1];
    assert_eq!((ci.id.as_str(), ci.role), ("a", AdminRole::Operator));
    assert_eq!(ci.groups, ["edge", "payments"]);
    assert_eq!(ci.created_at, a.created_at);
    assert_eq!(
        (ci.expires_at, ci.revoked_at, ci.last_used_at),
        (None, None, None)
    );
    assert_eq!(listed[0].expires_at, b.expires_at);
    assert_eq!(listed[0].groups, Vec::<String>::new());
    assert_eq!(
        listed[0].state(b.created_at + hours(3)),
        AdminTokenState::Expired
    );

    let found = s.admin_token("a").await.unwrap().unwrap();
    assert_eq!(found.secret_hash, "hash-of-a");
    assert_eq!(&found.record, ci);
    let printed = format!("{found:?}");
    assert!(!printed.contains("hash-of-a"), "{printed}");
}

async fn an_admin_token_name_is_free_again_once_revoked(f: Fixture) {
    let s = &f.store;
    s.create_admin_token(&admin_token("a", "ci", AdminRole::Admin, &[]), None)
        .await
        .unwrap();
    let err = s
        .create_admin_token(&admin_token("b", "ci", AdminRole::Viewer, &[]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { name } if name == "ci"),
        "{err}"
    );
    // revoking twice keeps the first time; an unknown id is told
    let first = now();
    assert!(s.revoke_admin_token("a", first, None).await.unwrap());
    assert!(
        s.revoke_admin_token("a", first + hours(1), None)
            .await
            .unwrap()
    );
    assert!(!s.revoke_admin_token("nope", first, None).await.unwrap());
    s.create_admin_token(&admin_token("b", "ci", AdminRole::Viewer, &[]), None)
        .await
        .unwrap();
    let revoked = s.admin_token("a").await.unwrap().unwrap().record;
    assert_eq!(revoked.revoked_at, Some(first));
    assert_eq!(revoked.state(first), AdminTokenState::Revoked);
    assert_eq!(s.list_admin_tokens().await.unwrap().len(), 2);
}

async fn an_admin_token_is_touched_at_most_once_a_minute(f: Fixture) {
    let s = &f.store;
    s.create_admin_token(&admin_token("a", "ci", AdminRole::Admin, &[]), None)
        .await
        .unwrap();
    let last_used = |s: Arc<dyn Store>| async move {
        s.admin_token("a")
            .await
            .unwrap()
            .unwrap()
            .record
            .last_used_at
    };
    let first = now();
    s.touch_admin_token("a", first).await.unwrap();
    assert_eq!(last_used(s.clone()).await, Some(first));
    s.touch_admin_token("a", first + chrono::Duration::seconds(59))
        .await
        .unwrap();
    assert_eq!(last_used(s.clone()).await, Some(first), "within the minute");
    let later = first + chrono::Duration::seconds(61);
    s.touch_admin_token("a", later).await.unwrap();
    assert_eq!(last_used(s.clone()).await, Some(later));
    // an unknown id is no error: the token may have been deleted meanwhile
    s.touch_admin_token("nope", later).await.unwrap();
}

fn author(actor: &str) -> gw_store::Audit {
    gw_store::Audit {
        actor: actor.into(),
        role: "admin".into(),
        source: Some("192.0.2.1".into()),
        request_id: format!("req-{actor}"),
        action: None,
        detail: None,
    }
}

async fn a_resource_write_records_its_audit_in_its_transaction(f: Fixture) {
    let s = &f.store;
    let mut api = put("orders", "/orders", Precondition::Absent);
    api.audit = Some(author("ci"));
    let created = s.put_api(api).await.unwrap();
    let mut api = put("orders", "/orders/v2", Precondition::None);
    api.audit = Some(author("ci"));
    let updated = s.put_api(api).await.unwrap();
    let mut certificate = cert("web", 1, Precondition::None);
    certificate.audit = Some(author("ops").doing("rotate", Some("serial 1".into())));
    s.put_resource(certificate).await.unwrap();
    let deleted = s
        .delete_api("orders", Precondition::None, Some(&author("ci")))
        .await
        .unwrap();
    s.delete_resource(CERT, "web", Precondition::None, Some(&author("ops")))
        .await
        .unwrap();
    // a write without an author records nothing
    s.put_api(put("quiet", "/quiet", Precondition::None))
        .await
        .unwrap();

    let records = s.list_audit(&AuditQuery::default()).await.unwrap();
    let seen: Vec<(&str, &str, &str, &str, Option<i64>)> = records
        .iter()
        .map(|r| {
            (
                r.actor.as_str(),
                r.action.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.revision,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ops", "delete", CERT, "web", Some(deleted.revision + 1)),
            ("ci", "delete", "api", "orders", Some(deleted.revision)),
            (
                "ops",
                "rotate",
                CERT,
                "web",
                Some(updated.record.revision + 1)
            ),
            (
                "ci",
                "update",
                "api",
                "orders",
                Some(updated.record.revision)
            ),
            (
                "ci",
                "create",
                "api",
                "orders",
                Some(created.record.revision)
            ),
        ],
        "newest first"
    );
    let [del_cert, del_api, rotate, update, create] = &records[..] else {
        panic!("{records:?}")
    };
    assert!(records.windows(2).all(|w| w[0].id > w[1].id));
    let digest = gw_store::audit::digest;
    assert_eq!(create.before, None);
    assert_eq!(create.after, Some(digest(&created.record.spec)));
    assert_eq!(update.before, create.after);
    assert_eq!(update.after, Some(digest(&updated.record.spec)));
    assert_ne!(update.before, update.after);
    assert_eq!(del_api.before, update.after);
    assert_eq!(del_api.after, None);
    assert_eq!(rotate.detail.as_deref(), Some("serial 1"));
    assert_eq!(del_cert.before, rotate.after);
    assert_eq!(create.source.as_deref(), Some("192.0.2.1"));
    assert_eq!(create.request_id, "req-ci");
    assert_eq!(create.role, "admin");
}

async fn a_failed_write_records_no_audit(f: Fixture) {
    let s = &f.store;
    let mut api = put("a", "/a", Precondition::None);
    api.audit = Some(author("ci"));
    s.put_api(api).await.unwrap();
    let before = s.list_audit(&AuditQuery::default()).await.unwrap().len();
    // a precondition, a taken name, a route conflict and a missing resource: all refused
    let mut stale = put("a", "/a", Precondition::Revision(99));
    stale.audit = Some(author("ci"));
    assert!(s.put_api(stale).await.is_err());
    let mut taken = put("a", "/a", Precondition::Absent);
    taken.audit = Some(author("ci"));
    assert!(s.put_api(taken).await.is_err());
    let mut clash = put("b", "/a", Precondition::None);
    clash.audit = Some(author("ci"));
    assert!(matches!(
        s.put_api(clash).await,
        Err(StoreError::RouteConflict { .. })
    ));
    assert!(
        s.delete_api("a", Precondition::Revision(99), Some(&author("ci")))
            .await
            .is_err()
    );
    assert!(
        s.delete_resource(CERT, "none", Precondition::None, Some(&author("ci")))
            .await
            .is_err()
    );
    assert_eq!(
        s.list_audit(&AuditQuery::default()).await.unwrap().len(),
        before
    );
}

/// Every audit record, oldest first, as (actor, action, kind, name, detail).
async fn audit_trail(s: &Arc<dyn Store>) -> Vec<(String, String, String, String, Option<String>)> {
    let mut records = s.list_audit(&AuditQuery::default()).await.unwrap();
    records.reverse();
    records
        .into_iter()
        .map(|r| (r.actor, r.action, r.kind, r.name, r.detail))
        .collect()
}

async fn token_and_enrollment_writes_record_their_audit_in_their_transaction(f: Fixture) {
    let s = &f.store;
    let ci = author("ci");
    s.create_enrollment_token(&token("t1", 1, hours(1)), Some(&ci))
        .await
        .unwrap();
    assert!(
        s.revoke_enrollment_token("t1", now(), Some(&ci))
            .await
            .unwrap()
    );
    s.create_admin_token(
        &admin_token("a1", "deployer", AdminRole::Operator, &["edge"]),
        Some(&ci),
    )
    .await
    .unwrap();
    assert!(s.revoke_admin_token("a1", now(), Some(&ci)).await.unwrap());
    assert!(s.enroll_runtime(&enrollment("rt-1", "01")).await.unwrap());
    let ops = author("ops");
    assert!(s.revoke_runtime("rt-1", now(), Some(&ops)).await.unwrap());
    assert!(s.forget_runtime("rt-1", Some(&ops)).await.unwrap());
    // an action the caller names is kept
    s.create_enrollment_token(
        &token("t2", 1, hours(1)),
        Some(&author("ci").doing("bootstrap", Some("first node".into()))),
    )
    .await
    .unwrap();
    // a write without an author records nothing
    s.create_enrollment_token(&token("t3", 1, hours(1)), None)
        .await
        .unwrap();
    assert!(s.revoke_enrollment_token("t3", now(), None).await.unwrap());

    let row = |actor: &str, action: &str, kind: &str, name: &str, detail: Option<&str>| {
        (
            actor.to_string(),
            action.to_string(),
            kind.to_string(),
            name.to_string(),
            detail.map(str::to_string),
        )
    };
    assert_eq!(
        audit_trail(s).await,
        vec![
            row(
                "ci",
                "create",
                KIND_ENROLLMENT_TOKEN,
                "t1",
                Some("group edge")
            ),
            row("ci", "revoke", KIND_ENROLLMENT_TOKEN, "t1", None),
            row(
                "ci",
                "create",
                KIND_ADMIN_TOKEN,
                "a1",
                Some("deployer (operator)")
            ),
            row("ci", "revoke", KIND_ADMIN_TOKEN, "a1", None),
            row("ops", "revoke", KIND_RUNTIME, "rt-1", None),
            row("ops", "forget", KIND_RUNTIME, "rt-1", None),
            row(
                "ci",
                "bootstrap",
                KIND_ENROLLMENT_TOKEN,
                "t2",
                Some("first node")
            ),
        ]
    );
    let records = s.list_audit(&AuditQuery::default()).await.unwrap();
    for record in &records {
        assert_eq!(record.request_id, format!("req-{}", record.actor));
        assert_eq!(record.source.as_deref(), Some("192.0.2.1"));
        assert_eq!(record.role, "admin");
        // not a change of the desired state: no revision, no digests
        assert_eq!(
            (record.revision, &record.before, &record.after),
            (None, &None, &None)
        );
        let shown = serde_json::to_string(record).unwrap();
        assert!(!shown.contains("hash-of"), "{shown}");
    }
}

async fn a_failed_token_or_enrollment_write_records_no_audit(f: Fixture) {
    let s = &f.store;
    let ci = author("ci");
    s.create_enrollment_token(&token("t1", 1, hours(1)), None)
        .await
        .unwrap();
    s.create_admin_token(&admin_token("a1", "deployer", AdminRole::Admin, &[]), None)
        .await
        .unwrap();
    // a taken id, a taken name, unknown ids and nodes: refused, and nothing recorded
    let err = s
        .create_enrollment_token(&token("t1", 1, hours(1)), Some(&ci))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    let err = s
        .create_admin_token(
            &admin_token("a2", "deployer", AdminRole::Viewer, &[]),
            Some(&ci),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(
        !s.revoke_enrollment_token("nope", now(), Some(&ci))
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_admin_token("nope", now(), Some(&ci))
            .await
            .unwrap()
    );
    assert!(!s.revoke_runtime("nope", now(), Some(&ci)).await.unwrap());
    assert!(!s.forget_runtime("nope", Some(&ci)).await.unwrap());
    assert_eq!(audit_trail(s).await, vec![]);
    // the store still takes writes: the refusals left no transaction open
    assert!(s.revoke_admin_token("a1", now(), Some(&ci)).await.unwrap());
    assert_eq!(audit_trail(s).await.len(), 1);
}

async fn audit_records_are_filtered_paged_and_pruned(f: Fixture) {
    let s = &f.store;
    for i in 0..5 {
        let actor = if i % 2 == 0 { "alice" } else { "bob" };
        let node = format!("rt-{i}");
        assert!(s.enroll_runtime(&enrollment(&node, "01")).await.unwrap());
        assert!(
            s.revoke_runtime(&node, now(), Some(&author(actor)))
                .await
                .unwrap()
        );
    }
    let all = s.list_audit(&AuditQuery::default()).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["rt-4", "rt-3", "rt-2", "rt-1", "rt-0"]);

    let by = |actor: &str| AuditQuery {
        actor: Some(actor.into()),
        ..AuditQuery::default()
    };
    assert_eq!(s.list_audit(&by("bob")).await.unwrap().len(), 2);
    assert_eq!(s.list_audit(&by("carol")).await.unwrap().len(), 0);
    let named = AuditQuery {
        kind: Some("runtime".into()),
        name: Some("rt-2".into()),
        ..AuditQuery::default()
    };
    let found = s.list_audit(&named).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].actor, "alice");
    let other_kind = AuditQuery {
        kind: Some("api".into()),
        ..AuditQuery::default()
    };
    assert!(s.list_audit(&other_kind).await.unwrap().is_empty());

    // pages of two, each after the last of the one before
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_audit(&AuditQuery {
                before_id: cursor,
                limit: 2,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|r| r.id);
        pages.push(page.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
    }
    assert_eq!(
        pages,
        [vec!["rt-4", "rt-3"], vec!["rt-2", "rt-1"], vec!["rt-0"]]
    );

    // since: records at or after a time
    let later = Utc::now() + chrono::Duration::hours(1);
    let since = |at| AuditQuery {
        since: Some(at),
        ..AuditQuery::default()
    };
    assert!(s.list_audit(&since(later)).await.unwrap().is_empty());
    assert_eq!(s.list_audit(&since(all[4].at)).await.unwrap().len(), 5);

    // pruning deletes the records made before the cutoff, and only those
    assert_eq!(s.prune_audit(all[4].at).await.unwrap(), 0);
    assert_eq!(s.prune_audit(later).await.unwrap(), 5);
    assert!(
        s.list_audit(&AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn old_enrollments_and_admin_tokens_are_pruned_and_revocations_kept(f: Fixture) {
    let s = &f.store;
    let at = now();
    // rt-old's certificate expired two days ago; rt-live's holds; rt-revoked expired too
    // but is revoked, which holds until it is forgotten
    let expired = |node: &str| EnrollmentRecord {
        not_after: at - hours(48),
        enrolled_at: at - hours(72),
        ..enrollment(node, "01")
    };
    assert!(s.enroll_runtime(&expired("rt-old")).await.unwrap());
    assert!(
        s.enroll_runtime(&enrollment("rt-live", "02"))
            .await
            .unwrap()
    );
    assert!(s.enroll_runtime(&expired("rt-revoked")).await.unwrap());
    assert!(s.revoke_runtime("rt-revoked", at, None).await.unwrap());
    assert_eq!(
        s.prune_runtime_enrollments(at - hours(24)).await.unwrap(),
        1
    );
    let left = sorted(s.runtime_enrollments().await.unwrap(), |e| e.node_id);
    assert_eq!(left, ["rt-live", "rt-revoked"]);

    // admin tokens: one revoked long ago, one expired long ago, one live, one revoked now
    let mut expired_token = admin_token("b", "expired", AdminRole::Viewer, &[]);
    expired_token.expires_at = Some(at - hours(48));
    for token in [
        admin_token("a", "revoked", AdminRole::Admin, &[]),
        expired_token,
        admin_token("c", "live", AdminRole::Admin, &[]),
        admin_token("d", "just-revoked", AdminRole::Admin, &[]),
    ] {
        s.create_admin_token(&token, None).await.unwrap();
    }
    assert!(
        s.revoke_admin_token("a", at - hours(48), None)
            .await
            .unwrap()
    );
    assert!(s.revoke_admin_token("d", at, None).await.unwrap());
    assert_eq!(s.prune_admin_tokens(at - hours(24)).await.unwrap(), 2);
    let left = sorted(s.list_admin_tokens().await.unwrap(), |t| t.id);
    assert_eq!(left, ["c", "d"]);
}

/// The keys of `items`, sorted.
fn sorted<T>(items: Vec<T>, key: impl FnMut(T) -> String) -> Vec<String> {
    let mut keys: Vec<String> = items.into_iter().map(key).collect();
    keys.sort();
    keys
}

/// Makes every insert into the audit log fail, behind the store's back (a trigger).
async fn refuse_audit_records(f: &Fixture) {
    match f.store.backend() {
        gw_store::Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&f.url).await.unwrap();
            sqlx::raw_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
                 BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        gw_store::Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&f.url).await.unwrap();
            sqlx::raw_sql(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$; \
                 CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
                 FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

async fn a_write_whose_audit_record_fails_is_not_made(f: Fixture) {
    let s = &f.store;
    s.create_enrollment_token(&token("t1", 1, hours(1)), None)
        .await
        .unwrap();
    s.create_admin_token(&admin_token("a1", "deployer", AdminRole::Admin, &[]), None)
        .await
        .unwrap();
    assert!(s.enroll_runtime(&enrollment("rt-1", "01")).await.unwrap());
    let revision = s.current_revision().await.unwrap();
    refuse_audit_records(&f).await;
    let ci = author("ci");

    // every audited write fails with its record, and leaves no trace
    assert!(
        s.create_enrollment_token(&token("t2", 1, hours(1)), Some(&ci))
            .await
            .is_err()
    );
    assert!(
        s.revoke_enrollment_token("t1", now(), Some(&ci))
            .await
            .is_err()
    );
    assert!(
        s.create_admin_token(
            &admin_token("a2", "other", AdminRole::Viewer, &[]),
            Some(&ci)
        )
        .await
        .is_err()
    );
    assert!(s.revoke_admin_token("a1", now(), Some(&ci)).await.is_err());
    assert!(s.revoke_runtime("rt-1", now(), Some(&ci)).await.is_err());
    assert!(s.forget_runtime("rt-1", Some(&ci)).await.is_err());
    let mut api = put("orders", "/orders", Precondition::None);
    api.audit = Some(ci.clone());
    assert!(s.put_api(api).await.is_err());

    let tokens = s.list_enrollment_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].revoked_at, None);
    let admins = s.list_admin_tokens().await.unwrap();
    assert_eq!(admins.len(), 1, "{admins:?}");
    assert_eq!(admins[0].revoked_at, None);
    let enrollments = s.runtime_enrollments().await.unwrap();
    assert_eq!(enrollments.len(), 1, "{enrollments:?}");
    assert_eq!(enrollments[0].revoked_at, None);
    assert!(s.get_api("orders").await.unwrap().is_none());
    assert_eq!(s.current_revision().await.unwrap(), revision);
    // (the same writes without an author still go through: only the record was refused)
    assert!(s.revoke_runtime("rt-1", now(), None).await.unwrap());
}
