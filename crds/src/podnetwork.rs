//! `PodNetwork`: a pool of pod addresses that the operator cuts into per-node CIDRs.

// kube's `printcolumn(...)` lists repeat the same keys once per column, which clippy's
// duplicated_attributes lint mistakes for copy-paste.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::crdgen::{cidr_list_schema, conditions_schema, owned_whole};

/// A pool of pod addresses. The operator gives every node it selects one CIDR of
/// `nodeMaskSize` per IP family out of `cidrs`, and the node daemons program routes and
/// masquerade rules from the result.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "podnet.dev",
    version = "v1alpha1",
    kind = "PodNetwork",
    plural = "podnetworks",
    shortname = "pn",
    category = "podnet",
    status = "PodNetworkStatus",
    derive = "PartialEq",
    doc = "A pool of pod addresses that podnet cuts into one CIDR per node and IP family.",
    printcolumn(
        name = "CIDRs",
        type_ = "string",
        json_path = ".spec.cidrs",
        description = "The address pools of this network"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes",
        description = "Nodes holding a CIDR of this network"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the network is valid and serving allocations"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Masquerade",
        type_ = "boolean",
        json_path = ".spec.masquerade.enabled",
        priority = 1
    ),
    printcolumn(
        name = "Exhausted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Exhausted\")].status",
        priority = 1
    )
)]
#[x_kube(validation = Rule::new(
    "self.cidrs.all(c, !isCIDR(c) || (cidr(c).ip().family() == 4 ? cidr(c).prefixLength() <= self.nodeMaskSize.ipv4 : cidr(c).prefixLength() <= self.nodeMaskSize.ipv6))"
).message("every entry of cidrs must be at least as large as the node mask size of its IP family (its prefix length must be <= nodeMaskSize.ipv4 or nodeMaskSize.ipv6)").field_path(".cidrs"))]
#[x_kube(validation = Rule::new(
    "self.cidrs.all(a, self.cidrs.all(b, a == b || !isCIDR(a) || !isCIDR(b) || !cidr(a).containsCIDR(b)))"
).message("entries of cidrs must not overlap each other").field_path(".cidrs"))]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkSpec {
    /// The address pools of this network, IPv4 and/or IPv6 CIDRs in canonical form
    /// (for example 10.244.0.0/16 and fd00:10:244::/56). Each node gets one CIDR per IP
    /// family present here. Entries may be added at any time to grow the pool; an entry
    /// that nodes still use is kept draining until they leave.
    #[schemars(schema_with = "pool_cidrs_schema")]
    pub cidrs: Vec<String>,

    /// The prefix length of the CIDR each node receives, per IP family. Immutable: nodes'
    /// pods depend on their CIDR, so a different size needs a new PodNetwork.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeMaskSize is immutable: running nodes depend on their CIDR size; create a new PodNetwork instead"))]
    pub node_mask_size: NodeMaskSize,

    /// Which nodes take their pod CIDRs from this network. Absent or empty selects every
    /// node. When several networks select a node, the one with the oldest creation time
    /// (then the lowest name) wins, and the NodeRoute names it in spec.podNetwork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Source NAT for pod traffic that leaves the cluster.
    #[serde(default)]
    pub masquerade: Masquerade,

    /// The MTU of pod interfaces and the node bridge. 0 or absent: the MTU of the node's
    /// default-route interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    #[x_kube(validation = Rule::new("self == 0 || self >= 1280").message("mtu must be 0 (use the node's default-route interface MTU) or at least 1280, the IPv6 minimum"))]
    pub mtu: Option<u32>,
}

/// The prefix length of the CIDR each node receives, per IP family.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeMaskSize {
    /// Prefix length of each node's IPv4 CIDR, from 8 to 30 (default 24: 254 pods per node).
    #[serde(default = "default_ipv4_mask")]
    #[schemars(range(min = 8, max = 30))]
    pub ipv4: u8,
    /// Prefix length of each node's IPv6 CIDR, from 32 to 126 (default 64).
    #[serde(default = "default_ipv6_mask")]
    #[schemars(range(min = 32, max = 126))]
    pub ipv6: u8,
}

fn default_ipv4_mask() -> u8 {
    24
}

fn default_ipv6_mask() -> u8 {
    64
}

impl Default for NodeMaskSize {
    fn default() -> Self {
        Self {
            ipv4: default_ipv4_mask(),
            ipv6: default_ipv6_mask(),
        }
    }
}

/// Source NAT for pod traffic that leaves the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Masquerade {
    /// Whether traffic from pods to destinations outside every PodNetwork and outside
    /// nonMasqueradeCIDRs leaves with the node's address as its source (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Extra destinations, outside the cluster, that see the pod's own source address.
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    #[schemars(schema_with = "non_masquerade_cidrs_schema")]
    pub non_masquerade_cidrs: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl Default for Masquerade {
    fn default() -> Self {
        Self {
            enabled: true,
            non_masquerade_cidrs: Vec::new(),
        }
    }
}

/// What the operator observed and decided for a PodNetwork.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkStatus {
    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (valid and allocating), Exhausted (a selected node waits for a CIDR) and
    /// Invalid (the spec cannot be served, with the reason).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The number of nodes holding a CIDR of this network.
    #[serde(default)]
    pub nodes: u32,
    /// IPv4 pool usage, when the network has IPv4 CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<PoolUsage>,
    /// IPv6 pool usage, when the network has IPv6 CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PoolUsage>,
    /// Every CIDR this network serves nodes from: the entries of spec.cidrs, plus entries
    /// removed from spec.cidrs that nodes still use (draining) until the last such node
    /// leaves. Node daemons route a node's CIDR only if it lies inside one of these, and
    /// never masquerade traffic to them.
    #[serde(default, rename = "servedCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "served_cidrs_schema")]
    pub served_cidrs: Vec<String>,
    /// Node CIDRs released recently (their NodeRoute or Node was deleted). Each is held
    /// back from other nodes for the operator's quarantine period, because pods may still
    /// run with addresses from it; a node that comes back under the same name gets it
    /// again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantine: Vec<QuarantinedCidr>,
}

/// A node CIDR held back from reuse after its node released it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedCidr {
    /// The node CIDR.
    #[schemars(length(max = 64))]
    pub cidr: String,
    /// The node that held it; it gets the CIDR back if it returns.
    #[schemars(length(max = 253))]
    pub node: String,
    /// When the operator saw the release (RFC 3339).
    pub released_at: Time,
}

/// How many node CIDRs of one family the pool holds and how many are handed out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    /// Node CIDRs the pool can hold (saturates at 2^63-1 for huge IPv6 pools).
    pub capacity: i64,
    /// Node CIDRs currently allocated.
    pub allocated: i64,
}

fn pool_cidrs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    cidr_list_schema(
        1,
        "must be a CIDR in canonical form, such as 10.244.0.0/16 or fd00:10:244::/56",
    )
}

// Written as a whole by the operator (see `owned_whole`).
fn served_cidrs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    owned_whole(cidr_list_schema(0, "must be a CIDR in canonical form"))
}

/// Up to 256 destinations: a site's private ranges, per-region prefixes and partner
/// networks add up (the daemon keeps them in nftables interval sets or one iptables
/// rule each; docs/benchmarks.md measures 100).
const MAX_NON_MASQUERADE_CIDRS: u32 = 256;

fn non_masquerade_cidrs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = cidr_list_schema(
        0,
        "must be a CIDR in canonical form, such as 198.18.0.0/15 or 2001:db8::/32",
    );
    schema.insert("maxItems".into(), MAX_NON_MASQUERADE_CIDRS.into());
    schema
}
