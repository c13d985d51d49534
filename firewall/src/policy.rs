//! Network policy in nftables: what podnet-daemon compiled from NetworkPolicies
//! ([`PolicyPlan`]) rendered into one table podnet alone owns, `inet podnet-policy`.
//!
//! ```text
//! table inet podnet-policy {
//!   set known4/known6     this node's pod addresses the daemon has programmed
//!   set local4/local6     this node's pod CIDRs
//!   map ingress4/6, egress4/6   isolated pod address → jump to its chain
//!   set s-…               the addresses (or address . protocol . port) a rule allows
//!   chain forward { filter forward hook:
//!     ct state established,related accept         replies are always allowed
//!     a local pod address not yet known → drop      no packet before its policy
//!     ip saddr vmap @egress4 …                      the source pod's egress rules
//!     ip daddr vmap @ingress4 …                     the destination pod's ingress rules }
//!   chain pod-<key>-out { rules … return; counter drop }
//!   chain pod-<key>-in  { rules … accept; counter drop }
//! }
//! ```
//!
//! Every packet between pods, to and from other nodes and from outside passes the host's
//! forward hook: routed traffic by itself, traffic between two pods of one node (which
//! the bridge carries) through bridge netfilter (`br_netfilter`, which Kubernetes nodes
//! run; the daemon checks it). Traffic between a pod and its own node (input and output
//! hooks) is always allowed, as the NetworkPolicy API specifies.
//!
//! Updates: the first rule's comment carries a hash of the table's structure (chains, rules, set
//! declarations — everything but set elements). A pass whose structure is unchanged
//! only replaces the elements of the sets that differ, so pod churn elsewhere in the
//! cluster rewrites no rule; anything else replaces the table in one transaction.
//! Nothing is written when nothing differs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hostports::Protocol;
use crate::{FirewallError, Runner};

/// The table.
pub const TABLE: &str = "podnet-policy";

/// Everything the node enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPlan {
    /// This node's pod CIDRs.
    pub local_cidrs: Vec<IpNet>,
    /// This node's pod addresses the daemon has seen and programmed (isolated or not);
    /// any other address of `local_cidrs` is dropped until it has.
    pub known: Vec<IpAddr>,
    /// The isolated pods of this node.
    pub pods: Vec<PodChains>,
    /// The address sets rules refer to, by name.
    pub sets: BTreeMap<String, AddrSet>,
    /// Log dropped packets to the kernel log, at most this many per second and drop
    /// rule (a pod's final drop, an Admin or Baseline Deny), with the prefix
    /// `podnet-drop <in|out> <namespace/pod>: `; 0: no logging (drops are still counted).
    #[serde(default)]
    pub log_drops: u32,
}

/// The statement that logs a drop, rate-limited (`None`: logging off).
fn log_statement(rate: u32, ingress: bool, pod: &str) -> Option<String> {
    if rate == 0 {
        return None;
    }
    let dir = if ingress { "in" } else { "out" };
    // The kernel keeps 127 bytes of prefix; pod names are DNS labels (no quotes).
    let pod: String = pod.chars().take(100).collect();
    Some(format!(
        "limit rate {rate}/second burst {rate} packets log prefix \"podnet-drop {dir} {pod}: \" level info"
    ))
}

/// A set of addresses, or of (address, protocol, port) for named ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddrSet {
    /// Networks (pod addresses as /32, /128).
    Nets {
        /// IPv6.
        v6: bool,
        /// The elements.
        nets: Vec<IpNet>,
    },
    /// Pod address, protocol, port.
    Ports {
        /// IPv6.
        v6: bool,
        /// The elements.
        entries: Vec<(IpAddr, Protocol, u16)>,
    },
}

