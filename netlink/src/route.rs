//! Addresses and routes.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkPayload,
};
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

    /// The message for this route through nexthop object `id` (no inline gateway or
    /// device: the object has them).
    fn message_via_nexthop(&self, id: u32) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&self.dst);
        msg.header.destination_prefix_length = self.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(self.protocol);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        if self.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_addr(self.dst)));
        }
        msg.attributes.push(RouteAttribute::NhId(id));
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

    /// Like [`Netlink::create_routes`], each route with a gateway and a device written
    /// through the nexthop object of that gateway and device (`dst nhid N`), made when
    /// missing and owned by the route's protocol (see the `nexthop` module: the kernel
    /// inserts such routes in linear time, inline gateways in quadratic). Where nexthop
    /// objects cannot be made (a kernel before 5.3), the routes are written with their
    /// gateways inline.
    pub fn create_routes_via_nexthops(&mut self, routes: &[Route]) -> Vec<(Route, Error)> {
        self.route_batch_via_nexthops(routes, NLM_F_CREATE | NLM_F_EXCL, "creating")
    }

    /// Like [`Netlink::replace_routes`], through nexthop objects as
    /// [`Netlink::create_routes_via_nexthops`] writes them.
    pub fn replace_routes_via_nexthops(&mut self, routes: &[Route]) -> Vec<(Route, Error)> {
        self.route_batch_via_nexthops(routes, NLM_F_CREATE | NLM_F_REPLACE, "replacing")
    }

    fn route_batch_via_nexthops(
        &mut self,
        routes: &[Route],
        flags: u16,
        verb: &str,
    ) -> Vec<(Route, Error)> {
        let refused = self.write_via_nexthops(routes, flags, verb);
        // An object this connection knew may have been deleted by someone else since
        // (the kernel then refuses the route): read the objects again and retry those
        // routes once.
        if refused.iter().all(|(_, e)| e.is_exists()) {
            return refused;
        }
        self.forget_nexthops();
        let (exists, retry): (Vec<_>, Vec<_>) =
            refused.into_iter().partition(|(_, e)| e.is_exists());
        let retry: Vec<Route> = retry.into_iter().map(|(r, _)| r).collect();
        let mut refused = exists;
        refused.extend(self.write_via_nexthops(&retry, flags, verb));
        refused
    }

    /// One batch of [`Netlink::route_batch_via_nexthops`].
    fn write_via_nexthops(
        &mut self,
        routes: &[Route],
        flags: u16,
        verb: &str,
    ) -> Vec<(Route, Error)> {
        let ids = match self.nexthop_ids(routes) {
            Ok(ids) => ids,
            Err(_) => {
                self.forget_nexthops();
                return self.route_batch(routes, flags, verb);
            }
        };
        let msgs = routes
            .iter()
            .map(|r| {
                let id = r
                    .gateway
                    .zip(r.oif)
                    .and_then(|(gw, oif)| ids.get(&(gw, oif, r.protocol)));
                RouteNetlinkMessage::NewRoute(match id {
                    Some(id) => r.message_via_nexthop(*id),
                    None => r.message(),
                })
            })
            .collect();
        self.request_many(msgs, flags, |i| {
            let r = &routes[i];
            format!("{verb} route {}/{} via {:?}", r.dst, r.prefix, r.gateway)
        })
        .into_iter()
        .map(|(i, e)| (routes[i].clone(), e))
        .collect()
    }

    /// Deletes the route to `route.dst/route.prefix` of `route.protocol` in the main
    /// table, whatever its next hop (inline, or a nexthop object: a request naming the
    /// gateway matches only an inline one); Ok(false) when there is none.
    pub fn del_route(&mut self, route: &Route) -> Result<bool> {
        let mut msg = route.message();
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_)));
        match self.request(RouteNetlinkMessage::DelRoute(msg), 0, || {
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
        // A dump the kernel marks interrupted (the table changed while it was read) is
        // read again; a few tries, then the last one stands.
        let mut tries = 0;
        loop {
            self.dump_seq = self.dump_seq.wrapping_add(1);
            let (mut routes, interrupted) = dump_routes(&self.dumps, self.dump_seq, filter.ipv6)?;
            tries += 1;
            if !interrupted || tries == 3 {
                routes.retain(|(r, _)| filter.protocol.is_none_or(|p| p == r.protocol));
                // A route through a nexthop object shows its gateway and device unless
                // the kernel's compatibility mode is off: then from the object.
                if routes
                    .iter()
                    .any(|(r, nh)| nh.is_some() && r.gateway.is_none())
                {
                    let objects: std::collections::HashMap<u32, (IpAddr, u32)> = self
                        .nexthops()?
                        .into_iter()
                        .map(|n| (n.id, (n.gateway, n.oif)))
                        .collect();
                    for (route, nh) in &mut routes {
                        if let (None, Some((gateway, oif))) =
                            (route.gateway, nh.and_then(|id| objects.get(&id)))
                        {
                            route.gateway = Some(*gateway);
                            route.oif = Some(*oif);
                        }
                    }
                }
                return Ok(routes.into_iter().map(|(r, _)| r).collect());
            }
        }
    }
}

