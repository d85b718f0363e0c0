//! The protocol between gw controllers and runtimes.
//!
//! - [`proto`]: the generated messages and gRPC service (`proto/gw/sync/v1/sync.proto`,
//!   compiled at build time by protox, so no `protoc` is needed).
//! - [`state`]: the desired state a controller serves and the per-group deltas computed
//!   from it.
//! - [`server`]: one session per runtime stream: Hello, then a Snapshot or Delta, then one
//!   message per change, each acknowledged; heartbeats both ways; fleet events reported to
//!   a [`server::FleetObserver`].
//! - [`client`]: the runtime side: connects to any of several controllers, resumes from its
//!   applied revision, reconnects with backoff and jitter, and hands configurations to an
//!   [`client::Applier`].
#![warn(missing_docs)]

pub mod client;
pub mod server;
pub mod state;

/// The generated protocol types.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("gw.sync.v1");
}

/// The major version of the protocol; runtimes and controllers must agree on it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The kind of an API resource.
pub const KIND_API: &str = "api";

/// Milliseconds since the Unix epoch, for heartbeats.
fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
