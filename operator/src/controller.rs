//! The operator's control loop: one task that plans every change from three caches
//! (Nodes, NodeRoutes, PodNetworks) and the in-memory [`Allocator`], then performs the
//! API writes concurrently.
//!
//! Safety against double allocation rests on three rules:
//! 1. Each leadership term starts from a fresh, complete LIST of NodeRoutes (not the
//!    cache) and rebuilds the allocator from it before anything is handed out.
//! 2. Before allocating, the new leader *fences* every NodeRoute that still lacks a CIDR:
//!    it writes its status with a resourceVersion precondition, which changes the
//!    resourceVersion, so a write a paused or killed predecessor still has in flight for
//!    that NodeRoute (carrying the old resourceVersion) is refused by the API server.
//! 3. Every write carries the resourceVersion it was planned from, and happens only while
//!    [`Leadership::is_leader`] holds, checked right before the request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use podnet_common::{ApiClients, Health, spawn_reflector};
use podnet_crds::{
    API_VERSION, ConditionStatus, NodeRoute, NodeRouteSpec, NodeRouteStatus, PodNetwork,
    PodNetworkStatus, PoolUsage, QuarantinedCidr, condition_is, condition_type, find_condition,
    make_condition, reason, same_conditions,
};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, instrument, warn};

use crate::allocator::{AllocError, Allocator, Family, Problem, Quarantined};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::network::{
    NetworkView, NodeAddresses, choose_network, choose_node_ips, evaluate_networks, node_ips,
};

/// The field manager of every status the operator applies.
pub const FIELD_MANAGER: &str = "podnet-operator";
/// The NodeRoute conditions the operator owns.
const OWN_CONDITIONS: [&str; 2] = [condition_type::ALLOCATED, condition_type::NODE_IPS_VALID];
use podnet_crds::condition_type::ALLOCATED;

/// Tunables of the control loop.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// API writes in flight at once.
    pub concurrency: usize,
    /// A full pass runs at least this often, events or not.
    pub resync: Duration,
    /// Also copy each node's CIDRs into an empty `Node.spec.podCIDRs`, for components
    /// that read it (kube-proxy's cluster CIDR detection, some CNI plugins). Off by default.
    pub set_node_pod_cidrs: bool,
    /// How long a released node CIDR is held back from other nodes (pods with addresses
    /// from it may still run).
    pub quarantine: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            resync: Duration::from_secs(60),
            set_node_pod_cidrs: false,
            quarantine: Duration::from_secs(300),
        }
    }
}

/// Errors of the control loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Leadership was lost while starting a term.
    #[error("leadership lost")]
    NotLeader,
    /// Fencing could not finish.
    #[error("could not fence NodeRoute {0}")]
    Fence(String),
}

/// The operator: caches, leadership, and what it reports.
pub struct Operator {
    client: Client,
    nodes: Store<Node>,
    noderoutes: Store<NodeRoute>,
    networks: Store<PodNetwork>,
    notify: Arc<Notify>,
    leadership: Leadership,
    metrics: Metrics,
    recorder: Recorder,
    health: Arc<Health>,
    config: ControllerConfig,
}

/// Keeps only what the operator reads from a Node (name, uid, labels, addresses): at
/// thousands of nodes the rest (images, conditions, managed fields) dominates memory.
fn strip_node(node: &mut Node) {
    let addresses = node.status.take().and_then(|s| s.addresses);
    node.status = Some(NodeStatus {
        addresses,
        ..Default::default()
    });
    // Only spec.podCIDRs is read (for the optional copy into it).
    node.spec = node
        .spec
        .take()
        .map(|spec| k8s_openapi::api::core::v1::NodeSpec {
            pod_cidrs: spec.pod_cidrs,
            ..Default::default()
        });
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    obj.meta_mut().annotations = None;
}