/// One isolated pod's chains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodChains {
    /// The chain names' key (stable per pod).
    pub key: String,
    /// `namespace/name`, for comments.
    pub name: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its ingress rules (`None`: not isolated for ingress).
    pub ingress: Option<Vec<Rule>>,
    /// Its egress rules (`None`: not isolated for egress).
    pub egress: Option<Vec<Rule>>,
    /// The cluster-admin tiers around its ingress rules.
    #[serde(default)]
    pub cluster_ingress: Tiers,
    /// The cluster-admin tiers around its egress rules.
    #[serde(default)]
    pub cluster_egress: Tiers,
}

/// The cluster-admin policy tiers of one direction (ClusterNetworkPolicy of
/// sigs.k8s.io/network-policy-api): `admin` is evaluated before NetworkPolicy, `baseline`
/// after it, only for traffic NetworkPolicy leaves alone (the pod is not isolated in
/// that direction). In each tier the first matching rule decides, in the order given
/// (the compiler sorts by priority).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiers {
    /// Admin tier rules.
    pub admin: Vec<TierRule>,
    /// Baseline tier rules.
    pub baseline: Vec<TierRule>,
}

impl Tiers {
    /// No rule in either tier.
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.baseline.is_empty()
    }
}

/// One cluster-admin rule: what matches and what happens to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRule {
    /// Accept, Deny or Pass.
    pub action: Action,
    /// What it matches (its peer and ports).
    pub rule: Rule,
}

/// A cluster-admin rule's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Allowed; no lower tier or NetworkPolicy is asked.
    Accept,
    /// Dropped; no lower tier or NetworkPolicy is asked.
    Deny,
    /// The admin tier stops here: NetworkPolicy (then the baseline tier) decides.
    Pass,
}

/// One allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Which policy rule it comes from (`namespace/name ingress[0]`).
    pub comment: String,
    /// The other side.
    pub peer: Peer,
    /// The ports of this pod (ingress) or of the peer (egress).
    pub ports: Ports,
}

/// The other side of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// Any address.
    Any,
    /// The addresses of a set per family (`None`: nothing of that family), minus an
    /// except set.
    Sets {
        /// IPv4 set.
        v4: Option<String>,
        /// IPv6 set.
        v6: Option<String>,
        /// IPv4 exceptions.
        except4: Option<String>,
        /// IPv6 exceptions.
        except6: Option<String>,
    },
}

/// Ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ports {
    /// Any port, any protocol.
    Any,
    /// These protocols and ports (a port range `None`: every port of the protocol).
    List(Vec<(Protocol, Option<(u16, u16)>)>),
    /// Named ports of the peer pods, resolved per pod: sets of address . protocol . port.
    Named {
        /// IPv4 set.
        v4: Option<String>,
        /// IPv6 set.
        v6: Option<String>,
    },
}

/// FNV-1a, 64 bit: the structure's fingerprint (not security relevant).
fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A set element as `nft -j` lists it, normalized: an address alone for a full-length
/// prefix, `addr/len` otherwise, `addr . proto . port` for concatenations.
fn net_element(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.trunc().to_string()
    }
}

fn port_element(e: &(IpAddr, Protocol, u16)) -> String {
    format!("{} . {} . {}", e.0, e.1.as_str(), e.2)
}

impl AddrSet {
    fn v6(&self) -> bool {
        match self {
            Self::Nets { v6, .. } | Self::Ports { v6, .. } => *v6,
        }
    }

    fn elements(&self) -> BTreeSet<String> {
        match self {
            Self::Nets { nets, .. } => nets.iter().map(net_element).collect(),
            Self::Ports { entries, .. } => entries.iter().map(port_element).collect(),
        }
    }

    fn declaration(&self, name: &str) -> String {
        let addr = if self.v6() { "ipv6_addr" } else { "ipv4_addr" };
        match self {
            Self::Nets { .. } => format!("set {name} {{ type {addr}; flags interval; }}"),
            Self::Ports { .. } => {
                format!("set {name} {{ type {addr} . inet_proto . inet_service; }}")
            }
        }
    }
}

