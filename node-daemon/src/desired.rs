//! The node's desired dataplane: a pure function of (own node name, NodeRoutes,
//! PodNetworks, the routes this node already programmed). No I/O here; the appliers
//! make the kernel match it.
//!
//! Nothing from the API is trusted: every peer CIDR passes the rules of [`Rule`] before
//! it becomes a route, and anything refused is reported as a [`Rejection`] naming the
//! peer and the rule. A refused peer costs only its own routes; everything else still
//! programs. The rules that need the kernel (node addresses, on-link gateways, routes of
//! other owners) are checked in [`crate::routes::plan_routes`].

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use podnet_crds::PodNetwork;
use serde::{Deserialize, Serialize};

use crate::peer::Peer;

pub use podnet_contract::ROUTE_PROTOCOL;

/// A route to a peer's pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerRoute {
    /// The peer's pod CIDR.
    pub dst: IpNet,
    /// The peer's node address of the same family.
    pub via: IpAddr,
    /// The peer node (its record's name, shared).
    #[serde(with = "shared_str")]
    pub node: Arc<str>,
}

/// Serializes an `Arc<str>` as the string it is.
mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(de).map(Arc::from)
    }
}

/// Why a peer's CIDR (or the whole peer) gets no route. Each rule has a stable name,
/// used as a metric label and in the `Programmed` condition and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rule {
    /// A CIDR or address in the status does not parse.
    Malformed,
    /// The peer's `Allocated` condition does not vouch for its CIDRs.
    NotAllocated,
    /// The peer names no PodNetwork, or one that does not exist.
    UnknownNetwork,
    /// The CIDR lies outside every CIDR its PodNetwork serves.
    OutsidePool,
    /// The CIDR's prefix length is not its PodNetwork's node mask size.
    WrongMask,
    /// The CIDR is a default route (prefix length 0).
    DefaultRoute,
    /// The CIDR overlaps one of this node's own pod CIDRs.
    OverlapsOwnCidr,
    /// The CIDR overlaps another peer's CIDR that was allocated earlier.
    OverlapsPeer,
    /// The CIDR overlaps a network this node is attached to, or holds one of its
    /// addresses.
    OverlapsNodeNetwork,
    /// The peer has no node address of the CIDR's family.
    NoNodeAddress,
    /// The gateway is not a unicast address (unspecified, loopback, multicast,
    /// broadcast, link-local).
    GatewayNotUnicast,
    /// The gateway lies inside a pod CIDR.
    GatewayInsidePodCidr,
    /// The gateway is one of this node's own addresses.
    GatewayIsOwnAddress,
    /// The gateway is not on-link (no connected route reaches it directly).
    GatewayNotOnLink,
    /// The gateway is the network or broadcast address of its subnet.
    GatewayNetworkOrBroadcast,
    /// A route of another owner (another protocol) already holds the prefix.
    PrefixHeldByOtherRoute,
}

impl Rule {
    /// The rule's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "Malformed",
            Self::NotAllocated => "NotAllocated",
            Self::UnknownNetwork => "UnknownNetwork",
            Self::OutsidePool => "OutsidePool",
            Self::WrongMask => "WrongMask",
            Self::DefaultRoute => "DefaultRoute",
            Self::OverlapsOwnCidr => "OverlapsOwnCIDR",
            Self::OverlapsPeer => "OverlapsPeer",
            Self::OverlapsNodeNetwork => "OverlapsNodeNetwork",
            Self::NoNodeAddress => "NoNodeAddress",
            Self::GatewayNotUnicast => "GatewayNotUnicast",
            Self::GatewayInsidePodCidr => "GatewayInsidePodCIDR",
            Self::GatewayIsOwnAddress => "GatewayIsOwnAddress",
            Self::GatewayNotOnLink => "GatewayNotOnLink",
            Self::GatewayNetworkOrBroadcast => "GatewayNetworkOrBroadcast",
            Self::PrefixHeldByOtherRoute => "PrefixHeldByOtherRoute",
        }
    }

    /// Every rule, for metrics that list each one.
    pub const ALL: [Rule; 16] = [
        Self::Malformed,
        Self::NotAllocated,
        Self::UnknownNetwork,
        Self::OutsidePool,
        Self::WrongMask,
        Self::DefaultRoute,
        Self::OverlapsOwnCidr,
        Self::OverlapsPeer,
        Self::OverlapsNodeNetwork,
        Self::NoNodeAddress,
        Self::GatewayNotUnicast,
        Self::GatewayInsidePodCidr,
        Self::GatewayIsOwnAddress,
        Self::GatewayNotOnLink,
        Self::GatewayNetworkOrBroadcast,
        Self::PrefixHeldByOtherRoute,
    ];
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer (or one of its CIDRs) refused a route, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    /// The peer node.
    pub node: String,
    /// The CIDR refused; `None` when the whole peer is.
    pub cidr: Option<IpNet>,
    /// The rule it broke.
    pub rule: Rule,
    /// The details, for people.
    pub detail: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cidr {
            Some(c) => write!(f, "{} {c}: {} ({})", self.node, self.rule, self.detail),
            None => write!(f, "{}: {} ({})", self.node, self.rule, self.detail),
        }
    }
}

