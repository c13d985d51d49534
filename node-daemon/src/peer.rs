//! What the daemon keeps of each NodeRoute: [`Peer`], a record of the few fields it
//! reads, made from the object as it arrives (see [`podnet_common::Cache`]).
//!
//! A whole NodeRoute in kube's cache took about 1.5 KiB (its `ObjectMeta`, the
//! operator's and every daemon's conditions with their messages, the firewall, owner
//! reference and labels, and the cache's key with copies of name, uid and
//! resourceVersion); a `Peer` takes a few hundred bytes. At 20,000 nodes that is the
//! difference between the daemon's memory following the cluster and not.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use podnet_common::Named;
use podnet_crds::{API_VERSION, NodeRoute, condition_type, find_condition, reason};

/// One NodeRoute as the daemon reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// metadata.name (the node's name; shared with the routes to it).
    pub name: Arc<str>,
    /// metadata.uid (events on the NodeRoute name it).
    pub uid: Option<Box<str>>,
    /// metadata.creationTimestamp.
    pub created: Option<Timestamp>,
    /// spec.podNetwork.
    pub pod_network: Option<Box<str>>,
    /// `None`: the NodeRoute has no status yet.
    pub status: Option<PeerStatus>,
    /// Only for the daemon's own node: what it writes itself.
    pub own: Option<Box<OwnStatus>>,
}

/// The status fields every peer's routes are derived from, as written (parsing and its
/// errors belong to [`crate::desired`], which names the offending value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStatus {
    /// status.nodeIPs.
    pub node_ips: Box<[Box<str>]>,
    /// status.podCIDRs.
    pub pod_cidrs: Box<[Box<str>]>,
    /// The operator's `Allocated` condition.
    pub allocated: Option<Allocated>,
}

/// The parts of the `Allocated` condition the daemon reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocated {
    /// Why the operator does not vouch for the CIDRs in the status; `None`: it does
    /// ([`vouches`]).
    pub refused: Option<Box<str>>,
    /// Its lastTransitionTime: when the allocation was made.
    pub since: Timestamp,
}

/// What the daemon needs of its own node's NodeRoute to write its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnStatus {
    /// metadata.generation (the Programmed condition's observedGeneration).
    pub generation: Option<i64>,
    /// The Programmed condition as last written.
    pub programmed: Option<Condition>,
    /// status.firewall.
    pub firewall: Option<String>,
}

impl Peer {
    /// The record of `nr`; `own`: it is this node's, keep what the daemon writes.
    pub fn new(nr: NodeRoute, own: bool) -> Self {
        let NodeRoute {
            metadata,
            spec,
            status,
        } = nr;
        let mut programmed = None;
        let mut firewall = None;
        let status = status.map(|mut s| {
            if own {
                programmed = find_condition(&s.conditions, condition_type::PROGRAMMED).cloned();
                firewall = s.firewall.take();
            }
            PeerStatus {
                allocated: find_condition(&s.conditions, condition_type::ALLOCATED).map(|c| {
                    Allocated {
                        refused: vouches(&c.status, &c.reason).err().map(Into::into),
                        since: c.last_transition_time.0,
                    }
                }),
                node_ips: boxed(s.node_ips),
                pod_cidrs: boxed(s.pod_cidrs),
            }
        });
        Self {
            own: own.then(|| {
                Box::new(OwnStatus {
                    generation: metadata.generation,
                    programmed,
                    firewall,
                })
            }),
            name: metadata.name.unwrap_or_default().into(),
            uid: metadata.uid.map(Into::into),
            created: metadata.creation_timestamp.map(|t| t.0),
            pod_network: spec.pod_network.map(Into::into),
            status,
        }
    }

    /// A reference to the NodeRoute, for events.
    pub fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(API_VERSION.into()),
            kind: Some("NodeRoute".into()),
            name: Some(self.name.to_string()),
            uid: self.uid.as_deref().map(Into::into),
            ..Default::default()
        }
    }
}

/// Whether an `Allocated` condition with this status and reason vouches for the CIDRs
/// in the status: it is True, or it waits for a family the pool is out of
/// (`False`/`PoolExhausted`: the CIDRs it holds stay valid), or a new operator leader
/// fenced it and will allocate next (`Unknown`/`Pending`).
pub fn vouches(status: &str, reason: &str) -> Result<(), String> {
    match (status, reason) {
        ("True", _) => Ok(()),
        ("False", reason::POOL_EXHAUSTED) | ("Unknown", reason::PENDING) => Ok(()),
        (s, r) => Err(format!("Allocated is {s} ({r})")),
    }
}

