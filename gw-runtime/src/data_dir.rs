//! A process's data directory: held with an exclusive lock for as long as the process runs,
//! and home of the node id that identifies the process in the fleet across restarts.
//!
//! Two gw processes on one directory would overwrite each other's files (the last-known-good
//! cache, a controller's SQLite database) and share a node id, so the second one is refused:
//! [`DataDir::open`] takes an advisory lock (`flock`) on `<dir>/lock` and writes the process id
//! into the file for the message another process shows. The kernel releases the lock when the
//! process ends, however it ends, so the `lock` file that stays behind is harmless; it is never
//! removed, since removing a lock file opens a race between two starting processes.
//!
//! [`DataDir::node_id`] reads `<dir>/node-id`, or, at the first start, generates an id
//! ([`crate::default_node_id`]) and writes it there (temporary file, fsync, rename), so that a
//! restarted process is the same node. A file that does not hold a valid id is an error, never
//! silently replaced: the id names the node in the fleet view and in its history.
//!
//! [`DataDir::session_start`] keeps the start time of the newest run in `<dir>/session-start`
//! and never hands out one lower: a node's sessions are ordered by it in the fleet records
//! (the newest session's record wins), so a restart with a clock that went back must still
//! count as newer than the run before it.
//!
//! The directory is created readable by its owner only, its files likewise, and none of them
//! is opened through a symbolic link or as anything but a regular file: whoever can write into
//! a data directory could otherwise hold its lock, choose the node's id, or make gw truncate a
//! file elsewhere. A directory that every user may write into is refused.

use std::fs::{self, File, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// `open(2)` flags: never through a symbolic link, and never wait on a FIFO.
const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
const O_NONBLOCK: i32 = libc::O_NONBLOCK;

/// Opens `path` with `options`, refusing a symbolic link and anything but a regular file.
fn open_regular(options: &mut fs::OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.custom_flags(O_NOFOLLOW | O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The lock file, relative to the data directory.
pub const LOCK_FILE: &str = "lock";
/// The node id file, relative to the data directory.
pub const NODE_ID_FILE: &str = "node-id";
/// The file that keeps the start time of the newest run ([`DataDir::session_start`]).
pub const SESSION_START_FILE: &str = "session-start";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the directory's lock.
    #[error(
        "the data directory {} is in use by another gw process{}; give each process its own \
         data directory (--data-dir)",
        .path.display(),
        .pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// The process that holds it, as its lock file says (`None` when the file does not
        /// say yet: that process is starting).
        pid: Option<u32>,
    },
    /// A file or the directory itself cannot be read or written.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done (`create the data directory`, `lock`, `read`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The node id file does not hold a valid node id.
    #[error(
        "{} does not hold a valid node id ({reason}); correct it, delete it to have a new id \
         generated, or give the id with --node-id",
        .path.display()
    )]
    NodeId {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
}

