//! A pool exhausted, then recovery when a node leaves (after the CIDR quarantine) and
//! when a CIDR is added — without a restart.

use std::time::Duration;

use anyhow::ensure;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use podnet_crds::NodeRoute;
use podnet_lab::cluster::LabState;
use podnet_lab::invariants::{self, admin_client};

use crate::SETTLE;
use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    apply_network(
        &client,
        serde_json::json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
            "metadata": {"name": "tiny"},
            "spec": {"cidrs": ["10.250.0.0/23"], "nodeSelector": {"matchLabels": {"pool": "tiny"}}}
        }),
    )
    .await?;
    let nodes = names("tiny", 0..4);
    create_nodes(&client, &nodes, &labels(&[("pool", "tiny")]), |_| {
        Vec::new()
    })
    .await?;
    let exhausted = |client: Client| async move {
        let nrs = Api::<NodeRoute>::all(client)
            .list(&ListParams::default())
            .await?
            .items;
        Ok::<_, anyhow::Error>(
            nrs.iter()
                .filter(|n| n.name_any().starts_with("tiny-"))
                .filter(|n| {
                    n.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Allocated" && c.reason == "PoolExhausted")
                    })
                })
                .map(|n| n.name_any())
                .collect::<Vec<_>>(),
        )
    };
    wait_until(
        "2 allocated, 2 reported PoolExhausted",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                Ok(allocated(&client, "tiny-").await?.len() == 2
                    && exhausted(client).await?.len() == 2)
            }
        },
    )
    .await?;
    invariants::check_eventually(state, SETTLE)
        .await
        .map_err(|e| anyhow::anyhow!("while exhausted: {e}"))?;
    let pn = Api::<podnet_crds::PodNetwork>::all(client.clone())
        .get("tiny")
        .await?;
    let pn_exhausted = pn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Exhausted" && c.status == "True")
    });
    ensure!(pn_exhausted, "PodNetwork tiny does not say Exhausted=True");
    // A node leaves: one waiting node takes its CIDR.
    let holder = allocated(&client, "tiny-").await?[0].name_any();
    let freed = allocated(&client, "tiny-").await?[0]
        .status
        .clone()
        .unwrap_or_default()
        .pod_cidrs;
    delete_nodes(&client, std::slice::from_ref(&holder)).await?;
    wait_until(
        "a waiting node allocated after one left",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                Ok(allocated(&client, "tiny-").await?.len() == 2
                    && exhausted(client).await?.len() == 1)
            }
        },
    )
    .await?;
    // A CIDR is added: the last one is allocated.
    apply_network(&client, serde_json::json!({
        "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
        "metadata": {"name": "tiny"},
        "spec": {"cidrs": ["10.250.0.0/23", "10.250.4.0/24"], "nodeSelector": {"matchLabels": {"pool": "tiny"}}}
    })).await?;
    wait_until(
        "every tiny node allocated after a CIDR was added",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                Ok(allocated(&client, "tiny-").await?.len() == 3
                    && exhausted(client).await?.is_empty())
            }
        },
    )
    .await?;
    let rest: Vec<String> = nodes.iter().filter(|n| **n != holder).cloned().collect();
    delete_nodes(&client, &rest).await?;
    wait_until("tiny NodeRoutes released", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            Ok(Api::<NodeRoute>::all(client)
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .all(|n| !n.name_any().starts_with("tiny-")))
        }
    })
    .await?;
    delete_network(&client, "tiny").await?;
    Ok(Outcome::default()
        .held("4 nodes on a pool of 2: 2 PoolExhausted and the PodNetwork Exhausted=True")
        .held(format!(
            "{holder} left; after the quarantine its {freed:?} went to a waiting node"
        ))
        .held("a CIDR added: the last node allocated, no restart"))
}
