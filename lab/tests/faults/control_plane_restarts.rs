//! kube-apiserver down past the daemons' resync, then restarted; then etcd restarted:
//! the dataplane stays as it was meanwhile, and nodes added right after each restart
//! are allocated and routed everywhere.

use std::time::{Duration, Instant};

use anyhow::ensure;
use podnet_lab::cluster::{self, LabState};

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    // Losing the API server never tears down the dataplane: while it is down (longer
    // than the daemons' 5 s resync), routes and masquerade rules stay and pods keep
    // talking.
    let before: Vec<(String, Vec<String>)> = state
        .nodes
        .iter()
        .map(|n| Ok((n.netns.clone(), kernel_state(&n.netns)?)))
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    state.control_plane.stop_apiserver();
    cluster::save(state)?;
    let outage = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        for (ns, want) in &before {
            let now = kernel_state(ns)?;
            let gone: Vec<&String> = want.iter().filter(|l| !now.contains(l)).collect();
            let new: Vec<&String> = now.iter().filter(|l| !want.contains(l)).collect();
            ensure!(
                now == *want,
                "{ns}: routes or masquerade rules changed while the API server was down: gone {gone:#?}, new {new:#?}"
            );
        }
        let (m, ok, total) = cluster::matrix(state);
        ensure!(
            ok == total,
            "with the API server down, {} of {total} paths failed:\n{m}",
            total - ok
        );
        anyhow::Ok(total)
    }
    .await;
    state.control_plane.start_apiserver().await?;
    cluster::save(state)?;
    let paths_during_outage = outage?;
    let api_restart = t.elapsed();
    let t = Instant::now();
    probe_node(state, "after-apiserver", 150).await?;
    let api_recovery = t.elapsed();
    let t = Instant::now();
    state.control_plane.restart_etcd().await?;
    cluster::save(state)?;
    let etcd_restart = t.elapsed();
    let t = Instant::now();
    probe_node(state, "after-etcd", 151).await?;
    let etcd_recovery = t.elapsed();
    ensure!(alive(state.operator_pid), "podnet-operator exited");
    for n in &state.nodes {
        ensure!(alive(n.daemon_pid), "{}'s podnet-daemon exited", n.name);
    }
    Ok(Outcome::default()
        .took("API server down for", api_restart)
        .held("routes and masquerade rules untouched on every node meanwhile")
        .count("paths reachable during the outage", paths_during_outage)
        .took("etcd restarted in", etcd_restart)
        .held("operator and daemons kept running")
        .took(
            "a node added after the API server restart routed everywhere in",
            api_recovery,
        )
        .took(
            "a node added after the etcd restart routed everywhere in",
            etcd_recovery,
        ))
}
