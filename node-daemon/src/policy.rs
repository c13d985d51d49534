//! NetworkPolicy (networking.k8s.io/v1) compiled for one node (pure): from the
//! cluster's pods, namespaces and policies to the [`PolicyPlan`] the node's firewall
//! enforces for the pods on this node.
//!
//! What the API says, and how it maps:
//! * a pod is isolated for ingress (egress) when a policy in its namespace selects it
//!   with `Ingress` (`Egress`) among its policy types — `policyTypes` left out means
//!   `Ingress`, plus `Egress` when the policy has egress rules; an isolated pod gets
//!   what the union of those policies' rules allows, and nothing else;
//! * a rule allows traffic matching one of its peers (none listed: any) and one of its
//!   ports (none listed: any); peers are pods picked by `podSelector` (in the policy's
//!   namespace), by `namespaceSelector` (every pod of those namespaces), or by both,
//!   or `ipBlock` CIDRs minus `except`; ports are a protocol (TCP by default, UDP,
//!   SCTP), a number or a range (`endPort`), or a name resolved against the pod's
//!   container ports — the destination pod's: this pod for ingress, the peer pods for
//!   egress (so a named egress port matches pods only, never an `ipBlock`);
//! * replies are always allowed (conntrack), and so is traffic between a pod and its
//!   own node.
//!
//! A part of a policy that cannot be enforced (an unparsable CIDR, an `except` outside
//! its CIDR, a port out of range, an unknown protocol) allows nothing, and is reported
//! as a [`Problem`]: the result only ever errs on the side of dropping.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podnet_firewall::hostports::Protocol;
use podnet_firewall::policy::{
    Action, AddrSet, Peer, PodChains, PolicyPlan, Ports, Rule, TierRule, Tiers,
};

use crate::cluster_policy::{self as cnp, ClusterNetworkPolicy};

/// What the compiler needs of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Named container ports: (name, protocol, number).
    pub named_ports: Vec<(String, Protocol, u16)>,
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The pod as the compiler sees it; `None` for a pod that takes part in no policy:
/// host-network, finished, or without addresses yet.
pub fn pod_view(p: &Pod) -> Option<PodView> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let mut named_ports = Vec::new();
    for c in &spec.containers {
        for port in c.ports.iter().flatten() {
            if let (Some(name), Some(proto), Ok(n)) = (
                &port.name,
                protocol(port.protocol.as_deref()),
                u16::try_from(port.container_port),
            ) {
                named_ports.push((name.clone(), proto, n));
            }
        }
    }
    Some(PodView {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        node: spec.node_name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        named_ports,
    })
}

/// Keeps only what the compiler reads of a Pod (the daemon's cache holds every pod of
/// the cluster).
pub fn strip_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = None;
        spec.init_containers = None;
        spec.ephemeral_containers = None;
        spec.tolerations = None;
        spec.affinity = None;
        for c in &mut spec.containers {
            c.env = None;
            c.env_from = None;
            c.volume_mounts = None;
            c.args = None;
            c.command = None;
            c.resources = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
            c.security_context = None;
        }
    }
    if let Some(status) = p.status.as_mut() {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// Keeps only a Namespace's name and labels.
pub fn strip_namespace(n: &mut Namespace) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.spec = None;
    n.status = None;
}

/// Whether `sel` selects `labels` (an empty selector selects everything; an operator
/// the API does not define selects nothing).
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
}

/// A policy part that is not enforced as written, for an event: a NetworkPolicy part
/// allows nothing; a ClusterNetworkPolicy rule fails closed (an `Accept` matches
/// nothing, a `Deny` or `Pass` denies everything), as the API asks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Whether it is a ClusterNetworkPolicy's (else a NetworkPolicy's).
    pub cluster: bool,
    /// The policy's namespace (empty for a ClusterNetworkPolicy).
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// What is wrong.
    pub why: String,
}

/// The compiled plan, the problems found, and counts for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// What the firewall enforces.
    pub plan: PolicyPlan,
    /// Parts not enforced.
    pub problems: Vec<Problem>,
    /// Policies selecting at least one pod of this node.
    pub policies: usize,
}

