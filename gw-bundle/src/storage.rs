//! Where bundles live: a directory, or a bucket (and prefix) of S3-compatible object storage.
//!
//! Each group has a folder (a key prefix on S3) and each bundle is named by its revision,
//! zero-padded so that names sort like revisions:
//!
//! ```text
//! <dir or s3://bucket/prefix>/<group>/00000000000000000042.gwb
//! ```
//!
//! Two controllers of one store that export the same group at the same revision write the
//! same name with the same resources: the later write replaces the earlier whole (a rename in
//! a directory, a single PUT on S3), so concurrent exports are harmless. A reader never sees
//! a partial file: a directory write goes to a temporary file that is synced and renamed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig};

use crate::{BundleError, MAX_BYTES};

/// The extension of bundle files.
pub const EXTENSION: &str = "gwb";

/// S3 settings that may come from flags (the same on the controller and the runtime: flatten
/// it into a clap parser); the rest (credentials, and these when not given) come from the
/// usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Options {
    /// The endpoint of an S3-compatible service (MinIO, Ceph, …), for example
    /// `http://127.0.0.1:9000` (default: AWS, or AWS_ENDPOINT_URL).
    #[arg(
        id = "bundle_s3_endpoint",
        long = "bundle-s3-endpoint",
        env = "GW_BUNDLE_S3_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,

    /// The S3 region (default: AWS_REGION, or us-east-1).
    #[arg(
        id = "bundle_s3_region",
        long = "bundle-s3-region",
        env = "GW_BUNDLE_S3_REGION",
        value_name = "REGION"
    )]
    pub region: Option<String>,
}

/// A bundle storage location; see the module docs.
#[derive(Clone)]
pub enum BundleTarget {
    /// A directory.
    Dir(PathBuf),
    /// A bucket and key prefix.
    S3 {
        /// The client.
        store: Arc<AmazonS3>,
        /// `s3://bucket/prefix`, for messages.
        url: String,
        /// The key prefix (may be empty).
        prefix: String,
    },
}

impl std::fmt::Debug for BundleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the S3 client holds credentials: only the location is shown
        match self {
            Self::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            Self::S3 { url, .. } => f.debug_tuple("S3").field(url).finish(),
        }
    }
}

impl std::fmt::Display for BundleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::S3 { url, .. } => f.write_str(url),
        }
    }
}

/// The file name of the bundle of `revision`.
pub fn file_name(revision: i64) -> String {
    format!("{revision:020}.{EXTENSION}")
}

/// The revision a bundle file name stands for; `None` for any other name (a temporary file).
pub fn revision_of(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(&format!(".{EXTENSION}"))?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether `group` can name a folder: what gw accepts as a group name, never `.` or `..`.
fn check_group(group: &str) -> Result<(), BundleError> {
    let valid = !group.is_empty()
        && group.len() <= 253
        && !group.starts_with('.')
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(BundleError::Location(format!("invalid group {group:?}")))
    }
}

/// What an object storage request failed with, summed up for messages, logs and API
/// answers: the kind of error, the HTTP status and S3's error code when there are, and
/// whether the service could not be reached. Never the response body, nor the request: an
/// S3 error body (`SignatureDoesNotMatch`) carries the access key id and the canonical
/// request, and can carry a session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    /// What kind of error (`permission denied`, `not found`, `timed out`, …).
    pub kind: &'static str,
    /// The HTTP status of the answer, if any.
    pub status: Option<u16>,
    /// S3's error code (`<Code>` of the answer), if any.
    pub code: Option<String>,
    /// Whether the service could not be reached or did not answer in time.
    pub transport: bool,
}

