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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{ControlPlane, ControlPlaneOptions, DetachedControlPlane, LabError, run_ok};

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

fn spawn_logged(
    bin: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> Result<i32, LabError> {
    Ok(crate::spawn_logged(bin, args, env, log, None, true)?.id() as i32)
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

/// The log filter the lab's podnet processes run with: `PODNET_LAB_LOG` when set (say
/// `info,kube_runtime=debug` to chase a watch), `info` otherwise.
fn lab_log_filter() -> String {
    std::env::var("PODNET_LAB_LOG").unwrap_or_else(|_| "info".to_string())
}

/// The lab operator's CIDR quarantine, in seconds: long enough for the fault suite to see
/// that a released CIDR is held back, short enough for its churn and exhaustion rounds.
pub const LAB_QUARANTINE_SECS: u64 = 10;

/// Starts a podnet-operator replica named `identity` as the chart's service account;
/// its log is `<identity>.log` in the state dir. Replicas share the Lease
/// `podnet-operator` (4 s, renewed every 0.5 s, given up after 2.5 s without renewal).
pub fn start_operator(
    state: &LabState,
    identity: &str,
    admin_kubeconfig: &Path,
) -> Result<i32, LabError> {
    let operator_kc = crate::chart::service_account_kubeconfig(
        admin_kubeconfig,
        crate::chart::NAMESPACE,
        crate::chart::OPERATOR_SA,
        None,
    )?;
    let env = [
        ("KUBECONFIG", operator_kc.display().to_string()),
        ("RUST_LOG", lab_log_filter()),
        ("POD_NAME", identity.to_string()),
        ("PODNET_LEASE_DURATION", "4".to_string()),
        ("PODNET_RENEW_DEADLINE", "2.5".to_string()),
        ("PODNET_RETRY_PERIOD", "0.5".to_string()),
        ("PODNET_CIDR_QUARANTINE", LAB_QUARANTINE_SECS.to_string()),
    ];
    let log = if identity == "operator-0" {
        state.dir.join("operator.log")
    } else {
        state.dir.join(format!("{identity}.log"))
    };
    spawn_logged(
        &state.bin_dir.join("podnet-operator"),
        &[
            "--lease-namespace".into(),
            crate::chart::NAMESPACE.into(),
            "--ops-addr".into(),
            "127.0.0.1:0".into(),
        ],
        &env,
        &log,
    )
}

/// Starts (or restarts) `node`'s podnet-daemon; returns its PID. Its log is appended to
/// `<node>/daemon.log`.
pub fn spawn_daemon(state: &LabState, node: &LabNode) -> Result<i32, LabError> {
    let dir = state.dir.join(&node.name);
    let args: Vec<String> = [
        "run",
        "--node-name",
        &node.name,
        "--netns",
        &format!("/var/run/netns/{}", node.netns),
        "--ops-addr",
        "127.0.0.1:0",
        "--resync",
        "5",
        "--cni-conf-dir",
        &dir.join("net.d").display().to_string(),
        "--ipam-dir",
        &dir.join("ipam").display().to_string(),
        "--state-dir",
        &dir.join("state").display().to_string(),
        "--startup-grace",
        "2",
        "--firewall",
        &node.firewall,
        // The netns lab's pods are made by calling podnet-cni, not through the API:
        // network policy (tested on the real-node lab) would never know them.
        "--network-policy",
        "false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [
        ("KUBECONFIG", node.kubeconfig.display().to_string()),
        ("RUST_LOG", lab_log_filter()),
    ];
    spawn_logged(
        &state.bin_dir.join("podnet-daemon"),
        &args,
        &env,
        &dir.join("daemon.log"),
    )
}

/// The last `n` lines of every log the lab keeps (operator replicas, each node's
/// daemon, kube-apiserver, etcd), headed by the file name: what a failed test prints.
pub fn log_tails(state: &LabState, n: usize) -> String {
    let mut logs = vec![state.dir.join("operator.log")];
    for i in 1..=state.standby_operator_pids.len() {
        logs.push(state.dir.join(format!("operator-{i}.log")));
    }
    logs.extend(
        state
            .nodes
            .iter()
            .map(|node| state.dir.join(&node.name).join("daemon.log")),
    );
    logs.push(state.control_plane.dir.join("kube-apiserver.log"));
    logs.push(state.control_plane.dir.join("etcd.log"));
    let mut out = String::new();
    for log in logs.iter().filter(|l| l.exists()) {
        out.push_str(&format!(
            "---- {} (last {n} lines)\n{}\n",
            log.display(),
            crate::controlplane::log_tail(log, n)
        ));
    }
    out
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

/// Attaches a new namespace `name` to the lab switch through port `port`.
fn attach(
    state: &mut LabState,
    name: &str,
    port: &str,
    v4: &str,
    v6: &str,
) -> Result<(), LabError> {
    let sw = format!("{}-sw", state.tag);
    run_ok(&["ip", "netns", "add", name])?;
    state.namespaces.push(name.to_string());
    run_ok(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    run_ok(&[
        "ip", "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    run_ok(&["ip", "-n", &sw, "link", "set", port, "master", "br0", "up"])?;
    run_ok(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
    run_ok(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{v4}/24"),
        "dev",
        "eth0",
    ])?;
    run_ok(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    Ok(())
}

/// Adds node `i`: its namespace on the switch, its Node object, its podnet-daemon, and
/// (once the daemon wrote the CNI config) two pods.
pub async fn add_node(state: &mut LabState, i: usize) -> Result<LabNode, LabError> {
    let name = format!("node-{i}");
    let netns = format!("{}-{name}", state.tag);
    let (v4, v6) = (
        format!("198.18.0.{}", 10 + i),
        format!("2001:db8:18::{:x}", 0x10 + i),
    );
    attach(state, &netns, &format!("n{i}"), &v4, &v6)?;
    let kc = state.control_plane.kubeconfig.display().to_string();
    let doc = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"podnet.dev/lab": "true"}}});
    kubectl_in(&kc, &["apply", "-f", "-"], &doc.to_string())?;
    let st = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": v4}, {"type": "InternalIP", "address": v6}]}});
    kubectl_in(
        &kc,
        &[
            "patch",
            "node",
            &name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &st.to_string(),
        ],
        "",
    )?;
    let dir = state.dir.join(&name);
    std::fs::create_dir_all(&dir).map_err(LabError::io("creating", dir.clone()))?;
    // The daemon authenticates as the chart's podnet-daemon service account, with a
    // token bound to a Pod on its node, as a DaemonSet pod's token is.
    let daemon_kc = crate::chart::service_account_kubeconfig(
        &state.control_plane.kubeconfig,
        crate::chart::NAMESPACE,
        crate::chart::DAEMON_SA,
        Some(&name),
    )?;
    let mut node = LabNode {
        name: name.clone(),
        netns: netns.clone(),
        ips: vec![v4, v6],
        daemon_pid: 0,
        kubeconfig: daemon_kc,
        firewall: if state.nodes.len() % 2 == 1 {
            "nftables"
        } else {
            "iptables"
        }
        .into(),
    };
    node.daemon_pid = spawn_daemon(state, &node)?;
    state.nodes.push(node.clone());
    save(state)?;
    let conf = dir.join("net.d/10-podnet.conflist");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !conf.exists() {
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                component: "podnet-daemon",
                reason: format!("{name} has no CNI config after 60 s"),
                tail: crate::controlplane::log_tail(&dir.join("daemon.log"), 20),
                log: dir.join("daemon.log"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in 1..=2 {
        let pod = add_pod(state, &node, &format!("{netns}-pod{p}"))?;
        state.pods.push(pod);
    }
    save(state)?;
    Ok(node)
}

/// Removes node `name`: its pods (CNI DEL), its daemon, its Node object, its namespace.
pub fn remove_node(state: &mut LabState, name: &str) -> Result<(), LabError> {
    let Some(idx) = state.nodes.iter().position(|n| n.name == name) else {
        return Ok(());
    };
    let node = state.nodes.remove(idx);
    for pod in state
        .pods
        .iter()
        .filter(|p| p.node == name)
        .cloned()
        .collect::<Vec<_>>()
    {
        cni(state, &node, "DEL", &pod.netns)?;
        let _ = run_ok(&["ip", "netns", "del", &pod.netns]);
        state.namespaces.retain(|n| *n != pod.netns);
    }
    state.pods.retain(|p| p.node != name);
    stop(node.daemon_pid, &state.bin_dir.join("podnet-daemon"));
    let kc = state.control_plane.kubeconfig.display().to_string();
    kubectl_in(&kc, &["delete", "node", name], "")?;
    // The daemon's pod object goes with its node (and so does its token's validity).
    kubectl_in(
        &kc,
        &[
            "delete",
            "pod",
            "--ignore-not-found",
            // No kubelet confirms a graceful deletion here.
            "--grace-period=0",
            "--force",
            "-n",
            crate::chart::NAMESPACE,
            &format!("{}-{name}", crate::chart::DAEMON_SA),
        ],
        "",
    )?;
    let _ = run_ok(&["ip", "netns", "del", &node.netns]);
    state.namespaces.retain(|n| *n != node.netns);
    save(state)
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

/// Runs podnet-cni for a pod the way a runtime does: in the node's namespace, with the
/// CNI_* environment and the plugin's entry of the conflist the daemon wrote.
pub fn cni(
    state: &LabState,
    node: &LabNode,
    command: &str,
    pod_netns: &str,
) -> Result<serde_json::Value, LabError> {
    let conf = plugin_conf(state, node)?;
    let bin = state.bin_dir.join("podnet-cni");
    let out = crate::output_with_input(
        Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod_netns)
            .env("CNI_NETNS", format!("/var/run/netns/{pod_netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &state.bin_dir),
        &conf.to_string(),
    )
    .map_err(LabError::io("running", bin))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("podnet-cni {command} {pod_netns}"),
            stderr: stdout,
        });
    }
    Ok(serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null))
}

/// The plugin configuration a runtime passes podnet-cni on `node`: the first entry of
/// the conflist the node's daemon wrote, with the list's name and version.
pub fn plugin_conf(state: &LabState, node: &LabNode) -> Result<serde_json::Value, LabError> {
    let conflist_path = state.dir.join(&node.name).join("net.d/10-podnet.conflist");
    let text = std::fs::read_to_string(&conflist_path)
        .map_err(LabError::io("reading", conflist_path.clone()))?;
    let conflist: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| LabError::State {
            path: conflist_path,
            source,
        })?;
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    Ok(conf)
}

/// Creates a pod namespace on `node` and wires it with podnet-cni.
pub fn add_pod(state: &mut LabState, node: &LabNode, name: &str) -> Result<Pod, LabError> {
    run_ok(&["ip", "netns", "add", name])?;
    state.namespaces.push(name.to_string());
    run_ok(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    let result = cni(state, node, "ADD", name)?;
    let ips = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str()?.split('/').next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Pod {
        netns: name.to_string(),
        node: node.name.clone(),
        ips,
    })
}

/// Whether `from` reaches `to`: up to three pings of one second (the first packets of
/// a new path wait for neighbour discovery).
pub fn ping(from: &str, to: &str) -> bool {
    (0..3).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", from, "ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The connectivity matrix: every pod to every pod and to the external host, per family.
pub fn matrix(state: &LabState) -> (String, usize, usize) {
    let mut out = String::new();
    let (mut ok, mut total) = (0, 0);
    for family in [0usize, 1] {
        out.push_str(if family == 0 { "IPv4\n" } else { "IPv6\n" });
        out.push_str(&format!("{:<24}", "from \\ to"));
        for p in &state.pods {
            out.push_str(&format!("{:>6}", short(&p.netns)));
        }
        out.push_str("   ext\n");
        for from in &state.pods {
            out.push_str(&format!("{:<24}", from.netns));
            let targets = state
                .pods
                .iter()
                .filter_map(|p| p.ips.get(family))
                .chain(state.external_ips.get(family));
            for to in targets {
                total += 1;
                let good = ping(&from.netns, to);
                ok += usize::from(good);
                out.push_str(&format!("{:>6}", if good { "ok" } else { "FAIL" }));
            }
            out.push('\n');
        }
    }
    (out, ok, total)
}

fn short(netns: &str) -> String {
    // <tag>-node-1-pod2 → n1p2
    let parts: Vec<&str> = netns.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [p, n, _] => format!("n{n}{}", p.replace("pod", "p")),
        _ => netns.to_string(),
    }
}

/// Stops `pid` (SIGTERM, then SIGKILL after 10 s) if it still runs `bin`.
pub fn stop(pid: i32, bin: &Path) {
    crate::controlplane::stop_pid(pid, bin);
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

/// Convergence: for `samples` probe Nodes (Node objects with a lab address, no
/// namespace), the time from the moment their NodeRoute shows a CIDR until the route to
/// it is in every node's kernel. Probes are removed afterwards. Sorted durations.
pub async fn measure_convergence(
    state: &LabState,
    samples: usize,
) -> Result<Vec<Duration>, LabError> {
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use podnet_netlink::{Netlink, RouteFilter};
    let client = crate::client_from_kubeconfig(&state.control_plane.kubeconfig).await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let nrs: Api<podnet_crds::NodeRoute> = Api::all(client);
    let mut sockets: Vec<Netlink> = state
        .nodes
        .iter()
        .map(|n| Netlink::in_netns(Path::new(&format!("/var/run/netns/{}", n.netns))))
        .collect::<Result<_, _>>()
        .map_err(|e| LabError::Command {
            command: "netlink".into(),
            stderr: e.to_string(),
        })?;
    let mut out = Vec::new();
    for k in 0..samples {
        let name = format!("probe-{k}");
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {LAB_LABEL: "true"}}}),
        )
        .map_err(|source| LabError::State {
            path: name.clone().into(),
            source,
        })?;
        nodes.create(&PostParams::default(), &node).await?;
        let st = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": format!("198.18.0.{}", 200 + k)}]}});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (cidr, t0) = loop {
            if let Some(c) = nrs
                .get_opt(&name)
                .await?
                .and_then(|nr| nr.status?.pod_cidrs.first().cloned())
            {
                break (c, Instant::now());
            }
            if Instant::now() > deadline {
                return Err(LabError::Command {
                    command: format!("allocation of {name}"),
                    stderr: "no CIDR after 20 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let dst: std::net::IpAddr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        for nl in sockets.iter_mut() {
            loop {
                let routes = nl
                    .routes(RouteFilter {
                        ipv6: false,
                        protocol: Some(233),
                    })
                    .unwrap_or_default();
                if routes.iter().any(|r| r.dst == dst) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LabError::Command {
                        command: format!("route to {cidr}"),
                        stderr: "not programmed after 20 s".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        out.push(t0.elapsed());
        nodes.delete(&name, &DeleteParams::default()).await?;
    }
    out.sort();
    Ok(out)
}
