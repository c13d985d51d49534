//! The operator's Kubernetes events: routine allocations show in status; only what
//! needs a person (a refused allocation, an exhausted or invalid network, CIDRs
//! draining) becomes a Warning event.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use podnet_crds::{
    ConditionStatus, NodeRoute, NodeRouteStatus, PodNetwork, PodNetworkStatus, condition_type,
    find_condition, reason,
};
use tracing::debug;

/// Publishes the operator's events.
pub struct Announcer {
    recorder: Recorder,
}

impl Announcer {
    /// Publishes through `recorder`.
    pub fn new(recorder: Recorder) -> Self {
        Self { recorder }
    }

    /// Warns about every condition of a written NodeRoute status that is not True, or
    /// that says its CIDRs are draining.
    pub async fn node(&self, nr: &NodeRoute, status: &NodeRouteStatus) {
        for c in &status.conditions {
            if c.status != ConditionStatus::True.as_str() || c.reason == reason::DRAINING {
                self.warn(nr.object_ref(&()), &c.reason, &c.message).await;
            }
        }
    }

    /// Warns about each alarming PodNetwork condition (exhausted, invalid, draining)
    /// that became true or changed its message.
    pub async fn network(
        &self,
        pn: &PodNetwork,
        before: &PodNetworkStatus,
        after: &PodNetworkStatus,
    ) {
        for c in &after.conditions {
            let was = find_condition(&before.conditions, &c.type_);
            let changed = was.is_none_or(|w| w.status != c.status || w.message != c.message);
            let alarming = c.status == ConditionStatus::True.as_str()
                && [
                    condition_type::EXHAUSTED,
                    condition_type::INVALID,
                    condition_type::DRAINING,
                ]
                .contains(&c.type_.as_str());
            if changed && alarming {
                self.warn(pn.object_ref(&()), &c.reason, &c.message).await;
            }
        }
    }

    /// Publishes one Warning event; a failure is logged, never fatal.
    pub async fn warn(&self, reference: ObjectReference, reason: &str, note: &str) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            debug!(error = %e, "could not publish an event");
        }
    }
}
