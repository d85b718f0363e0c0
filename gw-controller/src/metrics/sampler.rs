//! What is read when `/metrics` is scraped: the connection pool, the change feed's lag behind
//! the store, and the fleet by group and state.
//!
//! The fleet is read from the store, as `GET /api/v1/runtimes` reads it, so that runtimes
//! whose controller is gone (`stale`) count too: every controller of a cluster reports the
//! same fleet. A scrape reads the store at most once a second (concurrent scrapes share one
//! read) and waits for it at most [`STORE_TIMEOUT`]; when the store does not answer, the
//! series read from it are left out of that scrape rather than reported stale.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use gw_store::{PoolStatus, Store, StoreError};
use gw_sync::state::DesiredState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::GroupLabels;
use crate::fleet::view;

/// The longest a scrape waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Scrapes closer together than this share one read of the store.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The states of `gw_fleet_runtimes`, as [`view`] classifies runtimes.
const STATES: [&str; 4] = ["connected", "stale", "disconnected", "refused"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetLabels {
    group: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// The runtimes of one group.
#[derive(Debug, Default, Clone, Copy)]
struct GroupSample {
    /// By [`STATES`].
    runtimes: [i64; 4],
    /// The most revisions a connected runtime is behind.
    max_lag: i64,
}

/// What was read from the store.
#[derive(Debug, Clone)]
struct StoreSample {
    newest: i64,
    /// `None` before the desired state is loaded.
    feed: Option<FeedSample>,
    fleet: BTreeMap<String, GroupSample>,
}

#[derive(Debug, Clone, Copy)]
struct FeedSample {
    lag: i64,
    /// `None` when the oldest change not applied is no longer in the change log.
    lag_seconds: Option<f64>,
}

#[derive(Debug, Default)]
struct Sample {
    controller_revision: Option<i64>,
    pool: Option<PoolStatus>,
    store: Option<StoreSample>,
}

/// Reads the store and the fleet for each scrape, and encodes what it read (a
/// [`Collector`] of the controller's registry).
#[derive(Debug)]
pub struct Sampler {
    groups: Arc<GroupLabels>,
    sample: Mutex<Sample>,
    /// When the store was last read; held while it is read.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

impl Sampler {
    /// A sampler whose `group` labels `groups` bounds.
    pub fn new(groups: Arc<GroupLabels>) -> Self {
        Self {
            groups,
            sample: Mutex::new(Sample::default()),
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads `store` (once it is open) and the revision of `desired` (once it is loaded),
    /// unless another scrape did less than a second ago.
    pub async fn refresh(&self, store: Option<&Arc<dyn Store>>, desired: Option<&DesiredState>) {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL) {
            return;
        }
        // stamped before the reads: a scrape cancelled mid-read (a client that disconnects
        // or resets its stream) must not let the next one read the store again at once
        *refreshed = Some(Instant::now());
        // before the reads below, which take connections of their own
        let pool = store.and_then(|s| s.pool_status());
        let read = match store {
            Some(store) => {
                match tokio::time::timeout(STORE_TIMEOUT, self.read(store.as_ref(), desired)).await
                {
                    Ok(Ok(sample)) => Some(sample),
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "metrics: the store did not answer");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(
                            "metrics: the store did not answer within {STORE_TIMEOUT:?}"
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let sample = Sample {
            controller_revision: desired.map(DesiredState::revision),
            pool,
            store: read,
        };
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = sample;
    }

    async fn read(
        &self,
        store: &dyn Store,
        desired: Option<&DesiredState>,
    ) -> Result<StoreSample, StoreError> {
        let newest = store.current_revision().await?;
        // read after the store's: a change committed in between is not counted as lag
        let feed = match desired.map(DesiredState::revision) {
            None => None,
            Some(applied) if applied >= newest => Some(FeedSample {
                lag: 0,
                lag_seconds: Some(0.0),
            }),
            Some(applied) => {
                let lag_seconds = match store.changes_since(applied, 1).await {
                    Ok(changes) => Some(changes.first().map_or(0.0, |oldest| {
                        (chrono::Utc::now() - oldest.at)
                            .to_std()
                            .unwrap_or_default()
                            .as_secs_f64()
                    })),
                    Err(StoreError::Compacted { .. }) => None,
                    Err(err) => return Err(err),
                };
                Some(FeedSample {
                    lag: newest - applied,
                    lag_seconds,
                })
            }
        };
        let now = SystemTime::now();
        let mut fleet: BTreeMap<String, GroupSample> = BTreeMap::new();
        for record in store.list_runtimes().await? {
            let group = self.groups.label(&record.group);
            let runtime = view(record, newest, now);
            let sample = fleet.entry(group).or_default();
            if let Some(state) = STATES.iter().position(|s| *s == runtime.status) {
                sample.runtimes[state] += 1;
            }
            if runtime.status == "connected" {
                sample.max_lag = sample.max_lag.max(runtime.lag);
            }
        }
        Ok(StoreSample {
            newest,
            feed,
            fleet,
        })
    }
}

fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// A gauge with one series per label set, written in the order given.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

impl Collector for Sampler {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(revision) = sample.controller_revision {
            gauge(
                &mut encoder,
                "gw_controller_revision",
                "The revision of the desired state this controller serves (how far its change \
                 feed watcher has read).",
                revision,
            )?;
        }
        if let Some(pool) = sample.pool {
            family(
                &mut encoder,
                "gw_store_pool_connections",
                "The store's open database connections: in_use or idle (on PostgreSQL the change \
                 listener holds one at all times).",
                [
                    (
                        PoolLabels { state: "in_use" },
                        i64::from(pool.open.saturating_sub(pool.idle)),
                    ),
                    (PoolLabels { state: "idle" }, i64::from(pool.idle)),
                ],
            )?;
            gauge(
                &mut encoder,
                "gw_store_pool_max_connections",
                "The most database connections the store's pool opens.",
                i64::from(pool.max),
            )?;
        }
        let Some(store) = &sample.store else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "gw_store_revision",
            "The newest revision in the store.",
            store.newest,
        )?;
        if let Some(feed) = store.feed {
            gauge(
                &mut encoder,
                "gw_controller_feed_lag_revisions",
                "Revisions in the store that this controller's change feed watcher has not \
                 applied yet.",
                feed.lag,
            )?;
            if let Some(seconds) = feed.lag_seconds {
                gauge(
                    &mut encoder,
                    "gw_controller_feed_lag_seconds",
                    "How long ago the oldest change this controller has not applied yet was \
                     written (0 when it is up to date).",
                    seconds,
                )?;
            }
        }
        family(
            &mut encoder,
            "gw_fleet_runtimes",
            "Runtimes of the whole fleet (as every controller recorded it in the store), by \
             group and state: connected, stale (connected but silent for three heartbeats), \
             disconnected, refused.",
            store.fleet.iter().flat_map(|(group, sample)| {
                STATES.iter().zip(sample.runtimes).map(|(state, count)| {
                    (
                        FleetLabels {
                            group: group.clone(),
                            state,
                        },
                        count,
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "gw_fleet_revision_lag_max",
            "The most revisions a connected runtime of the group is behind the store's newest.",
            store.fleet.iter().map(|(group, sample)| {
                (
                    GroupLabel {
                        group: group.clone(),
                    },
                    sample.max_lag,
                )
            }),
        )?;
        Ok(())
    }
}
