//! hostPort mappings (the CNI `portMappings` capability), programmed by podnet-cni in
//! the backend the node's daemon chose.
//!
//! The whole node's mappings are rendered from the plugin's per-attachment records and
//! written in one transaction each time they change, so the firewall always holds
//! exactly the records — nothing half-added, nothing left from a crashed ADD once DEL
//! or GC has run. Each rule carries its attachment's host veth name as comment.
//!
//! ```text
//! table inet podnet-hostports {
//!   chain prerouting  { nat prerouting dstnat: fib daddr type local jump hostports }
//!   chain output      { nat output -100: the same, but not for loopback destinations;
//!                       ip daddr 127.0.0.0/8 jump loopback }
//!   chain hostports   { [ip daddr <hostIP>] tcp dport <hostPort> dnat ip to <pod>:<port> }
//!   chain loopback    { ip daddr 127.0.0.1 tcp dport <hostPort> dnat ip to <pod>:<port> }
//!   chain postrouting { nat postrouting srcnat: a pod of this node reaching a hostPort
//!                       (its own: hairpin) is masqueraded, so the reply comes back
//!                       through the host and is un-DNATed; so is the node itself
//!                       reaching a loopback hostPort (source 127.0.0.1) }
//!   chain guard       { filter input: nothing but replies reaches 127.0.0.0/8 from
//!                       outside lo }
//! }
//! ```
//!
//! A hostPort on a loopback hostIP (IPv4 only, as the reference portmap plugin) is
//! reachable from the node itself: podnet-cni sets `route_localnet` on its bridge while
//! such a mapping exists (a DNATed packet from 127.0.0.1 may then leave through it), and
//! the `guard` keeps that from opening the node's loopback services to pods
//! (CVE-2020-8558): only replies to the node's own connections get through.
//!
//! iptables: chains `PODNET-HOSTPORTS` (jumped to from PREROUTING and OUTPUT for local
//! destinations), `PODNET-HOSTPORTS-LOCAL` (IPv4: from OUTPUT for 127.0.0.0/8) and
//! `PODNET-HOSTPORTS-MASQ` (from POSTROUTING) in the nat table, per family, replaced as a
//! whole with one `iptables-restore --noflush`; `PODNET-HOSTPORTS-GUARD` (filter, from
//! INPUT) while a loopback mapping exists.
//!
//! Everything but [`program`], [`remove_from`] and [`verify`] is pure.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::iptables::{Iptables, Owned, Variant};
use crate::{Backend, FirewallError, Runner};

/// The nftables table.
pub const TABLE: &str = "podnet-hostports";
/// The iptables DNAT chain.
pub const CHAIN: &str = "PODNET-HOSTPORTS";
/// The iptables masquerade chain (local pods reaching a hostPort).
pub const MASQ_CHAIN: &str = "PODNET-HOSTPORTS-MASQ";
/// The iptables DNAT chain of loopback hostIPs (IPv4; from OUTPUT).
pub const LOCAL_CHAIN: &str = "PODNET-HOSTPORTS-LOCAL";
/// The iptables filter chain that keeps 127.0.0.0/8 closed to pods.
pub const GUARD_CHAIN: &str = "PODNET-HOSTPORTS-GUARD";
/// The guard: towards 127.0.0.0/8 from outside lo, replies (to the node's own
/// connections) only; invalid and untracked packets are dropped too. (nft's
/// `ct state != established,related` compares the whole bitmask and drops replies.)
const NFT_GUARD: [&str; 2] = [
    "iif != \"lo\" ip daddr 127.0.0.0/8 ct direction reply accept",
    "iif != \"lo\" ip daddr 127.0.0.0/8 drop",
];
/// The guard rule, as `iptables-save` prints it.
const GUARD_RULE: &str = "-A PODNET-HOSTPORTS-GUARD -d 127.0.0.0/8 ! -i lo -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP";

