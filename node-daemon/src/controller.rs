//! The daemon's loop: watch NodeRoutes and PodNetworks, and on every change and every
//! resync period converge routes, masquerade rules and the CNI config; report
//! `Programmed` on the node's own NodeRoute and refused peers as events on theirs.
//!
//! One pass ([`Daemon::sync`]) applies its parts independently — the bridge's
//! addresses, routes, masquerade, the CNI config — and collects every error instead of
//! stopping at the first; [`programmed`] (pure) turns the desired state and what the
//! pass did into the condition.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::utils::Backoff;
use kube::{Client, ResourceExt};
use podnet_common::{
    ApiClients, Cache, Health, WatchBackoff, spawn_cache, spawn_reflector, strip_managed_fields,
};
use podnet_crds::{
    API_VERSION, ConditionStatus, NodeRoute, PodNetwork, condition_type, find_condition,
    make_condition, reason,
};
use podnet_netlink::Netlink;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc::{Receiver, channel};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::cniconf;
use crate::desired::{Desired, Rejection, Rule, desired_state, rejection_keys};
use crate::firewall::{self, Backend, NatTable, Runner, Setting};
use crate::first_list::FirstList;
use crate::peer::{self, Peer};
use crate::policy::{self, Compiled, PodView, Problem};
use crate::routes::{KernelView, RouteReport, apply_routes, plan_routes, read_routes};
use crate::state;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cluster_policy::ClusterNetworkPolicy;
use podnet_firewall::policy::PolicyPlan;

/// NodeRoutes of the first list queued for the head start at most (each shares its
/// record with the cache: the queue costs a pointer per entry).
const FIRST_LIST_QUEUE: usize = 2048;

/// The field manager of the daemon's status writes.
pub const FIELD_MANAGER: &str = "podnet-daemon";

/// Where and how the daemon works.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// This node's name (NODE_NAME).
    pub node_name: String,
    /// Operate on this network namespace instead of the daemon's own (tests and the lab).
    pub netns: Option<PathBuf>,
    /// The CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// The bridge podnet-cni uses.
    pub bridge: String,
    /// podnet-cni's lease directory.
    pub ipam_dir: PathBuf,
    /// Where the last programmed state is kept (`None`: nowhere).
    pub state_dir: Option<PathBuf>,
    /// Drift check period.
    pub resync: Duration,
    /// How long to wait for the API server at start before programming the saved state.
    pub startup_grace: Duration,
    /// Which firewall to program (auto: follow kube-proxy, else nftables, else iptables).
    pub firewall: Setting,
    /// Enforce NetworkPolicy (watch Pods, Namespaces and NetworkPolicies; program the
    /// `inet podnet-policy` table). Off: that table is removed.
    pub network_policy: bool,
    /// With network policy on, also enforce the cluster-admin tiers
    /// (ClusterNetworkPolicy, policy.networking.k8s.io: its CRD must be installed).
    pub cluster_network_policy: bool,
    /// Log dropped packets (kernel log, prefix `podnet-drop`), at most this many per
    /// second and drop rule; 0: off.
    pub policy_log_drops: u32,
}

/// Label of the per-rule metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule's name ([`Rule::as_str`]).
    pub rule: String,
}

/// The daemon's metrics.
#[derive(Clone)]
pub struct DaemonMetrics {
    routes_desired: Gauge,
    routes_programmed: Gauge,
    routes_rejected: Family<RuleLabel, Gauge>,
    rejections: Family<RuleLabel, Counter>,
    drift_repairs: Counter,
    route_checks: Family<CheckLabel, Counter>,
    errors: Counter,
    sync_duration: Histogram,
    firewall: Family<BackendLabel, Gauge>,
    policies: Gauge,
    isolated_pods: Gauge,
    policy_problems: Gauge,
    policy_writes: Counter,
    policy_dropped: Family<ChainLabel, Gauge>,
    policy_bridge_netfilter: Gauge,
    policy_update: Histogram,
}

/// Label of the dropped-packets metric: the chain that dropped them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabel {
    /// `forward` (a pod not programmed yet) or `pod-<key>-in` / `-out`.
    pub chain: String,
}

/// Label of the route-check metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    /// `read` or `unchanged`.
    pub how: &'static str,
}

/// Label of the firewall-backend metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// The backend's name ([`Backend::as_str`]).
    pub backend: String,
}

