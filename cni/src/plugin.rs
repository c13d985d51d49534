//! The CNI verbs.

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use podnet_netlink::{Dad, LinkInfo, LinkKind, Netlink, Route, RouteFilter};
use serde_json::{Value, json};

use crate::config::{
    AddResult, Command, Env, NetConf, ResultInterface, SUPPORTED_VERSIONS, version_hint,
};
use crate::error::{CniError, Code};
use crate::hostports;
use crate::ipam::{AttachmentLock, Ipam};

/// Route protocol of the pod's default routes (RTPROT_BOOT, as `ip route add` uses).
const RTPROT_BOOT: u8 = 3;
/// How long ADD waits for the pod interface to come up operationally.
const OPER_UP_TIMEOUT: Duration = Duration::from_secs(5);

pub use podnet_contract::host_veth_name;

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs one invocation; returns what goes to stdout.
pub fn run(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    if env.command == Command::Version {
        return Ok(
            json!({"cniVersion": version_hint(stdin), "supportedVersions": SUPPORTED_VERSIONS})
                .to_string(),
        );
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(env, &conf).map(|r| r.to_json(&conf.cni_version).to_string()),
        Command::Del => del(env, &conf).map(|()| String::new()),
        Command::Check => check(env, &conf).map(|()| String::new()),
        Command::Gc => gc(&conf).map(|()| String::new()),
        Command::Status => status(&conf).map(|()| String::new()),
        Command::Version => Ok(String::new()),
    }
}

fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            "cannot open the container's network namespace",
            format!("{}: {e}", path.display()),
        )
    })
}

/// The bridge, created when missing (concurrent creators all succeed), up, with `mtu`
/// and each gateway address.
fn ensure_bridge(nl: &mut Netlink, conf: &NetConf, mtu: u32) -> Result<LinkInfo, CniError> {
    let bridge = match nl.link_by_name(&conf.bridge)? {
        Some(b) => b,
        None => {
            match nl.add_bridge(&conf.bridge, mtu, bridge_mac(conf)) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            nl.link_by_name(&conf.bridge)?.ok_or_else(|| {
                CniError::new(
                    Code::TryAgainLater,
                    "bridge vanished",
                    format!("{} was deleted while being set up", conf.bridge),
                )
            })?
        }
    };
    if bridge.kind != LinkKind::Bridge {
        return Err(CniError::new(
            Code::InvalidConfig,
            "bridge name taken",
            format!("{} exists and is not a bridge", conf.bridge),
        ));
    }
    if !bridge.up {
        no_dad_on_new_bridge(conf)?;
    }
    pin_bridge_mac(nl, conf, &bridge)?;
    if !bridge.up || bridge.mtu != mtu {
        nl.set_link(bridge.index, true, (bridge.mtu != mtu).then_some(mtu))?;
    }
    for net in &conf.pod_cidrs {
        let gw = NetConf::gateway(net);
        match nl.add_address(bridge.index, gw, net.prefix_len(), Dad::Skip) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bridge)
}

/// The bridge's MAC: fixed, so it never follows its ports (see
/// `Netlink::add_bridge`), and readable: `0a:58` (locally administered, unicast)
/// followed by the IPv4 gateway (10.244.7.1 → 0a:58:0a:f4:07:01), or the last four
/// bytes of the IPv6 gateway on an IPv6-only node.
pub fn bridge_mac(conf: &NetConf) -> [u8; 6] {
    let tail = conf
        .pod_cidrs
        .iter()
        .map(NetConf::gateway)
        .min_by_key(|g| g.is_ipv6())
        .map(|g| match g {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        })
        .unwrap_or_default();
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// A bridge made before podnet-cni fixed its address (or by hand) still has one the
/// kernel chose and moves with its ports: pin the address it has now, so nothing a pod
/// cached changes. Read from sysfs, which shows the plugin's network namespace when the
/// runtime runs it on the node (elsewhere the file is missing and nothing is done).
fn pin_bridge_mac(nl: &mut Netlink, conf: &NetConf, bridge: &LinkInfo) -> Result<(), CniError> {
    if bridge.mac == bridge_mac(conf) {
        // The fixed address podnet-cni gives the bridges it makes: nothing to read.
        return Ok(());
    }
    let path = format!("/sys/class/net/{}/addr_assign_type", conf.bridge);
    let random = std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == "1");
    if random && bridge.mac.len() == 6 && bridge.mac != bridge_mac(conf) {
        nl.set_mac(bridge.index, &bridge.mac)?;
    }
    Ok(())
}

