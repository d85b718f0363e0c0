//! The SQL both backends share.
//!
//! The statements are written once, with `$n` placeholders (which SQLite accepts as numbered
//! parameters too), and [`impl_store!`] stamps the one [`crate::Store`] implementation onto
//! each backend's type, whose pool and row types differ. What differs between the databases
//! lives in each backend's inherent methods, which the macro calls:
//!
//! - `begin_write()`: start a write transaction that serializes writers and returns it with
//!   the new revision taken in it;
//! - `commit_write(tx, revision)`: announce the change (NOTIFY, or the in-process hint) and
//!   commit;
//! - `begin_read()`: start a read transaction that sees one consistent snapshot;
//! - `KIND` and `hint_receiver()`.

/// Implements [`crate::Store`] for a backend type with a `pool` field.
macro_rules! impl_store {
    ($store:ty, $row:ty) => {
        impl $store {
            fn api_record(row: &$row) -> Result<$crate::ApiRecord, $crate::StoreError> {
                use sqlx::Row as _;
                let sqlx::types::Json(spec): sqlx::types::Json<serde_json::Value> =
                    row.try_get("spec")?;
                Ok($crate::ApiRecord {
                    name: row.try_get("name")?,
                    spec,
                    revision: row.try_get("revision")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn resource_record(row: &$row) -> Result<$crate::ResourceRecord, $crate::StoreError> {
                use sqlx::Row as _;
                let sqlx::types::Json(spec): sqlx::types::Json<serde_json::Value> =
                    row.try_get("spec")?;
                Ok($crate::ResourceRecord {
                    kind: row.try_get("kind")?,
                    name: row.try_get("name")?,
                    spec,
                    revision: row.try_get("revision")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            /// Binds a runtime's columns, in [`write_runtime`]'s order, to `query`.
            fn bind_runtime<'q>(
                query: sqlx::query::Query<
                    'q,
                    <$row as sqlx::Row>::Database,
                    <<$row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
                >,
                r: &'q $crate::RuntimeRecord,
            ) -> sqlx::query::Query<
                'q,
                <$row as sqlx::Row>::Database,
                <<$row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
            > {
                query
                    .bind(&r.node_id)
                    .bind(&r.group)
                    .bind(&r.controller_id)
                    .bind(&r.session_id)
                    .bind(&r.address)
                    .bind(&r.runtime_version)
                    .bind(r.applied_revision)
                    .bind(r.connected)
                    .bind(r.connected_at)
                    .bind(r.last_seen)
                    .bind(&r.last_error)
                    .bind(r.last_error_revision)
                    .bind(r.session_epoch)
                    .bind(r.heartbeat_interval_ms)
                    .bind(&r.refused)
            }

            fn runtime_record(row: &$row) -> Result<$crate::RuntimeRecord, $crate::StoreError> {
                use sqlx::Row as _;
                Ok($crate::RuntimeRecord {
                    node_id: row.try_get("node_id")?,
                    group: row.try_get("grp")?,
                    controller_id: row.try_get("controller_id")?,
                    session_id: row.try_get("session_id")?,
                    session_epoch: row.try_get("session_epoch")?,
                    heartbeat_interval_ms: row.try_get("heartbeat_ms")?,
                    address: row.try_get("address")?,
                    runtime_version: row.try_get("runtime_version")?,
                    applied_revision: row.try_get("applied_revision")?,
                    connected: row.try_get("connected")?,
                    connected_at: row.try_get("connected_at")?,
                    last_seen: row.try_get("last_seen")?,
                    last_error: row.try_get("last_error")?,
                    last_error_revision: row.try_get("last_error_revision")?,
                    refused: row.try_get("refused")?,
                })
            }

            fn change(row: &$row) -> Result<$crate::Change, $crate::StoreError> {
                use sqlx::Row as _;
                let spec: Option<sqlx::types::Json<serde_json::Value>> = row.try_get("spec")?;
                let op: String = row.try_get("op")?;
                Ok($crate::Change {
                    revision: row.try_get("revision")?,
                    kind: row.try_get("kind")?,
                    name: row.try_get("name")?,
                    op: $crate::change_op(&op, spec.map(|sqlx::types::Json(v)| v))?,
                    at: row.try_get("created_at")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> $crate::Backend {
                Self::KIND
            }

            fn hints(&self) -> tokio::sync::watch::Receiver<u64> {
                self.hint_receiver()
            }

            fn store_id(&self) -> &str {
                &self.store_id
            }

            fn pool_status(&self) -> Option<$crate::PoolStatus> {
                Some($crate::PoolStatus {
                    open: self.pool.size(),
                    idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
                    max: self.pool.options().get_max_connections(),
                })
            }

            async fn ping(&self) -> Result<(), $crate::StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn put_api(
                &self,
                put: $crate::PutApi,
            ) -> Result<$crate::PutOutcome, $crate::StoreError> {
                let (mut tx, revision) = self.begin_write().await?;
                let existing = sqlx::query($crate::sql::SELECT_API)
                    .bind(&put.name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| Self::api_record(&row))
                    .transpose()?;
                $crate::check_precondition(
                    &put.name,
                    put.precondition,
                    existing.as_ref().map(|e| e.revision),
                )?;
                let now = $crate::sql::now();
                let created_at = existing.as_ref().map_or(now, |e| e.created_at);
                sqlx::query($crate::sql::UPSERT_API)
                    .bind(&put.name)
                    .bind(sqlx::types::Json(&put.spec))
                    .bind(revision)
                    .bind(created_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::sql::DELETE_ROUTES)
                    .bind(&put.name)
                    .execute(&mut *tx)
                    .await?;
                for key in &put.routes {
                    let inserted = sqlx::query($crate::sql::INSERT_ROUTE)
                        .bind(&key.group)
                        .bind(&key.host)
                        .bind(&key.context)
                        .bind(&put.name)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if inserted == 0 {
                        let holder: String = sqlx::query_scalar($crate::sql::ROUTE_HOLDER)
                            .bind(&key.group)
                            .bind(&key.host)
                            .bind(&key.context)
                            .fetch_one(&mut *tx)
                            .await?;
                        return Err($crate::StoreError::RouteConflict {
                            group: key.group.clone(),
                            host: key.host.clone(),
                            context: key.context.clone(),
                            holder,
                        });
                    }
                }
                sqlx::query($crate::sql::INSERT_CHANGE)
                    .bind(revision)
                    .bind($crate::KIND_API)
                    .bind(&put.name)
                    .bind("upsert")
                    .bind(Some(sqlx::types::Json(&put.spec)))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                self.commit_write(tx, revision).await?;
                Ok($crate::PutOutcome {
                    created: existing.is_none(),
                    previous: existing.map(|e| e.spec),
                    record: $crate::ApiRecord {
                        name: put.name,
                        spec: put.spec,
                        revision,
                        created_at,
                        updated_at: now,
                    },
                })
            }

            async fn delete_api(
                &self,
                name: &str,
                precondition: $crate::Precondition,
            ) -> Result<$crate::DeleteOutcome, $crate::StoreError> {
                let (mut tx, revision) = self.begin_write().await?;
                let existing = sqlx::query($crate::sql::SELECT_API)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| Self::api_record(&row))
                    .transpose()?;
                let Some(previous) = existing else {
                    return Err(match precondition {
                        $crate::Precondition::Revision(expected) => {
                            $crate::StoreError::PreconditionFailed {
                                name: name.to_string(),
                                expected,
                                actual: None,
                            }
                        }
                        _ => $crate::StoreError::NotFound {
                            name: name.to_string(),
                        },
                    });
                };
                $crate::check_precondition(name, precondition, Some(previous.revision))?;
                sqlx::query($crate::sql::DELETE_API)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::sql::INSERT_CHANGE)
                    .bind(revision)
                    .bind($crate::KIND_API)
                    .bind(name)
                    .bind("delete")
                    .bind(None::<sqlx::types::Json<serde_json::Value>>)
                    .bind($crate::sql::now())
                    .execute(&mut *tx)
                    .await?;
                self.commit_write(tx, revision).await?;
                Ok($crate::DeleteOutcome { revision, previous })
            }

            async fn get_api(
                &self,
                name: &str,
            ) -> Result<Option<$crate::ApiRecord>, $crate::StoreError> {
                sqlx::query($crate::sql::SELECT_API)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|row| Self::api_record(&row))
                    .transpose()
            }

            async fn put_resource(
                &self,
                put: $crate::PutResource,
            ) -> Result<$crate::PutResourceOutcome, $crate::StoreError> {
                $crate::check_resource_kind(&put.kind)?;
                let (mut tx, revision) = self.begin_write().await?;
                let existing = sqlx::query($crate::sql::SELECT_RESOURCE)
                    .bind(&put.kind)
                    .bind(&put.name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| Self::resource_record(&row))
                    .transpose()?;
                $crate::check_precondition(
                    &put.name,
                    put.precondition,
                    existing.as_ref().map(|e| e.revision),
                )?;
                let now = $crate::sql::now();
                let created_at = existing.as_ref().map_or(now, |e| e.created_at);
                sqlx::query($crate::sql::UPSERT_RESOURCE)
                    .bind(&put.kind)
                    .bind(&put.name)
                    .bind(sqlx::types::Json(&put.spec))
                    .bind(revision)
                    .bind(created_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::sql::INSERT_CHANGE)
                    .bind(revision)
                    .bind(&put.kind)
                    .bind(&put.name)
                    .bind("upsert")
                    .bind(Some(sqlx::types::Json(&put.spec)))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                self.commit_write(tx, revision).await?;
                Ok($crate::PutResourceOutcome {
                    created: existing.is_none(),
                    previous: existing.map(|e| e.spec),
                    record: $crate::ResourceRecord {
                        kind: put.kind,
                        name: put.name,
                        spec: put.spec,
                        revision,
                        created_at,
                        updated_at: now,
                    },
                })
            }

            async fn delete_resource(
                &self,
                kind: &str,
                name: &str,
                precondition: $crate::Precondition,
            ) -> Result<$crate::DeleteResourceOutcome, $crate::StoreError> {
                $crate::check_resource_kind(kind)?;
                let (mut tx, revision) = self.begin_write().await?;
                let existing = sqlx::query($crate::sql::SELECT_RESOURCE)
                    .bind(kind)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| Self::resource_record(&row))
                    .transpose()?;
                let Some(previous) = existing else {
                    return Err(match precondition {
                        $crate::Precondition::Revision(expected) => {
                            $crate::StoreError::PreconditionFailed {
                                name: name.to_string(),
                                expected,
                                actual: None,
                            }
                        }
                        _ => $crate::StoreError::NotFound {
                            name: name.to_string(),
                        },
                    });
                };
                $crate::check_precondition(name, precondition, Some(previous.revision))?;
                sqlx::query($crate::sql::DELETE_RESOURCE)
                    .bind(kind)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::sql::INSERT_CHANGE)
                    .bind(revision)
                    .bind(kind)
                    .bind(name)
                    .bind("delete")
                    .bind(None::<sqlx::types::Json<serde_json::Value>>)
                    .bind($crate::sql::now())
                    .execute(&mut *tx)
                    .await?;
                self.commit_write(tx, revision).await?;
                Ok($crate::DeleteResourceOutcome { revision, previous })
            }

            async fn get_resource(
                &self,
                kind: &str,
                name: &str,
            ) -> Result<Option<$crate::ResourceRecord>, $crate::StoreError> {
                sqlx::query($crate::sql::SELECT_RESOURCE)
                    .bind(kind)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|row| Self::resource_record(&row))
                    .transpose()
            }

            async fn list_resources(
                &self,
                kind: &str,
            ) -> Result<Vec<$crate::ResourceRecord>, $crate::StoreError> {
                sqlx::query($crate::sql::SELECT_RESOURCES)
                    .bind(kind)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(Self::resource_record)
                    .collect()
            }

            async fn snapshot(&self) -> Result<$crate::Snapshot, $crate::StoreError> {
                let mut tx = self.begin_read().await?;
                let revision: i64 = sqlx::query_scalar($crate::sql::SELECT_REVISION)
                    .fetch_one(&mut *tx)
                    .await?;
                let apis = sqlx::query($crate::sql::SELECT_APIS)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(Self::api_record)
                    .collect::<Result<Vec<_>, _>>()?;
                let resources = sqlx::query($crate::sql::SELECT_ALL_RESOURCES)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(Self::resource_record)
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit().await?;
                Ok($crate::Snapshot {
                    revision,
                    apis,
                    resources,
                })
            }

            async fn current_revision(&self) -> Result<i64, $crate::StoreError> {
                Ok(sqlx::query_scalar($crate::sql::SELECT_REVISION)
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn changes_since(
                &self,
                after: i64,
                limit: i64,
            ) -> Result<Vec<$crate::Change>, $crate::StoreError> {
                let mut tx = self.begin_read().await?;
                let compacted_through: i64 = sqlx::query_scalar($crate::sql::SELECT_COMPACTED)
                    .fetch_one(&mut *tx)
                    .await?;
                if after < compacted_through {
                    return Err($crate::StoreError::Compacted {
                        requested: after,
                        compacted_through,
                    });
                }
                let rows = sqlx::query($crate::sql::SELECT_CHANGES)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows.iter().map(Self::change).collect()
            }

            async fn compact(&self, through: i64) -> Result<u64, $crate::StoreError> {
                let mut tx = self.begin_maintenance().await?;
                let revision: i64 = sqlx::query_scalar($crate::sql::SELECT_REVISION)
                    .fetch_one(&mut *tx)
                    .await?;
                let through = through.min(revision);
                let deleted = sqlx::query($crate::sql::DELETE_CHANGES)
                    .bind(through)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query($crate::sql::SET_COMPACTED)
                    .bind(through)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(deleted)
            }

            async fn register_runtime(
                &self,
                r: &$crate::RuntimeRecord,
            ) -> Result<bool, $crate::StoreError> {
                let written = Self::bind_runtime(sqlx::query($crate::sql::UPSERT_RUNTIME), r)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(written > 0)
            }

            async fn record_refusal(
                &self,
                r: &$crate::RuntimeRecord,
                live_since: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::StoreError> {
                let written = Self::bind_runtime(sqlx::query($crate::sql::REFUSE_RUNTIME), r)
                    .bind(live_since)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(written > 0)
            }

            async fn update_runtime(
                &self,
                r: &$crate::RuntimeRecord,
            ) -> Result<bool, $crate::StoreError> {
                let updated = sqlx::query($crate::sql::UPDATE_RUNTIME)
                    .bind(&r.node_id)
                    .bind(&r.session_id)
                    .bind(r.applied_revision)
                    .bind(r.connected)
                    .bind(r.last_seen)
                    .bind(&r.last_error)
                    .bind(r.last_error_revision)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(updated > 0)
            }

            async fn list_runtimes(
                &self,
            ) -> Result<Vec<$crate::RuntimeRecord>, $crate::StoreError> {
                sqlx::query($crate::sql::SELECT_RUNTIMES)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(Self::runtime_record)
                    .collect()
            }

            async fn prune_runtimes(
                &self,
                cutoff: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                Ok(sqlx::query($crate::sql::PRUNE_RUNTIMES)
                    .bind(cutoff)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }
        }
    };
}

pub(crate) use impl_store;

/// The current time at the precision both databases store (microseconds), so that a record
/// returned by a write equals the record read back.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

pub(crate) const NEXT_REVISION: &str =
    "UPDATE gw_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision";
pub(crate) const SELECT_REVISION: &str = "SELECT revision FROM gw_meta WHERE id = 1";
pub(crate) const SELECT_COMPACTED: &str = "SELECT compacted_through FROM gw_meta WHERE id = 1";
pub(crate) const SET_COMPACTED: &str =
    "UPDATE gw_meta SET compacted_through = $1 WHERE id = 1 AND compacted_through < $1";

pub(crate) const SELECT_API: &str =
    "SELECT name, spec, revision, created_at, updated_at FROM apis WHERE name = $1";
pub(crate) const SELECT_APIS: &str =
    "SELECT name, spec, revision, created_at, updated_at FROM apis ORDER BY name";
pub(crate) const UPSERT_API: &str = "INSERT INTO apis (name, spec, revision, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
     revision = excluded.revision, updated_at = excluded.updated_at";
pub(crate) const DELETE_API: &str = "DELETE FROM apis WHERE name = $1";

pub(crate) const DELETE_ROUTES: &str = "DELETE FROM api_routes WHERE api_name = $1";
pub(crate) const INSERT_ROUTE: &str = "INSERT INTO api_routes (grp, host, context, api_name) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub(crate) const ROUTE_HOLDER: &str =
    "SELECT api_name FROM api_routes WHERE grp = $1 AND host = $2 AND context = $3";

pub(crate) const SELECT_RESOURCE: &str = "SELECT kind, name, spec, revision, created_at, updated_at \
     FROM resources WHERE kind = $1 AND name = $2";
pub(crate) const SELECT_RESOURCES: &str = "SELECT kind, name, spec, revision, created_at, updated_at \
     FROM resources WHERE kind = $1 ORDER BY name";
pub(crate) const SELECT_ALL_RESOURCES: &str = "SELECT kind, name, spec, revision, created_at, \
     updated_at FROM resources ORDER BY kind, name";
pub(crate) const UPSERT_RESOURCE: &str = "INSERT INTO resources (kind, name, spec, revision, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, name) DO UPDATE \
     SET spec = excluded.spec, revision = excluded.revision, updated_at = excluded.updated_at";
pub(crate) const DELETE_RESOURCE: &str = "DELETE FROM resources WHERE kind = $1 AND name = $2";

pub(crate) const INSERT_CHANGE: &str = "INSERT INTO changes (revision, kind, name, op, spec, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const SELECT_CHANGES: &str = "SELECT revision, kind, name, op, spec, created_at FROM changes \
     WHERE revision > $1 ORDER BY revision LIMIT $2";
pub(crate) const DELETE_CHANGES: &str = "DELETE FROM changes WHERE revision <= $1";

/// Writes a runtime's whole row; the statements that use it add the condition under which an
/// existing row is replaced.
macro_rules! write_runtime {
    ($condition:literal) => {
        concat!(
            "INSERT INTO runtimes (node_id, grp, controller_id, session_id, address, \
             runtime_version, applied_revision, connected, connected_at, last_seen, last_error, \
             last_error_revision, session_epoch, heartbeat_ms, refused) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (node_id) DO UPDATE SET grp = excluded.grp, \
             controller_id = excluded.controller_id, session_id = excluded.session_id, \
             address = excluded.address, runtime_version = excluded.runtime_version, \
             applied_revision = excluded.applied_revision, connected = excluded.connected, \
             connected_at = excluded.connected_at, last_seen = excluded.last_seen, \
             last_error = excluded.last_error, last_error_revision = excluded.last_error_revision, \
             session_epoch = excluded.session_epoch, heartbeat_ms = excluded.heartbeat_ms, \
             refused = excluded.refused ",
            $condition
        )
    };
}
/// A new session replaces the row unless the row holds a later session.
pub(crate) const UPSERT_RUNTIME: &str =
    write_runtime!("WHERE excluded.session_epoch >= runtimes.session_epoch");
/// A refusal replaces the row only when it holds no live session: one not connected, or
/// silent since `$16`.
pub(crate) const REFUSE_RUNTIME: &str =
    write_runtime!("WHERE NOT runtimes.connected OR runtimes.last_seen < $16");
pub(crate) const UPDATE_RUNTIME: &str = "UPDATE runtimes SET applied_revision = $3, connected = $4, \
     last_seen = $5, last_error = $6, last_error_revision = $7 \
     WHERE node_id = $1 AND session_id = $2";
pub(crate) const SELECT_RUNTIMES: &str = "SELECT node_id, grp, controller_id, session_id, address, \
     runtime_version, applied_revision, connected, connected_at, last_seen, last_error, \
     last_error_revision, session_epoch, heartbeat_ms, refused FROM runtimes ORDER BY node_id";
pub(crate) const SELECT_STORE_ID: &str = "SELECT store_id FROM gw_meta WHERE id = 1";
pub(crate) const PRUNE_RUNTIMES: &str = "DELETE FROM runtimes WHERE last_seen < $1";
