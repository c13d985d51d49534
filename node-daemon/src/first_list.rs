//! Routes from the first pages of the NodeRoute list. A starting daemon would otherwise
//! wait for the whole list (at 5,000 nodes, 11 pages of 500; at 20,000, 41) before its
//! first route, and then program them all; here the routes of each page go in as the
//! page arrives, so the list and the kernel work overlap.
//!
//! What a page can prove is less than what the whole list proves, so this adds only:
//! - every route passes the same rules as in a full pass ([`desired_state`] on the
//!   page, with this node's own NodeRoute once seen — or the CIDRs the last run saved
//!   until then — and [`plan_routes`] against the kernel, whose view here includes
//!   the bridge's addresses, so no peer route can cover this node's own pods);
//! - nothing is replaced and nothing removed: a route already in the kernel stays as
//!   it is, and a conflict the whole list would settle differently (two peers claiming
//!   one CIDR on different pages) is settled by the first full pass, which follows as
//!   soon as the list is complete and corrects or removes what it must.

use std::borrow::Borrow;
use std::sync::Arc;

use podnet_crds::PodNetwork;

use crate::desired::{Desired, desired_state};
use crate::peer::Peer;
use crate::routes::{KernelView, RouteTable, plan_routes};

/// The routes added from the first list, page by page.
#[derive(Debug)]
pub struct FirstList {
    own: String,
    /// This node's own NodeRoute, once a page held it.
    own_nr: Option<Arc<Peer>>,
    /// What the last run saved (this node's CIDRs before its NodeRoute is seen).
    saved: Option<Desired>,
    /// The kernel as read at the start, plus every route added since.
    kernel: KernelView,
    /// Routes added so far.
    pub added: usize,
    /// Routes the kernel refused (the full pass retries them).
    pub refused: usize,
}

impl FirstList {
    /// `kernel` is the namespace's routes and *all* its addresses (the bridge's too).
    pub fn new(own: &str, saved: Option<Desired>, kernel: KernelView) -> Self {
        Self {
            own: own.to_string(),
            own_nr: None,
            saved,
            kernel,
            added: 0,
            refused: 0,
        }
    }

