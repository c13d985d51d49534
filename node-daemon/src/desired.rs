//! The node's desired dataplane: a pure function of (own node name, NodeRoutes,
//! PodNetworks). No I/O here; the appliers make the kernel match it.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use podnet_crds::{NodeRoute, PodNetwork};

/// Route protocol number tagging every route podnet installs (unassigned in
/// /etc/iproute2/rt_protos), so podnet's routes are told apart from everyone else's.
pub const ROUTE_PROTOCOL: u8 = 233;

/// A route to a peer's pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The peer's pod CIDR.
    pub dst: IpNet,
    /// The peer's node address of the same family.
    pub via: IpAddr,
    /// The peer node.
    pub node: String,
}

/// A peer (or one of its CIDRs) that gets no route, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The peer node.
    pub node: String,
    /// Why.
    pub reason: String,
}

/// The masquerade rules of one node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MasqueradePlan {
    /// Sources to masquerade: this node's pod CIDRs.
    pub sources: Vec<IpNet>,
    /// Destinations that keep the pod's address: every PodNetwork CIDR, then the own
    /// network's nonMasqueradeCIDRs.
    pub exempt: Vec<IpNet>,
}

/// Everything the node should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes to peers.
    pub routes: Vec<PeerRoute>,
    /// Peers without a route.
    pub skipped: Vec<Skipped>,
    /// This node's pod CIDRs (for the CNI config); empty until allocated.
    pub own_cidrs: Vec<IpNet>,
    /// The own network's MTU setting (`None` or 0: the default-route interface's).
    pub mtu: Option<u32>,
    /// Masquerade rules; `None` when disabled (or nothing allocated yet).
    pub masquerade: Option<MasqueradePlan>,
}

fn parse_all<T: std::str::FromStr>(items: &[String]) -> Result<Vec<T>, String> {
    items
        .iter()
        .map(|s| s.parse::<T>().map_err(|_| format!("malformed value {s:?}")))
        .collect()
}

