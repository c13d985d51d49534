//! podnet-cni driven as a runtime drives it, in network namespaces each test creates
//! and removes: every verb, every error code, rollback, idempotent DEL, GC, 64 parallel
//! ADDs, dual-stack pods pinging each other, and a real CNI client (cnitool).
//! Needs root; without it every test fails saying so.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_podnet-cni");

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "podnet-cni tests need root (network namespaces, veths, bridges): run them as root"
    );
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A network namespace this test made; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        let out = sh(&["ip", "netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A node: its namespace (the plugin's "host") and lease directory.
struct Node {
    ns: Netns,
    data_dir: PathBuf,
    cidrs: Vec<&'static str>,
}

impl Node {
    fn new(cidrs: &[&'static str]) -> Self {
        let ns = Netns::new("pncni-node");
        let data_dir = std::env::temp_dir().join(unique("pncni-ipam"));
        Self {
            ns,
            data_dir,
            cidrs: cidrs.to_vec(),
        }
    }

    fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "podnet", "type": "podnet-cni", "bridge": "podnet0",
               "podCIDRs": self.cidrs, "mtu": 1400, "dataDir": self.data_dir})
    }

    /// Runs the plugin in the node namespace, as a runtime would.
    fn cni(&self, cmd: &str, cid: &str, netns: &str, ifname: &str, conf: &Value) -> (bool, Value) {
        let stdin = conf.to_string();
        self.cni_raw(cmd, cid, netns, ifname, stdin.as_bytes())
    }

    fn cni_raw(
        &self,
        cmd: &str,
        cid: &str,
        netns: &str,
        ifname: &str,
        stdin: &[u8],
    ) -> (bool, Value) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.0, BIN])
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env(
                "CNI_PATH",
                Path::new(BIN).parent().unwrap_or(Path::new("/")),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the plugin: {e}"));
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(stdin);
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        };
        (out.status.success(), v)
    }

    fn add(&self, cid: &str, pod: &Netns) -> Value {
        let (ok, v) = self.cni("ADD", cid, &pod.path(), "eth0", &self.conf("1.1.0"));
        assert!(ok, "ADD failed: {v}");
        v
    }

    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.data_dir.join("podnet"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn host_veths(&self) -> Vec<String> {
        let out = self.ns.exec(&["ip", "-j", "link", "show", "type", "veth"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn addr_only(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or_default().to_string()
}

#[test]
fn dual_stack_pods_reach_each_other_through_the_bridge() {
    require_root();
    let node = Node::new(&["10.244.7.0/24", "fd00:10:244:7::/64"]);
    let (a, b) = (Netns::new("pncni-pa"), Netns::new("pncni-pb"));
    let ra = node.add("pod-a", &a);
    let rb = node.add("pod-b", &b);
    assert_eq!(ra["cniVersion"], "1.1.0");
    let ifs = ra["interfaces"].as_array().cloned().unwrap_or_default();
    assert_eq!(ifs.len(), 3, "{ra}");
    assert_eq!(ifs[0]["name"], "podnet0");
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], a.path());
    assert!(
        ifs.iter().all(|i| i["mac"]
            .as_str()
            .is_some_and(|m| m.len() == 17 && m != "00:00:00:00:00:00")),
        "{ra}"
    );
    assert_eq!(ips(&ra).len(), 2);
    assert_eq!(ra["ips"][0]["gateway"], "10.244.7.1");
    assert_eq!(ra["ips"][1]["gateway"], "fd00:10:244:7::1");
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(ra["routes"][0]["dst"], "0.0.0.0/0");
    // Pod side: addresses, default routes, MTU.
    let link: Value = serde_json::from_slice(&a.exec(&["ip", "-j", "addr", "show", "eth0"]).stdout)
        .unwrap_or_default();
    assert_eq!(link[0]["mtu"], 1400);
    assert_eq!(link[0]["operstate"], "UP");
    let routes = String::from_utf8_lossy(&a.exec(&["ip", "route"]).stdout).into_owned();
    assert!(
        routes.contains("default via 10.244.7.1 dev eth0"),
        "{routes}"
    );
    let routes6 = String::from_utf8_lossy(&a.exec(&["ip", "-6", "route"]).stdout).into_owned();
    assert!(
        routes6.contains("default via fd00:10:244:7::1 dev eth0"),
        "{routes6}"
    );
    // Host side: bridge with gateways and MTU, hairpin on the port.
    let br = String::from_utf8_lossy(&node.ns.exec(&["ip", "addr", "show", "podnet0"]).stdout)
        .into_owned();
    assert!(
        br.contains("10.244.7.1/24")
            && br.contains("fd00:10:244:7::1/64")
            && br.contains("mtu 1400"),
        "{br}"
    );
    let host_name = ifs[1]["name"].as_str().unwrap_or_default().to_string();
    let detail = String::from_utf8_lossy(
        &node
            .ns
            .exec(&["ip", "-d", "link", "show", &host_name])
            .stdout,
    )
    .into_owned();
    assert!(
        detail.contains("master podnet0")
            && detail.contains("hairpin on")
            && detail.contains("mtu 1400"),
        "{detail}"
    );
    // Traffic, both families, both directions, no DAD delay on IPv6.
    for (from, to) in [(&a, &rb), (&b, &ra)] {
        for ip in ips(to) {
            let out = from.exec(&["ping", "-c", "1", "-W", "2", &addr_only(&ip)]);
            assert!(
                out.status.success(),
                "ping {ip}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    for (cid, ns) in [("pod-a", &a), ("pod-b", &b)] {
        let (ok, v) = node.cni("DEL", cid, &ns.path(), "eth0", &node.conf("1.1.0"));
        assert!(ok && v.is_null(), "DEL: {v}");
    }
    assert!(
        node.leases().is_empty(),
        "leaked leases: {:?}",
        node.leases()
    );
    assert!(
        node.host_veths().is_empty(),
        "leaked veths: {:?}",
        node.host_veths()
    );
}

/// The bridge keeps the address podnet-cni gave it while ports come and go. A bridge
/// with a kernel-chosen address takes the lowest MAC among its ports: a pod leaving
/// changed the gateway's MAC under every other pod's neighbour cache, and cross-node
/// traffic from them stopped until their cached entry went stale (seconds).
#[test]
fn the_bridge_keeps_its_mac_while_ports_come_and_go() {
    require_root();
    let node = Node::new(&["10.244.9.0/24", "fd00:10:244:9::/64"]);
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("pncni-mac")).collect();
    let mac = |node: &Node| -> String {
        let v: Value = serde_json::from_slice(
            &node
                .ns
                .exec(&["ip", "-j", "link", "show", "podnet0"])
                .stdout,
        )
        .unwrap_or_default();
        v[0]["address"].as_str().unwrap_or_default().to_string()
    };
    let mut seen = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        node.add(&format!("pod-{i}"), p);
        seen.push(mac(&node));
    }
    for (i, p) in pods.iter().enumerate().take(3) {
        let (ok, v) = node.cni(
            "DEL",
            &format!("pod-{i}"),
            &p.path(),
            "eth0",
            &node.conf("1.1.0"),
        );
        assert!(ok, "DEL: {v}");
        seen.push(mac(&node));
    }
    assert!(
        seen.iter().all(|m| m == "0a:58:0a:f4:09:01"),
        "the bridge's MAC changed as ports came and went: {seen:?}"
    );
    let assigned = node
        .ns
        .exec(&["cat", "/sys/class/net/podnet0/addr_assign_type"]);
    assert_eq!(
        String::from_utf8_lossy(&assigned.stdout).trim(),
        "3",
        "addr_assign_type (3: set by user space, which the kernel keeps)"
    );
    let (ok, v) = node.cni("DEL", "pod-3", &pods[3].path(), "eth0", &node.conf("1.1.0"));
    assert!(ok, "DEL: {v}");
}

/// A bridge made before podnet-cni fixed bridge addresses keeps the MAC it has (pods
/// cached it) and has it pinned at the next ADD.
#[test]
fn an_existing_bridge_gets_its_current_mac_pinned() {
    require_root();
    let node = Node::new(&["10.244.10.0/24"]);
    let made = node
        .ns
        .exec(&["ip", "link", "add", "podnet0", "type", "bridge"]);
    assert!(made.status.success(), "{made:?}");
    let read = |what: &str| -> String {
        String::from_utf8_lossy(
            &node
                .ns
                .exec(&["cat", &format!("/sys/class/net/podnet0/{what}")])
                .stdout,
        )
        .trim()
        .to_string()
    };
    let before = read("address");
    assert_eq!(
        read("addr_assign_type"),
        "1",
        "a bridge made by hand has a random MAC"
    );
    let pod = Netns::new("pncni-pin");
    node.add("pod-pin", &pod);
    assert_eq!(read("address"), before, "the bridge's MAC changed");
    assert_eq!(read("addr_assign_type"), "3", "the MAC is not pinned");
    let (ok, v) = node.cni("DEL", "pod-pin", &pod.path(), "eth0", &node.conf("1.1.0"));
    assert!(ok, "DEL: {v}");
}

#[test]
fn version_and_results_follow_the_request() {
    require_root();
    let node = Node::new(&["10.244.8.0/24"]);
    let (ok, v) = node.cni_raw("VERSION", "", "", "", br#"{"cniVersion":"0.4.0"}"#);
    assert!(ok);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let pod = Netns::new("pncni-v");
        let (ok, r) = node.cni("ADD", "c-ver", &pod.path(), "eth0", &node.conf(version));
        assert!(ok, "{version}: {r}");
        assert_eq!(r["cniVersion"], version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{version}: {r}"
        );
        let (ok, _) = node.cni("DEL", "c-ver", &pod.path(), "eth0", &node.conf(version));
        assert!(ok);
    }
}

#[test]
fn del_is_idempotent_and_always_releases() {
    require_root();
    let node = Node::new(&["10.244.9.0/24", "fd00:10:244:9::/64"]);
    let conf = node.conf("1.1.0");
    // Never added.
    assert!(node.cni("DEL", "ghost", "", "eth0", &conf).0);
    let pod = Netns::new("pncni-d");
    node.add("c1", &pod);
    assert!(node.cni("DEL", "c1", &pod.path(), "eth0", &conf).0);
    assert!(
        node.cni("DEL", "c1", &pod.path(), "eth0", &conf).0,
        "second DEL"
    );
    // The namespace gone before DEL, and CNI_NETNS empty.
    let pod2 = Netns::new("pncni-d");
    node.add("c2", &pod2);
    let path = pod2.path();
    drop(pod2);
    assert!(
        node.cni("DEL", "c2", &path, "eth0", &conf).0,
        "DEL with a vanished netns"
    );
    assert!(
        node.cni("DEL", "c2", "", "eth0", &conf).0,
        "DEL without CNI_NETNS"
    );
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    // Re-ADD with the same container ID and ifname right after DEL works.
    let pod3 = Netns::new("pncni-d");
    node.add("c1", &pod3);
    assert!(node.cni("DEL", "c1", &pod3.path(), "eth0", &conf).0);
}

#[test]
fn every_error_code_is_reported_as_cni_error_json() {
    require_root();
    let node = Node::new(&["10.244.10.0/30"]);
    let pod = Netns::new("pncni-e");
    let conf = node.conf("1.0.0");
    let code = |(ok, v): (bool, Value)| {
        assert!(!ok, "expected an error, got {v}");
        assert!(v["msg"].is_string() && v["cniVersion"].is_string(), "{v}");
        v["code"].as_u64().unwrap_or(0)
    };
    let mut bad_version = conf.clone();
    bad_version["cniVersion"] = json!("0.2.0");
    assert_eq!(
        code(node.cni("ADD", "c", &pod.path(), "eth0", &bad_version)),
        1
    );
    let mut with_ipam = conf.clone();
    with_ipam["ipam"] = json!({"type": "host-local"});
    assert_eq!(
        code(node.cni("ADD", "c", &pod.path(), "eth0", &with_ipam)),
        2
    );
    assert_eq!(
        code(node.cni(
            "ADD",
            "c",
            "/var/run/netns/does-not-exist-podnet",
            "eth0",
            &conf
        )),
        3
    );
    assert_eq!(
        code(node.cni("ADD", "../../etc", &pod.path(), "eth0", &conf)),
        4
    );
    assert_eq!(code(node.cni("ADD", "c", &pod.path(), "../x", &conf)), 4);
    assert_eq!(
        code(node.cni("ADD", "c", &pod.path(), "this-is-too-long-x", &conf)),
        4
    );
    assert_eq!(
        code(node.cni_raw("ADD", "c", &pod.path(), "eth0", b"{\"cniVersion\": ")),
        6
    );
    let mut bad_cidr = conf.clone();
    bad_cidr["podCIDRs"] = json!(["10.244.10.1/30"]);
    assert_eq!(
        code(node.cni("ADD", "c", &pod.path(), "eth0", &bad_cidr)),
        7
    );
    let blocker = std::env::temp_dir().join(unique("pncni-file"));
    std::fs::write(&blocker, b"x").unwrap_or_default();
    let mut bad_dir = conf.clone();
    bad_dir["dataDir"] = json!(blocker.join("sub"));
    assert_eq!(code(node.cni("ADD", "c", &pod.path(), "eth0", &bad_dir)), 5);
    let _ = std::fs::remove_file(&blocker);
    // A /30 has one pod address: the second pod must try again later.
    node.add("first", &pod);
    let pod2 = Netns::new("pncni-e");
    assert_eq!(
        code(node.cni("ADD", "second", &pod2.path(), "eth0", &conf)),
        11
    );
    assert!(
        node.host_veths().len() == 1,
        "a failed ADD left a veth: {:?}",
        node.host_veths()
    );
    // The interface name is taken in the namespace.
    assert_eq!(
        code(node.cni("ADD", "third", &pod.path(), "eth0", &conf)),
        101
    );
    assert!(node.cni("DEL", "first", &pod.path(), "eth0", &conf).0);
    assert!(node.leases().is_empty());
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    require_root();
    let node = Node::new(&["10.244.11.0/24", "fd00:10:244:11::/64"]);
    let pod = Netns::new("pncni-r");
    // IPv6 disabled in the pod: the IPv6 address fails after the veth exists.
    let out = pod.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]);
    assert!(out.status.success());
    let (ok, v) = node.cni("ADD", "c-fail", &pod.path(), "eth0", &node.conf("1.1.0"));
    assert!(!ok, "ADD should fail: {v}");
    assert!(
        node.host_veths().is_empty(),
        "rollback left {:?}",
        node.host_veths()
    );
    assert!(
        node.leases().is_empty(),
        "rollback left leases {:?}",
        node.leases()
    );
    let links = String::from_utf8_lossy(&pod.exec(&["ip", "-br", "link"]).stdout).into_owned();
    assert!(!links.contains("eth0"), "{links}");
}