/// The sets every plan has: (name, family, elements of the plan).
fn fixed_sets(plan: &PolicyPlan) -> Vec<(String, AddrSet)> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let fam = if v6 { "6" } else { "4" };
        out.push((
            format!("known{fam}"),
            AddrSet::Nets {
                v6,
                nets: plan
                    .known
                    .iter()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .map(|ip| IpNet::from(*ip))
                    .collect(),
            },
        ));
        out.push((
            format!("local{fam}"),
            AddrSet::Nets {
                v6,
                nets: plan
                    .local_cidrs
                    .iter()
                    .filter(|c| c.addr().is_ipv6() == v6)
                    .copied()
                    .collect(),
            },
        ));
    }
    out
}

/// Every set of the plan with its elements, fixed ones first.
fn all_sets(plan: &PolicyPlan) -> Vec<(String, AddrSet)> {
    let mut out = fixed_sets(plan);
    out.extend(plan.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// The verdict that lets a packet through in a direction: ingress is the last check
/// (accept), egress returns to the forward chain, which then asks the destination's
/// ingress rules.
fn allow(ingress: bool) -> &'static str {
    if ingress { "accept" } else { "return" }
}

fn rule_lines(rule: &Rule, ingress: bool, verdict: &str) -> Vec<String> {
    let dir = if ingress { "saddr" } else { "daddr" };
    let comment = format!("comment \"{}\"", rule.comment.replace('"', "'"));
    // Address part per family: None = this family is not matched at all; Some("") = any.
    let addr = |v6: bool| -> Option<String> {
        let proto = if v6 { "ip6" } else { "ip" };
        match &rule.peer {
            Peer::Any => Some(String::new()),
            Peer::Sets {
                v4,
                v6: s6,
                except4,
                except6,
            } => {
                let (set, except) = if v6 { (s6, except6) } else { (v4, except4) };
                let set = set.as_ref()?;
                let mut s = format!("{proto} {dir} @{set} ");
                if let Some(e) = except {
                    let _ = write!(s, "{proto} {dir} != @{e} ");
                }
                Some(s)
            }
        }
    };
    let mut out = Vec::new();
    let families: Vec<Option<bool>> = match (&rule.peer, &rule.ports) {
        (Peer::Any, Ports::Any | Ports::List(_)) => vec![None],
        _ => vec![Some(false), Some(true)],
    };
    for fam in families {
        let a = match fam {
            None => String::new(),
            Some(v6) => match addr(v6) {
                Some(a) => a,
                None => continue,
            },
        };
        match &rule.ports {
            Ports::Any => out.push(format!("{a}{verdict} {comment}")),
            Ports::List(list) => {
                for p in port_matches(list) {
                    out.push(format!("{a}{p} {verdict} {comment}"));
                }
            }
            Ports::Named { v4, v6 } => {
                let Some(v6f) = fam else { continue };
                let (set, proto) = if v6f { (v6, "ip6") } else { (v4, "ip") };
                if let Some(set) = set {
                    out.push(format!(
                        "{a}{proto} {dir} . meta l4proto . th dport @{set} {verdict} {comment}"
                    ));
                }
            }
        }
    }
    out
}

/// A rule's numbered ports as one match per protocol, in first-seen order: all ports
/// (`meta l4proto`), one port or range, or an anonymous set of them — overlapping and
/// adjacent ranges merged, as nftables refuses overlapping intervals.
fn port_matches(list: &[(Protocol, Option<(u16, u16)>)]) -> Vec<String> {
    let mut protos: Vec<Protocol> = Vec::new();
    for (proto, _) in list {
        if !protos.contains(proto) {
            protos.push(*proto);
        }
    }
    protos
        .into_iter()
        .map(|proto| {
            let name = proto.as_str();
            let mut ranges = Vec::new();
            for (p, range) in list.iter().filter(|(p, _)| *p == proto) {
                match range {
                    None => return format!("meta l4proto {}", p.as_str()),
                    Some(r) => ranges.push(*r),
                }
            }
            ranges.sort();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (lo, hi) in ranges {
                match merged.last_mut() {
                    Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            let one = |(lo, hi): (u16, u16)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            };
            match merged.as_slice() {
                [r] => format!("{name} dport {}", one(*r)),
                _ => {
                    let items: Vec<String> = merged.into_iter().map(one).collect();
                    format!("{name} dport {{ {} }}", items.join(", "))
                }
            }
        })
        .collect()
}

/// The table's structure: everything but set elements (they are filled separately).
fn structure(plan: &PolicyPlan) -> String {
    let mut s = String::new();
    for (name, set) in all_sets(plan) {
        let _ = writeln!(s, "  {}", set.declaration(&name));
    }
    for (map, v6, ingress) in [
        ("ingress4", false, true),
        ("ingress6", true, true),
        ("egress4", false, false),
        ("egress6", true, false),
    ] {
        let addr = if v6 { "ipv6_addr" } else { "ipv4_addr" };
        let mut elements = Vec::new();
        for pod in &plan.pods {
            if !pod.has_chain(ingress) {
                continue;
            }
            for ip in pod.ips.iter().filter(|ip| ip.is_ipv6() == v6) {
                elements.push(format!(
                    "{ip} : jump pod-{}-{}",
                    pod.key,
                    if ingress { "in" } else { "out" }
                ));
            }
        }
        let _ = write!(s, "  map {map} {{ type {addr} : verdict; ");
        if !elements.is_empty() {
            let _ = write!(s, "elements = {{ {} }} ", elements.join(", "));
        }
        s.push_str("}\n");
    }
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str("    ct state established,related accept\n");
    for (proto, fam) in [("ip", "4"), ("ip6", "6")] {
        for dir in ["saddr", "daddr"] {
            let _ = writeln!(
                s,
                "    {proto} {dir} @local{fam} {proto} {dir} != @known{fam} counter drop comment \"pod not programmed yet\""
            );
        }
    }
    s.push_str("    ip saddr vmap @egress4\n    ip6 saddr vmap @egress6\n");
    s.push_str("    ip daddr vmap @ingress4\n    ip6 daddr vmap @ingress6\n  }\n");
    for pod in &plan.pods {
        for ingress in [false, true] {
            if pod.has_chain(ingress) {
                pod_chains(&mut s, pod, ingress, plan.log_drops);
            }
        }
    }
    s
}

impl PodChains {
    /// Whether anything (a NetworkPolicy or a cluster-admin tier) applies to the pod in
    /// this direction: it then has a chain, and its addresses jump there.
    fn has_chain(&self, ingress: bool) -> bool {
        let (np, tiers) = self.direction(ingress);
        np.is_some() || !tiers.is_empty()
    }

    fn direction(&self, ingress: bool) -> (&Option<Vec<Rule>>, &Tiers) {
        if ingress {
            (&self.ingress, &self.cluster_ingress)
        } else {
            (&self.egress, &self.cluster_egress)
        }
    }
}

/// A pod's chain of one direction. Without admin rules: `pod-<key>-<in|out>` holds the
/// NetworkPolicy rules then a drop (isolated pod) or the baseline rules (not isolated).
/// With admin rules, those come first and the rest moves to `…-np`, which a Pass (and
/// falling off the admin rules) goes to.
fn pod_chains(s: &mut String, pod: &PodChains, ingress: bool, log_drops: u32) {
    let (np, tiers) = pod.direction(ingress);
    let log = log_statement(log_drops, ingress, &pod.name);
    let chain = format!("pod-{}-{}", pod.key, if ingress { "in" } else { "out" });
    let rest = format!("{chain}-np");
    // Pass leaves the admin tier for NetworkPolicy; in the baseline tier, the last one,
    // it leaves the traffic to the default: allowed.
    let tier_lines = |rules: &[TierRule], pass: &str, s: &mut String| {
        for r in rules {
            let verdict = match r.action {
                Action::Accept => allow(ingress).to_string(),
                Action::Deny => "counter drop".to_string(),
                Action::Pass => pass.to_string(),
            };
            // A logged Deny: the same matches first with the log statement (which lets
            // the packet go on), then with the drop.
            if let (Action::Deny, Some(log)) = (r.action, &log) {
                for line in rule_lines(&r.rule, ingress, log) {
                    let _ = writeln!(s, "    {line}");
                }
            }
            for line in rule_lines(&r.rule, ingress, &verdict) {
                let _ = writeln!(s, "    {line}");
            }
        }
    };
    let _ = writeln!(s, "  chain {chain} {{");
    if !tiers.admin.is_empty() {
        tier_lines(&tiers.admin, &format!("goto {rest}"), s);
        let _ = writeln!(
            s,
            "    goto {rest}
  }}
  chain {rest} {{"
        );
    }
    match np {
        Some(rules) => {
            for r in rules {
                for line in rule_lines(r, ingress, allow(ingress)) {
                    let _ = writeln!(s, "    {line}");
                }
            }
            if let Some(log) = &log {
                let _ = writeln!(s, "    {log}");
            }
            let _ = writeln!(
                s,
                "    counter drop comment \"{} {}: no policy allows it\"",
                pod.name,
                if ingress { "ingress" } else { "egress" }
            );
        }
        // Not isolated: the baseline tier, then allowed (falling off the chain).
        None => tier_lines(&tiers.baseline, allow(ingress), s),
    }
    s.push_str("  }\n");
}

/// The fingerprint the table's comment carries.
pub fn fingerprint(plan: &PolicyPlan) -> String {
    format!("podnet-policy {:016x}", fnv(&structure(plan)))
}

fn element_list(set: &AddrSet) -> String {
    set.elements().into_iter().collect::<Vec<_>>().join(", ")
}

/// The whole table, in one transaction (`None` plan: the table deleted).
pub fn render(plan: Option<&PolicyPlan>) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    let Some(plan) = plan else {
        return s;
    };
    let _ = writeln!(s, "table inet {TABLE} {{");
    // nft's JSON leaves table comments out: the fingerprint rides on the first rule.
    s.push_str(&structure(plan).replacen(
        "    ct state established,related accept\n",
        &format!(
            "    ct state established,related accept comment \"{}\"\n",
            fingerprint(plan)
        ),
        1,
    ));
    s.push_str("}\n");
    for (name, set) in all_sets(plan) {
        let elements = element_list(&set);
        if !elements.is_empty() {
            let _ = writeln!(s, "add element inet {TABLE} {name} {{ {elements} }}");
        }
    }
    s
}

/// What `nft -j list table` showed: the comment, rules per chain, set elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The fingerprint (the comment of the forward chain's first rule).
    pub comment: String,
    /// Number of rules per chain.
    pub rules: BTreeMap<String, usize>,
    /// Elements per set, normalized like [`AddrSet::elements`].
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

fn json_element(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p["addr"].as_str()?;
                let len = p["len"].as_u64()?;
                return Some(format!("{addr}/{len}"));
            }
            if let Some(c) = o.get("concat") {
                let parts: Option<Vec<String>> = c.as_array()?.iter().map(json_element).collect();
                return Some(parts?.join(" . "));
            }
            if let Some(e) = o.get("elem") {
                return json_element(&e["val"]);
            }
            None
        }
        _ => None,
    }
}