fn hash16(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Removes networks covered by another (nftables refuses overlapping intervals).
fn collapse(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort_by_key(|n| (n.prefix_len(), n.addr()));
    let mut out: Vec<IpNet> = Vec::new();
    for n in nets {
        if !out.iter().any(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out.sort();
    out
}

struct Ctx<'a> {
    pods: &'a [PodView],
    namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    sets: BTreeMap<String, AddrSet>,
    problems: BTreeSet<Problem>,
    /// Selector peers already resolved in this compile, by definition key: many
    /// policies (and every pod they select) share a peer, which is then looked up once
    /// and its sets are shared.
    peers: BTreeMap<String, (Peer, Vec<IpAddr>)>,
}

/// The key of a peer's sets: a hash of what defines its members, not of the policy or
/// rule it appears in — identical peers share one set per family (a cluster with 500
/// policies over a few dozen distinct peers gets a few dozen sets, not a thousand),
/// and a peer's set keeps its name while pods come and go.
fn peer_key(kind: &str, definition: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(definition).unwrap_or_default();
    hash16(&[kind, &text])
}

impl<'a> Ctx<'a> {
    fn problem(&mut self, np: &NetworkPolicy, why: String) {
        self.problems.insert(Problem {
            cluster: false,
            namespace: np.metadata.namespace.clone().unwrap_or_default(),
            name: np.metadata.name.clone().unwrap_or_default(),
            why: format!("{why} (this part allows nothing)"),
        });
    }

    fn cluster_problem(&mut self, name: &str, why: String) {
        self.problems.insert(Problem {
            cluster: true,
            namespace: String::new(),
            name: name.to_string(),
            why,
        });
    }

    /// The pods of the namespaces `ns_sel` selects whose labels `pod_sel` selects.
    fn selected_pods(
        &self,
        ns_sel: &LabelSelector,
        pod_sel: Option<&LabelSelector>,
    ) -> Vec<&'a PodView> {
        let pods: &'a [PodView] = self.pods;
        pods.iter()
            .filter(|p| {
                self.namespaces
                    .get(&p.namespace)
                    .is_some_and(|labels| selects(ns_sel, labels))
                    && pod_sel.is_none_or(|sel| selects(sel, &p.labels))
            })
            .collect()
    }

    /// Pods as a peer: their addresses in one set per family (both declared, so pods
    /// coming and going only change elements), and the addresses.
    fn pods_peer(&mut self, key: &str, pods: &[&PodView]) -> (Peer, Vec<IpAddr>) {
        let ips: Vec<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        let mut fam = |v6: bool| {
            let nets = ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| IpNet::from(*ip))
                .collect();
            self.nets_set(format!("s-{key}-{}", if v6 { 6 } else { 4 }), v6, nets)
        };
        let (v4, v6) = (fam(false), fam(true));
        (
            Peer::Sets {
                v4: Some(v4),
                v6: Some(v6),
                except4: None,
                except6: None,
            },
            ips,
        )
    }

    /// Named ports of the pods with addresses `ips`, as (address, protocol, port) sets
    /// (a name with protocol `None` matches that name in any protocol).
    fn named_ports(
        &mut self,
        key: &str,
        ips: &[IpAddr],
        named: &[(String, Option<Protocol>)],
    ) -> Ports {
        let mut entries4 = Vec::new();
        let mut entries6 = Vec::new();
        for p in self
            .pods
            .iter()
            .filter(|p| p.ips.iter().any(|ip| ips.contains(ip)))
        {
            for (pname, proto) in named {
                for (n, pr, port) in &p.named_ports {
                    if n == pname && proto.is_none_or(|want| want == *pr) {
                        for ip in &p.ips {
                            let e = (*ip, *pr, *port);
                            if ip.is_ipv6() {
                                entries6.push(e)
                            } else {
                                entries4.push(e)
                            }
                        }
                    }
                }
            }
        }
        // The entries depend on the peer (its key) and on the names asked for.
        let key = hash16(&[key, &format!("{named:?}")]);
        let (n4, n6) = (format!("n-{key}-4"), format!("n-{key}-6"));
        for (name, v6, mut entries) in [(&n4, false, entries4), (&n6, true, entries6)] {
            entries.sort();
            entries.dedup();
            self.sets
                .insert(name.clone(), AddrSet::Ports { v6, entries });
        }
        Ports::Named {
            v4: Some(n4),
            v6: Some(n6),
        }
    }

    /// The pods a selector peer picks.
    fn peer_pods(&self, np_ns: &str, peer: &NetworkPolicyPeer) -> Vec<&'a PodView> {
        let pods: &'a [PodView] = self.pods;
        pods.iter()
            .filter(|p| match &peer.namespace_selector {
                Some(ns_sel) => self
                    .namespaces
                    .get(&p.namespace)
                    .is_some_and(|labels| selects(ns_sel, labels)),
                None => p.namespace == np_ns,
            })
            .filter(|p| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selects(sel, &p.labels))
            })
            .collect()
    }

    fn nets_set(&mut self, name: String, v6: bool, nets: Vec<IpNet>) -> String {
        self.sets.insert(
            name.clone(),
            AddrSet::Nets {
                v6,
                nets: collapse(nets),
            },
        );
        name
    }

    /// A peer as sets (both families declared for selector peers, so pods coming and
    /// going only change elements), its pod addresses and its key. `None`: the peer is
    /// broken and matches nothing.
    fn peer(
        &mut self,
        np: &NetworkPolicy,
        peer: &NetworkPolicyPeer,
    ) -> Option<(Peer, Vec<IpAddr>, String)> {
        let np_ns = np.metadata.namespace.clone().unwrap_or_default();
        if let Some(block) = &peer.ip_block {
            let Ok(cidr) = block.cidr.parse::<IpNet>() else {
                self.problem(np, format!("ipBlock {:?} is not a CIDR", block.cidr));
                return None;
            };
            let cidr = cidr.trunc();
            let mut except = Vec::new();
            for e in block.except.iter().flatten() {
                match e.parse::<IpNet>() {
                    Ok(e) if cidr.contains(&e.trunc()) => except.push(e.trunc()),
                    _ => {
                        self.problem(
                            np,
                            format!("ipBlock except {e:?} is not a CIDR inside {cidr}"),
                        );
                        return None;
                    }
                }
            }
            except.sort();
            except.dedup();
            let key = peer_key("block", &(cidr.to_string(), &except));
            let v6 = cidr.addr().is_ipv6();
            let set = self.nets_set(
                format!("s-{key}-{}", if v6 { 6 } else { 4 }),
                v6,
                vec![cidr],
            );
            let exc = (!except.is_empty())
                .then(|| self.nets_set(format!("x-{key}-{}", if v6 { 6 } else { 4 }), v6, except));
            let (v4, v6s, except4, except6) = if v6 {
                (None, Some(set), None, exc)
            } else {
                (Some(set), None, exc, None)
            };
            return Some((
                Peer::Sets {
                    v4,
                    v6: v6s,
                    except4,
                    except6,
                },
                Vec::new(),
                key,
            ));
        }
        // Without a namespace selector the peer's pods are those of the policy's own
        // namespace: part of the definition.
        let scope = match &peer.namespace_selector {
            Some(sel) => serde_json::to_string(sel).unwrap_or_default(),
            None => format!("namespace {np_ns}"),
        };
        let key = peer_key("pods", &(scope, &peer.pod_selector));
        if let Some((p, ips)) = self.peers.get(&key) {
            return Some((p.clone(), ips.clone(), key));
        }
        let pods = self.peer_pods(&np_ns, peer);
        let (p, ips) = self.pods_peer(&key, &pods);
        self.peers.insert(key.clone(), (p.clone(), ips.clone()));
        Some((p, ips, key))
    }
}

