//! The probe binaries do what bench-netlink times: run inside a node namespace with a
//! bridge, each gives a pod namespace its veth, addresses and default routes. Needs root.

use std::path::PathBuf;
use std::process::Command;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip (iproute2) is needed: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn each_probe_wires_a_pod() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the probe test needs root (network namespaces)"
    );
    let tag = format!("pnpr{}", std::process::id());
    let node = format!("{tag}-node");
    let mut spaces = Namespaces(vec![node.clone()]);
    ip(&["netns", "add", &node]);
    ip(&[
        "-n",
        &node,
        "link",
        "add",
        podnet_netlink_probe::BRIDGE,
        "type",
        "bridge",
    ]);
    ip(&[
        "-n",
        &node,
        "link",
        "set",
        podnet_netlink_probe::BRIDGE,
        "up",
    ]);
    for (i, probe) in [
        env!("CARGO_BIN_EXE_probe-podnet"),
        env!("CARGO_BIN_EXE_probe-rtnetlink"),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = format!("{tag}-p{i}");
        ip(&["netns", "add", &pod]);
        spaces.0.push(pod.clone());
        let path = PathBuf::from("/run/netns").join(&pod);
        ip(&[
            "netns",
            "exec",
            &node,
            probe,
            &path.display().to_string(),
            &i.to_string(),
        ]);
        let (v4, v6) = podnet_netlink_probe::pod_ips(i);
        let addrs = ip(&["-n", &pod, "addr", "show", "eth0"]);
        assert!(addrs.contains(&format!("{v4}/24")), "{probe}: {addrs}");
        assert!(addrs.contains(&format!("{v6}/64")), "{probe}: {addrs}");
        let routes = ip(&["-n", &pod, "-6", "route", "show", "default"]);
        assert!(routes.contains("fd00:10:244:1::1"), "{probe}: {routes}");
        let host = ip(&[
            "-n",
            &node,
            "link",
            "show",
            &podnet_netlink_probe::host_name(i),
        ]);
        assert!(
            host.contains(&format!("master {}", podnet_netlink_probe::BRIDGE)),
            "{probe}: {host}"
        );
    }
}
