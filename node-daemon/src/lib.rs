//! podnet-daemon: one per node. From NodeRoutes and PodNetworks only (never the Node
//! list) it converges the node's routes to every peer's pod CIDR, its masquerade rules
//! and the CNI config for podnet-cni, and reports `Programmed` on its NodeRoute.
//!
//! [`peer`] is what the daemon keeps of each NodeRoute; [`desired`] is pure; [`routes`], [`firewall`] and [`cniconf`] apply it;
//! [`first_list`] adds routes from the first NodeRoute list's pages as they arrive;
//! [`controller`] runs the loop.
//!
//! This crate must never watch or list Nodes (only NodeRoutes, PodNetworks, and for
//! policy Pods, Namespaces, NetworkPolicies and ClusterNetworkPolicies): at thousands of
//! nodes the Node list is the cost podnet exists to avoid.

pub mod cluster_policy;
pub mod cniconf;
pub mod controller;
pub mod desired;
pub mod first_list;
pub mod peer;
/// The firewall drivers (the `podnet-firewall` crate, shared with podnet-cni).
pub use podnet_firewall as firewall;
pub mod policy;
pub mod routes;
pub mod state;
