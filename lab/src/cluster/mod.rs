//! A multi-node podnet on one machine: a lab switch (a bridge in a namespace of its
//! own), one namespace per node attached to it, an "external" host namespace, the
//! control plane on the host, podnet-operator, one podnet-daemon per node (on the host,
//! programming its node's namespace through `--netns`), and pods wired by invoking
//! podnet-cni exactly as a runtime does.
//!
//! Addresses: lab network 198.18.0.0/24 and 2001:db8:18::/64; pods from the default
//! PodNetwork (10.244.0.0/16, fd00:10:244::/56). Nothing routes out of the lab: the
//! switch has no uplink, and the host's root namespace gets no route at all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{ControlPlane, ControlPlaneOptions, DetachedControlPlane, LabError, run_ok};

mod convergence;
mod probes;
mod processes;
mod runtime;
mod topology;

use topology::attach;

pub use convergence::measure_convergence;
pub use probes::{matrix, ping};
pub use processes::{LAB_QUARANTINE_SECS, log_tails, spawn_daemon, start_operator, stop};
pub use runtime::{add_pod, cni, plugin_conf};
pub use topology::{add_node, remove_node};

/// The label of the Nodes the lab's default PodNetwork selects.
pub const LAB_LABEL: &str = "podnet.dev/lab";

/// Where a lab keeps its state by default.
pub const DEFAULT_STATE_DIR: &str = "/run/podnet-lab";

/// One pod of the lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pod {
    /// Its network namespace.
    pub netns: String,
    /// Its node.
    pub node: String,
    /// Its addresses (IPv4 first).
    pub ips: Vec<String>,
}

/// One node of the lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabNode {
    /// Node (and Kubernetes Node) name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its lab addresses.
    pub ips: Vec<String>,
    /// The daemon's PID.
    pub daemon_pid: i32,
    /// The daemon's kubeconfig (the podnet-daemon service account's bound token).
    pub kubeconfig: PathBuf,
    /// The daemon's `--firewall`: the lab alternates `iptables` and `nftables` so that
    /// every fault scenario meets both drivers.
    #[serde(default = "default_firewall")]
    pub firewall: String,
}

fn default_firewall() -> String {
    "iptables".into()
}

/// Everything `down` needs to remove, saved as JSON in the state dir.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// Prefix of every namespace name (unique per lab).
    pub tag: String,
    /// The state directory.
    pub dir: PathBuf,
    /// The control plane.
    pub control_plane: DetachedControlPlane,
    /// podnet-operator's PID.
    pub operator_pid: i32,
    /// More podnet-operator replicas (standing by for the lease), by PID.
    #[serde(default)]
    pub standby_operator_pids: Vec<i32>,
    /// Binaries the lab runs (to check PIDs before signalling them).
    pub bin_dir: PathBuf,
    /// Every namespace the lab made.
    pub namespaces: Vec<String>,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The pods.
    pub pods: Vec<Pod>,
    /// The external host's addresses.
    pub external_ips: Vec<String>,
    /// Each node's routes of other owners (kernel, static...) once the lab first
    /// converged: podnet must never change them.
    #[serde(default)]
    pub baseline_routes: std::collections::BTreeMap<String, Vec<String>>,
}

fn ns_run(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend(args);
    run_ok(&full)
}

/// Brings up a lab of `nodes` nodes with two pods each; every namespace name starts with
/// `tag`. `bin_dir` holds podnet-operator,
/// podnet-daemon and podnet-cni; `progress` reports each step.
pub async fn up(
    tag: &str,
    nodes: usize,
    bin_dir: &Path,
    state_dir: &Path,
    progress: &mut dyn FnMut(&str, Duration),
) -> Result<LabState, LabError> {
    let step = Instant::now();
    std::fs::create_dir_all(state_dir).map_err(LabError::io("creating", state_dir))?;
    let cp = ControlPlane::start(ControlPlaneOptions {
        detachable: true,
        ..Default::default()
    })
    .await?;
    // podnet as a cluster admin installs it: the Helm chart (CRDs, RBAC, admission
    // policy, the default PodNetwork). Its pods never start (no kubelet here): the lab
    // runs the same programs as the chart's service accounts instead.
    crate::chart::install(
        cp.kubeconfig(),
        &["podNetwork.cidrs={10.244.0.0/16,fd00:10:244::/56}"],
        // The lab's own nodes (label podnet.dev/lab=true); other nodes a test makes can
        // be given other PodNetworks.
        &[r"podNetwork.nodeSelector.matchLabels.podnet\.dev/lab=true"],
    )?;
    progress(
        "control plane, and podnet installed with its Helm chart",
        step.elapsed(),
    );
    let kubeconfig = cp.kubeconfig().to_path_buf();
    let mut state = LabState {
        tag: tag.to_string(),
        dir: state_dir.to_path_buf(),
        control_plane: cp.detach(),
        operator_pid: 0,
        standby_operator_pids: Vec::new(),
        bin_dir: bin_dir.to_path_buf(),
        namespaces: Vec::new(),
        nodes: Vec::new(),
        pods: Vec::new(),
        external_ips: vec!["198.18.0.100".into(), "2001:db8:18::100".into()],
        baseline_routes: Default::default(),
    };
    // From here on, a failure still leaves a state file that `down` can clean up.
    let result = build(&mut state, nodes, &kubeconfig, progress).await;
    save(&state)?;
    result.map(|()| state)
}

