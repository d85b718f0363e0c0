//! Standalone mode: the APIs, TLS certificates and consumers of a YAML or JSON file, reloaded
//! when the file changes (checked every poll interval, and at once on SIGHUP). A file that
//! does not parse or validate is reported with every error and its field path, and the
//! previous configuration stays.
//!
//! Consumers in the file may give their API keys and passwords in the clear; they are sealed
//! (hashed, argon2id for passwords) at each load, on a blocking thread. Since the file may
//! hold secrets, errors are reported without quoting it.
//!
//! The last change of the file that was not applied is kept ([`LastRejection`]) for the
//! status server, which shows it as `lastRejectedReload`: a rejected reload is visible
//! without reading the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use gw_core::model::{self, ConsumerDefinition, Format, ModelError, ValidationContext};
use sha2::{Digest, Sha256};

use crate::state::{ConfigState, Definitions, Origin};

/// Why the configuration file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It does not parse or validate.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        #[source]
        source: ModelError,
    },
    /// It validated, but the gateway could not build it.
    #[error("{path}: {}", .reasons.join("; "))]
    Rejected {
        /// The file.
        path: PathBuf,
        /// Why.
        reasons: Vec<String>,
    },
}

impl FileError {
    /// Why the file was not applied, without its path: every problem, joined by `; `.
    pub fn reason(&self) -> String {
        match self {
            FileError::Read { source, .. } => format!("cannot read the file: {source}"),
            FileError::Invalid { source, .. } => source.to_string(),
            FileError::Rejected { reasons, .. } => reasons.join("; "),
        }
    }
}

/// The longest reason [`LastRejection`] keeps, in characters.
const MAX_REASON_CHARS: usize = 8192;

/// A change of the configuration file that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedReload {
    /// When it was refused (RFC 3339, UTC).
    pub at: String,
    /// The file.
    pub file: String,
    /// Why (every problem, with its field path; at most 8192 characters).
    pub reason: String,
    /// Whether the file was read since and holds what the runtime serves: a later version
    /// was applied, or the file went back to the content served. `false`: the file still
    /// holds the refused content (or could still not be read).
    pub superseded: bool,
}

/// The last rejected reload of a [`FileSource`], shared with the status server: kept until
/// the next rejection replaces it, and marked `superseded` once the file holds what the
/// runtime serves again.
#[derive(Debug, Default)]
pub struct LastRejection(Mutex<Option<RejectedReload>>);

impl LastRejection {
    /// The last rejected reload, if any.
    pub fn get(&self) -> Option<RejectedReload> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, path: &Path, error: &FileError, at: DateTime<Utc>) {
        let reason = error.reason();
        let reason = match reason.char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => format!("{}…", &reason[..cut]),
            None => reason,
        };
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(RejectedReload {
            at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            file: path.display().to_string(),
            reason,
            superseded: false,
        });
    }

    fn supersede(&self) {
        if let Some(last) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            last.superseded = true;
        }
    }
}

/// `.json` files are JSON; anything else is YAML (which also reads JSON).
fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Yaml,
    }
}

/// Watches and applies one file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    state: Arc<ConfigState>,
    /// The content served.
    digest: Option<Vec<u8>>,
    /// The content last refused (reported once, not at every poll).
    refused: Option<Vec<u8>>,
    revision: i64,
    last_rejection: Arc<LastRejection>,
}

impl FileSource {
    /// A source for `path` applying to `state`.
    pub fn new(path: PathBuf, state: Arc<ConfigState>) -> Self {
        Self {
            path,
            state,
            digest: None,
            refused: None,
            revision: 0,
            last_rejection: Arc::default(),
        }
    }

    /// The last rejected reload, as the status server shows it.
    pub fn last_rejection(&self) -> Arc<LastRejection> {
        Arc::clone(&self.last_rejection)
    }

    /// Reads the file and applies it if it changed since the last load (successful or
    /// not); returns whether it applied a new configuration. A content that was refused is
    /// refused once: it is not read again until the file changes.
    pub async fn load(&mut self) -> Result<bool, FileError> {
        let result = self.load_changed().await;
        match &result {
            Ok(true) => self.last_rejection.supersede(),
            Ok(false) => {}
            Err(err) => self.last_rejection.record(&self.path, err, Utc::now()),
        }
        result
    }