pub use podnet_firewall::MasqueradePlan;

/// Everything the node should have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Routes to peers that passed the API-side rules (the kernel-side rules are checked
    /// when planning against the kernel).
    pub routes: Vec<PeerRoute>,
    /// What was refused.
    pub rejected: Vec<Rejection>,
    /// This node's pod CIDRs (for the CNI config); empty until allocated.
    pub own_cidrs: Vec<IpNet>,
    /// Why this node's own allocation cannot be used, if it cannot.
    pub own_invalid: Option<String>,
    /// Every pod CIDR any PodNetwork serves (draining ones included): no gateway may
    /// lie inside one.
    pub pod_pools: Vec<IpNet>,
    /// The PodNetwork this node's CIDRs come from.
    pub own_network: Option<String>,
    /// The own network's MTU setting (`None`: the default-route interface's).
    pub mtu: Option<u32>,
    /// Masquerade rules; `None` when disabled (or nothing allocated yet).
    pub masquerade: Option<MasqueradePlan>,
}

impl Desired {
    /// Which peer `cidr` is routed to: the incumbent the next computation keeps on a
    /// conflict. The routes are sorted by destination (as computed, and as loaded).
    pub fn incumbent(&self, cidr: &IpNet) -> Option<&str> {
        self.routes
            .binary_search_by(|r| r.dst.cmp(cidr))
            .ok()
            .map(|i| &*self.routes[i].node)
    }
}

/// The pools of one PodNetwork as the daemon checks them.
struct Pools {
    served: Vec<IpNet>,
    mask_v4: u8,
    mask_v6: u8,
}

impl Pools {
    fn of(pn: &PodNetwork) -> Self {
        let mut served: Vec<IpNet> = pn
            .spec
            .cidrs
            .iter()
            .chain(pn.status.iter().flat_map(|s| s.served_cidrs.iter()))
            .filter_map(|c| c.parse::<IpNet>().ok())
            .filter(|n| *n == n.trunc())
            .collect();
        served.sort();
        served.dedup();
        Self {
            served,
            mask_v4: pn.spec.node_mask_size.ipv4,
            mask_v6: pn.spec.node_mask_size.ipv6,
        }
    }

    fn mask(&self, cidr: &IpNet) -> u8 {
        if cidr.addr().is_ipv4() {
            self.mask_v4
        } else {
            self.mask_v6
        }
    }

    /// The rule `cidr` breaks against these pools, if any.
    fn check(&self, network: &str, cidr: &IpNet) -> Option<(Rule, String)> {
        if !self.served.iter().any(|p| p.contains(cidr)) {
            return Some((
                Rule::OutsidePool,
                format!("outside every CIDR PodNetwork {network} serves"),
            ));
        }
        let mask = self.mask(cidr);
        (cidr.prefix_len() != mask).then(|| {
            (
                Rule::WrongMask,
                format!("PodNetwork {network} hands out /{mask} node CIDRs"),
            )
        })
    }
}