impl DaemonMetrics {
    /// Registers the metrics under `podnet_daemon_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            routes_desired: Gauge::default(),
            routes_programmed: Gauge::default(),
            routes_rejected: Family::default(),
            rejections: Family::default(),
            drift_repairs: Counter::default(),
            route_checks: Family::default(),
            errors: Counter::default(),
            sync_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            firewall: Family::default(),
            policies: Gauge::default(),
            isolated_pods: Gauge::default(),
            policy_problems: Gauge::default(),
            policy_writes: Counter::default(),
            policy_dropped: Family::default(),
            policy_bridge_netfilter: Gauge::default(),
            policy_update: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("podnet_daemon");
        r.register(
            "policies",
            "NetworkPolicies and ClusterNetworkPolicies selecting at least one pod of this node",
            m.policies.clone(),
        );
        r.register(
            "policy_isolated_pods",
            "Pods of this node with policy chains: isolated by a NetworkPolicy or selected by a ClusterNetworkPolicy (ingress or egress)",
            m.isolated_pods.clone(),
        );
        r.register(
            "policy_problems",
            "Parts of NetworkPolicies (they allow nothing) and ClusterNetworkPolicy rules (they fail closed) not enforced as written; an event says why",
            m.policy_problems.clone(),
        );
        r.register(
            "policy_writes",
            "Transactions that changed the policy table",
            m.policy_writes.clone(),
        );
        r.register(
            "policy_bridge_netfilter",
            "1 when bridged traffic between pods of this node reaches the policy (net.bridge.bridge-nf-call-iptables and -ip6tables are 1)",
            m.policy_bridge_netfilter.clone(),
        );
        r.register(
            "policy_update_seconds",
            "From the change that woke the daemon (a policy, pod or namespace event) to the policy table written",
            m.policy_update.clone(),
        );
        r.register(
            "policy_dropped_packets",
            "Packets dropped by network policy since the chain was created, by chain",
            m.policy_dropped.clone(),
        );
        r.register(
            "firewall_backend",
            "1 for the firewall podnet programs on this node, 0 for the others",
            m.firewall.clone(),
        );
        r.register(
            "routes_desired",
            "Peer routes this node should have",
            m.routes_desired.clone(),
        );
        r.register(
            "routes_programmed",
            "Peer routes present in the kernel",
            m.routes_programmed.clone(),
        );
        r.register(
            "routes_rejected",
            "Peer CIDRs refused a route now, by the rule they break",
            m.routes_rejected.clone(),
        );
        r.register(
            "rejections",
            "Peer CIDRs newly refused a route, by the rule they break",
            m.rejections.clone(),
        );
        r.register(
            "drift_repairs",
            "Writes that repaired a difference found by a check",
            m.drift_repairs.clone(),
        );
        r.register(
            "route_checks",
            "Passes by how they checked the routing table: read (dumped and compared) or unchanged (the kernel's route notifications said nothing changed since the last read)",
            m.route_checks.clone(),
        );
        r.register("errors", "Sync passes with an error", m.errors.clone());
        r.register(
            "sync_duration_seconds",
            "Duration of one sync pass",
            m.sync_duration.clone(),
        );
        for rule in Rule::ALL {
            let label = RuleLabel {
                rule: rule.as_str().into(),
            };
            m.routes_rejected.get_or_create(&label).set(0);
            let _ = m.rejections.get_or_create(&label);
        }
        m
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// The routes.
    pub routes: RouteReport,
    /// Peers refused, by the API-side and the kernel-side rules.
    pub rejected: Vec<Rejection>,
    /// Masquerade transactions run.
    pub masquerade_written: usize,
    /// The firewall programmed.
    pub firewall: Option<Backend>,
    /// Whether the CNI config was (re)written.
    pub cni_written: bool,
    /// Whether the policy table was written.
    pub policy_written: bool,
    /// Stale addresses removed from the bridge.
    pub bridge_addresses_removed: usize,
    /// Every error of the pass (each part was still applied as far as it could be).
    pub errors: Vec<String>,
}

impl PassReport {
    fn writes(&self) -> usize {
        self.routes.written
            + self.routes.removed
            + self.masquerade_written
            + usize::from(self.cni_written)
            + usize::from(self.policy_written)
            + self.bridge_addresses_removed
    }
}

/// The `Programmed` condition the daemon reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// One of [`podnet_crds::reason`].
    pub reason: &'static str,
    /// The details.
    pub message: String,
}

/// How many items of a list a condition message names before "and N more".
const LISTED: usize = 5;

fn listing<T: std::fmt::Display>(items: &[T]) -> String {
    let mut text: Vec<String> = items.iter().take(LISTED).map(ToString::to_string).collect();
    if items.len() > LISTED {
        text.push(format!("and {} more", items.len() - LISTED));
    }
    text.join("; ")
}

/// The condition for a pass: pure, from the desired state and what the pass did.
pub fn programmed(desired: &Desired, report: &PassReport) -> Programmed {
    let cond = |status, reason, message| Programmed {
        status,
        reason,
        message,
    };
    if let Some(why) = &desired.own_invalid {
        return cond(
            ConditionStatus::False,
            reason::OWN_ALLOCATION_INVALID,
            format!("this node's pod CIDRs are unusable, the CNI config is left as it was: {why}"),
        );
    }
    if desired.own_cidrs.is_empty() {
        return cond(
            ConditionStatus::False,
            reason::WAITING_FOR_ALLOCATION,
            "this node has no pod CIDR yet".into(),
        );
    }
    let programmed = format!("{} routes programmed", report.routes.programmed);
    if !report.errors.is_empty() {
        return cond(
            ConditionStatus::False,
            reason::SYNC_FAILED,
            format!(
                "{programmed}; {} errors: {}",
                report.errors.len(),
                listing(&report.errors)
            ),
        );
    }
    if !report.rejected.is_empty() {
        return cond(
            ConditionStatus::True,
            reason::ROUTES_REJECTED,
            format!(
                "{programmed}; {} rejected: {}",
                report.rejected.len(),
                listing(&report.rejected)
            ),
        );
    }
    cond(ConditionStatus::True, reason::PROGRAMMED, programmed)
}

/// Passes in a row that may rely on an earlier read of the routing table; the next one
/// reads it whatever the notifications say (at the default 10 s period, once a minute).
const ROUTE_READ_EVERY: u32 = 6;

/// The receive buffer of the route-notification socket: a burst larger than this (a
/// first sync's own writes, say) overflows it, which reads as a change; it never holds
/// more than this in the daemon's memory.
const ROUTE_NOTIFY_BUFFER: usize = 64 << 10;

/// Whether a pass must read the routing table. Reading it is most of a quiet pass at
/// scale (20,000 routes: the kernel's dump alone takes ~20 ms of CPU), so a pass reads
/// it only when it may have changed since the last read: a route notification arrived
/// (anyone's change, the daemon's own writes included) or notifications were lost, the
/// desired routes changed, the last read found an error, or [`ROUTE_READ_EVERY`]
/// passes went by. Otherwise the last read's findings stand.
#[derive(Default)]
struct RouteWatch {
    /// A connection subscribed to route notifications in the daemon's namespace.
    monitor: Option<Netlink>,
    /// What the last read found, while it holds.
    verified: Option<Verified>,
    /// Passes that relied on the last read.
    relied: u32,
    /// The default route's MTU, while the last read holds.
    default_mtu: Option<u32>,
}

/// What a read of the routing table found, for a pass that does not read it.
#[derive(Clone)]
struct Verified {
    /// Peer routes the kernel's view refused.
    rejected: Vec<Rejection>,
    /// Peer routes in place.
    programmed: usize,
}

