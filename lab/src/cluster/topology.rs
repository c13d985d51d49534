//! The netns lab's topology: a node namespace on the lab switch (with its Node object) added or removed.

use std::time::{Duration, Instant};

use super::{LabNode, LabState, add_pod, cni, kubectl_in, save, spawn_daemon, stop};
use crate::{LabError, run_ok};

/// Attaches a new namespace `name` to the lab switch through port `port`.
pub(super) fn attach(
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
