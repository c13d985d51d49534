//! Peer routes: plan against the kernel's routing table and addresses ([`plan_routes`],
//! pure), then apply the plan ([`apply_routes`]) through a [`RouteTable`].
//!
//! podnet owns exactly the routes carrying its protocol number
//! ([`podnet_contract::ROUTE_PROTOCOL`]). It creates routes (never blindly replacing),
//! replaces only its own, deletes only its own, and leaves a prefix that a route of any
//! other owner holds alone (reporting it). The rules that need the kernel — the node's
//! own networks and addresses, on-link gateways — are checked here.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use podnet_netlink::{Route, RouteFilter};

use crate::desired::{PeerRoute, ROUTE_PROTOCOL, Rejection, Rule};

/// The kernel operations the route reconciler needs; a recording fake implements it in
/// unit tests.
pub trait RouteTable {
    /// Every unicast route of the main table of one family.
    fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, podnet_netlink::Error>;
    /// Creates routes that must not exist yet; returns each one the kernel refused.
    fn create(&mut self, routes: &[Route]) -> Vec<(Route, podnet_netlink::Error)>;
    /// Replaces routes of podnet's own (same destination); returns each refusal.
    fn replace(&mut self, routes: &[Route]) -> Vec<(Route, podnet_netlink::Error)>;
    /// Deletes a route of podnet's own.
    fn delete(&mut self, route: &Route) -> Result<(), podnet_netlink::Error>;
    /// Removes what routes left behind once they are gone (podnet's nexthop objects
    /// no route uses); returns how many.
    fn prune(&mut self) -> Result<usize, podnet_netlink::Error> {
        Ok(0)
    }
}

impl RouteTable for podnet_netlink::Netlink {
    fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, podnet_netlink::Error> {
        podnet_netlink::Netlink::routes(
            self,
            RouteFilter {
                ipv6,
                protocol: None,
            },
        )
    }
    // Peer routes go through nexthop objects: the kernel inserts those in linear time,
    // routes with inline gateways in quadratic (podnet-netlink's `nexthop` module).
    fn create(&mut self, routes: &[Route]) -> Vec<(Route, podnet_netlink::Error)> {
        self.create_routes_via_nexthops(routes)
    }
    fn replace(&mut self, routes: &[Route]) -> Vec<(Route, podnet_netlink::Error)> {
        self.replace_routes_via_nexthops(routes)
    }
    fn delete(&mut self, route: &Route) -> Result<(), podnet_netlink::Error> {
        self.del_route(route).map(drop)
    }
    fn prune(&mut self) -> Result<usize, podnet_netlink::Error> {
        self.prune_nexthops(ROUTE_PROTOCOL)
    }
}

/// What the kernel has, as the route planner needs it.
#[derive(Clone, Debug, Default)]
pub struct KernelView {
    /// Every unicast route of the main table, both families.
    pub routes: Vec<Route>,
    /// Every address on the node (with its prefix length), except on podnet's bridge.
    pub addresses: Vec<IpNet>,
}

/// What to change in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to create (no route holds their prefix).
    pub create: Vec<Route>,
    /// podnet routes to correct (gateway or interface changed).
    pub replace: Vec<Route>,
    /// podnet routes no longer wanted.
    pub delete: Vec<Route>,
    /// Peer routes that are (or will be, once applied) in the kernel.
    pub programmed: usize,
    /// Peers refused by a kernel-side rule.
    pub rejected: Vec<Rejection>,
}

/// The most specific route of `routes` covering `ip`.
fn lookup<'a>(routes: &[&'a Route], ip: IpAddr) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| IpNet::new(r.dst, r.prefix).is_ok_and(|n| n.trunc().contains(&ip)))
        .max_by_key(|r| r.prefix)
        .copied()
}

/// Whether `ip` is the network (or, IPv4, the broadcast) address of `subnet`.
fn network_or_broadcast(ip: IpAddr, subnet: IpNet) -> bool {
    match subnet {
        IpNet::V4(n) if n.prefix_len() <= 30 => ip == n.network() || ip == n.broadcast(),
        IpNet::V6(n) if n.prefix_len() <= 126 => ip == n.network(),
        _ => false,
    }
}