impl RouteWatch {
    /// The last read's findings if the table cannot have changed since; `None` when it
    /// must be read. The notification socket is opened before the first read, so
    /// nothing after that read goes unseen.
    fn unchanged(
        &mut self,
        open: impl FnOnce() -> Result<Netlink, podnet_netlink::Error>,
    ) -> Option<Verified> {
        if self.monitor.is_none() {
            self.verified = None;
            let opened = open().and_then(|mut m| {
                m.subscribe_routes()?;
                m.set_notify_buffer(ROUTE_NOTIFY_BUFFER)?;
                Ok(m)
            });
            match opened {
                Ok(m) => self.monitor = Some(m),
                Err(e) => {
                    debug!(error = %e, "cannot subscribe to route notifications; reading the table")
                }
            }
        }
        let changed = match self.monitor.as_mut().map(Netlink::routes_changed) {
            Some(Ok(changed)) => changed,
            Some(Err(e)) => {
                debug!(error = %e, "route notifications failed; reading the table");
                self.monitor = None;
                true
            }
            None => true,
        };
        if changed || self.relied + 1 >= ROUTE_READ_EVERY {
            self.verified = None;
        }
        if self.verified.is_none() {
            self.default_mtu = None;
        }
        let verified = self.verified.clone()?;
        self.relied += 1;
        Some(verified)
    }

    /// Records a read: its findings (`None`: it found an error; read again next time).
    fn read(&mut self, verified: Option<Verified>) {
        self.verified = verified;
        self.relied = 0;
    }

    /// The desired routes changed: the last read's findings are for other routes.
    fn desired_changed(&mut self) {
        self.verified = None;
    }
}

/// What a desired state is computed from (besides the state before it): the NodeRoute
/// cache's version and the PodNetworks, compared by identity (kube's cache holds each
/// object in a new `Arc` after every change).
struct Inputs {
    noderoutes: u64,
    networks: Vec<Arc<PodNetwork>>,
}

impl Inputs {
    fn of(noderoutes: &Cache<Peer>, networks: &Store<PodNetwork>) -> Self {
        // The version first: a change after it shows as a new version next time.
        let noderoutes = noderoutes.version();
        Self {
            noderoutes,
            networks: networks.state(),
        }
    }
}

