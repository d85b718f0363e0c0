//! All-in-one mode: a runtime in the controller's process, connected to the controller's own
//! sync port like any other runtime (the `all-in-one` feature; see
//! [`ControllerOptions::all_in_one`](crate::ControllerOptions::all_in_one)).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use gw_runtime::{ConfigSource, Runtime, RuntimeError, RuntimeOptions};
use tokio::task::JoinHandle;

use crate::admin::AppState;
use crate::{AllInOne, ControllerError, ControllerOptions};

/// Binds the embedded runtime's listeners, hands its state to the admin API (whose
/// `/readyz` waits for it) and runs it until `stopped` completes.
pub(crate) async fn start(
    aio: &AllInOne,
    options: &ControllerOptions,
    node_id: &str,
    sync_addr: SocketAddr,
    state: &AppState,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<Result<(), RuntimeError>>, ControllerError> {
    let mut runtime_options = RuntimeOptions::new(ConfigSource::Controllers(vec![
        reachable(sync_addr).to_string(),
    ]));
    runtime_options.node_id = Some(format!("{node_id}-runtime"));
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
