//! The part of a Node the operator reads, decoded straight from the API server's JSON.
//!
//! A full `k8s_openapi` Node is large even when trimmed after decoding: every optional
//! field of its spec and status takes room inline, and a kubelet's Node carries images,
//! conditions, capacity and managed fields the operator never looks at. At 20,000 nodes
//! that was the biggest share of the operator's memory. [`NodeFacts`] keeps only name,
//! uid, resourceVersion, labels, creation and deletion time, `spec.podCIDRs` and
//! `status.addresses`; the decoder skips everything else without allocating it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeAddress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::ClusterResourceScope;
use serde::Deserialize;

/// What the operator knows of one Node.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "Wire")]
pub struct NodeFacts {
    /// name, uid, resourceVersion, labels, creationTimestamp, deletionTimestamp.
    pub metadata: ObjectMeta,
    /// spec.podCIDRs (the operator may copy its allocation into an empty one).
    pub pod_cidrs: Vec<String>,
    /// status.addresses.
    pub addresses: Vec<NodeAddress>,
}

impl kube::Resource for NodeFacts {
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
    deletion_timestamp: Option<Time>,
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

impl From<Wire> for NodeFacts {
    fn from(w: Wire) -> Self {
        let m = w.metadata;
        Self {
            metadata: ObjectMeta {
                name: m.name,
                uid: m.uid,
                resource_version: m.resource_version,
                labels: m.labels,
                creation_timestamp: m.creation_timestamp,
                deletion_timestamp: m.deletion_timestamp,
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
        let n: NodeFacts = serde_json::from_value(json).unwrap_or_default();
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
        let n: NodeFacts =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "bare"}}))
                .unwrap_or_default();
        assert_eq!(n.name_any(), "bare");
        assert!(n.pod_cidrs.is_empty() && n.addresses.is_empty());
    }

    #[test]
    fn is_smaller_than_a_full_node() {
        assert!(
            std::mem::size_of::<NodeFacts>()
                < std::mem::size_of::<k8s_openapi::api::core::v1::Node>() / 2,
            "{} vs {}",
            std::mem::size_of::<NodeFacts>(),
            std::mem::size_of::<k8s_openapi::api::core::v1::Node>()
        );
    }
}