#[test]
fn check_verifies_the_attachment() {
    require_root();
    let node = Node::new(&["10.244.12.0/24", "fd00:10:244:12::/64"]);
    let pod = Netns::new("pncni-c");
    let result = node.add("c1", &pod);
    let mut conf = node.conf("1.1.0");
    conf["prevResult"] = result.clone();
    let (ok, v) = node.cni("CHECK", "c1", &pod.path(), "eth0", &conf);
    assert!(ok, "CHECK: {v}");
    let v4 = ips(&result)[0].clone();
    pod.exec(&["ip", "addr", "del", &v4, "dev", "eth0"]);
    let (ok, v) = node.cni("CHECK", "c1", &pod.path(), "eth0", &conf);
    assert!(!ok && v["code"] == 100, "{v}");
    assert!(node.cni("DEL", "c1", &pod.path(), "eth0", &conf).0);
}

#[test]
fn gc_releases_everything_not_valid() {
    require_root();
    let node = Node::new(&["10.244.13.0/24"]);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pncni-g")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.add(&format!("c{i}"), p);
    }
    let mut conf = node.conf("1.1.0");
    // No list: nothing is touched.
    assert!(node.cni("GC", "", "", "", &conf).0);
    assert_eq!(node.leases().len(), 3);
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (ok, v) = node.cni("GC", "", "", "", &conf);
    assert!(ok, "{v}");
    assert_eq!(node.leases().len(), 1);
    assert_eq!(node.host_veths().len(), 1);
    let links = String::from_utf8_lossy(&pods[1].exec(&["ip", "-br", "link"]).stdout).into_owned();
    assert!(
        links.contains("eth0"),
        "the valid pod lost its interface: {links}"
    );
    // The older key works too; an empty list releases everything.
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/attachments"] = json!([]);
    assert!(node.cni("GC", "", "", "", &conf).0);
    assert!(node.leases().is_empty() && node.host_veths().is_empty());
}

