//! End to end on the lab: three nodes, two pods each, the real control plane,
//! podnet-operator and one podnet-daemon per node. Needs root and the built tools.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use podnet_lab::cluster::{self, LabState};
use podnet_lab::run_ok;

fn counter_rule(ns: &str, v6: bool, src: &str) {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let proto = if v6 { "ipv6-icmp" } else { "icmp" };
    run_ok(&[
        "ip", "netns", "exec", ns, tool, "-I", "INPUT", "-s", src, "-p", proto,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Packets counted by the rule for `src` in `ns`.
fn counted(ns: &str, v6: bool, src: &str) -> u64 {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let out = run_ok(&[
        "ip", "netns", "exec", ns, tool, "-L", "INPUT", "-v", "-x", "-n",
    ])
    .unwrap_or_default();
    out.lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w == src || w == format!("{src}/32") || w == format!("{src}/128"))
        })
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn kubectl(state: &LabState, args: &[&str]) -> String {
    let tools = podnet_lab::Tools::locate().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(&tools.kubectl)
        .arg("--kubeconfig")
        .arg(&state.control_plane.kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes the lab even when an assertion fails.
struct Teardown(Option<LabState>);

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            cluster::down(&s);
        }
    }
}

#[test]
fn lab_datapath_end_to_end() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the lab end-to-end test needs root (network namespaces)"
    );
    let bin_dir = podnet_lab::testing::workspace_bins().unwrap_or_else(|e| panic!("{e}"));
    let tag = format!("pne{}", std::process::id());
    let dir = PathBuf::from(format!("/run/{tag}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut progress =
        |what: &str, took: Duration| eprintln!("==> {what} ({:.1}s)", took.as_secs_f64());
    let state = rt
        .block_on(cluster::up(&tag, 3, &bin_dir, &dir, &mut progress))
        .unwrap_or_else(|e| {
            if let Ok(s) = cluster::load(&dir) {
                cluster::down(&s);
            }
            panic!("lab up: {e}")
        });
    let mut guard = Teardown(Some(state));
    let state = guard.0.as_mut().unwrap_or_else(|| unreachable!());

    // 1. Every pod reaches every pod (same node and across nodes) and the external host,
    // IPv4 and IPv6 ...
    let (matrix, ok, total) = cluster::matrix(state);
    assert_eq!(ok, total, "unreachable paths:\n{matrix}");
    assert_eq!(total, 2 * 6 * 7);
    // ... and the receiving pod sees the sender's pod IP.
    let (a, b) = (state.pods[0].clone(), state.pods[2].clone());
    assert_ne!(a.node, b.node);
    for (v6, fam) in [(false, 0), (true, 1)] {
        counter_rule(&b.netns, v6, &a.ips[fam]);
        assert!(cluster::ping(&a.netns, &b.ips[fam]));
        assert!(
            counted(&b.netns, v6, &a.ips[fam]) > 0,
            "{} did not see {} as the source",
            b.netns,
            a.ips[fam]
        );
    }

    // 4. NodeRoutes show Allocated and Programmed, written by programs holding only the
    // Helm chart's service-account tokens (RBAC and the admission policy sufficient).
    for n in &state.nodes {
        let kc = std::fs::read_to_string(&n.kubeconfig).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            kc.contains("token:") && !kc.contains("client-certificate"),
            "{} daemon runs with a service-account token",
            n.name
        );
    }
    let nr = kubectl(state, &["get", "nr", "--no-headers"]);
    assert_eq!(nr.lines().count(), 3, "{nr}");
    assert!(
        nr.lines()
            .all(|l| l.split_whitespace().filter(|w| *w == "True").count() == 2),
        "{nr}"
    );

    // 2. Masquerade: the external host sees the node's address; with the lab range in
    // nonMasqueradeCIDRs it sees the pod's; without it, the node's again.
    let ext = format!("{tag}-ext");
    let node_ip = state
        .nodes
        .iter()
        .find(|n| n.name == a.node)
        .map(|n| n.ips[0].clone())
        .unwrap_or_default();
    counter_rule(&ext, false, &node_ip);
    counter_rule(&ext, false, &a.ips[0]);
    assert!(cluster::ping(&a.netns, "198.18.0.100"));
    assert!(
        counted(&ext, false, &node_ip) > 0 && counted(&ext, false, &a.ips[0]) == 0,
        "not masqueraded to the node address"
    );
    kubectl(
        state,
        &[
            "patch",
            "pn",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"masquerade":{"nonMasqueradeCIDRs":["198.18.0.0/24"]}}}"#,
        ],
    );
    eventually(
        "the external host sees the pod address",
        Duration::from_secs(15),
        || {
            // The external host has no route back to pods: the ping fails, the packet arrives.
            let _ = cluster::ping(&a.netns, "198.18.0.100");
            counted(&ext, false, &a.ips[0]) > 0
        },
    );
    kubectl(
        state,
        &[
            "patch",
            "pn",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"masquerade":{"nonMasqueradeCIDRs":[]}}}"#,
        ],
    );
    eventually("masquerade restored", Duration::from_secs(15), || {
        cluster::ping(&a.netns, "198.18.0.100")
    });

    // Convergence: NodeRoute gets its CIDR → route on every node (goal p99 ≤ 100 ms; a
    // loose bound here so a busy CI machine does not fail it, the number is printed).
    let samples = rt
        .block_on(cluster::measure_convergence(state, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    let p99 = samples[samples.len() - 1];
    eprintln!(
        "convergence: p50 {:?}, max {:?}",
        samples[samples.len() / 2],
        p99
    );
    assert!(
        p99 < Duration::from_millis(1000),
        "convergence too slow: {samples:?}"
    );

    // 3. A node added later gets a CIDR and its pods are reachable from the others ...
    rt.block_on(cluster::add_node(state, 4))
        .unwrap_or_else(|e| panic!("adding node-4: {e}"));
    rt.block_on(cluster::wait_programmed(state, Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e}"));
    let late = state
        .pods
        .iter()
        .find(|p| p.node == "node-4")
        .cloned()
        .unwrap_or_else(|| panic!("node-4 has no pods"));
    for fam in [0, 1] {
        assert!(
            cluster::ping(&a.netns, &late.ips[fam]),
            "{} cannot reach node-4's pod {}",
            a.netns,
            late.ips[fam]
        );
    }
    // ... and a deleted node's routes disappear from every other node.
    let late_cidr = kubectl(
        state,
        &[
            "get",
            "nr",
            "node-4",
            "-o",
            "jsonpath={.status.podCIDRs[0]}",
        ],
    );
    assert!(!late_cidr.is_empty());
    cluster::remove_node(state, "node-4").unwrap_or_else(|e| panic!("{e}"));
    for n in state.nodes.clone() {
        eventually(
            &format!("{late_cidr} gone from {}", n.name),
            Duration::from_secs(20),
            || {
                !run_ok(&["ip", "-n", &n.netns, "route", "show", "proto", "233"])
                    .unwrap_or_default()
                    .contains(&late_cidr)
            },
        );
    }

    // 5. Pods torn down through CNI DEL leave no leases, veths or files behind.
    for pod in state.pods.clone() {
        let node = state
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .cloned()
            .unwrap_or_else(|| unreachable!());
        cluster::cni(state, &node, "DEL", &pod.netns).unwrap_or_else(|e| panic!("{e}"));
    }
    for n in &state.nodes {
        let ipam = state.dir.join(&n.name).join("ipam/podnet");
        let leases: Vec<String> = std::fs::read_dir(&ipam)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(leases.is_empty(), "{}: leaked leases {leases:?}", n.name);
        let attachments = std::fs::read_dir(ipam.join("attachments"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(attachments, 0, "{}: leaked attachment files", n.name);
        let veths = run_ok(&["ip", "-n", &n.netns, "-br", "link", "show", "type", "veth"])
            .unwrap_or_default();
        assert!(
            !veths.lines().any(|l| l.starts_with("pn")),
            "{}: leaked veths\n{veths}",
            n.name
        );
    }

    // down removes every namespace, process and file the lab made.
    let s = guard.0.take().unwrap_or_else(|| unreachable!());
    cluster::down(&s);
    let left = run_ok(&["ip", "netns", "list"]).unwrap_or_default();
    assert!(!left.contains(&tag), "namespaces left behind:\n{left}");
    assert!(!dir.exists() && !s.control_plane.dir.exists());
}