/// Parses `nft -j list table inet podnet-policy`.
pub fn parse(json: &str) -> Result<Observed, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Observed::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            out.rules
                .entry(c["name"].as_str().unwrap_or_default().to_string())
                .or_default();
        } else if let Some(r) = item.get("rule") {
            if let Some(c) = r["comment"].as_str()
                && c.starts_with("podnet-policy ")
                && r["chain"] == "forward"
            {
                out.comment = c.to_string();
            }
            *out.rules
                .entry(r["chain"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        } else if let Some(s) = item.get("set") {
            let elements = s["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(json_element)
                .collect();
            out.sets
                .insert(s["name"].as_str().unwrap_or_default().to_string(), elements);
        }
    }
    Ok(out)
}

/// Rules per chain the plan renders (for the drift check).
fn rule_counts(plan: &PolicyPlan) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut chain = None;
    for line in structure(plan).lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            chain = Some(name.to_string());
            out.insert(name.to_string(), 0);
        } else if t == "}" {
            chain = None;
        } else if let Some(c) = &chain
            && !t.starts_with("type ")
            && !t.is_empty()
            && let Some(n) = out.get_mut(c)
        {
            *n += 1;
        }
    }
    out
}

/// What to write (pure): `None` when the kernel already has the plan.
pub fn plan_change(observed: Option<&Observed>, want: Option<&PolicyPlan>) -> Option<String> {
    let (Some(have), Some(want)) = (observed, want) else {
        return match (observed, want) {
            (None, None) => None,
            _ => Some(render(want)),
        };
    };
    if have.comment != fingerprint(want) || have.rules != rule_counts(want) {
        return Some(render(Some(want)));
    }
    let mut script = String::new();
    for (name, set) in all_sets(want) {
        let wanted = set.elements();
        if have.sets.get(&name) == Some(&wanted) {
            continue;
        }
        let _ = writeln!(script, "flush set inet {TABLE} {name}");
        if !wanted.is_empty() {
            let _ = writeln!(
                script,
                "add element inet {TABLE} {name} {{ {} }}",
                element_list(&set)
            );
        }
    }
    (!script.is_empty()).then_some(script)
}