/// A data directory locked by this process; the lock is released when the value is dropped
/// (or the process ends).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the lock.
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, or says which process holds it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, DataDirError> {
        let path = path.into();
        let io = |action, file: &Path, source| DataDirError::Io {
            action,
            path: file.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|e| io("create the data directory", &path, e))?;
        let meta = fs::metadata(&path).map_err(|e| io("read", &path, e))?;
        if meta.permissions().mode() & 0o002 != 0 {
            return Err(io(
                "use",
                &path,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "every user may write into it; give gw a directory of its own (chmod o-w)",
                ),
            ));
        }
        let lock_path = path.join(LOCK_FILE);
        let mut lock = open_regular(
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            &lock_path,
        )
        .map_err(|e| io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse {
                    pid: holder(&lock_path),
                    path,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io("lock", &lock_path, source)),
        }
        // for the message of a process refused later; the lock itself is what counts
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(|e| io("write", &lock_path, e))?;
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node id kept in the directory; at the first start, a new one
    /// ([`crate::default_node_id`]) written there.
    pub fn node_id(&self) -> Result<String, DataDirError> {
        let path = self.path.join(NODE_ID_FILE);
        let mut bytes = Vec::new();
        match open_regular(fs::OpenOptions::new().read(true), &path) {
            // an id is at most 253 bytes: more is not an id, and is not read whole
            Ok(file) => file.take(1024).read_to_end(&mut bytes),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let id = crate::default_node_id();
                write_atomically(&path, |file| writeln!(file, "{id}")).map_err(|source| {
                    DataDirError::Io {
                        action: "write",
                        path: path.clone(),
                        source,
                    }
                })?;
                tracing::info!(node = %id, file = %path.display(), "generated this node's id");
                return Ok(id);
            }
            Err(err) => Err(err),
        }
        .map_err(|source| DataDirError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let invalid = |reason: String| DataDirError::NodeId {
            path: path.clone(),
            reason,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("it is not text".into()))?;
        let id = text.trim();
        gw_sync::validate_node_id(id).map_err(invalid)?;
        Ok(id.to_string())
    }

    /// The start time (Unix milliseconds) this run's sync sessions are ordered by: `now_ms`,
    /// or one more than the previous run's when the clock has gone back since, kept in
    /// `<dir>/session-start` for the next run. A file that does not hold a number (gw's own
    /// file, damaged) is replaced with a warning: it orders sessions, it names nothing.
    pub fn session_start(&self, now_ms: u64) -> Result<u64, DataDirError> {
        let path = self.path.join(SESSION_START_FILE);
        let mut bytes = Vec::new();
        let previous = match open_regular(fs::OpenOptions::new().read(true), &path) {
            Ok(file) => {
                file.take(64)
                    .read_to_end(&mut bytes)
                    .map_err(|source| DataDirError::Io {
                        action: "read",
                        path: path.clone(),
                        source,
                    })?;
                let parsed = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok());
                if parsed.is_none() {
                    tracing::warn!(file = %path.display(), "replacing a session start file that holds no number");
                }
                parsed
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(DataDirError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let start = match previous {
            Some(previous) if previous >= now_ms => {
                tracing::warn!(
                    previous_start_ms = previous,
                    now_ms,
                    "the clock reads earlier than this node's previous start; its sessions \
                     continue from the previous start so that the fleet records this run as \
                     the newer one"
                );
                previous.saturating_add(1)
            }
            _ => now_ms,
        };
        write_atomically(&path, |file| writeln!(file, "{start}")).map_err(|source| {
            DataDirError::Io {
                action: "write",
                path,
                source,
            }
        })?;
        Ok(start)
    }
}

/// The process id a lock file names, if it names one.
fn holder(lock_path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(lock_path)
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Writes the file at `path` with `write` so that it is either absent or whole, and readable
/// by its owner only: a temporary file beside it (created new, never through a link), fsync,
/// rename, fsync of the directory. Blocking.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    // a leftover of a crash (or anything planted there) is removed, never written through
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(O_NOFOLLOW)
            .open(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's session start never falls below the previous run's, whatever the clock says,
    /// and is kept for the next run.
    #[test]
    fn the_session_start_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.session_start(5_000).unwrap(), 5_000);
        // the clock went back
        assert_eq!(data.session_start(4_000).unwrap(), 5_001);
        assert_eq!(data.session_start(4_000).unwrap(), 5_002);
        assert_eq!(data.session_start(9_000).unwrap(), 9_000);
        let kept = fs::read_to_string(dir.path().join(SESSION_START_FILE)).unwrap();
        assert_eq!(kept, "9000\n");
        drop(data);
        // a damaged file orders nothing: the clock's time, and the file is whole again
        fs::write(dir.path().join(SESSION_START_FILE), "not a number").unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.session_start(7_000).unwrap(), 7_000);
        assert_eq!(data.session_start(6_000).unwrap(), 7_001);
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let first = DataDir::open(&path).unwrap();
        let err = DataDir::open(&path).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, DataDirError::InUse { pid: Some(pid), .. } if pid == std::process::id()),
            "{message}"
        );
        assert_eq!(
            message,
            format!(
                "the data directory {} is in use by another gw process (pid {}); give each \
                 process its own data directory (--data-dir)",
                path.display(),
                std::process::id()
            )
        );
        drop(first);
        // released with its holder; the lock file stays
        let again = DataDir::open(&path).unwrap();
        assert!(path.join(LOCK_FILE).exists());
        drop(again);
    }

    #[test]
    fn the_node_id_is_generated_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let id = data.node_id().unwrap();
        assert!(gw_sync::validate_node_id(&id).is_ok(), "{id}");
        assert_eq!(
            fs::read_to_string(dir.path().join(NODE_ID_FILE)).unwrap(),
            format!("{id}\n")
        );
        assert!(!dir.path().join("node-id.tmp").exists());
        assert_eq!(
            data.node_id().unwrap(),
            id,
            "read back, not generated again"
        );
        drop(data);
        assert_eq!(DataDir::open(dir.path()).unwrap().node_id().unwrap(), id);
        // an operator's own id, with the line end an editor adds
        fs::write(dir.path().join(NODE_ID_FILE), "edge-7\r\n").unwrap();
        assert_eq!(
            DataDir::open(dir.path()).unwrap().node_id().unwrap(),
            "edge-7"
        );
    }

    #[test]
    fn an_invalid_node_id_file_is_an_error_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let file = dir.path().join(NODE_ID_FILE);
        for content in [&b""[..], b"\n", b"two words", b"\xff\xfe", &[b'a'; 2000]] {
            fs::write(&file, content).unwrap();
            let err = data.node_id().unwrap_err();
            assert!(matches!(err, DataDirError::NodeId { .. }), "{err}");
            let message = err.to_string();
            assert!(
                message.contains("does not hold a valid node id"),
                "{message}"
            );
            assert!(message.contains("--node-id"), "{message}");
            assert_eq!(fs::read(&file).unwrap(), content, "never replaced");
        }
    }

    #[test]
    fn nothing_is_opened_through_a_link_and_others_cannot_write_in() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "precious\n").unwrap();

        // a lock file that is a link to another file: refused, the other file untouched
        let linked = dir.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(&elsewhere, linked.join(LOCK_FILE)).unwrap();
        let err = DataDir::open(&linked).unwrap_err().to_string();
        assert!(err.contains("lock"), "{err}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "precious\n");

        // a node-id that is a link: refused, not followed
        let planted = dir.path().join("planted");
        let data = DataDir::open(&planted).unwrap();
        std::os::unix::fs::symlink(&elsewhere, planted.join(NODE_ID_FILE)).unwrap();
        assert!(data.node_id().is_err());
        drop(data);

        // a directory every user may write into: refused
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = DataDir::open(&open).unwrap_err().to_string();
        assert!(err.contains("every user may write"), "{err}");

        // a new one is its owner's only, and so are its files
        let fresh = dir.path().join("fresh");
        let data = DataDir::open(&fresh).unwrap();
        data.node_id().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(LOCK_FILE)), 0o600);
        assert_eq!(mode(&fresh.join(NODE_ID_FILE)), 0o600);
    }
}
