//! PodNetwork and NodeRoute objects as the API server could hand them out (its
//! validation assumed bypassed: old objects, a bug, a direct etcd write): deserializing
//! them and everything the operator and the daemon derive from them — network ranking
//! and validation, the node's desired routes, masquerade and CNI config — must never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podnet_crds::{NodeRoute, PodNetwork};

fuzz_target!(|data: &[u8]| {
    // Input: a JSON array of objects; each is tried as both kinds.
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        return;
    };
    let mut networks: Vec<PodNetwork> = Vec::new();
    let mut routes: Vec<NodeRoute> = Vec::new();
    for item in items.into_iter().take(64) {
        if let Ok(pn) = serde_json::from_value::<PodNetwork>(item.clone()) {
            networks.push(pn);
        }
        if let Ok(nr) = serde_json::from_value::<NodeRoute>(item) {
            routes.push(nr);
        }
    }
    let views = podnet_operator::network::evaluate_networks(&networks);
    let labels = std::collections::BTreeMap::new();
    let _ = podnet_operator::network::choose_network(&labels, &views);
    let own = routes
        .first()
        .map(|r| r.spec.node_name.clone())
        .unwrap_or_default();
    let _ = podnet_daemon::desired::desired_state(&own, &routes, &networks);
});
