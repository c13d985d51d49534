//! Links: bridges, veth pairs, their state.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, State,
};
use nix::errno::Errno;

use crate::{Error, Netlink, Result};

/// The kind of a link, as far as podnet cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// One end of a veth pair.
    Veth,
    /// Anything else (`kind` as the kernel names it, empty for physical devices).
    Other(String),
}

/// What podnet reads of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Operationally up (the kernel's operstate, or lower-up for UNKNOWN devices).
    pub oper_up: bool,
    /// The bridge (or other master) it is attached to.
    pub master: Option<u32>,
    /// Its kind.
    pub kind: LinkKind,
    /// Its hardware address.
    pub mac: Vec<u8>,
    /// `IFLA_LINK`: the link it sits on; for a veth, its peer's index (in the peer's
    /// namespace, which may not be this one).
    pub peer: Option<u32>,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            master: None,
            kind: LinkKind::Other(String::new()),
            mac: Vec::new(),
            peer: None,
        };
        let mut state = State::Unknown;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::Controller(m) => info.master = Some(*m),
                LinkAttribute::OperState(s) => state = *s,
                LinkAttribute::Address(a) => info.mac = a.clone(),
                LinkAttribute::Link(l) => info.peer = Some(*l),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            info.kind = match k {
                                InfoKind::Bridge => LinkKind::Bridge,
                                InfoKind::Veth => LinkKind::Veth,
                                other => LinkKind::Other(other.to_string()),
                            };
                        }
                    }
                }
                _ => {}
            }
        }
        info.oper_up = match state {
            State::Up => true,
            // Devices without operstate support report UNKNOWN; trust the carrier.
            State::Unknown => msg.header.flags.contains(LinkFlags::LowerUp),
            _ => false,
        };
        info
    }
}

/// The rtnetlink multicast group of link changes.
const RTNLGRP_LINK: u32 = 1;

