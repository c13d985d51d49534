//! Pure rules about PodNetworks and Nodes: which networks are usable, which network a
//! node belongs to, and which addresses a node is reached at.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::NodeAddress;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use podnet_crds::PodNetwork;

use crate::allocator::{Family, NetworkPools};

/// A PodNetwork as the operator sees it: parsed, and judged usable or not.
#[derive(Clone, Debug)]
pub struct NetworkView {
    /// The PodNetwork's name.
    pub name: String,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// The parsed pools (empty when unparsable).
    pub pools: NetworkPools,
    /// Which nodes it selects.
    selector: Selector,
    /// Why it cannot serve allocations, if it cannot.
    pub invalid: Option<String>,
}

impl NetworkView {
    /// Whether the network selects a node with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }
}

/// Parses every PodNetwork and decides which are usable. Networks are ranked by creation
/// time, then name; a network whose CIDRs overlap those of a higher-ranked usable
/// network is invalid, and says which one it collides with.
pub fn evaluate_networks<'a>(
    networks: impl IntoIterator<Item = &'a PodNetwork>,
) -> Vec<NetworkView> {
    let mut ranked: Vec<&PodNetwork> = networks.into_iter().collect();
    ranked.sort_by(|a, b| {
        let key = |n: &PodNetwork| {
            (
                n.metadata.creation_timestamp.as_ref().map(|t| t.0),
                n.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut views: Vec<NetworkView> = Vec::with_capacity(ranked.len());
    for pn in ranked {
        let mut invalid = None;
        let mut cidrs = Vec::new();
        for c in &pn.spec.cidrs {
            match c.parse::<IpNet>() {
                Ok(net) if net == net.trunc() => cidrs.push(net),
                _ => {
                    invalid = Some(format!(
                        "spec.cidrs has {c:?}, which is not a canonical CIDR"
                    ))
                }
            }
        }
        let selector = match pn
            .spec
            .node_selector
            .clone()
            .map(Selector::try_from)
            .transpose()
        {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                invalid = Some(format!("spec.nodeSelector is invalid: {e}"));
                Selector::default()
            }
        };
        // Entries of status.servedCIDRs no longer in the spec: draining.
        let draining = pn
            .status
            .iter()
            .flat_map(|s| s.served_cidrs.iter())
            .filter_map(|c| c.parse::<IpNet>().ok())
            .filter(|c| !cidrs.contains(c))
            .collect();
        let pools = NetworkPools {
            cidrs,
            draining,
            mask_v4: pn.spec.node_mask_size.ipv4,
            mask_v6: pn.spec.node_mask_size.ipv6,
        };
        if invalid.is_none() {
            invalid = overlap_with(&pools, &views);
        }
        views.push(NetworkView {
            name: pn.name_any(),
            generation: pn.metadata.generation,
            pools,
            selector,
            invalid,
        });
    }
    views
}

fn overlap_with(pools: &NetworkPools, earlier: &[NetworkView]) -> Option<String> {
    for other in earlier.iter().filter(|v| v.invalid.is_none()) {
        for mine in &pools.cidrs {
            if let Some(theirs) = other
                .pools
                .cidrs
                .iter()
                .find(|t| t.contains(mine) || mine.contains(*t))
            {
                return Some(format!(
                    "{mine} overlaps {theirs} of PodNetwork {}, which was created first",
                    other.name
                ));
            }
        }
    }
    None
}

/// The usable network that takes a node with these labels: the highest-ranked one whose
/// selector matches (see [`evaluate_networks`] for the ranking).
pub fn choose_network<'a>(
    labels: &BTreeMap<String, String>,
    views: &'a [NetworkView],
) -> Option<&'a NetworkView> {
    views
        .iter()
        .find(|v| v.invalid.is_none() && v.selects(labels))
}

/// The addresses peers reach a node at: per family, the first InternalIP, else the first
/// ExternalIP; IPv4 first. Unparsable addresses are ignored.
pub fn node_ips(addresses: &[NodeAddress]) -> Vec<String> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let pick = |kind: &str| {
            addresses
                .iter()
                .filter(|a| a.type_ == kind)
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .find(|ip| {
                    matches!(
                        (family, ip),
                        (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
                    )
                })
        };
        if let Some(ip) = pick("InternalIP").or_else(|| pick("ExternalIP")) {
            out.push(ip.to_string());
        }
    }
    out
}

