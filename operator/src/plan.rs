//! The operator's planning core: from one snapshot of the caches and the state a
//! leadership term carries, decide every write the operator should make. Pure — no API
//! calls, no metrics, no clock: `plan` only allocates in the term's in-memory
//! [`Allocator`], and [`SyncState::fold`] takes the writes' outcomes back in. The
//! controller (`controller.rs`) snapshots and sets metrics; the writer (`writer.rs`)
//! performs the jobs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use podnet_common::Named;
use podnet_crds::condition_type::ALLOCATED;
use podnet_crds::{
    ConditionStatus, NodeRoute, NodeRouteStatus, PodNetwork, PodNetworkStatus, PoolUsage,
    QuarantinedCidr, condition_is, condition_since, condition_type, make_condition, reason,
    same_conditions,
};
use tracing::info;

use crate::allocator::{AllocError, Allocator, Family, Problem, Quarantined};
use crate::network::{
    NetworkView, NodeAddresses, NodeIpChoice, choose_network, choose_node_ips, evaluate_networks,
};
use crate::node::NodeFacts;
use crate::route::{RouteFacts, StatusFacts};

/// The NodeRoute conditions the operator owns.
pub(crate) const OWN_CONDITIONS: [&str; 2] =
    [condition_type::ALLOCATED, condition_type::NODE_IPS_VALID];

/// What one pass plans from: the caches' contents at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The pass's clock (quarantine ends are measured against it).
    pub now: Timestamp,
    /// Nodes.
    pub nodes: ByName<NodeFacts>,
    /// NodeRoutes.
    pub noderoutes: ByName<RouteFacts>,
    /// Every PodNetwork.
    pub networks: Vec<Arc<PodNetwork>>,
}

impl Snapshot {
    /// A snapshot of these records, taken at `now`.
    pub fn new(
        now: Timestamp,
        nodes: impl IntoIterator<Item = Arc<NodeFacts>>,
        noderoutes: impl IntoIterator<Item = Arc<RouteFacts>>,
        networks: impl IntoIterator<Item = Arc<PodNetwork>>,
    ) -> Self {
        Self {
            now,
            nodes: ByName::new(nodes),
            noderoutes: ByName::new(noderoutes),
            networks: networks.into_iter().collect(),
        }
    }
}

/// Records sorted by name, found by it (the cache's own records: no key copies).
#[derive(Clone, Debug)]
pub struct ByName<R>(Vec<Arc<R>>);

impl<R> Default for ByName<R> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<R: Named> ByName<R> {
    fn new(records: impl IntoIterator<Item = Arc<R>>) -> Self {
        let mut v: Vec<Arc<R>> = records.into_iter().collect();
        v.sort_unstable_by(|a, b| a.name().cmp(b.name()));
        v.dedup_by(|a, b| a.name() == b.name());
        Self(v)
    }

    /// The record named `name`.
    pub fn get(&self, name: &str) -> Option<&R> {
        self.0
            .binary_search_by(|r| r.name().cmp(name))
            .ok()
            .map(|i| &*self.0[i])
    }

    /// Whether a record is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every record, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &R)> {
        self.0.iter().map(|r| (r.name(), &**r))
    }
}

/// The planning settings ([`crate::controller::ControllerConfig`]'s share of them).
#[derive(Clone, Copy, Debug)]
pub struct PlanConfig {
    /// How long a released node CIDR is held back from other nodes.
    pub quarantine: Duration,
    /// Copy each node's CIDRs into an empty `Node.spec.podCIDRs`.
    pub set_node_pod_cidrs: bool,
}

/// One network's pool usage for one family, for the gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The PodNetwork.
    pub network: String,
    /// The family.
    pub family: Family,
    /// Node CIDRs the pools can hold (0 when the network has no pool of the family).
    pub capacity: i64,
    /// Node CIDRs allocated.
    pub allocated: i64,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// The writes to make, in no particular order (they run concurrently).
    pub jobs: Vec<Job>,
    /// Nodes waiting for a CIDR because their network's pools are exhausted.
    pub waiting: usize,
    /// Every network's usage by family.
    pub usage: Vec<Usage>,
    /// Quarantined CIDRs whose quarantine ended in this pass.
    pub expired: Vec<Quarantined>,
}

