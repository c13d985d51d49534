//! The conditions podnet reports — their types and reasons, defined once here and
//! imported by the operator, the daemon, the lab and the tests — and helpers around
//! `metav1.Condition`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod condition_type {
    /// NodeRoute: the operator allocated the node's pod CIDRs (written by
    /// podnet-operator).
    pub const ALLOCATED: &str = "Allocated";
    /// NodeRoute: the node's addresses from `Node.status.addresses` were accepted as
    /// `nodeIPs` (written by podnet-operator).
    pub const NODE_IPS_VALID: &str = "NodeIPsValid";
    /// NodeRoute: the node's daemon programmed routes, masquerade and the CNI config
    /// (written by that node's podnet-daemon).
    pub const PROGRAMMED: &str = "Programmed";
    /// PodNetwork: the network is valid and serves allocations.
    pub const READY: &str = "Ready";
    /// PodNetwork: the spec cannot be served.
    pub const INVALID: &str = "Invalid";
    /// PodNetwork: a selected node waits for a CIDR.
    pub const EXHAUSTED: &str = "Exhausted";
    /// PodNetwork: nodes still hold CIDRs of entries removed from spec.cidrs.
    pub const DRAINING: &str = "Draining";
}

/// Condition reasons. Each is CamelCase, as Kubernetes requires, and says why a
/// condition has its status; the message carries the details.
pub mod reason {
    /// Allocated=True: the CIDRs come from the named network's pools.
    pub const ALLOCATED: &str = "Allocated";
    /// Allocated=True: a CIDR lies in an entry removed from spec.cidrs; the node keeps it.
    pub const DRAINING: &str = "Draining";
    /// Allocated=False: no free node CIDR in some family.
    pub const POOL_EXHAUSTED: &str = "PoolExhausted";
    /// Allocated=False: the status holds something the operator did not allocate or
    /// cannot accept (outside every pool, wrong size, overlapping another node).
    pub const INVALID_ALLOCATION: &str = "InvalidAllocation";
    /// Allocated=False: no PodNetwork selects the node.
    pub const NO_POD_NETWORK: &str = "NoPodNetwork";
    /// Allocated=False: the PodNetwork the node names does not exist.
    pub const UNKNOWN_POD_NETWORK: &str = "UnknownPodNetwork";
    /// Allocated=False: the node's PodNetwork is invalid.
    pub const POD_NETWORK_INVALID: &str = "PodNetworkInvalid";
    /// Allocated=False: the allocator refused for another reason.
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    /// Allocated=Unknown: a new operator leader fenced the NodeRoute and allocates next.
    pub const PENDING: &str = "Pending";
    /// NodeIPsValid=True: every address was accepted.
    pub const VALID_NODE_IPS: &str = "Valid";
    /// NodeIPsValid=False: an address of the Node was refused; the previous valid ones
    /// stay in force.
    pub const INVALID_NODE_IP: &str = "InvalidNodeIP";
    /// Programmed=True: everything programmed.
    pub const PROGRAMMED: &str = "Programmed";
    /// Programmed=True: programmed, except routes to peers whose data this node refused.
    pub const ROUTES_REJECTED: &str = "RoutesRejected";
    /// Programmed=False: this node has no pod CIDR yet.
    pub const WAITING_FOR_ALLOCATION: &str = "WaitingForAllocation";
    /// Programmed=False: part of the pass failed (the message lists every error); the
    /// rest was applied.
    pub const SYNC_FAILED: &str = "SyncFailed";
    /// Programmed=False: the node's own allocation is unusable (the message says why).
    pub const OWN_ALLOCATION_INVALID: &str = "OwnAllocationInvalid";
    /// Ready=True.
    pub const ALLOCATING: &str = "Allocating";
    /// Ready=False / Invalid=True.
    pub const INVALID: &str = "Invalid";
    /// Invalid=True: the spec was refused (overlap with an older network, say).
    pub const REJECTED: &str = "Rejected";
    /// Invalid=False.
    pub const VALID: &str = "Valid";
    /// Exhausted=False.
    pub const CAPACITY_AVAILABLE: &str = "CapacityAvailable";
    /// Draining=False.
    pub const NO_DRAINING_CIDRS: &str = "NoDrainingCIDRs";
    /// Draining=True.
    pub const CIDR_REMOVED_WHILE_IN_USE: &str = "CIDRRemovedWhileInUse";
    /// Event: a CIDR was released into quarantine.
    pub const QUARANTINED: &str = "Quarantined";
    /// Event (on a peer's NodeRoute, from a daemon): a route to it was refused.
    pub const ROUTE_REJECTED: &str = "RouteRejected";
    /// Event (on a NetworkPolicy, from a daemon): a part of it is not enforced.
    pub const POLICY_NOT_ENFORCED: &str = "PolicyNotEnforced";
}

/// The three values a condition's `status` can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Nobody knows yet.
    Unknown,
}

impl ConditionStatus {
    /// The string Kubernetes uses for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// The condition of type `type_` in `conditions`, if any.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether `conditions` holds a condition of type `type_` with status `status`.
pub fn condition_is(conditions: &[Condition], type_: &str, status: ConditionStatus) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == status.as_str())
}

/// A condition of type `type_`, keeping `lastTransitionTime` from the same type in
/// `previous` when the status did not change (so re-applying it is a no-op).
pub fn make_condition(
    previous: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
) -> Condition {
    let since = find_condition(previous, type_)
        .filter(|c| c.status == status.as_str())
        .map(|c| c.last_transition_time.0);
    condition_since(since, type_, status, reason, message, observed_generation)
}

/// A condition of type `type_` whose status has held `since` (none: it changes now).
pub fn condition_since(
    since: Option<k8s_openapi::jiff::Timestamp>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time: Time(since.unwrap_or_else(k8s_openapi::jiff::Timestamp::now)),
    }
}

/// Whether two condition lists say the same thing (type, status, reason, message and
/// observedGeneration), in any order, ignoring timestamps.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            find_condition(b, &x.type_).is_some_and(|y| {
                x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}
