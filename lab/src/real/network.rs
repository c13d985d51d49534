//! The lab's network: claiming the lab /24 on the host, attaching namespaces to the lab switch, and the control plane's routes to the pod CIDRs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{NET4, POD_CIDRS, REGISTRY, RealLab, alive, down, load, save, unregister};
use crate::{LabError, run_ok};

/// Makes sure the lab network is free on this host before a lab takes it. One real-node
/// lab runs at a time (its addresses are fixed); a registered lab whose control plane is
/// gone is removed (`down` from its state), a live one is an error naming it, and an
/// address or route of the lab network that no registered lab explains is an error
/// naming the link that holds it. Without this, a lab left behind keeps its route to
/// 198.18.64.0/24 on the host: the new lab's kubelets reach the API server, its replies
/// leave by the old link and every node stays unregistered.
pub(super) fn claim_network(progress: &mut dyn FnMut(&str, Duration)) -> Result<(), LabError> {
    let mut candidates: Vec<(String, PathBuf)> = std::fs::read_dir(REGISTRY)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let tag = e.file_name().to_string_lossy().into_owned();
            let dir = std::fs::read_to_string(e.path()).ok()?;
            Some((tag, PathBuf::from(dir.trim())))
        })
        .collect();
    // The link that holds the lab network now, if any (`<tag>-h`): a lab from before
    // the registry keeps its state in /run/<tag>.
    let holder = lab_network_holder()?;
    if let Some(tag) = holder.as_deref().and_then(|l| l.strip_suffix("-h"))
        && !candidates.iter().any(|(t, _)| t == tag)
    {
        candidates.push((tag.to_string(), Path::new("/run").join(tag)));
    }
    for (tag, dir) in candidates {
        let started = Instant::now();
        match load(&dir) {
            Ok(old) if alive(&old) => {
                return Err(LabError::Command {
                    command: "claiming the lab network".into(),
                    stderr: format!(
                        "another real-node lab ({tag}, state in {}) is running and holds \
                         {NET4}.0/24; stop it first (podnet-lab down, or end the test run)",
                        dir.display()
                    ),
                });
            }
            Ok(old) => {
                down(&old);
                progress(
                    &format!("removed lab {tag} left behind (state in {})", dir.display()),
                    started.elapsed(),
                );
            }
            Err(_) => unregister(&tag),
        }
    }
    if let Some(link) = lab_network_holder()? {
        return Err(LabError::Command {
            command: "claiming the lab network".into(),
            stderr: format!(
                "{NET4}.0/24 is already routed on this host through {link}, which no \
                 podnet lab state explains; remove that address/route (or the link) first"
            ),
        });
    }
    Ok(())
}

/// The host link that has a route to the lab network, if any.
pub(super) fn lab_network_holder() -> Result<Option<String>, LabError> {
    let out = run_ok(&[
        "ip",
        "-4",
        "-o",
        "route",
        "show",
        "match",
        &format!("{NET4}.1"),
    ])?;
    Ok(out.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.first().is_some_and(|d| *d == "default") {
            return None;
        }
        words
            .windows(2)
            .find(|w| w[0] == "dev")
            .map(|w| w[1].to_string())
    }))
}

/// Attaches namespace `name` to the switch through port `port` with the given addresses.
pub(super) fn attach(
    lab: &mut RealLab,
    name: &str,
    port: &str,
    v4: &str,
    v6: &str,
) -> Result<(), LabError> {
    let sw = format!("{}-sw", lab.tag);
    run_ok(&["ip", "netns", "add", name])?;
    lab.namespaces.push(name.to_string());
    save(lab)?;
    run_ok(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    run_ok(&[
        "ip", "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    run_ok(&["ip", "-n", &sw, "link", "set", port, "master", "br0", "up"])?;
    run_ok(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
    run_ok(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{v4}/24"),
        "dev",
        "eth0",
    ])?;
    run_ok(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    Ok(())
}

/// Gives the control-plane host a route to every node's pod CIDRs via that node's
/// address of the same family (from the NodeRoutes' status), and removes routes into
/// the pod range that no NodeRoute explains any more.
pub async fn route_control_plane(lab: &RealLab) -> Result<(), LabError> {
    use kube::api::{Api, ListParams};
    let client = crate::client_from_kubeconfig(&lab.control_plane.kubeconfig).await?;
    let nrs = Api::<podnet_crds::NodeRoute>::all(client)
        .list(&ListParams::default())
        .await?;
    let want = pod_routes(nrs.items.iter().filter_map(|nr| nr.status.as_ref()));
    let ns = format!("{}-cp", lab.tag);
    for (cidr, via) in &want {
        run_ok(&["ip", "-n", &ns, "route", "replace", cidr, "via", via])?;
    }
    for range in POD_CIDRS {
        let family = if range.contains(':') { "-6" } else { "-4" };
        let have = run_ok(&[
            "ip", family, "-n", &ns, "-o", "route", "show", "root", range,
        ])?;
        for cidr in have.lines().filter_map(|l| l.split_whitespace().next()) {
            if !want.iter().any(|(c, _)| c == cidr) {
                run_ok(&["ip", "-n", &ns, "route", "del", cidr])?;
            }
        }
    }
    Ok(())
}

/// Each pod CIDR with the node address of its family it is routed through.
pub(super) fn pod_routes<'a>(
    statuses: impl Iterator<Item = &'a podnet_crds::NodeRouteStatus>,
) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for st in statuses {
        for cidr in &st.pod_cidrs {
            let v6 = cidr.contains(':');
            if let Some(via) = st.node_ips.iter().find(|ip| ip.contains(':') == v6) {
                routes.push((cidr.clone(), via.clone()));
            }
        }
    }
    routes
}