    /// Adds the routes of `page` that pass every rule and are not in the kernel yet.
    /// Returns how many were added.
    pub fn page(
        &mut self,
        page: Vec<Arc<Peer>>,
        networks: &[impl Borrow<PodNetwork>],
        table: &mut impl RouteTable,
    ) -> usize {
        let mut peers = Vec::with_capacity(page.len());
        for nr in page {
            if *nr.name == *self.own {
                self.own_nr = Some(nr);
            } else {
                peers.push(nr);
            }
        }
        let objects: Vec<&Peer> = peers
            .iter()
            .chain(self.own_nr.as_ref())
            .map(|p| &**p)
            .collect();
        let desired = desired_state(&self.own, &objects, networks, self.saved.as_ref());
        let plan = plan_routes(&desired.routes, &self.kernel);
        // Add only: `plan.replace` and `plan.delete` wait for the complete list.
        let refused = table.create(&plan.create);
        let added: Vec<_> = plan
            .create
            .into_iter()
            .filter(|r| !refused.iter().any(|(f, _)| f == r))
            .collect();
        self.refused += refused.len();
        self.added += added.len();
        let n = added.len();
        self.kernel.routes.extend(added);
        n
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use ipnet::IpNet;
    use podnet_netlink::Route;

    use super::*;
    use crate::desired::ROUTE_PROTOCOL;
    use crate::desired::tests::{nr, pn};
    use crate::routes::tests::Fake;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The lab link's connected route, the one gateways are on.
    fn kernel(addresses: &[&str]) -> KernelView {
        KernelView {
            routes: vec![Route {
                dst: ip("198.18.0.0"),
                prefix: 15,
                gateway: None,
                oif: Some(2),
                protocol: 2,
            }],
            addresses: addresses.iter().map(|a| net(a)).collect(),
        }
    }

    fn peers(page: Vec<podnet_crds::NodeRoute>) -> Vec<Arc<Peer>> {
        page.into_iter()
            .map(|nr| Arc::new(Peer::from(nr)))
            .collect()
    }

    fn networks() -> Vec<PodNetwork> {
        vec![pn(&["10.244.0.0/16"], &[], true)]
    }

    fn table(k: &KernelView) -> Fake {
        Fake {
            routes: k.routes.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn each_page_adds_its_routes_and_nothing_is_removed() {
        let k = kernel(&["198.18.0.1/15"]);
        let mut t = table(&k);
        // A stale route of podnet's own: only the full pass may remove it.
        t.routes.push(Route {
            dst: ip("10.244.9.0"),
            prefix: 24,
            gateway: Some(ip("198.18.0.9")),
            oif: None,
            protocol: ROUTE_PROTOCOL,
        });
        let mut k = k;
        k.routes = t.routes.clone();
        let mut first = FirstList::new("self", None, k);
        let nets = networks();
        let p1 = vec![
            nr("a", &["198.18.0.2"], &["10.244.1.0/24"]),
            nr("b", &["198.18.0.3"], &["10.244.2.0/24"]),
        ];
        assert_eq!(first.page(peers(p1), &nets, &mut t), 2);
        let p2 = vec![nr("c", &["198.18.0.4"], &["10.244.3.0/24"])];
        assert_eq!(first.page(peers(p2), &nets, &mut t), 1);
        assert_eq!(
            t.writes,
            [
                "create 10.244.1.0/24",
                "create 10.244.2.0/24",
                "create 10.244.3.0/24"
            ]
        );
        assert_eq!(first.added, 3);
        assert!(t.routes.iter().any(|r| r.dst == ip("10.244.9.0")));
    }

    #[test]
    fn a_route_already_there_is_left_as_it_is() {
        let mut k = kernel(&["198.18.0.1/15"]);
        k.routes.push(Route {
            dst: ip("10.244.1.0"),
            prefix: 24,
            gateway: Some(ip("198.18.0.7")),
            oif: None,
            protocol: ROUTE_PROTOCOL,
        });
        let mut t = table(&k);
        let mut first = FirstList::new("self", None, k);
        // Another via than the kernel's: a replace, which waits for the full pass.
        let page = vec![nr("a", &["198.18.0.2"], &["10.244.1.0/24"])];
        assert_eq!(first.page(peers(page), &networks(), &mut t), 0);
        assert!(t.writes.is_empty());
    }

    #[test]
    fn no_peer_route_covers_this_nodes_pods() {
        // The bridge holds 10.244.5.1/24 (this node's CIDR, from before a restart);
        // this node's NodeRoute is on a later page.
        let k = kernel(&["198.18.0.1/15", "10.244.5.1/24"]);
        let mut t = table(&k);
        let mut first = FirstList::new("self", None, k);
        let nets = networks();
        let page = vec![nr("evil", &["198.18.0.2"], &["10.244.5.0/24"])];
        assert_eq!(first.page(peers(page), &nets, &mut t), 0);
        // Once this node's NodeRoute is seen, peers overlapping its CIDR are refused
        // even without a bridge address.
        let k = kernel(&["198.18.0.1/15"]);
        let mut t = table(&k);
        let mut first = FirstList::new("self", None, k);
        let own = vec![nr("self", &["198.18.0.1"], &["10.244.6.0/24"])];
        assert_eq!(first.page(peers(own), &nets, &mut t), 0);
        let page = vec![nr("evil", &["198.18.0.2"], &["10.244.6.0/24"])];
        assert_eq!(first.page(peers(page), &nets, &mut t), 0);
        // And before it is seen, the CIDRs the last run saved stand in for it.
        let k = kernel(&["198.18.0.1/15"]);
        let mut t = table(&k);
        let saved = Desired {
            own_cidrs: vec![net("10.244.7.0/24")],
            ..Default::default()
        };
        let mut first = FirstList::new("self", Some(saved), k);
        let page = vec![
            nr("evil", &["198.18.0.2"], &["10.244.7.0/24"]),
            nr("good", &["198.18.0.3"], &["10.244.8.0/24"]),
        ];
        assert_eq!(first.page(peers(page), &nets, &mut t), 1);
        assert_eq!(t.writes, ["create 10.244.8.0/24"]);
    }

    #[test]
    fn a_longer_prefix_inside_the_bridges_network_is_refused() {
        // A second network (wrongly) overlapping the first with a longer mask: its /25
        // would win over the bridge's connected /24 for half of this node's pods.
        let mut narrow = pn(&["10.244.1.0/24"], &[], true);
        narrow.metadata.name = Some("narrow".into());
        narrow.spec.node_mask_size.ipv4 = 25;
        let nets = vec![pn(&["10.244.0.0/16"], &[], true), narrow];
        let mut forged = nr("a-forged", &["198.18.0.7"], &["10.244.1.0/25"]);
        forged.spec.pod_network = Some("narrow".into());
        for (addresses, want) in [
            (&["198.18.0.1/15", "10.244.1.1/24"][..], 0),
            (&["198.18.0.1/15"][..], 1),
        ] {
            let k = kernel(addresses);
            let mut t = table(&k);
            let mut first = FirstList::new("self", None, k);
            assert_eq!(
                first.page(peers(vec![forged.clone()]), &nets, &mut t),
                want,
                "{addresses:?}"
            );
        }
    }

    #[test]
    fn a_refused_route_is_counted_and_not_remembered() {
        let k = kernel(&["198.18.0.1/15"]);
        let mut t = table(&k);
        t.refuse = Some(ip("10.244.1.0"));
        let mut first = FirstList::new("self", None, k);
        let page = vec![
            nr("a", &["198.18.0.2"], &["10.244.1.0/24"]),
            nr("b", &["198.18.0.3"], &["10.244.2.0/24"]),
        ];
        assert_eq!(first.page(peers(page), &networks(), &mut t), 1);
        assert_eq!((first.added, first.refused), (1, 1));
        t.refuse = None;
        let again = vec![nr("a", &["198.18.0.2"], &["10.244.1.0/24"])];
        assert_eq!(first.page(peers(again), &networks(), &mut t), 1);
    }
}
