//! The SQL both backends share.
//!
//! The statements are written once, with `$n` placeholders (which SQLite accepts as numbered
//! parameters too), and [`impl_store!`] stamps the one [`crate::Store`] implementation onto
//! each backend's type, whose pool and row types differ. What differs between the databases
//! lives in each backend's inherent methods, which the macro calls:
//!
//! - `begin_writer()`: start a transaction that writes; with the revision bump that the
//!   macro's `begin_write` makes its first statement, writers are serialized;
//! - `commit_write(tx, revision)`: announce the change (NOTIFY, or the in-process hint) and
//!   commit;
//! - `begin_read()`: start a read transaction that sees one consistent snapshot;
//! - `KIND`, and a `hints` field (a `watch::Sender<u64>`) besides `pool` and `store_id`.
//!
//! Every kind is written through one path (`write`, `remove` in the macro): what differs
//! between APIs and the other kinds (the table, its key, an API's routes) is data, a
//! [`Table`].

/// Implements [`crate::Store`] for a backend type with a `pool` field.
macro_rules! impl_store {
    ($store:ty, $row:ty) => {
        impl $store {
            /// Runs `migrator` on `pool` and reads the store's id. An older controller keeps
            /// working on a schema a newer one migrated (a rolling upgrade, or a rollback):
            /// migrations only ever add, and the ones it does not know are let be.
            async fn migrate(
                pool: &sqlx::Pool<<$row as sqlx::Row>::Database>,
                mut migrator: sqlx::migrate::Migrator,
            ) -> Result<String, $crate::StoreError> {
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
                Ok(sqlx::query_scalar($crate::sql::SELECT_STORE_ID)
                    .fetch_one(pool)
                    .await?)
            }

            /// Every row that `query` reads in `executor`, as `record` maps it.
            async fn fetch_all<'e, 'q, E, T>(
                executor: E,
                query: sqlx::query::Query<
                    'q,
                    <$row as sqlx::Row>::Database,
                    <<$row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
                >,
                record: fn(&$row) -> Result<T, $crate::StoreError>,
            ) -> Result<Vec<T>, $crate::StoreError>
            where
                E: sqlx::Executor<'e, Database = <$row as sqlx::Row>::Database>,
            {
                query
                    .fetch_all(executor)
                    .await?
                    .iter()
                    .map(record)
                    .collect()
            }

            /// Starts a write: a transaction of the backend's `begin_writer()` whose first
            /// statement takes the next revision.
            async fn begin_write(
                &self,
            ) -> Result<
                (
                    sqlx::Transaction<'static, <$row as sqlx::Row>::Database>,
                    i64,
                ),
                $crate::StoreError,
            > {
                let mut tx = self.begin_writer().await?;
                let revision: i64 = sqlx::query_scalar($crate::sql::NEXT_REVISION)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok((tx, revision))
            }

            /// A row of `table` (an API's or a resource's) as a record of `kind`.
            fn record(
                kind: String,
                row: &$row,
            ) -> Result<$crate::ResourceRecord, $crate::StoreError> {
                use sqlx::Row as _;
                let sqlx::types::Json(spec): sqlx::types::Json<serde_json::Value> =
                    row.try_get("spec")?;
                Ok($crate::ResourceRecord {
                    kind,
                    name: row.try_get("name")?,
                    spec,
                    revision: row.try_get("revision")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            /// A row of the `resources` table, which names its kind.
            fn resource_record(row: &$row) -> Result<$crate::ResourceRecord, $crate::StoreError> {
                use sqlx::Row as _;
                Self::record(row.try_get("kind")?, row)
            }

            /// A row of the `apis` table.
            fn api_record(row: &$row) -> Result<$crate::ApiRecord, $crate::StoreError> {
                Self::record($crate::KIND_API.to_string(), row).map(Into::into)
            }

            /// Binds the key of a row of `table` (its kind where the table holds several,
            /// then its name) to `query`, whose other parameters follow.
            fn bind_key<'q>(
                query: sqlx::query::Query<
                    'q,
                    <$row as sqlx::Row>::Database,
                    <<$row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
                >,
                table: &$crate::sql::Table,
                kind: &'q str,
                name: &'q str,
            ) -> sqlx::query::Query<
                'q,
                <$row as sqlx::Row>::Database,
                <<$row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
            > {
                if table.keyed_by_kind {
                    query.bind(kind).bind(name)
                } else {
                    query.bind(name)
                }
            }

            /// One row of `table`, read in `tx` or from the pool.
            async fn find_row<'e, E>(
                executor: E,
                table: &$crate::sql::Table,
                kind: &str,
                name: &str,
            ) -> Result<Option<$crate::ResourceRecord>, $crate::StoreError>
            where
                E: sqlx::Executor<'e, Database = <$row as sqlx::Row>::Database>,
            {
                Self::bind_key(sqlx::query(table.select), table, kind, name)
                    .fetch_optional(executor)
                    .await?
                    .map(|row| Self::record(kind.to_string(), &row))
                    .transpose()
            }

            /// Appends a change to the log in `tx`: `spec` for an upsert, `None` for a delete.
            async fn append_change(
                tx: &mut sqlx::Transaction<'static, <$row as sqlx::Row>::Database>,
                revision: i64,
                kind: &str,
                name: &str,
                spec: Option<&serde_json::Value>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query($crate::sql::INSERT_CHANGE)
                    .bind(revision)
                    .bind(kind)
                    .bind(name)
                    .bind(if spec.is_some() { "upsert" } else { "delete" })
                    .bind(spec.map(sqlx::types::Json))
                    .bind(at)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Gives the API `name` the routing keys `routes` in `tx`, in place of the ones it
            /// had; [`StoreError::RouteConflict`] names the API that holds one already.
            ///
            /// [`StoreError::RouteConflict`]: $crate::StoreError::RouteConflict
            async fn claim_routes(
                tx: &mut sqlx::Transaction<'static, <$row as sqlx::Row>::Database>,
                name: &str,
                routes: &[$crate::RouteKey],
            ) -> Result<(), $crate::StoreError> {
                sqlx::query($crate::sql::DELETE_ROUTES)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
                for key in routes {
                    let inserted = sqlx::query($crate::sql::INSERT_ROUTE)
                        .bind(&key.group)
                        .bind(&key.host)
                        .bind(&key.context)
                        .bind(name)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                    if inserted == 0 {
                        let holder: String = sqlx::query_scalar($crate::sql::ROUTE_HOLDER)
                            .bind(&key.group)
                            .bind(&key.host)
                            .bind(&key.context)
                            .fetch_one(&mut **tx)
                            .await?;
                        return Err($crate::StoreError::RouteConflict {
                            group: key.group.clone(),
                            host: key.host.clone(),
                            context: key.context.clone(),
                            holder,
                        });
                    }
                }
                Ok(())
            }

            /// The one write path of every kind: creates or replaces the row of `write` in
            /// its table under its precondition, gives an API its routes, and appends the
            /// change, in one transaction under the next revision.
            async fn write(
                &self,
                write: $crate::sql::Write<'_>,
            ) -> Result<$crate::PutResourceOutcome, $crate::StoreError> {
                let $crate::sql::Write {
                    table,
                    kind,
                    name,
                    spec,
                    routes,
                    precondition,
                    audit,
                } = write;
                let (mut tx, revision) = self.begin_write().await?;
                let existing = Self::find_row(&mut *tx, table, kind, &name).await?;
                $crate::check_precondition(
                    &name,
                    precondition,
                    existing.as_ref().map(|e| e.revision),
                )?;
                let now = $crate::sql::now();
                let created_at = existing.as_ref().map_or(now, |e| e.created_at);
                Self::bind_key(sqlx::query(table.upsert), table, kind, &name)
                    .bind(sqlx::types::Json(&spec))
                    .bind(revision)
                    .bind(created_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if table.owns_routes {
                    Self::claim_routes(&mut tx, &name, routes).await?;
                }
                Self::append_change(&mut tx, revision, kind, &name, Some(&spec), now).await?;
                let audited = match audit {
                    Some(audit) => {
                        let action = if existing.is_some() {
                            "update"
                        } else {
                            "create"
                        };
                        let mut record = $crate::AuditRecord::of(audit, action, kind, &name, now);
                        record.revision = Some(revision);
                        record.before = existing.as_ref().map(|e| $crate::audit::digest(&e.spec));
                        record.after = Some($crate::audit::digest(&spec));
                        Some(Self::insert_audit(&mut *tx, record).await?)
                    }
                    None => None,
                };
                self.commit_write(tx, revision).await?;
                audited.inspect($crate::AuditRecord::log);
                Ok($crate::PutOutcome {
                    created: existing.is_none(),
                    previous: existing.map(|e| e.spec),
                    record: $crate::ResourceRecord {
                        kind: kind.to_string(),
                        name,
                        spec,
                        revision,
                        created_at,
                        updated_at: now,
                    },
                })
            }

            /// The one delete path of every kind: deletes the row of `kind`/`name` from
            /// `table` under `precondition` and appends the change, in one transaction.
            async fn remove(
                &self,
                table: &$crate::sql::Table,
                kind: &str,
                name: &str,
                precondition: $crate::Precondition,
                audit: Option<&$crate::Audit>,
            ) -> Result<$crate::DeleteResourceOutcome, $crate::StoreError> {
                let (mut tx, revision) = self.begin_write().await?;
                let Some(previous) = Self::find_row(&mut *tx, table, kind, name).await? else {
                    return Err($crate::missing(name, precondition));
                };
                $crate::check_precondition(name, precondition, Some(previous.revision))?;
                Self::bind_key(sqlx::query(table.delete), table, kind, name)
                    .execute(&mut *tx)
                    .await?;
                let now = $crate::sql::now();
                Self::append_change(&mut tx, revision, kind, name, None, now).await?;
                let audited = match audit {
                    Some(audit) => {
                        let mut record = $crate::AuditRecord::of(audit, "delete", kind, name, now);
                        record.revision = Some(revision);
                        record.before = Some($crate::audit::digest(&previous.spec));
                        Some(Self::insert_audit(&mut *tx, record).await?)
                    }
                    None => None,
                };
                self.commit_write(tx, revision).await?;
                audited.inspect($crate::AuditRecord::log);
                Ok($crate::DeleteOutcome { revision, previous })
            }

            /// Inserts `record` into the audit log in `executor`; returns it with its id.
            async fn insert_audit<'e, E>(
                executor: E,
                mut record: $crate::AuditRecord,
            ) -> Result<$crate::AuditRecord, $crate::StoreError>
            where
                E: sqlx::Executor<'e, Database = <$row as sqlx::Row>::Database>,
            {
                record.id = sqlx::query_scalar($crate::sql::INSERT_AUDIT)
                    .bind(record.at)
                    .bind(&record.actor)
                    .bind(&record.role)
                    .bind(&record.source)
                    .bind(&record.request_id)
                    .bind(&record.action)
                    .bind(&record.kind)
                    .bind(&record.name)
                    .bind(&record.detail)
                    .bind(record.revision)
                    .bind(&record.before)
                    .bind(&record.after)
                    .fetch_one(executor)
                    .await?;
                Ok(record)
            }

            fn audit_record(row: &$row) -> Result<$crate::AuditRecord, $crate::StoreError> {
                use sqlx::Row as _;
                Ok($crate::AuditRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    role: row.try_get("role")?,
                    source: row.try_get("source")?,
                    request_id: row.try_get("request_id")?,
                    action: row.try_get("action")?,
                    kind: row.try_get("kind")?,
                    name: row.try_get("name")?,
                    detail: row.try_get("detail")?,
                    revision: row.try_get("revision")?,
                    before: row.try_get("before_digest")?,
                    after: row.try_get("after_digest")?,
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

            /// Writes a runtime's whole row with `statement` ([`write_runtime`]'s, whose
            /// condition may take `live_since` as its last parameter); returns whether it
            /// wrote.
            async fn write_runtime(
                &self,
                statement: &'static str,
                r: &$crate::RuntimeRecord,
                live_since: Option<chrono::DateTime<chrono::Utc>>,
            ) -> Result<bool, $crate::StoreError> {
                let mut query = Self::bind_runtime(sqlx::query(statement), r);
                if let Some(at) = live_since {
                    query = query.bind(at);
                }
                Ok(query.execute(&self.pool).await?.rows_affected() > 0)
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

            fn enrollment_token_record(
                row: &$row,
            ) -> Result<$crate::EnrollmentTokenRecord, $crate::StoreError> {
                use sqlx::Row as _;
                Ok($crate::EnrollmentTokenRecord {
                    id: row.try_get("id")?,
                    group: row.try_get("grp")?,
                    uses_max: row.try_get("uses_max")?,
                    uses: row.try_get("uses")?,
                    expires_at: row.try_get("expires_at")?,
                    created_at: row.try_get("created_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    description: row.try_get("description")?,
                })
            }

            fn enrollment_record(
                row: &$row,
            ) -> Result<$crate::EnrollmentRecord, $crate::StoreError> {
                use sqlx::Row as _;
                Ok($crate::EnrollmentRecord {
                    node_id: row.try_get("node_id")?,
                    group: row.try_get("grp")?,
                    serial: row.try_get("serial")?,
                    previous_serial: row.try_get("previous_serial")?,
                    not_after: row.try_get("not_after")?,
                    token_id: row.try_get("token_id")?,
                    enrolled_at: row.try_get("enrolled_at")?,
                    renewed_at: row.try_get("renewed_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                })
            }

            fn admin_token_record(
                row: &$row,
            ) -> Result<$crate::AdminTokenRecord, $crate::StoreError> {
                use sqlx::Row as _;
                let role: String = row.try_get("role")?;
                let sqlx::types::Json(groups): sqlx::types::Json<Vec<String>> =
                    row.try_get("grps")?;
                Ok($crate::AdminTokenRecord {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    role: role.parse().map_err(|err: $crate::UnknownRole| {
                        $crate::StoreError::Corrupt(err.to_string())
                    })?,
                    groups,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            }

            /// Runs `query`, a write that is not a resource's (a token, an enrollment), in a
            /// transaction and, when it changed a row, inserts the record that `audit` makes
            /// of it (`action` unless `audit` names one, to `kind` `name`, with `detail` unless
            /// `audit` gives one) in the same transaction; logs the record once committed.
            /// Returns whether it changed a row: when it did not, nothing is recorded.
            async fn audited<'q>(
                &self,
                query: sqlx::query::Query<
                    'q,
                    <$row as sqlx::Row>::Database,
                    <<$row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
                >,
                audit: Option<&$crate::Audit>,
                action: &str,
                kind: &str,
                name: &str,
                detail: Option<String>,
            ) -> Result<bool, $crate::StoreError> {
                let mut tx = self.begin_writer().await?;
                if query.execute(&mut *tx).await?.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let audited = match audit {
                    Some(audit) => {
                        let mut record =
                            $crate::AuditRecord::of(audit, action, kind, name, $crate::sql::now());
                        if record.detail.is_none() {
                            record.detail = detail;
                        }
                        Some(Self::insert_audit(&mut *tx, record).await?)
                    }
                    None => None,
                };
                tx.commit().await?;
                audited.inspect($crate::AuditRecord::log);
                Ok(true)
            }

            /// Deletes the rows `statement` selects by a time before `before` (its `$1`): the
            /// pruning of old rows; returns how many went.
            async fn delete_before(
                &self,
                statement: &'static str,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                Ok(sqlx::query(statement)
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            /// Marks the row `key` of `kind` revoked at `at` with `statement` (a row revoked
            /// before keeps its first time), recording it with `audit`; returns whether the
            /// row exists.
            async fn revoke(
                &self,
                statement: &'static str,
                kind: &str,
                key: &str,
                at: chrono::DateTime<chrono::Utc>,
                audit: Option<&$crate::Audit>,
            ) -> Result<bool, $crate::StoreError> {
                let query = sqlx::query(statement).bind(key).bind(at);
                self.audited(query, audit, "revoke", kind, key, None).await
            }

            /// Why the token `id` with the secret whose hash is `secret_hash` was not used
            /// at `now`, read after the update that would have used it changed nothing.
            async fn token_refusal(
                &self,
                id: &str,
                secret_hash: &str,
                group: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::TokenRefusal {
                use sqlx::Row as _;
                let row = match sqlx::query($crate::sql::SELECT_ENROLLMENT_TOKEN)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                {
                    Ok(Some(row)) => row,
                    Ok(None) => return $crate::TokenRefusal::Unknown,
                    Err(err) => return $crate::StoreError::from(err).into(),
                };
                let stored: String = match row.try_get("secret_hash") {
                    Ok(stored) => stored,
                    Err(err) => return $crate::StoreError::from(err).into(),
                };
                if stored != secret_hash {
                    return $crate::TokenRefusal::Unknown;
                }
                match Self::enrollment_token_record(&row) {
                    // uses only grow and a revocation stays: a token that the update found
                    // used up or revoked reads so now; one that reads usable was refused for
                    // its group, or used up meanwhile. (Deleted meanwhile: read as unknown.)
                    Ok(record) => record.state(now).refusal().unwrap_or_else(|| {
                        if record.group == group {
                            $crate::TokenRefusal::UsedUp
                        } else {
                            $crate::TokenRefusal::OtherGroup(record.group.clone())
                        }
                    }),
                    Err(err) => err.into(),
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> $crate::Backend {
                Self::KIND
            }

            fn hints(&self) -> tokio::sync::watch::Receiver<u64> {
                self.hints.subscribe()
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
                self.write($crate::sql::Write {
                    table: &$crate::sql::APIS,
                    kind: $crate::KIND_API,
                    name: put.name,
                    spec: put.spec,
                    routes: &put.routes,
                    precondition: put.precondition,
                    audit: put.audit.as_ref(),
                })
                .await
                .map($crate::PutOutcome::into_record)
            }

            async fn delete_api(
                &self,
                name: &str,
                precondition: $crate::Precondition,
                audit: Option<&$crate::Audit>,
            ) -> Result<$crate::DeleteOutcome, $crate::StoreError> {
                self.remove(
                    &$crate::sql::APIS,
                    $crate::KIND_API,
                    name,
                    precondition,
                    audit,
                )
                .await
                .map($crate::DeleteOutcome::into_record)
            }

            async fn get_api(
                &self,
                name: &str,
            ) -> Result<Option<$crate::ApiRecord>, $crate::StoreError> {
                Ok(
                    Self::find_row(&self.pool, &$crate::sql::APIS, $crate::KIND_API, name)
                        .await?
                        .map(Into::into),
                )
            }

            async fn put_resource(
                &self,
                put: $crate::PutResource,
            ) -> Result<$crate::PutResourceOutcome, $crate::StoreError> {
                $crate::check_resource_kind(&put.kind)?;
                self.write($crate::sql::Write {
                    table: &$crate::sql::RESOURCES,
                    kind: &put.kind,
                    name: put.name,
                    spec: put.spec,
                    routes: &[],
                    precondition: put.precondition,
                    audit: put.audit.as_ref(),
                })
                .await
            }

            async fn delete_resource(
                &self,
                kind: &str,
                name: &str,
                precondition: $crate::Precondition,
                audit: Option<&$crate::Audit>,
            ) -> Result<$crate::DeleteResourceOutcome, $crate::StoreError> {
                $crate::check_resource_kind(kind)?;
                self.remove(&$crate::sql::RESOURCES, kind, name, precondition, audit)
                    .await
            }

            async fn get_resource(
                &self,
                kind: &str,
                name: &str,
            ) -> Result<Option<$crate::ResourceRecord>, $crate::StoreError> {
                Self::find_row(&self.pool, &$crate::sql::RESOURCES, kind, name).await
            }

            async fn list_resources(
                &self,
                kind: &str,
            ) -> Result<Vec<$crate::ResourceRecord>, $crate::StoreError> {
                Self::fetch_all(
                    &self.pool,
                    sqlx::query($crate::sql::SELECT_RESOURCES).bind(kind),
                    Self::resource_record,
                )
                .await
            }

            async fn snapshot(&self) -> Result<$crate::Snapshot, $crate::StoreError> {
                let mut tx = self.begin_read().await?;
                let revision: i64 = sqlx::query_scalar($crate::sql::SELECT_REVISION)
                    .fetch_one(&mut *tx)
                    .await?;
                let apis = Self::fetch_all(
                    &mut *tx,
                    sqlx::query($crate::sql::SELECT_APIS),
                    Self::api_record,
                )
                .await?;
                let resources = Self::fetch_all(
                    &mut *tx,
                    sqlx::query($crate::sql::SELECT_ALL_RESOURCES),
                    Self::resource_record,
                )
                .await?;
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
                let mut tx = self.begin_writer().await?;
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
                self.write_runtime($crate::sql::UPSERT_RUNTIME, r, None)
                    .await
            }

            async fn record_refusal(
                &self,
                r: &$crate::RuntimeRecord,
                live_since: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::StoreError> {
                self.write_runtime($crate::sql::REFUSE_RUNTIME, r, Some(live_since))
                    .await
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
                Self::fetch_all(
                    &self.pool,
                    sqlx::query($crate::sql::SELECT_RUNTIMES),
                    Self::runtime_record,
                )
                .await
            }

            async fn prune_runtimes(
                &self,
                cutoff: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                self.delete_before($crate::sql::PRUNE_RUNTIMES, cutoff)
                    .await
            }

            async fn cluster_secret(
                &self,
                name: &str,
                candidate: &str,
            ) -> Result<String, $crate::StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query($crate::sql::INSERT_CLUSTER_SECRET)
                    .bind(name)
                    .bind(candidate)
                    .bind(chrono::Utc::now())
                    .execute(&mut *tx)
                    .await?;
                let value: String = sqlx::query_scalar($crate::sql::SELECT_CLUSTER_SECRET)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(value)
            }

            async fn reseal(
                &self,
                kind: &str,
                name: &str,
                revision: i64,
                spec: &serde_json::Value,
            ) -> Result<bool, $crate::StoreError> {
                let mut tx = self.begin_writer().await?;
                let updated = if kind == $crate::KIND_API {
                    sqlx::query($crate::sql::RESEAL_API)
                        .bind(sqlx::types::Json(spec))
                        .bind(name)
                        .bind(revision)
                        .execute(&mut *tx)
                        .await?
                } else {
                    sqlx::query($crate::sql::RESEAL_RESOURCE)
                        .bind(sqlx::types::Json(spec))
                        .bind(kind)
                        .bind(name)
                        .bind(revision)
                        .execute(&mut *tx)
                        .await?
                }
                .rows_affected();
                if updated == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                sqlx::query($crate::sql::RESEAL_CHANGE)
                    .bind(sqlx::types::Json(spec))
                    .bind(revision)
                    .bind(kind)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn reseal_change(
                &self,
                kind: &str,
                name: &str,
                revision: i64,
                spec: &serde_json::Value,
            ) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query($crate::sql::RESEAL_CHANGE)
                    .bind(sqlx::types::Json(spec))
                    .bind(revision)
                    .bind(kind)
                    .bind(name)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    > 0)
            }

            async fn reseal_cluster_secret(
                &self,
                name: &str,
                current: &str,
                value: &str,
            ) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query($crate::sql::RESEAL_CLUSTER_SECRET)
                    .bind(value)
                    .bind(name)
                    .bind(current)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    > 0)
            }

            async fn create_enrollment_token(
                &self,
                t: &$crate::NewEnrollmentToken,
                audit: Option<&$crate::Audit>,
            ) -> Result<(), $crate::StoreError> {
                let query = sqlx::query($crate::sql::INSERT_ENROLLMENT_TOKEN)
                    .bind(&t.id)
                    .bind(&t.secret_hash)
                    .bind(&t.group)
                    .bind(t.uses_max)
                    .bind(t.expires_at)
                    .bind(t.created_at)
                    .bind(&t.description);
                let detail = format!("group {}", t.group);
                let kind = $crate::audit::KIND_ENROLLMENT_TOKEN;
                if !self
                    .audited(query, audit, "create", kind, &t.id, Some(detail))
                    .await?
                {
                    return Err($crate::StoreError::AlreadyExists { name: t.id.clone() });
                }
                Ok(())
            }

            async fn list_enrollment_tokens(
                &self,
            ) -> Result<Vec<$crate::EnrollmentTokenRecord>, $crate::StoreError> {
                Self::fetch_all(
                    &self.pool,
                    sqlx::query($crate::sql::SELECT_ENROLLMENT_TOKENS),
                    Self::enrollment_token_record,
                )
                .await
            }

            async fn revoke_enrollment_token(
                &self,
                id: &str,
                at: chrono::DateTime<chrono::Utc>,
                audit: Option<&$crate::Audit>,
            ) -> Result<bool, $crate::StoreError> {
                let kind = $crate::audit::KIND_ENROLLMENT_TOKEN;
                self.revoke($crate::sql::REVOKE_ENROLLMENT_TOKEN, kind, id, at, audit)
                    .await
            }

            async fn use_enrollment_token(
                &self,
                id: &str,
                secret_hash: &str,
                group: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::TokenRefusal> {
                let taken = sqlx::query($crate::sql::USE_ENROLLMENT_TOKEN)
                    .bind(id)
                    .bind(secret_hash)
                    .bind(now)
                    .bind(group)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::StoreError::from)?
                    .rows_affected();
                if taken == 1 {
                    Ok(())
                } else {
                    Err(self.token_refusal(id, secret_hash, group, now).await)
                }
            }

            async fn delete_expired_enrollment_tokens(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                self.delete_before($crate::sql::DELETE_EXPIRED_ENROLLMENT_TOKENS, before)
                    .await
            }

            async fn enroll_runtime(
                &self,
                e: &$crate::EnrollmentRecord,
            ) -> Result<bool, $crate::StoreError> {
                let written = sqlx::query($crate::sql::UPSERT_ENROLLMENT)
                    .bind(&e.node_id)
                    .bind(&e.group)
                    .bind(&e.serial)
                    .bind(e.not_after)
                    .bind(&e.token_id)
                    .bind(e.enrolled_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(written > 0)
            }

            async fn prune_runtime_enrollments(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                self.delete_before($crate::sql::PRUNE_ENROLLMENTS, before)
                    .await
            }

            async fn prune_admin_tokens(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                self.delete_before($crate::sql::PRUNE_ADMIN_TOKENS, before)
                    .await
            }

            async fn forget_runtime(
                &self,
                node_id: &str,
                audit: Option<&$crate::Audit>,
            ) -> Result<bool, $crate::StoreError> {
                let query = sqlx::query($crate::sql::DELETE_ENROLLMENT).bind(node_id);
                let kind = $crate::audit::KIND_RUNTIME;
                self.audited(query, audit, "forget", kind, node_id, None)
                    .await
            }

            async fn renew_runtime(
                &self,
                node_id: &str,
                presented_serial: &str,
                new_serial: &str,
                not_after: chrono::DateTime<chrono::Utc>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::Renewal, $crate::StoreError> {
                let renewed = sqlx::query($crate::sql::RENEW_ENROLLMENT)
                    .bind(node_id)
                    .bind(presented_serial)
                    .bind(new_serial)
                    .bind(not_after)
                    .bind(at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                if renewed > 0 {
                    return Ok($crate::Renewal::Renewed);
                }
                let revoked = sqlx::query($crate::sql::REVOKE_SUPERSEDED)
                    .bind(node_id)
                    .bind(presented_serial)
                    .bind(at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(if revoked > 0 {
                    $crate::Renewal::Reused
                } else {
                    $crate::Renewal::Refused
                })
            }

            async fn runtime_serial_in_use(
                &self,
                node_id: &str,
                serial: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query($crate::sql::SERIAL_IN_USE)
                    .bind(node_id)
                    .bind(serial)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn revoke_runtime(
                &self,
                node_id: &str,
                at: chrono::DateTime<chrono::Utc>,
                audit: Option<&$crate::Audit>,
            ) -> Result<bool, $crate::StoreError> {
                let kind = $crate::audit::KIND_RUNTIME;
                self.revoke($crate::sql::REVOKE_ENROLLMENT, kind, node_id, at, audit)
                    .await
            }

            async fn runtime_enrollments(
                &self,
            ) -> Result<Vec<$crate::EnrollmentRecord>, $crate::StoreError> {
                Self::fetch_all(
                    &self.pool,
                    sqlx::query($crate::sql::SELECT_ENROLLMENTS),
                    Self::enrollment_record,
                )
                .await
            }

            async fn create_admin_token(
                &self,
                t: &$crate::NewAdminToken,
                audit: Option<&$crate::Audit>,
            ) -> Result<(), $crate::StoreError> {
                let query = sqlx::query($crate::sql::INSERT_ADMIN_TOKEN)
                    .bind(&t.id)
                    .bind(&t.name)
                    .bind(&t.secret_hash)
                    .bind(t.role.as_str())
                    .bind(sqlx::types::Json(&t.groups))
                    .bind(t.created_at)
                    .bind(t.expires_at);
                let detail = format!("{} ({})", t.name, t.role);
                let kind = $crate::audit::KIND_ADMIN_TOKEN;
                if !self
                    .audited(query, audit, "create", kind, &t.id, Some(detail))
                    .await?
                {
                    return Err($crate::StoreError::AlreadyExists {
                        name: t.name.clone(),
                    });
                }
                Ok(())
            }

            async fn list_admin_tokens(
                &self,
            ) -> Result<Vec<$crate::AdminTokenRecord>, $crate::StoreError> {
                Self::fetch_all(
                    &self.pool,
                    sqlx::query($crate::sql::SELECT_ADMIN_TOKENS),
                    Self::admin_token_record,
                )
                .await
            }

            async fn admin_token(
                &self,
                id: &str,
            ) -> Result<Option<$crate::AdminTokenCredential>, $crate::StoreError> {
                use sqlx::Row as _;
                let Some(row) = sqlx::query($crate::sql::SELECT_ADMIN_TOKEN)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(None);
                };
                Ok(Some($crate::AdminTokenCredential {
                    record: Self::admin_token_record(&row)?,
                    secret_hash: row.try_get("secret_hash")?,
                }))
            }

            async fn revoke_admin_token(
                &self,
                id: &str,
                at: chrono::DateTime<chrono::Utc>,
                audit: Option<&$crate::Audit>,
            ) -> Result<bool, $crate::StoreError> {
                let kind = $crate::audit::KIND_ADMIN_TOKEN;
                self.revoke($crate::sql::REVOKE_ADMIN_TOKEN, kind, id, at, audit)
                    .await
            }

            async fn append_audit(
                &self,
                audit: &$crate::Audit,
                kind: &str,
                name: &str,
            ) -> Result<$crate::AuditRecord, $crate::StoreError> {
                let Some(action) = audit.action.clone() else {
                    return Err($crate::StoreError::InvalidInput(
                        "an audit record appended on its own needs an action".to_string(),
                    ));
                };
                let record =
                    $crate::AuditRecord::of(audit, &action, kind, name, $crate::sql::now());
                let record = Self::insert_audit(&self.pool, record).await?;
                record.log();
                Ok(record)
            }

            async fn list_audit(
                &self,
                q: &$crate::AuditQuery,
            ) -> Result<Vec<$crate::AuditRecord>, $crate::StoreError> {
                Self::fetch_all(
                    &self.pool,
                    sqlx::query($crate::sql::SELECT_AUDIT)
                        .bind(q.since)
                        .bind(&q.actor)
                        .bind(&q.kind)
                        .bind(&q.name)
                        .bind(q.before_id)
                        .bind(q.limit),
                    Self::audit_record,
                )
                .await
            }

            async fn prune_audit(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                self.delete_before($crate::sql::PRUNE_AUDIT, before).await
            }

            async fn touch_admin_token(
                &self,
                id: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query($crate::sql::TOUCH_ADMIN_TOKEN)
                    .bind(id)
                    .bind(at)
                    .bind(at - $crate::sql::TOUCH_INTERVAL)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_store;

/// A table that holds resources, as data: what differs between the write paths of APIs (a
/// table of their own, keyed by name, whose rows own routes) and of every other kind (the
/// `resources` table, keyed by kind and name).
#[derive(Debug)]
pub(crate) struct Table {
    /// Reads one row (`name, spec, revision, created_at, updated_at`) by its key.
    pub(crate) select: &'static str,
    /// Inserts or replaces one row: its key, then `spec, revision, created_at, updated_at`.
    pub(crate) upsert: &'static str,
    /// Deletes one row by its key.
    pub(crate) delete: &'static str,
    /// Whether a row's key starts with its kind (the table holds several kinds) or is its
    /// name alone.
    pub(crate) keyed_by_kind: bool,
    /// Whether a row owns routing keys (`api_routes`), replaced by each write.
    pub(crate) owns_routes: bool,
}

/// The `apis` table.
pub(crate) const APIS: Table = Table {
    select: SELECT_API,
    upsert: UPSERT_API,
    delete: DELETE_API,
    keyed_by_kind: false,
    owns_routes: true,
};

/// The `resources` table, shared by every kind other than APIs.
pub(crate) const RESOURCES: Table = Table {
    select: SELECT_RESOURCE,
    upsert: UPSERT_RESOURCE,
    delete: DELETE_RESOURCE,
    keyed_by_kind: true,
    owns_routes: false,
};

/// One create-or-replace, whatever its kind.
#[derive(Debug)]
pub(crate) struct Write<'a> {
    /// Where the kind is kept.
    pub(crate) table: &'static Table,
    /// The kind, as the change log names it.
    pub(crate) kind: &'a str,
    pub(crate) name: String,
    pub(crate) spec: serde_json::Value,
    /// The routing keys the resource occupies (APIs; empty for the other kinds).
    pub(crate) routes: &'a [crate::RouteKey],
    pub(crate) precondition: crate::Precondition,
    /// Who makes the write, recorded in its transaction.
    pub(crate) audit: Option<&'a crate::Audit>,
}

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
pub(crate) const INSERT_CLUSTER_SECRET: &str = "INSERT INTO cluster_secrets (name, value, \
     created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
pub(crate) const SELECT_CLUSTER_SECRET: &str = "SELECT value FROM cluster_secrets WHERE name = $1";
pub(crate) const RESEAL_API: &str = "UPDATE apis SET spec = $1 WHERE name = $2 AND revision = $3";
pub(crate) const RESEAL_RESOURCE: &str =
    "UPDATE resources SET spec = $1 WHERE kind = $2 AND name = $3 AND revision = $4";
pub(crate) const RESEAL_CHANGE: &str = "UPDATE changes SET spec = $1 WHERE revision = $2 \
     AND kind = $3 AND name = $4 AND op = 'upsert'";
pub(crate) const RESEAL_CLUSTER_SECRET: &str =
    "UPDATE cluster_secrets SET value = $1 WHERE name = $2 AND value = $3";
pub(crate) const SELECT_STORE_ID: &str = "SELECT store_id FROM gw_meta WHERE id = 1";
pub(crate) const PRUNE_RUNTIMES: &str = "DELETE FROM runtimes WHERE last_seen < $1";

/// The columns of an [`crate::EnrollmentTokenRecord`].
macro_rules! token_columns {
    () => {
        "id, grp, uses_max, uses, expires_at, created_at, revoked_at, description"
    };
}
pub(crate) const INSERT_ENROLLMENT_TOKEN: &str = "INSERT INTO enrollment_tokens (id, secret_hash, \
     grp, uses_max, expires_at, created_at, description) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (id) DO NOTHING";
pub(crate) const SELECT_ENROLLMENT_TOKENS: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM enrollment_tokens ORDER BY created_at DESC, id"
);
/// One token with its secret's hash, to tell why a use was refused.
pub(crate) const SELECT_ENROLLMENT_TOKEN: &str = concat!(
    "SELECT secret_hash, ",
    token_columns!(),
    " FROM enrollment_tokens WHERE id = $1"
);
pub(crate) const REVOKE_ENROLLMENT_TOKEN: &str =
    "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
/// Takes one use, in one statement: two controllers racing for the last use are serialized
/// on the row, and the second finds `uses < uses_max` false.
pub(crate) const USE_ENROLLMENT_TOKEN: &str = "UPDATE enrollment_tokens SET uses = uses + 1 \
     WHERE id = $1 AND secret_hash = $2 AND revoked_at IS NULL AND expires_at > $3 \
     AND uses < uses_max AND grp = $4";
pub(crate) const DELETE_EXPIRED_ENROLLMENT_TOKENS: &str =
    "DELETE FROM enrollment_tokens WHERE expires_at < $1";

/// A new enrollment replaces the node's row: no previous serial, no renewal, no revocation.
pub(crate) const UPSERT_ENROLLMENT: &str = "INSERT INTO runtime_enrollments (node_id, grp, serial, \
     not_after, token_id, enrolled_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (node_id) DO UPDATE SET grp = excluded.grp, serial = excluded.serial, \
     previous_serial = NULL, not_after = excluded.not_after, token_id = excluded.token_id, \
     enrolled_at = excluded.enrolled_at, renewed_at = NULL, revoked_at = NULL, \
     serial_in_use_at = NULL \
     WHERE runtime_enrollments.revoked_at IS NULL AND (runtime_enrollments.grp = excluded.grp \
     OR runtime_enrollments.not_after <= excluded.enrolled_at)";
pub(crate) const DELETE_ENROLLMENT: &str = "DELETE FROM runtime_enrollments WHERE node_id = $1";
/// Revoked enrollments stay: a revocation holds until an operator forgets it.
pub(crate) const PRUNE_ENROLLMENTS: &str =
    "DELETE FROM runtime_enrollments WHERE revoked_at IS NULL AND not_after < $1";
pub(crate) const PRUNE_ADMIN_TOKENS: &str = "DELETE FROM admin_tokens WHERE revoked_at < $1 \
     OR expires_at < $1";
/// The assignments read the row as it was: the current serial becomes the previous one.
/// The previous serial renews only while the current one has not been seen in use.
pub(crate) const RENEW_ENROLLMENT: &str = "UPDATE runtime_enrollments SET previous_serial = serial, \
     serial = $3, not_after = $4, renewed_at = $5, serial_in_use_at = NULL \
     WHERE node_id = $1 AND revoked_at IS NULL \
     AND (serial = $2 OR (previous_serial = $2 AND serial_in_use_at IS NULL))";
/// A renewal with the previous serial once the current one is in use: two holders of the
/// node's identity. The node is revoked.
pub(crate) const REVOKE_SUPERSEDED: &str = "UPDATE runtime_enrollments SET revoked_at = $3 \
     WHERE node_id = $1 AND revoked_at IS NULL AND previous_serial = $2 \
     AND serial_in_use_at IS NOT NULL";
pub(crate) const SERIAL_IN_USE: &str = "UPDATE runtime_enrollments SET serial_in_use_at = $3 \
     WHERE node_id = $1 AND serial = $2 AND serial_in_use_at IS NULL";
pub(crate) const REVOKE_ENROLLMENT: &str =
    "UPDATE runtime_enrollments SET revoked_at = COALESCE(revoked_at, $2) WHERE node_id = $1";
pub(crate) const SELECT_ENROLLMENTS: &str = "SELECT node_id, grp, serial, previous_serial, \
     not_after, token_id, enrolled_at, renewed_at, revoked_at FROM runtime_enrollments \
     ORDER BY node_id";

/// The columns of an [`crate::AdminTokenRecord`].
macro_rules! admin_token_columns {
    () => {
        "id, name, role, grps, created_at, expires_at, revoked_at, last_used_at"
    };
}
/// No conflict target: a taken id and a name taken by a token not revoked (the partial
/// unique index) both insert nothing.
pub(crate) const INSERT_ADMIN_TOKEN: &str = "INSERT INTO admin_tokens (id, name, secret_hash, \
     role, grps, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
pub(crate) const SELECT_ADMIN_TOKENS: &str = concat!(
    "SELECT ",
    admin_token_columns!(),
    " FROM admin_tokens ORDER BY created_at DESC, id"
);
pub(crate) const SELECT_ADMIN_TOKEN: &str = concat!(
    "SELECT secret_hash, ",
    admin_token_columns!(),
    " FROM admin_tokens WHERE id = $1"
);
pub(crate) const REVOKE_ADMIN_TOKEN: &str =
    "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
/// Writes `last_used_at` only when it is older than `$3` (a minute before `$2`).
pub(crate) const TOUCH_ADMIN_TOKEN: &str = "UPDATE admin_tokens SET last_used_at = $2 \
     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)";
/// The least time between two writes of a token's `last_used_at`.
pub(crate) const TOUCH_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, actor, role, source, request_id, \
     action, kind, name, detail, revision, before_digest, after_digest) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id";
/// Newest first; each filter applies when its parameter is not null (`$5`: the cursor, the
/// id of the last record of the previous page).
pub(crate) const SELECT_AUDIT: &str = "SELECT id, at, actor, role, source, request_id, action, \
     kind, name, detail, revision, before_digest, after_digest FROM audit_log \
     WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR actor = $2) \
     AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR name = $4) AND ($5 IS NULL OR id < $5) \
     ORDER BY id DESC LIMIT $6";
pub(crate) const PRUNE_AUDIT: &str = "DELETE FROM audit_log WHERE at < $1";
