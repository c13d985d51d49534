//! The same netlink work done two ways — with podnet's own synchronous client
//! (`podnet-netlink`) and with the `rtnetlink` crate — so that `bench-netlink` can
//! measure them against each other (docs/dependencies.md). Two jobs:
//!
//! - [`sync_routes`]: the daemon's first sync — list the routes of protocol 233, then
//!   create a set of IPv4 routes `dst/24 via gw proto 233`;
//! - [`add_pod`]: the netlink part of one podnet-cni ADD — on the node side look up the
//!   bridge, create the veth pair (host end up with its MTU on the bridge, the peer made
//!   inside the pod's namespace), read the host end back; on a thread of its own inside
//!   the pod's namespace find the peer, add an IPv4 and an IPv6 address (no DAD), set it
//!   up, add both default routes. With rtnetlink each ADD builds the current-thread
//!   runtime a plugin process would start, on each side.
//!
//! The two probe binaries run [`add_pod`] as processes of their own, as podnet-cni runs.
//! This crate must never be linked into a shipped binary: it exists to be measured.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt, stream};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo};
use netlink_packet_route::route::{RouteMessage, RouteProtocol};
use podnet_contract::ROUTE_PROTOCOL;
use podnet_netlink::{Dad, Netlink, Route, RouteFilter};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The bridge the pods' host ends attach to (made by the caller).
pub const BRIDGE: &str = "pnbench0";
/// The pods' IPv4 gateway.
pub const GW4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The pods' IPv6 gateway.
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);
/// The MTU of both veth ends.
const MTU: u32 = 1500;

/// Which netlink client does the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// podnet-netlink, synchronous.
    Podnet,
    /// rtnetlink on a current-thread tokio runtime.
    Rtnetlink,
    /// rtnetlink, one request at a time (route sync only).
    RtnetlinkSerial,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// podnet-netlink refused.
    #[error(transparent)]
    Podnet(#[from] podnet_netlink::Error),
    /// rtnetlink refused.
    #[error("rtnetlink: {0}")]
    Rtnetlink(#[from] rtnetlink::Error),
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Entering a namespace failed.
    #[error("setns: {0}")]
    Setns(#[from] nix::Error),
    /// Something the probe expects is not there.
    #[error("{0}")]
    Missing(String),
}

type Result<T> = std::result::Result<T, ProbeError>;

/// The `i`th pod's addresses.
pub fn pod_ips(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(10, 244, 1, (i % 250 + 2) as u8),
        Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, (i + 2) as u16),
    )
}

/// The host end's name of the `i`th pod.
pub fn host_name(i: usize) -> String {
    format!("pnb{i}")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?)
}

/// Lists this namespace's routes of protocol 233, then creates `routes` (dst/24 via gw).
pub fn sync_routes(client: Client, routes: &[(Ipv4Addr, Ipv4Addr)], inflight: usize) -> Result<()> {
    match client {
        Client::Podnet => {
            let mut nl = Netlink::new()?;
            let _existing = nl.routes(RouteFilter {
                ipv6: false,
                protocol: Some(ROUTE_PROTOCOL),
            })?;
            let set: Vec<Route> = routes
                .iter()
                .map(|(dst, via)| Route {
                    dst: IpAddr::V4(*dst),
                    prefix: 24,
                    gateway: Some(IpAddr::V4(*via)),
                    oif: None,
                    protocol: ROUTE_PROTOCOL,
                })
                .collect();
            match nl.create_routes(&set).into_iter().next() {
                Some((_, e)) => Err(e.into()),
                None => Ok(()),
            }
        }
        Client::Rtnetlink | Client::RtnetlinkSerial => runtime()?.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            let filter = RouteMessageBuilder::<Ipv4Addr>::new()
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build();
            let _existing: Vec<RouteMessage> =
                handle.route().get(filter).execute().try_collect().await?;
            let add = |(dst, via): &(Ipv4Addr, Ipv4Addr)| {
                handle.route().add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(*dst, 24)
                        .gateway(*via)
                        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                        .build(),
                )
            };
            if client == Client::RtnetlinkSerial {
                for r in routes {
                    add(r).execute().await?;
                }
                return Ok(());
            }
            let results: Vec<std::result::Result<(), rtnetlink::Error>> = stream::iter(routes)
                .map(|r| add(r).execute())
                .buffer_unordered(inflight.max(1))
                .collect()
                .await;
            let failed = results.into_iter().find_map(std::result::Result::err);
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }),
    }
}

/// One ADD's netlink part for the pod whose namespace is at `pod`, run from the node's
/// namespace (the calling thread's).
pub fn add_pod(client: Client, pod: &Path, i: usize) -> Result<()> {
    match client {
        Client::Podnet => add_pod_podnet(pod, i),
        Client::Rtnetlink | Client::RtnetlinkSerial => add_pod_rtnetlink(pod, i),
    }
}