/// No duplicate address detection on a bridge about to come up (a new one is created
/// down; IPv6 configures it when it comes up): until its link-local address had passed DAD, the host's
/// neighbour solicitations for pods would go unanswered, and pods could not reach each
/// other over IPv6 for the bridge's first second or two.
fn no_dad_on_new_bridge(conf: &NetConf) -> Result<(), CniError> {
    if !conf.pod_cidrs.iter().any(|c| c.addr().is_ipv6()) {
        return Ok(());
    }
    let path = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", conf.bridge);
    std::fs::write(&path, "0").map_err(|e| {
        CniError::new(
            Code::Io,
            "cannot configure the bridge",
            format!("{path}: {e}"),
        )
    })
}

/// Turns on forwarding for each family the node has pod CIDRs of. With IPv6, forwarding
/// makes the kernel ignore router advertisements on every interface whose `accept_ra`
/// is 1, and a host that learned its default route from them would lose it when that
/// route expires: such interfaces (and the default for new ones) get `accept_ra=2`
/// (accept even when forwarding) first, so the host keeps doing what it did.
fn ensure_forwarding(conf: &NetConf) -> Result<(), CniError> {
    let io = |path: &str, e: std::io::Error| {
        CniError::new(Code::Io, "cannot enable forwarding", format!("{path}: {e}"))
    };
    for net in &conf.pod_cidrs {
        let path = if net.addr().is_ipv4() {
            "/proc/sys/net/ipv4/ip_forward"
        } else {
            "/proc/sys/net/ipv6/conf/all/forwarding"
        };
        if std::fs::read_to_string(path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        if net.addr().is_ipv6() {
            keep_accepting_router_advertisements().map_err(|(p, e)| io(&p, e))?;
        }
        std::fs::write(path, "1").map_err(|e| io(path, e))?;
    }
    Ok(())
}

/// Sets `accept_ra=2` wherever it is 1 (see [`ensure_forwarding`]).
fn keep_accepting_router_advertisements() -> Result<(), (String, std::io::Error)> {
    let dir = "/proc/sys/net/ipv6/conf";
    let entries = std::fs::read_dir(dir).map_err(|e| (dir.to_string(), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "all" {
            continue;
        }
        let path = entry.path().join("accept_ra");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
            std::fs::write(&path, "2").map_err(|e| (path.display().to_string(), e))?;
        }
    }
    Ok(())
}

/// ADD, in order on the plugin's one thread: the leases; the bridge and the veth pair,
/// its pod end created straight into the pod's namespace, and the host end finished;
/// then a connection made inside the pod's namespace (the thread steps in and back out)
/// configures the pod end. Nothing waits for a name check first: the kernel refuses
/// the veth whole when either name is taken, and only then is the pod's namespace asked
/// which one. Any failure undoes everything this ADD made.
///
/// One thread, not a second one for the pod side: on a virtual machine waking another
/// thread costs a vCPU wake-up, more than the work two threads could overlap.
///
/// The whole ADD holds the attachment's lock: a second ADD, a DEL or a GC for the same
/// container and ifname waits (GC skips it), so none can remove what this one builds.
fn add(env: &Env, conf: &NetConf) -> Result<AddResult, CniError> {
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = open_netns(&netns_path)?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let _lock = AttachmentLock::acquire(&conf.data_dir, &conf.name, &host_name)?;
    let mut ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let held_before = !ipam.lookup(&env.container_id, &env.ifname).is_empty();
    let leases = match ipam.allocate(&conf.pod_cidrs, &env.container_id, &env.ifname) {
        Ok(leases) => leases,
        Err(e) => {
            // A taken interface name is the error to report, whatever else failed.
            drop(ipam);
            if pod_has_interface(&netns, &netns_path, &env.ifname)? {
                return Err(interface_exists(env, &netns_path));
            }
            return Err(e);
        }
    };
    drop(ipam);
    let (bridge, host_link, pod_index) = match host_add(env, conf, &netns, &netns_path) {
        Ok(made) => made,
        Err(HostError::BeforeVeth(e)) => {
            // A repeated ADD's leases are the attachment's: never given back here.
            if !held_before {
                release_leases(env, conf);
            }
            return Err(e);
        }
        Err(HostError::AfterVeth(e)) => {
            undo_add(env, conf);
            return Err(e);
        }
    };
    let pod = PodEnd {
        netns: &netns,
        netns_path: &netns_path,
        ifname: &env.ifname,
        index: pod_index,
    };
    let pod_link = configure_pod(&pod, &leases).and_then(|link| {
        if !conf.port_mappings.is_empty() {
            let ips: Vec<IpAddr> = leases.iter().map(IpNet::addr).collect();
            hostports::add(conf, &env.container_id, &host_name, &ips)?;
        }
        Ok(link)
    });
    match pod_link {
        Ok(pod_link) => Ok(AddResult {
            interfaces: vec![bridge, host_link, pod_link],
            ips: leases
                .iter()
                .map(|l| (*l, NetConf::gateway(&l.trunc())))
                .collect(),
            dns: conf.dns.clone(),
        }),
        Err(e) => {
            undo_add(env, conf);
            Err(e)
        }
    }
}

/// Host-side failures, by what is left to undo.
enum HostError {
    /// No veth was made (leases taken for this ADD go back).
    BeforeVeth(CniError),
    /// The veth exists and must go, with the leases.
    AfterVeth(CniError),
}

/// Whether the pod's namespace has an interface named `ifname` (asked through a
/// connection made inside it).
fn pod_has_interface(netns: &File, netns_path: &Path, ifname: &str) -> Result<bool, CniError> {
    let found = Netlink::on_this_thread_in_netns(netns, netns_path, || {
        Netlink::new().and_then(|mut pod| pod.link_by_name(ifname))
    })
    .and_then(|found| found)?;
    Ok(found.is_some())
}

fn interface_exists(env: &Env, netns_path: &Path) -> CniError {
    CniError::new(
        Code::InterfaceExists,
        "interface already exists",
        format!("{} exists in {}", env.ifname, netns_path.display()),
    )
}

/// Gives back the attachment's leases.
fn release_leases(env: &Env, conf: &NetConf) {
    if let Ok(mut ipam) = Ipam::open(&conf.data_dir, &conf.name) {
        let _ = ipam.release(&env.container_id, &env.ifname);
    }
}

/// The bridge and the veth pair with its host end finished (on the bridge, hairpin);
/// returns the bridge and the host end as the result reports them, and the pod end's
/// index when the kernel told it.
fn host_add(
    env: &Env,
    conf: &NetConf,
    netns: &File,
    netns_path: &Path,
) -> Result<(ResultInterface, ResultInterface, Option<u32>), HostError> {
    let before = HostError::BeforeVeth;
    let mut host = Netlink::new().map_err(|e| before(e.into()))?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let mtu = match conf.mtu {
        Some(m) => m,
        None => host.default_route_mtu().map_err(|e| before(e.into()))?,
    };
    let bridge = ensure_bridge(&mut host, conf, mtu).map_err(before)?;
    ensure_forwarding(conf).map_err(before)?;
    let after = HostError::AfterVeth;
    let echoed = match host.add_veth(&host_name, mtu, bridge.index, &env.ifname, netns.as_fd()) {
        Ok(echoed) => echoed,
        Err(e) if e.is_exists() => {
            // A name is taken. The pod's interface name: that is the error to report,
            // and nothing was touched. Otherwise it is the host end, left by an
            // interrupted ADD of this same attachment: its name is ours by
            // construction and this ADD holds the attachment's lock, so no other
            // invocation is building it. Remove it and try once more.
            if pod_has_interface(netns, netns_path, &env.ifname).map_err(before)? {
                return Err(before(interface_exists(env, netns_path)));
            }
            host.del_link_by_name(&host_name)
                .map_err(|e| after(e.into()))?;
            host.add_veth(&host_name, mtu, bridge.index, &env.ifname, netns.as_fd())
                .map_err(|e| after(e.into()))?
        }
        Err(e) => return Err(before(e.into())),
    };
    let host_link = match echoed {
        Some(link) => link,
        None => host
            .link_by_name(&host_name)
            .map_err(|e| after(e.into()))?
            .ok_or_else(|| {
                after(CniError::new(
                    Code::Io,
                    "host veth missing",
                    host_name.clone(),
                ))
            })?,
    };
    host.set_hairpin(host_link.index)
        .map_err(|e| after(e.into()))?;
    // A new bridge takes its address from its first port: read it again then.
    let bridge_mac = if bridge.mac.iter().all(|b| *b == 0) {
        host.link_by_index(bridge.index)
            .map_err(|e| after(e.into()))?
            .map(|b| b.mac)
            .unwrap_or_default()
    } else {
        bridge.mac.clone()
    };
    Ok((
        ResultInterface {
            name: bridge.name.clone(),
            mac: mac_string(&bridge_mac),
            sandbox: None,
        },
        ResultInterface {
            name: host_link.name,
            mac: mac_string(&host_link.mac),
            sandbox: None,
        },
        host_link.peer,
    ))
}

/// No duplicate address detection on the pod's interface (the calling thread is in the
/// pod's namespace; the interface is still down): its addresses are podnet's to hand
/// out, and until its link-local address had passed DAD the pod would not answer the
/// host's neighbour solicitations — unreachable over IPv6 for its first second or two.
fn no_dad_in_pod(ifname: &str, leases: &[IpNet]) -> Result<(), CniError> {
    if !leases.iter().any(|l| l.addr().is_ipv6()) {
        return Ok(());
    }
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
    std::fs::write(&path, "0").map_err(|e| {
        CniError::new(
            Code::Io,
            "cannot configure the pod's interface",
            format!("{path}: {e}"),
        )
    })
}

/// The pod end of a new veth.
struct PodEnd<'a> {
    netns: &'a File,
    netns_path: &'a Path,
    ifname: &'a str,
    /// Its index, when the veth's creation reported it.
    index: Option<u32>,
}