impl StoreFailure {
    /// The summary of `err`.
    pub fn of(err: &object_store::Error) -> Self {
        use object_store::Error as E;
        use object_store::client::{HttpError, HttpErrorKind};

        let mut kind = match err {
            E::NotFound { .. } => "not found",
            E::InvalidPath { .. } => "invalid path",
            E::JoinError { .. } => "task failed",
            E::NotSupported { .. } => "not supported",
            E::AlreadyExists { .. } => "already exists",
            E::Precondition { .. } => "precondition failed",
            E::NotModified { .. } => "not modified",
            E::NotImplemented { .. } => "not implemented",
            E::PermissionDenied { .. } => "permission denied",
            E::Unauthenticated { .. } => "unauthenticated",
            E::UnknownConfigurationKey { .. } => "unknown configuration key",
            _ => "request failed",
        };
        let mut transport = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(error) = cause {
            if let Some(http) = error.downcast_ref::<HttpError>() {
                match http.kind() {
                    HttpErrorKind::Connect => (kind, transport) = ("cannot connect", true),
                    HttpErrorKind::Timeout => (kind, transport) = ("timed out", true),
                    HttpErrorKind::Request | HttpErrorKind::Interrupted => {
                        (kind, transport) = ("connection failed", true);
                    }
                    _ => kind = "bad response",
                }
            }
            cause = error.source();
        }
        // the text is only searched, never shown
        let text = err.to_string();
        let status = text
            .split_once("status code: ")
            .and_then(|(_, rest)| rest.get(..3))
            .and_then(|digits| digits.parse::<u16>().ok())
            .filter(|status| (100..600).contains(status));
        let code = text
            .split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code)
            .filter(|code| {
                (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .map(str::to_string);
        Self {
            kind,
            status,
            code,
            transport,
        }
    }

    /// A client that cannot be built from the settings.
    fn configuration() -> Self {
        Self {
            kind: "invalid S3 settings (bucket, endpoint, region or AWS_* variables)",
            status: None,
            code: None,
            transport: false,
        }
    }
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)?;
        match (self.status, &self.code) {
            (Some(status), Some(code)) => write!(f, " (HTTP {status}, S3 code {code})"),
            (Some(status), None) => write!(f, " (HTTP {status})"),
            (None, Some(code)) => write!(f, " (S3 code {code})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for StoreFailure {}

/// [`BundleError::ObjectStore`] for `err`, summed up.
fn store_error(what: &'static str, location: String, err: &object_store::Error) -> BundleError {
    BundleError::ObjectStore {
        what,
        location,
        source: StoreFailure::of(err),
    }
}

static TEMPORARY: AtomicU64 = AtomicU64::new(0);

impl BundleTarget {
    /// `s3://bucket/prefix`, or else a directory path.
    pub fn parse(location: &str, s3: &S3Options) -> Result<Self, BundleError> {
        let location = location.trim();
        if location.is_empty() {
            return Err(BundleError::Location("empty location".into()));
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            return Self::s3(rest, s3);
        }
        if let Some((scheme, _)) = location.split_once("://") {
            // only the scheme: the rest can hold a password, whose '/', '?' or '#' (left
            // unencoded) no parse can tell from the path
            let scheme = if (1..=16).contains(&scheme.len())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            {
                scheme
            } else {
                "this scheme"
            };
            return Err(BundleError::Location(format!(
                "{scheme}:// is not supported: use a directory path or s3://bucket/prefix"
            )));
        }
        Ok(Self::Dir(PathBuf::from(location)))
    }

    fn s3(rest: &str, options: &S3Options) -> Result<Self, BundleError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains(['@', '?', '#', ':']) {
            return Err(BundleError::Location(
                "use s3://bucket/prefix (credentials come from the AWS_* environment variables)"
                    .into(),
            ));
        }
        if prefix.contains(['?', '#']) {
            return Err(BundleError::Location(
                "the S3 prefix cannot hold '?' or '#'".into(),
            ));
        }
        let prefix = prefix.trim_matches('/').to_string();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(15),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_mins(1)),
            );
        let endpoint = options.endpoint.clone().or_else(|| {
            std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok()
        });
        if let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) {
            // an operator who names a plain-HTTP endpoint (a local S3-compatible service)
            // means it
            let http = endpoint.starts_with("http://");
            builder = builder.with_endpoint(endpoint).with_allow_http(http);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        // the builder's message can quote a URL given in the environment: not shown
        let store = builder.build().map_err(|_| BundleError::ObjectStore {
            what: "cannot use",
            location: format!("s3://{bucket}"),
            source: StoreFailure::configuration(),
        })?;
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        Ok(Self::S3 {
            store: Arc::new(store),
            url,
            prefix,
        })
    }

    /// The key of an object below the prefix.
    fn key(prefix: &str, parts: &[&str]) -> ObjectPath {
        let mut key = prefix.to_string();
        for part in parts {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(part);
        }
        ObjectPath::from(key)
    }

    /// Where the bundle of `group` at `revision` is (or would be).
    pub fn location(&self, group: &str, revision: i64) -> String {
        format!("{self}/{group}/{}", file_name(revision))
    }

    /// Writes the bundle of `group` at `revision`; returns its location.
    pub async fn write(
        &self,
        group: &str,
        revision: i64,
        bytes: Vec<u8>,
    ) -> Result<String, BundleError> {
        check_group(group)?;
        let location = self.location(group, revision);
        match self {
            Self::Dir(dir) => {
                let folder = dir.join(group);
                let file = folder.join(file_name(revision));
                tokio::task::spawn_blocking(move || write_atomically(&folder, &file, &bytes))
                    .await
                    .map_err(|e| BundleError::Io {
                        what: "cannot write",
                        path: location.clone(),
                        source: std::io::Error::other(e),
                    })??;
            }
            Self::S3 { store, prefix, .. } => {
                let key = Self::key(prefix, &[group, &file_name(revision)]);
                store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map_err(|err| store_error("cannot write", location.clone(), &err))?;
            }
        }
        Ok(location)
    }

    /// The revisions of `group`'s bundles, newest first.
    pub async fn revisions(&self, group: &str) -> Result<Vec<i64>, BundleError> {
        check_group(group)?;
        let mut revisions: Vec<i64> = match self {
            Self::Dir(dir) => {
                let folder = dir.join(group);
                let names = tokio::task::spawn_blocking(move || list_dir(&folder, false))
                    .await
                    .map_err(|e| BundleError::Io {
                        what: "cannot list",
                        path: dir.join(group).display().to_string(),
                        source: std::io::Error::other(e),
                    })??;
                names.iter().filter_map(|n| revision_of(n)).collect()
            }
            Self::S3 { store, prefix, .. } => {
                let folder = Self::key(prefix, &[group]);
                let listed = store
                    .list_with_delimiter(Some(&folder))
                    .await
                    .map_err(|err| store_error("cannot list", format!("{self}/{group}/"), &err))?;
                listed
                    .objects
                    .iter()
                    .filter_map(|o| o.location.filename().and_then(revision_of))
                    .collect()
            }
        };
        revisions.sort_unstable_by(|a, b| b.cmp(a));
        Ok(revisions)
    }

    /// The groups that have a folder.
    pub async fn groups(&self) -> Result<Vec<String>, BundleError> {
        let mut groups: Vec<String> = match self {
            Self::Dir(dir) => {
                let dir = dir.clone();
                let path = dir.display().to_string();
                tokio::task::spawn_blocking(move || list_dir(&dir, true))
                    .await
                    .map_err(|e| BundleError::Io {
                        what: "cannot list",
                        path,
                        source: std::io::Error::other(e),
                    })??
            }
            Self::S3 { store, prefix, .. } => {
                let root = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
                let listed = store
                    .list_with_delimiter(root.as_ref())
                    .await
                    .map_err(|err| store_error("cannot list", self.to_string(), &err))?;
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.parts().next_back().map(|s| s.as_ref().to_string()))
                    .collect()
            }
        };
        groups.retain(|g| check_group(g).is_ok());
        groups.sort();
        Ok(groups)
    }

