//! The firewall drivers against the kernel, in network namespaces the tests create and
//! delete: what a plan renders loads, reads back as the same plan (no write on the next
//! pass), and changes as little as it says. Needs root; without it every test fails
//! saying so.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use ipnet::IpNet;
use podnet_firewall::Runner;
use podnet_firewall::hostports::Protocol;
use podnet_firewall::policy::{self, AddrSet, Peer, PodChains, PolicyPlan, Ports, Rule};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the firewall kernel tests need root (network namespaces, nftables)"
        );
        let name = format!("pnfw-{tag}-{}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        assert!(out.is_ok_and(|o| o.status.success()), "ip netns add {name}");
        Self(name)
    }
    fn runner(&self) -> Runner {
        Runner {
            netns: Some(PathBuf::from(format!("/var/run/netns/{}", self.0))),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
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
        "s-a4".into(),
        AddrSet::Nets {
            v6: false,
            nets: vec![
                net("10.244.2.7/32"),
                net("10.244.1.9/32"),
                net("10.245.0.0/16"),
            ],
        },
    );
    sets.insert(
        "s-a6".into(),
        AddrSet::Nets {
            v6: true,
            nets: vec![net("fd00:10:244:2::7/128")],
        },
    );
    sets.insert(
        "s-x4".into(),
        AddrSet::Nets {
            v6: false,
            nets: vec![net("10.245.1.0/24")],
        },
    );
    sets.insert(
        "s-np4".into(),
        AddrSet::Ports {
            v6: false,
            entries: vec![
                (ip("10.244.2.7"), Protocol::Tcp, 8080),
                (ip("10.244.2.8"), Protocol::Sctp, 9),
            ],
        },
    );
    sets.insert(
        "s-np6".into(),
        AddrSet::Ports {
            v6: true,
            entries: vec![],
        },
    );
    PolicyPlan {
        local_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
        known: vec![ip("10.244.1.5"), ip("fd00:10:244:1::5"), ip("10.244.1.9")],
        pods: vec![PodChains {
            key: "00000000000000aa".into(),
            name: "default/db".into(),
            ips: vec![ip("10.244.1.5"), ip("fd00:10:244:1::5")],
            ingress: Some(vec![
                Rule {
                    comment: "default/p ingress[0]".into(),
                    peer: Peer::Sets {
                        v4: Some("s-a4".into()),
                        v6: Some("s-a6".into()),
                        except4: Some("s-x4".into()),
                        except6: None,
                    },
                    ports: Ports::List(vec![
                        (Protocol::Tcp, Some((5432, 5432))),
                        (Protocol::Sctp, None),
                        (Protocol::Udp, Some((1000, 2000))),
                    ]),
                },
                Rule {
                    comment: "default/all ingress[0]".into(),
                    peer: Peer::Any,
                    ports: Ports::Any,
                },
            ]),
            egress: Some(vec![Rule {
                comment: "default/p egress[0]".into(),
                peer: Peer::Any,
                ports: Ports::Named {
                    v4: Some("s-np4".into()),
                    v6: Some("s-np6".into()),
                },
            }]),
        }],
        sets,
    }
}

#[test]
fn a_policy_plan_loads_reads_back_unchanged_and_updates_sets_only() {
    let ns = Netns::new("pol");
    let r = ns.runner();
    let p = plan();
    assert!(
        policy::apply(&r, Some(&p)).unwrap_or_else(|e| panic!("{e}")),
        "first apply writes"
    );
    let observed = policy::observe(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        policy::plan_change(observed.as_ref(), Some(&p)),
        None,
        "what was written reads back as the plan: {observed:?}"
    );
    assert!(
        !policy::apply(&r, Some(&p)).unwrap_or_else(|e| panic!("{e}")),
        "nothing to write"
    );
    // Churn elsewhere: a set grows; the rules keep their handles.
    let handles = |r: &Runner| {
        r.run(
            "nft",
            &[
                "-a",
                "list",
                "chain",
                "inet",
                "podnet-policy",
                "pod-00000000000000aa-in",
            ],
            None,
        )
        .unwrap_or_default()
    };
    let before = handles(&r);
    let mut q = p.clone();
    if let Some(AddrSet::Nets { nets, .. }) = q.sets.get_mut("s-a4") {
        nets.push(net("10.244.3.3/32"));
    }
    assert!(policy::apply(&r, Some(&q)).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(handles(&r), before, "a set change rewrote rules");
    assert!(
        r.run(
            "nft",
            &["list", "set", "inet", "podnet-policy", "s-a4"],
            None
        )
        .unwrap_or_default()
        .contains("10.244.3.3")
    );
    assert!(!policy::apply(&r, Some(&q)).unwrap_or_else(|e| panic!("{e}")));
    // A rule deleted by hand: repaired by a whole-table write.
    let h = before
        .lines()
        .find(|l| l.contains("default/all"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    r.run(
        "nft",
        &[
            "delete",
            "rule",
            "inet",
            "podnet-policy",
            "pod-00000000000000aa-in",
            "handle",
            &h,
        ],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        policy::apply(&r, Some(&q)).unwrap_or_else(|e| panic!("{e}")),
        "drift repaired"
    );
    assert!(handles(&r).contains("default/all"));
    // Gone when no plan.
    assert!(policy::apply(&r, None).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(policy::observe(&r).unwrap_or_else(|e| panic!("{e}")), None);
}
