//! Addresses and routes.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;

use crate::{Error, Netlink, Result};

/// A unicast route in the main table: `dst/prefix [via gateway] [dev oif] proto P`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Destination network address.
    pub dst: IpAddr,
    /// Destination prefix length (0: default route).
    pub prefix: u8,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Routing protocol number (who owns the route).
    pub protocol: u8,
}

/// IPv6 duplicate address detection for a new address (IPv4 has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dad {
    /// Let the kernel probe the address first (it stays "tentative" meanwhile).
    Run,
    /// Use the address at once: for addresses podnet alone hands out (pod addresses
    /// from its own lease store, the bridge's gateway addresses).
    Skip,
}

/// An address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The link's index.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Whether its scope is global (not host or link).
    pub global: bool,
}

impl Address {
    fn from_message(a: &AddressMessage) -> Option<Self> {
        // IFA_ADDRESS is the peer on point-to-point links; IFA_LOCAL is the local
        // address when present.
        let local = a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        Some(Self {
            index: a.header.index,
            ip: local.or(address)?,
            prefix: a.header.prefix_len,
            global: a.header.scope == AddressScope::Universe,
        })
    }
}

/// Which routes a dump returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteFilter {
    /// Only this family (true: IPv6).
    pub ipv6: bool,
    /// Only routes of this protocol number.
    pub protocol: Option<u8>,
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn from_route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

impl Route {
    fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&self.dst);
        msg.header.destination_prefix_length = self.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(self.protocol);
        msg.header.scope = if self.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if self.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_addr(self.dst)));
        }
        if let Some(gw) = self.gateway {
            msg.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Self> {
        if msg.header.kind != RouteType::Unicast {
            return None;
        }
        let mut table = u32::from(msg.header.table);
        let mut route = Route {
            dst: match msg.header.address_family {
                AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            },
            prefix: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            protocol: u8::from(msg.header.protocol),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => route.dst = from_route_addr(a)?,
                RouteAttribute::Gateway(a) => route.gateway = from_route_addr(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(route)
    }
}

impl Netlink {
    /// Adds `ip/prefix` on link `index`, with or without IPv6 duplicate address
    /// detection. EEXIST when it is there already.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8, dad: Dad) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(&ip);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if dad == Dad::Skip {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding {ip}/{prefix} to link {index}"),
        )
        .map(drop)
    }

    /// The addresses (with prefix lengths) on link `index`, global scope only.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|a| a.index == index && a.global)
            .map(|a| (a.ip, a.prefix))
            .collect())
    }

    /// Every address on every link of the namespace.
    pub fn all_addresses(&mut self) -> Result<Vec<Address>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            || "listing addresses".into(),
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .collect())
    }

    /// Removes `ip/prefix` from link `index`; Ok(false) when it was not there.
    pub fn del_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<bool> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(&ip);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        match self.request(RouteNetlinkMessage::DelAddress(msg), 0, || {
            format!("removing {ip}/{prefix} from link {index}")
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(Errno::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds a route; EEXIST when an equal one exists.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route.message()),
            NLM_F_CREATE | NLM_F_EXCL,
            || {
                format!(
                    "adding route {}/{} via {:?}",
                    route.dst, route.prefix, route.gateway
                )
            },
        )
        .map(drop)
    }

    /// Adds or replaces the route to `dst/prefix`.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route.message()),
            NLM_F_CREATE | NLM_F_REPLACE,
            || {
                format!(
                    "replacing route {}/{} via {:?}",
                    route.dst, route.prefix, route.gateway
                )
            },
        )
        .map(drop)
    }

    /// Creates many routes in batched requests; a route whose destination is taken
    /// (by anyone) is refused with EEXIST, never replaced. Returns every refusal.
    pub fn create_routes(&mut self, routes: &[Route]) -> Vec<(Route, Error)> {
        self.route_batch(routes, NLM_F_CREATE | NLM_F_EXCL, "creating")
    }

    /// Replaces many routes in batched requests (creating any that are missing). Only
    /// for routes the caller owns: the kernel replaces whatever holds the destination.
    /// Returns every refusal.
    pub fn replace_routes(&mut self, routes: &[Route]) -> Vec<(Route, Error)> {
        self.route_batch(routes, NLM_F_CREATE | NLM_F_REPLACE, "replacing")
    }

    fn route_batch(&mut self, routes: &[Route], flags: u16, verb: &str) -> Vec<(Route, Error)> {
        let msgs = routes
            .iter()
            .map(|r| RouteNetlinkMessage::NewRoute(r.message()))
            .collect();
        self.request_many(msgs, flags, |i| {
            let r = &routes[i];
            format!("{verb} route {}/{} via {:?}", r.dst, r.prefix, r.gateway)
        })
        .into_iter()
        .map(|(i, e)| (routes[i].clone(), e))
        .collect()
    }

    /// Deletes a route; Ok(false) when it was not there.
    pub fn del_route(&mut self, route: &Route) -> Result<bool> {
        match self.request(RouteNetlinkMessage::DelRoute(route.message()), 0, || {
            format!("deleting route {}/{}", route.dst, route.prefix)
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The MTU of the interface the IPv4 default route leaves through (1500 without one).
    pub fn default_route_mtu(&mut self) -> Result<u32> {
        let default = self
            .routes(RouteFilter::default())?
            .into_iter()
            .find(|r| r.prefix == 0 && r.oif.is_some());
        match default.and_then(|r| r.oif) {
            Some(oif) => Ok(self.link_by_index(oif)?.map_or(1500, |l| l.mtu)),
            None => Ok(1500),
        }
    }

    /// The unicast routes of the main table matching `filter`.
    pub fn routes(&mut self, filter: RouteFilter) -> Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if filter.ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP, || {
            "listing routes".into()
        })?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .filter(|r| filter.protocol.is_none_or(|p| p == r.protocol))
            .collect())
    }
}

/// A change of the routing table, from a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// A route was added (or replaced).
    Added(Route),
    /// A route was removed.
    Removed(Route),
}

impl Netlink {
    /// Subscribes to route notifications of both families (RTNLGRP_IPV4_ROUTE and
    /// RTNLGRP_IPV6_ROUTE). Call it before the first request, so they arrive on this
    /// connection's own socket.
    pub fn subscribe_routes(&mut self) -> Result<()> {
        const RTNLGRP_IPV4_ROUTE: u32 = 7;
        const RTNLGRP_IPV6_ROUTE: u32 = 11;
        self.subscribe(RTNLGRP_IPV4_ROUTE)?;
        self.subscribe(RTNLGRP_IPV6_ROUTE)
    }

    /// The route changes notified since the last call, waiting at most `timeout` for
    /// the first. Notifications are lost when the socket's buffer overflows: a caller
    /// that must not miss one confirms with a dump ([`Netlink::routes`]).
    pub fn route_changes(&mut self, timeout: std::time::Duration) -> Result<Vec<RouteChange>> {
        Ok(self
            .notifications(timeout)?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(&r).map(RouteChange::Added),
                RouteNetlinkMessage::DelRoute(r) => {
                    Route::from_message(&r).map(RouteChange::Removed)
                }
                _ => None,
            })
            .collect())
    }
}