const HOOKS4: [&str; 4] = [
    "-A PREROUTING -m comment --comment \"podnet hostports\" -m addrtype --dst-type LOCAL -j PODNET-HOSTPORTS",
    "-A OUTPUT ! -d 127.0.0.0/8 -m comment --comment \"podnet hostports\" -m addrtype --dst-type LOCAL -j PODNET-HOSTPORTS",
    "-A OUTPUT -d 127.0.0.0/8 -m comment --comment \"podnet hostports loopback\" -j PODNET-HOSTPORTS-LOCAL",
    "-A POSTROUTING -m comment --comment \"podnet hostports\" -j PODNET-HOSTPORTS-MASQ",
];
const HOOKS6: [&str; 3] = [
    "-A PREROUTING -m comment --comment \"podnet hostports\" -m addrtype --dst-type LOCAL -j PODNET-HOSTPORTS",
    "-A OUTPUT ! -d ::1/128 -m comment --comment \"podnet hostports\" -m addrtype --dst-type LOCAL -j PODNET-HOSTPORTS",
    "-A POSTROUTING -m comment --comment \"podnet hostports\" -j PODNET-HOSTPORTS-MASQ",
];

const GUARD_HOOKS: [&str; 1] =
    ["-A INPUT -m comment --comment \"podnet hostports loopback\" -j PODNET-HOSTPORTS-GUARD"];

/// podnet's nat chains of one family, in the order of [`iptables_rules`]' lists.
fn owned(v6: bool) -> Owned<'static> {
    if v6 {
        Owned {
            table: "nat",
            chains: &[CHAIN, MASQ_CHAIN],
            hooks: &HOOKS6,
        }
    } else {
        Owned {
            table: "nat",
            chains: &[CHAIN, MASQ_CHAIN, LOCAL_CHAIN],
            hooks: &HOOKS4,
        }
    }
}

const GUARD: Owned<'static> = Owned {
    table: "filter",
    chains: &[GUARD_CHAIN],
    hooks: &GUARD_HOOKS,
};

/// A transport protocol a hostPort can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The name nft and iptables use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One entry of `runtimeConfig.portMappings`, validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The node's port.
    pub host_port: u16,
    /// The pod's port.
    pub container_port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// Only this node address (`None`: every local address of the family, or of both
    /// families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// Parses and validates one runtime entry (`{"hostPort": 8080, "containerPort": 80,
    /// "protocol": "tcp", "hostIP": ""}`; protocol defaults to TCP, an empty or
    /// unspecified hostIP means every address).
    ///
    /// Keys match case-insensitively, as Go's `encoding/json` (which the reference
    /// plugins use) matches them: containerd's go-cni sends `HostPort`, `ContainerPort`,
    /// `Protocol` and `HostIP`.
    pub fn from_runtime(v: &Value) -> Result<Self, String> {
        let field = |key: &str| -> Option<&Value> {
            v.as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        let port = |key: &str| -> Result<u16, String> {
            let n = field(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("{key} is missing or not a number in {v}"))?;
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{key} {n} is outside 1..65535"))
        };
        let host_port = port("hostPort")?;
        let container_port = port("containerPort")?;
        let protocol = match field("protocol").and_then(Value::as_str) {
            None | Some("") => Protocol::Tcp,
            Some(p) => match p.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return Err(format!("protocol {p:?} is not TCP, UDP or SCTP")),
            },
        };
        let host_ip = match field("hostIP").and_then(Value::as_str) {
            None | Some("") => None,
            Some(s) => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| format!("hostIP {s:?} is not an IP address"))?;
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        match host_ip {
            Some(ip) if ip.is_multicast() => {
                return Err(format!("hostIP {ip} cannot take a hostPort (multicast)"));
            }
            Some(ip @ IpAddr::V6(_)) if ip.is_loopback() => {
                return Err(format!(
                    "hostIP {ip} cannot take a hostPort (IPv6 loopback cannot be forwarded to a pod; 127.0.0.1 can)"
                ));
            }
            _ => {}
        }
        Ok(Self {
            host_port,
            container_port,
            protocol,
            host_ip,
        })
    }

    /// Whether its hostIP is an IPv4 loopback address (reachable from the node only).
    pub fn is_loopback(&self) -> bool {
        self.host_ip.is_some_and(|ip| ip.is_loopback())
    }

    fn describe(&self) -> String {
        format!(
            "hostPort {}/{} on {}",
            self.host_port,
            self.protocol.as_str().to_uppercase(),
            self.host_ip
                .map_or_else(|| "every node address".to_string(), |ip| ip.to_string())
        )
    }
}