/// [`add_pod`] with podnet-netlink.
pub fn add_pod_podnet(pod: &Path, i: usize) -> Result<()> {
    podnet_add(File::open(pod)?, pod.to_path_buf(), i)
}

/// [`add_pod`] with rtnetlink.
pub fn add_pod_rtnetlink(pod: &Path, i: usize) -> Result<()> {
    rtnetlink_add(File::open(pod)?, pod.to_path_buf(), i)
}

fn join<T>(thread: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    thread
        .join()
        .map_err(|_| ProbeError::Missing("the pod-side thread panicked".into()))?
}

fn podnet_add(netns: File, path: PathBuf, i: usize) -> Result<()> {
    let mut host = Netlink::new()?;
    let bridge = host
        .link_by_name(BRIDGE)?
        .ok_or_else(|| ProbeError::Missing(format!("bridge {BRIDGE}")))?;
    let name = host_name(i);
    host.add_veth(&name, MTU, bridge.index, "eth0", netns.as_fd())?;
    let pod_side = std::thread::spawn(move || -> Result<()> {
        let mut nl = Netlink::enter_netns_on_this_thread(&netns, &path)?;
        let link = nl
            .link_by_name("eth0")?
            .ok_or_else(|| ProbeError::Missing("eth0 in the pod".into()))?;
        let (v4, v6) = pod_ips(i);
        nl.add_address(link.index, IpAddr::V4(v4), 24, Dad::Skip)?;
        nl.add_address(link.index, IpAddr::V6(v6), 64, Dad::Skip)?;
        nl.set_link(link.index, true, None)?;
        for (dst, gw) in [
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(GW4)),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V6(GW6)),
        ] {
            nl.add_route(&Route {
                dst,
                prefix: 0,
                gateway: Some(gw),
                oif: Some(link.index),
                protocol: 4, // static, as the plugin's
            })?;
        }
        Ok(())
    });
    host.link_by_name(&name)?
        .ok_or_else(|| ProbeError::Missing(format!("host end {name}")))?;
    join(pod_side)
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<u32> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await?
        .ok_or_else(|| ProbeError::Missing(name.to_string()))?;
    Ok(link.header.index)
}

fn rtnetlink_add(netns: File, path: PathBuf, i: usize) -> Result<()> {
    let fd = netns.as_raw_fd();
    let name = host_name(i);
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let bridge = link_index(&handle, BRIDGE).await?;
        let mut veth = LinkVeth::new(&name, "eth0")
            .mtu(MTU)
            .controller(bridge)
            .up()
            .build();
        // The peer is made inside the pod's namespace with the same MTU, as podnet does;
        // the builder has no setter for the peer's attributes.
        for attr in &mut veth.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                        peer.attributes.push(LinkAttribute::Mtu(MTU));
                        peer.attributes.push(LinkAttribute::NetNsFd(fd));
                    }
                }
            }
        }
        handle.link().add(veth).execute().await?;
        let pod_side = std::thread::spawn(move || -> Result<()> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| ProbeError::Missing(format!("entering {}: {e}", path.display())))?;
            runtime()?.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                let index = link_index(&handle, "eth0").await?;
                let (v4, v6) = pod_ips(i);
                handle
                    .address()
                    .add(index, IpAddr::V4(v4), 24)
                    .execute()
                    .await?;
                let mut add6 = handle.address().add(index, IpAddr::V6(v6), 64);
                add6.message_mut().header.flags |= AddressHeaderFlags::Nodad;
                add6.execute().await?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await?;
                let mut r4 = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(GW4)
                    .output_interface(index)
                    .build();
                r4.header.address_family = AddressFamily::Inet;
                handle.route().add(r4).execute().await?;
                let r6 = RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(GW6)
                    .output_interface(index)
                    .build();
                handle.route().add(r6).execute().await?;
                Ok(())
            })
        });
        link_index(&handle, &name).await?;
        join(pod_side)
    })
}

/// The probe binaries' main: `<probe> <pod netns path> <pod index>`; exit 0 when the
/// ADD's netlink part succeeded, else 1 with the error on stderr.
/// Each binary passes its own function, so that it links only its own client.
pub fn probe_main(add: fn(&Path, usize) -> Result<()>) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(pod), Some(Ok(i))) = (args.get(1), args.get(2).map(|s| s.parse::<usize>())) else {
        eprintln!("usage: {} <pod netns path> <pod index>", args[0]);
        return std::process::ExitCode::from(2);
    };
    match add(Path::new(pod), i) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
