//! The fallback bundle source: a runtime that starts with no last-known-good cache while no
//! controller answers loads the newest signed bundle of its group that verifies
//! ([`gw_bundle`]), from a directory or S3-compatible object storage.
//!
//! The rule: the bundle is loaded once every controller has been tried and none gave a
//! working stream, or after [`FallbackOptions::wait`], whichever comes first, and only while
//! nothing is served. A bundle that is unsigned, tampered with, signed with another key,
//! truncated, malformed, for another group, named for another revision than it holds, or
//! that does not apply is refused with a log line saying why, and the next older one is
//! tried. When none can be loaded, the runtime tries again every [`RETRY`] until a
//! configuration is served by some source. A controller that answers later replaces the
//! bundle's configuration as usual (with a delta when the bundle is of its store).

use std::sync::Arc;
use std::time::Duration;

use gw_bundle::VerifyKey;
use gw_bundle::storage::BundleTarget;
use gw_sync::KINDS;
use gw_sync::client::ClientStatus;
use tokio::sync::watch;

use crate::state::{ConfigState, Origin};

/// How often a runtime that could not load any bundle tries again.
pub const RETRY: Duration = Duration::from_secs(10);

/// The most bundles tried, newest first, in one attempt.
const MAX_TRIED: usize = 100;

/// Where the bundles are and how they are verified. Its `Debug` shows no key material: the keys' `Debug` is redacted.
#[derive(Clone, Debug)]
pub struct FallbackOptions {
    /// The directory or bucket the controllers export to.
    pub target: BundleTarget,
    /// The key bundles must verify with.
    pub key: Arc<VerifyKey>,
    /// The longest wait for a controller before the bundle is loaded.
    pub wait: Duration,
}

/// Waits for the rule of the module docs, then loads the newest valid bundle, retrying until
/// something is served. Returns when a configuration is served by any source.
pub async fn run(
    state: Arc<ConfigState>,
    mut sync: watch::Receiver<ClientStatus>,
    controllers: usize,
    options: FallbackOptions,
) {
    let deadline = tokio::time::Instant::now() + options.wait;
    let given_up = |s: &ClientStatus| s.failed_attempts as usize >= controllers.max(1);
    loop {
        // a controller that answers serves its configuration (even an empty one); one that
        // connects but whose configuration is rejected leaves the bundle to be loaded
        if state.origin() != Origin::None {
            return;
        }
        if given_up(&sync.borrow_and_update()) {
            tracing::warn!(
                controllers,
                "no controller answered and no last-known-good cache: loading a fallback bundle"
            );
            break;
        }
        tokio::select! {
            changed = sync.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    wait = ?options.wait,
                    "no controller answered in time and no last-known-good cache: loading a fallback bundle"
                );
                break;
            }
        }
    }
    loop {
        if state.origin() != Origin::None {
            return;
        }
        if load_newest(&state, &options.target, &options.key).await {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Loads the newest bundle of the state's group that verifies and applies; returns whether
/// a configuration is served now (by the bundle or, meanwhile, another source).
pub async fn load_newest(state: &ConfigState, target: &BundleTarget, key: &VerifyKey) -> bool {
    let group = state.group();
    let revisions = match target.revisions(group).await {
        Ok(revisions) => revisions,
        Err(err) => {
            tracing::warn!(bundles = %target, group, error = %err, "cannot list fallback bundles; retrying in {RETRY:?}");
            return false;
        }
    };
    if revisions.is_empty() {
        tracing::warn!(bundles = %target, group, "no fallback bundle for this group; retrying in {RETRY:?}");
        return false;
    }
    for revision in revisions.into_iter().take(MAX_TRIED) {
        let location = target.location(group, revision);
        let bundle = match target.read(group, revision).await {
            Ok(bytes) => gw_bundle::open(&bytes, key),
            Err(err) => Err(err),
        };
        let bundle = match bundle {
            Ok(bundle) => bundle,
            Err(err) => {
                state.count_rejection(Origin::Bundle);
                tracing::warn!(bundle = %location, error = %err, "refusing fallback bundle; trying an older one");
                continue;
            }
        };
        let mismatch = if bundle.group != group {
            Some(format!("it is for group {:?}", bundle.group))
        } else if bundle.revision != revision {
            Some(format!(
                "it is named for revision {revision} but holds revision {}",
                bundle.revision
            ))
        } else {
            None
        };
        if let Some(reason) = mismatch {
            state.count_rejection(Origin::Bundle);
            tracing::warn!(bundle = %location, %reason, "refusing fallback bundle; trying an older one");
            continue;
        }
        // kinds this runtime does not apply (a newer controller's) are left out, as a
        // controller leaves them out of this runtime's stream
        let mut resources = bundle.to_resources();
        resources.retain(|r| KINDS.contains(&r.kind.as_str()));
        match state
            .apply_bundle(bundle.revision, &bundle.store_id, &bundle.kinds, &resources)
            .await
        {
            Ok(true) => {
                tracing::info!(
                    bundle = %location,
                    revision = bundle.revision,
                    created_at = %bundle.created_at,
                    created_by = %bundle.created_by,
                    "serving a fallback bundle until a controller answers"
                );
                return true;
            }
            Ok(false) => return true,
            Err(errors) => {
                tracing::warn!(bundle = %location, ?errors, "refusing a fallback bundle that does not apply; trying an older one");
            }
        }
    }
    tracing::warn!(bundles = %target, group, "no fallback bundle could be loaded; retrying in {RETRY:?}");
    false
}
