//! The operator leader SIGSTOPped in the middle of a burst of allocations and resumed
//! after twice its lease: every CIDR handed out is compared before and after the
//! resume, and overlaps are checked before the nodes are deleted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use ipnet::IpNet;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_crds::NodeRoute;
use podnet_lab::cluster::LabState;
use podnet_lab::invariants::admin_client;

use crate::support::*;

/// Lease duration of the lab's operators.
const LEASE: Duration = Duration::from_secs(4);

async fn all_cidrs(client: &kube::Client) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    Ok(Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| (n.name_any(), n.status.clone().unwrap_or_default().pod_cidrs))
        .collect())
}

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    apply_network(
        &client,
        serde_json::json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
            "metadata": {"name": "burst"},
            "spec": {"cidrs": ["10.132.0.0/16", "fd00:132::/56"],
                     "nodeSelector": {"matchLabels": {"pool": "burst"}}}
        }),
    )
    .await?;
    let leader = wait_leader(&client).await?;
    let pid = operator_pid(state, &leader);
    let nodes = names("burst", 0..200);
    let creator = {
        let (client, nodes) = (client.clone(), nodes.clone());
        tokio::spawn(async move {
            create_nodes(&client, &nodes, &labels(&[("pool", "burst")]), |_| {
                Vec::new()
            })
            .await
        })
    };
    wait_until(
        "the burst under way (20 allocated)",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move { Ok::<_, anyhow::Error>(allocated(&client, "burst-").await?.len() >= 20) }
        },
    )
    .await?;
    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    let at_pause = allocated(&client, "burst-").await?.len();
    let paused = async {
        tokio::time::sleep(2 * LEASE).await;
        // Just before the resume: what the standby has handed out meanwhile.
        all_cidrs(&client).await
    }
    .await;
    kill(Pid::from_raw(pid), Signal::SIGCONT)?;
    let before_resume = paused?;
    creator.await??;
    ensure!(
        at_pause < nodes.len(),
        "the burst ended before the pause: proves nothing"
    );
    wait_until("all 200 allocated", Duration::from_secs(120), || {
        let client = client.clone();
        async move { Ok::<_, anyhow::Error>(allocated(&client, "burst-").await?.len() == 200) }
    })
    .await?;
    // Let a stale write of the resumed replica land, if it were ever going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = all_cidrs(&client).await?;
    for (name, cidrs) in &before_resume {
        let now = after.get(name).cloned().unwrap_or_default();
        ensure!(
            cidrs.iter().all(|c| now.contains(c)),
            "{name} held {cidrs:?} before the resume and {now:?} after"
        );
    }
    // No overlap anywhere, checked while every node still exists.
    let mut held: Vec<(IpNet, &String)> = after
        .iter()
        .flat_map(|(n, cs)| {
            cs.iter()
                .filter_map(move |c| c.parse().ok().map(|c| (c, n)))
        })
        .collect();
    held.sort();
    for w in held.windows(2) {
        ensure!(
            !(w[0].0.contains(&w[1].0) || w[1].0.contains(&w[0].0)),
            "{} of {} overlaps {} of {}",
            w[0].0,
            w[0].1,
            w[1].0,
            w[1].1
        );
    }
    let new_leader = lease_holder(&client).await?.unwrap_or_default();
    ensure!(new_leader != leader, "the paused replica kept the lease");
    let started = Instant::now();
    delete_nodes(&client, &nodes).await?;
    wait_until(
        "the burst NodeRoutes released",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                Ok::<_, anyhow::Error>(
                    all_cidrs(&client)
                        .await?
                        .keys()
                        .all(|n| !n.starts_with("burst-")),
                )
            }
        },
    )
    .await?;
    delete_network(&client, "burst").await?;
    Ok(Outcome::default()
        .count(
            "nodes of 200 allocated when the leader was paused",
            at_pause,
        )
        .took("paused for (twice the lease)", 2 * LEASE)
        .held("every CIDR held before the resume was held by the same node after it")
        .count(
            "CIDRs checked for overlap before the nodes were deleted",
            held.len(),
        )
        .took("200 nodes deleted and released in", started.elapsed()))
}