/// Why an address cannot be a node IP, if it cannot: peers would route pod traffic to
/// it.
pub fn node_ip_problem(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("IPv4-mapped"),
        _ => None,
    }
}

/// One node's addresses, as [`choose_node_ips`] weighs them.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeAddresses<'a> {
    /// The node's name.
    pub name: &'a str,
    /// When the Node was created (the older node wins a duplicate).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// The addresses its Node reports ([`node_ips`]).
    pub candidates: &'a [String],
    /// The nodeIPs its NodeRoute publishes now.
    pub previous: &'a [String],
}

/// What one node's addresses become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIpChoice {
    /// The node IPs to publish (IPv4 first): each candidate that passed, else the
    /// previous valid IP of that family.
    pub ips: Vec<String>,
    /// Every candidate refused, and why.
    pub refused: Vec<String>,
}

/// Decides every node's `nodeIPs` from its Node's addresses ([`node_ips`]), refusing
/// an address that is not unicast, that lies inside a pod CIDR (`pod_space`: every
/// served pool and every allocated CIDR), or that another node has: an address claimed
/// twice goes to the node whose NodeRoute already publishes it, else to the older Node
/// (then the lower name). A refused address leaves the node's previous IP of that
/// family in force. The choices come in the order of `nodes`.
pub fn choose_node_ips(nodes: &[NodeAddresses], pod_space: &[IpNet]) -> Vec<NodeIpChoice> {
    // Who each address goes to: (not an incumbent, creation time, name) sorts first.
    let mut owner: BTreeMap<IpAddr, (bool, Option<k8s_openapi::jiff::Timestamp>, &str)> =
        BTreeMap::new();
    for NodeAddresses {
        name,
        created,
        candidates,
        previous,
    } in nodes
    {
        for s in candidates.iter().chain(previous.iter()) {
            let Ok(ip) = s.parse::<IpAddr>() else {
                continue;
            };
            let key = (!previous.contains(s), *created, *name);
            owner
                .entry(ip)
                .and_modify(|k| {
                    if key < *k {
                        *k = key;
                    }
                })
                .or_insert(key);
        }
    }
    let inside_pods = |ip: IpAddr| pod_space.iter().find(|n| n.contains(&ip));
    let mut out = Vec::with_capacity(nodes.len());
    for NodeAddresses {
        name,
        candidates,
        previous,
        ..
    } in nodes
    {
        let mut choice = NodeIpChoice::default();
        let refuse = |ip: &IpAddr| -> Option<String> {
            if let Some(what) = node_ip_problem(*ip) {
                return Some(format!("{ip} is {what}"));
            }
            if let Some(net) = inside_pods(*ip) {
                return Some(format!("{ip} lies inside the pod CIDR {net}"));
            }
            match owner.get(ip) {
                Some((_, _, other)) if other != name => {
                    Some(format!("{ip} is node {other}'s address"))
                }
                _ => None,
            }
        };
        for family_v4 in [true, false] {
            let same = |s: &&String| {
                s.parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_ipv4() == family_v4)
            };
            let candidate = candidates.iter().find(same);
            let fallback = previous
                .iter()
                .find(same)
                .filter(|p| p.parse::<IpAddr>().is_ok_and(|ip| refuse(&ip).is_none()));
            match candidate.map(|c| (c, c.parse::<IpAddr>())) {
                Some((c, Ok(ip))) => match refuse(&ip) {
                    None => choice.ips.push(c.clone()),
                    Some(why) => {
                        choice.refused.push(why);
                        choice.ips.extend(fallback.cloned());
                    }
                },
                Some((c, Err(_))) => {
                    choice.refused.push(format!("{c:?} is not an IP address"));
                    choice.ips.extend(fallback.cloned());
                }
                None => {}
            }
        }
        out.push(choice);
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeAddress;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use k8s_openapi::jiff::Timestamp;
    use podnet_crds::PodNetworkSpec;

    use super::*;

    fn pn(name: &str, created: i64, cidrs: &[&str], selector: Option<(&str, &str)>) -> PodNetwork {
        let mut p = PodNetwork::new(
            name,
            PodNetworkSpec {
                cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
                node_mask_size: Default::default(),
                node_selector: selector.map(|(k, v)| LabelSelector {
                    match_labels: Some([(k.to_string(), v.to_string())].into()),
                    match_expressions: None,
                }),
                masquerade: Default::default(),
                mtu: None,
            },
        );
        p.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(created).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        p
    }

    #[test]
    fn older_network_wins_overlaps_and_selection() {
        let nets = [
            pn("b-newer", 20, &["10.244.128.0/17"], None),
            pn("a-older", 10, &["10.244.0.0/16"], None),
            pn("edge", 30, &["10.250.0.0/16"], Some(("pool", "edge"))),
        ];
        let views = evaluate_networks(&nets);
        assert_eq!(views[0].name, "a-older");
        assert!(views[0].invalid.is_none());
        let why = views[1].invalid.clone().unwrap_or_default();
        assert!(
            why.contains("overlaps 10.244.0.0/16 of PodNetwork a-older"),
            "{why}"
        );
        let edge: BTreeMap<String, String> = [("pool".to_string(), "edge".to_string())].into();
        // Both a-older (selects all) and edge match; the older one wins.
        assert_eq!(
            choose_network(&edge, &views).map(|v| v.name.as_str()),
            Some("a-older")
        );
        assert_eq!(
            choose_network(&BTreeMap::new(), &views[2..]).map(|v| v.name.as_str()),
            None
        );
        assert_eq!(
            choose_network(&edge, &views[2..]).map(|v| v.name.as_str()),
            Some("edge")
        );
    }

    fn at(s: i64) -> Option<Timestamp> {
        Timestamp::from_second(s).ok()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bad_node_addresses_are_refused_and_the_previous_ones_stay() {
        let pods: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))];
        let n = |name: &'static str, created: i64, candidates: &[&str], previous: &[&str]| {
            (name, at(created), strings(candidates), strings(previous))
        };
        let owned = [
            // a: holds 198.18.0.1; b (newer) now claims it too: a keeps it, b keeps its own.
            n("a", 1, &["198.18.0.1"], &["198.18.0.1"]),
            n("b", 2, &["198.18.0.1"], &["198.18.0.2"]),
            // c, d: new and claiming the same address: the older node gets it.
            n("d", 4, &["198.18.0.9"], &[]),
            n("c", 3, &["198.18.0.9"], &[]),
            n("lo", 5, &["127.0.0.1", "::1"], &["198.18.0.5"]),
            n("pod", 6, &["10.244.3.7"], &[]),
            n("mc", 7, &["224.0.0.5", "fe80::1"], &[]),
            n("ok", 8, &["198.18.0.8", "2001:db8::8"], &[]),
        ];
        let nodes: Vec<NodeAddresses> = owned
            .iter()
            .map(|(name, created, candidates, previous)| NodeAddresses {
                name,
                created: *created,
                candidates,
                previous,
            })
            .collect();
        let choices = choose_node_ips(&nodes, &pods);
        let got: BTreeMap<&str, &NodeIpChoice> =
            nodes.iter().map(|n| n.name).zip(choices.iter()).collect();
        let ips = |n: &str| got.get(n).map(|c| c.ips.clone()).unwrap_or_default();
        let refused = |n: &str| got.get(n).map(|c| c.refused.join("; ")).unwrap_or_default();
        assert_eq!(ips("a"), ["198.18.0.1"]);
        assert_eq!(ips("b"), ["198.18.0.2"]);
        assert!(
            refused("b").contains("node a's address"),
            "{}",
            refused("b")
        );
        assert_eq!(ips("c"), ["198.18.0.9"]);
        assert_eq!(ips("d"), Vec::<String>::new());
        assert_eq!(ips("lo"), ["198.18.0.5"], "{}", refused("lo"));
        assert!(refused("lo").contains("loopback"));
        assert!(refused("pod").contains("inside the pod CIDR 10.244.0.0/16"));
        assert!(refused("mc").contains("multicast") && refused("mc").contains("link-local"));
        assert_eq!(ips("ok"), ["198.18.0.8", "2001:db8::8"]);
        assert!(refused("ok").is_empty());
    }

    #[test]
    fn node_ips_prefer_internal_then_external_per_family() {
        let addr = |t: &str, a: &str| NodeAddress {
            type_: t.into(),
            address: a.into(),
        };
        let addresses = [
            addr("Hostname", "n1"),
            addr("ExternalIP", "203.0.113.9"),
            addr("ExternalIP", "2001:db8::9"),
            addr("InternalIP", "198.18.0.2"),
            addr("InternalIP", "not-an-ip"),
        ];
        assert_eq!(node_ips(&addresses), vec!["198.18.0.2", "2001:db8::9"]);
        assert!(node_ips(&[]).is_empty());
    }
}
