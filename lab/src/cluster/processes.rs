//! The lab's podnet processes: podnet-operator replicas and one podnet-daemon per node, started on the host with their logs in the state directory, and stopped by PID.

use std::path::Path;

use super::{LabNode, LabState};
use crate::LabError;

pub(super) fn spawn_logged(
    bin: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> Result<i32, LabError> {
    Ok(crate::spawn_logged(bin, args, env, log, None, true)?.id() as i32)
}

/// The log filter the lab's podnet processes run with: `PODNET_LAB_LOG` when set (say
/// `info,kube_runtime=debug` to chase a watch), `info` otherwise.
pub(super) fn lab_log_filter() -> String {
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

/// Stops `pid` (SIGTERM, then SIGKILL after 10 s) if it still runs `bin`.
pub fn stop(pid: i32, bin: &Path) {
    crate::controlplane::stop_pid(pid, bin);
}
