//! The daemon's loop: watch NodeRoutes and PodNetworks, and on every change and every
//! resync period converge routes, masquerade rules and the CNI config; report
//! `Programmed` on the node's own NodeRoute when it changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::utils::Backoff;
use kube::{Client, ResourceExt};
use podnet_common::{ApiClients, Health, WatchBackoff, spawn_reflector, strip_managed_fields};
use podnet_crds::{ConditionStatus, NodeRoute, PodNetwork, find_condition, make_condition};
use podnet_netlink::Netlink;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::cniconf;
use crate::desired::{Desired, desired_state};
use crate::masquerade::Iptables;
use crate::routes::reconcile_routes;

/// The field manager of the daemon's status writes.
pub const FIELD_MANAGER: &str = "podnet-daemon";
/// The condition the daemon owns.
pub const PROGRAMMED: &str = "Programmed";

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
    /// Drift check period.
    pub resync: Duration,
}

/// The daemon's metrics.
#[derive(Clone)]
pub struct DaemonMetrics {
    routes_desired: Gauge,
    routes_programmed: Gauge,
    peers_skipped: Gauge,
    drift_repairs: Counter,
    errors: Counter,
    sync_duration: Histogram,
}

impl DaemonMetrics {
    /// Registers the metrics under `podnet_daemon_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            routes_desired: Gauge::default(),
            routes_programmed: Gauge::default(),
            peers_skipped: Gauge::default(),
            drift_repairs: Counter::default(),
            errors: Counter::default(),
            sync_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("podnet_daemon");
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
            "peers_skipped",
            "Peers without a route (bad data or not on-link)",
            m.peers_skipped.clone(),
        );
        r.register(
            "drift_repairs",
            "Writes that repaired a difference found by a check",
            m.drift_repairs.clone(),
        );
        r.register("errors", "Failed sync passes", m.errors.clone());
        r.register(
            "sync_duration_seconds",
            "Duration of one sync pass",
            m.sync_duration.clone(),
        );
        m
    }
}