#[test]
fn status_reports_whether_add_can_be_served() {
    require_root();
    let node = Node::new(&["10.244.14.0/30"]);
    let conf = node.conf("1.1.0");
    assert!(node.cni("STATUS", "", "", "", &conf).0);
    let pod = Netns::new("pncni-s");
    node.add("only", &pod);
    let (ok, v) = node.cni("STATUS", "", "", "", &conf);
    assert!(!ok && v["code"] == 50, "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap_or_default()
            .contains("no free address"),
        "{v}"
    );
    let mut broken = conf.clone();
    broken["podCIDRs"] = json!([]);
    assert!(!node.cni("STATUS", "", "", "", &broken).0);
    assert!(node.cni("DEL", "only", &pod.path(), "eth0", &conf).0);
    assert!(node.cni("STATUS", "", "", "", &conf).0);
}

#[test]
fn sixty_four_parallel_adds_get_distinct_addresses() {
    require_root();
    let node = Node::new(&["10.244.15.0/24", "fd00:10:244:15::/64"]);
    let pods: Vec<Netns> = (0..64).map(|_| Netns::new("pncni-p")).collect();
    let results: Vec<(bool, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                s.spawn(move || {
                    node.cni(
                        "ADD",
                        &format!("par{i}"),
                        &p.path(),
                        "eth0",
                        &node.conf("1.1.0"),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((false, Value::Null)))
            .collect()
    });
    let mut seen = HashSet::new();
    for (ok, r) in &results {
        assert!(ok, "parallel ADD failed: {r}");
        for ip in ips(r) {
            assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 128);
    assert_eq!(node.host_veths().len(), 64);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let node = &node;
            s.spawn(move || {
                assert!(
                    node.cni(
                        "DEL",
                        &format!("par{i}"),
                        &p.path(),
                        "eth0",
                        &node.conf("1.1.0")
                    )
                    .0
                )
            });
        }
    });
    assert!(node.leases().is_empty() && node.host_veths().is_empty());
}

