//! What the benchmarks read from a running lab: a started lab for a benchmark, the containers' cgroups, memory and CPU, and their network namespaces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CGROUP_ROOT, RealLab, RealOptions, down, image_archives, kubectl, load, up};
use crate::LabError;
use crate::kube_node::ProxyMode;

/// The lab a benchmark runs on: 3 nodes (kube-proxy in nftables mode), podnet's and the
/// lab's images from `images`, state in `/run/<prefix><pid>` (the returned lab's `dir`),
/// brought up on `rt`, progress on stderr. If bringing it up fails, whatever was started
/// is removed.
pub fn bench_lab(
    rt: &tokio::runtime::Runtime,
    prefix: &str,
    images: &Path,
) -> Result<RealLab, LabError> {
    let tag = format!("{prefix}{}", std::process::id());
    let state = PathBuf::from(format!("/run/{tag}"));
    let opts = RealOptions {
        nodes: 3,
        proxy_modes: vec![ProxyMode::Nftables],
        images: image_archives(images)?,
        podnet_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut progress =
        |what: &str, took: Duration| eprintln!("==> {what} ({:.1}s)", took.as_secs_f64());
    rt.block_on(up(&tag, &opts, &state, &mut progress))
        .inspect_err(|_| {
            if let Ok(lab) = load(&state) {
                down(&lab);
            }
        })
}

/// Resource use of one container, from its cgroups (v1: memory and cpuacct).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// `memory.usage_in_bytes`, MiB.
    pub memory_mib: f64,
    /// `total_rss` of `memory.stat`, MiB.
    pub rss_mib: f64,
    /// `cpuacct.usage`: CPU time used since the container started, seconds.
    pub cpu_seconds: f64,
    /// `VmRSS` of its main process — the one with the lowest PID, its entrypoint, not
    /// the short-lived tools it runs (`/proc/<pid>/status`, file-backed pages included:
    /// what `ps` and `top` show), MiB.
    pub vm_rss_mib: f64,
}

/// The first container's ID of every pod in `namespace`, by pod name (pods without a
/// started container are left out).
pub fn container_ids(lab: &RealLab, namespace: &str) -> BTreeMap<String, String> {
    let Ok(text) = kubectl(
        lab,
        &[
            "get",
            "pods",
            "-n",
            namespace,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].containerID}{\"\\n\"}{end}",
        ],
        "",
    ) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let (pod, cid) = line.split_once(' ')?;
            let id = cid.rsplit("://").next()?.trim();
            (!id.is_empty()).then(|| (pod.to_string(), id.to_string()))
        })
        .collect()
}

/// A container's cgroup directory under `controller` (`memory`, `cpuacct`): the
/// directory named after its ID below the lab's cgroup.
pub fn container_cgroup(lab: &RealLab, controller: &str, id: &str) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(CGROUP_ROOT)
        .join(&lab.tag);
    find_dir(&root, id, 8)
}

pub(super) fn find_dir(root: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    if depth == 0 {
        return None;
    }
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if e.file_name().to_string_lossy().contains(name) {
            return Some(p);
        }
        if let Some(found) = find_dir(&p, name, depth - 1) {
            return Some(found);
        }
    }
    None
}

/// Memory and CPU time of the container `id`.
pub fn container_usage(lab: &RealLab, id: &str) -> Option<Usage> {
    let mem = container_cgroup(lab, "memory", id)?;
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let usage: f64 = read(&mem, "memory.usage_in_bytes").trim().parse().ok()?;
    let rss: f64 = read(&mem, "memory.stat")
        .lines()
        .find_map(|l| l.strip_prefix("total_rss ")?.trim().parse().ok())
        .unwrap_or(0.0);
    let cpu_ns: f64 = container_cgroup(lab, "cpuacct", id)
        .map(|d| read(&d, "cpuacct.usage"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0.0);
    let main_pid = read(&mem, "cgroup.procs")
        .lines()
        .filter_map(|pid| pid.trim().parse::<u32>().ok())
        .min();
    let vm_rss_kib: f64 = main_pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    Some(Usage {
        memory_mib: usage / 1048576.0,
        rss_mib: rss / 1048576.0,
        cpu_seconds: cpu_ns / 1e9,
        vm_rss_mib: vm_rss_kib / 1024.0,
    })
}

/// Every podnet container's use (namespace podnet-system), by pod name.
pub fn podnet_usage(lab: &RealLab) -> BTreeMap<String, Usage> {
    container_ids(lab, crate::chart::NAMESPACE)
        .into_iter()
        .filter_map(|(pod, id)| Some((pod, container_usage(lab, &id)?)))
        .collect()
}

/// The network namespace of the container `id`: `/proc/<pid>/ns/net` of the first
/// process in its cgroup.
pub fn container_netns(lab: &RealLab, id: &str) -> Option<PathBuf> {
    let dir = container_cgroup(lab, "memory", id)?;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let pid: u32 = procs.lines().next()?.trim().parse().ok()?;
    Some(PathBuf::from(format!("/proc/{pid}/ns/net")))
}
