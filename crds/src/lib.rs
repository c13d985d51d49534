//! podnet's API: the `PodNetwork` and `NodeRoute` custom resources (group `podnet.dev`,
//! version `v1alpha1`, both cluster-scoped) and the generation of their CRD manifests.
//!
//! Field doc comments are the `kubectl explain` text, and the validation rules attached
//! here are enforced by the API server itself, so every client — kubectl with
//! `--validate=false` included — is held to them.
//!
//! This crate must never import anything of the node (podnet-netlink, podnet-firewall,
//! podnet-contract): it is the API, shared by the operator, the daemon and the lab.

mod conditions;
mod crdgen;
mod noderoute;
mod podnetwork;

pub use conditions::{
    ConditionStatus, condition_is, condition_since, condition_type, find_condition, make_condition,
    reason, same_conditions,
};
pub use crdgen::{CrdFile, crd_files};
pub use noderoute::{NodeRoute, NodeRouteSpec, NodeRouteStatus};
pub use podnetwork::{
    Masquerade, NodeMaskSize, PodNetwork, PodNetworkSpec, PodNetworkStatus, PoolUsage,
    QuarantinedCidr,
};

/// The API group of every podnet resource.
pub const GROUP: &str = "podnet.dev";
/// The API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every podnet object.
pub const API_VERSION: &str = "podnet.dev/v1alpha1";
