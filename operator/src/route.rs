//! The part of a NodeRoute the operator plans from, kept in its cache.
//!
//! A decoded [`NodeRoute`] is large: its `ObjectMeta` takes room inline for every
//! optional field, and its status carries the daemon's conditions and the operator's own
//! with their messages. At 20,000 nodes the cached NodeRoutes were the largest share of
//! the operator's peak memory (about 28 MB). [`RouteFacts`] keeps what planning reads:
//! name, uid, resourceVersion, generation, whether it is being deleted, the network in
//! its spec, the parsed CIDRs and the node IPs of its status, and of the operator's part
//! of the status only a 128-bit fingerprint (to tell whether a planned status differs
//! from it) and when each of the operator's conditions last changed status (to keep
//! `lastTransitionTime` when it does not).

use std::hash::{DefaultHasher, Hash, Hasher};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use podnet_common::Named;
use podnet_crds::{ConditionStatus, NodeRoute, NodeRouteStatus, find_condition};

use crate::plan::OWN_CONDITIONS;

/// What the operator knows of one NodeRoute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteFacts {
    /// metadata.name (the node's name).
    pub name: Box<str>,
    /// metadata.uid.
    pub uid: Box<str>,
    /// metadata.resourceVersion.
    pub resource_version: Box<str>,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Whether metadata.deletionTimestamp is set.
    pub deleting: bool,
    /// spec.podNetwork.
    pub network: Option<Box<str>>,
    /// What its status says.
    pub status: StatusFacts,
}

/// What the operator knows of a NodeRoute's status (an absent status reads as empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusFacts {
    /// status.podCIDRs, parsed (unparsable entries left out).
    pub pod_cidrs: Box<[IpNet]>,
    /// status.nodeIPs.
    pub node_ips: Box<[String]>,
    /// For each of [`OWN_CONDITIONS`], in that order: its status and lastTransitionTime.
    transitions: [Option<(ConditionStatus, Timestamp)>; OWN_CONDITIONS.len()],
    /// [`fingerprint`] of the status.
    fingerprint: u128,
}

impl StatusFacts {
    /// When the operator's condition `type_` last changed to `status`: its
    /// lastTransitionTime if it has that status now.
    pub fn since(&self, type_: &str, status: ConditionStatus) -> Option<Timestamp> {
        let i = OWN_CONDITIONS.iter().position(|t| *t == type_)?;
        self.transitions[i]
            .filter(|(s, _)| *s == status)
            .map(|(_, at)| at)
    }

    /// Whether `desired` says what this status says in the operator's part: nodeIPs,
    /// podCIDRs, observedGeneration and the operator's conditions (type, status, reason,
    /// message, observedGeneration; not their timestamps).
    pub fn same_as(&self, desired: &NodeRouteStatus) -> bool {
        self.fingerprint == fingerprint(desired)
    }
}

impl From<&NodeRouteStatus> for StatusFacts {
    fn from(s: &NodeRouteStatus) -> Self {
        let transition = |type_: &str| {
            let c = find_condition(&s.conditions, type_)?;
            let status = [
                ConditionStatus::True,
                ConditionStatus::False,
                ConditionStatus::Unknown,
            ]
            .into_iter()
            .find(|st| st.as_str() == c.status)?;
            Some((status, c.last_transition_time.0))
        };
        Self {
            pod_cidrs: s.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            node_ips: s.node_ips.clone().into_boxed_slice(),
            transitions: OWN_CONDITIONS.map(transition),
            fingerprint: fingerprint(s),
        }
    }
}

/// A 128-bit digest of the operator's part of a NodeRoute status. Two statuses that
/// differ there get different fingerprints except with probability about 2^-128: it
/// stands in for keeping every condition's message in the cache.
fn fingerprint(s: &NodeRouteStatus) -> u128 {
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        s.node_ips.hash(&mut h);
        s.pod_cidrs.hash(&mut h);
        s.observed_generation.hash(&mut h);
        let own = s
            .conditions
            .iter()
            .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
            .count();
        own.hash(&mut h);
        for type_ in OWN_CONDITIONS {
            match find_condition(&s.conditions, type_) {
                Some(c) => {
                    1u8.hash(&mut h);
                    c.status.hash(&mut h);
                    c.reason.hash(&mut h);
                    c.message.hash(&mut h);
                    c.observed_generation.hash(&mut h);
                }
                None => 0u8.hash(&mut h),
            }
        }
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

impl RouteFacts {
    /// A reference to the NodeRoute, for events.
    pub fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(NodeRoute::api_version(&()).into_owned()),
            kind: Some(NodeRoute::kind(&()).into_owned()),
            name: Some(self.name.to_string()),
            uid: Some(self.uid.to_string()),
            resource_version: Some(self.resource_version.to_string()),
            ..Default::default()
        }
    }
}