    /// Reads the bundle of `group` at `revision` (at most [`MAX_BYTES`]).
    pub async fn read(&self, group: &str, revision: i64) -> Result<Vec<u8>, BundleError> {
        check_group(group)?;
        let location = self.location(group, revision);
        match self {
            Self::Dir(dir) => {
                let file = dir.join(group).join(file_name(revision));
                tokio::task::spawn_blocking(move || read_bounded(&file))
                    .await
                    .map_err(|e| BundleError::Io {
                        what: "cannot read",
                        path: location.clone(),
                        source: std::io::Error::other(e),
                    })?
            }
            Self::S3 { store, prefix, .. } => {
                let key = Self::key(prefix, &[group, &file_name(revision)]);
                let failed = |err| store_error("cannot read", location.clone(), &err);
                let object = store.get(&key).await.map_err(failed)?;
                if object.meta.size > MAX_BYTES as u64 {
                    return Err(BundleError::TooLarge(object.meta.size));
                }
                let bytes = object.bytes().await.map_err(failed)?;
                Ok(bytes.to_vec())
            }
        }
    }

    /// Deletes the bundles of `group` older than `written` (the revision just written) but
    /// for the `keep` newest (`written` counting as one); never `written` itself, nor a name
    /// above it: those were not written by this export (junk, a store whose revisions run
    /// ahead, a recreated database) and are returned in [`Pruned::newer`] for the caller to
    /// warn about. A bundle already gone (another controller pruned it) counts as deleted.
    /// In a directory, temporary files older than an hour (left by a writer that crashed) go
    /// too.
    pub async fn prune(
        &self,
        group: &str,
        written: i64,
        keep: usize,
    ) -> Result<Pruned, BundleError> {
        let revisions = self.revisions(group).await?;
        if let Self::Dir(dir) = self {
            let folder = dir.join(group);
            let _ = tokio::task::spawn_blocking(move || remove_stale_temporaries(&folder)).await;
        }
        let newer: Vec<i64> = revisions.iter().copied().filter(|&r| r > written).collect();
        // `written` is kept whether or not the listing shows it yet
        let old: Vec<i64> = revisions
            .into_iter()
            .filter(|&r| r < written)
            .skip(keep.max(1) - 1)
            .collect();
        for &revision in &old {
            let location = self.location(group, revision);
            match self {
                Self::Dir(dir) => {
                    let file = dir.join(group).join(file_name(revision));
                    match std::fs::remove_file(&file) {
                        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                            return Err(BundleError::Io {
                                what: "cannot delete",
                                path: location,
                                source: err,
                            });
                        }
                        _ => {}
                    }
                }
                Self::S3 { store, prefix, .. } => {
                    let key = Self::key(prefix, &[group, &file_name(revision)]);
                    match store.delete(&key).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(err) => return Err(store_error("cannot delete", location, &err)),
                    }
                }
            }
        }
        Ok(Pruned {
            deleted: old,
            newer,
        })
    }
}