/// Whether the operator vouches for the CIDRs in a NodeRoute's status
/// ([`crate::peer::vouches`], decided when the record was made).
fn vouched(nr: &Peer) -> Result<(), String> {
    match nr.status.as_ref().and_then(|s| s.allocated.as_ref()) {
        None => Err("no Allocated condition".into()),
        Some(c) => c
            .refused
            .as_deref()
            .map_or(Ok(()), |why| Err(why.to_string())),
    }
}

/// When the operator allocated what a NodeRoute holds (when `Allocated` last changed,
/// else when the NodeRoute was created): the older allocation wins a conflict.
fn allocated_since(nr: &Peer) -> Option<Timestamp> {
    nr.status
        .as_ref()
        .and_then(|s| s.allocated.as_ref())
        .map(|c| c.since)
        .or(nr.created)
}

/// Whether `ip` can be a next hop at all.
fn unicast_problem(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("IPv4-mapped"),
        _ => None,
    }
}

/// Non-overlapping CIDRs, per family, ordered by start: overlap checks in O(log n).
#[derive(Default)]
struct SpanSet<'a> {
    /// IPv4 spans by start: (end, owner). Apart from IPv6, so an entry takes 24 bytes
    /// and not 64 (at 20,000 peers the set is a large share of a pass's memory).
    v4: BTreeMap<u32, (u32, &'a str)>,
    v6: BTreeMap<u128, (u128, &'a str)>,
}

/// The owner of the span in `spans` that ends at or after `lo` among those starting at
/// or before `hi`: spans in a set never overlap, so that is the only candidate.
fn owner_of<'a, T: Ord + Copy>(spans: &BTreeMap<T, (T, &'a str)>, lo: T, hi: T) -> Option<&'a str> {
    spans
        .range(..=hi)
        .next_back()
        .filter(|(_, (end, _))| *end >= lo)
        .map(|(_, (_, owner))| *owner)
}

impl<'a> SpanSet<'a> {
    /// The owner of a held CIDR overlapping `net`.
    fn overlapping(&self, net: &IpNet) -> Option<&'a str> {
        match net {
            IpNet::V4(n) => owner_of(&self.v4, u32::from(n.network()), u32::from(n.broadcast())),
            IpNet::V6(n) => owner_of(&self.v6, u128::from(n.network()), u128::from(n.broadcast())),
        }
    }

    fn insert(&mut self, net: &IpNet, owner: &'a str) {
        match net {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                self.v4.insert(lo, (hi, owner));
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                self.v6.insert(lo, (hi, owner));
            }
        }
    }
}

/// `nets` without any entry contained in another, sorted.
pub fn collapse(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.iter_mut().for_each(|n| *n = n.trunc());
    // Wider first, so a contained entry always comes after its container.
    nets.sort_by_key(|n| (n.addr().is_ipv6(), n.prefix_len(), n.network()));
    nets.dedup();
    let mut kept = SpanSet::default();
    let mut out = Vec::new();
    for n in nets {
        if kept.overlapping(&n).is_none() {
            kept.insert(&n, "");
            out.push(n);
        }
    }
    out.sort();
    out
}

/// One peer CIDR that passed the per-object rules, with what ranks it in a conflict.
struct Claim<'a> {
    name: &'a Arc<str>,
    cidr: IpNet,
    /// Not routed to this peer by the last pass (incumbents rank first).
    challenger: bool,
    since: Option<Timestamp>,
    /// The peer's first address of the CIDR's family.
    via: Option<IpAddr>,
}