/// Writes the lab's state file (after a change such as a restarted process).
pub fn save(state: &LabState) -> Result<(), LabError> {
    let path = state.dir.join("state.json");
    let text = serde_json::to_string_pretty(state).map_err(|source| LabError::State {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text).map_err(LabError::io("writing", path))
}

/// Reads the state of a running lab.
pub fn load(state_dir: &Path) -> Result<LabState, LabError> {
    let path = state_dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(LabError::io("reading", path.clone()))?;
    serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
}

async fn build(
    state: &mut LabState,
    nodes: usize,
    kubeconfig: &Path,
    progress: &mut dyn FnMut(&str, Duration),
) -> Result<(), LabError> {
    let step = Instant::now();
    let sw = format!("{}-sw", state.tag);
    run_ok(&["ip", "netns", "add", &sw])?;
    state.namespaces.push(sw.clone());
    ns_run(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
    ns_run(&sw, &["ip", "link", "set", "br0", "up"])?;
    let ext = format!("{}-ext", state.tag);
    attach(state, &ext, "ext", "198.18.0.100", "2001:db8:18::100")?;
    progress("lab switch and external host", step.elapsed());
    let step = Instant::now();
    state.operator_pid = start_operator(state, "operator-0", kubeconfig)?;
    save(state)?;
    for i in 1..=nodes {
        add_node(state, i).await?;
    }
    progress(
        &format!(
            "{nodes} nodes (namespace, Node, podnet-daemon, two pods each) and podnet-operator"
        ),
        step.elapsed(),
    );
    let step = Instant::now();
    wait_programmed(state, Duration::from_secs(60)).await?;
    for n in &state.nodes {
        state
            .baseline_routes
            .insert(n.name.clone(), crate::probes::foreign_routes(&n.netns)?);
    }
    progress("every node programmed routes to every peer", step.elapsed());
    Ok(())
}

/// Waits until every node's NodeRoute says `Programmed=True/Programmed` with a route to
/// each peer CIDR (two per peer: IPv4 and IPv6), nothing refused.
pub async fn wait_programmed(state: &LabState, timeout: Duration) -> Result<(), LabError> {
    let kc = state.control_plane.kubeconfig.display().to_string();
    let want = format!(
        "True {} {} routes programmed",
        podnet_crds::reason::PROGRAMMED,
        2 * state.nodes.len().saturating_sub(1)
    );
    let deadline = Instant::now() + timeout;
    loop {
        let out = kubectl_in(
            &kc,
            &[
                "get",
                "nr",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Programmed\")].status} {.status.conditions[?(@.type==\"Programmed\")].reason} {.status.conditions[?(@.type==\"Programmed\")].message}{\"\\n\"}{end}",
            ],
            "",
        )?;
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        if lines.len() == state.nodes.len() && lines.iter().all(|l| *l == want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                component: "podnet-daemon",
                reason: format!("nodes did not all report {want:?}: {lines:?}"),
                tail: crate::controlplane::log_tail(&state.dir.join("operator.log"), 20),
                log: state.dir.join("operator.log"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kubectl_in(kubeconfig: &str, args: &[&str], input: &str) -> Result<String, LabError> {
    let tools = crate::Tools::locate()?;
    let out = crate::output_with_input(
        Command::new(&tools.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args),
        input,
    )
    .map_err(LabError::io("running", tools.kubectl.clone()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(LabError::Command {
            command: format!("kubectl {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

/// Removes every process, namespace and file the lab created.
pub fn down(state: &LabState) {
    stop(state.operator_pid, &state.bin_dir.join("podnet-operator"));
    for pid in &state.standby_operator_pids {
        stop(*pid, &state.bin_dir.join("podnet-operator"));
    }
    for n in &state.nodes {
        stop(n.daemon_pid, &state.bin_dir.join("podnet-daemon"));
    }
    for ns in state.namespaces.iter().rev() {
        let _ = run_ok(&["ip", "netns", "del", ns]);
    }
    state.control_plane.stop();
    let _ = std::fs::remove_dir_all(&state.dir);
}
