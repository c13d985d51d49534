//! The part of a Node the operator reads, decoded straight from the API server's JSON.
//!
//! A full `k8s_openapi` Node is large even when trimmed after decoding: every optional
//! field of its spec and status takes room inline, and a kubelet's Node carries images,
//! conditions, capacity and managed fields the operator never looks at. At 20,000 nodes
//! that was the biggest share of the operator's memory. The watch decodes a
//! [`NodeObject`] (name, uid, resourceVersion, labels, creation time,
//! `spec.podCIDRs` and `status.addresses`; the decoder skips everything else without
//! allocating it), and the cache keeps the smaller [`NodeFacts`] made from it: no
//! `ObjectMeta`, and of the addresses only the ones peers would route through.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeAddress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::core::ClusterResourceScope;
use podnet_common::Named;
use serde::Deserialize;

use crate::network::node_ips;

/// What the operator knows of one Node (the cache's record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// metadata.name.
    pub name: Box<str>,
    /// metadata.uid.
    pub uid: Box<str>,
    /// metadata.labels (PodNetworks select nodes by them).
    pub labels: BTreeMap<String, String>,
    /// metadata.creationTimestamp (the older node wins a duplicate address).
    pub created: Option<Timestamp>,
    /// Whether spec.podCIDRs is set (the operator may copy its allocation into an empty
    /// one).
    pub has_pod_cidrs: bool,
    /// The addresses peers would route through ([`node_ips`] of status.addresses).
    pub ips: Vec<String>,
}

impl Named for NodeFacts {
    fn name(&self) -> &str {
        &self.name
    }
}

impl From<NodeObject> for NodeFacts {
    fn from(n: NodeObject) -> Self {
        let m = n.metadata;
        Self {
            name: m.name.unwrap_or_default().into(),
            uid: m.uid.unwrap_or_default().into(),
            labels: m.labels.unwrap_or_default(),
            created: m.creation_timestamp.map(|t| t.0),
            has_pod_cidrs: !n.pod_cidrs.is_empty(),
            ips: node_ips(&n.addresses),
        }
    }
}

/// A Node as the watch decodes it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "Wire")]
pub struct NodeObject {
    /// name, uid, resourceVersion, labels, creationTimestamp.
    pub metadata: ObjectMeta,
    /// spec.podCIDRs.
    pub pod_cidrs: Vec<String>,
    /// status.addresses.
    pub addresses: Vec<NodeAddress>,
}

impl kube::Resource for NodeObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The JSON shape, with only the fields read; serde skips the others.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
    #[serde(default)]
    status: Option<WireStatus>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct WireStatus {
    #[serde(default)]
    addresses: Option<Vec<NodeAddress>>,
}

impl From<Wire> for NodeObject {
    fn from(w: Wire) -> Self {
        let m = w.metadata;
        Self {
            metadata: ObjectMeta {
                name: m.name,
                uid: m.uid,
                resource_version: m.resource_version,
                labels: m.labels,
                creation_timestamp: m.creation_timestamp,
                ..Default::default()
            },
            pod_cidrs: w.spec.and_then(|s| s.pod_cidrs).unwrap_or_default(),
            addresses: w.status.and_then(|s| s.addresses).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn decodes_what_the_operator_reads_and_skips_the_rest() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "n1", "uid": "u1", "resourceVersion": "42",
                "labels": {"zone": "a"},
                "annotations": {"big": "x"},
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {"podCIDRs": ["10.244.1.0/24"], "providerID": "p", "taints": []},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "198.18.0.2"}],
                "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 1}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.36.3"}
            }
        });
        let n: NodeObject = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(n.name_any(), "n1");
        assert_eq!(n.uid().as_deref(), Some("u1"));
        assert_eq!(n.resource_version().as_deref(), Some("42"));
        assert_eq!(n.labels().get("zone").map(String::as_str), Some("a"));
        assert!(n.metadata.creation_timestamp.is_some());
        assert!(n.metadata.annotations.is_none() && n.metadata.managed_fields.is_none());
        assert_eq!(n.pod_cidrs, ["10.244.1.0/24"]);
        assert_eq!(n.addresses.len(), 1);
        assert_eq!(n.addresses[0].address, "198.18.0.2");
    }

    #[test]
    fn a_node_without_spec_or_status_decodes_empty() {
        let n: NodeObject =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "bare"}}))
                .unwrap_or_default();
        assert_eq!(n.name_any(), "bare");
        assert!(n.pod_cidrs.is_empty() && n.addresses.is_empty());
    }

    #[test]
    fn the_record_keeps_what_planning_reads() {
        let n: NodeObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "uid": "u1", "labels": {"zone": "a"},
                         "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "InternalIP", "address": "198.18.0.2"}]}
        }))
        .unwrap_or_default();
        let facts = NodeFacts::from(n);
        assert_eq!((&*facts.name, &*facts.uid), ("n1", "u1"));
        assert_eq!(facts.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(facts.created.map(|t| t.as_second()), Some(1_796_292_000));
        assert!(facts.has_pod_cidrs);
        assert_eq!(facts.ips, ["198.18.0.2"]);
        assert!(
            std::mem::size_of::<NodeFacts>()
                < std::mem::size_of::<k8s_openapi::api::core::v1::Node>() / 4,
            "{} vs {}",
            std::mem::size_of::<NodeFacts>(),
            std::mem::size_of::<k8s_openapi::api::core::v1::Node>()
        );
    }
}