impl Operator {
    /// Starts the watches; the loop itself runs in [`Operator::run`].
    pub fn new(
        clients: ApiClients,
        leadership: Leadership,
        metrics: Metrics,
        health: Arc<Health>,
        identity: &str,
        config: ControllerConfig,
    ) -> Self {
        let notify = Arc::new(Notify::new());
        let client = clients.request;
        let nodes = spawn_reflector(
            Api::<Node>::all(clients.watch.clone()),
            Arc::clone(&notify),
            strip_node,
        );
        let noderoutes = spawn_reflector(
            Api::<NodeRoute>::all(clients.watch.clone()),
            Arc::clone(&notify),
            strip_meta,
        );
        let networks = spawn_reflector(
            Api::<PodNetwork>::all(clients.watch),
            Arc::clone(&notify),
            strip_meta,
        );
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.to_string()),
            },
        );
        Self {
            client,
            nodes,
            noderoutes,
            networks,
            notify,
            leadership,
            metrics,
            recorder,
            health,
            config,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let ready = async {
            let _ = self.nodes.wait_until_ready().await;
            let _ = self.noderoutes.wait_until_ready().await;
            let _ = self.networks.wait_until_ready().await;
        };
        tokio::select! {
            _ = ready => {}
            _ = shutdown.changed() => return,
        }
        self.health.set_ready(true);
        info!("caches synced");
        let mut state = SyncState::default();
        let mut leader_changes = self.leadership.subscribe();
        loop {
            let term = self.leadership.term();
            self.metrics.leader.set(i64::from(term.is_some()));
            match term {
                Some(term) if state.term != Some(term) => {
                    match self.start_term(&mut state, term).await {
                        Ok(()) => continue,
                        Err(e) => {
                            warn!(error = %e, "could not start the leadership term; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                Some(_) => {
                    let started = Instant::now();
                    self.sync_once(&mut state).await;
                    self.metrics
                        .sync_duration
                        .observe(started.elapsed().as_secs_f64());
                }
                None => state.term = None,
            }
            // Wake up when the next quarantine ends, too: a waiting node gets the CIDR
            // then, not at the next resync.
            let quarantine_ends = state.allocator.earliest_quarantine().map(|at| {
                let period =
                    SignedDuration::try_from(self.config.quarantine).unwrap_or(SignedDuration::MAX);
                let left = period - Timestamp::now().duration_since(at);
                Duration::try_from(left).unwrap_or_default() + Duration::from_millis(50)
            });
            let wake = quarantine_ends.map_or(self.config.resync, |d| d.min(self.config.resync));
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = leader_changes.changed() => {}
                _ = tokio::time::sleep(wake) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Rebuilds the allocator from a fresh LIST and fences NodeRoutes without a CIDR.
    #[instrument(skip(self, state))]
    async fn start_term(&self, state: &mut SyncState, term: u64) -> Result<(), Error> {
        let api: Api<NodeRoute> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await?;
        // PodNetworks fresh too: their status holds the served CIDRs and the quarantine.
        let networks = Api::<PodNetwork>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        let views = evaluate_networks(networks.items.iter());
        let mut allocator = Allocator::new();
        for v in &views {
            allocator.set_network(&v.name, v.pools.clone());
        }
        for nr in &list.items {
            allocator.restore(
                &nr.name_any(),
                nr.spec.pod_network.as_deref(),
                &status_cidrs(nr),
            );
        }
        for pn in &networks.items {
            let Some(status) = &pn.status else { continue };
            // Written by an operator that predates servedCIDRs: what nodes hold outside
            // the spec was drained, not forged.
            if status.served_cidrs.is_empty() && status.observed_generation.is_some() {
                allocator.adopt_draining(&pn.name_any());
            }
            for q in &status.quarantine {
                if let Ok(cidr) = q.cidr.parse::<IpNet>() {
                    allocator.hold_quarantined(Quarantined {
                        node: q.node.clone(),
                        network: pn.name_any(),
                        cidr,
                        released_at: q.released_at.0,
                    });
                }
            }
        }
        let to_fence: Vec<NodeRoute> = list
            .items
            .into_iter()
            .filter(|nr| needs_allocation(nr, &allocator, &views))
            .collect();
        let fenced = stream::iter(to_fence)
            .map(|nr| self.fence(nr))
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        for result in fenced {
            match result? {
                Some(fresh) => allocator.restore(
                    &fresh.name_any(),
                    fresh.spec.pod_network.as_deref(),
                    &status_cidrs(&fresh),
                ),
                None => continue,
            }
        }
        *state = SyncState {
            term: Some(term),
            allocator,
            ..Default::default()
        };
        info!(
            term,
            nodes = state.allocator.node_count(),
            "leadership term started: allocator rebuilt from a full list"
        );
        Ok(())
    }

    /// Writes a NodeRoute's status with its own resourceVersion as precondition, so no
    /// older write can land after it. Returns the NodeRoute as it is afterwards.
    async fn fence(&self, mut nr: NodeRoute) -> Result<Option<NodeRoute>, Error> {
        let api: Api<NodeRoute> = Api::all(self.client.clone());
        let name = nr.name_any();
        for _ in 0..5 {
            let status = nr.status.clone().unwrap_or_default();
            let previous = status.conditions.clone();
            let condition = make_condition(
                &previous,
                ALLOCATED,
                ConditionStatus::Unknown,
                reason::PENDING,
                "waiting for an allocation by the new operator leader".into(),
                nr.metadata.generation,
            );
            let mut desired = status.clone();
            desired.conditions = vec![condition];
            if !self.leadership.is_leader() {
                return Err(Error::NotLeader);
            }
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(status_patch(&name, nr.resource_version(), &desired)),
                )
                .await
            {
                Ok(fresh) => return Ok(Some(fresh)),
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    self.metrics.conflicts.inc();
                    match api.get_opt(&name).await? {
                        Some(fresh) => nr = fresh,
                        None => return Ok(None),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Fence(name))
    }

    /// One pass: plan from the caches, write concurrently, fold the outcomes back in.
    async fn sync_once(&self, state: &mut SyncState) {
        let started = Instant::now();
        let now = Timestamp::now();
        let period =
            SignedDuration::try_from(self.config.quarantine).unwrap_or(SignedDuration::MAX);
        for q in state.allocator.expire_quarantine(now, period) {
            info!(node = %q.node, cidr = %q.cidr, "quarantine over: the CIDR can go to any node");
        }
        let views = evaluate_networks(self.networks.state().iter().map(|a| a.as_ref()));
        state.sync_networks(&views);
        let nodes: BTreeMap<String, Arc<Node>> = self
            .nodes
            .state()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        let noderoutes: HashMap<String, Arc<NodeRoute>> = self
            .noderoutes
            .state()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        let mut jobs = Vec::new();
        let mut waiting: HashMap<String, usize> = HashMap::new();

        for (name, nr) in &noderoutes {
            state.pending_create.remove(name);
            if !nodes.contains_key(name) && nr.metadata.deletion_timestamp.is_none() {
                jobs.push(Job::DeleteOrphan {
                    name: name.clone(),
                    uid: nr.uid().unwrap_or_default(),
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
                !noderoutes.contains_key(*n)
                    && !nodes.contains_key(*n)
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
                name: name.clone(),
                created: node.metadata.creation_timestamp.as_ref().map(|t| t.0),
                candidates: node_ips(node),
                previous: noderoutes
                    .get(name)
                    .and_then(|nr| nr.status.as_ref())
                    .map(|s| s.node_ips.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let mut ip_choices = choose_node_ips(&addresses, &pod_space);

        for (name, node) in &nodes {
            let ips = ip_choices.remove(name).unwrap_or_default();
            let Some(nr) = noderoutes.get(name) else {
                if state.pending_create.contains(name) {
                    continue;
                }
                let network = choose_network(node.labels(), &views).map(|v| v.name.clone());
                // A new object starts at generation 1.
                let plan = state.plan_status(
                    &NodeInput {
                        name,
                        network: network.as_deref(),
                        ips: &ips,
                        generation: Some(1),
                        previous: &[],
                    },
                    &views,
                    &mut waiting,
                );
                state.pending_create.insert(name.clone());
                jobs.push(Job::Create {
                    name: name.clone(),
                    uid: node.uid().unwrap_or_default(),
                    network,
                    status: plan,
                });
                continue;
            };
            if let Some(p) = state.pending.get(name) {
                let rv = nr.resource_version().unwrap_or_default();
                if rv == p.before {
                    continue; // our own write is not in the cache yet
                }
                state.pending.remove(name);
            }
            let in_status = status_cidrs(nr);
            if in_status != state.allocator.holdings(name) {
                if state.allocator.network_of(name).is_none()
                    && state.allocator.holdings(name).is_empty()
                {
                    // Not known to this term (created after its list): adopt it, and let
                    // the problems it may have be reported.
                    state
                        .allocator
                        .restore(name, nr.spec.pod_network.as_deref(), &in_status);
                } else {
                    // Changed by someone else during this term (by hand): the node keeps
                    // what it was allocated; the status is written back below.
                    jobs.push(Job::Announce {
                        reference: nr.object_ref(&()),
                        reason: reason::INVALID_ALLOCATION,
                        note: format!(
                            "status.podCIDRs was changed outside podnet-operator to [{}]; a node's CIDRs never change while it exists: restored [{}]",
                            join(&in_status),
                            join(state.allocator.holdings(name))
                        ),
                    });
                }
            }
            let network = match nr.spec.pod_network.clone() {
                Some(n) => Some(n),
                None => choose_network(node.labels(), &views).map(|v| v.name.clone()),
            };
            if nr.spec.pod_network != network
                && network.is_some()
                && state.allocator.holdings(name).is_empty()
            {
                jobs.push(Job::SetNetwork {
                    name: name.clone(),
                    rv: nr.resource_version().unwrap_or_default(),
                    network: network.unwrap_or_default(),
                });
                continue;
            }
            let current = nr.status.clone().unwrap_or_default();
            let desired = state.plan_status(
                &NodeInput {
                    name,
                    network: network.as_deref(),
                    ips: &ips,
                    generation: nr.metadata.generation,
                    previous: &current.conditions,
                },
                &views,
                &mut waiting,
            );
            let node_cidrs = node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.clone())
                .unwrap_or_default();
            let allocated = condition_is(&desired.conditions, ALLOCATED, ConditionStatus::True);
            if self.config.set_node_pod_cidrs
                && node_cidrs.is_empty()
                && allocated
                && !desired.pod_cidrs.is_empty()
            {
                jobs.push(Job::SetNodePodCidrs {
                    name: name.clone(),
                    cidrs: desired.pod_cidrs.clone(),
                });
            }
            if !same_operator_status(&current, &desired) {
                jobs.push(Job::WriteStatus {
                    name: name.clone(),
                    rv: nr.resource_version().unwrap_or_default(),
                    status: desired,
                });
            }
        }
        let waiting_total: usize = waiting.values().sum();
        self.metrics.waiting_nodes.set(waiting_total as i64);

        for view in &views {
            if let Some(job) =
                self.plan_network_status(state, view, waiting.get(&view.name).copied().unwrap_or(0))
            {
                jobs.push(job);
            }
        }

        if jobs.is_empty() {
            return;
        }
        let planned = Instant::now();
        let count = jobs.len();
        debug!(
            jobs = count,
            plan_ms = started.elapsed().as_millis() as u64,
            "sync pass planned"
        );
        let outcomes = stream::iter(jobs)
            .map(|job| self.execute(job))
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        for outcome in outcomes {
            state.apply(outcome, &self.metrics);
        }
        debug!(
            jobs = count,
            write_ms = planned.elapsed().as_millis() as u64,
            "sync pass wrote"
        );
    }

    fn plan_network_status(
        &self,
        state: &SyncState,
        view: &NetworkView,
        waiting: usize,
    ) -> Option<Job> {
        let pn = self
            .networks
            .state()
            .into_iter()
            .find(|p| p.name_any() == view.name)?;
        let previous = pn.status.clone().unwrap_or_default();
        let generation = view.generation;
        let usage = |family: Family| {
            view.pools.families().contains(&family).then(|| PoolUsage {
                capacity: view.pools.capacity(family),
                allocated: state.allocator.allocated(&view.name, family),
            })
        };
        let c = |t: &str, s: ConditionStatus, r: &str, m: String| {
            make_condition(&previous.conditions, t, s, r, m, generation)
        };
        let draining = state.allocator.draining(&view.name);
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
        let desired = PodNetworkStatus {
            observed_generation: generation,
            conditions,
            nodes: state.allocator.nodes_of(&view.name),
            ipv4: usage(Family::V4),
            ipv6: usage(Family::V6),
            served_cidrs: state
                .allocator
                .served(&view.name)
                .iter()
                .map(ToString::to_string)
                .collect(),
            quarantine: state
                .allocator
                .quarantined(&view.name)
                .into_iter()
                .map(|q| QuarantinedCidr {
                    cidr: q.cidr.to_string(),
                    node: q.node.clone(),
                    released_at: Time(q.released_at),
                })
                .collect(),
        };
        for family in [Family::V4, Family::V6] {
            let labels = vec![
                ("network".to_string(), view.name.clone()),
                ("family".to_string(), family.to_string()),
            ];
            let u = if family == Family::V4 {
                desired.ipv4
            } else {
                desired.ipv6
            };
            self.metrics
                .capacity
                .get_or_create(&labels)
                .set(u.map_or(0, |u| u.capacity));
            self.metrics
                .allocated
                .get_or_create(&labels)
                .set(u.map_or(0, |u| u.allocated));
        }
        let same = previous.observed_generation == desired.observed_generation
            && previous.nodes == desired.nodes
            && previous.ipv4 == desired.ipv4
            && previous.ipv6 == desired.ipv6
            && previous.served_cidrs == desired.served_cidrs
            && previous.quarantine == desired.quarantine
            && same_conditions(&previous.conditions, &desired.conditions);
        (!same).then(|| Job::NetworkStatus {
            name: view.name.clone(),
            status: desired,
            pn,
        })
    }

    async fn execute(&self, job: Job) -> Outcome {
        // Only NodeRoute jobs may touch the per-node bookkeeping: a PodNetwork (or a
        // Node's spec) can share its name with a node being created.
        let node_route_job = !matches!(
            job,
            Job::NetworkStatus { .. } | Job::SetNodePodCidrs { .. } | Job::Announce { .. }
        );
        match self.execute_inner(job).await {
            Ok(o) => o,
            Err((name, op, e)) => {
                self.metrics.error(op);
                warn!(object = %name, operation = op, error = %e, "API write failed; retrying on the next pass");
                if node_route_job {
                    Outcome::Failed { name }
                } else {
                    Outcome::Done
                }
            }
        }
    }

    async fn execute_inner(
        &self,
        job: Job,
    ) -> Result<Outcome, (String, &'static str, kube::Error)> {
        let nr_api: Api<NodeRoute> = Api::all(self.client.clone());
        match job {
            Job::Create {
                name,
                uid,
                network,
                status,
            } => {
                if !self.leadership.is_leader() {
                    return Ok(Outcome::Skipped { name });
                }
                let nr = NodeRoute {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.clone(),
                            uid,
                            controller: Some(true),
                            block_owner_deletion: None,
                        }]),
                        ..Default::default()
                    },
                    spec: NodeRouteSpec {
                        node_name: name.clone(),
                        pod_network: network,
                    },
                    status: None,
                };
                let created = match nr_api.create(&PostParams::default(), &nr).await {
                    Ok(c) => c,
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        // Someone else created it (or our cache lags): adopt what is there.
                        let fresh = nr_api
                            .get_opt(&name)
                            .await
                            .map_err(|e| (name.clone(), "get", e))?;
                        return Ok(Outcome::Conflict {
                            name,
                            fresh: fresh.map(Box::new),
                            adopt: true,
                        });
                    }
                    Err(e) => return Err((name, "create", e)),
                };
                self.write_status(&nr_api, &name, created.resource_version(), status)
                    .await
            }
            Job::WriteStatus { name, rv, status } => {
                self.write_status(&nr_api, &name, Some(rv), status).await
            }
            Job::SetNetwork { name, rv, network } => {
                if !self.leadership.is_leader() {
                    return Ok(Outcome::Skipped { name });
                }
                let patch =
                    json!({"metadata": {"resourceVersion": rv}, "spec": {"podNetwork": network}});
                match nr_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => Ok(Outcome::Written { name, before: rv }),
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                        self.metrics.conflicts.inc();
                        let fresh = nr_api
                            .get_opt(&name)
                            .await
                            .map_err(|e| (name.clone(), "get", e))?;
                        Ok(Outcome::Conflict {
                            name,
                            fresh: fresh.map(Box::new),
                            adopt: false,
                        })
                    }
                    Err(e) => Err((name, "patch-spec", e)),
                }
            }
            Job::DeleteOrphan { name, uid } => {
                // The cache may lag: only a 404 from the API server proves the node gone.
                let nodes: Api<Node> = Api::all(self.client.clone());
                if nodes
                    .get_opt(&name)
                    .await
                    .map_err(|e| (name.clone(), "get-node", e))?
                    .is_some()
                {
                    return Ok(Outcome::Skipped { name });
                }
                if !self.leadership.is_leader() {
                    return Ok(Outcome::Skipped { name });
                }
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match nr_api.delete(&name, &dp).await {
                    Ok(_) => Ok(Outcome::Deleted { name }),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                        Ok(Outcome::Deleted { name })
                    }
                    Err(e) => Err((name, "delete", e)),
                }
            }
            Job::ConfirmRelease { name } => {
                // Only a 404 from the API server proves the NodeRoute gone.
                match nr_api
                    .get_opt(&name)
                    .await
                    .map_err(|e| (name.clone(), "get", e))?
                {
                    None => Ok(Outcome::Released { name }),
                    Some(fresh) => Ok(Outcome::Conflict {
                        name,
                        fresh: Some(Box::new(fresh)),
                        adopt: true,
                    }),
                }
            }
            Job::Announce {
                reference,
                reason,
                note,
            } => {
                self.publish(reference, EventType::Warning, reason, &note)
                    .await;
                Ok(Outcome::Done)
            }
            Job::SetNodePodCidrs { name, cidrs } => {
                if !self.leadership.is_leader() {
                    return Ok(Outcome::Done);
                }
                // podCIDRs can only be set while empty; the API server refuses a change.
                let patch = json!({"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}});
                let nodes: Api<Node> = Api::all(self.client.clone());
                nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(|e| (name.clone(), "patch-node-podcidrs", e))?;
                Ok(Outcome::Done)
            }
            Job::NetworkStatus { name, status, pn } => {
                if !self.leadership.is_leader() {
                    return Ok(Outcome::Done);
                }
                let api: Api<PodNetwork> = Api::all(self.client.clone());
                let patch = json!({
                    "apiVersion": API_VERSION, "kind": "PodNetwork",
                    "metadata": {"name": name}, "status": status,
                });
                api.patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(patch),
                )
                .await
                .map_err(|e| (name.clone(), "apply-network-status", e))?;
                let before = pn.status.clone().unwrap_or_default();
                self.announce_network(&pn, &before, &status).await;
                Ok(Outcome::Done)
            }
        }
    }

    async fn write_status(
        &self,
        api: &Api<NodeRoute>,
        name: &str,
        rv: Option<String>,
        status: NodeRouteStatus,
    ) -> Result<Outcome, (String, &'static str, kube::Error)> {
        if !self.leadership.is_leader() {
            return Ok(Outcome::Skipped { name: name.into() });
        }
        let patch = status_patch(name, rv.clone(), &status);
        match api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(obj) => {
                self.announce_node(&obj, &status).await;
                Ok(Outcome::Written {
                    name: name.into(),
                    before: rv.unwrap_or_default(),
                })
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                self.metrics.conflicts.inc();
                let fresh = api
                    .get_opt(name)
                    .await
                    .map_err(|e| (name.to_string(), "get", e))?;
                Ok(Outcome::Conflict {
                    name: name.into(),
                    fresh: fresh.map(Box::new),
                    adopt: false,
                })
            }
            Err(e) => Err((name.into(), "apply-status", e)),
        }
    }

    /// Emits an event when a node's Allocated condition changed meaningfully.
    async fn announce_node(&self, nr: &NodeRoute, status: &NodeRouteStatus) {
        // Routine allocations show in status; only what needs a person becomes an event.
        for c in &status.conditions {
            if c.status != ConditionStatus::True.as_str() || c.reason == reason::DRAINING {
                self.publish(
                    nr.object_ref(&()),
                    EventType::Warning,
                    &c.reason,
                    &c.message,
                )
                .await;
            }
        }
    }

    async fn announce_network(
        &self,
        pn: &PodNetwork,
        before: &PodNetworkStatus,
        after: &PodNetworkStatus,
    ) {
        for c in &after.conditions {
            let was = find_condition(&before.conditions, &c.type_);
            let changed = was.is_none_or(|w| w.status != c.status || w.message != c.message);
            let alarming = c.status == ConditionStatus::True.as_str()
                && [
                    condition_type::EXHAUSTED,
                    condition_type::INVALID,
                    condition_type::DRAINING,
                ]
                .contains(&c.type_.as_str());
            if changed && alarming {
                self.publish(
                    pn.object_ref(&()),
                    EventType::Warning,
                    &c.reason,
                    &c.message,
                )
                .await;
            }
        }
    }

    async fn publish(
        &self,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            debug!(error = %e, "could not publish an event");
        }
    }
}