impl PartialEq for Inputs {
    fn eq(&self, other: &Self) -> bool {
        self.noderoutes == other.noderoutes
            && self.networks.len() == other.networks.len()
            && self
                .networks
                .iter()
                .zip(&other.networks)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// The running daemon.
pub struct Daemon {
    client: Client,
    config: DaemonConfig,
    /// The firewall driver in use (chosen at the first pass, looked at again now and
    /// then when the choice is automatic).
    firewall: std::sync::Mutex<Option<Box<dyn NatTable + Send>>>,
    noderoutes: Cache<Peer>,
    /// The first NodeRoute list, page by page as it arrives (taken by `run`).
    first_list: Option<Receiver<Arc<Peer>>>,
    networks: Store<PodNetwork>,
    /// Pods, Namespaces and NetworkPolicies (network policy on).
    policy_inputs: Option<PolicyInputs>,
    notify: Arc<Notify>,
    health: Arc<Health>,
    metrics: DaemonMetrics,
}

/// The caches network policy is compiled from.
struct PolicyInputs {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    /// `None`: the cluster-admin tiers are off.
    cluster: Option<Store<ClusterNetworkPolicy>>,
}

/// What the reporter task publishes: the condition, and the rejections and policy
/// problems for events.
#[derive(Clone, Debug, PartialEq)]
struct Report {
    programmed: Programmed,
    rejected: Vec<Rejection>,
    firewall: Option<Backend>,
    problems: Vec<Problem>,
}

/// Runs blocking work in place on a multi-thread runtime (its tasks move to the other
/// workers meanwhile), or directly on any other (tests' single-thread runtimes).
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Daemon {
    /// Starts the watches.
    pub fn new(
        clients: ApiClients,
        config: DaemonConfig,
        health: Arc<Health>,
        metrics: DaemonMetrics,
    ) -> Self {
        let notify = Arc::new(Notify::new());
        // At most this many NodeRoutes wait for the kernel: where it adds routes slower
        // than the list arrives (20,000 routes took 9–25 s on one kernel, their list
        // 1–2 s), an unbounded queue held nearly the whole list beside the cache.
        let (first_list, first_pages) = channel(FIRST_LIST_QUEUE);
        let policy_inputs = config.network_policy.then(|| PolicyInputs {
            pods: spawn_reflector(
                Api::all(clients.watch.clone()),
                Arc::clone(&notify),
                policy::strip_pod,
            ),
            namespaces: spawn_reflector(
                Api::all(clients.watch.clone()),
                Arc::clone(&notify),
                policy::strip_namespace,
            ),
            policies: spawn_reflector(
                Api::all(clients.watch.clone()),
                Arc::clone(&notify),
                strip_managed_fields,
            ),
            cluster: config.cluster_network_policy.then(|| {
                spawn_reflector(
                    Api::all(clients.watch.clone()),
                    Arc::clone(&notify),
                    strip_managed_fields,
                )
            }),
        });
        Self {
            policy_inputs,
            noderoutes: spawn_cache(
                Api::<NodeRoute>::all(clients.watch.clone()),
                Arc::clone(&notify),
                peer::record_for(&config.node_name),
                Some(first_list),
            ),
            first_list: Some(first_pages),
            networks: spawn_reflector(
                Api::all(clients.watch),
                Arc::clone(&notify),
                strip_managed_fields,
            ),
            client: clients.request,
            config,
            firewall: std::sync::Mutex::new(None),
            notify,
            health,
            metrics,
        }
    }

    fn netlink(&self) -> Result<Netlink, podnet_netlink::Error> {
        match &self.config.netns {
            Some(ns) => Netlink::in_netns(ns),
            None => Netlink::new(),
        }
    }

    /// Waits for the caches, adding the routes of the first NodeRoute list's pages as
    /// they arrive ([`FirstList`]); if the API server does not answer within the
    /// startup grace, programs the state saved by the last run meanwhile (once).
    /// Returns false on shutdown.
    async fn wait_for_caches(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        first_pages: Option<Receiver<Arc<Peer>>>,
    ) -> bool {
        let synced = async {
            let _ = self.noderoutes.wait_until_ready().await;
            let _ = self.networks.wait_until_ready().await;
            if let Some(p) = &self.policy_inputs {
                let _ = p.pods.wait_until_ready().await;
                let _ = p.namespaces.wait_until_ready().await;
                let _ = p.policies.wait_until_ready().await;
                if let Some(c) = &p.cluster {
                    let _ = c.wait_until_ready().await;
                }
            }
        };
        tokio::pin!(synced);
        let mut early_done = first_pages.is_none();
        let early = self.first_list_routes(first_pages);
        tokio::pin!(early);
        let grace = tokio::time::sleep(self.config.startup_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut synced => return true,
                _ = &mut early, if !early_done => early_done = true,
                _ = &mut grace => break,
                _ = shutdown.changed() => return false,
            }
        }
        match self.config.state_dir.as_deref().map(state::load) {
            Some(Ok(Some(saved))) => {
                warn!(
                    routes = saved.routes.len(),
                    grace_s = self.config.startup_grace.as_secs_f64(),
                    "the API server did not answer in time: programming the state saved by the last run"
                );
                match self.netlink() {
                    Ok(mut nl) => {
                        let report = self.sync(&mut nl, &saved);
                        if report.errors.is_empty() {
                            info!(routes = report.routes.programmed, "saved state programmed");
                        } else {
                            warn!(errors = ?report.errors, "saved state programmed with errors");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot open netlink"),
                }
            }
            Some(Ok(None)) => {
                info!("the API server did not answer in time and no state is saved; waiting");
            }
            Some(Err(e)) => {
                warn!(error = %e, "the saved state is unusable; waiting for the API server")
            }
            None => {}
        }
        loop {
            tokio::select! {
                _ = &mut synced => return true,
                _ = &mut early, if !early_done => early_done = true,
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// Adds the routes of each page of the first NodeRoute list as it arrives (add
    /// only, see [`FirstList`]), until the list is complete.
    async fn first_list_routes(&self, pages: Option<Receiver<Arc<Peer>>>) {
        let Some(mut pages) = pages else {
            return;
        };
        // Every CIDR is checked against its PodNetwork: those first (a short list).
        let _ = self.networks.wait_until_ready().await;
        let started = Instant::now();
        let mut first: Option<(Netlink, FirstList)> = None;
        let mut buf = Vec::new();
        while pages.recv_many(&mut buf, 4096).await > 0 {
            let page = std::mem::take(&mut buf);
            let ok = off_runtime(|| {
                if first.is_none() {
                    first = self.start_first_list().map_err(|e| {
                        debug!(error = %e, "routes from the first list: cannot read the kernel; waiting for the complete list");
                    }).ok();
                }
                let Some((nl, list)) = first.as_mut() else {
                    return false;
                };
                let added = list.page(page, &self.networks.state(), nl);
                debug!(
                    added,
                    total = list.added,
                    "routes from a page of the first NodeRoute list"
                );
                true
            });
            if !ok {
                return;
            }
        }
        if let Some((_, list)) = first {
            info!(
                added = list.added,
                refused = list.refused,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "routes added while the first NodeRoute list arrived; the first pass follows"
            );
        }
    }

    /// The connection and the kernel's view (routes, every address) for [`FirstList`].
    fn start_first_list(&self) -> Result<(Netlink, FirstList), podnet_netlink::Error> {
        let mut nl = self.netlink()?;
        let routes = read_routes(&mut nl)?;
        let addresses = nl
            .all_addresses()?
            .into_iter()
            .filter_map(|a| IpNet::new(a.ip, a.prefix).ok())
            .collect();
        let saved = match self.config.state_dir.as_deref().map(state::load) {
            Some(Ok(saved)) => saved,
            _ => None,
        };
        let kernel = KernelView { routes, addresses };
        Ok((nl, FirstList::new(&self.config.node_name, saved, kernel)))
    }

    /// Runs until `shutdown`; leaves the dataplane as it is on exit.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let first_pages = self.first_list.take();
        if !self.wait_for_caches(&mut shutdown, first_pages).await {
            return;
        }
        debug!(noderoutes = self.noderoutes.state().len(), "caches synced");
        // The Programmed condition and events are written by their own task: the
        // dataplane never waits on the API server (which may be slow, restarting, gone).
        let (status_tx, status_rx) = watch::channel(None);
        let reporter = StatusReporter {
            api: Api::all(self.client.clone()),
            node_name: self.config.node_name.clone(),
            noderoutes: self.noderoutes.clone(),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(self.config.node_name.clone()),
                },
            ),
            announced: BTreeSet::new(),
            announced_problems: BTreeSet::new(),
        };
        let reporting = tokio::spawn(reporter.run(status_rx, self.config.resync));
        let mut netlink = None;
        let mut first = true;
        // The state last applied: an event that changes nothing for this node (another
        // node's Programmed condition, say) costs no kernel check; the periodic check
        // (its own ticker, which events do not postpone) always looks at the kernel.
        let mut applied: Option<Desired> = None;
        // What `applied` was computed from: while the inputs stay the same, so does the
        // desired state (a periodic check at 20,000 peers spent most of its time
        // working it out again).
        let mut applied_from: Option<Inputs> = None;
        // When the routing table must be read again.
        let mut route_watch = RouteWatch::default();
        // Whether `applied` is what the saved state holds (or nothing is due there).
        let mut saved = false;
        // The policy plan last applied (`Some(None)`: the table removed).
        let mut policy_applied: Option<Option<PolicyPlan>> = None;
        let mut seen_rejections = BTreeSet::new();
        let mut periodic = true;
        let mut periodic_passes = 0u64;
        let mut ticker = tokio::time::interval(self.config.resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            // The pass is synchronous (netlink, nft and iptables runs, the policy
            // compile): it runs off the runtime's other worker, so /healthz, the
            // watches and the status writer keep answering however long it takes — a
            // pass over 1,000 pods and 500 policies starved them once, and kubelet's
            // liveness probe killed every daemon.
            off_runtime(|| {
                let started = Instant::now();
                let inputs = Inputs::of(&self.noderoutes, &self.networks);
                let fresh = match (&applied, &applied_from) {
                    (Some(_), Some(from)) if *from == inputs => None,
                    _ => Some(desired_state(
                        &self.config.node_name,
                        &self.noderoutes.state(),
                        &inputs.networks,
                        applied.as_ref(),
                    )),
                };
                let Some(desired) = fresh.as_ref().or(applied.as_ref()) else {
                    return;
                };
                // A state worked out again may still be the same.
                let changed = fresh.as_ref().is_some_and(|d| applied.as_ref() != Some(d));
                if periodic {
                    periodic_passes += 1;
                    // An automatic firewall choice follows the node (kube-proxy started after
                    // podnet, or changed modes): looked at again at every check for the first
                    // thirty, then at every tenth.
                    if periodic_passes <= 30 || periodic_passes.is_multiple_of(10) {
                        self.reconsider_firewall();
                    }
                }
                let compiled = self.compile_policy(desired);
                let policy_plan = compiled.as_ref().map(|c| c.plan.clone());
                if periodic || changed || policy_applied.as_ref() != Some(&policy_plan) {
                    let nl = match netlink.take() {
                        Some(nl) => Ok(nl),
                        None => self.netlink(),
                    };
                    match nl {
                        Ok(mut nl) => {
                            if changed {
                                route_watch.desired_changed();
                            }
                            let mut report =
                                self.sync_watched(&mut nl, desired, Some(&mut route_watch));
                            // The table waits for the node's own CIDRs: a pod address is
                            // known from them.
                            let policy_due = policy_plan.is_some() || policy_applied != Some(None);
                            if policy_due
                                && (!desired.own_cidrs.is_empty() || policy_plan.is_none())
                            {
                                match self.apply_policy(policy_plan.as_ref(), periodic, started) {
                                    Ok(written) => {
                                        report.policy_written = written;
                                        policy_applied = Some(policy_plan.clone());
                                    }
                                    Err(e) => report.errors.push(format!("network policy: {e}")),
                                }
                            }
                            self.record(&report, first, &mut seen_rejections);
                            if report.errors.is_empty() {
                                if first {
                                    info!(routes = report.routes.programmed, "first sync applied");
                                    self.health.set_ready(true);
                                    first = false;
                                }
                            } else {
                                warn!(errors = ?report.errors, "sync failed in part: the rest of the pass was applied; retrying");
                            }
                            // The saved state is written again only when it changed
                            // (a periodic check at 20,000 peers serialized and compared
                            // a 1.5 MB file every period otherwise).
                            if changed || !saved {
                                saved = self.save_state(desired, &report);
                            }
                            let next = Report {
                                programmed: programmed(desired, &report),
                                rejected: report.rejected,
                                firewall: report.firewall,
                                problems: compiled.map(|c| c.problems).unwrap_or_default(),
                            };
                            if let Some(fresh) = fresh {
                                applied = Some(fresh);
                                applied_from = Some(inputs);
                            }
                            status_tx.send_if_modified(|s| replace(s, next));
                            netlink = Some(nl);
                        }
                        Err(e) => {
                            self.metrics.errors.inc();
                            warn!(error = %e, "cannot open netlink");
                        }
                    }
                    self.metrics
                        .sync_duration
                        .observe(started.elapsed().as_secs_f64());
                }
            });
            tokio::select! {
                _ = self.notify.notified() => periodic = false,
                _ = ticker.tick() => periodic = true,
                _ = shutdown.changed() => break,
            }
        }
        drop(status_tx);
        reporting.abort();
        info!("stopping; routes, rules and the CNI config stay in place");
    }

    /// Keeps what this pass programmed for a restart without an API server; only a
    /// state whose own allocation is known, programmed without errors, is worth
    /// keeping. Returns true when nothing is left to save for `desired` (saved, or not
    /// worth saving); false to try again at the next pass.
    fn save_state(&self, desired: &Desired, report: &PassReport) -> bool {
        let Some(dir) = &self.config.state_dir else {
            return true;
        };
        if !report.errors.is_empty() {
            return false;
        }
        if desired.own_cidrs.is_empty() {
            return true;
        }
        match state::save(dir, desired) {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "cannot save the programmed state");
                false
            }
        }
    }

    fn record(
        &self,
        report: &PassReport,
        first: bool,
        seen: &mut BTreeSet<(String, Option<IpNet>, Rule)>,
    ) {
        if !report.errors.is_empty() {
            self.metrics.errors.inc();
        }
        let writes = report.writes();
        if writes > 0 {
            info!(
                routes_written = report.routes.written,
                routes_removed = report.routes.removed,
                masquerade = report.masquerade_written,
                cni_config = report.cni_written,
                bridge_addresses_removed = report.bridge_addresses_removed,
                "dataplane updated"
            );
            if !first {
                self.metrics.drift_repairs.inc_by(writes as u64);
            }
        }
        self.metrics
            .routes_programmed
            .set(report.routes.programmed as i64);
        self.metrics
            .routes_desired
            .set((report.routes.programmed + report.rejected.len()) as i64);
        let now = rejection_keys(&report.rejected);
        for rule in Rule::ALL {
            let label = RuleLabel {
                rule: rule.as_str().into(),
            };
            let count = report.rejected.iter().filter(|r| r.rule == rule).count();
            self.metrics
                .routes_rejected
                .get_or_create(&label)
                .set(count as i64);
        }
        for r in &report.rejected {
            if !seen.contains(&(r.node.clone(), r.cidr, r.rule)) {
                warn!(peer = %r.node, cidr = ?r.cidr, rule = %r.rule, detail = %r.detail, "route refused");
                self.metrics
                    .rejections
                    .get_or_create(&RuleLabel {
                        rule: r.rule.as_str().into(),
                    })
                    .inc();
            }
        }
        *seen = now;
    }

    /// One pass: each part applied on its own, every error collected; the routing
    /// table is read and compared in full.
    pub fn sync(&self, nl: &mut Netlink, desired: &Desired) -> PassReport {
        self.sync_watched(nl, desired, None)
    }

    /// One pass; with `watch`, the routing table is read only when it may have
    /// changed since the last read ([`RouteWatch`]).
    fn sync_watched(
        &self,
        nl: &mut Netlink,
        desired: &Desired,
        watch: Option<&mut RouteWatch>,
    ) -> PassReport {
        let mut report = PassReport {
            rejected: desired.rejected.clone(),
            ..Default::default()
        };
        let bridge = match nl.link_by_name(&self.config.bridge) {
            Ok(b) => b,
            Err(e) => {
                report
                    .errors
                    .push(format!("reading bridge {}: {e}", self.config.bridge));
                None
            }
        };
        if let Some(bridge) = &bridge
            && !desired.own_cidrs.is_empty()
        {
            match remove_stale_gateways(nl, bridge.index, &desired.own_cidrs) {
                Ok(n) => report.bridge_addresses_removed = n,
                Err(e) => report.errors.push(format!("bridge addresses: {e}")),
            }
        }
        let mut watch = watch;
        match watch
            .as_deref_mut()
            .and_then(|w| w.unchanged(|| self.netlink()))
        {
            Some(verified) => {
                self.metrics
                    .route_checks
                    .get_or_create(&CheckLabel { how: "unchanged" })
                    .inc();
                report.rejected.extend(verified.rejected);
                report.routes.programmed = verified.programmed;
            }
            None => {
                self.metrics
                    .route_checks
                    .get_or_create(&CheckLabel { how: "read" })
                    .inc();
                let kernel = read_routes(nl).and_then(|routes| {
                    let addresses = nl
                        .all_addresses()?
                        .into_iter()
                        .filter(|a| Some(a.index) != bridge.as_ref().map(|b| b.index))
                        .filter_map(|a| IpNet::new(a.ip, a.prefix).ok())
                        .collect();
                    Ok(KernelView { routes, addresses })
                });
                let verified = match kernel {
                    Ok(kernel) => {
                        let plan = plan_routes(&desired.routes, &kernel);
                        report.rejected.extend(plan.rejected.iter().cloned());
                        report.routes = apply_routes(nl, &plan);
                        report.errors.extend(report.routes.errors.iter().cloned());
                        report.routes.errors.is_empty().then_some(Verified {
                            rejected: plan.rejected,
                            programmed: report.routes.programmed,
                        })
                    }
                    Err(e) => {
                        report
                            .errors
                            .push(format!("reading the routing table: {e}"));
                        None
                    }
                };
                if let Some(w) = watch.as_deref_mut() {
                    w.read(verified);
                }
            }
        }
        report.rejected.sort();
        let (backend, masquerade) = self.masquerade(desired);
        report.firewall = Some(backend);
        match masquerade {
            Ok(written) => report.masquerade_written = written,
            Err(e) => report.errors.push(format!("masquerade: {e}")),
        }
        if !desired.own_cidrs.is_empty() {
            // The default route's MTU is looked up again only when the table may have
            // changed (it takes a dump of the whole table: 20,000 routes at scale).
            let known = watch.as_deref().and_then(|w| w.default_mtu);
            let mtu = match (desired.mtu, known) {
                (Some(m), _) | (None, Some(m)) => Ok(m),
                (None, None) => nl.default_route_mtu(),
            };
            if let (Some(w), Ok(m), None) = (watch, &mtu, desired.mtu) {
                w.default_mtu = Some(*m);
            }
            match mtu {
                Ok(mtu) => {
                    let text = cniconf::render(
                        &desired.own_cidrs,
                        mtu,
                        &self.config.bridge,
                        &self.config.ipam_dir,
                        Some(backend.as_str()),
                    );
                    match cniconf::write_if_changed(&self.config.cni_conf_dir, &text) {
                        Ok(w) => report.cni_written = w,
                        Err(e) => report.errors.push(format!(
                            "writing the CNI config into {}: {e}",
                            self.config.cni_conf_dir.display()
                        )),
                    }
                }
                Err(e) => report
                    .errors
                    .push(format!("reading the default route's MTU: {e}")),
            }
        }
        report
    }
}

impl Daemon {
    /// NetworkPolicy compiled for this node (`None`: enforcement off).
    fn compile_policy(&self, desired: &Desired) -> Option<Compiled> {
        let inputs = self.policy_inputs.as_ref()?;
        let pods: Vec<PodView> = inputs
            .pods
            .state()
            .iter()
            .filter_map(|p| policy::pod_view(p))
            .collect();
        let namespaces = inputs
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let policies: Vec<NetworkPolicy> = inputs
            .policies
            .state()
            .iter()
            .map(|p| (**p).clone())
            .collect();
        let cluster: Vec<ClusterNetworkPolicy> = inputs
            .cluster
            .iter()
            .flat_map(|c| c.state())
            .map(|p| (*p).clone())
            .collect();
        let mut c = policy::compile(
            &self.config.node_name,
            &desired.own_cidrs,
            &pods,
            &namespaces,
            &policies,
            &cluster,
        );
        c.plan.log_drops = self.config.policy_log_drops;
        self.metrics
            .policies
            .set(i64::try_from(c.policies).unwrap_or(i64::MAX));
        self.metrics
            .isolated_pods
            .set(i64::try_from(c.plan.pods.len()).unwrap_or(i64::MAX));
        self.metrics
            .policy_problems
            .set(i64::try_from(c.problems.len()).unwrap_or(i64::MAX));
        Some(c)
    }

