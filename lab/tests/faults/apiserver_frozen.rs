//! kube-apiserver frozen (SIGSTOP: it accepts requests and never answers) while a
//! node's daemon has a failed sync to report and drift to repair: the dataplane never
//! waits on the API server.

use std::time::{Duration, Instant};

use anyhow::Context;
use kube::api::Api;
use podnet_crds::NodeRoute;
use podnet_lab::cluster::LabState;
use podnet_lab::invariants::admin_client;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let n1 = state.nodes[0].clone();
    let conflist = state
        .dir
        .join(&n1.name)
        .join("net.d")
        .join("10-podnet.conflist");
    let original = std::fs::read_to_string(&conflist).context("node-1's conflist")?;
    let routes_before = kernel_state(&n1.netns)?;
    let log = state.dir.join(&n1.name).join("daemon.log");
    let sync_failures = || -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(&log)?
            .lines()
            .filter(|l| l.contains("sync failed"))
            .count())
    };
    let failures_before = sync_failures()?;
    state.control_plane.freeze_apiserver(true)?;
    let frozen_at = Instant::now();
    let outcome = async {
        // node-1's next sync fails (its conflist is now a non-empty directory), so its
        // daemon has a SyncFailed condition to write to an API server that never answers.
        std::fs::remove_file(&conflist)?;
        std::fs::create_dir(&conflist)?;
        std::fs::write(conflist.join("in-the-way"), "")?;
        wait_until(
            "node-1's daemon to fail a sync",
            Duration::from_secs(15),
            || async { Ok(sync_failures()? > failures_before) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The cause goes away and podnet's routes are deleted by hand: the daemon must
        // repair both while its status write still hangs.
        std::fs::remove_dir_all(&conflist)?;
        podnet_lab::probes::delete_podnet_routes(&n1.netns)?;
        let repair_from = Instant::now();
        wait_until(
            "node-1's routes and conflist repaired with the API server frozen",
            Duration::from_secs(12),
            || async {
                Ok(kernel_state(&n1.netns)? == routes_before
                    && std::fs::read_to_string(&conflist).is_ok_and(|c| c == original))
            },
        )
        .await?;
        anyhow::Ok(repair_from.elapsed())
    }
    .await;
    let thawed = state.control_plane.freeze_apiserver(false);
    let frozen_for = frozen_at.elapsed();
    if conflist.is_dir() {
        std::fs::remove_dir_all(&conflist)?;
    }
    thawed?;
    let repaired = outcome?;
    // Once it answers again, the condition catches up with the node.
    let client = admin_client(state).await?;
    let programmed = || {
        let client = client.clone();
        let name = n1.name.clone();
        async move {
            let nr = Api::<NodeRoute>::all(client).get(&name).await?;
            let conds = nr.status.map(|s| s.conditions).unwrap_or_default();
            Ok(podnet_crds::find_condition(&conds, "Programmed")
                .is_some_and(|c| c.status == "True" && c.reason == "Programmed"))
        }
    };
    wait_until(
        "node-1 Programmed=True after the thaw",
        Duration::from_secs(30),
        programmed,
    )
    .await?;
    let t = Instant::now();
    probe_node(state, "after-freeze", 152).await?;
    Ok(Outcome::default()
        .took("API server frozen for", frozen_for)
        .held("node-1's daemon failed a sync while its status write hung")
        .took(
            "it restored its deleted routes and conflist (resync 5 s) in",
            repaired,
        )
        .held("after the thaw, Programmed returned to True")
        .took(
            "a new node was allocated and routed everywhere in",
            t.elapsed(),
        ))
}
