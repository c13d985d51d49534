//! The operator leader SIGSTOPped past its lease while nodes arrive: the standby takes
//! over, and the resumed replica writes nothing it computed before the pause.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_crds::NodeRoute;
use podnet_lab::cluster::{LAB_LABEL, LabState};
use podnet_lab::invariants::admin_client;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    let leader = wait_leader(&client).await?;
    let pid = operator_pid(state, &leader);
    let lab = labels(&[(LAB_LABEL, "true")]);
    let ip = |base: usize| {
        move |i: usize| {
            vec![
                format!("198.18.0.{}", base + i),
                format!("2001:db8:18::{:x}", 0x1000 + base + i),
            ]
        }
    };
    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    let paused_at = Instant::now();
    // While it is paused, nodes arrive: the standby must take over and allocate them.
    let during = names("paused", 0..10);
    create_nodes(&client, &during, &lab, ip(120)).await?;
    let res = wait_until(
        "the standby to allocate while the leader is paused",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { Ok(allocated(&client, "paused-").await?.len() == 10) }
        },
    )
    .await;
    let new_leader = lease_holder(&client).await?.unwrap_or_default();
    let takeover = paused_at.elapsed();
    // Snapshot, then resume the old leader and add more nodes: the resumed replica must
    // not write what it computed before the pause.
    let snapshot: BTreeMap<String, Vec<String>> = Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| (n.name_any(), n.status.clone().unwrap_or_default().pod_cidrs))
        .collect();
    kill(Pid::from_raw(pid), Signal::SIGCONT)?;
    res?;
    ensure!(new_leader != leader, "the paused replica kept the lease");
    let after = names("resumed", 0..10);
    create_nodes(&client, &after, &lab, ip(140)).await?;
    wait_until(
        "nodes after the resume allocated",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { Ok(allocated(&client, "resumed-").await?.len() == 10) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    for nr in &now {
        if let Some(old) = snapshot.get(&nr.name_any()) {
            let cur = nr.status.clone().unwrap_or_default().pod_cidrs;
            ensure!(
                *old == cur,
                "{} changed from {old:?} to {cur:?} after the resume",
                nr.name_any()
            );
        }
    }
    ensure!(
        alive(pid),
        "the resumed replica exited instead of standing by"
    );
    let log = std::fs::read_to_string(state.dir.join(if leader == "operator-0" {
        "operator.log".to_string()
    } else {
        format!("{leader}.log")
    }))
    .unwrap_or_default();
    let stepped_down = log
        .lines()
        .any(|l| l.contains("lost") || l.contains("leadership"));
    // Leave the lab with its own nodes only.
    let mut gone = during.clone();
    gone.extend(after.iter().cloned());
    delete_nodes(&client, &gone).await?;
    let mut outcome = Outcome::default()
        .took(
            "the standby took over after the pause (lease 4 s)",
            takeover,
        )
        .count("nodes allocated across the pause", 20)
        .held("no NodeRoute changed after SIGCONT")
        .held("the resumed replica stands by");
    if stepped_down {
        outcome = outcome.held("its log records losing the lease");
    }
    Ok(outcome)
}