    /// Makes the policy table match `plan` (`None`: no table); on periodic passes also
    /// reads its drop counters. Returns whether it wrote.
    fn apply_policy(
        &self,
        plan: Option<&PolicyPlan>,
        periodic: bool,
        woken: Instant,
    ) -> Result<bool, firewall::FirewallError> {
        let runner = Runner {
            netns: self.config.netns.clone(),
        };
        let written = firewall::policy::apply(&runner, plan)?;
        if let Some(plan) = plan {
            let bridged = runner.bridge_netfilter();
            self.metrics.policy_bridge_netfilter.set(i64::from(bridged));
            if !bridged && !plan.pods.is_empty() {
                return Err(firewall::FirewallError {
                    command: "net.bridge.bridge-nf-call-iptables / -ip6tables".into(),
                    detail: "bridge netfilter is off: traffic between two pods of this node is bridged past network policy (load br_netfilter and set both to 1, as kubeadm requires)".into(),
                });
            }
        }
        if written {
            self.metrics.policy_writes.inc();
            self.metrics
                .policy_update
                .observe(woken.elapsed().as_secs_f64());
            info!(
                isolated_pods = plan.map_or(0, |p| p.pods.len()),
                sets = plan.map_or(0, |p| p.sets.len()),
                "network policy programmed"
            );
        }
        if periodic && plan.is_some() {
            self.metrics.policy_dropped.clear();
            for (chain, packets) in firewall::policy::drops(&runner)? {
                self.metrics
                    .policy_dropped
                    .get_or_create(&ChainLabel { chain })
                    .set(i64::try_from(packets).unwrap_or(i64::MAX));
            }
        }
        Ok(written)
    }

