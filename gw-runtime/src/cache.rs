//! The last-known-good cache: the configuration a runtime last applied, on disk, so that it
//! can serve after a restart while no controller answers, and resume from its revision when
//! one does.
//!
//! The file is written atomically (temporary file, fsync, rename, fsync of the directory)
//! and starts with a header line that holds the payload's length and SHA-256:
//!
//! ```text
//! gw-config-cache 1 <length> <sha256 hex>
//! {"group": "...", "revision": 42, "apis": [...]}
//! ```
//!
//! A file that is truncated, corrupt, larger than the bound or for another group is reported
//! and ignored as a whole: it is never served in part.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &str = "gw-config-cache";
const FORMAT: u32 = 1;

/// The largest cache written or read, by default.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A configuration as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedConfig {
    /// The group it was served for.
    pub group: String,
    /// The store the revision belongs to (see `gw_store::Store::store_id`).
    #[serde(default)]
    pub store_id: String,
    /// Its revision.
    pub revision: i64,
    /// Every API, canonical.
    pub apis: Vec<CachedApi>,
    /// The resource kinds the runtime that wrote it applied; a cache written before
    /// certificates existed lists none, and its revision is not trusted for deltas (the
    /// certificates created before it were never sent).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Every TLS certificate, canonical (with its private key: the file is readable by its
    /// owner only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CachedApi>,
    /// Every consumer, canonical and sealed (API keys and passwords as hashes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<CachedApi>,
}

/// One cached resource (an API, a certificate or a consumer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedApi {
    /// The revision of its last change.
    pub revision: i64,
    /// The canonical definition.
    pub definition: serde_json::Value,
}

/// Why a cache file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing failed.
    #[error("cache I/O failed on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a complete cache written by this version.
    #[error("cache {path} is unusable: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The cache file of one runtime.
#[derive(Debug, Clone)]
pub struct CacheFile {
    path: PathBuf,
    max_bytes: u64,
}

impl CacheFile {
    /// The cache at `path`, bounded to `max_bytes`.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            path: path.into(),
            max_bytes,
        }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> CacheError {
        CacheError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> CacheError {
        CacheError::Invalid {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Writes `config` atomically. Blocking: call it from a blocking thread.
    pub fn write(&self, config: &CachedConfig) -> Result<(), CacheError> {
        let payload = serde_json::to_vec(config).map_err(|e| self.invalid(e.to_string()))?;
        let size = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        if size > self.max_bytes {
            return Err(self.invalid(format!(
                "the configuration is {size} bytes; the cache limit is {}",
                self.max_bytes
            )));
        }
        let digest = hex(&Sha256::digest(&payload));
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        // owner-only: the cache holds private keys of certificates and consumers' key and
        // password hashes
        crate::data_dir::write_atomically(&self.path, |file| {
            writeln!(file, "{MAGIC} {FORMAT} {} {digest}", payload.len())?;
            file.write_all(&payload)
        })
        .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Reads and verifies the cache; `Ok(None)` when there is none. Blocking.
    pub fn read(&self) -> Result<Option<CachedConfig>, CacheError> {
        let size = match fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.io(err)),
        };
        if size > self.max_bytes + 256 {
            return Err(self.invalid(format!(
                "{size} bytes is over the limit of {}",
                self.max_bytes
            )));
        }
        let bytes = fs::read(&self.path).map_err(|e| self.io(e))?;
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.invalid("no header line"))?;
        let header =
            std::str::from_utf8(&bytes[..newline]).map_err(|_| self.invalid("bad header"))?;
        let payload = &bytes[newline + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        let [magic, format, length, digest] = fields[..] else {
            return Err(self.invalid("bad header"));
        };
        if magic != MAGIC || format != FORMAT.to_string() {
            return Err(self.invalid(format!("unknown format {header:?}")));
        }
        if length.parse::<usize>().ok() != Some(payload.len()) {
            return Err(self.invalid(format!(
                "truncated: the header says {length} bytes, the file holds {}",
                payload.len()
            )));
        }
        if hex(&Sha256::digest(payload)) != digest {
            return Err(self.invalid("checksum mismatch"));
        }
        serde_json::from_slice(payload)
            .map(Some)
            .map_err(|e| self.invalid(format!("undecodable payload: {e}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CachedConfig {
        CachedConfig {
            group: "default".into(),
            store_id: "s".into(),
            revision: 7,
            kinds: vec!["api".into(), "certificate".into(), "consumer".into()],
            certificates: Vec::new(),
            consumers: vec![CachedApi {
                revision: 6,
                definition: serde_json::json!({"metadata": {"name": "c"}}),
            }],
            apis: vec![CachedApi {
                revision: 7,
                definition: serde_json::json!({"metadata": {"name": "a"}}),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheFile::new(dir.path().join("sub/cache.json"), DEFAULT_MAX_BYTES);
        assert!(cache.read().unwrap().is_none());
        // a leftover temporary file readable by all must not pass its mode on
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        let leftover = dir.path().join("sub/cache.tmp");
        fs::write(&leftover, b"partial").unwrap();
        fs::set_permissions(
            &leftover,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        cache.write(&config()).unwrap();
        assert_eq!(cache.read().unwrap(), Some(config()));
        // it may hold private keys
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(cache.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn corruption_is_detected_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheFile::new(dir.path().join("cache.json"), DEFAULT_MAX_BYTES);
        cache.write(&config()).unwrap();
        let good = fs::read(cache.path()).unwrap();

        // truncated
        fs::write(cache.path(), &good[..good.len() - 3]).unwrap();
        assert!(matches!(cache.read(), Err(CacheError::Invalid { .. })));
        // one byte flipped in the payload
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        fs::write(cache.path(), &flipped).unwrap();
        let err = cache.read().unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        // garbage
        fs::write(cache.path(), b"not a cache").unwrap();
        assert!(matches!(cache.read(), Err(CacheError::Invalid { .. })));
    }

    #[test]
    fn size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheFile::new(dir.path().join("cache.json"), 10);
        assert!(matches!(
            cache.write(&config()),
            Err(CacheError::Invalid { .. })
        ));
        assert!(!cache.path().exists());
    }
}