/// One rule per distinct (peer, ports) of a pod's NetworkPolicy rules: they only
/// allow, so a repeat adds nothing but a rule every new connection walks past (ten
/// policies with the same peer would be ten rules). The kept rule's comment names the
/// first policy rule and how many others it stands for.
fn merge_rules(rules: Vec<Rule>) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut repeats: Vec<usize> = Vec::new();
    for r in rules {
        match out
            .iter()
            .position(|o| o.peer == r.peer && o.ports == r.ports)
        {
            Some(i) => repeats[i] += 1,
            None => {
                out.push(r);
                repeats.push(0);
            }
        }
    }
    for (r, n) in out.iter_mut().zip(repeats) {
        if n > 0 {
            r.comment = format!("{} (+{n} more)", r.comment);
        }
    }
    out
}

/// Numbered ports, and named ones (name, protocol) apart.
type SplitPorts = (Vec<(Protocol, Option<(u16, u16)>)>, Vec<(String, Protocol)>);

fn split_ports(ctx: &mut Ctx<'_>, np: &NetworkPolicy, ports: &[NetworkPolicyPort]) -> SplitPorts {
    let mut numbered = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            ctx.problem(
                np,
                format!("protocol {:?} is not TCP, UDP or SCTP", p.protocol),
            );
            continue;
        };
        match &p.port {
            None => numbered.push((proto, None)),
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                match (u16::try_from(*n), u16::try_from(end)) {
                    (Ok(lo), Ok(hi)) if lo > 0 && hi >= lo => {
                        numbered.push((proto, Some((lo, hi))))
                    }
                    _ => ctx.problem(
                        np,
                        format!("port {n} (endPort {end}) is not a valid port range"),
                    ),
                }
            }
            Some(IntOrString::String(name)) => {
                if p.end_port.is_some() {
                    ctx.problem(np, format!("endPort with the named port {name:?}"));
                } else {
                    named.push((name.clone(), proto));
                }
            }
        }
    }
    (numbered, named)
}

/// Compiles every policy for the pods of `node`.
pub fn compile(
    node: &str,
    local_cidrs: &[IpNet],
    pods: &[PodView],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    policies: &[NetworkPolicy],
    cluster: &[ClusterNetworkPolicy],
) -> Compiled {
    let mut ctx = Ctx {
        pods,
        namespaces,
        sets: BTreeMap::new(),
        problems: BTreeSet::new(),
        peers: BTreeMap::new(),
    };
    let local: Vec<&PodView> = pods.iter().filter(|p| p.node == node).collect();
    let mut plan = PolicyPlan {
        local_cidrs: local_cidrs.to_vec(),
        known: local.iter().flat_map(|p| p.ips.iter().copied()).collect(),
        ..Default::default()
    };
    plan.known.sort();
    plan.known.dedup();
    let mut selecting = BTreeSet::new();
    let mut sorted: Vec<&NetworkPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    let (mut tiers, cluster_selecting) = cluster_tiers(&mut ctx, &local, cluster);
    for (idx, pod) in local.into_iter().enumerate() {
        let mut ingress: Option<Vec<Rule>> = None;
        let mut egress: Option<Vec<Rule>> = None;
        for np in &sorted {
            let ns = np.metadata.namespace.clone().unwrap_or_default();
            let name = np.metadata.name.clone().unwrap_or_default();
            let Some(spec) = &np.spec else { continue };
            if ns != pod.namespace
                || !selects(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels)
            {
                continue;
            }
            selecting.insert((ns.clone(), name.clone()));
            let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
                let mut t = vec!["Ingress".to_string()];
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push("Egress".into());
                }
                t
            });
            if types.iter().any(|t| t == "Ingress") {
                let rules = ingress.get_or_insert_with(Vec::new);
                for (i, r) in spec.ingress.iter().flatten().enumerate() {
                    let comment = format!("{ns}/{name} ingress[{i}]");
                    let (numbered, named) =
                        split_ports(&mut ctx, np, r.ports.as_deref().unwrap_or_default());
                    // Named ports are this pod's own.
                    let mut ports = numbered;
                    for (pname, proto) in &named {
                        if let Some((_, _, n)) = pod
                            .named_ports
                            .iter()
                            .find(|(n, p, _)| n == pname && p == proto)
                        {
                            ports.push((*proto, Some((*n, *n))));
                        }
                    }
                    let had_ports = r.ports.as_ref().is_some_and(|p| !p.is_empty());
                    if had_ports && ports.is_empty() {
                        continue; // every port unresolvable or invalid: allows nothing
                    }
                    let ports = if had_ports {
                        Ports::List(ports)
                    } else {
                        Ports::Any
                    };
                    let peers: Vec<&NetworkPolicyPeer> = r.from.iter().flatten().collect();
                    if r.from.as_ref().is_none_or(Vec::is_empty) {
                        rules.push(Rule {
                            comment: comment.clone(),
                            peer: Peer::Any,
                            ports: ports.clone(),
                        });
                    }
                    for peer in peers {
                        if let Some((p, _, _)) = ctx.peer(np, peer) {
                            rules.push(Rule {
                                comment: comment.clone(),
                                peer: p,
                                ports: ports.clone(),
                            });
                        }
                    }
                }
            }
            if types.iter().any(|t| t == "Egress") {
                let rules = egress.get_or_insert_with(Vec::new);
                for (i, r) in spec.egress.iter().flatten().enumerate() {
                    let comment = format!("{ns}/{name} egress[{i}]");
                    let (numbered, named) =
                        split_ports(&mut ctx, np, r.ports.as_deref().unwrap_or_default());
                    let had_ports = r.ports.as_ref().is_some_and(|p| !p.is_empty());
                    let any_peer = r.to.as_ref().is_none_or(Vec::is_empty);
                    let mut targets: Vec<(Peer, Vec<IpAddr>, Option<String>)> = Vec::new();
                    if any_peer {
                        targets.push((
                            Peer::Any,
                            pods.iter().flat_map(|p| p.ips.iter().copied()).collect(),
                            None,
                        ));
                    }
                    for peer in r.to.iter().flatten() {
                        if let Some((p, ips, key)) = ctx.peer(np, peer) {
                            let is_block = peer.ip_block.is_some();
                            targets.push((p, if is_block { Vec::new() } else { ips }, Some(key)));
                        }
                    }
                    for (peer, ips, key) in targets {
                        if !had_ports || !numbered.is_empty() {
                            let ports = if had_ports {
                                Ports::List(numbered.clone())
                            } else {
                                Ports::Any
                            };
                            rules.push(Rule {
                                comment: comment.clone(),
                                peer: peer.clone(),
                                ports,
                            });
                        }
                        if named.is_empty() || ips.is_empty() && !matches!(peer, Peer::Any) {
                            continue;
                        }
                        // Named ports of the peer pods: (address, protocol, port) sets.
                        // Any peer: every pod of the cluster, the same for every policy.
                        let key = key.unwrap_or_else(|| hash16(&["any"]));
                        let named: Vec<(String, Option<Protocol>)> =
                            named.iter().map(|(n, p)| (n.clone(), Some(*p))).collect();
                        let ports = ctx.named_ports(&key, &ips, &named);
                        rules.push(Rule {
                            comment: comment.clone(),
                            peer: Peer::Any,
                            ports,
                        });
                    }
                }
            }
        }
        let (cluster_ingress, cluster_egress) = std::mem::take(&mut tiers[idx]);
        let (ingress, egress) = (ingress.map(merge_rules), egress.map(merge_rules));
        if ingress.is_some()
            || egress.is_some()
            || !cluster_ingress.is_empty()
            || !cluster_egress.is_empty()
        {
            plan.pods.push(PodChains {
                key: hash16(&[&pod.namespace, &pod.name]),
                name: format!("{}/{}", pod.namespace, pod.name),
                ips: pod.ips.clone(),
                ingress,
                egress,
                cluster_ingress,
                cluster_egress,
            });
        }
    }
    plan.pods.sort_by(|a, b| a.key.cmp(&b.key));
    plan.sets = ctx.sets;
    Compiled {
        plan,
        problems: ctx.problems.into_iter().collect(),
        policies: selecting.len() + cluster_selecting,
    }
}