pub(crate) fn by_index(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// A GETLINK request: statistics are skipped, they are the costliest part of the reply.
pub(crate) fn get_request(mut msg: LinkMessage) -> RouteNetlinkMessage {
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    RouteNetlinkMessage::GetLink(msg)
}

/// One transmit and one receive queue, asked for at creation. A veth made without
/// them gets one queue per possible CPU, and the kernel cuts each end back to one
/// right after registering it, which waits for an expedited RCU grace period per
/// end: on a virtual machine that wait alone was 0.2 ms to 30 ms of a pod's ADD
/// (`synchronize_rcu_expedited` under `veth_init_queues`). The result is the same
/// single-queue pair the kernel's default would leave.
fn one_queue_each_way(msg: &mut LinkMessage) {
    msg.attributes.push(LinkAttribute::NumTxQueues(1));
    msg.attributes.push(LinkAttribute::NumRxQueues(1));
}

fn set_up(msg: &mut LinkMessage) {
    msg.header.flags |= LinkFlags::Up;
    msg.header.change_mask |= LinkFlags::Up;
}

impl Netlink {
    /// The link named `name`, if it exists.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("looking up link {name}")
        }) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(LinkInfo::from_message(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with index `index`, if it exists.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>> {
        match self.request(get_request(by_index(index)), 0, || {
            format!("looking up link {index}")
        }) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(LinkInfo::from_message(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            || "listing links".into(),
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(LinkInfo::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates bridge `name` (down, with `mtu` and the fixed address `mac`). Fails with
    /// EEXIST when it exists.
    pub fn add_bridge(&mut self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        // An address given at creation is one the kernel keeps (NET_ADDR_SET): a bridge
        // with a random one takes the lowest MAC of its ports and changes it as ports
        // come and go, leaving every neighbour's cached gateway MAC stale.
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("creating bridge {name}"),
        )
        .map(drop)
    }

    /// Creates a veth pair in one request: `name` here, up, with `mtu`, attached to
    /// `master`; its peer `peer` made directly inside the namespace `peer_netns` (down)
    /// with the same MTU. Fails with EEXIST when `name` exists here (a name taken in the
    /// peer namespace fails the same way).
    ///
    /// Returns the new link here as the kernel echoes it (Linux 6.3 and later answer
    /// `NLM_F_ECHO` on link creation), so no lookup is needed; `None` from a kernel
    /// that does not echo. The echo is taken before the link joins `master`: its
    /// index, name and address are final, its `master` not yet set; its `peer` is the
    /// index of the end made in `peer_netns`.
    pub fn add_veth(
        &mut self,
        name: &str,
        mtu: u32,
        master: u32,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<Option<LinkInfo>> {
        // The peer cannot be set up in the same request (the kernel answers ENOTCONN):
        // the caller brings it up from a socket in its namespace.
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        one_queue_each_way(&mut peer_msg);
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        set_up(&mut msg);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::Controller(master));
        one_queue_each_way(&mut msg);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Veth),
            NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        let replies = self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            || format!("creating veth {name} with peer {peer} in the pod namespace"),
        )?;
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                Some(LinkInfo::from_message(l)).filter(|info| info.name == name)
            }
            _ => None,
        }))
    }

    /// Sets a link up and/or its MTU.
    pub fn set_link(&mut self, index: u32, up: bool, mtu: Option<u32>) -> Result<()> {
        let mut msg = by_index(index);
        if up {
            set_up(&mut msg);
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("configuring link {index}")
        })
        .map(drop)
    }

    /// Sets the MAC address of link `index` (the kernel then keeps it: NET_ADDR_SET).
    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<()> {
        let mut msg = by_index(index);
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("setting the address of link {index}")
        })
        .map(drop)
    }

    /// Turns hairpin mode on for bridge port `index` (a pod can reach itself through a
    /// service address that the bridge sends back out of the same port).
    pub fn set_hairpin(&mut self, index: u32) -> Result<()> {
        let mut msg = by_index(index);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::PortKind(InfoPortKind::Bridge),
            NlLinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), 0, || {
            format!("setting hairpin on link {index}")
        })
        .map(drop)
    }

    /// Deletes a link (for a veth, both ends). ENODEV when it does not exist.
    pub fn del_link(&mut self, index: u32) -> Result<()> {
        self.request(RouteNetlinkMessage::DelLink(by_index(index)), 0, || {
            format!("deleting link {index}")
        })
        .map(drop)
    }

    /// Deletes link `name` if it exists; returns whether it did.
    pub fn del_link_by_name(&mut self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0, || {
            format!("deleting link {name}")
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits for link `name` to appear in this namespace (from notifications: call
    /// [`Netlink::subscribe_links`] before whatever creates it; requests made in
    /// between leave them queued).
    pub fn wait_link_named(&mut self, name: &str, timeout: Duration) -> Result<LinkInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Perhaps it appeared before the subscription: ask once.
                return self.link_by_name(name)?.ok_or(Error::Kernel {
                    op: format!("waiting for link {name}"),
                    errno: Errno::ETIMEDOUT,
                });
            }
            for msg in self.notifications(left)? {
                if let RouteNetlinkMessage::NewLink(l) = msg {
                    let info = LinkInfo::from_message(&l);
                    if info.name == name {
                        return Ok(info);
                    }
                }
            }
        }
    }

    /// Subscribes to link notifications (RTNLGRP_LINK).
    pub fn subscribe_links(&mut self) -> Result<()> {
        self.subscribe(RTNLGRP_LINK)
    }

    /// Waits until link `index` is operationally up, at most `timeout`, from kernel
    /// notifications (no polling sleeps). Returns the link as last seen.
    pub fn wait_oper_up(&mut self, index: u32, timeout: Duration) -> Result<LinkInfo> {
        self.subscribe_links()?;
        let link = self.link_by_index(index)?.ok_or(Error::Kernel {
            op: format!("waiting for link {index}"),
            errno: Errno::ENODEV,
        })?;
        self.wait_oper_up_after(index, Some(link), timeout)
    }

    /// [`Netlink::wait_oper_up`] without its lookup, for a caller that subscribed
    /// ([`Netlink::subscribe_links`]) while link `index` was down and has set it up
    /// since: every change it went through is then among the notifications (requests
    /// made in between leave them queued). Returns the link as the notification that
    /// reported it up describes it.
    pub fn wait_subscribed_oper_up(&mut self, index: u32, timeout: Duration) -> Result<LinkInfo> {
        if !self.groups.contains(&RTNLGRP_LINK) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "waiting for a link's notifications without subscribing to them",
            )));
        }
        self.wait_oper_up_after(index, None, timeout)
    }

    /// Reads link notifications until link `index` is operationally up (`seen`: as
    /// known so far).
    fn wait_oper_up_after(
        &mut self,
        index: u32,
        mut seen: Option<LinkInfo>,
        timeout: Duration,
    ) -> Result<LinkInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(link) = seen.take_if(|l| l.oper_up) {
                return Ok(link);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let name = seen.map_or_else(|| index.to_string(), |l| l.name);
                return Err(Error::Kernel {
                    op: format!("link {name} did not come up within {timeout:?}"),
                    errno: Errno::ETIMEDOUT,
                });
            }
            for msg in self.notifications(left)? {
                if let RouteNetlinkMessage::NewLink(l) = msg
                    && l.header.index == index
                {
                    seen = Some(LinkInfo::from_message(&l));
                }
            }
        }
    }
}