fn boxed(v: Vec<String>) -> Box<[Box<str>]> {
    v.into_iter().map(String::into_boxed_str).collect()
}

/// Everything kept, as for this node's own NodeRoute (tests and fuzzing).
impl From<NodeRoute> for Peer {
    fn from(nr: NodeRoute) -> Self {
        Self::new(nr, true)
    }
}

impl Named for Peer {
    fn name(&self) -> &str {
        &self.name
    }
}

/// The record the daemon of node `own` keeps of `nr`.
pub fn record_for(own: &str) -> impl Fn(NodeRoute) -> Peer + Send + 'static {
    let own = own.to_string();
    move |nr| {
        let is_own = nr.metadata.name.as_deref() == Some(own.as_str());
        Peer::new(nr, is_own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute",
            "metadata": {
                "name": "n1", "uid": "u1", "resourceVersion": "7", "generation": 3,
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "labels": {"podnet.dev/network": "default"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "x"}]
            },
            "spec": {"nodeName": "n1", "podNetwork": "default"},
            "status": {
                "nodeIPs": ["198.18.0.2"], "podCIDRs": ["10.244.1.0/24"],
                "firewall": "nftables",
                "conditions": [
                    {"type": "Allocated", "status": "True", "reason": "Allocated",
                     "message": "10.244.1.0/24 from default", "lastTransitionTime": "2026-12-03T10:00:01Z"},
                    {"type": "Programmed", "status": "True", "reason": "Programmed",
                     "message": "3 routes", "lastTransitionTime": "2026-12-03T10:00:02Z"}
                ]
            }
        })
    }

    #[test]
    fn keeps_what_desired_state_reads() {
        let nr: NodeRoute = serde_json::from_value(json()).unwrap_or_else(|e| panic!("{e}"));
        let p = record_for("other")(nr);
        assert_eq!(&*p.name, "n1");
        assert_eq!(p.uid.as_deref(), Some("u1"));
        assert_eq!(p.pod_network.as_deref(), Some("default"));
        assert!(p.created.is_some());
        let s = p.status.as_ref().unwrap_or_else(|| panic!("no status"));
        assert_eq!(&*s.node_ips, [Box::from("198.18.0.2")]);
        assert_eq!(&*s.pod_cidrs, [Box::from("10.244.1.0/24")]);
        let a = s
            .allocated
            .as_ref()
            .unwrap_or_else(|| panic!("no Allocated"));
        assert_eq!(a.refused, None);
        assert_eq!(a.since.to_string(), "2026-12-03T10:00:01Z");
        // A peer's Programmed condition and firewall are not the daemon's business.
        assert!(p.own.is_none());
        let r = p.object_ref();
        assert_eq!(r.name.as_deref(), Some("n1"));
        assert_eq!(r.uid.as_deref(), Some("u1"));
        assert_eq!(r.kind.as_deref(), Some("NodeRoute"));
    }

    #[test]
    fn keeps_its_own_status_for_this_node() {
        let nr: NodeRoute = serde_json::from_value(json()).unwrap_or_else(|e| panic!("{e}"));
        let p = record_for("n1")(nr);
        let own = p.own.as_ref().unwrap_or_else(|| panic!("not own"));
        assert_eq!(own.generation, Some(3));
        assert_eq!(own.firewall.as_deref(), Some("nftables"));
        assert_eq!(
            own.programmed.as_ref().map(|c| c.message.as_str()),
            Some("3 routes")
        );
    }

    #[test]
    fn a_noderoute_without_status_has_none() {
        let nr: NodeRoute = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bare"}, "spec": {"nodeName": "bare"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Peer::from(nr);
        assert!(p.status.is_none() && p.pod_network.is_none());
        assert_eq!(p.own.as_deref(), Some(&OwnStatus::default()));
    }

    #[test]
    fn is_much_smaller_than_a_noderoute() {
        assert!(
            std::mem::size_of::<Peer>() * 3 < std::mem::size_of::<NodeRoute>(),
            "{} vs {}",
            std::mem::size_of::<Peer>(),
            std::mem::size_of::<NodeRoute>()
        );
    }
}