// The kernel's netlink ABI (linux/netlink.h, linux/rtnetlink.h), for route dumps.
pub(crate) const NLMSG_HEADER: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP_INTR: u16 = 0x10;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RTA_NH_ID: u16 = 30;
const RTN_UNICAST: u8 = 1;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(crate) fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

pub(crate) fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Sends the dump `request` (its sequence number set to `seq`) on `socket` and hands
/// each answered message's type and payload to `each`, decoded in place: at 20,000
/// routes the generic decoder held every message whole at once (~10 MB, each with a
/// vector of attributes) and spent a sixth of a read decoding attributes nobody reads.
/// Returns whether the kernel marked the dump interrupted. `op` names it in errors.
pub(crate) fn dump(
    socket: &netlink_sys::Socket,
    mut request: Vec<u8>,
    seq: u32,
    op: &str,
    mut each: impl FnMut(u16, &[u8]),
) -> Result<bool> {
    request[8..12].copy_from_slice(&seq.to_ne_bytes());
    socket.send(&request, 0)?;
    let mut interrupted = false;
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0)?;
        let mut data = &buf[..n.min(buf.len())];
        while data.len() >= NLMSG_HEADER {
            let len = ne_u32(&data[0..4]) as usize;
            if len < NLMSG_HEADER || len > data.len() {
                return Err(Error::Decode(format!("a truncated message {op}")));
            }
            let (kind, flags, from) = (
                ne_u16(&data[4..6]),
                ne_u16(&data[6..8]),
                ne_u32(&data[8..12]),
            );
            let payload = &data[NLMSG_HEADER..len];
            data = &data[align4(len).min(data.len())..];
            if from != seq {
                continue;
            }
            interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match kind {
                NLMSG_DONE => return Ok(interrupted),
                NLMSG_ERROR => {
                    let code = payload.get(0..4).map_or(0, |b| ne_u32(b) as i32);
                    if code != 0 {
                        return Err(Error::Kernel {
                            op: op.into(),
                            errno: Errno::from_raw(-code),
                        });
                    }
                    return Ok(interrupted);
                }
                _ => each(kind, payload),
            }
        }
    }
}

/// The request for a dump of one family's routes.
fn route_dump_request(ipv6: bool) -> Vec<u8> {
    let mut request = Vec::with_capacity(NLMSG_HEADER + RTMSG_LEN);
    request.extend_from_slice(&((NLMSG_HEADER + RTMSG_LEN) as u32).to_ne_bytes());
    request.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.push(if ipv6 { AF_INET6 } else { AF_INET });
    request.extend_from_slice(&[0; RTMSG_LEN - 1]);
    request
}

