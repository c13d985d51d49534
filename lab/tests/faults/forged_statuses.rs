//! Hand-written NodeRoute statuses of every dangerous kind — another node's CIDR
//! claimed as older, default routes, the node network, a pool-wide CIDR, gateways that
//! are a broadcast address, loopback or a pod — with both operator replicas frozen, so
//! the daemons alone stand between them and the nodes. Every node's whole routing table
//! (all owners, kernel routes included) and masquerade rules are compared before, while
//! the objects exist, and after they are deleted; every path stays reachable.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_crds::{NodeRoute, condition_type, find_condition, reason};
use podnet_lab::cluster::{self, LabState};
use podnet_lab::invariants::admin_client;
use podnet_lab::probes::all_routes;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let client = admin_client(state).await?;
    let api: Api<NodeRoute> = Api::all(client.clone());
    let node2 = api.get(&state.nodes[1].name).await?;
    let n2_cidrs = node2.status.clone().unwrap_or_default().pod_cidrs;
    let pod_ip = state.pods[0].ips[0].clone();
    // Each is refused by every node: (name, nodeIPs, podCIDRs, refusals per node).
    let forged: Vec<(&str, Vec<String>, Vec<String>, usize)> = vec![
        (
            "forged-peer",
            vec!["198.18.0.201".into(), "2001:db8:18::201".into()],
            n2_cidrs.clone(),
            2,
        ),
        (
            "forged-default",
            vec!["198.18.0.202".into(), "2001:db8:18::202".into()],
            vec!["0.0.0.0/0".into(), "::/0".into()],
            2,
        ),
        (
            "forged-nodenet",
            vec!["198.18.0.203".into()],
            vec!["198.18.0.0/24".into()],
            1,
        ),
        (
            "forged-wide",
            vec!["198.18.0.204".into()],
            vec!["10.244.0.0/16".into()],
            1,
        ),
        (
            "forged-gw-bcast",
            vec!["198.18.0.255".into()],
            vec!["10.244.250.0/24".into()],
            1,
        ),
        (
            "forged-gw-lo",
            vec!["127.0.0.1".into()],
            vec!["10.244.251.0/24".into()],
            1,
        ),
        (
            "forged-gw-pod",
            vec![pod_ip],
            vec!["10.244.252.0/24".into()],
            1,
        ),
    ];
    let refusals: usize = forged.iter().map(|f| f.3).sum();
    let snapshot = |state: &LabState| -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut all = BTreeMap::new();
        for n in &state.nodes {
            let mut s = all_routes(&n.netns)?;
            s.extend(masq_rules(&n.netns)?);
            all.insert(n.name.clone(), s);
        }
        Ok(all)
    };
    let before = snapshot(state)?;
    let operators: Vec<i32> = std::iter::once(state.operator_pid)
        .chain(state.standby_operator_pids.iter().copied())
        .collect();
    for pid in &operators {
        kill(Pid::from_raw(*pid), Signal::SIGSTOP)?;
    }
    let outcome = async {
        let t = Instant::now();
        for (name, ips, cidrs, _) in &forged {
            let obj = serde_json::json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute",
                "metadata": {"name": name}, "spec": {"nodeName": name, "podNetwork": "default"}});
            api.patch(name, &PatchParams::apply("fault-suite").force(), &Patch::Apply(obj))
                .await?;
            // Vouched for as an old allocation, as a restore of a stale backup would be.
            let status = serde_json::json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute",
                "metadata": {"name": name},
                "status": {"nodeIPs": ips, "podCIDRs": cidrs, "conditions": [{
                    "type": "Allocated", "status": "True", "reason": "Allocated",
                    "message": "forged", "lastTransitionTime": "2000-01-01T00:00:00Z"}]}});
            api.patch_status(name, &PatchParams::apply("fault-suite").force(), &Patch::Apply(status))
                .await?;
        }
        // Every node names all of them on its Programmed condition.
        let want = format!("{refusals} rejected");
        wait_until(
            &format!("every node's Programmed condition to list {want}"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let (names, want) = (
                    state.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
                    want.clone(),
                );
                async move {
                    for name in names {
                        let nr = api.get(&name).await?;
                        let conds = nr.status.map(|s| s.conditions).unwrap_or_default();
                        let ok = find_condition(&conds, condition_type::PROGRAMMED).is_some_and(|c| {
                            c.status == "True"
                                && c.reason == reason::ROUTES_REJECTED
                                && c.message.contains(&want)
                        });
                        if !ok {
                            return anyhow::Ok(false);
                        }
                    }
                    Ok(true)
                }
            },
        )
        .await?;
        let refused_in = t.elapsed();
        let during = snapshot(state)?;
        ensure!(during == before, "routes or masquerade rules changed while forged statuses existed:\nbefore {before:#?}\nduring {during:#?}");
        let (m, ok, total) = cluster::matrix(state);
        ensure!(ok == total, "{} of {total} paths unreachable with forged statuses:\n{m}", total - ok);
        let events = podnet_lab::chart::kubectl(
            &state.control_plane.kubeconfig,
            &["get", "events", "-A", "-o", "jsonpath={range .items[*]}{.involvedObject.name} {.reason}{\"\\n\"}{end}"],
            "",
        )?;
        for (name, ..) in &forged {
            ensure!(
                events.contains(&format!("{name} {}", reason::ROUTE_REJECTED)),
                "no {} event on {name}",
                reason::ROUTE_REJECTED
            );
        }
        for (name, ..) in &forged {
            api.delete(name, &DeleteParams::default()).await?;
        }
        wait_until("every node Programmed without rejections", Duration::from_secs(30), || {
            let api = api.clone();
            let names: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
            async move {
                for name in names {
                    let nr = api.get(&name).await?;
                    let conds = nr.status.map(|s| s.conditions).unwrap_or_default();
                    if find_condition(&conds, condition_type::PROGRAMMED)
                        .is_none_or(|c| c.reason != reason::PROGRAMMED)
                    {
                        return anyhow::Ok(false);
                    }
                }
                Ok(true)
            }
        })
        .await?;
        let after = snapshot(state)?;
        ensure!(after == before, "deleting the forged objects changed routes or rules:\nbefore {before:#?}\nafter {after:#?}");
        let (m, ok, total) = cluster::matrix(state);
        ensure!(ok == total, "{} of {total} paths unreachable after the deletion:\n{m}", total - ok);
        anyhow::Ok((refused_in, total))
    }
    .await;
    // Whatever happened, no forged object outlives the scenario.
    for (name, ..) in &forged {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    for pid in &operators {
        kill(Pid::from_raw(*pid), Signal::SIGCONT)?;
    }
    let (refused_in, paths) = outcome?;
    Ok(Outcome::default()
        .count("forged NodeRoutes (both operator replicas frozen)", forged.len())
        .count("refusals reported by each node, each naming the peer and the rule", refusals)
        .took("every node refused them all within", refused_in)
        .held("every node's whole routing table (all owners) and masquerade rules unchanged while they existed and after their deletion")
        .count("paths reachable throughout", paths)
        .held("a RouteRejected event on each forged object"))
}