/// One attachment's mappings, as podnet-cni records them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Its host veth name: the rules' comment.
    pub owner: String,
    /// The container ID (for messages).
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// Its mappings.
    pub mappings: Vec<PortMapping>,
}

/// One DNAT: a mapping applied to one pod address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnat<'a> {
    /// The attachment.
    pub owner: &'a str,
    /// The mapping.
    pub mapping: &'a PortMapping,
    /// The pod address it leads to.
    pub pod_ip: IpAddr,
}

impl Attachment {
    /// Every DNAT of this attachment: each mapping to each pod address of its family
    /// (a mapping with a hostIP only to the address of that family).
    pub fn dnats(&self) -> Vec<Dnat<'_>> {
        let mut out = Vec::new();
        for m in &self.mappings {
            for ip in &self.ips {
                if m.host_ip.is_none_or(|h| h.is_ipv6() == ip.is_ipv6()) {
                    out.push(Dnat {
                        owner: &self.owner,
                        mapping: m,
                        pod_ip: *ip,
                    });
                }
            }
        }
        out
    }

    /// Why these mappings cannot be programmed on their own (a hostIP of a family the
    /// pod has no address of, or one mapping given twice).
    pub fn validate(&self) -> Result<(), String> {
        for m in &self.mappings {
            if let Some(h) = m.host_ip
                && !self.ips.iter().any(|ip| ip.is_ipv6() == h.is_ipv6())
            {
                return Err(format!(
                    "{}: the pod has no {} address",
                    m.describe(),
                    if h.is_ipv6() { "IPv6" } else { "IPv4" }
                ));
            }
        }
        let mine = self.dnats();
        for (i, a) in mine.iter().enumerate() {
            if mine[..i].iter().any(|b| clash(a, b)) {
                return Err(format!("{} is mapped twice", a.mapping.describe()));
            }
        }
        Ok(())
    }
}

/// Two DNATs that would catch the same packets: same family, protocol and port, and
/// overlapping addresses (either on every address, or the same one).
fn clash(a: &Dnat<'_>, b: &Dnat<'_>) -> bool {
    a.pod_ip.is_ipv6() == b.pod_ip.is_ipv6()
        && a.mapping.protocol == b.mapping.protocol
        && a.mapping.host_port == b.mapping.host_port
        && (a.mapping.host_ip.is_none()
            || b.mapping.host_ip.is_none()
            || a.mapping.host_ip == b.mapping.host_ip)
}

/// The first of `new`'s mappings another attachment already holds, described.
pub fn conflict(new: &Attachment, others: &[Attachment]) -> Option<String> {
    for a in new.dnats() {
        for other in others.iter().filter(|o| o.owner != new.owner) {
            if let Some(b) = other.dnats().iter().find(|b| clash(&a, b)) {
                return Some(format!(
                    "{} is taken on this node by container {} ({})",
                    a.mapping.describe(),
                    other.container_id,
                    b.mapping.describe()
                ));
            }
        }
    }
    None
}

fn nft_dnat(d: &Dnat<'_>) -> String {
    let m = d.mapping;
    let (fam, to) = match d.pod_ip {
        IpAddr::V4(ip) => ("ip", format!("{ip}:{}", m.container_port)),
        IpAddr::V6(ip) => ("ip6", format!("[{ip}]:{}", m.container_port)),
    };
    let dst = match m.host_ip {
        Some(h) => format!("{fam} daddr {h}"),
        None => format!(
            "meta nfproto {}",
            if d.pod_ip.is_ipv6() { "ipv6" } else { "ipv4" }
        ),
    };
    format!(
        "{dst} {proto} dport {hp} dnat {fam} to {to} comment \"{owner}\"",
        proto = m.protocol.as_str(),
        hp = m.host_port,
        owner = d.owner
    )
}