/// Configures the pod end of a new veth through a connection made inside the pod's
/// namespace: up, its addresses, the default routes through the gateways; returns once
/// it is operationally up.
fn configure_pod(end: &PodEnd, leases: &[IpNet]) -> Result<ResultInterface, CniError> {
    // Subscribed before the first request (so on the same socket) while the interface
    // is still down: its coming up is then read from notifications, with its address.
    let mut pod = Netlink::on_this_thread_in_netns(end.netns, end.netns_path, || {
        let mut pod = Netlink::new()?;
        pod.subscribe_links()?;
        no_dad_in_pod(end.ifname, leases)?;
        Ok::<_, CniError>(pod)
    })??;
    let index = match end.index {
        Some(index) => index,
        None => {
            pod.link_by_name(end.ifname)?
                .ok_or_else(|| {
                    CniError::new(
                        Code::Io,
                        "pod interface missing",
                        format!("{} is not in {}", end.ifname, end.netns_path.display()),
                    )
                })?
                .index
        }
    };
    // Up first: an IPv6 address added to a link that is down joins its solicited-node
    // group only when the link comes up, after a random delay of up to a second, and
    // until then the host's neighbour solicitations for it go unanswered.
    pod.set_link(index, true, None)?;
    for lease in leases {
        pod.add_address(index, lease.addr(), lease.prefix_len(), Dad::Skip)?;
    }
    for lease in leases {
        let gateway = NetConf::gateway(&lease.trunc());
        let dst = if lease.addr().is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        pod.add_route(&Route {
            dst,
            prefix: 0,
            gateway: Some(gateway),
            oif: Some(index),
            protocol: RTPROT_BOOT,
        })?;
    }
    let link = pod.wait_subscribed_oper_up(index, OPER_UP_TIMEOUT)?;
    if link.name != end.ifname {
        // The index the kernel reported is the pod end's by construction; a different
        // name there would mean the pod namespace is not the one the veth went into.
        return Err(CniError::new(
            Code::Io,
            "pod interface mismatch",
            format!(
                "link {index} in {} is {}, not {}",
                end.netns_path.display(),
                link.name,
                end.ifname
            ),
        ));
    }
    Ok(ResultInterface {
        name: link.name,
        mac: mac_string(&link.mac),
        sandbox: Some(end.netns_path.display().to_string()),
    })
}

