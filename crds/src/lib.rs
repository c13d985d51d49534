//! podnet's API: the `PodNetwork` and `NodeRoute` custom resources (group `podnet.dev`,
//! version `v1alpha1`, both cluster-scoped) and the generation of their CRD manifests.
//!
//! Field doc comments are the `kubectl explain` text, and the validation rules attached
//! here are enforced by the API server itself, so every client — kubectl with
//! `--validate=false` included — is held to them.

mod conditions;
mod crdgen;
mod noderoute;
mod podnetwork;

pub use conditions::{
    ConditionStatus, condition_is, find_condition, make_condition, same_conditions,
};
pub use crdgen::{CrdFile, crd_files};
pub use noderoute::{NodeRoute, NodeRouteSpec, NodeRouteStatus};
pub use podnetwork::{
    Masquerade, NodeMaskSize, PodNetwork, PodNetworkSpec, PodNetworkStatus, PoolUsage,
};

/// The API group of every podnet resource.
pub const GROUP: &str = "podnet.dev";
/// The API version served and stored.
pub const VERSION: &str = "v1alpha1";
