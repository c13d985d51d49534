//! The nftables driver: one table, `inet podnet`, that podnet alone owns.
//!
//! ```text
//! table inet podnet {
//!   set masq-src4 / masq-src6   this node's pod CIDRs               (interval sets)
//!   set no-masq4 / no-masq6     destinations that keep the pod's address
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip  saddr @masq-src4 ip  daddr != @no-masq4 masquerade
//!     ip6 saddr @masq-src6 ip6 daddr != @no-masq6 masquerade }
//! }
//! ```
//!
//! Applied through the `nft` command (as kube-proxy's nftables mode does): a check reads
//! the table as JSON; when only set elements differ, one transaction replaces just those
//! sets' elements; when anything else differs (a rule or chain changed by hand, a
//! missing set), one transaction deletes and recreates the whole table — no half state
//! is ever visible. Nothing is written when nothing differs. [`plan`] is pure.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::Value;

use crate::{Backend, FirewallError, MasqueradePlan, NatTable, Runner};

/// The table's family and name.
pub const TABLE: &str = "podnet";
/// The comment on each of podnet's rules: a rule without it is not podnet's.
const RULE_COMMENT: &str = "podnet-masq-v1";
/// The sets, by family: (source set, exempt set).
const SETS: [(&str, &str, &str, bool); 2] = [
    ("masq-src4", "no-masq4", "ipv4_addr", false),
    ("masq-src6", "no-masq6", "ipv6_addr", true),
];

/// What `nft -j list table inet podnet` showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chains: name → (type, hook, priority).
    pub chains: BTreeMap<String, (String, String, i64)>,
    /// Rules: (chain, comment) in order.
    pub rules: Vec<(String, String)>,
    /// Sets: name → (type, elements).
    pub sets: BTreeMap<String, (String, Vec<IpNet>)>,
}

/// Parses the JSON of `nft -j list table`.
pub fn parse(json: &str) -> Result<Observed, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Observed::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            out.chains.insert(
                c["name"].as_str().unwrap_or_default().to_string(),
                (
                    c["type"].as_str().unwrap_or_default().to_string(),
                    c["hook"].as_str().unwrap_or_default().to_string(),
                    c["prio"].as_i64().unwrap_or_default(),
                ),
            );
        } else if let Some(r) = item.get("rule") {
            out.rules.push((
                r["chain"].as_str().unwrap_or_default().to_string(),
                r["comment"].as_str().unwrap_or_default().to_string(),
            ));
        } else if let Some(s) = item.get("set") {
            let elements = s["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .map(element)
                .collect::<Result<Vec<_>, _>>()?;
            out.sets.insert(
                s["name"].as_str().unwrap_or_default().to_string(),
                (s["type"].as_str().unwrap_or_default().to_string(), elements),
            );
        }
    }
    Ok(out)
}

/// One set element: an address (`"10.0.0.1"`) or a prefix (`{"prefix": {...}}`).
fn element(e: &Value) -> Result<IpNet, String> {
    if let Some(a) = e.as_str() {
        return a
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("set element {a:?}"));
    }
    let p = &e["prefix"];
    let addr = p["addr"].as_str().unwrap_or_default();
    let len = p["len"].as_u64().unwrap_or(255);
    format!("{addr}/{len}")
        .parse::<IpNet>()
        .map_err(|_| format!("set element {e}"))
}

/// What a pass must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing differs.
    None,
    /// Only set elements differ: this script replaces them.
    Sets(String),
    /// The table is missing or not as podnet makes it: this script recreates it.
    Replace(String),
    /// podnet wants no table: this script deletes it.
    Delete(String),
}

fn family(plan: &MasqueradePlan, v6: bool) -> (Vec<IpNet>, Vec<IpNet>) {
    let of = |nets: &[IpNet]| -> Vec<IpNet> {
        let mut v: Vec<IpNet> = nets
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .map(IpNet::trunc)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    (of(&plan.sources), of(&plan.exempt))
}

fn elements(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return String::new();
    }
    let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
    format!("elements = {{ {} }}", list.join(", "))
}