impl From<&NodeRoute> for RouteFacts {
    fn from(nr: &NodeRoute) -> Self {
        let m = &nr.metadata;
        let boxed = |s: &Option<String>| s.as_deref().unwrap_or_default().into();
        Self {
            name: boxed(&m.name),
            uid: boxed(&m.uid),
            resource_version: boxed(&m.resource_version),
            generation: m.generation,
            deleting: m.deletion_timestamp.is_some(),
            network: nr.spec.pod_network.as_deref().map(Box::from),
            status: StatusFacts::from(nr.status.as_ref().unwrap_or(&NodeRouteStatus::default())),
        }
    }
}

impl From<NodeRoute> for RouteFacts {
    fn from(nr: NodeRoute) -> Self {
        Self::from(&nr)
    }
}

impl Named for RouteFacts {
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use podnet_crds::condition_type;

    use super::*;

    fn condition(type_: &str, status: &str, message: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(at).unwrap_or_default()),
        }
    }

    fn status() -> NodeRouteStatus {
        NodeRouteStatus {
            node_ips: vec!["198.18.0.2".into()],
            pod_cidrs: vec!["10.0.1.0/24".into(), "not-a-cidr".into()],
            conditions: vec![
                condition("Programmed", "True", "daemon", 5),
                condition(condition_type::ALLOCATED, "True", "10.0.1.0/24", 7),
                condition(condition_type::NODE_IPS_VALID, "False", "refused", 9),
            ],
            observed_generation: Some(1),
            firewall: Some("nftables".into()),
        }
    }

    #[test]
    fn keeps_parsed_cidrs_ips_and_the_transitions_of_the_operators_conditions() {
        let s = StatusFacts::from(&status());
        assert_eq!(
            s.pod_cidrs.as_ref(),
            ["10.0.1.0/24"
                .parse::<IpNet>()
                .unwrap_or_else(|e| panic!("{e}"))]
        );
        assert_eq!(s.node_ips.as_ref(), ["198.18.0.2".to_string()]);
        let at = |s: i64| Timestamp::from_second(s).ok();
        assert_eq!(
            s.since(condition_type::ALLOCATED, ConditionStatus::True),
            at(7)
        );
        assert_eq!(
            s.since(condition_type::ALLOCATED, ConditionStatus::False),
            None
        );
        assert_eq!(
            s.since(condition_type::NODE_IPS_VALID, ConditionStatus::False),
            at(9)
        );
        assert_eq!(s.since("Programmed", ConditionStatus::True), None);
    }

    #[test]
    fn same_as_sees_every_operator_field_and_ignores_the_rest() {
        let facts = StatusFacts::from(&status());
        let mut same = status();
        // Timestamps, the daemon's conditions and fields, and order do not count.
        same.conditions.reverse();
        same.conditions[0].last_transition_time = Time(Timestamp::UNIX_EPOCH);
        same.conditions.retain(|c| c.type_ != "Programmed");
        same.firewall = None;
        assert!(facts.same_as(&same));
        let changes: [fn(&mut NodeRouteStatus); 8] = [
            |s| s.node_ips.push("2001:db8::2".into()),
            |s| s.pod_cidrs.truncate(1),
            |s| s.observed_generation = Some(2),
            |s| s.conditions[1].status = "False".into(),
            |s| s.conditions[1].reason = "Other".into(),
            |s| s.conditions[1].message.push('!'),
            |s| s.conditions[2].observed_generation = None,
            |s| {
                s.conditions
                    .push(condition(condition_type::ALLOCATED, "True", "x", 1))
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = status();
            change(&mut other);
            assert!(!facts.same_as(&other), "change {i} went unnoticed");
        }
    }

    #[test]
    fn a_noderoute_without_status_reads_as_an_empty_one() {
        let mut nr = NodeRoute::new(
            "n1",
            podnet_crds::NodeRouteSpec {
                node_name: "n1".into(),
                pod_network: None,
            },
        );
        nr.metadata.uid = Some("u".into());
        nr.metadata.resource_version = Some("7".into());
        let facts = RouteFacts::from(&nr);
        assert_eq!(
            (&*facts.name, &*facts.uid, &*facts.resource_version),
            ("n1", "u", "7")
        );
        assert!(facts.status.same_as(&NodeRouteStatus::default()));
        assert!(facts.status.pod_cidrs.is_empty() && !facts.deleting);
        let r = facts.object_ref();
        assert_eq!(r.kind.as_deref(), Some("NodeRoute"));
        assert_eq!(r.name.as_deref(), Some("n1"));
    }
}
