//! A Node deleted and re-created under the same name while its pods run (a kubelet
//! re-registering), with another node joining in between: the released CIDRs wait in
//! quarantine, the joiner gets others, the returning node gets its own back, and its
//! pods keep their addresses and connectivity.

use std::time::{Duration, Instant};

use anyhow::ensure;
use k8s_openapi::api::core::v1::{Node, NodeAddress};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use podnet_crds::{NodeRoute, PodNetwork};
use podnet_lab::cluster::{LAB_LABEL, LAB_QUARANTINE_SECS, LabState};
use podnet_lab::invariants::admin_client;

use crate::support::*;

const JOINER: &str = "joiner";

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let victim = state.nodes[2].name.clone();
    let held = Api::<NodeRoute>::all(client.clone())
        .get(&victim)
        .await?
        .status
        .unwrap_or_default()
        .pod_cidrs;
    ensure!(held.len() == 2, "{victim} holds {held:?}");
    let node = nodes.get(&victim).await?;
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let template: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": victim, "labels": node.metadata.labels.clone().unwrap_or_default()},
    }))?;
    nodes.delete(&victim, &DeleteParams::default()).await?;
    let outcome = away_and_back(&client, &victim, &held, &template, &addresses).await;
    // Whatever happened, the lab keeps its node and loses the joiner.
    if nodes.get_opt(&victim).await?.is_none() {
        register(&nodes, &template, &addresses).await?;
    }
    delete_nodes(&client, &[JOINER.to_string()]).await?;
    let gap = outcome?;
    Ok(Outcome::default()
        .held(format!(
            "{victim}'s CIDRs went into quarantine when its Node was deleted"
        ))
        .held("a node joining meanwhile got other CIDRs")
        .took("the Node was back, with the same CIDRs, after", gap)
        .held("its pods kept their addresses and connectivity (invariants)"))
}

/// Creates the Node and sets its addresses, as a kubelet registering does.
async fn register(
    nodes: &Api<Node>,
    template: &Node,
    addresses: &[NodeAddress],
) -> anyhow::Result<()> {
    let name = template.metadata.name.clone().unwrap_or_default();
    nodes.create(&PostParams::default(), template).await?;
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"addresses": addresses}})),
        )
        .await?;
    Ok(())
}

/// Waits for the release into quarantine, lets a joiner in, brings the node back;
/// returns how long it was away.
async fn away_and_back(
    client: &kube::Client,
    name: &str,
    held: &[String],
    template: &Node,
    addresses: &[NodeAddress],
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let nrs: Api<NodeRoute> = Api::all(client.clone());
    let cidrs_of = |who: &str| {
        let (nrs, who) = (nrs.clone(), who.to_string());
        async move {
            let nr = nrs.get_opt(&who).await?;
            anyhow::Ok(
                nr.and_then(|n| n.status)
                    .map(|s| s.pod_cidrs)
                    .filter(|c| c.len() == 2),
            )
        }
    };
    wait_until("its NodeRoute released", Duration::from_secs(10), || {
        let (nrs, name) = (nrs.clone(), name.to_string());
        async move { anyhow::Ok(nrs.get_opt(&name).await?.is_none()) }
    })
    .await?;
    let quarantined = Api::<PodNetwork>::all(client.clone())
        .get("default")
        .await?
        .status
        .unwrap_or_default()
        .quarantine;
    ensure!(
        held.iter()
            .all(|c| quarantined.iter().any(|q| q.cidr == *c && q.node == name)),
        "{held:?} not in quarantine: {quarantined:?}"
    );
    // Another node joins meanwhile: it must not get the released CIDRs.
    create_nodes(
        client,
        &[JOINER.to_string()],
        &labels(&[(LAB_LABEL, "true")]),
        |_| vec!["198.18.0.190".into(), "2001:db8:18::190".into()],
    )
    .await?;
    let joined = podnet_lab::wait_for("the joiner allocated", Duration::from_secs(10), || {
        cidrs_of(JOINER)
    })
    .await?;
    ensure!(
        !joined.iter().any(|c| held.contains(c)),
        "the joiner got {joined:?} while {held:?} was in quarantine"
    );
    // The node comes back (as its kubelet registers it again).
    register(&nodes, template, addresses).await?;
    let back = podnet_lab::wait_for("the node allocated again", Duration::from_secs(10), || {
        cidrs_of(name)
    })
    .await?;
    let gap = t.elapsed();
    ensure!(
        gap < Duration::from_secs(LAB_QUARANTINE_SECS),
        "the node came back after the quarantine ({gap:?}): proves nothing"
    );
    ensure!(back == held, "it came back with {back:?}, not its {held:?}");
    Ok(gap)
}