/// What [`BundleTarget::prune`] did and saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The revisions deleted, newest first.
    pub deleted: Vec<i64>,
    /// The names above the revision just written, newest first: left alone.
    pub newer: Vec<i64>,
}

/// Writes `bytes` to `file` in `folder` through a temporary file of its own (so that
/// concurrent writers never mix), synced before the rename, the folder synced after.
/// Owner-only: a bundle holds certificates' private keys.
fn write_atomically(folder: &Path, file: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let io = |what, path: &Path, source| BundleError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(folder).map_err(|e| io("cannot create", folder, e))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = folder.join(format!(
        ".{name}.{}-{nanos}-{}.tmp",
        std::process::id(),
        TEMPORARY.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("cannot write", file, err));
    }
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Removes the temporary files of `folder` that are older than [`STALE`].
fn remove_stale_temporaries(folder: &Path) {
    let Ok(names) = list_dir(folder, false) else {
        return;
    };
    for name in names {
        // our own names: `.<bundle>.<pid>-<nanos>-<n>.tmp`, never another case
        let temporary = name.starts_with('.')
            && Path::new(&name)
                .extension()
                .is_some_and(|extension| extension == "tmp");
        if !temporary {
            continue;
        }
        let path = folder.join(&name);
        let stale = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The age past which a temporary file is a crashed writer's.
const STALE: Duration = Duration::from_hours(1);

/// The names in `dir`: its folders (`folders`) or its regular files; none if it does not
/// exist. Symbolic links, FIFOs, sockets and devices are neither: they are left out.
fn list_dir(dir: &Path, folders: bool) -> Result<Vec<String>, BundleError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BundleError::Io {
                what: "cannot list",
                path: dir.display().to_string(),
                source,
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        // the entry's own type: a symbolic link is not followed
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| if folders { t.is_dir() } else { t.is_file() })
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Reads `file`, a regular file (never through a symbolic link, never a FIFO or a device)
/// of at most [`MAX_BYTES`]: a larger file is refused from its `fstat` without being read,
/// and the limit holds for what is read too (the file can grow in between).
fn read_bounded(file: &Path) -> Result<Vec<u8>, BundleError> {
    read_limited(file, MAX_BYTES)
}

/// [`read_bounded`] with another limit.
fn read_limited(file: &Path, limit: usize) -> Result<Vec<u8>, BundleError> {
    use std::io::Read as _;

    let io = |source| BundleError::Io {
        what: "cannot read",
        path: file.display().to_string(),
        source,
    };
    // one open that follows no link (a final symbolic link fails with ELOOP) and never
    // blocks (a FIFO opens at once, without waiting for a writer); what was opened is then
    // checked on the handle, so nothing can be swapped in between
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                not_regular(file)
            } else {
                io(err)
            }
        })?;
    let metadata = handle.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(not_regular(file));
    }
    // refused before a byte is read: a sparse file of 100 GB is not read to find out
    if metadata.len() > limit as u64 {
        return Err(BundleError::TooLarge(metadata.len()));
    }
    let expected = usize::try_from(metadata.len()).unwrap_or(limit);
    let mut bytes = Vec::with_capacity(expected + 1);
    // the file can grow after the `fstat`: the limit holds for what is read too
    handle
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > limit {
        return Err(BundleError::Grew);
    }
    Ok(bytes)
}