#[test]
fn cnitool_drives_every_verb() {
    require_root();
    let cnitool = std::env::var("PODNET_TOOLS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/cache/podnet-tools"))
        .join("bin/cnitool");
    assert!(
        cnitool.is_file(),
        "cnitool not found at {}: run scripts/build-tools.sh",
        cnitool.display()
    );
    let node = Node::new(&["10.244.16.0/24", "fd00:10:244:16::/64"]);
    let confdir = std::env::temp_dir().join(unique("pncni-conf"));
    let bindir = std::env::temp_dir().join(unique("pncni-bin"));
    std::fs::create_dir_all(&confdir).unwrap_or_default();
    std::fs::create_dir_all(&bindir).unwrap_or_default();
    std::fs::copy(BIN, bindir.join("podnet-cni")).unwrap_or_else(|e| panic!("{e}"));
    let conflist = json!({"cniVersion": "1.1.0", "name": "podnet", "plugins": [
        {"type": "podnet-cni", "podCIDRs": node.cidrs, "dataDir": node.data_dir}]});
    std::fs::write(confdir.join("10-podnet.conflist"), conflist.to_string()).unwrap_or_default();
    let pod = Netns::new("pncni-t");
    let run = |verb: &str| {
        Command::new("ip")
            .args(["netns", "exec", &node.ns.0])
            .arg(&cnitool)
            .args([verb, "podnet", &pod.path()])
            .env("CNI_PATH", &bindir)
            .env("NETCONFPATH", &confdir)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for verb in ["add", "check", "status", "del", "gc"] {
        let out = run(verb);
        assert!(
            out.status.success(),
            "cnitool {verb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if verb == "add" {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(ips(&r).len(), 2, "{r}");
            let ping = pod.exec(&["ping", "-c", "1", "-W", "2", "10.244.16.1"]);
            assert!(ping.status.success(), "pod cannot reach its gateway");
        }
    }
    assert!(node.leases().is_empty() && node.host_veths().is_empty());
    let _ = std::fs::remove_dir_all(&confdir);
    let _ = std::fs::remove_dir_all(&bindir);
}

#[test]
fn two_adds_for_one_attachment_at_once_leave_one_whole_attachment() {
    require_root();
    let node = Node::new(&["10.244.17.0/24", "fd00:10:244:17::/64"]);
    let pod = Netns::new("pncni-twin");
    for round in 0..5 {
        let results: Vec<(bool, Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (node, pod) = (&node, &pod);
                    s.spawn(move || {
                        node.cni("ADD", "twin", &pod.path(), "eth0", &node.conf("1.1.0"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or((false, Value::Null)))
                .collect()
        });
        let ok: Vec<&Value> = results
            .iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, v)| v)
            .collect();
        let failed: Vec<&Value> = results
            .iter()
            .filter(|(ok, _)| !*ok)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            ok.len(),
            1,
            "round {round}: exactly one ADD wins: {results:?}"
        );
        assert_eq!(failed[0]["code"], 101, "round {round}: {}", failed[0]);
        // The winner's attachment is whole: its addresses on eth0, its host veth, its
        // leases; the loser took nothing away.
        let addrs =
            String::from_utf8_lossy(&pod.exec(&["ip", "-br", "addr", "show", "eth0"]).stdout)
                .into_owned();
        for ip in ips(ok[0]) {
            assert!(
                addrs.contains(&ip),
                "round {round}: {ip} missing from eth0: {addrs}"
            );
        }
        assert_eq!(node.host_veths().len(), 1, "round {round}");
        assert_eq!(node.leases().len(), 2, "round {round}: {:?}", node.leases());
        let gw = addr_only(&ips(ok[0])[0])
            .rsplit_once('.')
            .map(|(n, _)| format!("{n}.1"))
            .unwrap_or_default();
        assert!(
            pod.exec(&["ping", "-c", "1", "-W", "2", &gw])
                .status
                .success(),
            "round {round}"
        );
        assert!(
            node.cni("DEL", "twin", &pod.path(), "eth0", &node.conf("1.1.0"))
                .0
        );
        assert!(
            node.leases().is_empty() && node.host_veths().is_empty(),
            "round {round}"
        );
    }
}

#[test]
fn an_add_repeated_without_del_keeps_the_first_attachment() {
    require_root();
    let node = Node::new(&["10.244.18.0/24"]);
    let pod = Netns::new("pncni-again");
    let first = node.add("again", &pod);
    // As if the runtime retried after losing track of the first ADD (killed, timed out).
    let (ok, v) = node.cni("ADD", "again", &pod.path(), "eth0", &node.conf("1.1.0"));
    assert!(!ok && v["code"] == 101, "{v}");
    assert_eq!(node.leases(), vec![addr_only(&ips(&first)[0])]);
    assert_eq!(node.host_veths().len(), 1);
    let addrs = String::from_utf8_lossy(&pod.exec(&["ip", "-br", "addr"]).stdout).into_owned();
    assert!(addrs.contains(&ips(&first)[0]), "{addrs}");
    assert!(
        node.cni("DEL", "again", &pod.path(), "eth0", &node.conf("1.1.0"))
            .0
    );
    assert!(node.leases().is_empty() && node.host_veths().is_empty());
    let locks = node.data_dir.join("podnet/locks");
    assert_eq!(
        std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0),
        0,
        "DEL left its lock file in {}",
        locks.display()
    );
}

