//! Traffic probes from inside the lab: one request from a pod to a target, and the full reachability matrix.

use super::{ECHO_PORT, PodInfo, RealLab, kubectl, pods};
use crate::LabError;

/// What `from` sees when it asks the echo service at `target` (an address) who it is:
/// the client address the server saw, or `None` when unreachable. Busybox's `nc` speaks
/// the HTTP (Debian's static busybox `wget` crashes), and the server's answer — an
/// IPv4 client as `[::ffff:a.b.c.d]` on its dual-stack socket — is made plain.
pub fn fetch_from(lab: &RealLab, from: &str, target: &str, port: u16) -> Option<String> {
    ask_from(lab, from, target, port).ok()
}

/// As [`fetch_from`], with the reason when nothing answered: kubectl's error (the exec
/// itself failed) or what `nc` printed (the connection failed).
pub fn ask_from(lab: &RealLab, from: &str, target: &str, port: u16) -> Result<String, String> {
    let script =
        format!("printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target} {port} 2>&1");
    let out = kubectl(
        lab,
        &["exec", "-n", "lab", from, "--", "sh", "-c", &script],
        "",
    )
    .map_err(|e| format!("kubectl exec failed: {e}"))?;
    out.lines()
        .map(str::trim)
        .rfind(|l| l.starts_with('['))
        .map(plain_address)
        .ok_or_else(|| format!("no answer: {:?}", out.trim()))
}

/// `[::ffff:10.0.0.1]` → `10.0.0.1`, `[fd00::1]` → `fd00::1`.
pub(super) fn plain_address(seen: &str) -> String {
    let inner = seen.trim_start_matches('[').trim_end_matches(']');
    inner.strip_prefix("::ffff:").unwrap_or(inner).to_string()
}

/// The connectivity matrix, run from inside the pods with `kubectl exec`: every pod to
/// every pod and hostNetwork pod, to the Service, and to the external host, per family.
/// Returns (table, ok, total, problems).
pub fn matrix(lab: &RealLab) -> Result<(String, usize, usize, Vec<String>), LabError> {
    let all = pods(lab)?;
    let sources: Vec<&PodInfo> = all.iter().filter(|p| p.name.contains("-pod")).collect();
    let targets: Vec<&PodInfo> = all.iter().filter(|p| p.name.starts_with("node-")).collect();
    let mut table = String::new();
    let (mut ok, mut total) = (0, 0);
    let mut problems = Vec::new();
    for family in [0usize, 1] {
        table.push_str(if family == 0 { "IPv4" } else { "IPv6" });
        table.push_str(&format!("\n{:<16}", "from \\ to"));
        for t in &targets {
            table.push_str(&format!("{:>13}", short(&t.name)));
        }
        table.push_str(&format!("{:>8}{:>6}\n", "service", "ext"));
        for s in &sources {
            table.push_str(&format!("{:<16}", s.name));
            let own = s.ips.get(family).cloned().unwrap_or_default();
            for t in &targets {
                total += 1;
                let Some(ip) = t.ips.get(family) else {
                    table.push_str(&format!("{:>13}", "-"));
                    continue;
                };
                let seen = fetch_from(lab, &s.name, ip, ECHO_PORT);
                // Pod to pod: the pod's own address, never masqueraded. To another node's
                // own address (a hostNetwork pod there): masqueraded to this node's, as
                // with flannel and Calico — it is not a pod CIDR.
                let want = if t.host_network && t.node != s.node {
                    node_ip(lab, &s.node, family)
                } else {
                    own.clone()
                };
                let good = seen.as_deref() == Some(want.as_str());
                if good {
                    ok += 1;
                } else {
                    problems.push(format!(
                        "{} -> {} {ip}: saw {seen:?}, want {want}",
                        s.name, t.name
                    ));
                }
                table.push_str(&format!("{:>13}", if good { "ok" } else { "FAIL" }));
            }
            if family == 0 {
                total += 1;
                let good = service_ip(lab)
                    .and_then(|ip| fetch_from(lab, &s.name, &ip, 80))
                    .is_some();
                ok += usize::from(good);
                if !good {
                    problems.push(format!("{} -> Service echo unreachable", s.name));
                }
                table.push_str(&format!("{:>8}", if good { "ok" } else { "FAIL" }));
            } else {
                table.push_str(&format!("{:>8}", "-"));
            }
            total += 1;
            let ext = lab.external_ips[family].clone();
            let node_ip = node_ip(lab, &s.node, family);
            let seen = fetch_from(lab, &s.name, &ext, ECHO_PORT);
            // Leaving the cluster: masqueraded to the node's address.
            let good = seen.as_deref() == Some(node_ip.as_str());
            if good {
                ok += 1;
            } else {
                problems.push(format!(
                    "{} -> external {ext}: saw {seen:?}, want the node's {node_ip}",
                    s.name
                ));
            }
            table.push_str(&format!("{:>6}\n", if good { "ok" } else { "FAIL" }));
        }
    }
    Ok((table, ok, total, problems))
}

pub(super) fn node_ip(lab: &RealLab, node: &str, family: usize) -> String {
    lab.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.ips.get(family).cloned())
        .unwrap_or_default()
}

pub(super) fn service_ip(lab: &RealLab) -> Option<String> {
    kubectl(
        lab,
        &[
            "get",
            "svc",
            "-n",
            "lab",
            "echo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        "",
    )
    .ok()
    .filter(|s| !s.is_empty())
}

pub(super) fn short(name: &str) -> String {
    name.replace("node-", "n")
        .replace("-pod", "p")
        .replace("-host", "h")
}