    /// Applies masquerade through the chosen firewall, choosing it first if needed.
    /// When the choice changes (a chart upgrade, kube-proxy switched modes), podnet's
    /// rules leave the backends it no longer uses. Returns the backend (chosen even when
    /// applying fails: the CNI config names it for hostPorts) and the transactions run.
    fn masquerade(&self, desired: &Desired) -> (Backend, Result<usize, firewall::FirewallError>) {
        let mut guard = self
            .firewall
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let driver = match guard.take() {
            Some(d) => guard.insert(d),
            None => {
                let runner = Runner {
                    netns: self.config.netns.clone(),
                };
                let (backend, why) = firewall::choose(self.config.firewall, &runner.facts());
                info!(firewall = %backend, why = %why, "firewall chosen");
                for other in Backend::ALL.into_iter().filter(|b| *b != backend) {
                    match firewall::driver(other, runner.clone()).remove() {
                        Ok(true) => {
                            info!(firewall = %other, "removed podnet's rules from a firewall it no longer uses")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            debug!(firewall = %other, error = %e, "could not look at a firewall podnet does not use")
                        }
                    }
                }
                for b in Backend::ALL {
                    self.metrics
                        .firewall
                        .get_or_create(&BackendLabel {
                            backend: b.as_str().into(),
                        })
                        .set(i64::from(b == backend));
                }
                guard.insert(firewall::driver(backend, runner))
            }
        };
        let written = driver.apply(desired.masquerade.as_ref());
        (driver.backend(), written)
    }