/// Dumps one family's routes on `socket`: each route of the main table with the id of
/// the nexthop object it goes through, if any, and whether the dump was interrupted.
/// A route, and the id of the nexthop object it goes through.
type RouteVia = (Route, Option<u32>);

fn dump_routes(
    socket: &netlink_sys::Socket,
    seq: u32,
    ipv6: bool,
) -> Result<(Vec<RouteVia>, bool)> {
    let mut routes = Vec::new();
    let interrupted = dump(
        socket,
        route_dump_request(ipv6),
        seq,
        "listing routes",
        |kind, p| {
            if kind == RTM_NEWROUTE {
                routes.extend(parse_route(p));
            }
        },
    )?;
    Ok((routes, interrupted))
}

/// An address of `family` from its bytes.
pub(crate) fn address_from(family: u8, v: &[u8]) -> Option<IpAddr> {
    match (family, v.len()) {
        (AF_INET, 4) => Some(IpAddr::from([v[0], v[1], v[2], v[3]])),
        (AF_INET6, 16) => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The attributes (type without flag bits, value) of a message's tail; `None` when
/// one is malformed.
pub(crate) fn attributes(mut attrs: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while attrs.len() >= 4 {
        let len = usize::from(ne_u16(&attrs[0..2]));
        if len < 4 || len > attrs.len() {
            return None;
        }
        out.push((ne_u16(&attrs[2..4]) & 0x3fff, &attrs[4..len]));
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(out)
}

/// A route of the main table from an RTM_NEWROUTE payload (rtmsg and attributes), with
/// the id of the nexthop object it goes through, if any; `None` for any other table, a
/// route that is not unicast, or a malformed one.
fn parse_route(p: &[u8]) -> Option<RouteVia> {
    let header = p.get(..RTMSG_LEN)?;
    let family = header[0];
    if header[7] != RTN_UNICAST {
        return None;
    }
    let mut table = u32::from(header[4]);
    let mut nexthop = None;
    let mut route = Route {
        dst: if family == AF_INET6 {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        },
        prefix: header[1],
        gateway: None,
        oif: None,
        protocol: header[5],
    };
    for (kind, value) in attributes(&p[RTMSG_LEN..])? {
        match kind {
            RTA_DST => route.dst = address_from(family, value)?,
            RTA_GATEWAY => route.gateway = address_from(family, value),
            RTA_OIF if value.len() == 4 => route.oif = Some(ne_u32(value)),
            RTA_TABLE if value.len() == 4 => table = ne_u32(value),
            RTA_NH_ID if value.len() == 4 => nexthop = Some(ne_u32(value)),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some((route, nexthop))
}

/// The nexthop object id a route of any table or type refers to, from an RTM_NEWROUTE
/// payload.
fn route_nexthop(p: &[u8]) -> Option<u32> {
    attributes(p.get(RTMSG_LEN..)?)?
        .into_iter()
        .find_map(|(kind, v)| (kind == RTA_NH_ID && v.len() == 4).then(|| ne_u32(v)))
}

impl Netlink {
    /// The ids of every nexthop object a route of either family refers to, in any
    /// table.
    pub(crate) fn referenced_nexthops(&mut self) -> Result<std::collections::HashSet<u32>> {
        let mut used = std::collections::HashSet::new();
        for ipv6 in [false, true] {
            self.dump_seq = self.dump_seq.wrapping_add(1);
            dump(
                &self.dumps,
                route_dump_request(ipv6),
                self.dump_seq,
                "listing routes",
                |kind, p| {
                    if kind == RTM_NEWROUTE {
                        used.extend(route_nexthop(p));
                    }
                },
            )?;
        }
        Ok(used)
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

    /// Whether the routing table may have changed since the last call: a route was
    /// added, replaced or removed, or notifications were lost (the socket's buffer
    /// overflowed). Every notification the kernel sent before this call is counted: a
    /// request answered on the same socket (the loopback link's, index 1 in every
    /// namespace) comes after them. When the socket's buffer is full the kernel drops
    /// that answer too: no answer within 250 ms also reads as a change. Needs
    /// [`Netlink::subscribe_routes`].
    pub fn routes_changed(&mut self) -> Result<bool> {
        if self.groups.is_empty() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not subscribed to route notifications",
            )));
        }
        let answered = self.barrier(std::time::Duration::from_millis(250))?;
        let mut changed = !answered;
        while let Ok((m, _)) = self.events.try_recv() {
            changed |= matches!(
                m.payload,
                NetlinkPayload::Overrun(_)
                    | NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_)
                    )
            );
        }
        Ok(changed)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTM_NEWROUTE payload: rtmsg, then (type, value) attributes.
    fn payload(family: u8, prefix: u8, table: u8, kind: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![family, prefix, 0, 0, table, 233, 0, kind, 0, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            p.extend_from_slice(&(len as u16).to_ne_bytes());
            p.extend_from_slice(&t.to_ne_bytes());
            p.extend_from_slice(v);
            p.resize(align4(p.len()), 0);
        }
        p
    }

    #[test]
    fn decodes_main_table_unicast_routes_in_place() {
        let p = payload(
            AF_INET,
            24,
            254,
            RTN_UNICAST,
            &[
                (RTA_TABLE, &254u32.to_ne_bytes()),
                (RTA_DST, &[10, 244, 1, 0]),
                (RTA_GATEWAY, &[198, 18, 0, 2]),
                (RTA_OIF, &7u32.to_ne_bytes()),
                (RTA_NH_ID, &12u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_route(&p),
            Some((
                Route {
                    dst: IpAddr::from([10, 244, 1, 0]),
                    prefix: 24,
                    gateway: Some(IpAddr::from([198, 18, 0, 2])),
                    oif: Some(7),
                    protocol: 233,
                },
                Some(12)
            ))
        );
        assert_eq!(route_nexthop(&p), Some(12));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        let p = payload(AF_INET6, 64, 254, RTN_UNICAST, &[(RTA_DST, &v6)]);
        assert_eq!(parse_route(&p).map(|(r, _)| r.dst), Some(IpAddr::from(v6)));
        // A default route has no RTA_DST.
        let p = payload(
            AF_INET,
            0,
            254,
            RTN_UNICAST,
            &[(RTA_OIF, &2u32.to_ne_bytes())],
        );
        assert_eq!(
            parse_route(&p).map(|(r, nh)| (r.dst, r.prefix, nh)),
            Some((IpAddr::from([0, 0, 0, 0]), 0, None))
        );
    }

    #[test]
    fn other_tables_kinds_and_malformed_messages_are_skipped_without_panic() {
        let dst: (u16, &[u8]) = (RTA_DST, &[10, 0, 0, 0]);
        // The local table (in the header, or in RTA_TABLE for tables above 255).
        assert!(parse_route(&payload(AF_INET, 8, 255, RTN_UNICAST, &[dst])).is_none());
        let big = 1000u32.to_ne_bytes();
        assert!(
            parse_route(&payload(
                AF_INET,
                8,
                254,
                RTN_UNICAST,
                &[dst, (RTA_TABLE, &big)]
            ))
            .is_none()
        );
        // Local, broadcast, blackhole: not unicast.
        for kind in [2u8, 3, 6] {
            assert!(parse_route(&payload(AF_INET, 8, 254, kind, &[dst])).is_none());
        }
        // A destination of the wrong size, a truncated attribute, a short header.
        assert!(
            parse_route(&payload(
                AF_INET,
                8,
                254,
                RTN_UNICAST,
                &[(RTA_DST, &[1, 2])]
            ))
            .is_none()
        );
        let mut p = payload(AF_INET, 8, 254, RTN_UNICAST, &[dst]);
        p.truncate(p.len() - 2);
        assert!(parse_route(&p).is_none());
        assert!(parse_route(&[2, 8, 0]).is_none());
        for cut in 0..p.len() {
            let _ = parse_route(&p[..cut]);
        }
    }
}
