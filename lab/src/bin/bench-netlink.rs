//! bench-netlink: podnet's own synchronous netlink client (`podnet-netlink`) against the
//! `rtnetlink` crate, on the two paths where podnet talks to the kernel most:
//!
//! - **daemon first sync**: list the node's podnet routes (protocol 233), then create
//!   `--routes` IPv4 routes `10.x.y.0/24 via 198.18.a.b proto 233` — with podnet's
//!   batched `create_routes`, with rtnetlink pipelined (`--inflight` requests in flight
//!   on one connection) and with rtnetlink one request at a time; `ip -batch` (the
//!   kernel floor with exec) beside them.
//! - **podnet-cni ADD's netlink part**: for `--pods` pods, each ADD opens a host-side
//!   socket, looks up the bridge, creates the veth pair (host end up, on the bridge, the
//!   peer made inside the pod's namespace), reads the host end back; a thread of its own
//!   enters the pod's namespace, opens a socket there, finds the peer, adds an IPv4 and
//!   an IPv6 address (no DAD), sets it up and adds both default routes. With rtnetlink,
//!   each ADD also builds the current-thread runtime a plugin process would start.
//!
//! Everything runs in network namespaces this program creates (one "node", one per pod)
//! and removes; no packet is sent. Each measurement alternates the clients run by run;
//! medians, min–max and the ratio to podnet's client are printed as a Markdown table.
//! Needs root.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::route::RouteProtocol;
use podnet_contract::ROUTE_PROTOCOL;
use podnet_netlink::{Dad, Netlink, Route, RouteFilter};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Compares podnet's netlink client with rtnetlink on the daemon's route sync and the
/// plugin's ADD (see the program's doc comment). Needs root.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Routes the simulated first sync creates.
    #[arg(long, default_value_t = 5000)]
    routes: usize,
    /// Pods per CNI ADD round.
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// Rounds per client (alternating clients).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// rtnetlink requests in flight at once in the pipelined route sync.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
}

const BRIDGE: &str = "pnbench0";
const GW4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);

/// The namespaces this run made; removed on drop (also after a failure).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(PathBuf::from("/run/netns").join(name))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a new thread that first enters the namespace at `path` (never on a
/// thread that lives on).
fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

fn routes(n: usize) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    (0..n)
        .map(|i| {
            let dst = Ipv4Addr::new(10, (i / 250) as u8 + 1, (i % 250) as u8, 0);
            let via = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 2);
            (dst, via)
        })
        .collect()
}

fn podnet_sync(set: &[(Ipv4Addr, Ipv4Addr)]) -> anyhow::Result<()> {
    let mut nl = Netlink::new()?;
    let _existing = nl.routes(RouteFilter {
        ipv6: false,
        protocol: Some(ROUTE_PROTOCOL),
    })?;
    let routes: Vec<Route> = set
        .iter()
        .map(|(dst, via)| Route {
            dst: IpAddr::V4(*dst),
            prefix: 24,
            gateway: Some(IpAddr::V4(*via)),
            oif: None,
            protocol: ROUTE_PROTOCOL,
        })
        .collect();
    let refused = nl.create_routes(&routes);
    if let Some((r, e)) = refused.first() {
        bail!("{} routes refused, first {r:?}: {e}", refused.len());
    }
    Ok(())
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?)
}

fn rt_route(dst: Ipv4Addr, via: Ipv4Addr) -> netlink_packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 24)
        .gateway(via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

fn rtnetlink_sync(set: &[(Ipv4Addr, Ipv4Addr)], inflight: usize) -> anyhow::Result<()> {
    current_thread()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let filter = RouteMessageBuilder::<Ipv4Addr>::new()
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        let _existing: Vec<_> = handle.route().get(filter).execute().try_collect().await?;
        if inflight <= 1 {
            for (dst, via) in set {
                handle.route().add(rt_route(*dst, *via)).execute().await?;
            }
        } else {
            let results: Vec<Result<(), rtnetlink::Error>> = stream::iter(set)
                .map(|(dst, via)| handle.route().add(rt_route(*dst, *via)).execute())
                .buffer_unordered(inflight)
                .collect()
                .await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
                bail!("rtnetlink route add: {e}");
            }
        }
        Ok(())
    })
}

fn ip_batch(node: &str, set: &[(Ipv4Addr, Ipv4Addr)], file: &Path) -> anyhow::Result<()> {
    let text: String = set
        .iter()
        .map(|(dst, via)| format!("route add {dst}/24 via {via} proto {ROUTE_PROTOCOL}\n"))
        .collect();
    std::fs::write(file, text)?;
    ip(&["-n", node, "-batch", &file.display().to_string()])?;
    Ok(())
}