/// Numbered protocol ports and named ports of a ClusterNetworkPolicy rule; `None`: an
/// entry podnet cannot read (unknown field, invalid port) — the rule fails closed.
type ClusterPorts = (
    Vec<(Protocol, Option<(u16, u16)>)>,
    Vec<(String, Option<Protocol>)>,
);

fn cluster_ports(protocols: &[cnp::Protocol]) -> Result<ClusterPorts, String> {
    let mut numbered = Vec::new();
    let mut named = Vec::new();
    for p in protocols {
        let by_proto = [
            (Protocol::Tcp, &p.tcp),
            (Protocol::Udp, &p.udp),
            (Protocol::Sctp, &p.sctp),
        ];
        let set = by_proto.iter().filter(|(_, v)| v.is_some()).count()
            + usize::from(p.destination_named_port.is_some());
        if set != 1 {
            return Err(format!(
                "a protocols entry sets {set} of tcp, udp, sctp and destinationNamedPort (exactly one is required)"
            ));
        }
        if let Some(name) = &p.destination_named_port {
            named.push((name.clone(), None));
        }
        for (proto, v) in by_proto {
            let Some(v) = v else { continue };
            let range = match &v.destination_port {
                None => None,
                Some(cnp::Port {
                    number: Some(n),
                    range: None,
                }) => Some((*n, *n)),
                Some(cnp::Port {
                    number: None,
                    range: Some(r),
                }) => Some((r.start, r.end)),
                Some(other) => {
                    return Err(format!(
                        "destinationPort {other:?} sets not exactly one of number and range"
                    ));
                }
            };
            match range {
                None => numbered.push((proto, None)),
                Some((lo, hi)) => match (u16::try_from(lo), u16::try_from(hi)) {
                    (Ok(lo), Ok(hi)) if lo > 0 && hi >= lo => {
                        numbered.push((proto, Some((lo, hi))))
                    }
                    _ => return Err(format!("port {lo}-{hi} is not a valid port range")),
                },
            }
        }
    }
    Ok((numbered, named))
}

/// Whether a ClusterNetworkPolicy subject selects `pod` (`None`: the subject sets
/// neither or both of its fields, and selects nothing).
fn subject_selects(ctx: &Ctx<'_>, subject: &cnp::Subject, pod: &PodView) -> Option<bool> {
    let ns_labels = ctx.namespaces.get(&pod.namespace);
    match (&subject.namespaces, &subject.pods) {
        (Some(ns), None) => Some(ns_labels.is_some_and(|l| selects(ns, l))),
        (None, Some(p)) => Some(
            ns_labels.is_some_and(|l| selects(&p.namespace_selector, l))
                && selects(&p.pod_selector, &pod.labels),
        ),
        _ => None,
    }
}