fn nft_masq(d: &Dnat<'_>, source: &IpNet) -> String {
    let m = d.mapping;
    let fam = if d.pod_ip.is_ipv6() { "ip6" } else { "ip" };
    format!(
        "{fam} saddr {source} {fam} daddr {ip} {proto} dport {cp} ct status dnat ct original proto-dst {hp} masquerade comment \"{owner}\"",
        ip = d.pod_ip,
        proto = m.protocol.as_str(),
        cp = m.container_port,
        hp = m.host_port,
        owner = d.owner
    )
}

fn local_cidr(pod_cidrs: &[IpNet], ip: IpAddr) -> Option<&IpNet> {
    pod_cidrs.iter().find(|c| c.contains(&ip))
}

/// The IPv4 loopback range: the source of the node's own connections to a loopback
/// hostPort.
fn loopback_net() -> IpNet {
    IpNet::from(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default())
}

/// The rules of the nftables chains, as `nft list` prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftRules {
    /// `hostports`: mappings on every node address or a given one.
    pub dnat: Vec<String>,
    /// `loopback`: mappings on a loopback hostIP.
    pub loopback: Vec<String>,
    /// `postrouting`: hairpin and loopback masquerade.
    pub masq: Vec<String>,
}

impl NftRules {
    /// Every rule.
    pub fn all(self) -> impl Iterator<Item = String> {
        self.dnat.into_iter().chain(self.loopback).chain(self.masq)
    }
}

/// The rules of the table's chains for `all`.
pub fn nft_rules(all: &[Attachment], pod_cidrs: &[IpNet]) -> NftRules {
    let mut out = NftRules::default();
    for a in all {
        for d in a.dnats() {
            if d.mapping.is_loopback() {
                out.loopback.push(nft_dnat(&d));
                out.masq.push(nft_masq(&d, &loopback_net()));
                continue;
            }
            out.dnat.push(nft_dnat(&d));
            if let Some(c) = local_cidr(pod_cidrs, d.pod_ip) {
                out.masq.push(nft_masq(&d, c));
            }
        }
    }
    out
}

/// The `nft -f` script that makes the table hold exactly `all`'s mappings (deleting it
/// when there are none), in one transaction.
pub fn render_nft(all: &[Attachment], pod_cidrs: &[IpNet]) -> String {
    let rules = nft_rules(all, pod_cidrs);
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if rules.dnat.is_empty() && rules.loopback.is_empty() {
        return s;
    }
    // One chain: its `type ... hook ...` line for a base chain, then its rules.
    let chain = |s: &mut String, name: &str, base: Option<&str>, rules: &[String]| {
        s.push_str(&format!("  chain {name} {{\n"));
        for line in base.into_iter().chain(rules.iter().map(String::as_str)) {
            s.push_str(&format!("    {line}\n"));
        }
        s.push_str("  }\n");
    };
    let lines = |l: &[&str]| l.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    s.push_str(&format!("table inet {TABLE} {{\n"));
    chain(
        &mut s,
        "prerouting",
        Some("type nat hook prerouting priority dstnat; policy accept;"),
        &lines(&["fib daddr type local jump hostports"]),
    );
    let mut output = lines(&[
        "ip daddr != 127.0.0.0/8 fib daddr type local jump hostports",
        "ip6 daddr != ::1 fib daddr type local jump hostports",
    ]);
    if !rules.loopback.is_empty() {
        output.push("ip daddr 127.0.0.0/8 jump loopback".into());
    }
    chain(
        &mut s,
        "output",
        Some("type nat hook output priority -100; policy accept;"),
        &output,
    );
    chain(&mut s, "hostports", None, &rules.dnat);
    if !rules.loopback.is_empty() {
        chain(&mut s, "loopback", None, &rules.loopback);
    }
    chain(
        &mut s,
        "postrouting",
        Some("type nat hook postrouting priority srcnat; policy accept;"),
        &rules.masq,
    );
    if !rules.loopback.is_empty() {
        chain(
            &mut s,
            "guard",
            Some("type filter hook input priority filter; policy accept;"),
            &lines(&NFT_GUARD),
        );
    }
    s.push_str("}\n");
    s
}

