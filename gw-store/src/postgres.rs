//! The PostgreSQL store, shared by every controller of a cluster.
//!
//! Writers serialize on the `gw_meta` row (`UPDATE ... RETURNING revision` is the first
//! statement of every write transaction and holds the row lock until commit), so revision
//! N+1 cannot commit before revision N: the change log has no gaps for a reader to skip.
//! Each write transaction ends with `pg_notify`, delivered at commit. A background task
//! listens on the channel and bumps [`crate::Store::hints`]; when its connection drops it bumps
//! again after reconnecting, because notifications sent meanwhile are lost.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::sql::impl_store;
use crate::{Backend, NOTIFY_CHANNEL, StoreError, StoreOptions};

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    hints: watch::Sender<u64>,
    store_id: String,
    listener: AbortHandle,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects, runs the migrations and starts listening for change notifications.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .application_name("gw-controller")
            .options([(
                "statement_timeout",
                format!("{}", options.timeout.as_millis()),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.timeout)
            .connect_with(connect)
            .await?;
        let store_id = Self::migrate(&pool, sqlx::migrate!("./migrations/postgres")).await?;
        let (hints, _) = watch::channel(0);
        let listener = tokio::spawn(listen(pool.clone(), hints.clone())).abort_handle();
        Ok(Self {
            pool,
            hints,
            store_id,
            listener,
        })
    }

    const KIND: Backend = Backend::Postgres;

    /// Starts a transaction that writes. A write's first statement, the revision bump, holds
    /// the `gw_meta` row lock until commit, which serializes writers.
    async fn begin_writer(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    /// Notifies listeners (delivered at commit) and commits.
    async fn commit_write(
        &self,
        mut tx: Transaction<'static, Postgres>,
        revision: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(revision.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Listens for change notifications until the store is dropped; bumps `hints` for each,
/// and after every (re)connect.
/// The longest wait between attempts to listen again: after a database outage, changes made
/// through other controllers arrive by notification again within it.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(1);

async fn listen(pool: PgPool, hints: watch::Sender<u64>) {
    let bump = || hints.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "change listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTEN_RETRY_MAX);
                continue;
            }
        };
        if let Err(err) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %err, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(LISTEN_RETRY_MAX);
            continue;
        }
        backoff = Duration::from_millis(100);
        // anything sent while we were not listening is lost: make readers look
        bump();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => bump(),
                Ok(None) => {
                    // the connection dropped; try_recv reconnects (and re-LISTENs) on the
                    // next call. Readers must re-read what they may have missed.
                    tracing::info!("change listener lost its connection; reconnecting");
                    bump();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "change listener failed; reconnecting");
                    bump();
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}

impl_store!(PgStore, PgRow);