/// The whole table, created from nothing (after deleting any old one) in one script.
pub fn render(plan: &MasqueradePlan) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for (src, exempt, ty, v6) in SETS {
        let (sources, exempts) = family(plan, v6);
        s.push_str(&format!(
            "  set {src} {{ type {ty}; flags interval; {} }}\n",
            elements(&sources)
        ));
        s.push_str(&format!(
            "  set {exempt} {{ type {ty}; flags interval; {} }}\n",
            elements(&exempts)
        ));
    }
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for (src, exempt, _, v6) in SETS {
        let proto = if v6 { "ip6" } else { "ip" };
        s.push_str(&format!(
            "    {proto} saddr @{src} {proto} daddr != @{exempt} masquerade comment \"{RULE_COMMENT}\"\n"
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// Decides what to change (pure): `observed` is `None` when the table does not exist.
pub fn plan(observed: Option<&Observed>, want: Option<&MasqueradePlan>) -> Change {
    let (Some(have), Some(want)) = (observed, want) else {
        return match (observed, want) {
            (None, None) => Change::None,
            (Some(_), None) => Change::Delete(format!("delete table inet {TABLE}\n")),
            (_, Some(want)) => Change::Replace(render(want)),
        };
    };
    let structure_ok = have.chains.len() == 1
        && have.chains.get("postrouting")
            == Some(&("nat".to_string(), "postrouting".to_string(), 100))
        && have.rules
            == vec![
                ("postrouting".to_string(), RULE_COMMENT.to_string()),
                ("postrouting".to_string(), RULE_COMMENT.to_string()),
            ]
        && have.sets.len() == 4
        && SETS.iter().all(|(src, exempt, ty, _)| {
            [src, exempt]
                .iter()
                .all(|name| have.sets.get(**name).is_some_and(|(t, _)| t == ty))
        });
    if !structure_ok {
        return Change::Replace(render(want));
    }
    let mut script = String::new();
    for (src, exempt, _, v6) in SETS {
        let (sources, exempts) = family(want, v6);
        for (name, wanted) in [(src, sources), (exempt, exempts)] {
            let mut current = have
                .sets
                .get(name)
                .map(|(_, e)| e.clone())
                .unwrap_or_default();
            current.sort();
            if current != wanted {
                script.push_str(&format!("flush set inet {TABLE} {name}\n"));
                if !wanted.is_empty() {
                    let list: Vec<String> = wanted.iter().map(ToString::to_string).collect();
                    script.push_str(&format!(
                        "add element inet {TABLE} {name} {{ {} }}\n",
                        list.join(", ")
                    ));
                }
            }
        }
    }
    if script.is_empty() {
        Change::None
    } else {
        Change::Sets(script)
    }
}

/// The nftables driver.
#[derive(Debug)]
pub struct Nftables {
    /// Runs `nft`.
    pub runner: Runner,
}

impl Nftables {
    fn observe(&self) -> Result<Option<Observed>, FirewallError> {
        match self
            .runner
            .run("nft", &["-j", "list", "table", "inet", TABLE], None)
        {
            Ok(json) => parse(&json).map(Some).map_err(|detail| FirewallError {
                command: format!("nft -j list table inet {TABLE}"),
                detail,
            }),
            // No such table (nft says so on stderr): nothing of podnet's is there.
            Err(e) if e.detail.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl NatTable for Nftables {
    fn backend(&self) -> Backend {
        Backend::Nftables
    }

    fn apply(&mut self, want: Option<&MasqueradePlan>) -> Result<usize, FirewallError> {
        let observed = self.observe()?;
        match plan(observed.as_ref(), want) {
            Change::None => Ok(0),
            Change::Sets(s) | Change::Replace(s) | Change::Delete(s) => {
                self.runner.run("nft", &["-f", "-"], Some(&s))?;
                Ok(1)
            }
        }
    }

    fn remove(&mut self) -> Result<bool, FirewallError> {
        if self.observe()?.is_none() {
            return Ok(false);
        }
        self.runner.run(
            "nft",
            &["-f", "-"],
            Some(&format!("delete table inet {TABLE}\n")),
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn masq() -> MasqueradePlan {
        MasqueradePlan {
            sources: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
            exempt: vec![
                net("10.244.0.0/16"),
                net("198.18.0.0/15"),
                net("fd00:10:244::/56"),
            ],
        }
    }

    /// What `nft -j list table inet podnet` prints for [`render`]ed state (trimmed).
    fn listed(no_masq4: &str) -> String {
        format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6"}}}},
            {{"table": {{"family": "inet", "name": "podnet", "handle": 2}}}},
            {{"set": {{"family": "inet", "name": "masq-src4", "table": "podnet", "type": "ipv4_addr", "flags": ["interval"], "elem": [{{"prefix": {{"addr": "10.244.1.0", "len": 24}}}}]}}}},
            {{"set": {{"family": "inet", "name": "no-masq4", "table": "podnet", "type": "ipv4_addr", "flags": ["interval"], "elem": [{no_masq4}]}}}},
            {{"set": {{"family": "inet", "name": "masq-src6", "table": "podnet", "type": "ipv6_addr", "flags": ["interval"], "elem": [{{"prefix": {{"addr": "fd00:10:244:1::", "len": 64}}}}]}}}},
            {{"set": {{"family": "inet", "name": "no-masq6", "table": "podnet", "type": "ipv6_addr", "flags": ["interval"], "elem": [{{"prefix": {{"addr": "fd00:10:244::", "len": 56}}}}]}}}},
            {{"chain": {{"family": "inet", "table": "podnet", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}},
            {{"rule": {{"family": "inet", "table": "podnet", "chain": "postrouting", "handle": 6, "comment": "podnet-masq-v1", "expr": []}}}},
            {{"rule": {{"family": "inet", "table": "podnet", "chain": "postrouting", "handle": 7, "comment": "podnet-masq-v1", "expr": []}}}}]}}"#
        )
    }

    #[test]
    fn converged_table_needs_nothing_and_a_set_change_touches_only_sets() {
        let same = parse(&listed(
            r#"{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "198.18.0.0", "len": 15}}"#,
        ))
        .unwrap_or_default();
        assert_eq!(plan(Some(&same), Some(&masq())), Change::None);
        let fewer =
            parse(&listed(r#"{"prefix": {"addr": "10.244.0.0", "len": 16}}"#)).unwrap_or_default();
        match plan(Some(&fewer), Some(&masq())) {
            Change::Sets(s) => assert_eq!(
                s,
                "flush set inet podnet no-masq4\nadd element inet podnet no-masq4 { 10.244.0.0/16, 198.18.0.0/15 }\n"
            ),
            other => panic!("{other:?}"),
        }
        // A single address is listed without a prefix.
        let host = parse(&listed(r#""198.18.0.100""#)).unwrap_or_default();
        assert_eq!(host.sets["no-masq4"].1, vec![net("198.18.0.100/32")]);
    }

    #[test]
    fn a_changed_structure_is_replaced_whole_and_disabled_masquerade_deletes() {
        let mut broken = parse(&listed(r#""10.0.0.1""#)).unwrap_or_default();
        broken.rules.pop();
        assert!(matches!(
            plan(Some(&broken), Some(&masq())),
            Change::Replace(_)
        ));
        let mut hand = parse(&listed(r#""10.0.0.1""#)).unwrap_or_default();
        hand.rules.push(("postrouting".into(), String::new()));
        assert!(matches!(
            plan(Some(&hand), Some(&masq())),
            Change::Replace(_)
        ));
        assert!(matches!(plan(None, Some(&masq())), Change::Replace(_)));
        assert!(matches!(plan(Some(&hand), None), Change::Delete(_)));
        assert_eq!(plan(None, None), Change::None);
    }

    #[test]
    fn render_is_one_atomic_script() {
        let s = render(&masq());
        assert!(
            s.starts_with("table inet podnet\ndelete table inet podnet\n"),
            "{s}"
        );
        assert!(s.contains("set no-masq4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16, 198.18.0.0/15 } }"), "{s}");
        assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(s.contains(
            "ip6 saddr @masq-src6 ip6 daddr != @no-masq6 masquerade comment \"podnet-masq-v1\""
        ));
        // A family without CIDRs gets an empty set: its rule never matches.
        let v4_only = MasqueradePlan {
            sources: vec![net("10.244.1.0/24")],
            exempt: vec![net("10.244.0.0/16")],
        };
        assert!(render(&v4_only).contains("set masq-src6 { type ipv6_addr; flags interval;  }"));
    }
}
