//! A pool CIDR removed from the PodNetwork while every node uses it (draining): its
//! routes stay, and traffic between pods keeps the pod's own source address — the
//! receiving pod sees it — while traffic to the external host is still masqueraded.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::ensure;
use kube::api::{Api, Patch, PatchParams};
use podnet_crds::{ConditionStatus, PodNetwork, condition_is, condition_type};
use podnet_lab::cluster::LabState;
use podnet_lab::invariants::admin_client;
use podnet_lab::probes::observed_source;

use crate::support::*;

async fn set_cidrs(api: &Api<PodNetwork>, cidrs: &[String]) -> anyhow::Result<()> {
    api.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"cidrs": cidrs}})),
    )
    .await?;
    Ok(())
}

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    let api: Api<PodNetwork> = Api::all(client.clone());
    let original = api.get("default").await?.spec.cidrs;
    let v4_pool = original
        .iter()
        .find(|c| !c.contains(':'))
        .cloned()
        .unwrap_or_default();
    let (a, b) = (&state.pods[0], &state.pods[state.pods.len() - 1]);
    ensure!(a.node != b.node, "the two pods share a node");
    let ext = format!("{}-ext", state.tag);
    let node_a: IpAddr = state
        .nodes
        .iter()
        .find(|n| n.name == a.node)
        .map(|n| n.ips[0].parse())
        .transpose()?
        .unwrap_or([0u8; 4].into());
    let sources = || -> anyhow::Result<(IpAddr, IpAddr)> {
        Ok((
            observed_source(&a.netns, &b.netns, b.ips[0].parse()?)?,
            observed_source(&a.netns, &ext, state.external_ips[0].parse()?)?,
        ))
    };
    let pod_a: IpAddr = a.ips[0].parse()?;
    ensure!(sources()? == (pod_a, node_a), "before: {:?}", sources()?);
    let routes_before: Vec<Vec<String>> = state
        .nodes
        .iter()
        .map(|n| podnet_routes(&n.netns))
        .collect::<anyhow::Result<_>>()?;
    let drained: Vec<String> = original
        .iter()
        .map(|c| {
            if *c == v4_pool {
                "10.245.0.0/16".to_string()
            } else {
                c.clone()
            }
        })
        .collect();
    set_cidrs(&api, &drained).await?;
    let outcome = async {
        wait_until("Draining=True with the pool still served", Duration::from_secs(20), || {
            let api = api.clone();
            let v4_pool = v4_pool.clone();
            async move {
                let st = api.get("default").await?.status.unwrap_or_default();
                Ok::<_, anyhow::Error>(
                    condition_is(&st.conditions, condition_type::DRAINING, ConditionStatus::True)
                        && st.served_cidrs.contains(&v4_pool),
                )
            }
        })
        .await?;
        // The daemons saw it: masquerade now also exempts the new pool.
        wait_until("masquerade exempting the new pool too", Duration::from_secs(20), || async {
            let mut all = true;
            for n in &state.nodes {
                all &= masq_rules(&n.netns)?.iter().any(|r| r.contains("10.245.0.0/16"));
            }
            Ok::<_, anyhow::Error>(all)
        })
        .await?;
        let routes_now: Vec<Vec<String>> = state
            .nodes
            .iter()
            .map(|n| podnet_routes(&n.netns))
            .collect::<anyhow::Result<_>>()?;
        ensure!(routes_now == routes_before, "routes changed when the pool started draining");
        let seen = sources()?;
        ensure!(
            seen == (pod_a, node_a),
            "while draining, {} saw {} (want the pod's {pod_a}) and the external host saw {} (want the node's {node_a})",
            b.netns,
            seen.0,
            seen.1
        );
        anyhow::Ok(())
    }
    .await;
    set_cidrs(&api, &original).await?;
    outcome?;
    wait_until("Draining=False", Duration::from_secs(20), || {
        let api = api.clone();
        async move {
            let st = api.get("default").await?.status.unwrap_or_default();
            Ok::<_, anyhow::Error>(condition_is(
                &st.conditions,
                condition_type::DRAINING,
                ConditionStatus::False,
            ))
        }
    })
    .await?;
    Ok(Outcome::default()
        .held(format!("{v4_pool} removed from spec.cidrs while every node used it: Draining=True, still in servedCIDRs"))
        .held("every podnet route stayed")
        .held(format!("pod to pod across nodes: the receiving pod saw the sender's own address {pod_a}"))
        .held(format!("pod to the external host: masqueraded to the node's {node_a}")))
}
