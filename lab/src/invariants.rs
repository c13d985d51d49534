//! What must hold on a lab at rest, whatever happened before: the checks the fault suite
//! runs after every scenario.
//!
//! - no pod CIDR on two NodeRoutes (no overlap at all, across nodes and families);
//! - every Node has a NodeRoute that is Allocated, or says its pool is exhausted;
//! - every lab node's kernel holds exactly the podnet routes (protocol 233) to every
//!   peer's CIDRs via that peer's address of the same family: none missing, none leaked;
//!   each inside a CIDR its PodNetwork serves, none a default route, none overlapping a
//!   network the node is on; and the node's routes of other owners are exactly those it
//!   had when the lab first converged;
//! - every lab node holds exactly one lease per pod address, one attachment record and
//!   one host veth per pod: nothing leaked;
//! - every pod still has its addresses, and every pod reaches every pod and the
//!   external host, IPv4 and IPv6.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use podnet_crds::NodeRoute;

use crate::cluster::{LabState, matrix};
use crate::{LabError, run_ok};

/// What one check saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Nodes (Kubernetes objects) checked.
    pub nodes: usize,
    /// Of them, with their CIDRs.
    pub allocated: usize,
    /// Of them, waiting on an exhausted pool.
    pub exhausted: usize,
    /// podnet routes checked across the lab's nodes.
    pub routes: usize,
    /// Pods checked (addresses, leases, connectivity).
    pub pods: usize,
    /// Connectivity paths checked.
    pub paths: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} nodes ({} allocated, {} exhausted), {} routes exact, {} pods kept addresses, {} paths reachable",
            self.nodes, self.allocated, self.exhausted, self.routes, self.pods, self.paths
        )
    }
}