/// Errors of one sync pass.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] podnet_netlink::Error),
    /// iptables failed.
    #[error(transparent)]
    Masquerade(#[from] crate::masquerade::MasqueradeError),
    /// Writing the CNI config failed.
    #[error("writing the CNI config: {0}")]
    CniConfig(#[from] std::io::Error),
}

/// The running daemon.
pub struct Daemon {
    client: Client,
    config: DaemonConfig,
    noderoutes: Store<NodeRoute>,
    networks: Store<PodNetwork>,
    notify: Arc<Notify>,
    health: Arc<Health>,
    metrics: DaemonMetrics,
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
        Self {
            noderoutes: spawn_reflector(
                Api::all(clients.watch.clone()),
                Arc::clone(&notify),
                strip_managed_fields,
            ),
            networks: spawn_reflector(
                Api::all(clients.watch),
                Arc::clone(&notify),
                strip_managed_fields,
            ),
            client: clients.request,
            config,
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

    /// Runs until `shutdown`; leaves the dataplane as it is on exit.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tokio::select! {
            _ = async { let _ = self.noderoutes.wait_until_ready().await; let _ = self.networks.wait_until_ready().await; } => {}
            _ = shutdown.changed() => return,
        }
        debug!(noderoutes = self.noderoutes.state().len(), "caches synced");
        // The Programmed condition is written by its own task: the dataplane never waits
        // on the API server (which may be slow, restarting, or gone).
        let (status_tx, status_rx) = watch::channel(None);
        let reporter = StatusReporter {
            api: Api::all(self.client.clone()),
            node_name: self.config.node_name.clone(),
            noderoutes: self.noderoutes.clone(),
        };
        let reporting = tokio::spawn(reporter.run(status_rx, self.config.resync));
        let mut netlink = None;
        let mut first = true;
        // The state last applied: an event that changes nothing for this node (another
        // node's Programmed condition, say) costs no kernel check; the periodic check
        // (its own ticker, which events do not postpone) always looks at the kernel.
        let mut applied: Option<Desired> = None;
        let mut periodic = true;
        let mut ticker = tokio::time::interval(self.config.resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let started = Instant::now();
            let desired = desired_state(
                &self.config.node_name,
                &self.noderoutes.state(),
                &self.networks.state(),
            );
            if periodic || applied.as_ref() != Some(&desired) {
                let nl = match netlink.take() {
                    Some(nl) => Ok(nl),
                    None => self.netlink(),
                };
                match nl {
                    Ok(mut nl) => {
                        match self.sync(&mut nl, &desired, first) {
                            Ok(summary) => {
                                applied = Some(desired.clone());
                                if first {
                                    info!(routes = desired.routes.len(), "first sync applied");
                                    self.health.set_ready(true);
                                    first = false;
                                }
                                status_tx.send_if_modified(|s| replace(s, summary));
                            }
                            Err(e) => {
                                self.metrics.errors.inc();
                                warn!(error = %e, "sync failed; retrying");
                                let status =
                                    ("False".to_string(), "SyncFailed".to_string(), e.to_string());
                                status_tx.send_if_modified(|s| replace(s, status));
                            }
                        }
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

    /// One pass. Returns the desired state and the Programmed condition to report.
    fn sync(
        &self,
        nl: &mut Netlink,
        desired: &Desired,
        first: bool,
    ) -> Result<(String, String, String), SyncError> {
        let routes = reconcile_routes(nl, &desired.routes)?;
        let masq = Iptables {
            netns: self.config.netns.clone(),
        }
        .apply(desired.masquerade.as_ref())?;
        let mut cni_written = false;
        if !desired.own_cidrs.is_empty() {
            let mtu = match desired.mtu {
                Some(m) => m,
                None => nl.default_route_mtu()?,
            };
            let text = cniconf::render(
                &desired.own_cidrs,
                mtu,
                &self.config.bridge,
                &self.config.ipam_dir,
            );
            cni_written = cniconf::write_if_changed(&self.config.cni_conf_dir, &text)?;
        }
        let writes = routes.written + routes.removed + masq.written + usize::from(cni_written);
        if writes > 0 {
            info!(
                routes_written = routes.written,
                routes_removed = routes.removed,
                masquerade = masq.written,
                cni_config = cni_written,
                "dataplane updated"
            );
            if !first {
                self.metrics.drift_repairs.inc_by(writes as u64);
            }
        }
        let mut skipped = desired.skipped.clone();
        skipped.extend(routes.skipped.iter().cloned());
        self.metrics.routes_desired.set(desired.routes.len() as i64);
        self.metrics.routes_programmed.set(routes.programmed as i64);
        self.metrics.peers_skipped.set(skipped.len() as i64);
        let status = if desired.own_cidrs.is_empty() {
            (
                "False".into(),
                "WaitingForAllocation".into(),
                "this node has no pod CIDR yet".into(),
            )
        } else if skipped.is_empty() {
            (
                "True".into(),
                "Programmed".into(),
                format!("{} routes programmed, 0 peers skipped", routes.programmed),
            )
        } else {
            let why: Vec<String> = skipped
                .iter()
                .take(5)
                .map(|s| format!("{}: {}", s.node, s.reason))
                .collect();
            (
                "True".into(),
                "PeersSkipped".into(),
                format!(
                    "{} routes programmed, {} peers skipped ({})",
                    routes.programmed,
                    skipped.len(),
                    why.join("; ")
                ),
            )
        };
        Ok(status)
    }
}

/// The Programmed condition: status, reason, message.
type Status = (String, String, String);

/// Stores `new` in `slot`; true when that changed it (for `send_if_modified`).
fn replace(slot: &mut Option<Status>, new: Status) -> bool {
    if slot.as_ref() == Some(&new) {
        return false;
    }
    *slot = Some(new);
    true
}

/// Writes this node's Programmed condition, apart from the dataplane loop.
struct StatusReporter {
    api: Api<NodeRoute>,
    node_name: String,
    noderoutes: Store<NodeRoute>,
}

impl StatusReporter {
    /// Applies the latest status the loop published: at once when it changes, after a
    /// backoff (250 ms to 4 s) when the write failed, and every `resync` otherwise (a
    /// no-op unless the condition on the object differs, e.g. the NodeRoute was
    /// re-created). Ends when the loop drops its sender.
    async fn run(self, mut latest: watch::Receiver<Option<Status>>, resync: Duration) {
        let mut backoff = WatchBackoff::default();
        let mut ticker = tokio::time::interval(resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let status = latest.borrow_and_update().clone();
            let mut retry = None;
            if let Some(status) = status {
                match self.apply(&status).await {
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        warn!(error = %e, "could not report Programmed; retrying");
                        retry = backoff.next();
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

    /// Applies the Programmed condition on this node's NodeRoute (server-side apply,
    /// field manager podnet-daemon).
    async fn apply(&self, (status, reason, message): &Status) -> Result<(), kube::Error> {
        let name = &self.node_name;
        let current = self
            .noderoutes
            .state()
            .into_iter()
            .find(|n| n.name_any() == *name);
        let Some(current) = current else {
            return Ok(());
        };
        let previous = current.status.clone().unwrap_or_default().conditions;
        let st = match status.as_str() {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        };
        let cond = make_condition(
            &previous,
            PROGRAMMED,
            st,
            reason,
            message.clone(),
            current.metadata.generation,
        );
        if find_condition(&previous, PROGRAMMED).is_some_and(|c| {
            c.status == cond.status && c.reason == cond.reason && c.message == cond.message
        }) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute",
            "metadata": {"name": name},
            "status": {"conditions": [cond]},
        });
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