/// A ClusterNetworkPolicy peer as sets, with the pod addresses it stands for (none for
/// networks). `Err`: a peer podnet does not enforce, or an invalid one.
fn cluster_peer(
    ctx: &mut Ctx<'_>,
    key: &str,
    peer: &cnp::Peer,
) -> Result<(Peer, Vec<IpAddr>), String> {
    let set = usize::from(peer.namespaces.is_some())
        + usize::from(peer.pods.is_some())
        + usize::from(peer.networks.is_some())
        + usize::from(peer.nodes.is_some())
        + usize::from(peer.domain_names.is_some());
    if set != 1 {
        return Err(format!(
            "a peer sets {set} fields (exactly one is required; is the CRD newer than podnet?)"
        ));
    }
    if let Some(ns) = &peer.namespaces {
        let pods = ctx.selected_pods(ns, None);
        return Ok(ctx.pods_peer(key, &pods));
    }
    if let Some(p) = &peer.pods {
        let pods = ctx.selected_pods(&p.namespace_selector, Some(&p.pod_selector));
        return Ok(ctx.pods_peer(key, &pods));
    }
    if let Some(networks) = &peer.networks {
        let mut nets = (Vec::new(), Vec::new());
        for n in networks {
            match n.parse::<IpNet>() {
                Ok(net) if net.trunc() == net => {
                    if net.addr().is_ipv6() {
                        nets.1.push(net)
                    } else {
                        nets.0.push(net)
                    }
                }
                _ => return Err(format!("network {n:?} is not a CIDR in canonical form")),
            }
        }
        let mut set = |v6: bool, list: Vec<IpNet>| {
            (!list.is_empty())
                .then(|| ctx.nets_set(format!("s-{key}-{}", if v6 { 6 } else { 4 }), v6, list))
        };
        let (v4, v6) = (set(false, nets.0), set(true, nets.1));
        return Ok((
            Peer::Sets {
                v4,
                v6,
                except4: None,
                except6: None,
            },
            Vec::new(),
        ));
    }
    Err(if peer.nodes.is_some() {
        "a nodes peer (upstream's experimental channel) is not enforced by podnet".to_string()
    } else {
        "a domainNames peer (upstream's experimental channel) is not enforced by podnet".to_string()
    })
}

/// A pod's rule list for one direction (ingress: the pair's first) and tier.
fn tier_of(pod: &mut (Tiers, Tiers), ingress: bool, admin: bool) -> &mut Vec<TierRule> {
    let t = if ingress { &mut pod.0 } else { &mut pod.1 };
    if admin { &mut t.admin } else { &mut t.baseline }
}