/// One write the writer performs.
#[derive(Debug)]
pub enum Job {
    /// Create the NodeRoute of a node that has none, then write its status.
    Create {
        /// Node (and NodeRoute) name.
        name: String,
        /// The Node's uid (the owner reference).
        uid: String,
        /// spec.podNetwork.
        network: Option<String>,
        /// The status to write after the create (boxed, as below).
        status: Box<NodeRouteStatus>,
    },
    /// Apply the operator's part of a NodeRoute's status.
    WriteStatus {
        /// NodeRoute name.
        name: String,
        /// The resourceVersion the status was planned from (the precondition).
        rv: String,
        /// The desired status (boxed: a pass's list holds a job per node, and every
        /// job takes the size of the largest).
        status: Box<NodeRouteStatus>,
    },
    /// Record the network chosen for a node without CIDRs in its spec.
    SetNetwork {
        /// NodeRoute name.
        name: String,
        /// The resourceVersion it was planned from.
        rv: String,
        /// The chosen PodNetwork.
        network: String,
    },
    /// Delete a NodeRoute whose Node is gone (once the API server confirms it).
    DeleteOrphan {
        /// NodeRoute name.
        name: String,
        /// Its uid (the delete's precondition).
        uid: String,
    },
    /// The NodeRoute of a gone node is missing from the cache: confirm with a GET
    /// before its CIDRs go into quarantine.
    ConfirmRelease {
        /// NodeRoute name.
        name: String,
    },
    /// A warning event that needs no write of its own.
    Announce {
        /// The object it is about.
        reference: ObjectReference,
        /// The event's reason.
        reason: &'static str,
        /// The event's text.
        note: String,
    },
    /// Copy a node's CIDRs into its empty `Node.spec.podCIDRs`.
    SetNodePodCidrs {
        /// Node name.
        name: String,
        /// The CIDRs, IPv4 first.
        cidrs: Vec<String>,
    },
    /// Apply a PodNetwork's status.
    NetworkStatus {
        /// PodNetwork name.
        name: String,
        /// The desired status (boxed: it is large, and every job in a pass's list of
        /// thousands would take its size).
        status: Box<PodNetworkStatus>,
        /// The PodNetwork as planned from (its status is the "before" of events).
        pn: Arc<PodNetwork>,
    },
}

impl Job {
    /// Whether the job writes a NodeRoute, so that its outcome touches the per-node
    /// bookkeeping (a PodNetwork or a Node can share its name with a node).
    pub fn is_node_route(&self) -> bool {
        !matches!(
            self,
            Job::NetworkStatus { .. } | Job::SetNodePodCidrs { .. } | Job::Announce { .. }
        )
    }

    /// The name of the object the job is about.
    pub fn name(&self) -> String {
        match self {
            Job::Create { name, .. }
            | Job::WriteStatus { name, .. }
            | Job::SetNetwork { name, .. }
            | Job::DeleteOrphan { name, .. }
            | Job::ConfirmRelease { name }
            | Job::SetNodePodCidrs { name, .. }
            | Job::NetworkStatus { name, .. } => name.clone(),
            Job::Announce { reference, .. } => reference.name.clone().unwrap_or_default(),
        }
    }
}

/// How a job ended, as far as the plan's bookkeeping cares.
#[derive(Debug)]
pub enum Outcome {
    /// Written; the cache will show a resourceVersion other than `before`.
    Written {
        /// NodeRoute name.
        name: String,
        /// The resourceVersion the write was planned from.
        before: String,
    },
    /// The object changed under the write. `adopt`: what the API server has is the
    /// truth (a create or a release that lost a race); else the allocator keeps its own.
    Conflict {
        /// NodeRoute name.
        name: String,
        /// The NodeRoute as the API server has it now (none: gone).
        fresh: Option<Box<NodeRoute>>,
        /// Whether to take the fresh object's CIDRs as the truth.
        adopt: bool,
    },
    /// The orphan NodeRoute is deleted.
    Deleted {
        /// NodeRoute name.
        name: String,
    },
    /// The API server confirmed the NodeRoute gone.
    Released {
        /// NodeRoute name.
        name: String,
    },
    /// Not written (no longer the leader, or the node came back).
    Skipped {
        /// NodeRoute name.
        name: String,
    },
    /// The write failed; the next pass retries.
    Failed {
        /// NodeRoute name.
        name: String,
    },
    /// A write that is not about a NodeRoute (PodNetwork status, Node spec, event).
    Done,
}

#[derive(Debug, Default)]
struct Pending {
    before: String,
}

/// What planning one node's status takes.
#[derive(Clone, Copy)]
struct NodeInput<'a> {
    name: &'a str,
    network: Option<&'a str>,
    ips: &'a NodeIpChoice,
    generation: Option<i64>,
    previous: &'a StatusFacts,
}

/// What the loop carries from pass to pass within one leadership term.
#[derive(Debug, Default)]
pub struct SyncState {
    /// The leadership term this state belongs to.
    pub term: Option<u64>,
    /// The term's allocator, rebuilt from a full list when the term starts.
    pub allocator: Allocator,
    /// NodeRoutes we wrote whose new version the cache has not shown yet.
    pending: HashMap<String, Pending>,
    /// NodeRoutes we are creating or created that the cache has not shown yet.
    pending_create: HashSet<String>,
    /// Releases waiting for the API server to confirm the NodeRoute gone.
    confirming: HashSet<String>,
    /// Node CIDRs handed out since [`SyncState::take_counts`] last ran.
    new_allocations: u64,
    /// Nodes released since [`SyncState::take_counts`] last ran.
    releases: u64,
}