/// Whether any of `all`'s mappings is on a loopback hostIP (the bridge then needs
/// `route_localnet`, and the guard is in place).
pub fn any_loopback(all: &[Attachment]) -> bool {
    all.iter()
        .any(|a| a.mappings.iter().any(PortMapping::is_loopback))
}

/// The two chains' rules for one family, exactly as `iptables-save` prints them (a
/// comment without spaces unquoted).
pub fn iptables_rules(all: &[Attachment], pod_cidrs: &[IpNet], v6: bool) -> Vec<Vec<String>> {
    let mut dnat = Vec::new();
    let mut masq = Vec::new();
    let mut local = Vec::new();
    for a in all {
        for d in a.dnats().into_iter().filter(|d| d.pod_ip.is_ipv6() == v6) {
            let m = d.mapping;
            let p = m.protocol.as_str();
            let host = m
                .host_ip
                .map(|h| format!(" -d {h}/{}", if v6 { 128 } else { 32 }))
                .unwrap_or_default();
            let to = if v6 {
                format!("[{}]:{}", d.pod_ip, m.container_port)
            } else {
                format!("{}:{}", d.pod_ip, m.container_port)
            };
            let loopback = m.is_loopback();
            (if loopback { &mut local } else { &mut dnat }).push(format!(
                "-A {chain}{host} -p {p} -m comment --comment {o} -m {p} --dport {hp} -j DNAT --to-destination {to}",
                chain = if loopback { LOCAL_CHAIN } else { CHAIN },
                o = d.owner,
                hp = m.host_port
            ));
            let source = if loopback {
                Some(loopback_net())
            } else {
                local_cidr(pod_cidrs, d.pod_ip).copied()
            };
            if let Some(c) = source {
                masq.push(format!(
                    "-A {MASQ_CHAIN} -s {c} -d {ip}/{bits} -p {p} -m comment --comment {o} -m {p} --dport {cp} -m conntrack --ctstate DNAT --ctorigdstport {hp} -j MASQUERADE",
                    ip = d.pod_ip,
                    bits = if v6 { 128 } else { 32 },
                    o = d.owner,
                    cp = m.container_port,
                    hp = m.host_port
                ));
            }
        }
    }
    if v6 {
        vec![dnat, masq]
    } else {
        vec![dnat, masq, local]
    }
}

fn nft_table_exists(runner: &Runner) -> Result<bool, FirewallError> {
    let tables = runner.run("nft", &["list", "tables", "inet"], None)?;
    Ok(tables
        .lines()
        .any(|l| l.trim() == format!("table inet {TABLE}")))
}

/// Writes `all` into `backend` (one transaction per table) and removes podnet's
/// hostPort rules from every other backend, so a node whose firewall changed converges
/// at the next change.
pub fn program(
    backend: Backend,
    runner: &Runner,
    all: &[Attachment],
    pod_cidrs: &[IpNet],
) -> Result<(), FirewallError> {
    match Variant::of(backend) {
        None => {
            runner.run("nft", &["-f", "-"], Some(&render_nft(all, pod_cidrs)))?;
        }
        Some(variant) => {
            let ipt = Iptables {
                runner: runner.clone(),
                variant,
            };
            // The guard goes in before the first loopback mapping and out after the last.
            let guard = any_loopback(all).then(|| vec![vec![GUARD_RULE.to_string()]]);
            if guard.is_some() {
                ipt.sync(false, GUARD, guard.as_deref())?;
            }
            for v6 in [false, true] {
                let rules = iptables_rules(all, pod_cidrs, v6);
                let want = (!rules.iter().all(Vec::is_empty)).then_some(rules);
                ipt.sync(v6, owned(v6), want.as_deref())?;
            }
            if guard.is_none() {
                ipt.sync(false, GUARD, None)?;
            }
        }
    }
    for other in Backend::ALL.into_iter().filter(|b| *b != backend) {
        remove_from(other, runner)?;
    }
    Ok(())
}