/// Plans the kernel changes that make podnet's routes equal `desired`, minus whatever
/// the kernel-side rules refuse: a CIDR overlapping a network the node is on, a gateway
/// that is this node's own address, not on-link, or its subnet's network or broadcast
/// address, a prefix held by a route of another owner.
pub fn plan_routes(desired: &[PeerRoute], kernel: &KernelView) -> RoutePlan {
    let mut plan = RoutePlan::default();
    let (ours, foreign): (Vec<&Route>, Vec<&Route>) = kernel
        .routes
        .iter()
        .partition(|r| r.protocol == ROUTE_PROTOCOL);
    let foreign_prefixes: HashMap<(IpAddr, u8), u8> = foreign
        .iter()
        .map(|r| ((r.dst, r.prefix), r.protocol))
        .collect();
    let node_networks: Vec<IpNet> = kernel.addresses.iter().map(IpNet::trunc).collect();
    let reject = |plan: &mut RoutePlan, peer: &PeerRoute, rule: Rule, detail: String| {
        plan.rejected.push(Rejection {
            node: peer.node.to_string(),
            cidr: Some(peer.dst),
            rule,
            detail,
        });
    };
    let mut wanted: Vec<Route> = Vec::new();
    for peer in desired {
        if let Some(net) = node_networks
            .iter()
            .find(|n| n.contains(&peer.dst) || peer.dst.contains(*n))
        {
            reject(
                &mut plan,
                peer,
                Rule::OverlapsNodeNetwork,
                format!("overlaps {net}, a network this node is on"),
            );
            continue;
        }
        if kernel.addresses.iter().any(|a| a.addr() == peer.via) {
            reject(
                &mut plan,
                peer,
                Rule::GatewayIsOwnAddress,
                format!("node address {} is this node's own", peer.via),
            );
            continue;
        }
        let Some(onlink) = lookup(&foreign, peer.via) else {
            reject(
                &mut plan,
                peer,
                Rule::GatewayNotOnLink,
                format!("no route to {}", peer.via),
            );
            continue;
        };
        if let Some(gw) = onlink.gateway {
            reject(
                &mut plan,
                peer,
                Rule::GatewayNotOnLink,
                format!("{} is reached via gateway {gw}, not on-link", peer.via),
            );
            continue;
        }
        if let Ok(subnet) = IpNet::new(onlink.dst, onlink.prefix)
            && network_or_broadcast(peer.via, subnet.trunc())
        {
            reject(
                &mut plan,
                peer,
                Rule::GatewayNetworkOrBroadcast,
                format!(
                    "{} is the network or broadcast address of {subnet}",
                    peer.via
                ),
            );
            continue;
        }
        let key = (peer.dst.network(), peer.dst.prefix_len());
        if let Some(protocol) = foreign_prefixes.get(&key) {
            reject(
                &mut plan,
                peer,
                Rule::PrefixHeldByOtherRoute,
                format!("a route of protocol {protocol} holds {}", peer.dst),
            );
            continue;
        }
        wanted.push(Route {
            dst: peer.dst.network(),
            prefix: peer.dst.prefix_len(),
            gateway: Some(peer.via),
            oif: onlink.oif,
            protocol: ROUTE_PROTOCOL,
        });
    }
    // Keyed by destination: one pass each way, no quadratic scans at thousands of peers.
    let have: HashMap<(IpAddr, u8), &Route> =
        ours.iter().map(|r| ((r.dst, r.prefix), *r)).collect();
    let want_keys: HashSet<(IpAddr, u8)> = wanted.iter().map(|w| (w.dst, w.prefix)).collect();
    for want in &wanted {
        match have.get(&(want.dst, want.prefix)) {
            None => plan.create.push(want.clone()),
            Some(r) if r.gateway != want.gateway || r.oif != want.oif => {
                plan.replace.push(want.clone());
            }
            Some(_) => {}
        }
    }
    plan.programmed = wanted.len();
    plan.delete = ours
        .into_iter()
        .filter(|r| !want_keys.contains(&(r.dst, r.prefix)))
        .cloned()
        .collect();
    plan
}

/// What applying a plan did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Peer routes in the kernel after the pass.
    pub programmed: usize,
    /// Routes created or corrected.
    pub written: usize,
    /// podnet routes removed.
    pub removed: usize,
    /// Every write the kernel refused (the rest of the plan was applied).
    pub errors: Vec<String>,
}

/// Applies `plan`: every change is attempted, a refused one is reported and the rest go
/// on.
pub fn apply_routes(table: &mut impl RouteTable, plan: &RoutePlan) -> RouteReport {
    let mut report = RouteReport {
        programmed: plan.programmed,
        ..Default::default()
    };
    let mut failed = 0;
    for (route, e) in table
        .create(&plan.create)
        .into_iter()
        .chain(table.replace(&plan.replace))
    {
        failed += 1;
        report
            .errors
            .push(format!("route {}/{}: {e}", route.dst, route.prefix));
    }
    report.written = plan.create.len() + plan.replace.len() - failed;
    report.programmed -= failed.min(report.programmed);
    for route in &plan.delete {
        match table.delete(route) {
            Ok(()) => report.removed += 1,
            Err(e) => report.errors.push(format!(
                "deleting route {}/{}: {e}",
                route.dst, route.prefix
            )),
        }
    }
    // Whatever the routes no longer use (the objects of replaced and deleted routes;
    // after a crash, any left over): only when the pass changed something, so an idle
    // check reads nothing more.
    if !(plan.create.is_empty() && plan.replace.is_empty() && plan.delete.is_empty())
        && let Err(e) = table.prune()
    {
        report
            .errors
            .push(format!("removing unused nexthop objects: {e}"));
    }
    report
}

