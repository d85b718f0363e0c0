//! All-in-one mode: a runtime in the controller's process, connected to the controller's own
//! sync port like any other runtime (the `all-in-one` feature; see
//! [`ControllerOptions::all_in_one`](crate::ControllerOptions::all_in_one)).

//!
//! On a sync port served from the cluster CA (the default in production), the embedded
//! runtime enrolls as any runtime does: at every start the controller makes it a token of one
//! use, valid [`TOKEN_TTL`], straight in the store ([`enrollment_token`]). A runtime that
//! kept a valid certificate in `<data-dir>/runtime/sync-identity.json` ignores it (the token
//! expires unused and is pruned with the others); one whose certificate expired while the
//! process was stopped enrolls again with it. Minting at every start, rather than only when
//! no identity file is there, is what keeps that second case working.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gw_runtime::{ConfigSource, Runtime, RuntimeError, RuntimeOptions};
use gw_store::{NewEnrollmentToken, Store};
use gw_sync::enroll::EnrollmentToken;
use gw_sync::pki::ClusterCa;
use tokio::task::JoinHandle;

use crate::admin::AppState;
use crate::{AllInOne, ControllerError, ControllerOptions};

/// How long the embedded runtime's enrollment token is valid: it is used within seconds of
/// being made, or not at all.
pub(crate) const TOKEN_TTL: Duration = Duration::from_mins(10);

/// The gateway group the embedded runtime serves (a runtime's default).
const GROUP: &str = "default";

/// What the embedded runtime is to its controller.
pub(crate) struct Embedded<'a> {
    /// The controller's node id; the runtime's is `<it>-runtime`.
    pub(crate) node_id: &'a str,
    /// Where the controller's sync port listens.
    pub(crate) sync_addr: SocketAddr,
    /// Its enrollment token, when the sync port is served from the cluster CA.
    pub(crate) enroll: Option<EnrollmentToken>,
}

/// A token of one use, for the embedded runtime's group, made in the store.
pub(crate) async fn enrollment_token(
    store: &Arc<dyn Store>,
    ca: &ClusterCa,
) -> Result<EnrollmentToken, ControllerError> {
    let token = EnrollmentToken::generate(ca.hash());
    let ttl =
        chrono::Duration::from_std(TOKEN_TTL).unwrap_or_else(|_| chrono::Duration::minutes(10));
    let mut backoff = Duration::from_millis(200);
    loop {
        let now = chrono::Utc::now();
        let made = store
            .create_enrollment_token(
                &NewEnrollmentToken {
                    id: token.id().to_string(),
                    secret_hash: token.secret_hash(),
                    group: GROUP.to_string(),
                    uses_max: 1,
                    expires_at: now + ttl,
                    created_at: now,
                    description: Some("the all-in-one runtime of this controller".to_string()),
                },
                None,
            )
            .await;
        match made {
            Ok(()) => return Ok(token),
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, "cannot store the all-in-one runtime's enrollment token; retrying");
            }
            Err(err) => return Err(ControllerError::Store(err)),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Binds the embedded runtime's listeners, hands its state to the admin API (whose
/// `/readyz` waits for it) and runs it until `stopped` completes.
pub(crate) async fn start(
    aio: &AllInOne,
    options: &ControllerOptions,
    embedded: Embedded<'_>,
    state: &AppState,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<Result<(), RuntimeError>>, ControllerError> {
    let mut runtime_options = RuntimeOptions::new(ConfigSource::Controllers(vec![
        reachable(embedded.sync_addr).to_string(),
    ]));
    runtime_options.node_id = Some(format!("{}-runtime", embedded.node_id));
    runtime_options.group = GROUP.to_string();
    runtime_options.enroll_token = embedded.enroll;
    runtime_options.proxy_addr = aio.proxy_addr;
    runtime_options.https_addr = aio.https_addr;
    runtime_options.status_addr = aio.status_addr;
    runtime_options.trusted_proxies = aio.trusted_proxies.clone();
    runtime_options.data_dir = Some(options.data_dir.join("runtime"));
    runtime_options.policies = options.policies.clone();
    runtime_options.heartbeat_interval = options.heartbeat_interval;
    runtime_options.sync_token = options.sync_token.clone();
    // the process stops as a whole, on its own signal
    runtime_options.drain_endpoint = false;
    let runtime = Runtime::bind(runtime_options).await?;
    let _ = state.embedded.set(Arc::clone(runtime.config_state()));
    Ok(tokio::spawn(runtime.run(stopped)))
}

/// Waits for the embedded runtime to stop, logging how it failed if it did.
pub(crate) async fn stopped(embedded: JoinHandle<Result<(), RuntimeError>>) {
    match embedded.await {
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "the all-in-one runtime failed while stopping");
        }
        Err(err) => tracing::warn!(error = %err, "the all-in-one runtime panicked"),
        Ok(Ok(())) => {}
    }
}

/// The loopback address to reach a listener bound to `addr` (which may be unspecified).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}
