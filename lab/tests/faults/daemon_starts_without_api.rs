//! A node "reboots" while the API server is down: its daemon stops, podnet's routes and
//! masquerade rules are gone, and the daemon starts with no API server to ask. It
//! programs the state it saved on the node, and the node's pods talk again.

use std::time::{Duration, Instant};

use anyhow::ensure;
use podnet_lab::cluster::{self, LabState};
use podnet_lab::run_ok;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let node = state.nodes[1].clone();
    let before = kernel_state(&node.netns)?;
    cluster::stop(node.daemon_pid, &state.bin_dir.join("podnet-daemon"));
    state.control_plane.stop_apiserver();
    cluster::save(state)?;
    let outcome = async {
        // The reboot: the kernel forgets podnet's routes and rules.
        podnet_lab::probes::delete_podnet_routes(&node.netns)?;
        run_ok(&["ip", "-n", &node.netns, "nexthop", "flush", "proto", "233"])?;
        remove_masquerade(&node.netns)?;
        ensure!(
            kernel_state(&node.netns)?.is_empty(),
            "the reboot left podnet state"
        );
        let t = Instant::now();
        let pid = cluster::spawn_daemon(state, &node)?;
        state.nodes[1].daemon_pid = pid;
        cluster::save(state)?;
        wait_until(
            "routes and masquerade rules from the saved state, API server down",
            Duration::from_secs(20),
            || async { Ok::<_, anyhow::Error>(kernel_state(&node.netns)? == before) },
        )
        .await?;
        let restored = t.elapsed();
        let (m, ok, total) = cluster::matrix(state);
        ensure!(
            ok == total,
            "with the API server down, {} of {total} paths failed after the restart:\n{m}",
            total - ok
        );
        anyhow::Ok((restored, total))
    }
    .await;
    state.control_plane.start_apiserver().await?;
    cluster::save(state)?;
    let (restored, paths) = outcome?;
    Ok(Outcome::default()
        .took("routes and masquerade rules back from the saved state (startup grace 2 s), API server down, in", restored)
        .count("paths reachable before the API server returned", paths))
}
