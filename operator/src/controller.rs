//! The operator's control loop: one task that snapshots three caches (Nodes,
//! NodeRoutes, PodNetworks), lets the pure planning core (`plan.rs`) decide every change
//! against the term's in-memory [`Allocator`], hands the jobs to the writer
//! (`writer.rs`), which performs them concurrently, and folds the outcomes back in.
//! Metrics are set here; events are the writer's.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use ipnet::IpNet;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use podnet_common::{ApiClients, Cache, Health, spawn_cache, spawn_reflector};
use podnet_crds::{NodeRoute, PodNetwork};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, instrument, warn};

use crate::allocator::{Allocator, Quarantined};
use crate::events::Announcer;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::network::evaluate_networks;
use crate::node::{NodeFacts, NodeObject};
use crate::plan::{PlanConfig, Snapshot, SyncState, needs_allocation, plan};
use crate::route::RouteFacts;
use crate::writer::Writer;
pub use crate::writer::{Error, FIELD_MANAGER};

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
    /// NodeRoutes per page of the list each leadership term starts from (a new leader
    /// never holds the whole list at once).
    pub list_page: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            resync: Duration::from_secs(60),
            set_node_pod_cidrs: false,
            quarantine: Duration::from_secs(300),
            list_page: 500,
        }
    }
}

/// The operator: caches, leadership, and what it reports.
pub struct Operator {
    client: Client,
    nodes: Cache<NodeFacts>,
    noderoutes: Cache<RouteFacts>,
    networks: Store<PodNetwork>,
    notify: Arc<Notify>,
    leadership: Leadership,
    metrics: Metrics,
    writer: Writer,
    health: Arc<Health>,
    config: ControllerConfig,
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    obj.meta_mut().annotations = None;
}

/// Passes of at least this many writes are large: the memory their plan took goes
/// back to the kernel once they are done.
const LARGE_PASS: usize = 256;

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
        // Caches of podnet's own (not kube's reflector): records of what planning
        // reads, keyed by their own names.
        let nodes = spawn_cache(
            Api::<NodeObject>::all(clients.watch.clone()),
            Arc::clone(&notify),
            NodeFacts::from,
            None,
        );
        let noderoutes = spawn_cache(
            Api::<NodeRoute>::all(clients.watch.clone()),
            Arc::clone(&notify),
            RouteFacts::from,
            None,
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
        let writer = Writer::new(
            client.clone(),
            leadership.clone(),
            metrics.clone(),
            Announcer::new(recorder),
        );
        Self {
            client,
            nodes,
            noderoutes,
            networks,
            notify,
            leadership,
            metrics,
            writer,
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
        // The first lists' pages are decoded and gone: only the caches stay.
        podnet_common::release_free_memory();
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
        // PodNetworks fresh too: their status holds the served CIDRs and the quarantine.
        let networks = Api::<PodNetwork>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        let views = evaluate_networks(networks.items.iter());
        let mut allocator = Allocator::new();
        for v in &views {
            allocator.set_network(&v.name, v.pools.clone());
        }
        // The NodeRoutes page by page: each restores its node's holdings, and only
        // those still lacking a CIDR are kept (to be fenced), so a new leader of a large
        // cluster never holds the whole list at once. A page whose continue token
        // expired (410) fails the term's start, which is retried.
        let api: Api<NodeRoute> = Api::all(self.client.clone());
        let mut to_fence: Vec<NodeRoute> = Vec::new();
        let mut params = ListParams::default().limit(self.config.list_page);
        loop {
            let page = api.list(&params).await?;
            for nr in page.items {
                let facts = RouteFacts::from(&nr);
                allocator.restore(
                    &facts.name,
                    facts.network.as_deref(),
                    &facts.status.pod_cidrs,
                );
                if needs_allocation(&facts, &allocator, &views) {
                    to_fence.push(nr);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
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
        let fenced = stream::iter(to_fence)
            .map(|nr| self.writer.fence(nr))
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        for result in fenced {
            if let Some(fresh) = result? {
                let facts = RouteFacts::from(&fresh);
                allocator.restore(
                    &facts.name,
                    facts.network.as_deref(),
                    &facts.status.pod_cidrs,
                );
            }
        }
        *state = SyncState::for_term(term, allocator);
        info!(
            term,
            nodes = state.allocator.node_count(),
            "leadership term started: allocator rebuilt from a full list"
        );
        Ok(())
    }

    /// One pass: snapshot the caches, plan, set the gauges, write concurrently, fold
    /// the outcomes back in.
    async fn sync_once(&self, state: &mut SyncState) {
        let started = Instant::now();
        let config = PlanConfig {
            quarantine: self.config.quarantine,
            set_node_pod_cidrs: self.config.set_node_pod_cidrs,
        };
        let plan = {
            let snapshot = Snapshot::new(
                Timestamp::now(),
                self.nodes.state(),
                self.noderoutes.state(),
                self.networks.state(),
            );
            plan(&snapshot, state, &config)
        };
        let large = plan.jobs.len() >= LARGE_PASS;
        if large {
            // The snapshot's maps and the address choices are gone; the jobs stay.
            podnet_common::release_free_memory();
        }
        for q in &plan.expired {
            info!(node = %q.node, cidr = %q.cidr, "quarantine over: the CIDR can go to any node");
        }
        self.metrics.waiting_nodes.set(plan.waiting as i64);
        for u in &plan.usage {
            let labels = vec![
                ("network".to_string(), u.network.clone()),
                ("family".to_string(), u.family.to_string()),
            ];
            self.metrics.capacity.get_or_create(&labels).set(u.capacity);
            self.metrics
                .allocated
                .get_or_create(&labels)
                .set(u.allocated);
        }
        self.count(state);
        if plan.jobs.is_empty() {
            return;
        }
        let planned = Instant::now();
        let count = plan.jobs.len();
        debug!(
            jobs = count,
            plan_ms = started.elapsed().as_millis() as u64,
            "sync pass planned"
        );
        let outcomes = stream::iter(plan.jobs)
            .map(|job| self.writer.execute(job))
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        let now = Timestamp::now();
        for outcome in outcomes {
            state.fold(outcome, now);
        }
        if large {
            podnet_common::release_free_memory();
        }
        self.count(state);
        debug!(
            jobs = count,
            write_ms = planned.elapsed().as_millis() as u64,
            "sync pass wrote"
        );
    }

    /// Moves the term's allocation and release counts into the counters.
    fn count(&self, state: &mut SyncState) {
        let (allocations, releases) = state.take_counts();
        self.metrics.allocations.inc_by(allocations);
        self.metrics.releases.inc_by(releases);
    }
}
