//! The SQLite store: an embedded file for a single node (all-in-one, development, small
//! production).
//!
//! The file runs in WAL mode with `synchronous = FULL`, so an acknowledged write survives a
//! crash or power loss. Write transactions start with `BEGIN IMMEDIATE`, which takes the
//! database's single write lock up front: writers are serialized and revisions become visible
//! in order. Changes are announced in process through [`crate::Store::hints`]; the feed's
//! safety poll also picks up writes made by another process on the same file.

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::watch;

use crate::sql::impl_store;
use crate::{Backend, StoreError, StoreOptions};

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    hints: watch::Sender<u64>,
    store_id: String,
}

/// Whether a SQLite URL names an in-memory database (no file to protect).
fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Makes the database file readable by its owner only (it holds certificates' private
/// keys): created so when missing, tightened when it exists with wider permissions. SQLite
/// gives its `-wal` and `-shm` files the mode of the database file.
fn owner_only(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let io = |e: std::io::Error| {
        StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )))
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the database file was readable by others; making it owner-only (0600)");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            // journal files left from a time the database was wider
            for suffix in ["-wal", "-shm"] {
                let mut journal = path.as_os_str().to_owned();
                journal.push(suffix);
                let journal = std::path::PathBuf::from(journal);
                if let Ok(meta) = std::fs::metadata(&journal)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                // another process made it first: SQLite opens it
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io(err)),
            }
        }
        Err(err) => return Err(io(err)),
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating it if needed) the database file of `url` (`sqlite://path/to/gw.db`)
    /// and runs the migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.timeout);
        if !in_memory(url) {
            owner_only(connect.get_filename())?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.clamp(1, 8))
            .acquire_timeout(options.timeout)
            .connect_with(connect)
            .await?;
        let store_id = Self::migrate(&pool, sqlx::migrate!("./migrations/sqlite")).await?;
        let (hints, _) = watch::channel(0);
        Ok(Self {
            pool,
            hints,
            store_id,
        })
    }

    const KIND: Backend = Backend::Sqlite;

    /// Starts a transaction that writes: `BEGIN IMMEDIATE` takes the database's write lock
    /// up front, which serializes writers.
    async fn begin_writer(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Commits, then tells this process's feeds to look.
    async fn commit_write(
        &self,
        tx: Transaction<'static, Sqlite>,
        _revision: i64,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        self.hints.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

impl_store!(SqliteStore, SqliteRow);