fn count_routes(node: &str) -> anyhow::Result<usize> {
    Ok(ip(&["-n", node, "route", "show", "proto", &ROUTE_PROTOCOL.to_string()])?
        .lines()
        .count())
}

fn flush_routes(node: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        node,
        "route",
        "flush",
        "proto",
        &ROUTE_PROTOCOL.to_string(),
    ])
    .map(drop)
}

/// One pod's addresses.
fn pod_ips(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(10, 244, 1, (i + 2) as u8),
        Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, (i + 2) as u16),
    )
}

fn podnet_add(pod: &Path, host_name: String, i: usize) -> anyhow::Result<()> {
    let netns = File::open(pod)?;
    let mut host = Netlink::new()?;
    let bridge = host
        .link_by_name(BRIDGE)?
        .context("the bench bridge is missing")?;
    use std::os::fd::AsFd;
    host.add_veth(&host_name, 1500, bridge.index, "eth0", netns.as_fd())?;
    let pod_path = pod.to_path_buf();
    let pod_side = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut nl = Netlink::enter_netns_on_this_thread(&netns, &pod_path)?;
        let link = nl.link_by_name("eth0")?.context("eth0 missing")?;
        let (v4, v6) = pod_ips(i);
        nl.add_address(link.index, IpAddr::V4(v4), 24, Dad::Skip)?;
        nl.add_address(link.index, IpAddr::V6(v6), 64, Dad::Skip)?;
        nl.set_link(link.index, true, None)?;
        for gw in [IpAddr::V4(GW4), IpAddr::V6(GW6)] {
            nl.add_route(&Route {
                dst: match gw {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                },
                prefix: 0,
                gateway: Some(gw),
                oif: Some(link.index),
                protocol: 4,
            })?;
        }
        Ok(())
    });
    host.link_by_name(&host_name)?
        .context("host veth missing")?;
    pod_side
        .join()
        .map_err(|_| anyhow::anyhow!("pod thread panicked"))?
}

async fn rt_link_index(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<u32> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await?
        .with_context(|| format!("{name} missing"))?;
    Ok(link.header.index)
}

fn rtnetlink_add(pod: &Path, host_name: String, i: usize) -> anyhow::Result<()> {
    let netns = File::open(pod)?;
    let rt = current_thread()?;
    let fd = netns.as_raw_fd();
    let pod_path = pod.to_path_buf();
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let bridge = rt_link_index(&handle, BRIDGE).await?;
        let mut veth = LinkVeth::new(&host_name, "eth0")
            .mtu(1500)
            .controller(bridge)
            .up()
            .build();
        // The peer inside the pod's namespace, as podnet's client makes it.
        for attr in veth.attributes.iter_mut() {
            if let netlink_packet_route::link::LinkAttribute::LinkInfo(infos) = attr {
                for info in infos.iter_mut() {
                    if let netlink_packet_route::link::LinkInfo::Data(
                        netlink_packet_route::link::InfoData::Veth(
                            netlink_packet_route::link::InfoVeth::Peer(peer),
                        ),
                    ) = info
                    {
                        peer.attributes
                            .push(netlink_packet_route::link::LinkAttribute::Mtu(1500));
                        peer.attributes
                            .push(netlink_packet_route::link::LinkAttribute::NetNsFd(fd));
                    }
                }
            }
        }
        handle.link().add(veth).execute().await?;
        let pod_side = std::thread::spawn(move || -> anyhow::Result<()> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", pod_path.display()))?;
            current_thread()?.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                let index = rt_link_index(&handle, "eth0").await?;
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
        rt_link_index(&handle, &host_name).await?;
        pod_side
            .join()
            .map_err(|_| anyhow::anyhow!("pod thread panicked"))?
    })
}

fn median(v: &[f64]) -> f64 {
    podnet_lab::percentile(v, 0.5)
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}–{:.2}", min * 1e3, max * 1e3)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench-netlink needs root (network namespaces, links, routes)");
    }
    let tag = format!("pnbn{}", std::process::id());
    let mut spaces = Namespaces { names: Vec::new() };
    let node_name = format!("{tag}-node");
    let node = spaces.add(&node_name)?;
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir)?;
    let batch_file = dir.join("routes.batch");
    let result = run(&args, &mut spaces, &node_name, &node, &batch_file, &tag);
    let _ = std::fs::remove_dir_all(&dir);
    drop(spaces);
    result
}