    async fn load_changed(&mut self) -> Result<bool, FileError> {
        let bytes = tokio::fs::read(&self.path)
            .await
            .map_err(|source| FileError::Read {
                path: self.path.clone(),
                source,
            })?;
        let digest = Sha256::digest(&bytes).to_vec();
        if self.digest.as_ref() == Some(&digest) {
            // back to the content served: a refused one is new again when it comes back
            self.refused = None;
            self.last_rejection.supersede();
            return Ok(false);
        }
        if self.refused.as_ref() == Some(&digest) {
            return Ok(false);
        }
        // refused until it applies; a content that fails is reported once
        self.refused = Some(digest.clone());
        let ctx = ValidationContext {
            policies: Some(self.state.gateway().registry()),
        };
        let set = model::parse_set(&bytes, format_of(&self.path), &ctx).map_err(|source| {
            FileError::Invalid {
                path: self.path.clone(),
                source: source.redacted(),
            }
        })?;
        let revision = self.revision + 1;
        let (apis, certificates, consumers) =
            (set.apis.len(), set.certificates.len(), set.consumers.len());
        let rejected = |reasons| FileError::Rejected {
            path: self.path.clone(),
            reasons,
        };
        let sealed = match seal(set.consumers).await {
            Ok(sealed) => sealed,
            Err(reasons) => {
                // (rejections by the gateway are counted by the state)
                self.state.count_rejection(Origin::File);
                return Err(rejected(reasons));
            }
        };
        self.state
            .replace(
                revision,
                "",
                Definitions::at(revision, set.apis, set.certificates, sealed),
                Origin::File,
            )
            .await
            .map_err(rejected)?;
        self.revision = revision;
        self.digest = Some(digest);
        self.refused = None;
        tracing::info!(path = %self.path.display(), apis, certificates, consumers, revision, "configuration file loaded");
        Ok(true)
    }

    /// Reloads on change until the task is dropped.
    pub async fn watch(mut self, interval: Duration) {
        let mut hangup = hangup_signal();
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = hangup.recv() => tracing::info!("SIGHUP: reloading the configuration file"),
            }
            if let Err(err) = self.load().await {
                if !matches!(err, FileError::Rejected { .. }) {
                    // (a rejection by the gateway is counted by the state itself)
                    self.state.count_rejection(Origin::File);
                }
                match &err {
                    FileError::Invalid { source, .. } if !source.field_errors().is_empty() => {
                        for problem in source.field_errors() {
                            tracing::error!(path = %self.path.display(), field = %problem.field, "{}", problem.message);
                        }
                    }
                    _ => tracing::error!(error = %err, "configuration file not applied"),
                }
                tracing::warn!("keeping the previous configuration");
            }
        }
    }
}

/// Hashes the clear keys and passwords of `consumers`, off the async threads (argon2 takes
/// tens of milliseconds a password, by design).
async fn seal(
    mut consumers: Vec<ConsumerDefinition>,
) -> Result<Vec<ConsumerDefinition>, Vec<String>> {
    if consumers.iter().all(ConsumerDefinition::is_sealed) {
        return Ok(consumers);
    }
    tokio::task::spawn_blocking(move || {
        let errors: Vec<String> = consumers
            .iter_mut()
            .filter_map(|consumer| {
                gw_core::credential::seal(consumer)
                    .err()
                    .map(|e| format!("consumer {:?}: {e}", consumer.metadata.name))
            })
            .collect();
        if errors.is_empty() {
            Ok(consumers)
        } else {
            Err(errors)
        }
    })
    .await
    .map_err(|err| vec![format!("sealing the consumers failed: {err}")])?
}

/// SIGHUP as a stream of `()`; never fires where signals are unavailable.
struct Hangup(Option<tokio::signal::unix::Signal>);

impl Hangup {
    async fn recv(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    self.0 = None;
                }
            }
            None => std::future::pending().await,
        }
    }
}

fn hangup_signal() -> Hangup {
    Hangup(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
}
