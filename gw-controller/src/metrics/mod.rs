//! The controller's own metrics, served on the admin address at `GET /metrics`: what an
//! operator alerts on.
//!
//! - [`AdminMetrics`]: admin API requests by route template, method and status;
//! - [`StoreMetrics`] through [`MeasuredStore`]: the latency and the failures of every store
//!   operation, whatever the backend;
//! - [`FleetMetrics`]: configurations runtimes rejected, and Hellos this controller refused;
//! - [`Sampler`]: what is read when `/metrics` is scraped: the connection pool, the change
//!   feed's lag behind the store, and the fleet by group and state.
//!
//! Label values are bounded: routes are the router's templates (never a raw path), methods
//! and statuses are a small set, and groups are valid group names, at most
//! [`MAX_GROUP_SERIES`] of them ([`GroupLabels`]). The metrics are registered into the
//! registry the caller passes in, never a global one.

mod admin;
mod fleet;
mod sampler;
mod store;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::registry::Registry;

pub use admin::{AdminMetrics, UNMATCHED};
pub use fleet::FleetMetrics;
pub use sampler::Sampler;
pub use store::{MeasuredStore, StoreMetrics};

/// The most gateway groups with series of their own; the others count as [`OTHER_GROUPS`].
pub const MAX_GROUP_SERIES: usize = 1000;

/// The `group` label of the groups beyond [`MAX_GROUP_SERIES`]; `_` cannot start a group name.
pub const OTHER_GROUPS: &str = "_other";

/// The `group` label of a runtime whose group is not a valid name (a refused Hello's).
pub const INVALID_GROUP: &str = "_invalid";

/// The `group` label values in use: a valid group name keeps its own until
/// [`MAX_GROUP_SERIES`] names have one; the rest share [`OTHER_GROUPS`]. A name that is not
/// valid (only a refused Hello carries one) is [`INVALID_GROUP`], so that nothing a runtime
/// sends reaches the exposition unchecked.
#[derive(Debug, Default)]
pub struct GroupLabels {
    named: Mutex<HashSet<String>>,
}

impl GroupLabels {
    /// The label of `group`.
    pub fn label(&self, group: &str) -> String {
        if gw_sync::validate_group(group).is_err() {
            return INVALID_GROUP.to_string();
        }
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        if named.contains(group) {
            return group.to_string();
        }
        if named.len() < MAX_GROUP_SERIES {
            named.insert(group.to_string());
            return group.to_string();
        }
        OTHER_GROUPS.to_string()
    }
}

/// Every metric of this module, registered together.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    /// Admin API requests.
    pub admin: AdminMetrics,
    /// Store operations (wrap the store in a [`MeasuredStore`] with them).
    pub store: StoreMetrics,
    /// Rejections and refusals of runtimes.
    pub fleet: FleetMetrics,
    /// What is read at each scrape.
    pub sampler: Arc<Sampler>,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let groups = Arc::new(GroupLabels::default());
        let sampler = Arc::new(Sampler::new(Arc::clone(&groups)));
        registry.register_collector(Box::new(Arc::clone(&sampler)));
        Self {
            admin: AdminMetrics::register(registry),
            store: StoreMetrics::register(registry),
            fleet: FleetMetrics::register(registry, groups),
            sampler,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_labels_are_valid_names_and_bounded() {
        let groups = GroupLabels::default();
        assert_eq!(groups.label("default"), "default");
        assert_eq!(groups.label("edge-eu"), "edge-eu");
        // what a refused Hello may carry never reaches the exposition
        assert_eq!(groups.label("a\"} 1\nfake 2"), INVALID_GROUP);
        assert_eq!(groups.label(""), INVALID_GROUP);
        assert_eq!(groups.label("_other"), INVALID_GROUP);
        for i in 0..MAX_GROUP_SERIES {
            let _ = groups.label(&format!("g{i}"));
        }
        assert_eq!(groups.label("one-too-many"), OTHER_GROUPS);
        // those that have a series keep it
        assert_eq!(groups.label("default"), "default");
        assert_eq!(groups.label("g5"), "g5");
    }
}