fn status_patch(name: &str, rv: Option<String>, status: &NodeRouteStatus) -> serde_json::Value {
    let mut meta = json!({"name": name});
    if let Some(rv) = rv.filter(|r| !r.is_empty()) {
        meta["resourceVersion"] = json!(rv);
    }
    // Only the operator's own conditions: the daemon's Programmed merges in by type.
    let conditions: Vec<&Condition> = status
        .conditions
        .iter()
        .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    json!({
        "apiVersion": API_VERSION,
        "kind": "NodeRoute",
        "metadata": meta,
        "status": {
            "nodeIPs": status.node_ips,
            "podCIDRs": status.pod_cidrs,
            "conditions": conditions,
            "observedGeneration": status.observed_generation,
        }
    })
}

fn status_cidrs(nr: &NodeRoute) -> Vec<IpNet> {
    nr.status
        .as_ref()
        .map(|s| s.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

fn needs_allocation(nr: &NodeRoute, allocator: &Allocator, views: &[NetworkView]) -> bool {
    let held = allocator.holdings(&nr.name_any());
    let Some(view) = nr
        .spec
        .pod_network
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

fn same_operator_status(current: &NodeRouteStatus, desired: &NodeRouteStatus) -> bool {
    let mine = |s: &NodeRouteStatus| -> Vec<Condition> {
        s.conditions
            .iter()
            .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect()
    };
    current.node_ips == desired.node_ips
        && current.pod_cidrs == desired.pod_cidrs
        && current.observed_generation == desired.observed_generation
        && same_conditions(&mine(current), &mine(desired))
}

enum Job {
    Create {
        name: String,
        uid: String,
        network: Option<String>,
        status: NodeRouteStatus,
    },
    WriteStatus {
        name: String,
        rv: String,
        status: NodeRouteStatus,
    },
    SetNetwork {
        name: String,
        rv: String,
        network: String,
    },
    DeleteOrphan {
        name: String,
        uid: String,
    },
    /// The NodeRoute of a gone node is missing from the cache: confirm with a GET
    /// before its CIDRs go into quarantine.
    ConfirmRelease {
        name: String,
    },
    /// A warning event that needs no write of its own.
    Announce {
        reference: k8s_openapi::api::core::v1::ObjectReference,
        reason: &'static str,
        note: String,
    },
    SetNodePodCidrs {
        name: String,
        cidrs: Vec<String>,
    },
    NetworkStatus {
        name: String,
        status: PodNetworkStatus,
        pn: Arc<PodNetwork>,
    },
}

enum Outcome {
    Written {
        name: String,
        before: String,
    },
    /// The object changed under the write. `adopt`: what the API server has is the
    /// truth (a create or a release that lost a race); else the allocator keeps its own.
    Conflict {
        name: String,
        fresh: Option<Box<NodeRoute>>,
        adopt: bool,
    },
    Deleted {
        name: String,
    },
    /// The API server confirmed the NodeRoute gone.
    Released {
        name: String,
    },
    Skipped {
        name: String,
    },
    Failed {
        name: String,
    },
    /// A write that is not about a NodeRoute (PodNetwork status, Node spec).
    Done,
}

#[derive(Default)]
struct Pending {
    before: String,
}

/// What planning one node's status takes.
#[derive(Clone, Copy)]
struct NodeInput<'a> {
    name: &'a str,
    network: Option<&'a str>,
    ips: &'a crate::network::NodeIpChoice,
    generation: Option<i64>,
    previous: &'a [Condition],
}

fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the loop carries from pass to pass within one leadership term.
#[derive(Default)]
struct SyncState {
    term: Option<u64>,
    allocator: Allocator,
    /// NodeRoutes we wrote whose new version the cache has not shown yet.
    pending: HashMap<String, Pending>,
    /// NodeRoutes we are creating or created that the cache has not shown yet.
    pending_create: HashSet<String>,
    /// Releases waiting for the API server to confirm the NodeRoute gone.
    confirming: HashSet<String>,
    /// Node CIDRs handed out since the metric was last updated.
    new_allocations: u64,
}

impl SyncState {
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
        let ips_condition = if ips.refused.is_empty() {
            make_condition(
                previous,
                condition_type::NODE_IPS_VALID,
                ConditionStatus::True,
                reason::VALID_NODE_IPS,
                format!(
                    "peers route this node's pods through {}",
                    ips.ips.join(", ")
                ),
                generation,
            )
        } else {
            make_condition(
                previous,
                condition_type::NODE_IPS_VALID,
                ConditionStatus::False,
                reason::INVALID_NODE_IP,
                format!(
                    "refused: {}; in force: [{}]",
                    ips.refused.join("; "),
                    ips.ips.join(", ")
                ),
                generation,
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
            conditions: vec![
                make_condition(previous, ALLOCATED, status, reason, message, generation),
                ips_condition,
            ],
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

    fn apply(&mut self, outcome: Outcome, metrics: &Metrics) {
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
                    self.allocator.restore(
                        &name,
                        nr.spec.pod_network.as_deref(),
                        &status_cidrs(&nr),
                    );
                }
            }
            Outcome::Deleted { name } | Outcome::Released { name } => {
                self.confirming.remove(&name);
                let quarantined = self
                    .allocator
                    .release_to_quarantine(&name, Timestamp::now());
                metrics.releases.inc();
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
        if self.new_allocations > 0 {
            metrics.allocations.inc_by(self.new_allocations);
            self.new_allocations = 0;
        }
    }
}
