//! Nexthop objects (`ip nexthop`, Linux 5.3 and later), and routes that use them.
//!
//! A route written with an inline gateway gets a `fib_info` of its own, and the kernel
//! hashes those by device, protocol, scope and metric — not by gateway. Every peer route
//! of a node leaves through the same device, so each new one walks the list of all the
//! others before it is inserted: adding N such routes costs O(N²) (on this project's
//! machine 5,000 took 0.5–1.0 s and 20,000 took 7–10 s with `ip -batch`). A route whose
//! next hop is a nexthop object is hashed by the object's id instead, and N routes
//! through N objects took 0.20 s for 5,000. So podnet-daemon writes each peer route as
//! `dst nhid N`, with one object per (gateway, device) pair, owned by the routes'
//! protocol number like the routes themselves.
//!
//! The kernel's route dumps and notifications keep showing the gateway and device of
//! such a route (`net.ipv4.nexthop_compat_mode`, on by default); where they do not, a
//! dump of the nexthop objects fills them in, so readers see the same [`Route`] either
//! way. Nexthop messages are built and decoded here on the connection's plain socket:
//! the `netlink-packet-route` release podnet pins has no nexthop messages.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use nix::errno::Errno;

use crate::route::{
    AF_INET, AF_INET6, NLMSG_ERROR, NLMSG_HEADER, Route, address_from, align4, attributes, dump,
    ne_u16, ne_u32,
};
use crate::{Error, Netlink, Result};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const NHMSG_LEN: usize = 8;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
/// A new object only, echoed back: the echo carries the id the kernel chose.
const CREATE_ECHO: u16 = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
/// Requests sent in one write; their answers fit the socket's default receive buffer.
const CHUNK: usize = 128;

/// A nexthop object: a gateway through an interface, owned by `protocol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nexthop {
    /// Its id (what routes refer to).
    pub id: u32,
    /// The gateway.
    pub gateway: IpAddr,
    /// The interface it is reached through.
    pub oif: u32,
    /// Its owner's protocol number.
    pub protocol: u8,
}

/// Which nexthop object a route goes through: its gateway, interface and protocol.
pub(crate) type NexthopKey = (IpAddr, u32, u8);

/// What one plain request got back: the messages answered to it (an echo), or the
/// kernel's errno.
type Answer = std::result::Result<Vec<(u16, Vec<u8>)>, Errno>;

