//! PodNetwork and NodeRoute objects as the API server could hand them out (its
//! validation assumed bypassed: old objects, a bug, a direct etcd write, a hand edit):
//! deserializing them and everything the operator and the daemon derive from them —
//! network ranking and validation, the node's desired routes, masquerade and CNI
//! config — must never panic, and whatever the input, the daemon's desired state keeps
//! its promises: no default route, no route overlapping another or the node's own
//! CIDRs, every route inside a pool its network serves, via a unicast gateway outside
//! every pod CIDR; no exempt masquerade entry inside another.
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
    let peers: Vec<podnet_daemon::peer::Peer> = routes.into_iter().map(Into::into).collect();
    let d = podnet_daemon::desired::desired_state(&own, &peers, &networks, None);
    let pools: Vec<ipnet::IpNet> = networks
        .iter()
        .flat_map(|pn| {
            pn.spec
                .cidrs
                .iter()
                .chain(pn.status.iter().flat_map(|s| s.served_cidrs.iter()))
        })
        .filter_map(|c| c.parse().ok())
        .collect();
    let overlap = |a: &ipnet::IpNet, b: &ipnet::IpNet| a.contains(b) || b.contains(a);
    for (i, r) in d.routes.iter().enumerate() {
        assert!(r.dst.prefix_len() > 0, "a default route: {r:?}");
        assert!(
            pools.iter().any(|p| p.contains(&r.dst)),
            "outside every pool: {r:?}"
        );
        assert!(
            !d.own_cidrs.iter().any(|o| overlap(o, &r.dst)),
            "over the own CIDR: {r:?}"
        );
        assert!(
            !d.routes[i + 1..].iter().any(|o| overlap(&o.dst, &r.dst)),
            "two routes overlap: {r:?}"
        );
        assert!(
            !pools.iter().any(|p| p.contains(&r.via)),
            "gateway inside a pool: {r:?}"
        );
        assert!(
            !(r.via.is_loopback() || r.via.is_multicast() || r.via.is_unspecified()),
            "gateway not unicast: {r:?}"
        );
    }
    let mut families = d
        .own_cidrs
        .iter()
        .map(|c| c.addr().is_ipv4())
        .collect::<Vec<_>>();
    families.dedup();
    assert_eq!(
        families.len(),
        d.own_cidrs.len(),
        "two own CIDRs of a family"
    );
    if let Some(m) = &d.masquerade {
        for (i, a) in m.exempt.iter().enumerate() {
            assert!(
                !m.exempt[i + 1..].iter().any(|b| overlap(a, b)),
                "exempt entries overlap"
            );
        }
    }
});