fn run(
    args: &Args,
    spaces: &mut Namespaces,
    node_name: &str,
    node: &Path,
    batch_file: &Path,
    tag: &str,
) -> anyhow::Result<()> {
    let n = node_name;
    ip(&["-n", n, "link", "add", "pnd0", "type", "dummy"])?;
    ip(&["-n", n, "addr", "add", "198.18.0.1/16", "dev", "pnd0"])?;
    ip(&["-n", n, "link", "set", "pnd0", "up"])?;
    ip(&["-n", n, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", n, "link", "set", BRIDGE, "up"])?;

    // Daemon first sync.
    let set = routes(args.routes);
    let mut own = Vec::new();
    let mut piped = Vec::new();
    let mut serial = Vec::new();
    let mut batch = Vec::new();
    eprintln!(
        "route sync: {} routes, {} rounds per client",
        args.routes, args.runs
    );
    for run in 0..args.runs {
        let order: [usize; 4] = if run % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for which in order {
            flush_routes(n)?;
            let s = set.clone();
            let inflight = args.inflight;
            let started = Instant::now();
            match which {
                0 => in_netns(node, move || podnet_sync(&s))?,
                1 => in_netns(node, move || rtnetlink_sync(&s, inflight))?,
                2 => in_netns(node, move || rtnetlink_sync(&s, 1))?,
                _ => ip_batch(n, &s, batch_file)?,
            }
            let took = started.elapsed().as_secs_f64();
            let have = count_routes(n)?;
            if have != args.routes {
                bail!("client {which} left {have} routes, not {}", args.routes);
            }
            [&mut own, &mut piped, &mut serial, &mut batch][which].push(took);
        }
        eprintln!("  round {}/{} done", run + 1, args.runs);
    }
    flush_routes(n)?;

    // CNI ADD's netlink part.
    let mut pods = Vec::new();
    for i in 0..args.pods {
        pods.push(spaces.add(&format!("{tag}-p{i}"))?);
    }
    let mut add_own = Vec::new();
    let mut add_rt = Vec::new();
    eprintln!("CNI ADD: {} pods, {} rounds per client", args.pods, args.runs);
    for run in 0..args.runs * 2 {
        let rtnl = (run % 2 == 1) ^ (run / 2 % 2 == 1);
        let mut took = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let host_name = format!("pnb{i}");
            let pod = pod.clone();
            let started = Instant::now();
            in_netns(node, move || {
                if rtnl {
                    rtnetlink_add(&pod, host_name, i)
                } else {
                    podnet_add(&pod, host_name, i)
                }
            })?;
            took.push(started.elapsed().as_secs_f64());
        }
        // Check, then undo (untimed): the pods' addresses and routes exist.
        for (i, pod) in pods.iter().enumerate() {
            let name = pod
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let routes = ip(&["-n", &name, "-6", "route", "show", "default"])?;
            if !routes.contains("fd00:10:244:1::1") {
                bail!("pod {i}: no IPv6 default route after ADD ({})", routes.trim());
            }
            ip(&["-n", n, "link", "del", &format!("pnb{i}")])?;
        }
        if rtnl {
            add_rt.extend(took);
        } else {
            add_own.extend(took);
        }
        eprintln!("  round {}/{} done", run + 1, args.runs * 2);
    }

    let ratio = |a: &[f64], b: &[f64]| median(a) / median(b);
    println!("| path | client | median (ms) | min–max (ms) | vs podnet-netlink |");
    println!("| --- | --- | ---: | --- | ---: |");
    let rows: [(&str, &str, &[f64], &[f64]); 6] = [
        ("route sync", "podnet-netlink (batched)", &own, &own),
        ("route sync", "rtnetlink, pipelined", &piped, &own),
        ("route sync", "rtnetlink, one at a time", &serial, &own),
        ("route sync", "`ip -batch` (with exec)", &batch, &own),
        ("CNI ADD netlink part", "podnet-netlink", &add_own, &add_own),
        ("CNI ADD netlink part", "rtnetlink (+ runtime)", &add_rt, &add_own),
    ];
    for (path, client, v, base) in rows {
        println!(
            "| {path} | {client} | {:.2} | {} | {:.2}× |",
            median(v) * 1e3,
            spread(v),
            ratio(v, base)
        );
    }
    println!(
        "\n{} routes; {} ADDs per client; {} rounds; {} in flight for pipelined rtnetlink",
        args.routes,
        add_own.len(),
        args.runs,
        args.inflight
    );
    Ok(())
}