/// Computes the desired state of node `own`.
pub fn desired_state(
    own: &str,
    noderoutes: &[impl Borrow<NodeRoute>],
    networks: &[impl Borrow<PodNetwork>],
) -> Desired {
    let mut out = Desired::default();
    let mut by_dst: BTreeMap<IpNet, String> = BTreeMap::new();
    let mut sorted: Vec<&NodeRoute> = noderoutes.iter().map(Borrow::borrow).collect();
    sorted.sort_by_key(|nr| nr.name_any());
    for nr in sorted {
        let name = nr.name_any();
        let Some(status) = nr.status.as_ref() else {
            continue;
        };
        if name == own {
            match parse_all::<IpNet>(&status.pod_cidrs) {
                Ok(c) => out.own_cidrs = c,
                Err(e) => out.skipped.push(Skipped {
                    node: name.clone(),
                    reason: format!("own podCIDRs: {e}"),
                }),
            }
            continue;
        }
        let cidrs = match parse_all::<IpNet>(&status.pod_cidrs) {
            Ok(c) => c,
            Err(e) => {
                out.skipped.push(Skipped {
                    node: name,
                    reason: format!("podCIDRs: {e}"),
                });
                continue;
            }
        };
        let ips = match parse_all::<IpAddr>(&status.node_ips) {
            Ok(i) => i,
            Err(e) => {
                out.skipped.push(Skipped {
                    node: name,
                    reason: format!("nodeIPs: {e}"),
                });
                continue;
            }
        };
        for cidr in cidrs {
            let dst = cidr.trunc();
            let Some(via) = ips.iter().find(|ip| ip.is_ipv4() == dst.addr().is_ipv4()) else {
                let fam = if dst.addr().is_ipv4() { "IPv4" } else { "IPv6" };
                out.skipped.push(Skipped {
                    node: name.clone(),
                    reason: format!("no {fam} node address for {dst}"),
                });
                continue;
            };
            if let Some(first) = by_dst.get(&dst) {
                out.skipped.push(Skipped {
                    node: name.clone(),
                    reason: format!("{dst} is also claimed by node {first}"),
                });
                continue;
            }
            by_dst.insert(dst, name.clone());
            out.routes.push(PeerRoute {
                dst,
                via: *via,
                node: name.clone(),
            });
        }
    }
    out.routes.sort();
    let own_network = noderoutes
        .iter()
        .map(Borrow::borrow)
        .find(|nr| nr.name_any() == own)
        .and_then(|nr| nr.spec.pod_network.clone());
    let own_pn = own_network.and_then(|n| {
        networks
            .iter()
            .map(Borrow::borrow)
            .find(|pn| pn.name_any() == n)
    });
    out.mtu = own_pn.and_then(|pn| pn.spec.mtu).filter(|m| *m > 0);
    let masquerade_on = own_pn.is_none_or(|pn| pn.spec.masquerade.enabled);
    if masquerade_on && !out.own_cidrs.is_empty() {
        let mut exempt: Vec<IpNet> = Vec::new();
        for pn in networks.iter().map(Borrow::borrow) {
            exempt.extend(pn.spec.cidrs.iter().filter_map(|c| c.parse::<IpNet>().ok()));
        }
        if let Some(pn) = own_pn {
            exempt.extend(
                pn.spec
                    .masquerade
                    .non_masquerade_cidrs
                    .iter()
                    .filter_map(|c| c.parse::<IpNet>().ok()),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        exempt.retain(|c| seen.insert(*c));
        out.masquerade = Some(MasqueradePlan {
            sources: out.own_cidrs.clone(),
            exempt,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use podnet_crds::{Masquerade, NodeRouteSpec, NodeRouteStatus, PodNetworkSpec};

    use super::*;

    fn nr(name: &str, ips: &[&str], cidrs: &[&str]) -> NodeRoute {
        let mut n = NodeRoute::new(
            name,
            NodeRouteSpec {
                node_name: name.into(),
                pod_network: Some("default".into()),
            },
        );
        n.status = Some(NodeRouteStatus {
            node_ips: ips.iter().map(|s| s.to_string()).collect(),
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
        n
    }

    fn pn(cidrs: &[&str], nonmasq: &[&str], enabled: bool) -> PodNetwork {
        PodNetwork::new(
            "default",
            PodNetworkSpec {
                cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                node_mask_size: Default::default(),
                node_selector: None,
                masquerade: Masquerade {
                    enabled,
                    non_masquerade_cidrs: nonmasq.iter().map(|s| s.to_string()).collect(),
                },
                mtu: Some(1450),
            },
        )
    }

    #[test]
    fn routes_to_peers_by_family_and_masquerade_plan() {
        let nrs = vec![
            nr(
                "a",
                &["198.18.0.1", "2001:db8::1"],
                &["10.244.1.0/24", "fd00::1:0:0:0/64"],
            ),
            nr(
                "b",
                &["198.18.0.2", "2001:db8::2"],
                &["10.244.2.0/24", "fd00:0:0:2::/64"],
            ),
            nr("c", &["198.18.0.3"], &["10.244.3.0/24", "fd00:0:0:3::/64"]),
            nr("d", &["not-an-ip"], &["10.244.4.0/24"]),
            nr("e", &["198.18.0.5"], &["10.244.2.0/24"]),
        ];
        let pns = vec![pn(
            &["10.244.0.0/16", "fd00::/48"],
            &["198.18.0.0/15"],
            true,
        )];
        let d = desired_state("a", &nrs, &pns);
        let routes: Vec<String> = d
            .routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.via))
            .collect();
        assert_eq!(
            routes,
            [
                "10.244.2.0/24 via 198.18.0.2",
                "10.244.3.0/24 via 198.18.0.3",
                "fd00:0:0:2::/64 via 2001:db8::2"
            ]
        );
        let reasons: Vec<String> = d
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.node, s.reason))
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("c: no IPv6 node address")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("d: nodeIPs: malformed")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("e: 10.244.2.0/24 is also claimed by node b")),
            "{reasons:?}"
        );
        assert_eq!(d.own_cidrs.len(), 2);
        assert_eq!(d.mtu, Some(1450));
        let m = d.masquerade.unwrap_or_default();
        assert_eq!(m.sources, d.own_cidrs);
        let exempt: Vec<String> = m.exempt.iter().map(ToString::to_string).collect();
        assert_eq!(exempt, ["10.244.0.0/16", "fd00::/48", "198.18.0.0/15"]);
        let off = desired_state("a", &nrs, &[pn(&["10.244.0.0/16"], &[], false)]);
        assert!(off.masquerade.is_none());
        assert!(
            desired_state("zz", &nrs, &pns).masquerade.is_none(),
            "nothing allocated, nothing masqueraded"
        );
    }
}
