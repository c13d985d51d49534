//! One CNI ADD's netlink part with rtnetlink (a current-thread tokio runtime), as a
//! process of its own: `probe-rtnetlink <pod netns path> <pod index>`, run inside the
//! node's namespace. bench-netlink execs it; see podnet_netlink_probe.

fn main() -> std::process::ExitCode {
    podnet_netlink_probe::probe_main(podnet_netlink_probe::add_pod_rtnetlink)
}
