//! Connection admission and lifetimes, shared by every listener of gw (traffic, status,
//! admin, sync).
//!
//! The limits, deadlines and in-flight counts are the [`gw_conn`] crate's, re-exported here
//! so that `gw_core::conn::ConnLimiter` and the rest keep their paths; gw-sync uses that crate
//! directly, without the proxy's. What gw-core adds is HTTP:
//!
//! - [`server`]: a small HTTP server whose connections are bounded by all of the above, for
//!   the control surfaces (admin API, status port).

pub mod server;

pub use gw_conn::{
    Activity, AddressGuard, ConnLimiter, ConnRefused, ConnSlot, Expired, InFlight, PerAddress,
    accept, address_key,
};
