//! One CNI ADD's netlink part with podnet-netlink, as a process of its own (what
//! podnet-cni pays per pod): `probe-podnet <pod netns path> <pod index>`, run inside the
//! node's namespace. bench-netlink execs it; see podnet_netlink_probe.

fn main() -> std::process::ExitCode {
    podnet_netlink_probe::probe_main(podnet_netlink_probe::add_pod_podnet)
}
