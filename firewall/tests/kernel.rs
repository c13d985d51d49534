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
            ..Default::default()
        }],
        sets,
        log_drops: 0,
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

/// Two "pods" routed through a "node" namespace that holds the policy table: the
/// forward hook sees every packet between them.
struct Routed {
    node: Netns,
    a: Netns,
    // Held for its namespace (deleted on drop).
    _b: Netns,
}

impl Routed {
    fn new() -> Self {
        let (node, a, b) = (Netns::new("tn"), Netns::new("ta"), Netns::new("tb"));
        let ok = |args: &[&str]| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for (pod, gw, addr) in [
            (&a, "10.244.1.1/24", "10.244.1.2/24"),
            (&b, "10.244.2.1/24", "10.244.2.2/24"),
        ] {
            ok(&[
                "ip", "-n", &node.0, "link", "add", "eth-p", "type", "veth", "peer", "name",
                "eth0", "netns", &pod.0,
            ]);
            let host_end = format!("v{}", &pod.0[5..7]);
            ok(&[
                "ip", "-n", &node.0, "link", "set", "eth-p", "name", &host_end,
            ]);
            ok(&["ip", "-n", &node.0, "addr", "add", gw, "dev", &host_end]);
            ok(&["ip", "-n", &node.0, "link", "set", &host_end, "up"]);
            ok(&["ip", "-n", &pod.0, "addr", "add", addr, "dev", "eth0"]);
            ok(&["ip", "-n", &pod.0, "link", "set", "eth0", "up"]);
            ok(&["ip", "-n", &pod.0, "link", "set", "lo", "up"]);
            let via = gw.trim_end_matches("/24");
            ok(&["ip", "-n", &pod.0, "route", "add", "default", "via", via]);
        }
        ok(&[
            "ip",
            "netns",
            "exec",
            &node.0,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        Self { node, a, _b: b }
    }

    /// Whether a ping from a reaches b (and its reply comes back).
    fn a_reaches_b(&self) -> bool {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.a.0,
                "ping",
                "-c1",
                "-W1",
                "-q",
                "10.244.2.2",
            ])
            .output()
            .unwrap_or_else(|e| panic!("ping (iputils-ping) is needed: {e}"));
        out.status.success()
    }
}

fn tier_rule(action: policy::Action, peer_set: &str, comment: &str) -> policy::TierRule {
    policy::TierRule {
        action,
        rule: Rule {
            comment: comment.into(),
            peer: Peer::Sets {
                v4: Some(peer_set.into()),
                v6: None,
                except4: None,
                except6: None,
            },
            ports: Ports::Any,
        },
    }
}

