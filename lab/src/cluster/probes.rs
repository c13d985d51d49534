//! Traffic probes inside the netns lab: one ping between pods and the full pod-to-pod matrix.

use std::process::{Command, Stdio};

use super::LabState;

/// Whether `from` reaches `to`: up to three pings of one second (the first packets of
/// a new path wait for neighbour discovery).
pub fn ping(from: &str, to: &str) -> bool {
    (0..3).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", from, "ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The connectivity matrix: every pod to every pod and to the external host, per family.
pub fn matrix(state: &LabState) -> (String, usize, usize) {
    let mut out = String::new();
    let (mut ok, mut total) = (0, 0);
    for family in [0usize, 1] {
        out.push_str(if family == 0 { "IPv4\n" } else { "IPv6\n" });
        out.push_str(&format!("{:<24}", "from \\ to"));
        for p in &state.pods {
            out.push_str(&format!("{:>6}", short(&p.netns)));
        }
        out.push_str("   ext\n");
        for from in &state.pods {
            out.push_str(&format!("{:<24}", from.netns));
            let targets = state
                .pods
                .iter()
                .filter_map(|p| p.ips.get(family))
                .chain(state.external_ips.get(family));
            for to in targets {
                total += 1;
                let good = ping(&from.netns, to);
                ok += usize::from(good);
                out.push_str(&format!("{:>6}", if good { "ok" } else { "FAIL" }));
            }
            out.push('\n');
        }
    }
    (out, ok, total)
}

pub(super) fn short(netns: &str) -> String {
    // <tag>-node-1-pod2 → n1p2
    let parts: Vec<&str> = netns.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [p, n, _] => format!("n{n}{}", p.replace("pod", "p")),
        _ => netns.to_string(),
    }
}