/// Computes the desired state of node `own`. `previous` is what the last pass applied:
/// on a conflict the peer it routes keeps its route (then the older allocation wins,
/// then the lower name), and while this node's own NodeRoute is missing (deleted, or a
/// Node re-registered and waiting for it) its pods keep the CIDRs they have: the CNI
/// config and masquerade stay as they were.
pub fn desired_state(
    own: &str,
    noderoutes: &[impl Borrow<Peer>],
    networks: &[impl Borrow<PodNetwork>],
    previous: Option<&Desired>,
) -> Desired {
    let mut out = Desired::default();
    let pools: BTreeMap<String, Pools> = networks
        .iter()
        .map(Borrow::borrow)
        .map(|pn| (pn.name_any(), Pools::of(pn)))
        .collect();
    out.pod_pools = collapse(pools.values().flat_map(|p| p.served.clone()).collect());
    let reject = |out: &mut Desired, node: &str, cidr: Option<IpNet>, rule: Rule, detail| {
        out.rejected.push(Rejection {
            node: node.to_string(),
            cidr,
            rule,
            detail,
        });
    };

    // This node's own allocation first: peers overlapping it are refused.
    let own_nr = noderoutes
        .iter()
        .map(Borrow::borrow)
        .find(|nr| &*nr.name == own);
    let own_network = own_nr.and_then(|nr| nr.pod_network.as_deref().map(String::from));
    match own_nr {
        Some(nr) => match own_allocation(nr, &pools) {
            Ok(cidrs) => out.own_cidrs = cidrs,
            Err(why) => out.own_invalid = Some(why),
        },
        None => out.own_cidrs = previous.map(|p| p.own_cidrs.clone()).unwrap_or_default(),
    }
    let mut held = SpanSet::default();
    for c in &out.own_cidrs {
        held.insert(c, own);
    }

    // Every peer CIDR that passes the per-object rules, then conflicts in priority order.
    let mut claims: Vec<Claim> = Vec::with_capacity(noderoutes.len());
    for nr in noderoutes.iter().map(Borrow::borrow) {
        let name: &str = &nr.name;
        if name == own {
            continue;
        }
        let Some(status) = nr.status.as_ref() else {
            continue;
        };
        if status.pod_cidrs.is_empty() {
            continue;
        }
        if let Err(why) = vouched(nr) {
            reject(&mut out, name, None, Rule::NotAllocated, why);
            continue;
        }
        let Some(network) = nr.pod_network.as_deref() else {
            reject(
                &mut out,
                name,
                None,
                Rule::UnknownNetwork,
                "spec.podNetwork is empty".into(),
            );
            continue;
        };
        let Some(pool) = pools.get(network) else {
            reject(
                &mut out,
                name,
                None,
                Rule::UnknownNetwork,
                format!("PodNetwork {network} does not exist"),
            );
            continue;
        };
        let mut ips = Vec::new();
        for s in &status.node_ips {
            match s.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => reject(
                    &mut out,
                    name,
                    None,
                    Rule::Malformed,
                    format!("nodeIPs has {s:?}, not an IP address"),
                ),
            }
        }
        let since = allocated_since(nr);
        for s in &status.pod_cidrs {
            let cidr = match s.parse::<IpNet>() {
                Ok(c) if c == c.trunc() => c,
                _ => {
                    reject(
                        &mut out,
                        name,
                        None,
                        Rule::Malformed,
                        format!("podCIDRs has {s:?}, not a canonical CIDR"),
                    );
                    continue;
                }
            };
            if cidr.prefix_len() == 0 {
                reject(
                    &mut out,
                    name,
                    Some(cidr),
                    Rule::DefaultRoute,
                    "a default route is never a pod CIDR".into(),
                );
                continue;
            }
            if let Some((rule, detail)) = pool.check(network, &cidr) {
                reject(&mut out, name, Some(cidr), rule, detail);
                continue;
            }
            claims.push(Claim {
                name: &nr.name,
                cidr,
                challenger: previous.and_then(|p| p.incumbent(&cidr)) != Some(name),
                since,
                via: ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == cidr.addr().is_ipv4()),
            });
        }
    }
    // Each claim's rank is worked out once, not at each comparison.
    claims.sort_unstable_by(|a, b| {
        (a.challenger, a.since, a.name, a.cidr).cmp(&(b.challenger, b.since, b.name, b.cidr))
    });
    // In rank order (retain visits in order), each claim against those kept before it.
    claims.retain(|claim| {
        if let Some(owner) = held.overlapping(&claim.cidr) {
            let (rule, detail) = if owner == own {
                (
                    Rule::OverlapsOwnCidr,
                    format!("overlaps this node's pod CIDR ({own})"),
                )
            } else {
                (
                    Rule::OverlapsPeer,
                    format!("overlaps a CIDR node {owner} was allocated earlier"),
                )
            };
            reject(&mut out, claim.name, Some(claim.cidr), rule, detail);
            return false;
        }
        held.insert(&claim.cidr, claim.name);
        true
    });

    // Gateways: a unicast address of the CIDR's family, outside every pod CIDR.
    let mut pod_space = SpanSet::default();
    for p in &out.pod_pools {
        pod_space.insert(p, "");
    }
    out.routes.reserve_exact(claims.len());
    for Claim {
        name, cidr, via, ..
    } in claims
    {
        let Some(via) = via else {
            let fam = if cidr.addr().is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            };
            reject(
                &mut out,
                name,
                Some(cidr),
                Rule::NoNodeAddress,
                format!("no {fam} address in nodeIPs"),
            );
            continue;
        };
        if let Some(what) = unicast_problem(via) {
            reject(
                &mut out,
                name,
                Some(cidr),
                Rule::GatewayNotUnicast,
                format!("node address {via} is {what}"),
            );
            continue;
        }
        let host = IpNet::from(via);
        if pod_space.overlapping(&host).is_some() || held.overlapping(&host).is_some() {
            reject(
                &mut out,
                name,
                Some(cidr),
                Rule::GatewayInsidePodCidr,
                format!("node address {via} lies inside a pod CIDR"),
            );
            continue;
        }
        out.routes.push(PeerRoute {
            dst: cidr,
            via,
            node: Arc::clone(name),
        });
    }
    out.routes.sort();
    out.rejected.sort();

    let own_network = own_network.or_else(|| previous.and_then(|p| p.own_network.clone()));
    out.own_network = own_network.clone();
    let own_pn = own_network.and_then(|n| {
        networks
            .iter()
            .map(Borrow::borrow)
            .find(|pn| pn.name_any() == n)
    });
    out.mtu = own_pn.and_then(|pn| pn.spec.mtu).filter(|m| *m > 0);
    let masquerade_on = own_pn.is_none_or(|pn| pn.spec.masquerade.enabled);
    if masquerade_on && !out.own_cidrs.is_empty() {
        let mut exempt: Vec<IpNet> = out.pod_pools.clone();
        exempt.extend(out.own_cidrs.iter().copied());
        exempt.extend(out.routes.iter().map(|r| r.dst));
        if let Some(pn) = own_pn {
            exempt.extend(
                pn.spec
                    .masquerade
                    .non_masquerade_cidrs
                    .iter()
                    .filter_map(|c| c.parse::<IpNet>().ok()),
            );
        }
        out.masquerade = Some(MasqueradePlan {
            sources: out.own_cidrs.clone(),
            exempt: collapse(exempt),
        });
    }
    out
}

