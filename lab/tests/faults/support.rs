//! What the scenarios share: the typed outcome a scenario returns, and helpers to make
//! and remove nodes and networks, find the operator leader, and read a node's kernel
//! state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use podnet_crds::NodeRoute;
use podnet_lab::cluster::{self, LAB_LABEL, LabState};
use podnet_lab::invariants::admin_client;
use podnet_lab::{chart, run_ok};

pub use podnet_lab::objects::{create_nodes, delete_nodes};
pub use podnet_lab::wait_until;

/// What a scenario found, fact by fact, in the order it found them; the harness turns
/// it into the scenario's row of docs/reliability.md.
#[derive(Debug, Default)]
pub struct Outcome(Vec<Fact>);

/// One finding.
#[derive(Debug)]
pub enum Fact {
    /// A property that was checked and held.
    Held(String),
    /// A duration measured.
    Took(String, Duration),
    /// Something counted.
    Count(String, usize),
}

impl Outcome {
    /// Adds a property that held.
    pub fn held(mut self, what: impl Into<String>) -> Self {
        self.0.push(Fact::Held(what.into()));
        self
    }

    /// Adds a measured duration.
    pub fn took(mut self, what: impl Into<String>, d: Duration) -> Self {
        self.0.push(Fact::Took(what.into(), d));
        self
    }

    /// Adds a count.
    pub fn count(mut self, what: impl Into<String>, n: usize) -> Self {
        self.0.push(Fact::Count(what.into(), n));
        self
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let facts: Vec<String> = self
            .0
            .iter()
            .map(|fact| match fact {
                Fact::Held(what) => what.clone(),
                Fact::Took(what, d) => format!("{what}: {:.1} s", d.as_secs_f64()),
                Fact::Count(what, n) => format!("{what}: {n}"),
            })
            .collect();
        f.write_str(&facts.join("; "))
    }
}

pub async fn allocated(client: &Client, prefix: &str) -> anyhow::Result<Vec<NodeRoute>> {
    Ok(Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.name_any().starts_with(prefix))
        .filter(|n| n.status.as_ref().is_some_and(|s| !s.pod_cidrs.is_empty()))
        .collect())
}

pub async fn lease_holder(client: &Client) -> anyhow::Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(client.clone(), chart::NAMESPACE)
        .get_opt("podnet-operator")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

pub async fn apply_network(client: &Client, doc: serde_json::Value) -> anyhow::Result<()> {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Api::<podnet_crds::PodNetwork>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply("fault-suite").force(),
            &Patch::Apply(doc),
        )
        .await?;
    Ok(())
}

pub async fn delete_network(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<podnet_crds::PodNetwork>::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn operator_pid(state: &LabState, identity: &str) -> i32 {
    if identity == "operator-0" {
        state.operator_pid
    } else {
        state.standby_operator_pids[0]
    }
}

pub fn set_operator_pid(state: &mut LabState, identity: &str, pid: i32) {
    if identity == "operator-0" {
        state.operator_pid = pid;
    } else {
        state.standby_operator_pids[0] = pid;
    }
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

/// Restarts the replica that was killed, so the next scenario again has two.
pub async fn replace_replica(state: &mut LabState, identity: &str) -> anyhow::Result<()> {
    let kc = state.control_plane.kubeconfig.clone();
    let pid = cluster::start_operator(state, identity, &kc)?;
    set_operator_pid(state, identity, pid);
    cluster::save(state)?;
    Ok(())
}

pub async fn wait_leader(client: &Client) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = lease_holder(client).await? {
            return Ok(h);
        }
        ensure!(Instant::now() < deadline, "no lease holder after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn probe_node(state: &LabState, name: &str, last_octet: usize) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    create_nodes(
        &client,
        &[name.to_string()],
        &labels(&[(LAB_LABEL, "true")]),
        |_| {
            vec![
                format!("198.18.0.{last_octet}"),
                format!("2001:db8:18::{:x}", 0x1000 + last_octet),
            ]
        },
    )
    .await?;
    // The probe node goes whatever happens, so a failure here leaves no extra peer for
    // the scenarios after it.
    let outcome = probe_routed(state, &client, name).await;
    delete_nodes(&client, &[name.to_string()]).await?;
    outcome
}

pub async fn probe_routed(state: &LabState, client: &Client, name: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let cidr = loop {
        let nr = Api::<NodeRoute>::all(client.clone()).get_opt(name).await?;
        if let Some(c) = nr.and_then(|n| n.status?.pod_cidrs.first().cloned()) {
            break c;
        }
        ensure!(Instant::now() < deadline, "{name} not allocated after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every node, checked together: the error names the ones still missing it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        for n in &state.nodes {
            if !run_ok(&["ip", "-n", &n.netns, "route", "show", "proto", "233"])?.contains(&cidr) {
                missing.push(n.name.as_str());
            }
        }
        if missing.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{name}'s {cidr} allocated, but after 30 s still not routed on {}",
            missing.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(cidr)
}

/// A node's podnet routes (both families) and masquerade rules, sorted.
pub fn kernel_state(netns: &str) -> anyhow::Result<Vec<String>> {
    let mut out = masq_rules(netns)?;
    out.extend(podnet_routes(netns)?);
    out.sort();
    Ok(out)
}

/// A node's podnet routes (protocol 233, both families), sorted.
pub fn podnet_routes(netns: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        out.extend(
            run_ok(&["ip", fam, "-n", netns, "route", "show", "proto", "233"])?
                .lines()
                .map(podnet_lab::probes::without_nexthop_id),
        );
    }
    out.sort();
    Ok(out)
}

/// podnet's masquerade setup in a node: its iptables rules (both families) and its
/// nftables table, whichever the node's daemon uses, one line each, sorted.
pub fn masq_rules(netns: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let dump = run_ok(&["ip", "netns", "exec", netns, tool, "-t", "nat"])?;
        out.extend(
            dump.lines()
                .filter(|l| l.contains("PODNET") || l.contains("podnet"))
                .map(|l| {
                    // Counters differ from dump to dump.
                    l.split(" [").next().unwrap_or(l).to_string()
                }),
        );
    }
    if nft_table_exists(netns)? {
        let table = run_ok(&[
            "ip", "netns", "exec", netns, "nft", "list", "table", "inet", "podnet",
        ])?;
        out.extend(table.lines().map(|l| format!("nft: {}", l.trim())));
    }
    out.sort();
    Ok(out)
}

fn nft_table_exists(netns: &str) -> anyhow::Result<bool> {
    let tables = run_ok(&[
        "ip", "netns", "exec", netns, "nft", "list", "tables", "inet",
    ])?;
    Ok(tables.lines().any(|l| l.trim() == "table inet podnet"))
}

/// Removes podnet's whole masquerade setup from a node by hand, as an admin (or a
/// reboot) would: the iptables hook and chain in one transaction per family, and the
/// nftables table.
pub fn remove_masquerade(netns: &str) -> anyhow::Result<()> {
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        if !run_ok(&["ip", "netns", "exec", netns, save, "-t", "nat"])?.contains(":PODNET-MASQ") {
            continue;
        }
        let out = podnet_lab::output_with_input(
            std::process::Command::new("ip").args(["netns", "exec", netns, restore, "--noflush"]),
            "*nat\n-D POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ\n-F PODNET-MASQ\n-X PODNET-MASQ\nCOMMIT\n",
        )?;
        ensure!(
            out.status.success(),
            "{restore}: removing the masquerade setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if nft_table_exists(netns)? {
        run_ok(&[
            "ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "podnet",
        ])?;
    }
    Ok(())
}
