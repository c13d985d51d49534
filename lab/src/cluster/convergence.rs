//! The lab's convergence benchmark: how long until every node's routes are programmed after nodes join.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{LAB_LABEL, LabState};
use crate::LabError;

/// Convergence: for `samples` probe Nodes (Node objects with a lab address, no
/// namespace), the time from the moment their NodeRoute shows a CIDR until the route to
/// it is in every node's kernel. Probes are removed afterwards. Sorted durations.
pub async fn measure_convergence(
    state: &LabState,
    samples: usize,
) -> Result<Vec<Duration>, LabError> {
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use podnet_netlink::{Netlink, RouteFilter};
    let client = crate::client_from_kubeconfig(&state.control_plane.kubeconfig).await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let nrs: Api<podnet_crds::NodeRoute> = Api::all(client);
    let mut sockets: Vec<Netlink> = state
        .nodes
        .iter()
        .map(|n| Netlink::in_netns(Path::new(&format!("/var/run/netns/{}", n.netns))))
        .collect::<Result<_, _>>()
        .map_err(|e| LabError::Command {
            command: "netlink".into(),
            stderr: e.to_string(),
        })?;
    let mut out = Vec::new();
    for k in 0..samples {
        let name = format!("probe-{k}");
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {LAB_LABEL: "true"}}}),
        )
        .map_err(|source| LabError::State {
            path: name.clone().into(),
            source,
        })?;
        nodes.create(&PostParams::default(), &node).await?;
        let st = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": format!("198.18.0.{}", 200 + k)}]}});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (cidr, t0) = loop {
            if let Some(c) = nrs
                .get_opt(&name)
                .await?
                .and_then(|nr| nr.status?.pod_cidrs.first().cloned())
            {
                break (c, Instant::now());
            }
            if Instant::now() > deadline {
                return Err(LabError::Command {
                    command: format!("allocation of {name}"),
                    stderr: "no CIDR after 20 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let dst: std::net::IpAddr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        for nl in sockets.iter_mut() {
            loop {
                let routes = nl
                    .routes(RouteFilter {
                        ipv6: false,
                        protocol: Some(233),
                    })
                    .unwrap_or_default();
                if routes.iter().any(|r| r.dst == dst) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LabError::Command {
                        command: format!("route to {cidr}"),
                        stderr: "not programmed after 20 s".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        out.push(t0.elapsed());
        nodes.delete(&name, &DeleteParams::default()).await?;
    }
    out.sort();
    Ok(out)
}