/// Reads the table (`None`: there is none).
pub fn observe(runner: &Runner) -> Result<Option<Observed>, FirewallError> {
    match runner.run("nft", &["-j", "list", "table", "inet", TABLE], None) {
        Ok(json) => parse(&json).map(Some).map_err(|detail| FirewallError {
            command: format!("nft -j list table inet {TABLE}"),
            detail,
        }),
        Err(e) if e.detail.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes the kernel hold `want` (`None`: no policy table); returns whether it wrote.
pub fn apply(runner: &Runner, want: Option<&PolicyPlan>) -> Result<bool, FirewallError> {
    let observed = observe(runner)?;
    match plan_change(observed.as_ref(), want) {
        None => Ok(false),
        Some(script) => {
            runner.run("nft", &["-f", "-"], Some(&script))?;
            Ok(true)
        }
    }
}

/// Packets dropped per chain (the `counter drop` rules), from `nft -j list table`.
pub fn drops(runner: &Runner) -> Result<BTreeMap<String, u64>, FirewallError> {
    let json = match runner.run("nft", &["-j", "list", "table", "inet", TABLE], None) {
        Ok(j) => j,
        Err(e) if e.detail.contains("No such file or directory") => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_str(&json).map_err(|e| FirewallError {
        command: "nft -j list table".into(),
        detail: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(r) = item.get("rule") else { continue };
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let dropped = exprs.iter().any(|e| e.get("drop").is_some());
        let packets = exprs
            .iter()
            .find_map(|e| e.get("counter")?.get("packets")?.as_u64());
        if let (true, Some(p)) = (dropped, packets) {
            *out.entry(r["chain"].as_str().unwrap_or_default().to_string())
                .or_default() += p;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_one_match_per_protocol_with_ranges_merged() {
        let list = vec![
            (Protocol::Tcp, Some((9000, 9100))),
            (Protocol::Udp, Some((53, 53))),
            (Protocol::Tcp, Some((8080, 8080))),
            (Protocol::Tcp, Some((9050, 9200))),
            (Protocol::Tcp, Some((9201, 9201))),
            (Protocol::Sctp, None),
            (Protocol::Sctp, Some((1, 1))),
        ];
        assert_eq!(
            port_matches(&list),
            vec![
                "tcp dport { 8080, 9000-9201 }".to_string(),
                "udp dport 53".to_string(),
                "meta l4proto sctp".to_string(),
            ]
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn plan() -> PolicyPlan {
        let mut sets = BTreeMap::new();
        sets.insert(
            "s-web4".to_string(),
            AddrSet::Nets {
                v6: false,
                nets: vec![net("10.244.2.7/32"), net("10.244.1.9/32")],
            },
        );
        sets.insert(
            "s-blk4".to_string(),
            AddrSet::Nets {
                v6: false,
                nets: vec![net("192.0.2.0/24")],
            },
        );
        sets.insert(
            "s-exc4".to_string(),
            AddrSet::Nets {
                v6: false,
                nets: vec![net("192.0.2.128/25")],
            },
        );
        PolicyPlan {
            local_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
            known: vec![ip("10.244.1.5"), ip("fd00:10:244:1::5"), ip("10.244.1.9")],
            pods: vec![PodChains {
                key: "0123456789abcdef".into(),
                name: "default/db".into(),
                ips: vec![ip("10.244.1.5"), ip("fd00:10:244:1::5")],
                ingress: Some(vec![
                    Rule {
                        comment: "default/db-allow ingress[0]".into(),
                        peer: Peer::Sets {
                            v4: Some("s-web4".into()),
                            v6: None,
                            except4: None,
                            except6: None,
                        },
                        ports: Ports::List(vec![(Protocol::Tcp, Some((5432, 5432)))]),
                    },
                    Rule {
                        comment: "default/db-allow ingress[1]".into(),
                        peer: Peer::Sets {
                            v4: Some("s-blk4".into()),
                            v6: None,
                            except4: Some("s-exc4".into()),
                            except6: None,
                        },
                        ports: Ports::Any,
                    },
                ]),
                egress: Some(vec![Rule {
                    comment: "default/dns egress[0]".into(),
                    peer: Peer::Any,
                    ports: Ports::List(vec![
                        (Protocol::Udp, Some((53, 53))),
                        (Protocol::Tcp, Some((8000, 9000))),
                    ]),
                }]),
                ..Default::default()
            }],
            sets,
            log_drops: 0,
        }
    }

    #[test]
    fn renders_one_transaction_with_chains_per_isolated_pod() {
        let s = render(Some(&plan()));
        assert!(s.starts_with("table inet podnet-policy\ndelete table inet podnet-policy\ntable inet podnet-policy {\n"), "{s}");
        assert!(
            s.contains(&format!(
                "ct state established,related accept comment \"{}\"",
                fingerprint(&plan())
            )),
            "{s}"
        );
        for want in [
            "ct state established,related accept",
            "ip saddr @local4 ip saddr != @known4 counter drop",
            "10.244.1.5 : jump pod-0123456789abcdef-in",
            "fd00:10:244:1::5 : jump pod-0123456789abcdef-out",
            "ip saddr @s-web4 tcp dport 5432 accept comment \"default/db-allow ingress[0]\"",
            "ip saddr @s-blk4 ip saddr != @s-exc4 accept comment \"default/db-allow ingress[1]\"",
            "udp dport 53 return comment \"default/dns egress[0]\"",
            "tcp dport 8000-9000 return",
            "counter drop comment \"default/db ingress: no policy allows it\"",
            "add element inet podnet-policy s-web4 { 10.244.1.9, 10.244.2.7 }",
            "add element inet podnet-policy known4 { 10.244.1.5, 10.244.1.9 }",
            "add element inet podnet-policy local6 { fd00:10:244:1::/64 }",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // An IPv4-only peer set yields no IPv6 rule.
        assert!(!s.contains("ip6 saddr @s-web4"), "{s}");
        assert_eq!(
            render(None),
            "table inet podnet-policy\ndelete table inet podnet-policy\n"
        );
    }

    fn observed_as(plan: &PolicyPlan) -> Observed {
        Observed {
            comment: fingerprint(plan),
            rules: rule_counts(plan),
            sets: all_sets(plan)
                .into_iter()
                .map(|(n, s)| (n, s.elements()))
                .collect(),
        }
    }

    #[test]
    fn pod_churn_elsewhere_changes_only_sets_and_nothing_is_written_when_equal() {
        let p = plan();
        let have = observed_as(&p);
        assert_eq!(plan_change(Some(&have), Some(&p)), None, "nothing differs");
        // A web pod on another node came: one set's elements, no rule.
        let mut q = p.clone();
        if let Some(AddrSet::Nets { nets, .. }) = q.sets.get_mut("s-web4") {
            nets.push(net("10.244.3.4/32"));
        }
        let script = plan_change(Some(&have), Some(&q)).unwrap_or_default();
        assert_eq!(
            script,
            "flush set inet podnet-policy s-web4\nadd element inet podnet-policy s-web4 { 10.244.1.9, 10.244.2.7, 10.244.3.4 }\n"
        );
        // A new local pod known (not isolated): only the known set.
        let mut k = p.clone();
        k.known.push(ip("10.244.1.77"));
        assert!(plan_change(Some(&have), Some(&k)).is_some_and(|s| {
            s.starts_with("flush set inet podnet-policy known4\n") && !s.contains("chain")
        }));
        // A rule deleted by hand (one rule fewer): the whole table again.
        let mut drift = have.clone();
        if let Some(n) = drift.rules.get_mut("pod-0123456789abcdef-in") {
            *n -= 1;
        }
        assert!(plan_change(Some(&drift), Some(&p)).is_some_and(|s| {
            s.starts_with("table inet podnet-policy\ndelete table inet podnet-policy\n")
        }));
        // A policy change (structure): the whole table.
        let mut r = p.clone();
        r.pods[0].ingress = None;
        assert!(plan_change(Some(&have), Some(&r)).is_some_and(|s| s.contains("delete table")));
        // No table wanted, one there: deleted; none there: nothing.
        assert_eq!(plan_change(Some(&have), None), Some(render(None)));
        assert_eq!(plan_change(None, None), None);
    }

    #[test]
    fn json_elements_are_normalized_like_the_plan() {
        let json = r#"{"nftables":[{"metainfo":{}},
          {"table":{"family":"inet","name":"podnet-policy","handle":1}},
          {"set":{"family":"inet","name":"s-web4","table":"podnet-policy","type":"ipv4_addr","flags":["interval"],
             "elem":["10.244.1.9",{"prefix":{"addr":"10.244.0.0","len":16}}]}},
          {"set":{"family":"inet","name":"s-np4","table":"podnet-policy","type":["ipv4_addr","inet_proto","inet_service"],
             "elem":[{"concat":["10.244.1.9","tcp",8080]}]}},
          {"chain":{"family":"inet","table":"podnet-policy","name":"forward"}},
          {"rule":{"family":"inet","table":"podnet-policy","chain":"forward","comment":"podnet-policy 00","expr":[{"accept":null}]}},
          {"rule":{"family":"inet","table":"podnet-policy","chain":"forward","expr":[{"counter":{"packets":3,"bytes":180}},{"drop":null}]}}]}"#;
        let o = parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.comment, "podnet-policy 00");
        assert_eq!(o.rules.get("forward"), Some(&2));
        assert_eq!(
            o.sets["s-web4"],
            ["10.244.0.0/16".to_string(), "10.244.1.9".to_string()]
                .into_iter()
                .collect()
        );
        assert_eq!(
            o.sets["s-np4"],
            ["10.244.1.9 . tcp . 8080".to_string()]
                .into_iter()
                .collect()
        );
    }
}