/// Plans one pass: expires quarantines, follows the PodNetworks, allocates what nodes
/// lack, and returns every write that brings the API objects to what the allocator
/// holds. Writes the term already has in flight (the cache does not show them yet) are
/// not planned again.
pub fn plan(snapshot: &Snapshot, state: &mut SyncState, config: &PlanConfig) -> Plan {
    let period = SignedDuration::try_from(config.quarantine).unwrap_or(SignedDuration::MAX);
    let expired = state.allocator.expire_quarantine(snapshot.now, period);
    let views = evaluate_networks(snapshot.networks.iter().map(AsRef::as_ref));
    state.sync_networks(&views);
    let nodes = &snapshot.nodes;
    let noderoutes = &snapshot.noderoutes;
    let mut jobs = Vec::new();
    let mut waiting: HashMap<String, usize> = HashMap::new();

    for (name, nr) in noderoutes.iter() {
        state.pending_create.remove(name);
        if !nodes.contains(name) && !nr.deleting {
            jobs.push(Job::DeleteOrphan {
                name: name.to_string(),
                uid: nr.uid.to_string(),
            });
        }
    }
    // A node whose Node and NodeRoute are both gone releases its CIDRs into
    // quarantine, once the API server confirms the NodeRoute gone (a watch cache can
    // lag behind the list this term started from). A NodeRoute missing while its
    // Node exists is re-created below with the CIDRs the allocator still holds.
    for gone in state
        .allocator
        .nodes()
        .filter(|n| {
            !noderoutes.contains(n)
                && !nodes.contains(n)
                && !state.pending_create.contains(*n)
                && !state.confirming.contains(*n)
        })
        .map(str::to_string)
        .collect::<Vec<_>>()
    {
        state.confirming.insert(gone.clone());
        jobs.push(Job::ConfirmRelease { name: gone });
    }

    // Every node's addresses, decided together: a duplicate is settled by who had
    // it first.
    let mut pod_space: Vec<IpNet> = Vec::new();
    for v in &views {
        pod_space.extend(state.allocator.served(&v.name));
    }
    let addresses: Vec<NodeAddresses> = nodes
        .iter()
        .map(|(name, node)| NodeAddresses {
            name,
            created: node.created,
            candidates: &node.ips,
            previous: noderoutes
                .get(name)
                .map_or(&[], |nr| &nr.status.node_ips[..]),
        })
        .collect();
    let ip_choices = choose_node_ips(&addresses, &pod_space);
    drop(addresses);
    let none = StatusFacts::default();

    for ((name, node), ips) in nodes.iter().zip(ip_choices) {
        let Some(nr) = noderoutes.get(name) else {
            if state.pending_create.contains(name) {
                continue;
            }
            let network = choose_network(&node.labels, &views).map(|v| v.name.clone());
            // A new object starts at generation 1.
            let status = state.plan_status(
                &NodeInput {
                    name,
                    network: network.as_deref(),
                    ips: &ips,
                    generation: Some(1),
                    previous: &none,
                },
                &views,
                &mut waiting,
            );
            state.pending_create.insert(name.to_string());
            jobs.push(Job::Create {
                name: name.to_string(),
                uid: node.uid.to_string(),
                network,
                status: Box::new(status),
            });
            continue;
        };
        if let Some(p) = state.pending.get(name) {
            if *nr.resource_version == *p.before {
                continue; // our own write is not in the cache yet
            }
            state.pending.remove(name);
        }
        let in_status = &nr.status.pod_cidrs[..];
        if in_status != state.allocator.holdings(name) {
            if state.allocator.network_of(name).is_none()
                && state.allocator.holdings(name).is_empty()
            {
                // Not known to this term (created after its list): adopt it, and let
                // the problems it may have be reported.
                state
                    .allocator
                    .restore(name, nr.network.as_deref(), in_status);
            } else {
                // Changed by someone else during this term (by hand): the node keeps
                // what it was allocated; the status is written back below.
                jobs.push(Job::Announce {
                    reference: nr.object_ref(),
                    reason: reason::INVALID_ALLOCATION,
                    note: format!(
                        "status.podCIDRs was changed outside podnet-operator to [{}]; a node's CIDRs never change while it exists: restored [{}]",
                        join(in_status),
                        join(state.allocator.holdings(name))
                    ),
                });
            }
        }
        let network = match nr.network.as_deref() {
            Some(n) => Some(n.to_string()),
            None => choose_network(&node.labels, &views).map(|v| v.name.clone()),
        };
        if nr.network.as_deref() != network.as_deref()
            && network.is_some()
            && state.allocator.holdings(name).is_empty()
        {
            jobs.push(Job::SetNetwork {
                name: name.to_string(),
                rv: nr.resource_version.to_string(),
                network: network.unwrap_or_default(),
            });
            continue;
        }
        let desired = state.plan_status(
            &NodeInput {
                name,
                network: network.as_deref(),
                ips: &ips,
                generation: nr.generation,
                previous: &nr.status,
            },
            &views,
            &mut waiting,
        );
        let allocated = condition_is(&desired.conditions, ALLOCATED, ConditionStatus::True);
        if config.set_node_pod_cidrs
            && !node.has_pod_cidrs
            && allocated
            && !desired.pod_cidrs.is_empty()
        {
            jobs.push(Job::SetNodePodCidrs {
                name: name.to_string(),
                cidrs: desired.pod_cidrs.clone(),
            });
        }
        if !nr.status.same_as(&desired) {
            jobs.push(Job::WriteStatus {
                name: name.to_string(),
                rv: nr.resource_version.to_string(),
                status: Box::new(desired),
            });
        }
    }

    let mut usage = Vec::new();
    for view in &views {
        let waiting_here = waiting.get(&view.name).copied().unwrap_or(0);
        let Some(pn) = snapshot.networks.iter().find(|p| p.name_any() == view.name) else {
            continue;
        };
        let desired = state.network_status(view, pn, waiting_here);
        for (family, u) in [(Family::V4, desired.ipv4), (Family::V6, desired.ipv6)] {
            usage.push(Usage {
                network: view.name.clone(),
                family,
                capacity: u.map_or(0, |u| u.capacity),
                allocated: u.map_or(0, |u| u.allocated),
            });
        }
        let previous = pn.status.clone().unwrap_or_default();
        if !same_network_status(&previous, &desired) {
            jobs.push(Job::NetworkStatus {
                name: view.name.clone(),
                status: Box::new(desired),
                pn: Arc::clone(pn),
            });
        }
    }
    Plan {
        jobs,
        waiting: waiting.values().sum(),
        usage,
        expired,
    }
}