/// Reads the routing table of both families.
pub fn read_routes(table: &mut impl RouteTable) -> Result<Vec<Route>, podnet_netlink::Error> {
    let mut all = table.routes(false)?;
    all.extend(table.routes(true)?);
    Ok(all)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A routing table in memory that records every write.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub(crate) routes: Vec<Route>,
        pub(crate) writes: Vec<String>,
        pub(crate) refuse: Option<IpAddr>,
        /// How many times what routes left behind was cleaned up.
        pub(crate) prunes: usize,
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
        fn create(&mut self, routes: &[Route]) -> Vec<(Route, podnet_netlink::Error)> {
            let mut errors = Vec::new();
            for route in routes {
                if Some(route.dst) == self.refuse
                    || self
                        .routes
                        .iter()
                        .any(|r| r.dst == route.dst && r.prefix == route.prefix)
                {
                    errors.push((
                        route.clone(),
                        podnet_netlink::Error::Kernel {
                            op: "create".into(),
                            errno: nix::errno::Errno::EEXIST,
                        },
                    ));
                    continue;
                }
                self.routes.push(route.clone());
                self.writes
                    .push(format!("create {}/{}", route.dst, route.prefix));
            }
            errors
        }
        fn replace(&mut self, routes: &[Route]) -> Vec<(Route, podnet_netlink::Error)> {
            for route in routes {
                assert!(
                    self.routes.iter().any(|r| r.dst == route.dst
                        && r.prefix == route.prefix
                        && r.protocol == ROUTE_PROTOCOL),
                    "replaced a route that is not podnet's: {route:?}"
                );
                self.routes
                    .retain(|r| !(r.dst == route.dst && r.prefix == route.prefix));
                self.routes.push(route.clone());
                self.writes
                    .push(format!("replace {}/{}", route.dst, route.prefix));
            }
            Vec::new()
        }
        fn delete(&mut self, route: &Route) -> Result<(), podnet_netlink::Error> {
            assert_eq!(route.protocol, ROUTE_PROTOCOL, "deleted a foreign route");
            self.routes.retain(|r| r != route);
            self.writes
                .push(format!("delete {}/{}", route.dst, route.prefix));
            Ok(())
        }
        fn prune(&mut self) -> Result<usize, podnet_netlink::Error> {
            self.prunes += 1;
            Ok(0)
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

    fn lab_kernel() -> Fake {
        Fake {
            routes: vec![
                r("198.18.0.0", 24, None, 2, 2),              // connected lab network
                r("0.0.0.0", 0, Some("198.18.0.254"), 2, 3),  // default via a gateway
                r("10.99.0.0", 16, Some("198.18.0.9"), 2, 4), // someone else's static route
                r("10.244.7.0", 24, Some("198.18.0.7"), 2, 4), // someone else's, on a pod prefix
                r("10.244.9.0", 24, Some("198.18.0.9"), 2, ROUTE_PROTOCOL), // stale podnet route
                r("10.244.3.0", 24, Some("198.18.0.8"), 2, ROUTE_PROTOCOL), // podnet, wrong gw
            ],
            ..Default::default()
        }
    }

    fn view(t: &mut Fake) -> KernelView {
        KernelView {
            routes: read_routes(t).unwrap_or_default(),
            addresses: vec!["198.18.0.1/24".parse().unwrap_or_default()],
        }
    }

    fn rules(plan: &RoutePlan) -> Vec<String> {
        plan.rejected
            .iter()
            .map(|r| format!("{} {}", r.node, r.rule))
            .collect()
    }

    #[test]
    fn creates_corrects_removes_and_is_idle_when_converged() {
        let mut t = lab_kernel();
        let desired = vec![
            peer("10.244.2.0/24", "198.18.0.2", "b"),
            peer("10.244.3.0/24", "198.18.0.3", "c"),
        ];
        let plan = plan_routes(&desired, &view(&mut t));
        let rep = apply_routes(&mut t, &plan);
        assert_eq!(rep.programmed, 2);
        assert_eq!((rep.written, rep.removed), (2, 1));
        assert!(rep.errors.is_empty());
        assert_eq!(
            t.writes,
            [
                "create 10.244.2.0/24",
                "replace 10.244.3.0/24",
                "delete 10.244.9.0/24"
            ]
        );
        t.writes.clear();
        let again = plan_routes(&desired, &view(&mut t));
        assert_eq!(apply_routes(&mut t, &again).programmed, 2);
        assert!(
            t.writes.is_empty(),
            "a converged pass writes nothing: {:?}",
            t.writes
        );
    }

    /// Unused nexthop objects are looked for after a pass that changed routes, never
    /// after one that found everything in place (an idle check reads nothing more).
    #[test]
    fn leftovers_are_pruned_only_after_a_change() {
        let mut t = lab_kernel();
        let desired = vec![peer("10.244.2.0/24", "198.18.0.2", "good")];
        let plan = plan_routes(&desired, &view(&mut t));
        assert_eq!(plan.create.len(), 1);
        apply_routes(&mut t, &plan);
        assert_eq!(t.prunes, 1);
        let plan = plan_routes(&desired, &view(&mut t));
        assert_eq!(
            plan,
            RoutePlan {
                programmed: 1,
                ..Default::default()
            }
        );
        apply_routes(&mut t, &plan);
        assert_eq!(t.prunes, 1, "a pass without changes pruned");
        let remove_all = plan_routes(&[], &view(&mut t));
        apply_routes(&mut t, &remove_all);
        assert_eq!(t.prunes, 2);
        assert!(t.routes.iter().all(|r| r.protocol != ROUTE_PROTOCOL));
    }

    #[test]
    fn kernel_side_rules_refuse_without_touching_anything_else() {
        let mut t = lab_kernel();
        let desired = vec![
            peer("10.244.2.0/24", "198.18.0.2", "good"),
            peer("198.18.0.0/24", "198.18.0.5", "node-net"),
            peer("198.0.0.0/8", "198.18.0.5", "around-node-net"),
            peer("10.244.4.0/24", "198.18.0.1", "own-ip"),
            peer("10.244.5.0/24", "203.0.113.3", "no-route"),
            peer("10.244.6.0/24", "10.99.0.5", "via-gateway"),
            peer("10.244.8.0/24", "198.18.0.255", "broadcast"),
            peer("10.244.10.0/24", "198.18.0.0", "network"),
            peer("10.244.7.0/24", "198.18.0.7", "held"),
        ];
        let plan = plan_routes(&desired, &view(&mut t));
        assert_eq!(
            rules(&plan),
            [
                "node-net OverlapsNodeNetwork",
                "around-node-net OverlapsNodeNetwork",
                "own-ip GatewayIsOwnAddress",
                "no-route GatewayNotOnLink",
                "via-gateway GatewayNotOnLink",
                "broadcast GatewayNetworkOrBroadcast",
                "network GatewayNetworkOrBroadcast",
                "held PrefixHeldByOtherRoute",
            ]
        );
        let before: Vec<Route> = t
            .routes
            .iter()
            .filter(|r| r.protocol != ROUTE_PROTOCOL)
            .cloned()
            .collect();
        let rep = apply_routes(&mut t, &plan);
        assert_eq!(rep.programmed, 1);
        let after: Vec<Route> = t
            .routes
            .iter()
            .filter(|r| r.protocol != ROUTE_PROTOCOL)
            .cloned()
            .collect();
        assert_eq!(before, after, "routes of other owners are untouched");
    }

    #[test]
    fn a_podnet_route_yields_to_a_route_of_another_owner_on_its_prefix() {
        let mut t = lab_kernel();
        t.routes
            .push(r("10.244.2.0", 24, Some("198.18.0.2"), 2, ROUTE_PROTOCOL));
        t.routes
            .push(r("10.244.2.0", 24, Some("198.18.0.50"), 2, 4));
        let plan = plan_routes(&[peer("10.244.2.0/24", "198.18.0.2", "b")], &view(&mut t));
        assert_eq!(rules(&plan), ["b PrefixHeldByOtherRoute"]);
        assert!(
            plan.delete
                .iter()
                .any(|d| d.dst.to_string() == "10.244.2.0")
        );
    }

    #[test]
    fn one_refused_write_does_not_stop_the_others() {
        let mut t = lab_kernel();
        t.refuse = "10.244.2.0".parse().ok();
        let desired = vec![
            peer("10.244.2.0/24", "198.18.0.2", "b"),
            peer("10.244.4.0/24", "198.18.0.4", "d"),
        ];
        let plan = plan_routes(&desired, &view(&mut t));
        let rep = apply_routes(&mut t, &plan);
        assert_eq!(rep.errors.len(), 1, "{:?}", rep.errors);
        assert_eq!(rep.programmed, 1);
        assert!(t.writes.contains(&"create 10.244.4.0/24".to_string()));
        assert!(t.writes.contains(&"delete 10.244.9.0/24".to_string()));
    }
}
