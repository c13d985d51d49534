//! The container runtime's part, emulated: podnet-cni invoked for a pod exactly as a runtime does (environment, stdin config, a network namespace per pod).

use std::process::Command;

use super::{LabNode, LabState, Pod};
use crate::{LabError, run_ok};

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