/// This node's own CIDRs, if usable: canonical, at most one per family, and (when its
/// network is known) inside that network's served CIDRs with its node mask. An unusable
/// allocation is never written into the CNI config.
fn own_allocation(nr: &Peer, pools: &BTreeMap<String, Pools>) -> Result<Vec<IpNet>, String> {
    let Some(status) = nr.status.as_ref() else {
        return Ok(Vec::new());
    };
    let mut cidrs: Vec<IpNet> = Vec::new();
    let network = nr.pod_network.as_deref();
    for s in &status.pod_cidrs {
        let cidr = match s.parse::<IpNet>() {
            Ok(c) if c == c.trunc() && c.prefix_len() > 0 => c,
            _ => return Err(format!("podCIDRs has {s:?}, not a canonical pod CIDR")),
        };
        if cidrs
            .iter()
            .any(|c| c.addr().is_ipv4() == cidr.addr().is_ipv4())
        {
            return Err(format!("podCIDRs has two CIDRs of the family of {cidr}"));
        }
        if let Some((rule, detail)) = network
            .and_then(|n| pools.get(n).map(|p| (n, p)))
            .and_then(|(n, p)| p.check(n, &cidr))
        {
            return Err(format!("{cidr}: {rule} ({detail})"));
        }
        cidrs.push(cidr);
    }
    cidrs.sort_by_key(|n| (n.addr().is_ipv6(), *n));
    Ok(cidrs)
}