/// Whether a NodeRoute lacks a CIDR of a family its network serves (a new leader
/// fences it before allocating).
pub(crate) fn needs_allocation(
    nr: &RouteFacts,
    allocator: &Allocator,
    views: &[NetworkView],
) -> bool {
    let held = allocator.holdings(&nr.name);
    let Some(view) = nr
        .network
        .as_deref()
        .and_then(|n| views.iter().find(|v| v.name == n))
    else {
        return held.is_empty();
    };
    view.pools
        .families()
        .iter()
        .any(|f| !held.iter().any(|c| Family::of(c) == *f))
}

fn same_network_status(previous: &PodNetworkStatus, desired: &PodNetworkStatus) -> bool {
    previous.observed_generation == desired.observed_generation
        && previous.nodes == desired.nodes
        && previous.ipv4 == desired.ipv4
        && previous.ipv6 == desired.ipv6
        && previous.served_cidrs == desired.served_cidrs
        && previous.quarantine == desired.quarantine
        && same_conditions(&previous.conditions, &desired.conditions)
}

/// CIDRs as a comma-separated list.
pub(crate) fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl SyncState {
    /// The state a new leadership term starts with: an allocator rebuilt from a full
    /// list, nothing in flight.
    pub fn for_term(term: u64, allocator: Allocator) -> Self {
        Self {
            term: Some(term),
            allocator,
            ..Default::default()
        }
    }

    /// Counts since the last call: node CIDRs handed out, nodes released.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.new_allocations),
            std::mem::take(&mut self.releases),
        )
    }

    fn sync_networks(&mut self, views: &[NetworkView]) {
        let known: Vec<String> = self.allocator.network_names().map(str::to_string).collect();
        for name in known {
            if !views.iter().any(|v| v.name == name) {
                self.allocator.remove_network(&name);
            }
        }
        for v in views {
            if self.allocator.network(&v.name) != Some(&v.pools) {
                self.allocator.set_network(&v.name, v.pools.clone());
            }
        }
    }
    /// The status the operator wants for a node, allocating in memory what is missing.
    fn plan_status(
        &mut self,
        input: &NodeInput,
        views: &[NetworkView],
        waiting: &mut HashMap<String, usize>,
    ) -> NodeRouteStatus {
        let NodeInput {
            name,
            network,
            ips,
            generation,
            previous,
        } = *input;
        let view = network.and_then(|n| views.iter().find(|v| v.name == n));
        let (status, reason, message) = match (network, view) {
            (None, _) => (
                ConditionStatus::False,
                reason::NO_POD_NETWORK,
                "no PodNetwork selects this node".to_string(),
            ),
            (Some(n), None) => (
                ConditionStatus::False,
                reason::UNKNOWN_POD_NETWORK,
                format!("PodNetwork {n} does not exist"),
            ),
            (Some(n), Some(v))
                if v.invalid.is_some() && self.allocator.holdings(name).is_empty() =>
            {
                (
                    ConditionStatus::False,
                    reason::POD_NETWORK_INVALID,
                    format!(
                        "PodNetwork {n} is invalid: {}",
                        v.invalid.clone().unwrap_or_default()
                    ),
                )
            }
            (Some(n), Some(v)) => {
                let before = self.allocator.holdings(name).len();
                let result = if v.invalid.is_some() {
                    Ok(self.allocator.holdings(name).to_vec())
                } else {
                    self.allocator.allocate(name, n)
                };
                match result {
                    Err(e @ AllocError::Exhausted { .. }) => {
                        *waiting.entry(n.to_string()).or_default() += 1;
                        (
                            ConditionStatus::False,
                            reason::POOL_EXHAUSTED,
                            e.to_string(),
                        )
                    }
                    Err(e) => (
                        ConditionStatus::False,
                        reason::ALLOCATION_FAILED,
                        e.to_string(),
                    ),
                    Ok(held) => {
                        if held.len() > before {
                            // counted once per newly handed-out CIDR
                            self.new_allocations += (held.len() - before) as u64;
                        }
                        self.describe_holdings(name, n, &held)
                    }
                }
            }
        };
        let condition = |type_, status, reason, message| {
            condition_since(
                previous.since(type_, status),
                type_,
                status,
                reason,
                message,
                generation,
            )
        };
        let ips_condition = if ips.refused.is_empty() {
            condition(
                condition_type::NODE_IPS_VALID,
                ConditionStatus::True,
                reason::VALID_NODE_IPS,
                format!(
                    "peers route this node's pods through {}",
                    ips.ips.join(", ")
                ),
            )
        } else {
            condition(
                condition_type::NODE_IPS_VALID,
                ConditionStatus::False,
                reason::INVALID_NODE_IP,
                format!(
                    "refused: {}; in force: [{}]",
                    ips.refused.join("; "),
                    ips.ips.join(", ")
                ),
            )
        };
        NodeRouteStatus {
            node_ips: ips.ips.clone(),
            pod_cidrs: self
                .allocator
                .holdings(name)
                .iter()
                .map(ToString::to_string)
                .collect(),
            conditions: vec![condition(ALLOCATED, status, reason, message), ips_condition],
            observed_generation: generation,
            // The daemon's field; the operator's apply never names it.
            firewall: None,
        }
    }

    fn describe_holdings(
        &self,
        name: &str,
        network: &str,
        held: &[IpNet],
    ) -> (ConditionStatus, &'static str, String) {
        let problems = self.allocator.problems(name);
        let list: Vec<String> = held.iter().map(ToString::to_string).collect();
        if problems.is_empty() {
            return (
                ConditionStatus::True,
                reason::ALLOCATED,
                format!("{} from PodNetwork {network}", list.join(", ")),
            );
        }
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let only_draining = problems
            .iter()
            .all(|p| matches!(p, Problem::Draining { .. }));
        if only_draining {
            (ConditionStatus::True, reason::DRAINING, text.join("; "))
        } else {
            (
                ConditionStatus::False,
                reason::INVALID_ALLOCATION,
                format!("{}; left as it is", text.join("; ")),
            )
        }
    }

    /// The status the operator wants for a PodNetwork.
    fn network_status(
        &self,
        view: &NetworkView,
        pn: &PodNetwork,
        waiting: usize,
    ) -> PodNetworkStatus {
        let previous = pn.status.clone().unwrap_or_default();
        let generation = view.generation;
        let usage = |family: Family| {
            view.pools.families().contains(&family).then(|| PoolUsage {
                capacity: view.pools.capacity(family),
                allocated: self.allocator.allocated(&view.name, family),
            })
        };
        let c = |t: &str, s: ConditionStatus, r: &str, m: String| {
            make_condition(&previous.conditions, t, s, r, m, generation)
        };
        let draining = self.allocator.draining(&view.name);
        let conditions = vec![
            match &view.invalid {
                Some(why) => c(
                    condition_type::READY,
                    ConditionStatus::False,
                    reason::INVALID,
                    why.clone(),
                ),
                None => c(
                    condition_type::READY,
                    ConditionStatus::True,
                    reason::ALLOCATING,
                    "the network serves allocations".into(),
                ),
            },
            match &view.invalid {
                Some(why) => c(
                    condition_type::INVALID,
                    ConditionStatus::True,
                    reason::REJECTED,
                    why.clone(),
                ),
                None => c(
                    condition_type::INVALID,
                    ConditionStatus::False,
                    reason::VALID,
                    "the spec is valid".into(),
                ),
            },
            if waiting > 0 {
                c(
                    condition_type::EXHAUSTED,
                    ConditionStatus::True,
                    reason::POOL_EXHAUSTED,
                    format!(
                        "{waiting} node(s) wait for a CIDR: add a CIDR to spec.cidrs or remove nodes"
                    ),
                )
            } else {
                c(
                    condition_type::EXHAUSTED,
                    ConditionStatus::False,
                    reason::CAPACITY_AVAILABLE,
                    "every selected node has its CIDRs".into(),
                )
            },
            if draining.is_empty() {
                c(
                    condition_type::DRAINING,
                    ConditionStatus::False,
                    reason::NO_DRAINING_CIDRS,
                    "every node CIDR lies in spec.cidrs".into(),
                )
            } else {
                let list: Vec<String> = draining.iter().map(ToString::to_string).collect();
                c(
                    condition_type::DRAINING,
                    ConditionStatus::True,
                    reason::CIDR_REMOVED_WHILE_IN_USE,
                    format!(
                        "nodes still use {} outside spec.cidrs; they keep them until they leave",
                        list.join(", ")
                    ),
                )
            },
        ];
        PodNetworkStatus {
            observed_generation: generation,
            conditions,
            nodes: self.allocator.nodes_of(&view.name),
            ipv4: usage(Family::V4),
            ipv6: usage(Family::V6),
            served_cidrs: self
                .allocator
                .served(&view.name)
                .iter()
                .map(ToString::to_string)
                .collect(),
            quarantine: self
                .allocator
                .quarantined(&view.name)
                .into_iter()
                .map(|q| QuarantinedCidr {
                    cidr: q.cidr.to_string(),
                    node: q.node.clone(),
                    released_at: Time(q.released_at),
                })
                .collect(),
        }
    }

    /// Takes one job's outcome back into the term's bookkeeping; `now` starts the
    /// quarantine of a released node's CIDRs.
    pub fn fold(&mut self, outcome: Outcome, now: Timestamp) {
        match outcome {
            Outcome::Written { name, before, .. } => {
                self.pending.insert(name, Pending { before });
            }
            Outcome::Conflict { name, fresh, adopt } => {
                self.pending.remove(&name);
                self.pending_create.remove(&name);
                self.confirming.remove(&name);
                let known = self.allocator.network_of(&name).is_some()
                    || !self.allocator.holdings(&name).is_empty();
                // A NodeRoute that vanished under a write keeps its CIDRs here: it is
                // re-created for its Node, or released once confirmed gone.
                if let Some(nr) = fresh
                    && (adopt || !known)
                {
                    let facts = RouteFacts::from(&*nr);
                    self.allocator.restore(
                        &name,
                        facts.network.as_deref(),
                        &facts.status.pod_cidrs,
                    );
                }
            }
            Outcome::Deleted { name } | Outcome::Released { name } => {
                self.confirming.remove(&name);
                let quarantined = self.allocator.release_to_quarantine(&name, now);
                self.releases += 1;
                info!(
                    node = %name,
                    quarantined = %join(&quarantined),
                    "node gone: its NodeRoute is deleted and its CIDRs are in quarantine"
                );
            }
            Outcome::Skipped { name } | Outcome::Failed { name } => {
                self.pending_create.remove(&name);
                self.confirming.remove(&name);
            }
            Outcome::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use podnet_crds::{NodeRouteSpec, PodNetworkSpec, find_condition};

    use super::*;

    const CONFIG: PlanConfig = PlanConfig {
        quarantine: Duration::from_secs(300),
        set_node_pod_cidrs: false,
    };

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn node(name: &str, ip: &str) -> Arc<NodeFacts> {
        Arc::new(NodeFacts {
            name: name.into(),
            uid: format!("uid-{name}").into(),
            ips: vec![ip.into()],
            ..Default::default()
        })
    }

    fn network(name: &str, cidrs: &[&str], mask: u8) -> Arc<PodNetwork> {
        let mut spec = PodNetworkSpec {
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            node_mask_size: Default::default(),
            node_selector: None,
            masquerade: Default::default(),
            mtu: None,
        };
        spec.node_mask_size.ipv4 = mask;
        let mut pn = PodNetwork::new(name, spec);
        pn.metadata.generation = Some(1);
        Arc::new(pn)
    }

    fn noderoute(name: &str, network: &str, rv: &str, status: NodeRouteStatus) -> Arc<RouteFacts> {
        Arc::new(RouteFacts::from(noderoute_object(
            name, network, rv, status,
        )))
    }

    fn noderoute_object(name: &str, network: &str, rv: &str, status: NodeRouteStatus) -> NodeRoute {
        let mut nr = NodeRoute::new(
            name,
            NodeRouteSpec {
                node_name: name.into(),
                pod_network: Some(network.into()),
            },
        );
        nr.metadata.resource_version = Some(rv.into());
        nr.metadata.uid = Some(format!("nr-{name}"));
        nr.metadata.generation = Some(1);
        nr.status = Some(status);
        nr
    }

    fn created(plan: &Plan) -> BTreeMap<String, NodeRouteStatus> {
        plan.jobs
            .iter()
            .filter_map(|j| match j {
                Job::Create { name, status, .. } => Some((name.clone(), (**status).clone())),
                _ => None,
            })
            .collect()
    }

    fn allocated(status: &NodeRouteStatus) -> (String, String) {
        find_condition(&status.conditions, ALLOCATED)
            .map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap_or_default()
    }

    /// A node with neither NodeRoute nor CIDR gets both planned: the CIDR from the pool,
    /// its address as nodeIP, Allocated=True; the network's status counts it.
    #[test]
    fn new_node_is_created_with_a_cidr_and_the_network_counts_it() {
        let snap = Snapshot::new(
            at(0),
            [node("n1", "192.0.2.1"), node("n2", "192.0.2.2")],
            [],
            [network("pods", &["10.244.0.0/16"], 24)],
        );
        let mut state = SyncState::for_term(1, Allocator::new());
        let plan = plan(&snap, &mut state, &CONFIG);
        let made = created(&plan);
        assert_eq!(made.len(), 2, "{:?}", plan.jobs);
        assert_eq!(made["n1"].node_ips, vec!["192.0.2.1"]);
        assert_eq!(made["n1"].pod_cidrs.len(), 1);
        assert_ne!(made["n1"].pod_cidrs, made["n2"].pod_cidrs);
        for status in made.values() {
            let cidr = net(&status.pod_cidrs[0]);
            assert_eq!(cidr.prefix_len(), 24);
            assert!(net("10.244.0.0/16").contains(&cidr));
            assert_eq!(allocated(status), ("True".into(), reason::ALLOCATED.into()));
        }
        assert_eq!(plan.waiting, 0);
        let v4 = plan
            .usage
            .iter()
            .find(|u| u.family == Family::V4)
            .unwrap_or_else(|| panic!("v4 usage"));
        assert_eq!((v4.capacity, v4.allocated), (256, 2));
        assert!(
            plan.jobs
                .iter()
                .any(|j| matches!(j, Job::NetworkStatus { status, .. } if status.nodes == 2))
        );
        assert_eq!(state.take_counts(), (2, 0));

        // The creates are in flight: the same snapshot plans no second create.
        let again = super::plan(&snap, &mut state, &CONFIG);
        assert!(created(&again).is_empty(), "{:?}", again.jobs);
    }

    /// A pool that holds one node CIDR: the second node waits, says why, and the
    /// network reports itself exhausted.
    #[test]
    fn exhausted_pool_makes_the_node_wait_and_the_network_say_so() {
        let snap = Snapshot::new(
            at(0),
            [node("a", "192.0.2.1"), node("b", "192.0.2.2")],
            [],
            [network("tiny", &["10.9.0.0/24"], 24)],
        );
        let mut state = SyncState::for_term(1, Allocator::new());
        let plan = plan(&snap, &mut state, &CONFIG);
        let made = created(&plan);
        assert_eq!(made["a"].pod_cidrs, vec!["10.9.0.0/24"]);
        assert!(made["b"].pod_cidrs.is_empty());
        assert_eq!(
            allocated(&made["b"]),
            ("False".into(), reason::POOL_EXHAUSTED.into())
        );
        assert_eq!(plan.waiting, 1);
        let exhausted = plan.jobs.iter().find_map(|j| match j {
            Job::NetworkStatus { status, .. } => {
                find_condition(&status.conditions, condition_type::EXHAUSTED).cloned()
            }
            _ => None,
        });
        let exhausted = exhausted.unwrap_or_else(|| panic!("the network's status is planned"));
        assert_eq!(exhausted.status, "True");
        assert!(
            exhausted.message.contains("1 node(s) wait"),
            "{}",
            exhausted.message
        );
    }

    /// The safety rule: a status edited by hand never moves a node's CIDRs. The plan
    /// writes the allocator's holding back and warns; it does not adopt the edit.
    #[test]
    fn hand_edited_status_is_restored_and_announced() {
        let mut allocator = Allocator::new();
        let pn = network("pods", &["10.244.0.0/16"], 24);
        let views = evaluate_networks([pn.as_ref()]);
        allocator.set_network("pods", views[0].pools.clone());
        allocator.restore("n1", Some("pods"), &[net("10.244.7.0/24")]);
        let mut state = SyncState::for_term(1, allocator);
        let edited = NodeRouteStatus {
            node_ips: vec!["192.0.2.1".into()],
            pod_cidrs: vec!["10.244.99.0/24".into()],
            ..Default::default()
        };
        let snap = Snapshot::new(
            at(0),
            [node("n1", "192.0.2.1")],
            [noderoute("n1", "pods", "42", edited)],
            [pn],
        );
        let plan = plan(&snap, &mut state, &CONFIG);
        let announced = plan.jobs.iter().any(|j| {
            matches!(j, Job::Announce { reason: r, note, .. }
                if *r == reason::INVALID_ALLOCATION && note.contains("restored [10.244.7.0/24]"))
        });
        assert!(announced, "{:?}", plan.jobs);
        let written = plan.jobs.iter().find_map(|j| match j {
            Job::WriteStatus { name, rv, status } if name == "n1" => Some((rv, status)),
            _ => None,
        });
        let (rv, status) = written.unwrap_or_else(|| panic!("the status is written back"));
        assert_eq!(
            rv, "42",
            "the write is conditional on the version planned from"
        );
        assert_eq!(status.pod_cidrs, vec!["10.244.7.0/24"]);
        assert_eq!(state.allocator.holdings("n1"), [net("10.244.7.0/24")]);
    }

    /// A write in flight is not planned twice; once the cache shows another version,
    /// the node is planned again.
    #[test]
    fn written_status_waits_for_the_cache() {
        let snap = Snapshot::new(
            at(0),
            [node("n1", "192.0.2.1")],
            [noderoute("n1", "pods", "7", NodeRouteStatus::default())],
            [network("pods", &["10.244.0.0/16"], 24)],
        );
        let mut state = SyncState::for_term(1, Allocator::new());
        let first = plan(&snap, &mut state, &CONFIG);
        assert!(
            first
                .jobs
                .iter()
                .any(|j| matches!(j, Job::WriteStatus { .. }))
        );
        state.fold(
            Outcome::Written {
                name: "n1".into(),
                before: "7".into(),
            },
            at(1),
        );
        let second = plan(&snap, &mut state, &CONFIG);
        assert!(
            !second
                .jobs
                .iter()
                .any(|j| matches!(j, Job::WriteStatus { .. })),
            "{:?}",
            second.jobs
        );
    }

    /// A NodeRoute without its Node is deleted; its CIDR goes into quarantine (held
    /// from other nodes) and comes free when the quarantine ends.
    #[test]
    fn orphan_is_deleted_and_its_cidr_quarantined_then_freed() {
        let pn = network("tiny", &["10.9.0.0/24"], 24);
        let status = NodeRouteStatus {
            pod_cidrs: vec!["10.9.0.0/24".into()],
            ..Default::default()
        };
        let mut allocator = Allocator::new();
        allocator.set_network("tiny", evaluate_networks([pn.as_ref()])[0].pools.clone());
        allocator.restore("old", Some("tiny"), &[net("10.9.0.0/24")]);
        let mut state = SyncState::for_term(1, allocator);
        let snap = Snapshot::new(
            at(0),
            [],
            [noderoute("old", "tiny", "3", status)],
            [Arc::clone(&pn)],
        );
        let plan1 = plan(&snap, &mut state, &CONFIG);
        assert!(
            plan1.jobs.iter().any(
                |j| matches!(j, Job::DeleteOrphan { name, uid } if name == "old" && uid == "nr-old")
            ),
            "{:?}",
            plan1.jobs
        );
        state.fold(Outcome::Deleted { name: "old".into() }, at(10));
        assert_eq!(state.take_counts(), (0, 1));

        // A new node during the quarantine waits: the only CIDR is held back.
        let during = Snapshot::new(at(100), [node("new", "192.0.2.9")], [], [Arc::clone(&pn)]);
        let plan2 = plan(&during, &mut state, &CONFIG);
        assert!(plan2.expired.is_empty());
        assert_eq!(
            allocated(&created(&plan2)["new"]),
            ("False".into(), reason::POOL_EXHAUSTED.into())
        );
        state.fold(Outcome::Failed { name: "new".into() }, at(100));

        // After the quarantine it is handed out.
        let after = Snapshot::new(at(311), [node("new", "192.0.2.9")], [], [pn]);
        let plan3 = plan(&after, &mut state, &CONFIG);
        assert_eq!(plan3.expired.len(), 1);
        assert_eq!(created(&plan3)["new"].pod_cidrs, vec!["10.9.0.0/24"]);
    }

    /// A create that lost a race adopts what the API server has.
    #[test]
    fn conflict_with_adopt_takes_the_servers_cidrs() {
        let pn = network("pods", &["10.244.0.0/16"], 24);
        let mut state = SyncState::for_term(1, Allocator::new());
        let snap = Snapshot::new(at(0), [node("n1", "192.0.2.1")], [], [Arc::clone(&pn)]);
        let _ = plan(&snap, &mut state, &CONFIG);
        let theirs = noderoute_object(
            "n1",
            "pods",
            "9",
            NodeRouteStatus {
                pod_cidrs: vec!["10.244.200.0/24".into()],
                ..Default::default()
            },
        );
        state.fold(
            Outcome::Conflict {
                name: "n1".into(),
                fresh: Some(Box::new(theirs)),
                adopt: true,
            },
            at(1),
        );
        assert_eq!(state.allocator.holdings("n1"), [net("10.244.200.0/24")]);
    }
}
