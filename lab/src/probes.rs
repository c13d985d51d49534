//! Probes of a lab's dataplane that need no tool inside the namespaces: the routes a
//! node's kernel holds, and the source address a packet arrives with (to tell a pod's
//! own address from a masqueraded one).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::{LabError, run_ok};

/// Every route of `netns`'s main table, both families, that podnet does not own
/// (protocol other than podnet's), as `dst dev proto [via gateway]`, sorted. IPv6
/// link-local routes (one per link, appearing with every veth) are left out.
pub fn foreign_routes(netns: &str) -> Result<Vec<String>, LabError> {
    routes_where(netns, |proto| {
        proto != podnet_contract::ROUTE_PROTOCOL.to_string()
    })
}

/// Every route of `netns`'s main table, both families, whoever owns it (IPv6 link-local
/// ones left out), sorted.
pub fn all_routes(netns: &str) -> Result<Vec<String>, LabError> {
    routes_where(netns, |_| true)
}

fn routes_where(netns: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, LabError> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let text = run_ok(&["ip", "-j", fam, "-n", netns, "route", "show"])?;
        let routes: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| LabError::Command {
                command: format!("ip -j {fam} -n {netns} route show"),
                stderr: e.to_string(),
            })?;
        for r in routes {
            let field = |k: &str| match &r[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            let (dst, proto) = (field("dst"), field("protocol"));
            if dst.starts_with("fe80::") || !keep(&proto) {
                continue;
            }
            let mut line = format!("{dst} dev {} proto {proto}", field("dev"));
            let gw = field("gateway");
            if !gw.is_empty() {
                line.push_str(&format!(" via {gw}"));
            }
            out.push(line);
        }
    }
    out.sort();
    Ok(out)
}

/// A line of `ip route show` without the `nhid N` of a route through a nexthop object
/// (podnet writes its routes that way; the kernel chooses the ids, so they differ after
/// every re-creation, while the gateway and device the line still shows do not).
pub fn without_nexthop_id(line: &str) -> String {
    let mut words: Vec<&str> = line.split(' ').collect();
    if let Some(at) = words.iter().position(|w| *w == "nhid") {
        words.drain(at..(at + 2).min(words.len()));
    }
    words.join(" ")
}

/// Deletes every route of podnet's protocol from `netns`, both families, one `ip route
/// del` each in one `ip -batch` (a node losing them; every deletion is notified).
/// `ip route flush proto 233` cannot: iproute2 6.1 sends a route through a nexthop
/// object back with both its id and its gateway, which the kernel refuses (EINVAL).
/// The nexthop objects stay, as they would after a hand deletion. Returns how many.
pub fn delete_podnet_routes(netns: &str) -> Result<usize, LabError> {
    let proto = podnet_contract::ROUTE_PROTOCOL.to_string();
    let mut batch = String::new();
    for fam in ["-4", "-6"] {
        let text = run_ok(&[
            "ip", "-j", fam, "-n", netns, "route", "show", "proto", &proto,
        ])?;
        let routes: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| LabError::Command {
                command: format!("ip -j {fam} -n {netns} route show proto {proto}"),
                stderr: e.to_string(),
            })?;
        for r in routes {
            if let Some(dst) = r["dst"].as_str() {
                batch.push_str(&format!("route del {dst} proto {proto}\n"));
            }
        }
    }
    let count = batch.lines().count();
    if count > 0 {
        let out = crate::output_with_input(
            std::process::Command::new("ip").args(["-n", netns, "-batch", "-"]),
            &batch,
        )
        .map_err(|e| LabError::Command {
            command: format!("ip -n {netns} -batch -"),
            stderr: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("ip -n {netns} -batch - (route del … proto {proto})"),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(count)
}

/// Runs `f` on a thread of its own that enters network namespace `netns` (a name under
/// /var/run/netns) and ends afterwards: no other thread ever changes namespace.
pub fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// The source address a UDP datagram from namespace `from` to `to_ip` (an address in
/// namespace `to`) arrives with: the sender's own address, or the one it was
/// masqueraded to.
pub fn observed_source(from: &str, to: &str, to_ip: IpAddr) -> Result<IpAddr, LabError> {
    let io = |what: &'static str| {
        let path = std::path::PathBuf::from(format!("{from} -> {to} ({to_ip})"));
        move |e: std::io::Error| LabError::Io {
            action: what,
            path,
            source: e,
        }
    };
    let receiver = in_netns(to, || {
        let s = UdpSocket::bind(SocketAddr::new(to_ip, 0))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(s)
    })
    .map_err(io("listening"))?;
    let target = receiver.local_addr().map_err(io("listening"))?;
    in_netns(from, || {
        let any: IpAddr = if to_ip.is_ipv4() {
            [0u8; 4].into()
        } else {
            [0u16; 8].into()
        };
        let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
        s.send_to(b"podnet-lab source probe", target)?;
        Ok(())
    })
    .map_err(io("sending"))?;
    let mut buf = [0u8; 64];
    let (_, src) = receiver.recv_from(&mut buf).map_err(io("receiving"))?;
    Ok(src.ip())
}