/// The cluster-admin tiers (ClusterNetworkPolicy) of each pod of `local`, in the
/// order the API evaluates them: by priority (then name: same-priority order is left
/// to the implementation), then rule order. Also returns how many policies select a
/// pod of this node. A rule podnet cannot read fails closed as the API asks: an
/// `Accept` matches nothing, a `Deny` or `Pass` becomes "deny all".
fn cluster_tiers(
    ctx: &mut Ctx<'_>,
    local: &[&PodView],
    cluster: &[ClusterNetworkPolicy],
) -> (Vec<(Tiers, Tiers)>, usize) {
    let mut out = vec![(Tiers::default(), Tiers::default()); local.len()];
    let mut sorted: Vec<&ClusterNetworkPolicy> = cluster.iter().collect();
    sorted.sort_by_key(|c| (c.spec.priority, c.metadata.name.clone()));
    let mut selecting = 0;
    for policy in sorted {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let spec = &policy.spec;
        let admin = match spec.tier.as_str() {
            "Admin" => true,
            "Baseline" => false,
            t => {
                ctx.cluster_problem(
                    &name,
                    format!("tier {t:?} is neither Admin nor Baseline: the policy is not enforced"),
                );
                continue;
            }
        };
        let mut subjects = Vec::new();
        for (i, pod) in local.iter().enumerate() {
            match subject_selects(ctx, &spec.subject, pod) {
                Some(true) => subjects.push(i),
                Some(false) => {}
                None => {
                    ctx.cluster_problem(&name, "the subject sets not exactly one of namespaces and pods: it selects no pod".into());
                    break;
                }
            }
        }
        if subjects.is_empty() {
            continue;
        }
        selecting += 1;
        let ingress_rules = spec
            .ingress
            .iter()
            .map(|r| (&r.name, &r.action, &r.from, &r.protocols));
        let egress_rules = spec
            .egress
            .iter()
            .map(|r| (&r.name, &r.action, &r.to, &r.protocols));
        for (ingress, rules) in [
            (true, ingress_rules.collect::<Vec<_>>()),
            (false, egress_rules.collect::<Vec<_>>()),
        ] {
            let dir = if ingress { "ingress" } else { "egress" };
            for (i, (rule_name, action, peers, protocols)) in rules.into_iter().enumerate() {
                let comment = format!("{name} {dir}[{i}] {rule_name}")
                    .trim_end()
                    .to_string();
                let action = match action.as_str() {
                    "Accept" => Action::Accept,
                    "Deny" => Action::Deny,
                    "Pass" => Action::Pass,
                    other => {
                        ctx.cluster_problem(&name, format!("{dir}[{i}]: action {other:?} is not Accept, Deny or Pass: it denies all"));
                        Action::Deny
                    }
                };
                let mut broken = None;
                let (numbered, named) = cluster_ports(protocols).unwrap_or_else(|why| {
                    broken = Some(why);
                    Default::default()
                });
                // (peer, its pod addresses, whether named ports resolve against it)
                let mut targets = Vec::new();
                for peer in peers.iter() {
                    let key = peer_key("cnp", peer);
                    match cluster_peer(ctx, &key, peer) {
                        Ok((p, ips)) => targets.push((p, ips, key)),
                        Err(why) => broken = Some(why),
                    }
                }
                if let Some(why) = broken {
                    let effect = if action == Action::Accept {
                        "it matches nothing"
                    } else {
                        "it denies all"
                    };
                    ctx.cluster_problem(&name, format!("{dir}[{i}]: {why}; {effect}"));
                    if action != Action::Accept {
                        let deny_all = TierRule {
                            action: Action::Deny,
                            rule: Rule {
                                comment: comment.clone(),
                                peer: Peer::Any,
                                ports: Ports::Any,
                            },
                        };
                        for &idx in &subjects {
                            tier_of(&mut out[idx], ingress, admin).push(deny_all.clone());
                        }
                    }
                    continue;
                }
                // Egress named ports resolve against the peer pods: the same sets for
                // every subject, built once.
                let egress_named: Vec<Option<Ports>> = targets
                    .iter()
                    .map(|(_, ips, key)| {
                        (!ingress && !named.is_empty() && !ips.is_empty())
                            .then(|| ctx.named_ports(key, ips, &named))
                    })
                    .collect();
                for &idx in &subjects {
                    let mut compiled = Vec::new();
                    for ((peer, _, _), egress_ports) in targets.iter().zip(&egress_named) {
                        if protocols.is_empty() || !numbered.is_empty() {
                            let ports = if protocols.is_empty() {
                                Ports::Any
                            } else {
                                Ports::List(numbered.clone())
                            };
                            compiled.push(Rule {
                                comment: comment.clone(),
                                peer: peer.clone(),
                                ports,
                            });
                        }
                        if named.is_empty() {
                            continue;
                        }
                        if ingress {
                            // This pod's own container ports.
                            let mine: Vec<(Protocol, Option<(u16, u16)>)> = local[idx]
                                .named_ports
                                .iter()
                                .filter(|(n, _, _)| named.iter().any(|(want, _)| want == n))
                                .map(|(_, proto, port)| (*proto, Some((*port, *port))))
                                .collect();
                            if !mine.is_empty() {
                                compiled.push(Rule {
                                    comment: comment.clone(),
                                    peer: peer.clone(),
                                    ports: Ports::List(mine),
                                });
                            }
                        } else if let Some(ports) = egress_ports {
                            compiled.push(Rule {
                                comment: comment.clone(),
                                peer: Peer::Any,
                                ports: ports.clone(),
                            });
                        }
                    }
                    tier_of(&mut out[idx], ingress, admin)
                        .extend(compiled.into_iter().map(|rule| TierRule { action, rule }));
                }
            }
        }
    }
    (out, selecting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)], ips: &[&str]) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: ips.iter().filter_map(|s| s.parse().ok()).collect(),
            named_ports: vec![("http".into(), Protocol::Tcp, 8080)],
        }
    }

    fn np(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
        [
            (
                "default".to_string(),
                [("team".to_string(), "a".to_string())].into(),
            ),
            (
                "other".to_string(),
                [("team".to_string(), "b".to_string())].into(),
            ),
        ]
        .into()
    }

    fn pods() -> Vec<PodView> {
        vec![
            pod(
                "default",
                "db",
                "n1",
                &[("app", "db")],
                &["10.244.1.5", "fd00::5"],
            ),
            pod(
                "default",
                "web",
                "n2",
                &[("app", "web")],
                &["10.244.2.7", "fd00::7"],
            ),
            pod("other", "web", "n2", &[("app", "web")], &["10.244.2.8"]),
            pod("default", "free", "n1", &[("app", "free")], &["10.244.1.6"]),
        ]
    }

    fn cidrs() -> Vec<IpNet> {
        vec!["10.244.1.0/24".parse().unwrap_or_else(|e| panic!("{e}"))]
    }

    fn cnp(v: serde_json::Value) -> ClusterNetworkPolicy {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cluster(policies: &[ClusterNetworkPolicy]) -> Compiled {
        compile("n1", &cidrs(), &pods(), &namespaces(), &[], policies)
    }

    fn chains<'p>(c: &'p Compiled, name: &str) -> &'p PodChains {
        c.plan
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no chains for {name}: {:?}", c.plan.pods))
    }

    /// Admin and Baseline policies land in their tiers of the subject pods of this node,
    /// ordered by priority then rule order, with their actions; pods of other nodes and
    /// unselected pods get nothing; no NetworkPolicy isolation is implied.
    #[test]
    fn cluster_policies_fill_the_tiers_of_their_subjects_in_priority_order() {
        let admin_late = cnp(json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "z-late"},
            "spec": {"tier": "Admin", "priority": 50,
                "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
                "ingress": [{"name": "deny-other", "action": "Deny",
                    "from": [{"namespaces": {"matchLabels": {"team": "b"}}}]}]}
        }));
        let admin_early = cnp(json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "a-early"},
            "spec": {"tier": "Admin", "priority": 5,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
                "ingress": [
                    {"action": "Pass", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}]},
                    {"action": "Accept", "from": [{"namespaces": {}}],
                     "protocols": [{"tcp": {"destinationPort": {"number": 5432}}},
                                   {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}},
                                   {"sctp": {}}]}
                ],
                "egress": [{"action": "Deny", "to": [{"networks": ["192.0.2.0/24", "2001:db8::/32"]}]}]}
        }));
        let baseline = cnp(json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "default-deny"},
            "spec": {"tier": "Baseline", "priority": 0, "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        }));
        let c = cluster(&[admin_late, baseline, admin_early]);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.policies, 3);
        let db = chains(&c, "default/db");
        assert_eq!(
            db.ingress, None,
            "a cluster policy does not isolate for NetworkPolicy"
        );
        let actions: Vec<(Action, &str)> = db
            .cluster_ingress
            .admin
            .iter()
            .map(|r| (r.action, r.rule.comment.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![
                (Action::Pass, "a-early ingress[0]"),
                (Action::Accept, "a-early ingress[1]"),
                (Action::Deny, "z-late ingress[0] deny-other"),
            ],
            "priority 5 before 50, rules in order"
        );
        assert_eq!(
            db.cluster_ingress.admin[1].rule.ports,
            Ports::List(vec![
                (Protocol::Tcp, Some((5432, 5432))),
                (Protocol::Udp, Some((1000, 2000))),
                (Protocol::Sctp, None),
            ])
        );
        assert_eq!(db.cluster_ingress.baseline.len(), 1);
        assert_eq!(db.cluster_ingress.baseline[0].action, Action::Deny);
        // The Pass peer: web pods of every namespace, as sets.
        let Peer::Sets { v4: Some(v4), .. } = &db.cluster_ingress.admin[0].rule.peer else {
            panic!("{:?}", db.cluster_ingress.admin[0].rule.peer)
        };
        let Some(AddrSet::Nets { nets, .. }) = c.plan.sets.get(v4) else {
            panic!("no set {v4}")
        };
        assert_eq!(
            nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["10.244.2.7/32", "10.244.2.8/32"]
        );
        // Egress networks: one set per family.
        let Peer::Sets {
            v4: Some(n4),
            v6: Some(n6),
            ..
        } = &db.cluster_egress.admin[0].rule.peer
        else {
            panic!("{:?}", db.cluster_egress.admin[0].rule.peer)
        };
        assert!(
            matches!(c.plan.sets.get(n4), Some(AddrSet::Nets { v6: false, nets }) if nets.len() == 1)
        );
        assert!(
            matches!(c.plan.sets.get(n6), Some(AddrSet::Nets { v6: true, nets }) if nets.len() == 1)
        );
        // The other pod of this node: only the team-a Admin policy and the baseline.
        let free = chains(&c, "default/free");
        assert_eq!(free.cluster_ingress.admin.len(), 1);
        assert!(free.cluster_egress.is_empty());
        assert!(
            c.plan.pods.iter().all(|p| p.name != "default/web"),
            "web runs on n2"
        );
    }

    /// A rule podnet cannot read fails closed as the API asks: an Accept matches
    /// nothing, a Deny or Pass becomes "deny all"; each is reported.
    #[test]
    fn unreadable_cluster_rules_fail_closed_and_are_reported() {
        let p = cnp(json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "odd"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "egress": [
                    {"action": "Accept", "to": [{"nodes": {}}]},
                    {"action": "Pass", "to": [{"domainNames": ["example.com"]}]},
                    {"action": "Deny", "to": [{"networks": ["10.0.0.1/8"]}]},
                    {"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}
                ]}
        }));
        let c = cluster(&[p]);
        assert_eq!(c.problems.len(), 4, "{:?}", c.problems);
        assert!(c.problems.iter().all(|p| p.cluster && p.name == "odd"));
        let db = chains(&c, "default/db");
        let got: Vec<(Action, &Peer, &Ports)> = db
            .cluster_egress
            .admin
            .iter()
            .map(|r| (r.action, &r.rule.peer, &r.rule.ports))
            .collect();
        assert_eq!(
            got,
            vec![
                (Action::Deny, &Peer::Any, &Ports::Any),
                (Action::Deny, &Peer::Any, &Ports::Any),
            ],
            "the Pass and the Deny deny all; the Accepts match nothing"
        );
    }

    /// Named ports: ingress resolves against the subject pod's own container ports,
    /// egress against the peer pods' (address . protocol . port sets).
    #[test]
    fn cluster_named_ports_resolve_like_network_policy() {
        let p = cnp(json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "named"},
            "spec": {"tier": "Baseline", "priority": 1,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
                "ingress": [{"action": "Accept", "from": [{"namespaces": {}}],
                    "protocols": [{"destinationNamedPort": "http"}]}],
                "egress": [{"action": "Accept", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}],
                    "protocols": [{"destinationNamedPort": "http"}]}]}
        }));
        let c = cluster(&[p]);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let db = chains(&c, "default/db");
        assert_eq!(
            db.cluster_ingress.baseline[0].rule.ports,
            Ports::List(vec![(Protocol::Tcp, Some((8080, 8080)))])
        );
        let Ports::Named { v4: Some(n4), .. } = &db.cluster_egress.baseline[0].rule.ports else {
            panic!("{:?}", db.cluster_egress.baseline[0].rule)
        };
        let Some(AddrSet::Ports { entries, .. }) = c.plan.sets.get(n4) else {
            panic!("no set {n4}")
        };
        assert_eq!(entries.len(), 2, "both web pods' http port: {entries:?}");
    }

    #[test]
    fn selectors_follow_the_api() {
        let l: BTreeMap<String, String> = [
            ("app".to_string(), "db".to_string()),
            ("tier".to_string(), "x".to_string()),
        ]
        .into();
        let sel = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(selects(&sel(json!({})), &l));
        assert!(selects(&sel(json!({"matchLabels": {"app": "db"}})), &l));
        assert!(!selects(&sel(json!({"matchLabels": {"app": "web"}})), &l));
        assert!(selects(
            &sel(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "x"]}]})
            ),
            &l
        ));
        assert!(selects(
            &sel(
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})
            ),
            &l
        ));
        assert!(selects(
            &sel(json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]})),
            &l
        ));
        assert!(!selects(
            &sel(json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})),
            &l
        ));
        assert!(!selects(
            &sel(json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]})),
            &l
        ));
    }

    #[test]
    fn a_pod_without_policy_is_known_and_not_isolated() {
        let c = compile("n1", &cidrs(), &pods(), &namespaces(), &[], &[]);
        assert!(c.plan.pods.is_empty());
        assert_eq!(c.plan.known.len(), 3, "{:?}", c.plan.known);
        assert_eq!(c.policies, 0);
    }

    /// Identical peers share their sets whatever policy or rule they appear in; a
    /// selector without a namespace selector is scoped to its policy's namespace, so
    /// the same selector in two namespaces is two peers.
    #[test]
    fn identical_peers_share_sets_across_policies() {
        let rule = |ns: &str, name: &str, extra_block: bool| {
            let mut from = vec![
                json!({"podSelector": {"matchLabels": {"app": "web"}}}),
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.99.0.0/16"]}}),
            ];
            if extra_block {
                from.push(json!({"ipBlock": {"cidr": "10.0.0.0/8"}}));
            }
            np(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": {
                "podSelector": {},
                "ingress": [{"from": from, "ports": [{"port": 5432}]}]}}),
            )
        };
        let one = compile(
            "n1",
            &cidrs(),
            &pods(),
            &namespaces(),
            &[rule("default", "a", false)],
            &[],
        );
        let many: Vec<NetworkPolicy> = (0..20)
            .map(|i| rule("default", &format!("p{i:02}"), false))
            .collect();
        let c = compile("n1", &cidrs(), &pods(), &namespaces(), &many, &[]);
        assert_eq!(
            c.plan.sets.keys().collect::<Vec<_>>(),
            one.plan.sets.keys().collect::<Vec<_>>(),
            "20 policies with the same peers need the sets of one"
        );
        // Every pod of default on n1 (db, free): the 20 × 2 rules are 2, each naming the
        // first policy rule and the 19 others it stands for.
        let rules = chains(&c, "default/db").ingress.clone().unwrap_or_default();
        assert_eq!(rules.len(), 2, "{rules:#?}");
        assert_eq!(rules[0].comment, "default/p00 ingress[0] (+19 more)");
        // An ipBlock without the except is another set; web in another namespace too.
        let c = compile(
            "n1",
            &cidrs(),
            &pods(),
            &namespaces(),
            &[rule("default", "a", true), rule("other", "b", false)],
            &[],
        );
        assert_eq!(
            c.plan.sets.len(),
            one.plan.sets.len() + 1,
            "the plain 10.0.0.0/8 is one more set (policy b selects no pod of n1): {:?}",
            c.plan.sets.keys()
        );
    }

    #[test]
    fn ingress_from_pods_in_the_namespace_on_a_port() {
        let p = np(
            json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]}}),
        );
        let c = compile("n1", &cidrs(), &pods(), &namespaces(), &[p], &[]);
        assert_eq!(c.plan.pods.len(), 1, "only db is selected");
        let chains = &c.plan.pods[0];
        assert_eq!(chains.name, "default/db");
        assert!(
            chains.egress.is_none(),
            "policyTypes defaults to Ingress only"
        );
        let rules = chains.ingress.clone().unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].ports,
            Ports::List(vec![(Protocol::Tcp, Some((5432, 5432)))])
        );
        let Peer::Sets {
            v4: Some(v4),
            v6: Some(v6),
            ..
        } = &rules[0].peer
        else {
            panic!("{:?}", rules[0].peer)
        };
        // default/web only (other/web is in another namespace).
        assert_eq!(
            c.plan.sets[v4],
            AddrSet::Nets {
                v6: false,
                nets: vec!["10.244.2.7/32".parse().unwrap_or_else(|e| panic!("{e}"))]
            }
        );
        assert_eq!(
            c.plan.sets[v6],
            AddrSet::Nets {
                v6: true,
                nets: vec!["fd00::7/128".parse().unwrap_or_else(|e| panic!("{e}"))]
            }
        );
        assert_eq!(c.policies, 1);
    }

    #[test]
    fn namespace_selectors_ip_blocks_and_default_deny() {
        let p = np(
            json!({"metadata": {"name": "mix", "namespace": "default"}, "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "b"}}},
                {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "web"}}},
                {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]}}),
        );
        let c = compile("n1", &cidrs(), &pods(), &namespaces(), &[p], &[]);
        assert_eq!(c.plan.pods.len(), 2, "both local pods selected by {{}}");
        let db = c
            .plan
            .pods
            .iter()
            .find(|p| p.name == "default/db")
            .cloned()
            .unwrap_or_else(|| panic!("db"));
        assert_eq!(
            db.egress,
            Some(vec![]),
            "egress isolated with no rule: deny all"
        );
        let ing = db.ingress.unwrap_or_default();
        assert_eq!(ing.len(), 3);
        let elems = |r: &Rule| match &r.peer {
            Peer::Sets { v4: Some(s), .. } => c.plan.sets[s].clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            elems(&ing[0]),
            AddrSet::Nets {
                v6: false,
                nets: vec!["10.244.2.8/32".parse().unwrap_or_else(|e| panic!("{e}"))]
            },
            "other/web"
        );
        assert_eq!(
            elems(&ing[1]),
            AddrSet::Nets {
                v6: false,
                nets: vec!["10.244.2.7/32".parse().unwrap_or_else(|e| panic!("{e}"))]
            },
            "default/web"
        );
        let Peer::Sets {
            v4: Some(_),
            v6: None,
            except4: Some(x),
            ..
        } = &ing[2].peer
        else {
            panic!("{:?}", ing[2].peer)
        };
        assert_eq!(
            c.plan.sets[x],
            AddrSet::Nets {
                v6: false,
                nets: vec!["192.0.2.128/25".parse().unwrap_or_else(|e| panic!("{e}"))]
            }
        );
    }

    #[test]
    fn named_ports_resolve_against_the_destination_pod() {
        let p = np(
            json!({"metadata": {"name": "named", "namespace": "default"}, "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": "http"}, {"port": "missing"}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}, {"port": 53, "protocol": "UDP"}]}]}}),
        );
        let c = compile("n1", &cidrs(), &pods(), &namespaces(), &[p], &[]);
        let db = &c.plan.pods[0];
        assert_eq!(
            db.ingress.clone().unwrap_or_default()[0].ports,
            Ports::List(vec![(Protocol::Tcp, Some((8080, 8080)))])
        );
        let eg = db.egress.clone().unwrap_or_default();
        assert_eq!(eg.len(), 2, "{eg:?}");
        assert_eq!(
            eg[0].ports,
            Ports::List(vec![(Protocol::Udp, Some((53, 53)))])
        );
        let Ports::Named { v4: Some(n4), .. } = &eg[1].ports else {
            panic!("{:?}", eg[1].ports)
        };
        assert_eq!(
            c.plan.sets[n4],
            AddrSet::Ports {
                v6: false,
                entries: vec![(
                    "10.244.2.7".parse().unwrap_or_else(|e| panic!("{e}")),
                    Protocol::Tcp,
                    8080
                )]
            }
        );
    }

    #[test]
    fn broken_parts_allow_nothing_and_are_reported() {
        let p = np(
            json!({"metadata": {"name": "bad", "namespace": "default"}, "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "nonsense"}}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]},
                {"ports": [{"port": 70000}]},
                {"ports": [{"port": 80, "protocol": "ICMP"}]}]}}),
        );
        let c = compile("n1", &cidrs(), &pods(), &namespaces(), &[p], &[]);
        assert_eq!(c.problems.len(), 4, "{:?}", c.problems);
        assert_eq!(
            c.plan.pods[0].ingress,
            Some(vec![]),
            "the pod is isolated and nothing broken allows anything"
        );
    }
}
