//! The operator's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Counters and gauges the controller updates.
#[derive(Clone)]
pub struct Metrics {
    /// Node CIDRs handed out.
    pub allocations: Counter,
    /// Node CIDRs returned to the pool (NodeRoute of a deleted node removed).
    pub releases: Counter,
    /// Node CIDRs a network can hold, by network and family.
    pub capacity: Family<Labels, Gauge>,
    /// Node CIDRs allocated, by network and family.
    pub allocated: Family<Labels, Gauge>,
    /// Duration of one sync pass.
    pub sync_duration: Histogram,
    /// Failed API calls, by operation.
    pub errors: Family<Labels, Counter>,
    /// Writes refused by a resourceVersion precondition.
    pub conflicts: Counter,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Nodes waiting for a CIDR because their pool is exhausted.
    pub waiting_nodes: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under `podnet_operator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            allocations: Counter::default(),
            releases: Counter::default(),
            capacity: Family::default(),
            allocated: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            errors: Family::default(),
            conflicts: Counter::default(),
            leader: Gauge::default(),
            waiting_nodes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("podnet_operator");
        r.register(
            "allocations",
            "Node CIDRs handed out",
            m.allocations.clone(),
        );
        r.register(
            "releases",
            "Node CIDRs returned to their pool",
            m.releases.clone(),
        );
        r.register(
            "pool_capacity",
            "Node CIDRs a pool can hold, per network and family",
            m.capacity.clone(),
        );
        r.register(
            "pool_allocated",
            "Node CIDRs in use, per network and family",
            m.allocated.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Duration of one reconcile pass",
            m.sync_duration.clone(),
        );
        r.register(
            "errors",
            "Failed API calls, per operation",
            m.errors.clone(),
        );
        r.register(
            "conflicts",
            "Writes refused by a resourceVersion precondition",
            m.conflicts.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the lease",
            m.leader.clone(),
        );
        r.register(
            "waiting_nodes",
            "Nodes waiting for a CIDR from an exhausted pool",
            m.waiting_nodes.clone(),
        );
        m
    }

    pub(crate) fn error(&self, op: &str) {
        self.errors
            .get_or_create(&vec![("operation".into(), op.into())])
            .inc();
    }
}
