//! `NodeRoute`: one per Node, carrying the node's addresses and its pod CIDR allocation.

// kube's `printcolumn(...)` lists repeat the same keys once per column, which clippy's
// duplicated_attributes lint mistakes for copy-paste.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::crdgen::{cidr_list_schema, conditions_schema, ip_list_schema, owned_whole};

/// The routing state of one node: its addresses and the pod CIDRs the operator allocated
/// to it. Named after its Node and owned by it; the node's daemon reports whether the
/// dataplane is programmed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "podnet.dev",
    version = "v1alpha1",
    kind = "NodeRoute",
    plural = "noderoutes",
    shortname = "nr",
    category = "podnet",
    status = "NodeRouteStatus",
    derive = "PartialEq",
    doc = "The pod CIDR allocation and routing state of one node.",
    selectable = ".spec.podNetwork",
    printcolumn(
        name = "Node-IP",
        type_ = "string",
        json_path = ".status.nodeIPs",
        description = "The node's addresses peers route through"
    ),
    printcolumn(
        name = "Pod-CIDRs",
        type_ = "string",
        json_path = ".status.podCIDRs",
        description = "The node's pod CIDRs"
    ),
    printcolumn(
        name = "Allocated",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Allocated\")].status",
        description = "The operator allocated the pod CIDRs"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status",
        description = "The node's daemon programmed routes, CNI config and masquerade"
    ),
    printcolumn(
        name = "Firewall",
        type_ = "string",
        json_path = ".status.firewall",
        description = "The firewall the node's daemon programs (nftables, iptables-nft, iptables-legacy)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.podNetwork",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Allocated\")].reason",
        priority = 1
    )
)]
#[kube(validation = Rule::new("self.metadata.name == self.spec.nodeName").message("a NodeRoute is named after its node: metadata.name must equal spec.nodeName"))]
#[serde(rename_all = "camelCase")]
pub struct NodeRouteSpec {
    /// The Node this NodeRoute belongs to (equal to metadata.name). Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeName is immutable"))]
    pub node_name: String,
    /// The PodNetwork the node's CIDRs come from, chosen by the operator. Empty while no
    /// PodNetwork selects the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub pod_network: Option<String>,
}

/// Observed state of a node: its addresses, its allocation, and the conditions of the
/// operator (Allocated) and of the node's daemon (Programmed).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRouteStatus {
    /// The node's addresses, at most one per IP family (InternalIP first, ExternalIP as a
    /// fallback). Peers route this node's pod CIDRs through the address of the same family.
    #[serde(default, rename = "nodeIPs")]
    #[schemars(schema_with = "node_ips_schema")]
    pub node_ips: Vec<String>,
    /// The pod CIDRs allocated to this node, at most one per IP family. This is the source
    /// of truth of the allocation: it never changes while the node exists.
    #[serde(default, rename = "podCIDRs")]
    #[schemars(schema_with = "pod_cidrs_schema")]
    pub pod_cidrs: Vec<String>,
    /// Allocated (written by podnet-operator) and Programmed (written by the node's
    /// podnet-daemon).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The firewall the node's podnet-daemon programs masquerade into: nftables,
    /// iptables-nft or iptables-legacy (written by that daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub firewall: Option<String>,
}

// Written as a whole by the operator (see `owned_whole`).
fn node_ips_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    owned_whole(ip_list_schema(
        "must be an IP address in canonical form, such as 198.18.0.2 or 2001:db8::2",
    ))
}

fn pod_cidrs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = cidr_list_schema(0, "must be a CIDR in canonical form, such as 10.244.3.0/24");
    s.insert("maxItems".into(), 2.into());
    owned_whole(s)
}