    /// Forgets the firewall choice, so the next pass looks at the node again (automatic
    /// choice only).
    fn reconsider_firewall(&self) {
        if self.config.firewall == Setting::Auto {
            let mut guard = self
                .firewall
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(current) = guard.as_ref().map(|d| d.backend()) {
                let runner = Runner {
                    netns: self.config.netns.clone(),
                };
                let (backend, _) = firewall::choose(Setting::Auto, &runner.facts());
                if backend != current {
                    *guard = None;
                }
            }
        }
    }
}

/// Removes addresses from podnet's bridge that are not the gateway of one of this
/// node's CIDRs (left from a CIDR the node no longer owns): their connected route
/// would shadow the route to the peer that owns that CIDR now.
fn remove_stale_gateways(
    nl: &mut Netlink,
    bridge: u32,
    own: &[IpNet],
) -> Result<usize, podnet_netlink::Error> {
    let gateways: Vec<(std::net::IpAddr, u8)> = own
        .iter()
        .map(|n| (podnet_contract::gateway(n), n.prefix_len()))
        .collect();
    let mut removed = 0;
    for (ip, prefix) in nl.addresses(bridge)? {
        if !gateways.contains(&(ip, prefix)) && nl.del_address(bridge, ip, prefix)? {
            info!(address = %format!("{ip}/{prefix}"), "removed a stale gateway address from the bridge");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Stores `new` in `slot`; true when that changed it (for `send_if_modified`).
fn replace(slot: &mut Option<Report>, new: Report) -> bool {
    if slot.as_ref() == Some(&new) {
        return false;
    }
    *slot = Some(new);
    true
}

/// Writes this node's Programmed condition and the rejection events, apart from the
/// dataplane loop.
struct StatusReporter {
    api: Api<NodeRoute>,
    node_name: String,
    noderoutes: Cache<Peer>,
    recorder: Recorder,
    /// Rejections already announced as events (each is announced once while it lasts).
    announced: BTreeSet<(String, Option<IpNet>, Rule)>,
    /// Policy problems already announced.
    announced_problems: BTreeSet<Problem>,
}

impl StatusReporter {
    /// Applies the latest report whenever it changes, and again on every resync if the
    /// object lost it; a failed write is retried with a short backoff.
    async fn run(mut self, mut latest: watch::Receiver<Option<Report>>, resync: Duration) {
        let mut backoff = WatchBackoff::default();
        let mut retry: Option<Duration> = None;
        let mut ticker = tokio::time::interval(resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let report = latest.borrow_and_update().clone();
            if let Some(report) = report {
                self.announce(&report.rejected).await;
                self.announce_problems(&report.problems).await;
                match self.apply(&report.programmed, report.firewall).await {
                    Ok(()) => {
                        backoff.reset();
                        retry = None;
                    }
                    Err(e) => {
                        let delay = backoff.next().unwrap_or(resync);
                        debug!(error = %e, ?delay, "status write failed; retrying");
                        retry = Some(delay);
                    }
                }
            }
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(retry.unwrap_or(resync)), if retry.is_some() => {}
                _ = ticker.tick() => {}
            }
        }
    }

    /// One Warning event on each peer's NodeRoute for every rejection not announced yet.
    async fn announce(&mut self, rejected: &[Rejection]) {
        let now = rejection_keys(rejected);
        self.announced.retain(|k| now.contains(k));
        for r in rejected {
            let key = (r.node.clone(), r.cidr, r.rule);
            if self.announced.contains(&key) {
                continue;
            }
            let Some(peer) = self.noderoutes.get(&r.node) else {
                continue;
            };
            let ev = Event {
                type_: EventType::Warning,
                reason: reason::ROUTE_REJECTED.into(),
                note: Some(
                    format!(
                        "node {} refuses a route to {}: {} ({})",
                        self.node_name,
                        r.cidr
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "this node".into()),
                        r.rule,
                        r.detail
                    )
                    .chars()
                    .take(1000)
                    .collect(),
                ),
                action: "Route".into(),
                secondary: None,
            };
            match self.recorder.publish(&ev, &peer.object_ref()).await {
                Ok(()) => {
                    self.announced.insert(key);
                }
                Err(e) => debug!(error = %e, "could not publish an event"),
            }
        }
    }

    /// One Warning event on each NetworkPolicy for every part of it this node does not
    /// enforce, once while it lasts.
    async fn announce_problems(&mut self, problems: &[Problem]) {
        self.announced_problems.retain(|p| problems.contains(p));
        for p in problems {
            if self.announced_problems.contains(p) {
                continue;
            }
            let ev = Event {
                type_: EventType::Warning,
                reason: reason::POLICY_NOT_ENFORCED.into(),
                note: Some(
                    format!("node {}: {}", self.node_name, p.why)
                        .chars()
                        .take(1000)
                        .collect(),
                ),
                action: "Enforce".into(),
                secondary: None,
            };
            let reference = if p.cluster {
                k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some(format!(
                        "{}/{}",
                        crate::cluster_policy::GROUP,
                        crate::cluster_policy::VERSION
                    )),
                    kind: Some("ClusterNetworkPolicy".into()),
                    name: Some(p.name.clone()),
                    ..Default::default()
                }
            } else {
                k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("networking.k8s.io/v1".into()),
                    kind: Some("NetworkPolicy".into()),
                    name: Some(p.name.clone()),
                    namespace: Some(p.namespace.clone()),
                    ..Default::default()
                }
            };
            match self.recorder.publish(&ev, &reference).await {
                Ok(()) => {
                    self.announced_problems.insert(p.clone());
                }
                Err(e) => debug!(error = %e, "could not publish an event"),
            }
        }
    }