/// The cluster-admin tiers around NetworkPolicy, with real packets: admin rules decide
/// first (Accept and Deny are final, Pass hands over to NetworkPolicy), NetworkPolicy
/// decides for the pods it isolates, the baseline tier only for the rest — in each
/// direction, egress on the sender's side and ingress on the receiver's.
#[test]
fn admin_and_baseline_tiers_decide_around_network_policy_in_both_directions() {
    use policy::Action::{Accept, Deny, Pass};
    let lab = Routed::new();
    let r = lab.node.runner();
    let mut sets = BTreeMap::new();
    for (name, addr) in [("s-a", "10.244.1.2/32"), ("s-b", "10.244.2.2/32")] {
        sets.insert(
            name.to_string(),
            AddrSet::Nets {
                v6: false,
                nets: vec![net(addr)],
            },
        );
    }
    let allow_a = Rule {
        comment: "np allows a".into(),
        peer: Peer::Sets {
            v4: Some("s-a".into()),
            v6: None,
            except4: None,
            except6: None,
        },
        ports: Ports::Any,
    };
    let plan = |a: PodChains, b: PodChains| PolicyPlan {
        local_cidrs: vec![net("10.244.1.0/24"), net("10.244.2.0/24")],
        known: vec![ip("10.244.1.2"), ip("10.244.2.2")],
        pods: vec![a, b],
        sets: sets.clone(),
        log_drops: 0,
    };
    let pod = |key: &str, name: &str, addr: &str| PodChains {
        key: key.into(),
        name: name.into(),
        ips: vec![ip(addr)],
        ..Default::default()
    };
    let a = pod("00000000000000a1", "default/a", "10.244.1.2");
    let b = pod("00000000000000b1", "default/b", "10.244.2.2");
    let with_in = |mut p: PodChains, np: Option<Vec<Rule>>, admin, baseline| {
        p.ingress = np;
        p.cluster_ingress = policy::Tiers { admin, baseline };
        p
    };
    let with_out = |mut p: PodChains, np: Option<Vec<Rule>>, admin, baseline| {
        p.egress = np;
        p.cluster_egress = policy::Tiers { admin, baseline };
        p
    };
    let cases: Vec<(&str, PolicyPlan, bool)> = vec![
        ("no policy at all", plan(a.clone(), b.clone()), true),
        (
            "baseline Deny, b not isolated",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    None,
                    vec![],
                    vec![tier_rule(Deny, "s-a", "base deny")],
                ),
            ),
            false,
        ),
        (
            "NetworkPolicy allows a: the baseline Deny is not asked",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    Some(vec![allow_a.clone()]),
                    vec![],
                    vec![tier_rule(Deny, "s-a", "base deny")],
                ),
            ),
            true,
        ),
        (
            "admin Deny over a NetworkPolicy allow",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    Some(vec![allow_a.clone()]),
                    vec![tier_rule(Deny, "s-a", "admin deny")],
                    vec![],
                ),
            ),
            false,
        ),
        (
            "admin Pass to a NetworkPolicy that allows nothing",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    Some(vec![]),
                    vec![
                        tier_rule(Pass, "s-a", "admin pass"),
                        tier_rule(Accept, "s-a", "never reached"),
                    ],
                    vec![],
                ),
            ),
            false,
        ),
        (
            "admin Pass to a NetworkPolicy that allows a",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    Some(vec![allow_a.clone()]),
                    vec![
                        tier_rule(Pass, "s-a", "admin pass"),
                        tier_rule(Deny, "s-a", "never reached"),
                    ],
                    vec![],
                ),
            ),
            true,
        ),
        (
            "admin Pass, not isolated: the baseline decides",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    None,
                    vec![tier_rule(Pass, "s-a", "admin pass")],
                    vec![tier_rule(Deny, "s-a", "base deny")],
                ),
            ),
            false,
        ),
        (
            "admin Accept over a NetworkPolicy that allows nothing",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    Some(vec![]),
                    vec![tier_rule(Accept, "s-a", "admin accept")],
                    vec![],
                ),
            ),
            true,
        ),
        (
            "a rule for another peer does not match",
            plan(
                a.clone(),
                with_in(
                    b.clone(),
                    None,
                    vec![tier_rule(Deny, "s-b", "other")],
                    vec![],
                ),
            ),
            true,
        ),
        (
            "egress: admin Deny on the sender",
            plan(
                with_out(
                    a.clone(),
                    None,
                    vec![tier_rule(Deny, "s-b", "admin deny")],
                    vec![],
                ),
                b.clone(),
            ),
            false,
        ),
        (
            "egress: baseline Deny on the sender",
            plan(
                with_out(
                    a.clone(),
                    None,
                    vec![],
                    vec![tier_rule(Deny, "s-b", "base deny")],
                ),
                b.clone(),
            ),
            false,
        ),
        (
            "egress Accept on the sender does not override the receiver's ingress Deny",
            plan(
                with_out(
                    a.clone(),
                    None,
                    vec![tier_rule(Accept, "s-b", "admin accept")],
                    vec![],
                ),
                with_in(
                    b.clone(),
                    None,
                    vec![tier_rule(Deny, "s-a", "admin deny")],
                    vec![],
                ),
            ),
            false,
        ),
        (
            "egress: admin Accept on the sender, nothing on the receiver",
            plan(
                with_out(
                    a.clone(),
                    Some(vec![]),
                    vec![tier_rule(Accept, "s-b", "admin accept")],
                    vec![],
                ),
                b.clone(),
            ),
            true,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, p, reaches) in &cases {
        policy::apply(&r, Some(p)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let observed = policy::observe(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            policy::plan_change(observed.as_ref(), Some(p)),
            None,
            "{what}: the tiers read back as written"
        );
        if lab.a_reaches_b() != *reaches {
            let table = r
                .run("nft", &["list", "table", "inet", "podnet-policy"], None)
                .unwrap_or_default();
            wrong.push(format!("{what}: wanted reaches={reaches}\n{table}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Logged drops: an Admin Deny and a pod's final drop, rate-limited, each naming the
    // pod; still dropped. The node namespace is not the host's, and the kernel logs
    // from other namespaces only with net.netfilter.nf_log_all_netns (set for the
    // probe, then put back as it was).
    // A name of this run only: the kernel log keeps earlier runs' lines.
    let b_logged = PodChains {
        name: format!("default/b{}", std::process::id()),
        ..b.clone()
    };
    let mut logged = plan(
        a.clone(),
        with_in(
            b_logged.clone(),
            Some(vec![]),
            vec![tier_rule(Deny, "s-a", "admin deny")],
            vec![],
        ),
    );
    logged.log_drops = 5;
    policy::apply(&r, Some(&logged)).unwrap_or_else(|e| panic!("{e}"));
    let observed = policy::observe(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy::plan_change(observed.as_ref(), Some(&logged)), None);
    let sysctl = "/proc/sys/net/netfilter/nf_log_all_netns";
    let was = std::fs::read_to_string(sysctl).unwrap_or_else(|e| panic!("{sysctl}: {e}"));
    std::fs::write(sysctl, "1").unwrap_or_else(|e| panic!("{sysctl}: {e}"));
    let reached = lab.a_reaches_b();
    let _ = std::fs::write(sysctl, was.trim());
    assert!(!reached, "a logged Deny must still drop");
    let kmsg = Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| panic!("dmesg: {e}"));
    let prefix = format!("podnet-drop in {}: ", b_logged.name);
    assert!(
        kmsg.lines()
            .any(|l| l.contains(&prefix) && l.contains("SRC=10.244.1.2")),
        "no {prefix:?} line in the kernel log"
    );
    let table = r
        .run("nft", &["list", "table", "inet", "podnet-policy"], None)
        .unwrap_or_default();
    assert!(
        table.contains("limit rate 5/second"),
        "the log is not rate-limited:\n{table}"
    );
    assert!(policy::apply(&r, None).unwrap_or_else(|e| panic!("{e}")));
}