#[test]
fn an_add_after_an_interrupted_one_replaces_the_host_end_it_left() {
    require_root();
    let node = Node::new(&["10.244.19.0/24"]);
    let pod = Netns::new("pncni-left");
    // What an ADD killed mid-way can leave: the attachment's host end, its peer not in
    // the pod (here still on the node, under another name).
    let host_name = podnet_cni::plugin::host_veth_name("left", "eth0");
    let made = node.ns.exec(&[
        "ip",
        "link",
        "add",
        &host_name,
        "type",
        "veth",
        "peer",
        "name",
        "pnleftover",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let first = node.add("left", &pod);
    // The host end is the new pair's: its peer is the pod's eth0, the leftover is gone.
    assert_eq!(node.host_veths(), vec![host_name.clone()]);
    let pod_links = String::from_utf8_lossy(&pod.exec(&["ip", "-br", "addr"]).stdout).into_owned();
    assert!(pod_links.contains(&ips(&first)[0]), "{pod_links}");
    let gw = "10.244.19.1";
    assert!(
        pod.exec(&["ping", "-c", "1", "-W", "2", gw])
            .status
            .success(),
        "the pod cannot reach its gateway"
    );
    assert!(
        node.cni("DEL", "left", &pod.path(), "eth0", &node.conf("1.1.0"))
            .0
    );
    assert!(node.leases().is_empty() && node.host_veths().is_empty());
}

#[test]
fn gc_leaves_an_attachment_alone_while_an_operation_on_it_is_in_flight() {
    require_root();
    let node = Node::new(&["10.244.19.0/24"]);
    let pod = Netns::new("pncni-busy");
    node.add("busy", &pod);
    // Stand in for an ADD still running: hold the attachment's lock.
    let lock_path = node
        .data_dir
        .join("podnet/locks")
        .join(podnet_cni::plugin::host_veth_name("busy", "eth0"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock: {e}"));
    // Stale temporary files of a killed ADD.
    for stale in [".lease.999999", ".tmp.999999"] {
        std::fs::write(node.data_dir.join("podnet").join(stale), "x").unwrap_or_default();
    }
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    let (ok, v) = node.cni("GC", "", "", "", &conf);
    assert!(ok, "{v}");
    assert_eq!(node.leases().len(), 1, "GC released a lease in use");
    assert_eq!(node.host_veths().len(), 1, "GC removed a veth in use");
    let names: Vec<String> = std::fs::read_dir(node.data_dir.join("podnet"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(".lease.") || n.starts_with(".tmp.")),
        "stale temporary files left: {names:?}"
    );
    drop(held);
    let (ok, v) = node.cni("GC", "", "", "", &conf);
    assert!(ok, "{v}");
    assert!(node.leases().is_empty() && node.host_veths().is_empty());
}

#[test]
fn version_answers_libcnis_validation_probe() {
    // libcni (podman's CNI backend, containerd's go-cni) validates a network with
    // VERSION and placeholder values for the attachment variables.
    let out = Command::new(BIN)
        .env("CNI_COMMAND", "VERSION")
        .env("CNI_NETNS", "dummy")
        .env("CNI_IFNAME", "dummy")
        .env("CNI_PATH", "dummy")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("1.1.0"))),
        "{v}"
    );
}

#[test]
fn run_by_hand_it_says_what_it_is() {
    let out = Command::new(BIN)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("podnet-cni")
            && stderr
                .contains("CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["code"], 4, "the error JSON still goes to stdout: {v}");
}

/// podman's CNI backend (libcni, as containerd's go-cni uses it) drives podnet-cni:
/// it validates the network (VERSION with placeholders), runs two containers on it
/// that reach each other over IPv4 and IPv6, and releases everything when they go.
/// podman runs in a node namespace of the test's own, with every path of its own.
#[test]
fn podman_runs_two_containers_on_a_podnet_network() {
    require_root();
    let podman = Path::new("/usr/bin/podman");
    assert!(
        podman.is_file()
            && Path::new("/usr/sbin/runc").is_file()
            && Path::new("/bin/busybox").is_file(),
        "podman, runc and busybox-static are needed (scripts/test installs the Debian packages)"
    );
    let node = Node::new(&["10.244.20.0/24", "fd00:10:244:20::/64"]);
    let root = std::env::temp_dir().join(unique("pncni-podman"));
    for d in ["bin", "net.d", "rootfs/bin", "storage", "run", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::copy(BIN, root.join("bin/podnet-cni")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy("/bin/busybox", root.join("rootfs/bin/busybox"))
        .unwrap_or_else(|e| panic!("{e}"));
    for applet in ["sh", "sleep", "ping", "ip"] {
        std::os::unix::fs::symlink("busybox", root.join("rootfs/bin").join(applet))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let conflist = json!({"cniVersion": "1.0.0", "name": "podnet", "plugins": [
        {"type": "podnet-cni", "bridge": "podnet0", "podCIDRs": node.cidrs, "dataDir": node.data_dir}]});
    std::fs::write(root.join("net.d/10-podnet.conflist"), conflist.to_string()).unwrap_or_default();
    let r = root.display();
    // runc, not crun: Debian's crun refuses this machine's hybrid cgroup layout. No
    // default ulimits: root here lacks CAP_SYS_RESOURCE to raise them.
    let containers_conf = format!(
        "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{r}/bin\"]\nnetwork_config_dir = \"{r}/net.d\"\n\
         [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{r}/events.log\"\n\
         runtime = \"runc\"\ntmp_dir = \"{r}/tmp\"\nvolume_path = \"{r}/volumes\"\nstatic_dir = \"{r}/static\"\n\
         [containers]\ndefault_ulimits = []\npids_limit = 0\n"
    );
    std::fs::write(root.join("containers.conf"), containers_conf).unwrap_or_default();
    std::fs::write(
        root.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{r}/storage\"\nrunroot = \"{r}/run\"\n"
        ),
    )
    .unwrap_or_default();
    // In the node's network namespace (the plugin's "host"), with the host's mounts.
    let podman_cmd = |args: &[&str]| -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", node.ns.path()))
            .arg(podman)
            .args(args)
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    };
    let rootfs = root.join("rootfs").display().to_string();
    let mut ips_of = Vec::new();
    for name in ["pna", "pnb"] {
        let out = podman_cmd(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "podnet",
            "--rootfs",
            &rootfs,
            "sleep",
            "300",
        ]);
        assert!(
            out.status.success(),
            "podman run {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = podman_cmd(&["exec", name, "ip", "-o", "addr", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let addrs: Vec<String> = text
            .split_whitespace()
            .filter(|w| w.starts_with("10.244.20.") || w.starts_with("fd00:10:244:20:"))
            .map(addr_only)
            .collect();
        assert_eq!(addrs.len(), 2, "{name}: {text}");
        ips_of.push(addrs);
    }
    for target in &ips_of[1] {
        let out = podman_cmd(&["exec", "pna", "ping", "-c", "1", "-W", "2", target]);
        assert!(
            out.status.success(),
            "pna cannot reach pnb at {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(node.leases().len(), 4);
    let out = podman_cmd(&["rm", "-f", "-t", "0", "pna", "pnb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.leases().is_empty(), "leases left: {:?}", node.leases());
    assert!(
        node.host_veths().is_empty(),
        "veths left: {:?}",
        node.host_veths()
    );
    let _ = Command::new("umount")
        .arg("-R")
        .arg(root.join("storage"))
        .output();
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs `f` on a thread of its own that has entered network namespace `ns` (never on a
/// thread the test harness keeps).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("opening netns {ns}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("a thread in {ns} panicked"))
    })
}

/// TCP and UDP servers in a pod on `port` (both families): each answers with the
/// address it saw the client come from. Stopped (and joined) on drop.
struct PeerEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    fn start(ns: &str, port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tcp, udp) = in_netns(ns, || {
            let tcp = std::net::TcpListener::bind(("::", port))
                .unwrap_or_else(|e| panic!("tcp bind: {e}"));
            let udp =
                std::net::UdpSocket::bind(("::", port)).unwrap_or_else(|e| panic!("udp bind: {e}"));
            (tcp, udp)
        });
        tcp.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        udp.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap_or_else(|e| panic!("{e}"));
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            use std::io::Write;
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.write_all(peer.ip().to_canonical().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(peer.ip().to_canonical().to_string().as_bytes(), peer);
                }
            }
        });
        Self {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From inside `ns`: what the server at `ip:port` saw as our address, over TCP or
/// UDP; `None` when nothing answered within a second.
fn seen_from(ns: &str, ip: &str, port: u16, udp: bool) -> Option<String> {
    use std::io::Read;
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let addr = std::net::SocketAddr::new(ip, port);
    let timeout = std::time::Duration::from_secs(1);
    in_netns(ns, || {
        if udp {
            let bind: std::net::SocketAddr = if ip.is_ipv4() {
                "0.0.0.0:0".parse().ok()?
            } else {
                "[::]:0".parse().ok()?
            };
            let s = std::net::UdpSocket::bind(bind).ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            s.send_to(b"who", addr).ok()?;
            let mut buf = [0u8; 64];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        } else {
            let mut c = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
            c.set_read_timeout(Some(timeout)).ok()?;
            let mut out = String::new();
            c.read_to_string(&mut out).ok()?;
            Some(out)
        }
    })
}

/// [`seen_from`], retried for up to 5 s: the first packet of a family may wait for
/// neighbour discovery on three links.
fn seen_eventually(ns: &str, ip: &str, port: u16, udp: bool) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let seen = seen_from(ns, ip, port, udp);
        if seen.is_some() || std::time::Instant::now() > deadline {
            return seen;
        }
    }
}

/// podnet's hostPort rules in the node, whichever firewall holds them.
fn hostport_rules(node: &Node) -> String {
    let mut out = String::from_utf8_lossy(
        &node
            .ns
            .exec(&["nft", "list", "table", "inet", "podnet-hostports"])
            .stdout,
    )
    .into_owned();
    for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
        let save = node.ns.exec(&[tool, "-t", "nat"]);
        out.extend(
            String::from_utf8_lossy(&save.stdout)
                .lines()
                .filter(|l| l.contains("PODNET-HOSTPORTS"))
                .map(|l| format!("{l}\n")),
        );
    }
    out
}

/// hostPorts through both firewalls: reached from another host (source kept), from the
/// node itself, from another pod and from the pod itself (hairpin), TCP and UDP, IPv4
/// and IPv6; a port taken twice is a CNI error that leaves nothing; CHECK sees a rule
/// deleted by hand; a firewall switch moves every mapping; DEL and GC remove them.
#[test]
fn host_ports_reach_the_pod_from_everywhere_in_both_firewalls() {
    require_root();
    for (i, firewall) in ["nftables", "iptables-nft"].into_iter().enumerate() {
        let (v4, v6) = [
            ("10.244.40.0/24", "fd00:10:244:40::/64"),
            ("10.244.41.0/24", "fd00:10:244:41::/64"),
        ][i];
        let node = Node::new(&[v4, v6]);
        // Another host, on the node's uplink.
        let ext = Netns::new("pncni-ext");
        let (up_node, up_ext) = (unique("pnu"), unique("pnx"));
        let out = node.ns.exec(&[
            "ip", "link", "add", &up_node, "type", "veth", "peer", "name", &up_ext,
        ]);
        assert!(
            out.status.success(),
            "adding the uplink: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        node.ns
            .exec(&["ip", "link", "set", &up_ext, "netns", &ext.0]);
        for (ns, dev, a4, a6) in [
            (&node.ns, &up_node, "198.18.90.1/24", "2001:db8:90::1/64"),
            (&ext, &up_ext, "198.18.90.2/24", "2001:db8:90::2/64"),
        ] {
            ns.exec(&["ip", "addr", "add", a4, "dev", dev]);
            ns.exec(&["ip", "addr", "add", a6, "dev", dev, "nodad"]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        let mut conf = node.conf("1.1.0");
        conf["firewall"] = json!(firewall);
        conf["capabilities"] = json!({"portMappings": true});
        let mut mapped = conf.clone();
        mapped["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "udp"},
            {"hostPort": 9090, "containerPort": 80, "protocol": "sctp", "hostIP": "198.18.90.1"},
        ]});
        let (a, b) = (Netns::new("pncni-hpa"), Netns::new("pncni-hpb"));
        let (ok, ra) = node.cni("ADD", "hp-a", &a.path(), "eth0", &mapped);
        assert!(ok, "{firewall}: ADD with port mappings: {ra}");
        let (ok, rb) = node.cni("ADD", "hp-b", &b.path(), "eth0", &conf);
        assert!(ok, "{firewall}: ADD: {rb}");
        let _echo = PeerEcho::start(&a.0, 80);
        let b_ips: Vec<String> = ips(&rb).iter().map(|c| addr_only(c)).collect();
        let gateways = [
            format!("10.244.{}.1", 40 + i),
            format!("fd00:10:244:{}::1", 40 + i),
        ];
        for (fam, node_ip, ext_ip) in [
            (0, "198.18.90.1", "198.18.90.2"),
            (1, "2001:db8:90::1", "2001:db8:90::2"),
        ] {
            for udp in [false, true] {
                let what = |from: &str| {
                    format!(
                        "{firewall}: {from} -> [{node_ip}]:8080/{}",
                        if udp { "udp" } else { "tcp" }
                    )
                };
                // Another host: its own address reaches the pod.
                assert_eq!(
                    seen_eventually(&ext.0, node_ip, 8080, udp).as_deref(),
                    Some(ext_ip),
                    "{}",
                    what("another host")
                );
                // The node itself.
                assert!(
                    seen_eventually(&node.ns.0, node_ip, 8080, udp).is_some(),
                    "{}",
                    what("the node")
                );
                // Another pod of the node: masqueraded to the gateway, so the reply
                // comes back through the host.
                let seen = seen_eventually(&b.0, node_ip, 8080, udp);
                assert!(
                    seen.as_deref() == Some(gateways[fam].as_str())
                        || seen.as_deref() == Some(b_ips[fam].as_str()),
                    "{}: {seen:?}",
                    what("another pod")
                );
                // The pod itself (hairpin).
                assert!(
                    seen_eventually(&a.0, node_ip, 8080, udp).is_some(),
                    "{}",
                    what("the pod itself")
                );
            }
        }
        let rules = hostport_rules(&node);
        assert!(
            rules.contains("sctp") && rules.contains("198.18.90.1"),
            "{firewall}: the SCTP mapping on its hostIP: {rules}"
        );
        // The same port for another pod: a CNI error, and that pod leaves nothing.
        let c = Netns::new("pncni-hpc");
        let (veths, leases) = (node.host_veths().len(), node.leases().len());
        let (ok, v) = node.cni("ADD", "hp-c", &c.path(), "eth0", &mapped);
        assert!(!ok && v["code"] == 102, "{firewall}: a taken hostPort: {v}");
        assert!(
            v["details"].as_str().is_some_and(|d| d.contains("hp-a")),
            "{v}"
        );
        assert_eq!(
            (node.host_veths().len(), node.leases().len()),
            (veths, leases),
            "{firewall}: the refused ADD left state"
        );
        assert_eq!(
            hostport_rules(&node),
            rules,
            "{firewall}: the refused ADD changed the rules"
        );
        // CHECK: passes, then fails once the rules are gone by hand.
        let mut check = mapped.clone();
        check["prevResult"] = ra.clone();
        let (ok, v) = node.cni("CHECK", "hp-a", &a.path(), "eth0", &check);
        assert!(ok, "{firewall}: CHECK: {v}\n{}", hostport_rules(&node));
        if firewall == "nftables" {
            node.ns.exec(&[
                "nft",
                "flush",
                "chain",
                "inet",
                "podnet-hostports",
                "hostports",
            ]);
        } else {
            node.ns
                .exec(&["iptables-nft", "-t", "nat", "-F", "PODNET-HOSTPORTS"]);
        }
        let (ok, v) = node.cni("CHECK", "hp-a", &a.path(), "eth0", &check);
        assert!(
            !ok && v["code"] == 100,
            "{firewall}: CHECK after the rules were deleted: {v}"
        );
        // A pod added under the other firewall moves every mapping there (and repairs).
        let other = if firewall == "nftables" {
            "iptables-nft"
        } else {
            "nftables"
        };
        let mut moved = mapped.clone();
        moved["firewall"] = json!(other);
        moved["runtimeConfig"] = json!({"portMappings": [{"hostPort": 7070, "containerPort": 80}]});
        let d = Netns::new("pncni-hpd");
        let (ok, v) = node.cni("ADD", "hp-d", &d.path(), "eth0", &moved);
        assert!(ok, "{firewall} -> {other}: {v}");
        assert_eq!(
            seen_eventually(&ext.0, "198.18.90.1", 8080, false).as_deref(),
            Some("198.18.90.2"),
            "{firewall} -> {other}: pod a's mapping"
        );
        let nft_table = node
            .ns
            .exec(&["nft", "list", "table", "inet", "podnet-hostports"])
            .status
            .success();
        assert_eq!(
            nft_table,
            other == "nftables",
            "{firewall} -> {other}: {}",
            hostport_rules(&node)
        );
        // GC without d, then DEL a: nothing of podnet's hostPorts is left anywhere.
        let mut gc = moved.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "hp-a", "ifname": "eth0"}, {"containerID": "hp-b", "ifname": "eth0"}]);
        let (ok, v) = node.cni("GC", "", "", "", &gc);
        assert!(ok, "GC: {v}");
        assert!(
            !hostport_rules(&node).contains("7070"),
            "GC left d's mapping: {}",
            hostport_rules(&node)
        );
        for (cid, ns) in [("hp-a", &a), ("hp-b", &b)] {
            let (ok, v) = node.cni("DEL", cid, &ns.path(), "eth0", &moved);
            assert!(ok, "DEL {cid}: {v}");
        }
        assert_eq!(
            hostport_rules(&node),
            "",
            "{firewall}: hostPort rules left after DEL"
        );
        assert_eq!(
            seen_from(&ext.0, "198.18.90.1", 8080, false),
            None,
            "still answering after DEL"
        );
        let records = std::fs::read_dir(node.data_dir.join("podnet/hostports"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(records, 0, "hostPort records left");
    }
}

/// A hostPort on hostIP 127.0.0.1 (what Kubernetes' HostPort conformance test asks for)
/// is reached from the node itself, TCP and UDP, in both firewalls; while it exists the
/// bridge has `route_localnet` and the guard keeps the node's loopback closed to pods
/// (a pod routing 127.0.0.0/8 to its gateway reaches nothing); after DEL both are gone.
#[test]
fn a_loopback_host_port_is_reached_from_the_node_and_guarded_from_pods() {
    require_root();
    for (i, firewall) in ["nftables", "iptables-nft"].into_iter().enumerate() {
        let (v4, v6) = [
            ("10.244.42.0/24", "fd00:10:244:42::/64"),
            ("10.244.43.0/24", "fd00:10:244:43::/64"),
        ][i];
        let gateway = format!("10.244.{}.1", 42 + i);
        let node = Node::new(&[v4, v6]);
        let mut conf = node.conf("1.1.0");
        conf["firewall"] = json!(firewall);
        conf["capabilities"] = json!({"portMappings": true});
        let mut mapped = conf.clone();
        mapped["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
            {"hostPort": 8081, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]});
        let (a, b) = (Netns::new("pncni-lpa"), Netns::new("pncni-lpb"));
        let (ok, v) = node.cni("ADD", "lp-a", &a.path(), "eth0", &mapped);
        assert!(ok, "{firewall}: ADD with a loopback hostIP: {v}");
        let (ok, v) = node.cni("ADD", "lp-b", &b.path(), "eth0", &conf);
        assert!(ok, "{firewall}: ADD: {v}");
        let _echo = PeerEcho::start(&a.0, 80);
        let localnet = || {
            String::from_utf8_lossy(
                &node
                    .ns
                    .exec(&["cat", "/proc/sys/net/ipv4/conf/podnet0/route_localnet"])
                    .stdout,
            )
            .trim()
            .to_string()
        };
        assert_eq!(localnet(), "1", "{firewall}: route_localnet on the bridge");
        for udp in [false, true] {
            // The node: its connection leaves masqueraded to the bridge's address.
            assert_eq!(
                seen_eventually(&node.ns.0, "127.0.0.1", 8081, udp).as_deref(),
                Some(gateway.as_str()),
                "{firewall}: the node -> 127.0.0.1:8081 (udp: {udp})\n{}",
                hostport_rules(&node)
            );
        }
        // A pod aiming at the node's loopback: a service on the node's 127.0.0.1, and a
        // pod that routes 127.0.0.0/8 to its gateway (root in its namespace can).
        let _node_service = PeerEcho::start(&node.ns.0, 9099);
        assert!(
            seen_eventually(&node.ns.0, "127.0.0.1", 9099, false).is_some(),
            "the node's own loopback service answers the node"
        );
        for cmd in [
            vec!["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"],
            vec!["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
            vec![
                "ip",
                "route",
                "del",
                "local",
                "127.0.0.0/8",
                "dev",
                "lo",
                "table",
                "local",
            ],
            vec![
                "ip",
                "route",
                "add",
                "127.0.0.0/8",
                "via",
                &gateway,
                "dev",
                "eth0",
            ],
        ] {
            let out = b.exec(&cmd);
            assert!(
                out.status.success(),
                "pod b: {cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // (127.0.0.2: the pod's own 127.0.0.1 stays local whatever its routes say.)
        let route = b.exec(&["ip", "route", "get", "127.0.0.2"]);
        assert!(
            String::from_utf8_lossy(&route.stdout).contains(&format!("via {gateway}")),
            "pod b does not route 127.0.0.2 to its gateway: {}",
            String::from_utf8_lossy(&route.stdout)
        );
        for udp in [false, true] {
            assert_eq!(
                seen_from(&b.0, "127.0.0.2", 9099, udp),
                None,
                "{firewall}: a pod reached the node's 127.0.0.2:9099 (udp: {udp})"
            );
        }
        // DEL: the mapping, the guard and route_localnet go.
        let (ok, v) = node.cni("DEL", "lp-a", &a.path(), "eth0", &mapped);
        assert!(ok, "{firewall}: DEL: {v}");
        assert_eq!(localnet(), "0", "{firewall}: route_localnet after DEL");
        let rules = hostport_rules(&node);
        assert!(!rules.contains("127.0.0.1"), "{firewall}: left {rules}");
        let filter = node.ns.exec(&["iptables-nft-save", "-t", "filter"]);
        assert!(
            !String::from_utf8_lossy(&filter.stdout).contains("PODNET-HOSTPORTS-GUARD"),
            "{firewall}: the iptables guard is left"
        );
        let (ok, v) = node.cni("DEL", "lp-b", &b.path(), "eth0", &conf);
        assert!(ok, "{firewall}: DEL b: {v}");
    }
}
