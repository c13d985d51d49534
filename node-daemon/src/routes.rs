//! Peer routes: make the kernel's podnet-tagged routes equal the desired set.

use std::net::IpAddr;

use ipnet::IpNet;
use podnet_netlink::{Netlink, Route, RouteFilter};

use crate::desired::{PeerRoute, ROUTE_PROTOCOL, Skipped};

/// The kernel operations the route reconciler needs; a recording fake implements it in
/// unit tests.
pub trait RouteTable {
    /// Every unicast route of the main table of one family.
    fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, podnet_netlink::Error>;
    /// Adds or replaces routes.
    fn replace(&mut self, routes: &[Route]) -> Result<(), podnet_netlink::Error>;
    /// Deletes a route.
    fn delete(&mut self, route: &Route) -> Result<(), podnet_netlink::Error>;
}

impl RouteTable for Netlink {
    fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, podnet_netlink::Error> {
        Netlink::routes(
            self,
            RouteFilter {
                ipv6,
                protocol: None,
            },
        )
    }
    fn replace(&mut self, routes: &[Route]) -> Result<(), podnet_netlink::Error> {
        self.replace_routes(routes)
    }
    fn delete(&mut self, route: &Route) -> Result<(), podnet_netlink::Error> {
        self.del_route(route).map(drop)
    }
}

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Desired routes present after the pass.
    pub programmed: usize,
    /// Routes added or corrected.
    pub written: usize,
    /// Stale podnet routes removed.
    pub removed: usize,
    /// Peers not reachable on-link.
    pub skipped: Vec<Skipped>,
}

/// The most specific of `foreign` (the routes podnet did not install) covering `ip`.
fn lookup<'a>(foreign: &[&'a Route], ip: IpAddr) -> Option<&'a Route> {
    foreign
        .iter()
        .filter(|r| IpNet::new(r.dst, r.prefix).is_ok_and(|n| n.trunc().contains(&ip)))
        .max_by_key(|r| r.prefix)
        .copied()
}

/// Makes podnet's routes equal `desired`: each peer CIDR via its node address when that
/// address is on-link (the kernel's route to it has no gateway), nothing else with
/// podnet's protocol. Routes of other protocols are never touched; nothing is written
/// when nothing differs.
pub fn reconcile_routes(
    table: &mut impl RouteTable,
    desired: &[PeerRoute],
) -> Result<RouteReport, podnet_netlink::Error> {
    let mut report = RouteReport::default();
    for ipv6 in [false, true] {
        let all = table.routes(ipv6)?;
        let (ours, foreign): (Vec<&Route>, Vec<&Route>) =
            all.iter().partition(|r| r.protocol == ROUTE_PROTOCOL);
        let mut wanted: Vec<Route> = Vec::new();
        for peer in desired.iter().filter(|p| p.dst.addr().is_ipv6() == ipv6) {
            match lookup(&foreign, peer.via) {
                Some(r) if r.gateway.is_none() => wanted.push(Route {
                    dst: peer.dst.network(),
                    prefix: peer.dst.prefix_len(),
                    gateway: Some(peer.via),
                    oif: r.oif,
                    protocol: ROUTE_PROTOCOL,
                }),
                Some(r) => report.skipped.push(Skipped {
                    node: peer.node.clone(),
                    reason: format!(
                        "{} is not on-link (reached via gateway {:?})",
                        peer.via,
                        r.gateway.map(|g| g.to_string()).unwrap_or_default()
                    ),
                }),
                None => report.skipped.push(Skipped {
                    node: peer.node.clone(),
                    reason: format!("no route to {}", peer.via),
                }),
            }
        }
        // Keyed by destination: one pass each way, no quadratic scans at thousands of peers.
        let have: std::collections::HashMap<(IpAddr, u8), &Route> =
            ours.iter().map(|r| ((r.dst, r.prefix), *r)).collect();
        let want_keys: std::collections::HashSet<(IpAddr, u8)> =
            wanted.iter().map(|w| (w.dst, w.prefix)).collect();
        let missing: Vec<Route> = wanted
            .iter()
            .filter(|want| {
                !have
                    .get(&(want.dst, want.prefix))
                    .is_some_and(|r| r.gateway == want.gateway && r.oif == want.oif)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            table.replace(&missing)?;
            report.written += missing.len();
        }
        report.programmed += wanted.len();
        for have in ours {
            if !want_keys.contains(&(have.dst, have.prefix)) {
                table.delete(have)?;
                report.removed += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        routes: Vec<Route>,
        writes: Vec<String>,
    }

    impl RouteTable for Fake {
        fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, podnet_netlink::Error> {
            Ok(self
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv6() == ipv6)
                .cloned()
                .collect())
        }
        fn replace(&mut self, routes: &[Route]) -> Result<(), podnet_netlink::Error> {
            for route in routes {
                self.routes
                    .retain(|r| !(r.dst == route.dst && r.prefix == route.prefix));
                self.routes.push(route.clone());
                self.writes
                    .push(format!("replace {}/{}", route.dst, route.prefix));
            }
            Ok(())
        }
        fn delete(&mut self, route: &Route) -> Result<(), podnet_netlink::Error> {
            self.routes.retain(|r| r != route);
            self.writes
                .push(format!("delete {}/{}", route.dst, route.prefix));
            Ok(())
        }
    }

    fn r(dst: &str, prefix: u8, gw: Option<&str>, oif: u32, proto: u8) -> Route {
        Route {
            dst: dst.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            prefix,
            gateway: gw.and_then(|g| g.parse().ok()),
            oif: Some(oif),
            protocol: proto,
        }
    }

    fn peer(dst: &str, via: &str, node: &str) -> PeerRoute {
        PeerRoute {
            dst: dst.parse().unwrap_or_default(),
            via: via.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            node: node.into(),
        }
    }

    #[test]
    fn adds_missing_removes_stale_skips_offlink_and_is_idle_when_converged() {
        let mut t = Fake {
            routes: vec![
                r("198.18.0.0", 24, None, 2, 2),              // connected lab network
                r("0.0.0.0", 0, Some("198.18.0.254"), 2, 3),  // default via a gateway
                r("10.99.0.0", 16, Some("198.18.0.9"), 2, 4), // someone else's static route
                r("10.244.9.0", 24, Some("198.18.0.9"), 2, ROUTE_PROTOCOL), // stale podnet route
            ],
            writes: vec![],
        };
        let desired = vec![
            peer("10.244.2.0/24", "198.18.0.2", "b"),
            peer("10.244.3.0/24", "203.0.113.3", "far"),
        ];
        let rep = reconcile_routes(&mut t, &desired).unwrap_or_default();
        assert_eq!(rep.programmed, 1);
        assert_eq!(rep.written, 1);
        assert_eq!(rep.removed, 1);
        assert_eq!(rep.skipped.len(), 1);
        assert!(
            rep.skipped[0].reason.contains("not on-link"),
            "{:?}",
            rep.skipped
        );
        assert_eq!(t.writes, ["replace 10.244.2.0/24", "delete 10.244.9.0/24"]);
        assert!(
            t.routes.iter().any(|r| r.protocol == 4),
            "foreign routes stay"
        );
        t.writes.clear();
        let again = reconcile_routes(&mut t, &desired).unwrap_or_default();
        assert!(
            t.writes.is_empty(),
            "a converged pass writes nothing: {:?}",
            t.writes
        );
        assert_eq!(again.programmed, 1);
    }
}
