//! The operator leader SIGKILLed while it allocates 1,000 nodes: the standby takes
//! over and finishes, every node dual-stack, and every CIDR handed out before the kill
//! stays with its node (a new term never releases what its list showed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_crds::NodeRoute;
use podnet_lab::cluster::LabState;
use podnet_lab::invariants::admin_client;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    apply_network(
        &client,
        serde_json::json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
            "metadata": {"name": "big"},
            "spec": {"cidrs": ["10.128.0.0/14", "fd00:128::/48"],
                     "nodeSelector": {"matchLabels": {"pool": "big"}}}
        }),
    )
    .await?;
    let leader = wait_leader(&client).await?;
    let nodes = names("big", 0..1000);
    let creator = {
        let client = client.clone();
        let nodes = nodes.clone();
        tokio::spawn(async move {
            create_nodes(&client, &nodes, &labels(&[("pool", "big")]), |_| Vec::new()).await
        })
    };
    wait_until("100 allocations", Duration::from_secs(60), || {
        let client = client.clone();
        async move { Ok(allocated(&client, "big-").await?.len() >= 100) }
    })
    .await?;
    let pid = operator_pid(state, &leader);
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let killed_at = Instant::now();
    let held_at_kill: BTreeMap<String, Vec<String>> = allocated(&client, "big-")
        .await?
        .iter()
        .map(|n| (n.name_any(), n.status.clone().unwrap_or_default().pod_cidrs))
        .collect();
    let at_kill = held_at_kill.len();
    creator.await??;
    ensure!(
        at_kill < nodes.len(),
        "allocation finished before the kill: proves nothing"
    );
    wait_until(
        "1,000 nodes allocated by the standby",
        Duration::from_secs(180),
        || {
            let client = client.clone();
            async move { Ok(allocated(&client, "big-").await?.len() == 1000) }
        },
    )
    .await?;
    let took = killed_at.elapsed();
    let new_leader = lease_holder(&client).await?.unwrap_or_default();
    ensure!(
        new_leader != leader,
        "the killed replica {leader} still holds the lease"
    );
    let all = allocated(&client, "big-").await?;
    for nr in &all {
        if let Some(before) = held_at_kill.get(&nr.name_any()) {
            let now = &nr
                .status
                .as_ref()
                .map(|s| s.pod_cidrs.clone())
                .unwrap_or_default();
            // A complete pair at the kill is never touched; a half-written one only grows.
            ensure!(
                before.iter().all(|c| now.contains(c)),
                "{} held {before:?} at the kill and {now:?} after the takeover",
                nr.name_any()
            );
        }
    }
    ensure!(
        all.iter()
            .all(|n| n.status.as_ref().is_some_and(|s| s.pod_cidrs.len() == 2)),
        "every node gets an IPv4 and an IPv6 CIDR"
    );
    // The invariants (no overlaps) are checked by the suite; clean up the 1,000 nodes.
    replace_replica(state, &leader).await?;
    delete_nodes(&client, &nodes).await?;
    wait_until(
        "the 1,000 NodeRoutes released",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            async move {
                Ok(Api::<NodeRoute>::all(client)
                    .list(&ListParams::default().labels(""))
                    .await?
                    .items
                    .iter()
                    .all(|n| !n.name_any().starts_with("big-")))
            }
        },
    )
    .await?;
    delete_network(&client, "big").await?;
    Ok(Outcome::default()
        .count(
            "nodes of 1,000 allocated when the leader was killed",
            at_kill,
        )
        .took("the standby allocated the rest, all dual-stack, in", took)
        .held("every node kept the CIDRs it held at the kill"))
}