    /// Applies the Programmed condition on this node's NodeRoute (server-side apply,
    /// field manager podnet-daemon).
    async fn apply(
        &self,
        programmed: &Programmed,
        firewall: Option<Backend>,
    ) -> Result<(), kube::Error> {
        let name = &self.node_name;
        let Some(current) = self.noderoutes.get(name) else {
            return Ok(());
        };
        let own = current.own.as_deref().cloned().unwrap_or_default();
        let previous: Vec<_> = own.programmed.into_iter().collect();
        let cond = make_condition(
            &previous,
            condition_type::PROGRAMMED,
            programmed.status,
            programmed.reason,
            programmed.message.clone(),
            own.generation,
        );
        let firewall = firewall.map(|b| b.as_str().to_string());
        let current_firewall = own.firewall;
        if find_condition(&previous, condition_type::PROGRAMMED).is_some_and(|c| {
            c.status == cond.status && c.reason == cond.reason && c.message == cond.message
        }) && (firewall.is_none() || firewall == current_firewall)
        {
            return Ok(());
        }
        let patch = StatusPatch {
            api_version: API_VERSION,
            kind: "NodeRoute",
            metadata: Meta { name },
            status: DaemonStatus {
                conditions: vec![cond],
                firewall,
            },
        };
        self.api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        Ok(())
    }
}

/// The server-side apply body of the daemon's status write: only its own condition and
/// the firewall it programs (the operator's fields and conditions are owned by the
/// operator's field manager).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusPatch<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta<'a>,
    status: DaemonStatus,
}

#[derive(Debug, Serialize)]
struct Meta<'a> {
    name: &'a str,
}

#[derive(Debug, Serialize)]
struct DaemonStatus {
    conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firewall: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::PeerRoute;

    fn desired() -> Desired {
        Desired {
            own_cidrs: vec!["10.244.1.0/24".parse().unwrap_or_default()],
            routes: vec![PeerRoute {
                dst: "10.244.2.0/24".parse().unwrap_or_default(),
                via: "198.18.0.2"
                    .parse()
                    .unwrap_or(std::net::IpAddr::from([0; 4])),
                node: "b".into(),
            }],
            ..Default::default()
        }
    }

    fn rejection(node: &str) -> Rejection {
        Rejection {
            node: node.into(),
            cidr: "0.0.0.0/0".parse().ok(),
            rule: Rule::DefaultRoute,
            detail: "a default route is never a pod CIDR".into(),
        }
    }

    #[test]
    fn programmed_says_what_happened_in_order_of_importance() {
        let mut report = PassReport::default();
        report.routes.programmed = 1;
        let ok = programmed(&desired(), &report);
        assert_eq!(
            (ok.status, ok.reason, ok.message.as_str()),
            (
                ConditionStatus::True,
                reason::PROGRAMMED,
                "1 routes programmed"
            )
        );
        report.rejected = (0..7).map(|i| rejection(&format!("n{i}"))).collect();
        let rej = programmed(&desired(), &report);
        assert_eq!(rej.reason, reason::ROUTES_REJECTED);
        assert_eq!(rej.status, ConditionStatus::True);
        assert!(
            rej.message.contains("n0 0.0.0.0/0: DefaultRoute"),
            "{}",
            rej.message
        );
        assert!(rej.message.ends_with("and 2 more"), "{}", rej.message);
        report.errors = vec!["masquerade: iptables-restore: boom".into()];
        let failed = programmed(&desired(), &report);
        assert_eq!(
            (failed.status, failed.reason),
            (ConditionStatus::False, reason::SYNC_FAILED)
        );
        assert!(failed.message.contains("boom"));
        let mut waiting = desired();
        waiting.own_cidrs.clear();
        assert_eq!(
            programmed(&waiting, &report).reason,
            reason::WAITING_FOR_ALLOCATION
        );
        waiting.own_invalid = Some("bad".into());
        assert_eq!(
            programmed(&waiting, &report).reason,
            reason::OWN_ALLOCATION_INVALID
        );
    }

    #[test]
    fn listing_names_a_few_and_counts_the_rest() {
        assert_eq!(listing(&["a", "b"]), "a; b");
        assert_eq!(
            listing(&["1", "2", "3", "4", "5", "6"]),
            "1; 2; 3; 4; 5; and 1 more"
        );
    }
}