/// A request on the plain socket: header (length set by the caller), `nhmsg`, then
/// attributes. The sequence number is filled in when it is sent.
fn nexthop_request(
    kind: u16,
    flags: u16,
    family: u8,
    protocol: u8,
    attrs: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HEADER + NHMSG_LEN + 32);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, protocol, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    for (kind, value) in attrs {
        m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(align4(m.len()), 0);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// What an RTM_NEWNEXTHOP payload describes.
enum Parsed {
    /// An object with a gateway and a device (the only kind podnet makes).
    Gateway(Nexthop),
    /// A group: the ids of its members.
    Group(Vec<u32>),
    /// A blackhole, or an object without a gateway or device.
    Other,
}

/// `struct nexthop_grp`: id (u32), weight, weight_high, reserved (u16).
const NEXTHOP_GRP_LEN: usize = 8;

fn parse_nexthop(p: &[u8]) -> Option<Parsed> {
    let header = p.get(..NHMSG_LEN)?;
    let (family, protocol) = (header[0], header[2]);
    let (mut id, mut oif, mut gateway) = (None, None, None);
    for (kind, value) in attributes(&p[NHMSG_LEN..])? {
        match kind {
            NHA_ID if value.len() == 4 => id = Some(ne_u32(value)),
            NHA_OIF if value.len() == 4 => oif = Some(ne_u32(value)),
            NHA_GATEWAY => gateway = address_from(family, value),
            NHA_GROUP => {
                return Some(Parsed::Group(
                    value
                        .chunks_exact(NEXTHOP_GRP_LEN)
                        .map(|m| ne_u32(&m[..4]))
                        .collect(),
                ));
            }
            NHA_BLACKHOLE => return Some(Parsed::Other),
            _ => {}
        }
    }
    Some(match (id, gateway, oif) {
        (Some(id), Some(gateway), Some(oif)) => Parsed::Gateway(Nexthop {
            id,
            gateway,
            oif,
            protocol,
        }),
        _ => Parsed::Other,
    })
}

/// The gateway object an RTM_NEWNEXTHOP payload describes, if it is one.
fn parse_gateway(p: &[u8]) -> Option<Nexthop> {
    match parse_nexthop(p)? {
        Parsed::Gateway(n) => Some(n),
        _ => None,
    }
}

impl Netlink {
    /// Every nexthop object of the namespace with a gateway and a device.
    pub fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        Ok(self.nexthop_objects()?.0)
    }

    /// Every gateway object of the namespace, and the ids that groups hold as members.
    fn nexthop_objects(&mut self) -> Result<(Vec<Nexthop>, HashSet<u32>)> {
        let mut tries = 0;
        loop {
            self.dump_seq = self.dump_seq.wrapping_add(1);
            let request = nexthop_request(RTM_GETNEXTHOP, NLM_F_DUMP, 0, 0, &[]);
            let mut found = Vec::new();
            let mut members = HashSet::new();
            let interrupted = dump(
                &self.dumps,
                request,
                self.dump_seq,
                "listing nexthops",
                |kind, p| {
                    if kind != RTM_NEWNEXTHOP {
                        return;
                    }
                    match parse_nexthop(p) {
                        Some(Parsed::Gateway(n)) => found.push(n),
                        Some(Parsed::Group(ids)) => members.extend(ids),
                        Some(Parsed::Other) | None => {}
                    }
                },
            )?;
            tries += 1;
            if !interrupted || tries == 3 {
                return Ok((found, members));
            }
        }
    }

    /// Sends `requests` on the plain socket, [`CHUNK`] at a time, each with an ack
    /// asked for; returns what each one got.
    fn plain_requests(&mut self, mut requests: Vec<Vec<u8>>) -> Result<Vec<Answer>> {
        let n = requests.len();
        let first = self.dump_seq.wrapping_add(1);
        self.dump_seq = self.dump_seq.wrapping_add(n as u32);
        for (i, r) in requests.iter_mut().enumerate() {
            r[8..12].copy_from_slice(&first.wrapping_add(i as u32).to_ne_bytes());
            let flags = ne_u16(&r[6..8]) | NLM_F_ACK;
            r[6..8].copy_from_slice(&flags.to_ne_bytes());
        }
        let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
        let mut echoes: Vec<Vec<(u16, Vec<u8>)>> = vec![Vec::new(); n];
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            self.dumps.send(&requests[start..end].concat(), 0)?;
            let mut pending = end - start;
            while pending > 0 {
                buf.clear();
                let got = self.dumps.recv(&mut buf, 0)?;
                let mut data = &buf[..got.min(buf.len())];
                while data.len() >= NLMSG_HEADER {
                    let len = ne_u32(&data[0..4]) as usize;
                    if len < NLMSG_HEADER || len > data.len() {
                        return Err(Error::Decode("a truncated netlink answer".into()));
                    }
                    let kind = ne_u16(&data[4..6]);
                    let seq = ne_u32(&data[8..12]);
                    let payload = &data[NLMSG_HEADER..len];
                    data = &data[align4(len).min(data.len())..];
                    let i = seq.wrapping_sub(first) as usize;
                    if i < start || i >= end || answers[i].is_some() {
                        continue;
                    }
                    if kind == NLMSG_ERROR {
                        let code = payload.get(0..4).map_or(0, |b| ne_u32(b) as i32);
                        answers[i] = Some(if code == 0 {
                            Ok(std::mem::take(&mut echoes[i]))
                        } else {
                            Err(Errno::from_raw(-code))
                        });
                        pending -= 1;
                    } else {
                        echoes[i].push((kind, payload.to_vec()));
                    }
                }
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(Errno::EIO)))
            .collect())
    }

    /// The nexthop object of each gateway, device and protocol of `routes` (those
    /// with both), made where none exists yet (the kernel chooses free ids). Reuses
    /// what this connection learnt before; [`Netlink::forget_nexthops`] drops that.
    pub(crate) fn nexthop_ids(&mut self, routes: &[Route]) -> Result<HashMap<NexthopKey, u32>> {
        let wanted: HashSet<NexthopKey> = routes
            .iter()
            .filter_map(|r| Some((r.gateway?, r.oif?, r.protocol)))
            .collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let mut known = match self.nexthop_cache.take() {
            Some(known) => known,
            None => self
                .nexthops()?
                .into_iter()
                .map(|n| ((n.gateway, n.oif, n.protocol), n.id))
                .collect(),
        };
        let missing: Vec<NexthopKey> = wanted
            .into_iter()
            .filter(|k| !known.contains_key(k))
            .collect();
        let requests = missing
            .iter()
            .map(|(gateway, oif, protocol)| {
                let family = if gateway.is_ipv4() { AF_INET } else { AF_INET6 };
                nexthop_request(
                    RTM_NEWNEXTHOP,
                    CREATE_ECHO,
                    family,
                    *protocol,
                    &[
                        (NHA_OIF, &oif.to_ne_bytes()),
                        (NHA_GATEWAY, &octets(*gateway)),
                    ],
                )
            })
            .collect();
        let mut unechoed = false;
        for (key, answer) in missing.iter().zip(self.plain_requests(requests)?) {
            let echoed = answer.map_err(|errno| Error::Kernel {
                op: format!("creating a nexthop object via {} dev {}", key.0, key.1),
                errno,
            })?;
            match echoed
                .iter()
                .filter(|(kind, _)| *kind == RTM_NEWNEXTHOP)
                .find_map(|(_, p)| parse_gateway(p))
            {
                Some(n) => {
                    known.insert(*key, n.id);
                }
                None => unechoed = true,
            }
        }
        if unechoed {
            // A kernel that does not echo: read the ids back.
            for n in self.nexthops()? {
                known.entry((n.gateway, n.oif, n.protocol)).or_insert(n.id);
            }
        }
        let ids = known.clone();
        self.nexthop_cache = Some(known);
        Ok(ids)
    }

    /// Drops what this connection knows of nexthop objects (read again when next
    /// needed).
    pub(crate) fn forget_nexthops(&mut self) {
        self.nexthop_cache = None;
    }

    /// Deletes the nexthop objects of `protocol` that no route refers to (in any
    /// table) and no group holds; returns how many. Deleting an object would delete
    /// the routes through it, and take it out of every group that holds it (a group
    /// left empty goes too, with its routes), so one still in use is never touched.
    pub fn prune_nexthops(&mut self, protocol: u8) -> Result<usize> {
        self.forget_nexthops();
        let (objects, mut used) = self.nexthop_objects()?;
        let ours: Vec<u32> = objects
            .into_iter()
            .filter(|n| n.protocol == protocol)
            .map(|n| n.id)
            .collect();
        if ours.is_empty() {
            return Ok(0);
        }
        used.extend(self.referenced_nexthops()?);
        let stale: Vec<u32> = ours.into_iter().filter(|id| !used.contains(id)).collect();
        let requests = stale
            .iter()
            .map(|id| nexthop_request(RTM_DELNEXTHOP, 0, 0, 0, &[(NHA_ID, &id.to_ne_bytes())]))
            .collect();
        let mut removed = 0;
        for (id, answer) in stale.iter().zip(self.plain_requests(requests)?) {
            match answer {
                Ok(_) => removed += 1,
                Err(Errno::ENOENT) => {}
                Err(errno) => {
                    return Err(Error::Kernel {
                        op: format!("deleting nexthop object {id}"),
                        errno,
                    });
                }
            }
        }
        Ok(removed)
    }
}