/// Runs [`check`] until it passes or `timeout` passes (the lab converges after a fault:
/// the invariants must hold at rest, not mid-flight); the last failure otherwise.
pub async fn check_eventually(state: &LabState, timeout: Duration) -> Result<Report, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check(state, false).await {
            Ok(_) => return check(state, true).await,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Checks every invariant once; with `connectivity`, also pings every path.
pub async fn check(state: &LabState, connectivity: bool) -> Result<Report, String> {
    let client = admin_client(state).await.map_err(err)?;
    let nrs = Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(err)?
        .items;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(err)?
        .items;
    // Every CIDR a PodNetwork serves: where podnet routes may lead.
    let pools: Vec<IpNet> = Api::<podnet_crds::PodNetwork>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(err)?
        .items
        .iter()
        .flat_map(|pn| {
            pn.spec
                .cidrs
                .iter()
                .chain(pn.status.iter().flat_map(|s| s.served_cidrs.iter()))
                .filter_map(|c| c.parse::<IpNet>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut report = Report {
        nodes: nodes.len(),
        ..Default::default()
    };

    // 1. No CIDR on two nodes.
    let mut all: Vec<(IpNet, String)> = Vec::new();
    for nr in &nrs {
        for c in nr.status.iter().flat_map(|s| &s.pod_cidrs) {
            let net: IpNet = c
                .parse()
                .map_err(|_| format!("{}: malformed pod CIDR {c:?}", nr.name_any()))?;
            all.push((net, nr.name_any()));
        }
    }
    all.sort_by_key(|(n, _)| (n.network(), n.prefix_len()));
    for w in all.windows(2) {
        if w[0].0.contains(&w[1].0.network()) {
            return Err(format!(
                "{} ({}) and {} ({}) overlap",
                w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }

    // 2. Every node allocated, or waiting on an exhausted pool.
    let by_name: BTreeMap<String, &NodeRoute> = nrs.iter().map(|n| (n.name_any(), n)).collect();
    for node in &nodes {
        let name = node.name_any();
        let nr = by_name
            .get(&name)
            .ok_or_else(|| format!("node {name} has no NodeRoute"))?;
        let status = nr.status.clone().unwrap_or_default();
        let allocated = status.conditions.iter().find(|c| c.type_ == "Allocated");
        match allocated.map(|c| (c.status.as_str(), c.reason.as_str())) {
            Some(("True", _)) if !status.pod_cidrs.is_empty() => report.allocated += 1,
            Some(("False", "PoolExhausted")) if status.pod_cidrs.is_empty() => {
                report.exhausted += 1
            }
            other => {
                return Err(format!(
                    "node {name}: Allocated {other:?} with podCIDRs {:?}",
                    status.pod_cidrs
                ));
            }
        }
    }
    for nr in &nrs {
        if !nodes.iter().any(|n| n.name_any() == nr.name_any()) {
            return Err(format!("NodeRoute {} outlived its node", nr.name_any()));
        }
    }

    // 3. Exactly the right routes on every lab node.
    for n in &state.nodes {
        let mut want: BTreeSet<(String, String)> = BTreeSet::new();
        for nr in nrs.iter().filter(|nr| nr.name_any() != n.name) {
            let Some(st) = &nr.status else { continue };
            for c in &st.pod_cidrs {
                let v6 = c.contains(':');
                if let Some(gw) = st.node_ips.iter().find(|ip| ip.contains(':') == v6) {
                    want.insert((c.clone(), gw.clone()));
                }
            }
        }
        let mut have: BTreeSet<(String, String)> = BTreeSet::new();
        for fam in ["-4", "-6"] {
            let out = run_ok(&[
                "ip", "-j", fam, "-n", &n.netns, "route", "show", "proto", "233",
            ])
            .map_err(err)?;
            let routes: Vec<serde_json::Value> = serde_json::from_str(&out).map_err(err)?;
            for r in routes {
                let dst = r["dst"].as_str().unwrap_or_default().to_string();
                let gw = r["gateway"].as_str().unwrap_or_default().to_string();
                have.insert((dst, gw));
            }
        }
        if want != have {
            let missing: Vec<_> = want.difference(&have).collect();
            let leaked: Vec<_> = have.difference(&want).collect();
            return Err(format!(
                "{}: routes missing {missing:?}, leaked {leaked:?}",
                n.name
            ));
        }
        // Against the pools, not only against NodeRoute status (which can be wrong).
        let foreign = crate::probes::foreign_routes(&n.netns).map_err(err)?;
        for (dst, _) in &have {
            let net: IpNet = dst
                .parse()
                .or_else(|_| format!("{dst}/{}", if dst.contains(':') { 128 } else { 32 }).parse())
                .map_err(|_| format!("{}: podnet route to {dst:?}", n.name))?;
            if net.prefix_len() == 0 || !pools.iter().any(|p| p.contains(&net)) {
                return Err(format!(
                    "{}: podnet route to {net} lies outside every served pool {pools:?}",
                    n.name
                ));
            }
            if let Some(f) = foreign.iter().find(|f| {
                f.contains(" proto kernel")
                    && f.split(' ')
                        .next()
                        .and_then(|d| d.parse::<IpNet>().ok())
                        .is_some_and(|c| c.contains(&net) || net.contains(&c))
            }) {
                return Err(format!(
                    "{}: podnet route to {net} overlaps the node's network ({f})",
                    n.name
                ));
            }
        }
        if let Some(baseline) = state.baseline_routes.get(&n.name)
            && *baseline != foreign
        {
            let gone: Vec<_> = baseline.iter().filter(|r| !foreign.contains(r)).collect();
            let new: Vec<_> = foreign.iter().filter(|r| !baseline.contains(r)).collect();
            return Err(format!(
                "{}: routes podnet does not own changed: gone {gone:?}, new {new:?}",
                n.name
            ));
        }
        report.routes += have.len();
    }

    // 4. Leases, attachment records and host veths: one per pod address / pod.
    for n in &state.nodes {
        let pods: Vec<_> = state.pods.iter().filter(|p| p.node == n.name).collect();
        let ipam = state.dir.join(&n.name).join("ipam/podnet");
        let leases = std::fs::read_dir(&ipam)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0);
        let want_leases: usize = pods.iter().map(|p| p.ips.len()).sum();
        if leases != want_leases {
            return Err(format!(
                "{}: {leases} leases for {want_leases} pod addresses",
                n.name
            ));
        }
        let attachments = std::fs::read_dir(ipam.join("attachments"))
            .map(|d| d.count())
            .unwrap_or(0);
        if attachments != pods.len() {
            return Err(format!(
                "{}: {attachments} attachment records for {} pods",
                n.name,
                pods.len()
            ));
        }
        let veths =
            run_ok(&["ip", "-n", &n.netns, "-br", "link", "show", "type", "veth"]).map_err(err)?;
        let host_veths = veths.lines().filter(|l| l.starts_with("pn")).count();
        if host_veths != pods.len() {
            return Err(format!(
                "{}: {host_veths} host veths for {} pods",
                n.name,
                pods.len()
            ));
        }
    }

    // 5. Pods keep their addresses ...
    for p in &state.pods {
        let out =
            run_ok(&["ip", "-n", &p.netns, "-br", "addr", "show", "dev", "eth0"]).map_err(err)?;
        for ip in &p.ips {
            if !out
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(ip))
            {
                return Err(format!("{} lost {ip}: {out}", p.netns));
            }
        }
        report.pods += 1;
    }
    // ... and their connectivity.
    if connectivity {
        let (m, ok, total) = matrix(state);
        if ok != total {
            return Err(format!("{} of {total} paths unreachable:\n{m}", total - ok));
        }
        report.paths = total;
    }
    Ok(report)
}

/// A client authenticated as the lab's admin.
pub async fn admin_client(state: &LabState) -> Result<kube::Client, LabError> {
    crate::client_from_kubeconfig(&state.control_plane.kubeconfig).await
}
