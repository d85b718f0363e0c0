//! The store's errors.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time (connection refused, pool timeout,
    /// statement timeout, connection lost). Retrying later may succeed.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The resource does not exist.
    #[error("{name:?} does not exist")]
    NotFound {
        /// The resource name.
        name: String,
    },
    /// The resource exists and the write required that it did not.
    #[error("{name:?} already exists")]
    AlreadyExists {
        /// The resource name.
        name: String,
    },
    /// The resource is not at the revision the write required.
    #[error("{}", precondition_text(name, *expected, *actual))]
    PreconditionFailed {
        /// The resource name.
        name: String,
        /// The revision the caller expected.
        expected: i64,
        /// The revision it is at (`None`: it does not exist).
        actual: Option<i64>,
    },
    /// Another API already occupies this context on this host within this group.
    #[error(
        "context {context:?} on host {host:?} in group {group:?} is already used by API {holder:?}"
    )]
    RouteConflict {
        /// Gateway group.
        group: String,
        /// Host (`*` for any).
        host: String,
        /// The contested context.
        context: String,
        /// The API that holds it.
        holder: String,
    },
    /// The change log no longer holds changes after the requested revision.
    #[error(
        "changes after revision {requested} were compacted (the log starts after {compacted_through})"
    )]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The log holds only changes above this revision.
        compacted_through: i64,
    },
    /// The caller asked for something the store cannot do, whatever the data (such as
    /// writing a resource of kind `api`, or of an empty kind).
    #[error("invalid store request: {0}")]
    InvalidInput(String),
    /// The database URL is not usable.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// The text of [`StoreError::PreconditionFailed`]: the revision the resource is at, or that
/// it does not exist.
fn precondition_text(name: &str, expected: i64, actual: Option<i64>) -> String {
    match actual {
        Some(actual) => format!("{name:?} is at revision {actual}, not {expected}"),
        None => format!("{name:?} does not exist (the request expected it at revision {expected})"),
    }
}

impl StoreError {
    /// Whether the error means the database is unreachable (so the caller should answer
    /// 503 and try again later) rather than that the request was wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            sqlx::Error::Database(db) => {
                // PostgreSQL: 57014 query_canceled (statement timeout), 57P01..57P03 admin
                // shutdown / crash shutdown / cannot connect now, 08xxx connection errors.
                // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED.
                let code = db.code();
                let unavailable = code.as_deref().is_some_and(|c| {
                    c == "57014"
                        || c.starts_with("57P")
                        || c.starts_with("08")
                        || c == "5"
                        || c == "6"
                });
                if unavailable {
                    StoreError::Unavailable(err)
                } else {
                    StoreError::Database(err)
                }
            }
            _ => StoreError::Database(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn a_failed_precondition_reads_as_a_sentence() {
        let stale = StoreError::PreconditionFailed {
            name: "petstore".into(),
            expected: 1,
            actual: Some(2),
        };
        assert_eq!(stale.to_string(), "\"petstore\" is at revision 2, not 1");
        let gone = StoreError::PreconditionFailed {
            name: "petstore".into(),
            expected: 2,
            actual: None,
        };
        assert_eq!(
            gone.to_string(),
            "\"petstore\" does not exist (the request expected it at revision 2)"
        );
    }
}
