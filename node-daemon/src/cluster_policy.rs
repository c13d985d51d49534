//! The cluster-admin policy API podnet enforces: `ClusterNetworkPolicy`
//! (`policy.networking.k8s.io/v1beta1`, sigs.k8s.io/network-policy-api v0.3.0, standard
//! channel) — the types the daemon reads, nothing more. The CRD itself is upstream's and
//! ships in the chart; these types mirror its fields (the daemon never writes them).
//!
//! A ClusterNetworkPolicy is in the `Admin` tier (asked before NetworkPolicy; `Accept`,
//! `Deny` or `Pass` to NetworkPolicy) or the `Baseline` tier (asked only for traffic no
//! NetworkPolicy isolates; `Accept` or `Deny`). Within a tier, the lower `priority`
//! wins, and within a policy the first matching rule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version podnet reads (upstream's storage version).
pub const VERSION: &str = "v1beta1";

/// A cluster-scoped policy of the admin or baseline tier.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1beta1",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    pub tier: String,
    /// 0 is asked first.
    pub priority: i32,
    /// The pods it applies to.
    pub subject: Subject,
    /// Rules for traffic to the subject pods.
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    /// Rules for traffic from the subject pods.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

/// Exactly one of the two: every pod of the selected namespaces, or selected pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Namespaces whose pods are subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods (by namespace and pod labels) that are subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods picked by their namespace's labels and their own.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// The namespaces.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pods in them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

/// A rule for traffic to the subject.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// For events and comments.
    #[serde(default)]
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    pub action: String,
    /// Where the traffic comes from (one peer must match).
    #[serde(default)]
    pub from: Vec<Peer>,
    /// Which traffic (none: all).
    #[serde(default)]
    pub protocols: Vec<Protocol>,
}

/// A rule for traffic from the subject.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// For events and comments.
    #[serde(default)]
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    pub action: String,
    /// Where the traffic goes (one peer must match).
    #[serde(default)]
    pub to: Vec<Peer>,
    /// Which traffic (none: all).
    #[serde(default)]
    pub protocols: Vec<Protocol>,
}

/// The other side of a rule: exactly one field is set. `networks` is for egress only;
/// `nodes` and `domainNames` are upstream's experimental channel, which podnet does not
/// enforce (a rule naming them is reported and matches nothing, or everything for a
/// `Deny`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Every pod of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// These pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// CIDRs (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Nodes (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// Domain names (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One protocol with an optional destination port, or a named port: exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    /// TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    /// UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    /// SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    /// A container port name of the destination pod (any protocol it names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// A protocol's destination port (none: every port).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port number or an inclusive range: exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    /// A range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// An inclusive port range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PortRange {
    /// First port.
    pub start: i32,
    /// Last port.
    pub end: i32,
}

#[cfg(test)]
mod tests {
    /// The chart's CRD (vendored from upstream) serves the version the daemon reads.
    #[test]
    fn the_chart_ships_a_crd_serving_the_version_podnet_reads() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/podnet/crds/clusternetworkpolicies.policy.networking.k8s.io.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(doc["spec"]["group"].as_str(), Some(super::GROUP));
        let served = doc["spec"]["versions"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|v| {
                v["name"].as_str() == Some(super::VERSION) && v["served"].as_bool() == Some(true)
            });
        assert!(served, "{path} does not serve {}", super::VERSION);
    }

    #[test]
    fn reads_a_policy_as_upstream_writes_it() {
        let yaml = r#"
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: deny-to-sensitive}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {}
  egress:
  - name: to-db
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}
        podSelector: {}
    - networks: ["10.0.0.0/8"]
    protocols:
    - tcp: {destinationPort: {number: 5432}}
    - udp: {destinationPort: {range: {start: 1000, end: 2000}}}
"#;
        let p: super::ClusterNetworkPolicy =
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.spec.tier, "Admin");
        assert_eq!(p.spec.egress[0].to.len(), 2);
        assert_eq!(
            p.spec.egress[0].protocols[1]
                .udp
                .as_ref()
                .and_then(|u| u.destination_port.as_ref())
                .and_then(|d| d.range.as_ref())
                .map(|r| (r.start, r.end)),
            Some((1000, 2000))
        );
        assert!(p.spec.ingress.is_empty());
    }
}
