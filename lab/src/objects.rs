//! API objects the labs and benchmarks create in bulk.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// Creates Nodes `names` (16 at a time) with `labels`; `ips(i)` gives node i's addresses
/// (written as InternalIPs into its status). Nothing runs behind them: they are peers
/// for podnet's operator and daemons to allocate and route.
pub async fn create_nodes(
    client: &Client,
    names: &[String],
    labels: &BTreeMap<String, String>,
    ips: impl Fn(usize) -> Vec<String>,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(names.iter().cloned().enumerate())
        .map(|(i, name)| {
            let api = api.clone();
            let addrs = ips(i);
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": labels},
            }))
            .unwrap_or_default();
            async move {
                api.create(&PostParams::default(), &node).await?;
                if !addrs.is_empty() {
                    let st = serde_json::json!({"status": {"addresses":
                        addrs.iter().map(|a| serde_json::json!({"type": "InternalIP", "address": a})).collect::<Vec<_>>()}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
                        .await?;
                }
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Deletes Nodes `names` (16 at a time); one already gone is fine.
pub async fn delete_nodes(client: &Client, names: &[String]) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