/// The set of rejection keys (peer, CIDR, rule) of a state, to tell new ones apart.
pub fn rejection_keys(rejected: &[Rejection]) -> BTreeSet<(String, Option<IpNet>, Rule)> {
    rejected
        .iter()
        .map(|r| (r.node.clone(), r.cidr, r.rule))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use podnet_crds::{
        Masquerade, NodeRoute, NodeRouteSpec, NodeRouteStatus, PodNetworkSpec, condition_type,
    };

    use super::*;

    fn cond(status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: condition_type::ALLOCATED.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::from_second(at).unwrap_or_default()),
        }
    }

    pub(crate) fn nr_at(name: &str, ips: &[&str], cidrs: &[&str], allocated_at: i64) -> NodeRoute {
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
            conditions: vec![cond("True", "Allocated", allocated_at)],
            ..Default::default()
        });
        n
    }

    /// [`desired_state`] of NodeRoutes as the daemon's cache records them.
    fn desired(
        own: &str,
        nrs: &[NodeRoute],
        networks: &[PodNetwork],
        previous: Option<&Desired>,
    ) -> Desired {
        let peers: Vec<Peer> = nrs.iter().cloned().map(Peer::from).collect();
        desired_state(own, &peers, networks, previous)
    }

    pub(crate) fn nr(name: &str, ips: &[&str], cidrs: &[&str]) -> NodeRoute {
        nr_at(name, ips, cidrs, 1_000)
    }

    pub(crate) fn pn(cidrs: &[&str], nonmasq: &[&str], enabled: bool) -> PodNetwork {
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

    fn default_pn() -> Vec<PodNetwork> {
        vec![pn(
            &["10.244.0.0/16", "fd00::/48"],
            &["198.18.0.0/15"],
            true,
        )]
    }

    fn routes(d: &Desired) -> Vec<String> {
        d.routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.via))
            .collect()
    }

    fn rules(d: &Desired) -> Vec<String> {
        d.rejected
            .iter()
            .map(|r| format!("{} {}", r.node, r.rule))
            .collect()
    }

    #[test]
    fn routes_to_peers_by_family_and_masquerade_plan() {
        let nrs = vec![
            nr(
                "a",
                &["198.18.0.1", "2001:db8::1"],
                &["10.244.1.0/24", "fd00:0:0:1::/64"],
            ),
            nr(
                "b",
                &["198.18.0.2", "2001:db8::2"],
                &["10.244.2.0/24", "fd00:0:0:2::/64"],
            ),
            nr("c", &["198.18.0.3"], &["10.244.3.0/24", "fd00:0:0:3::/64"]),
            nr("d", &["not-an-ip"], &["10.244.4.0/24"]),
        ];
        let d = desired("a", &nrs, &default_pn(), None);
        assert_eq!(
            routes(&d),
            [
                "10.244.2.0/24 via 198.18.0.2",
                "10.244.3.0/24 via 198.18.0.3",
                "fd00:0:0:2::/64 via 2001:db8::2"
            ]
        );
        assert_eq!(
            rules(&d),
            ["c NoNodeAddress", "d Malformed", "d NoNodeAddress"]
        );
        assert_eq!(d.own_cidrs.len(), 2);
        assert_eq!(d.mtu, Some(1450));
        let m = d.masquerade.clone().unwrap_or_default();
        assert_eq!(m.sources, d.own_cidrs);
        let exempt: Vec<String> = m.exempt.iter().map(ToString::to_string).collect();
        assert_eq!(exempt, ["10.244.0.0/16", "198.18.0.0/15", "fd00::/48"]);
        let off = desired("a", &nrs, &[pn(&["10.244.0.0/16"], &[], false)], None);
        assert!(off.masquerade.is_none());
        assert!(
            desired("zz", &nrs, &default_pn(), None)
                .masquerade
                .is_none(),
            "nothing allocated, nothing masqueraded"
        );
    }

    #[test]
    fn forged_statuses_are_refused_one_rule_each() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["198.18.0.9"], &["0.0.0.0/0"], "DefaultRoute"),
            (&["198.18.0.9"], &["198.18.0.0/24"], "OutsidePool"),
            (&["198.18.0.9"], &["10.244.0.0/16"], "WrongMask"),
            (&["198.18.0.9"], &["10.244.1.0/24"], "OverlapsOwnCIDR"),
            (&["198.18.0.9"], &["10.244.2.0/24"], "OverlapsPeer"),
            (&["198.18.0.9"], &["10.244.2.0/25"], "WrongMask"),
            (&["0.0.0.0"], &["10.244.9.0/24"], "GatewayNotUnicast"),
            (&["127.0.0.1"], &["10.244.9.0/24"], "GatewayNotUnicast"),
            (&["224.0.0.1"], &["10.244.9.0/24"], "GatewayNotUnicast"),
            (
                &["255.255.255.255"],
                &["10.244.9.0/24"],
                "GatewayNotUnicast",
            ),
            (&["169.254.0.1"], &["10.244.9.0/24"], "GatewayNotUnicast"),
            (&["10.244.7.1"], &["10.244.9.0/24"], "GatewayInsidePodCIDR"),
            (&["fe80::1"], &["fd00:0:0:9::/64"], "GatewayNotUnicast"),
            (&["198.18.0.9"], &["10.244.9.7/24"], "Malformed"),
        ];
        for (ips, cidrs, rule) in cases {
            let nrs = vec![
                nr_at("a", &["198.18.0.1"], &["10.244.1.0/24"], 100),
                nr_at("b", &["198.18.0.2"], &["10.244.2.0/24"], 100),
                nr_at("evil", ips, cidrs, 500),
            ];
            let d = desired("a", &nrs, &default_pn(), None);
            assert_eq!(
                rules(&d),
                [format!("evil {rule}")],
                "{ips:?} {cidrs:?}: {:?}",
                d.rejected
            );
            assert_eq!(
                routes(&d),
                ["10.244.2.0/24 via 198.18.0.2"],
                "the other peer still routes"
            );
            assert_eq!(
                d.own_cidrs,
                ["10.244.1.0/24".parse::<IpNet>().unwrap_or_default()]
            );
        }
    }

    #[test]
    fn the_older_allocation_wins_a_conflict_and_the_incumbent_keeps_its_route() {
        // "aaa" sorts first but was allocated later: "zzz" keeps the CIDR.
        let nrs = vec![
            nr_at("me", &["198.18.0.1"], &["10.244.1.0/24"], 1),
            nr_at("aaa", &["198.18.0.2"], &["10.244.5.0/24"], 200),
            nr_at("zzz", &["198.18.0.3"], &["10.244.5.0/24"], 100),
        ];
        let d = desired("me", &nrs, &default_pn(), None);
        assert_eq!(routes(&d), ["10.244.5.0/24 via 198.18.0.3"]);
        assert_eq!(rules(&d), ["aaa OverlapsPeer"]);
        // Already routed to "aaa": it stays there; no flapping on a fresh conflict.
        let previous = Desired {
            routes: vec![PeerRoute {
                dst: "10.244.5.0/24".parse().unwrap_or_default(),
                via: "198.18.0.2".parse().unwrap_or(IpAddr::from([0; 4])),
                node: "aaa".into(),
            }],
            ..Default::default()
        };
        let d = desired("me", &nrs, &default_pn(), Some(&previous));
        assert_eq!(routes(&d), ["10.244.5.0/24 via 198.18.0.2"]);
        assert_eq!(rules(&d), ["zzz OverlapsPeer"]);
    }

    #[test]
    fn unvouched_peers_are_refused_but_exhausted_and_fenced_ones_keep_their_routes() {
        let mut not_allocated = nr("x", &["198.18.0.2"], &["10.244.2.0/24"]);
        let mut exhausted = nr("y", &["198.18.0.3"], &["10.244.3.0/24"]);
        let mut fenced = nr("z", &["198.18.0.4"], &["10.244.4.0/24"]);
        let mut bare = nr("w", &["198.18.0.5"], &["10.244.6.0/24"]);
        for (n, c) in [
            (&mut not_allocated, cond("False", "InvalidAllocation", 1)),
            (&mut exhausted, cond("False", "PoolExhausted", 1)),
            (&mut fenced, cond("Unknown", "Pending", 1)),
        ] {
            if let Some(s) = n.status.as_mut() {
                s.conditions = vec![c];
            }
        }
        if let Some(s) = bare.status.as_mut() {
            s.conditions.clear();
        }
        let nrs = vec![
            nr("me", &["198.18.0.1"], &["10.244.1.0/24"]),
            not_allocated,
            exhausted,
            fenced,
            bare,
        ];
        let d = desired("me", &nrs, &default_pn(), None);
        assert_eq!(
            routes(&d),
            [
                "10.244.3.0/24 via 198.18.0.3",
                "10.244.4.0/24 via 198.18.0.4"
            ]
        );
        assert_eq!(rules(&d), ["w NotAllocated", "x NotAllocated"]);
    }

    #[test]
    fn draining_cidrs_are_routed_and_never_masqueraded() {
        let mut net = pn(&["10.245.0.0/16"], &[], true);
        net.status = Some(podnet_crds::PodNetworkStatus {
            served_cidrs: vec!["10.244.0.0/16".into(), "10.245.0.0/16".into()],
            ..Default::default()
        });
        let nrs = vec![
            nr("me", &["198.18.0.1"], &["10.245.1.0/24"]),
            nr("old", &["198.18.0.2"], &["10.244.2.0/24"]),
        ];
        let d = desired("me", &nrs, &[net], None);
        assert_eq!(routes(&d), ["10.244.2.0/24 via 198.18.0.2"]);
        let exempt: Vec<String> = d
            .masquerade
            .unwrap_or_default()
            .exempt
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(exempt, ["10.244.0.0/16", "10.245.0.0/16"]);
    }

    #[test]
    fn a_node_whose_noderoute_is_gone_keeps_its_own_cidrs() {
        let nrs = vec![
            nr("me", &["198.18.0.1"], &["10.244.1.0/24"]),
            nr("b", &["198.18.0.2"], &["10.244.2.0/24"]),
        ];
        let before = desired("me", &nrs, &default_pn(), None);
        let gone = desired("me", &nrs[1..], &default_pn(), Some(&before));
        assert_eq!(gone.own_cidrs, before.own_cidrs);
        assert_eq!(gone.masquerade, before.masquerade);
        assert_eq!(gone.mtu, before.mtu);
        assert_eq!(routes(&gone), ["10.244.2.0/24 via 198.18.0.2"]);
        assert!(
            desired("me", &nrs[1..], &default_pn(), None)
                .own_cidrs
                .is_empty()
        );
    }

    #[test]
    fn an_unusable_own_allocation_is_reported_not_used() {
        let nrs = vec![nr("me", &["198.18.0.1"], &["198.18.0.0/24"])];
        let d = desired("me", &nrs, &default_pn(), None);
        assert!(d.own_cidrs.is_empty());
        assert!(
            d.own_invalid
                .as_deref()
                .is_some_and(|w| w.contains("OutsidePool")),
            "{:?}",
            d.own_invalid
        );
        assert!(d.masquerade.is_none());
    }

    #[test]
    fn collapse_keeps_only_outermost() {
        let nets: Vec<IpNet> = [
            "10.244.1.0/24",
            "10.244.0.0/16",
            "10.0.0.0/8",
            "fd00::/48",
            "fd00:0:0:1::/64",
            "192.0.2.0/24",
        ]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
        let c: Vec<String> = collapse(nets).iter().map(ToString::to_string).collect();
        assert_eq!(c, ["10.0.0.0/8", "192.0.2.0/24", "fd00::/48"]);
    }
}