/// Removes what a failed ADD made: the veth (both ends) and the leases.
fn undo_add(env: &Env, conf: &NetConf) {
    if let Ok(mut host) = Netlink::new() {
        let _ = host.del_link_by_name(&host_veth_name(&env.container_id, &env.ifname));
    }
    release_leases(env, conf);
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let lock = AttachmentLock::acquire(&conf.data_dir, &conf.name, &host_name)?;
    let mut errors = Vec::new();
    // The interface first, so an address is never reused while a link still has it.
    match Netlink::new().and_then(|mut nl| nl.del_link_by_name(&host_name)) {
        Ok(_) => {}
        Err(e) => errors.push(e.to_string()),
    }
    match Ipam::open(&conf.data_dir, &conf.name)
        .and_then(|mut ipam| ipam.release(&env.container_id, &env.ifname))
    {
        Ok(_) => {}
        Err(e) => errors.push(e.to_string()),
    }
    if let Err(e) = hostports::del(conf, &host_name) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        lock.remove();
        Ok(())
    } else {
        Err(CniError::new(
            Code::Io,
            "DEL could not finish",
            errors.join("; "),
        ))
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "CHECK needs prevResult",
            "no prevResult in the configuration",
        )
    })?;
    let ips: Vec<IpNet> = prev["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let failed = |what: String| {
        CniError::new(
            Code::CheckFailed,
            "attachment differs from its ADD result",
            what,
        )
    };
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = open_netns(&netns_path)?;
    let mut pod = Netlink::in_netns_file(&netns, &netns_path)?;
    let link = pod.link_by_name(&env.ifname)?.ok_or_else(|| {
        failed(format!(
            "{} is missing from {}",
            env.ifname,
            netns_path.display()
        ))
    })?;
    let have = pod.addresses(link.index)?;
    for ip in &ips {
        if !have.contains(&(ip.addr(), ip.prefix_len())) {
            return Err(failed(format!("{ip} is missing from {}", env.ifname)));
        }
    }
    for (ipv6, want) in [
        (false, ips.iter().any(|i| i.addr().is_ipv4())),
        (true, ips.iter().any(|i| i.addr().is_ipv6())),
    ] {
        if want
            && !pod
                .routes(RouteFilter {
                    ipv6,
                    protocol: None,
                })?
                .iter()
                .any(|r| r.prefix == 0 && r.oif == Some(link.index))
        {
            return Err(failed(format!(
                "the default {} route via {} is missing",
                if ipv6 { "IPv6" } else { "IPv4" },
                env.ifname
            )));
        }
    }
    let mut host = Netlink::new()?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let bridge = host
        .link_by_name(&conf.bridge)?
        .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
    let hv = host
        .link_by_name(&host_name)?
        .ok_or_else(|| failed(format!("host veth {host_name} is missing")))?;
    if hv.master != Some(bridge.index) {
        return Err(failed(format!(
            "{host_name} is not attached to {}",
            conf.bridge
        )));
    }
    hostports::check(conf, &host_name, &conf.pod_cidrs)
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    // No list: the runtime did not say what is valid; releasing everything would cut
    // running pods off, so GC without a list changes nothing. An empty list means no
    // attachment is valid, and everything is released.
    let Some(valid) = &conf.valid_attachments else {
        return Ok(());
    };
    let keep: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    // An attachment whose lock is taken has an ADD or DEL in flight (the runtime's list
    // may predate it): left alone. The locks taken are held until its veth is gone.
    let mut locks: Vec<(String, AttachmentLock)> = Vec::new();
    let try_lock = |veth: &str, locks: &mut Vec<(String, AttachmentLock)>| -> bool {
        if locks.iter().any(|(v, _)| v == veth) {
            return true;
        }
        match AttachmentLock::try_acquire(&conf.data_dir, &conf.name, veth) {
            Ok(Some(lock)) => {
                locks.push((veth.to_string(), lock));
                true
            }
            _ => false,
        }
    };
    Ipam::open(&conf.data_dir, &conf.name)?.gc(&keep, |cid, ifname| {
        try_lock(&host_veth_name(cid, ifname), &mut locks)
    })?;
    let keep_links: HashSet<String> = keep.iter().map(|(c, i)| host_veth_name(c, i)).collect();
    hostports::gc(conf, &keep_links, |veth| try_lock(veth, &mut locks))?;
    let mut host = Netlink::new()?;
    let Some(bridge) = host.link_by_name(&conf.bridge)? else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for link in host.links()? {
        let ours = link.master == Some(bridge.index)
            && link.kind == LinkKind::Veth
            && podnet_contract::is_host_veth_name(&link.name);
        if ours
            && !keep_links.contains(&link.name)
            && try_lock(&link.name, &mut locks)
            && let Err(e) = host.del_link(link.index)
            && !e.is_not_found()
        {
            errors.push(e.to_string());
        }
    }
    for (_, lock) in locks {
        lock.remove();
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Io,
            "GC could not remove every stale interface",
            errors.join("; "),
        ))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable =
        |why: String| CniError::new(Code::NotAvailable, "podnet-cni cannot serve ADD", why);
    let ipam = Ipam::open(&conf.data_dir, &conf.name).map_err(|e| unavailable(e.to_string()))?;
    if !ipam.has_free(&conf.pod_cidrs)? {
        let cidrs: Vec<String> = conf.pod_cidrs.iter().map(ToString::to_string).collect();
        return Err(unavailable(format!(
            "no free address left in {}",
            cidrs.join(", ")
        )));
    }
    Ok(())
}

/// The JSON of an error, for main.
pub fn error_json(err: &CniError, stdin: &[u8]) -> Value {
    serde_json::from_str(&err.to_json(&version_hint(stdin))).unwrap_or(Value::Null)
}