/// The error for a name that is not a regular file.
fn not_regular(file: &Path) -> BundleError {
    BundleError::Io {
        what: "cannot read",
        path: file.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_revisions() {
        assert_eq!(file_name(42), "00000000000000000042.gwb");
        assert_eq!(revision_of(&file_name(42)), Some(42));
        assert_eq!(revision_of(&file_name(i64::MAX)), Some(i64::MAX));
        assert!(file_name(9) < file_name(10));
        for other in [
            "42.gwb",
            ".00000000000000000042.gwb.1-2-3.tmp",
            "00000000000000000042.json",
            "0000000000000000004x.gwb",
        ] {
            assert_eq!(revision_of(other), None, "{other}");
        }
    }

    #[test]
    fn locations_are_parsed() {
        let dir = BundleTarget::parse("/var/lib/gw/bundles", &S3Options::default()).unwrap();
        assert!(matches!(dir, BundleTarget::Dir(_)));
        assert_eq!(
            dir.location("edge", 7),
            "/var/lib/gw/bundles/edge/00000000000000000007.gwb"
        );
        let s3 = BundleTarget::parse(
            "s3://bucket/gw/bundles/",
            &S3Options {
                endpoint: Some("http://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
            },
        )
        .unwrap();
        assert_eq!(
            s3.location("edge", 7),
            "s3://bucket/gw/bundles/edge/00000000000000000007.gwb"
        );
        assert_eq!(format!("{s3:?}"), "S3(\"s3://bucket/gw/bundles\")");
        for bad in [
            "",
            "gs://bucket",
            "s3://",
            "s3://user:secret@bucket/x",
            "s3://b/p?x=1",
        ] {
            let err = BundleTarget::parse(bad, &S3Options::default()).unwrap_err();
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn credentials_in_a_refused_url_are_not_quoted() {
        for url in [
            "https://user:token@host/b",
            "https://u:p/ss@host",
            "https://u:p?ss@host/b",
            "https://u:p#ss@host",
        ] {
            let err = BundleTarget::parse(url, &S3Options::default())
                .unwrap_err()
                .to_string();
            assert!(
                !err.contains("token") && !err.contains("ss") && !err.contains("host"),
                "{err}"
            );
            assert!(err.contains("https:// is not supported"), "{err}");
        }
        let err = BundleTarget::parse("a:secret@b://c", &S3Options::default())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn object_storage_errors_are_summed_up_without_the_body() {
        let body = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\
            <Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIAEXAMPLEKEY</AWSAccessKeyId>\
            <CanonicalRequest>PUT /b/k x-amz-security-token:SESSIONTOKEN</CanonicalRequest></Error>";
        let err = object_store::Error::PermissionDenied {
            path: "edge/00000000000000000007.gwb".into(),
            source: body.into(),
        };
        let failure = StoreFailure::of(&err);
        assert_eq!(failure.status, Some(403));
        assert_eq!(failure.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert!(!failure.transport);
        let shown = store_error("cannot write", "s3://b/edge/x.gwb".into(), &err);
        let mut text = format!("{shown} {shown:?}");
        let mut cause = std::error::Error::source(&shown);
        while let Some(inner) = cause {
            text.push_str(&inner.to_string());
            cause = inner.source();
        }
        for secret in [
            "AWSAccessKeyId",
            "AKIAEXAMPLEKEY",
            "SESSIONTOKEN",
            "Canonical",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(
            shown.to_string(),
            "cannot write s3://b/edge/x.gwb: permission denied (HTTP 403, S3 code SignatureDoesNotMatch)"
        );
        // a code that is not a plain word is left out
        let odd = object_store::Error::Generic {
            store: "S3",
            source: "<Code>a b AWSAccessKeyId</Code>".into(),
        };
        assert_eq!(StoreFailure::of(&odd).to_string(), "request failed");
        // a service that cannot be reached is a transport failure
        let refused = object_store::Error::Generic {
            store: "S3",
            source: Box::new(object_store::client::HttpError::new(
                object_store::client::HttpErrorKind::Connect,
                std::io::Error::other("connection refused"),
            )),
        };
        let failure = StoreFailure::of(&refused);
        assert!(failure.transport, "{failure:?}");
        assert!(store_error("cannot list", "s3://b".into(), &refused).is_transport());
        assert_eq!(failure.to_string(), "cannot connect");
    }

    #[tokio::test]
    async fn a_directory_keeps_the_newest_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().join("bundles"));
        assert!(target.groups().await.unwrap().is_empty());
        assert!(target.revisions("edge").await.unwrap().is_empty());
        for revision in [3, 11, 7, 5] {
            let at = target
                .write("edge", revision, format!("r{revision}").into_bytes())
                .await
                .unwrap();
            assert!(at.ends_with(&file_name(revision)), "{at}");
        }
        target.write("default", 1, b"d".to_vec()).await.unwrap();
        // the same name again: replaced whole
        target
            .write("edge", 11, b"r11 again".to_vec())
            .await
            .unwrap();
        assert_eq!(target.read("edge", 11).await.unwrap(), b"r11 again");
        let file = dir.path().join("bundles/edge").join(file_name(11));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // a leftover temporary file is not a bundle; an old one is removed by pruning
        let fresh = dir.path().join("bundles/edge/.x.gwb.1-2-3.tmp");
        let old = dir.path().join("bundles/edge/.x.gwb.1-2-4.tmp");
        std::fs::write(&fresh, b"x").unwrap();
        std::fs::write(&old, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_hours(2))
            .unwrap();
        assert_eq!(target.groups().await.unwrap(), ["default", "edge"]);
        assert_eq!(target.revisions("edge").await.unwrap(), [11, 7, 5, 3]);
        assert_eq!(target.prune("edge", 11, 2).await.unwrap().deleted, [5, 3]);
        assert_eq!(target.revisions("edge").await.unwrap(), [11, 7]);
        assert!(fresh.exists() && !old.exists());
        assert!(target.read("edge", 3).await.is_err());
        // groups cannot escape the directory
        assert!(target.write("../x", 1, Vec::new()).await.is_err());
        assert!(target.revisions("..").await.is_err());
    }

    #[tokio::test]
    async fn links_fifos_and_oversized_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().join("bundles"));
        target.write("edge", 1, b"real".to_vec()).await.unwrap();
        let folder = dir.path().join("bundles/edge");
        // a link to a real bundle, a link to an endless device, a FIFO no one writes to
        std::os::unix::fs::symlink(folder.join(file_name(1)), folder.join(file_name(2))).unwrap();
        std::os::unix::fs::symlink("/dev/zero", folder.join(file_name(3))).unwrap();
        let fifo = folder.join(file_name(4));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // a linked group folder is not a group
        std::os::unix::fs::symlink(&folder, dir.path().join("bundles/linked")).unwrap();
        std::fs::write(folder.join(file_name(5)), b"0123456789").unwrap();

        let bounded = Duration::from_secs(20);
        let checks = async {
            assert_eq!(target.groups().await.unwrap(), ["edge"]);
            assert_eq!(target.revisions("edge").await.unwrap(), [5, 1]);
            for revision in [2, 3, 4] {
                let err = target.read("edge", revision).await.unwrap_err();
                assert!(err.to_string().contains("not a regular file"), "{err}");
            }
            // the limit holds for the size the handle has, before a byte is read
            let ten = folder.join(file_name(5));
            assert!(matches!(
                read_limited(&ten, 9),
                Err(BundleError::TooLarge(10))
            ));
            assert_eq!(read_limited(&ten, 10).unwrap(), b"0123456789");
            // a sparse file of 100 GB is refused from its size, not read
            let sparse = folder.join(file_name(6));
            std::fs::File::create(&sparse)
                .unwrap()
                .set_len(100 << 30)
                .unwrap();
            let err = target.read("edge", 6).await.unwrap_err();
            assert!(
                matches!(err, BundleError::TooLarge(size) if size == 100 << 30),
                "{err}"
            );
            assert_eq!(target.read("edge", 1).await.unwrap(), b"real");
        };
        tokio::time::timeout(bounded, checks)
            .await
            .expect("no read hangs");
    }

    #[tokio::test]
    async fn pruning_never_deletes_the_bundle_just_written() {
        let dir = tempfile::tempdir().unwrap();
        let target = BundleTarget::Dir(dir.path().to_path_buf());
        for revision in [3, 5, 7] {
            target
                .write("edge", revision, b"old".to_vec())
                .await
                .unwrap();
        }
        // junk (or another store's bundles) with higher names
        let folder = dir.path().join("edge");
        for junk in [i64::MAX, 9_000, 8] {
            std::fs::write(folder.join(file_name(junk)), b"junk").unwrap();
        }
        target.write("edge", 7, b"fresh".to_vec()).await.unwrap();
        let pruned = target.prune("edge", 7, 2).await.unwrap();
        assert_eq!(pruned.deleted, [3]);
        assert_eq!(pruned.newer, [i64::MAX, 9_000, 8]);
        assert_eq!(target.read("edge", 7).await.unwrap(), b"fresh");
        assert_eq!(
            target.revisions("edge").await.unwrap(),
            [i64::MAX, 9_000, 8, 7, 5]
        );
        // keep 1: only the fresh one is left below the junk
        let pruned = target.prune("edge", 7, 1).await.unwrap();
        assert_eq!(pruned.deleted, [5]);
        assert_eq!(target.read("edge", 7).await.unwrap(), b"fresh");
        // the revision written counts as one of `keep` even when the listing does not show
        // it yet (an S3 listing that lags)
        std::fs::write(folder.join(file_name(4)), b"older").unwrap();
        assert!(target.prune("edge", 6, 2).await.unwrap().deleted.is_empty());
        assert_eq!(target.prune("edge", 6, 1).await.unwrap().deleted, [4]);
    }
}