/// Removes podnet's hostPort rules from one backend; whether there were any.
pub fn remove_from(backend: Backend, runner: &Runner) -> Result<bool, FirewallError> {
    match Variant::of(backend) {
        None => {
            if !nft_table_exists(runner)? {
                return Ok(false);
            }
            runner.run(
                "nft",
                &["-f", "-"],
                Some(&format!("delete table inet {TABLE}\n")),
            )?;
            Ok(true)
        }
        Some(variant) => {
            let ipt = Iptables {
                runner: runner.clone(),
                variant,
            };
            let mut any = false;
            for v6 in [false, true] {
                any |= ipt.sync(v6, owned(v6), None)?;
            }
            any |= ipt.sync(false, GUARD, None)?;
            Ok(any)
        }
    }
}

/// CHECK: every rule of `attachment` is in `backend`; else what is missing.
pub fn verify(
    backend: Backend,
    runner: &Runner,
    attachment: &Attachment,
    pod_cidrs: &[IpNet],
) -> Result<(), String> {
    let one = std::slice::from_ref(attachment);
    let missing: Vec<String> = match Variant::of(backend) {
        None => {
            let listed = runner
                .run("nft", &["list", "table", "inet", TABLE], None)
                .map_err(|e| e.to_string())?;
            let have: Vec<&str> = listed.lines().map(str::trim).collect();
            nft_rules(one, pod_cidrs)
                .all()
                .filter(|r| !have.contains(&r.as_str()))
                .collect()
        }
        Some(variant) => {
            let ipt = Iptables {
                runner: runner.clone(),
                variant,
            };
            let mut missing = Vec::new();
            for v6 in [false, true] {
                let want = iptables_rules(one, pod_cidrs, v6);
                if want.iter().all(Vec::is_empty) {
                    continue;
                }
                let save = ipt.save(v6, "nat").map_err(|e| e.to_string())?;
                let have: Vec<&str> = save.lines().collect();
                missing.extend(
                    want.into_iter()
                        .flatten()
                        .chain(owned(v6).hooks.iter().map(|h| h.to_string()))
                        .filter(|r| !have.contains(&r.as_str())),
                );
            }
            missing
        }
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} hostPort rule(s) missing from {backend}: {}",
            missing.len(),
            missing.join(" | ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn att(owner: &str, ips: &[&str], mappings: Vec<PortMapping>) -> Attachment {
        Attachment {
            owner: owner.into(),
            container_id: format!("c-{owner}"),
            ips: ips.iter().filter_map(|s| s.parse().ok()).collect(),
            mappings,
        }
    }

    fn pm(v: Value) -> PortMapping {
        PortMapping::from_runtime(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    #[test]
    fn runtime_entries_are_validated() {
        let m = pm(json!({"hostPort": 8080, "containerPort": 80, "protocol": "TCP", "hostIP": ""}));
        assert_eq!(
            (m.host_port, m.container_port, m.protocol, m.host_ip),
            (8080, 80, Protocol::Tcp, None)
        );
        assert_eq!(
            pm(json!({"hostPort": 1, "containerPort": 2})).protocol,
            Protocol::Tcp
        );
        assert_eq!(
            pm(json!({"hostPort": 1, "containerPort": 2, "hostIP": "0.0.0.0"})).host_ip,
            None
        );
        assert_eq!(
            pm(json!({"hostPort": 1, "containerPort": 2, "hostIP": "::"})).host_ip,
            None
        );
        assert_eq!(
            pm(json!({"hostPort": 1, "containerPort": 2, "protocol": "sctp"})).protocol,
            Protocol::Sctp
        );
        for bad in [
            json!({"hostPort": 0, "containerPort": 80}),
            json!({"hostPort": 70000, "containerPort": 80}),
            json!({"hostPort": 80}),
            json!({"hostPort": "80", "containerPort": 80}),
            json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}),
            json!({"hostPort": 80, "containerPort": 80, "hostIP": "nope"}),
            json!({"hostPort": 80, "containerPort": 80, "hostIP": "::1"}),
            json!({"hostPort": 80, "containerPort": 80, "hostIP": "224.0.0.1"}),
        ] {
            assert!(PortMapping::from_runtime(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_loopback_host_ip_is_reached_from_the_node_only_and_guarded() {
        let lo = pm(json!({"hostPort": 54323, "containerPort": 8080, "hostIP": "127.0.0.1"}));
        assert!(lo.is_loopback());
        let a = att("pnl", &["10.244.1.5", "fd00::5"], vec![lo]);
        assert_eq!(a.dnats().len(), 1, "IPv4 only");
        let cidrs: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let rules = nft_rules(std::slice::from_ref(&a), &cidrs);
        assert!(
            rules.dnat.is_empty(),
            "not in the chain every node address reaches"
        );
        assert_eq!(
            rules.loopback,
            ["ip daddr 127.0.0.1 tcp dport 54323 dnat ip to 10.244.1.5:8080 comment \"pnl\""]
        );
        assert_eq!(
            rules.masq,
            [
                "ip saddr 127.0.0.0/8 ip daddr 10.244.1.5 tcp dport 8080 ct status dnat ct original proto-dst 54323 masquerade comment \"pnl\""
            ]
        );
        let script = render_nft(std::slice::from_ref(&a), &cidrs);
        assert!(
            script.contains("ip daddr 127.0.0.0/8 jump loopback"),
            "{script}"
        );
        assert!(
            script.contains("type filter hook input priority filter"),
            "{script}"
        );
        assert!(NFT_GUARD.iter().all(|g| script.contains(g)), "{script}");
        assert!(any_loopback(std::slice::from_ref(&a)));

        let v4 = iptables_rules(std::slice::from_ref(&a), &cidrs, false);
        assert!(v4[0].is_empty());
        assert_eq!(
            v4[2],
            [
                "-A PODNET-HOSTPORTS-LOCAL -d 127.0.0.1/32 -p tcp -m comment --comment pnl -m tcp --dport 54323 -j DNAT --to-destination 10.244.1.5:8080"
            ]
        );
        assert_eq!(
            v4[1],
            [
                "-A PODNET-HOSTPORTS-MASQ -s 127.0.0.0/8 -d 10.244.1.5/32 -p tcp -m comment --comment pnl -m tcp --dport 8080 -m conntrack --ctstate DNAT --ctorigdstport 54323 -j MASQUERADE"
            ]
        );
        assert!(
            iptables_rules(std::slice::from_ref(&a), &cidrs, true)
                .iter()
                .all(Vec::is_empty)
        );

        // Without loopback mappings: no loopback chain, no guard.
        let any = att(
            "pna",
            &["10.244.1.6"],
            vec![pm(json!({"hostPort": 80, "containerPort": 80}))],
        );
        let script = render_nft(std::slice::from_ref(&any), &cidrs);
        assert!(
            !script.contains("loopback") && !script.contains("guard"),
            "{script}"
        );
        assert!(!any_loopback(std::slice::from_ref(&any)));
    }

    #[test]
    fn mappings_apply_per_family_and_conflicts_are_found() {
        let any = pm(json!({"hostPort": 8080, "containerPort": 80}));
        let a = att("pna", &["10.244.1.5", "fd00::5"], vec![any.clone()]);
        assert_eq!(a.dnats().len(), 2, "both families");
        let v4_only = pm(json!({"hostPort": 8080, "containerPort": 80, "hostIP": "198.18.0.1"}));
        assert_eq!(
            att("pnb", &["10.244.1.6", "fd00::6"], vec![v4_only.clone()])
                .dnats()
                .len(),
            1
        );
        // Same port on every address vs one address: a conflict; other protocol: none.
        let b = att("pnb", &["10.244.1.6"], vec![v4_only.clone()]);
        assert!(conflict(&b, std::slice::from_ref(&a)).is_some_and(|m| m.contains("c-pna")));
        let udp = att(
            "pnc",
            &["10.244.1.7"],
            vec![pm(
                json!({"hostPort": 8080, "containerPort": 80, "protocol": "udp"}),
            )],
        );
        assert_eq!(conflict(&udp, &[a.clone(), b.clone()]), None);
        // Two different hostIPs of one family share a port.
        let other_ip = att(
            "pnd",
            &["10.244.1.8"],
            vec![pm(
                json!({"hostPort": 8080, "containerPort": 80, "hostIP": "198.18.0.2"}),
            )],
        );
        assert_eq!(conflict(&other_ip, std::slice::from_ref(&b)), None);
        // An IPv6-only pod does not clash with an IPv4 hostIP mapping.
        let v6pod = att("pne", &["fd00::9"], vec![any.clone()]);
        assert_eq!(conflict(&v6pod, std::slice::from_ref(&b)), None);
        assert!(conflict(&v6pod, std::slice::from_ref(&a)).is_some());
        // The same attachment again (a retried ADD) is not a conflict with itself.
        assert_eq!(conflict(&a, std::slice::from_ref(&a)), None);
        // Validation: a hostIP of a family the pod lacks, a mapping twice.
        assert!(att("pnf", &["fd00::1"], vec![v4_only]).validate().is_err());
        assert!(
            att("png", &["10.244.1.9"], vec![any.clone(), any])
                .validate()
                .is_err()
        );
    }

    #[test]
    fn nft_script_is_one_transaction_with_hairpin_masquerade() {
        let cidrs: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().unwrap_or_else(|e| panic!("{e}")),
            "fd00::/64".parse().unwrap_or_else(|e| panic!("{e}")),
        ];
        let a = att(
            "pn0123456789ab",
            &["10.244.1.5", "fd00::5"],
            vec![
                pm(json!({"hostPort": 8080, "containerPort": 80})),
                pm(
                    json!({"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "198.18.0.1"}),
                ),
            ],
        );
        let s = render_nft(std::slice::from_ref(&a), &cidrs);
        assert!(s.starts_with("table inet podnet-hostports\ndelete table inet podnet-hostports\ntable inet podnet-hostports {\n"), "{s}");
        for want in [
            "meta nfproto ipv4 tcp dport 8080 dnat ip to 10.244.1.5:80 comment \"pn0123456789ab\"",
            "meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::5]:80 comment \"pn0123456789ab\"",
            "ip daddr 198.18.0.1 udp dport 53 dnat ip to 10.244.1.5:5353 comment \"pn0123456789ab\"",
            "ip saddr 10.244.1.0/24 ip daddr 10.244.1.5 tcp dport 80 ct status dnat ct original proto-dst 8080 masquerade comment \"pn0123456789ab\"",
            "fib daddr type local jump hostports",
        ] {
            assert!(s.contains(want), "missing {want} in\n{s}");
        }
        assert!(
            !s.contains("daddr 198.18.0.1 udp dport 53 dnat ip6"),
            "a v4 hostIP maps only the v4 address"
        );
        // Nothing left: the table is deleted, nothing recreated.
        assert_eq!(
            render_nft(&[], &cidrs),
            "table inet podnet-hostports\ndelete table inet podnet-hostports\n"
        );
    }

    #[test]
    fn iptables_rules_are_what_iptables_save_prints() {
        let cidrs: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let a = att(
            "pn0123456789ab",
            &["10.244.1.5", "fd00::5"],
            vec![pm(
                json!({"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}),
            )],
        );
        let v4 = iptables_rules(std::slice::from_ref(&a), &cidrs, false);
        assert_eq!(
            v4[0],
            [
                "-A PODNET-HOSTPORTS -p sctp -m comment --comment pn0123456789ab -m sctp --dport 8080 -j DNAT --to-destination 10.244.1.5:80"
            ]
        );
        assert_eq!(
            v4[1],
            [
                "-A PODNET-HOSTPORTS-MASQ -s 10.244.1.0/24 -d 10.244.1.5/32 -p sctp -m comment --comment pn0123456789ab -m sctp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -j MASQUERADE"
            ]
        );
        let v6 = iptables_rules(std::slice::from_ref(&a), &cidrs, true);
        assert_eq!(
            v6[0],
            [
                "-A PODNET-HOSTPORTS -p sctp -m comment --comment pn0123456789ab -m sctp --dport 8080 -j DNAT --to-destination [fd00::5]:80"
            ]
        );
        assert!(
            v6[1].is_empty(),
            "no IPv6 pod CIDR given: no masquerade rule"
        );
    }
}
