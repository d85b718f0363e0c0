//! What runtimes refuse, and what this controller refuses them:
//! `gw_fleet_rejections_total{group}` and `gw_fleet_refusals_total`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::GroupLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

/// Rejections and refusals, counted by the sessions of this controller.
/// [`FleetMetrics::default`] counts without exporting.
#[derive(Debug, Clone, Default)]
pub struct FleetMetrics {
    rejections: Family<GroupLabel, Counter>,
    refusals: Counter,
    groups: Arc<GroupLabels>,
}

impl FleetMetrics {
    /// Creates the metrics and registers them in `registry`; `groups` bounds the `group`
    /// label.
    pub fn register(registry: &mut Registry, groups: Arc<GroupLabels>) -> Self {
        let metrics = Self {
            groups,
            ..Self::default()
        };
        registry.register(
            "gw_fleet_rejections",
            "Configurations (revisions) that runtimes connected to this controller rejected and \
             did not apply, by group; the runtime keeps serving its previous one",
            metrics.rejections.clone(),
        );
        registry.register(
            "gw_fleet_refusals",
            "Hellos this controller refused (another protocol version, an invalid node id or \
             group; a runtime that tries again counts again); the runtime gets no configuration \
             from it",
            metrics.refusals.clone(),
        );
        metrics
    }

    fn group(&self, group: &str) -> GroupLabel {
        GroupLabel {
            group: self.groups.label(group),
        }
    }

    /// A runtime of `group` connected: its group's series exists from then on (at 0 until a
    /// rejection), so that the first rejection shows in a rate.
    pub fn connected(&self, group: &str) {
        let _ = self.rejections.get_or_create(&self.group(group));
    }

    /// A runtime of `group` rejected a configuration.
    pub fn rejected(&self, group: &str) {
        self.rejections.get_or_create(&self.group(group)).inc();
    }

    /// This controller refused a runtime's Hello (each attempt counts).
    pub fn refused(&self) {
        self.refusals.inc();
    }
}
