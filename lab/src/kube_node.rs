//! A real Kubernetes node of the lab: a network namespace on the lab switch, a mount
//! namespace and a cgroup of its own, and containerd, kubelet and kube-proxy running in
//! them — built from the same Kubernetes version as the control plane.
//!
//! Isolation, as a machine has it:
//! - **network**: the node's namespace, attached to the lab switch;
//! - **mounts**: a mount namespace (propagation slave: nothing made inside shows on the
//!   host) held by an anchor process; in it `/run` is a fresh tmpfs and `/var/lib`,
//!   `/var/log`, `/opt` and `/etc/cni` are the node's own directories, so
//!   `/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/kubelet`, `/var/lib/containerd`,
//!   `/run/containerd` and `/run/podnet` — and the paths kubelet and containerd hard-code
//!   — are per node;
//! - **cgroups**: every process of the node (containerd and its shims, kubelet,
//!   kube-proxy, every container) lives under one cgroup per hierarchy, which is also
//!   kubelet's `cgroupRoot`; stopping a node kills exactly the processes in it.
//!
//! This machine runs cgroup v1 (hybrid): kubelet 1.36 refuses v1 unless told
//! `failCgroupV1: false`, which [`NodeSpec`] sets when it detects v1, and says so.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::certs::{Usage, issue};
use crate::{LabError, run_ok};

/// How kube-proxy programs Services on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyMode {
    /// kube-proxy's nftables mode (the default here).
    Nftables,
    /// kube-proxy's iptables mode.
    Iptables,
}

impl ProxyMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
        }
    }
}

/// What a node is made of.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node (and Kubernetes Node) name.
    pub name: String,
    /// Its network namespace, attached to the lab switch already.
    pub netns: String,
    /// Its addresses on the lab network (IPv4, IPv6).
    pub ips: Vec<IpAddr>,
    /// Labels kubelet registers it with.
    pub labels: Vec<(String, String)>,
    /// kube-proxy's mode.
    pub proxy_mode: ProxyMode,
}

/// Where a node finds what it runs and whom it talks to.
#[derive(Clone, Debug)]
pub struct NodeEnv {
    /// The lab's state directory; the node keeps its files in `<dir>/<name>`.
    pub dir: PathBuf,
    /// The directory of the tool binaries (kubelet, kube-proxy, containerd, ctr, shim).
    pub tools_bin: PathBuf,
    /// openssl, to issue the node's certificates.
    pub openssl: PathBuf,
    /// The cluster CA (certificate and key).
    pub ca_cert: PathBuf,
    /// The cluster CA's key.
    pub ca_key: PathBuf,
    /// The API server URL, reachable from the node's namespace.
    pub server: String,
    /// OCI archives to import into the node's containerd.
    pub images: Vec<PathBuf>,
    /// The sandbox image (one of `images`).
    pub pause_image: String,
    /// The cgroup path (relative to each hierarchy's root) under which every node gets its
    /// own: `<cgroup_parent>/<name>`.
    pub cgroup_parent: String,
}

/// A running node, as the lab's state file records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KubeNode {
    /// Its name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its lab addresses.
    pub ips: Vec<String>,
    /// Its files.
    pub dir: PathBuf,
    /// The process holding its mount namespace.
    pub anchor_pid: i32,
    /// containerd.
    pub containerd_pid: i32,
    /// kubelet.
    pub kubelet_pid: i32,
    /// kube-proxy.
    pub proxy_pid: i32,
    /// Its cgroup, relative to each hierarchy's root.
    pub cgroup: String,
    /// kube-proxy's mode.
    pub proxy_mode: ProxyMode,
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup (v1 controllers, the named
/// systemd one, and the unified v2 one of a hybrid host).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.is_symlink())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    out.sort();
    out
}

/// Whether the host runs cgroup v1 (or hybrid): kubelet 1.36 needs `failCgroupV1: false`
/// there.
pub fn cgroup_v1() -> bool {
    !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Creates `rel` in every hierarchy (cpuset: with the parent's cpus and mems, or it
/// takes no tasks).
fn make_cgroup(rel: &str) -> Result<(), LabError> {
    for h in cgroup_hierarchies() {
        let mut path = h.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let parent = path.clone();
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .map_err(LabError::io("creating cgroup", path.clone()))?;
            }
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let mine = path.join(f);
                if mine.exists()
                    && std::fs::read_to_string(&mine).is_ok_and(|v| v.trim().is_empty())
                {
                    let theirs = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                    std::fs::write(&mine, theirs.trim())
                        .map_err(LabError::io("writing", mine.clone()))?;
                }
            }
        }
    }
    Ok(())
}

/// Moves `pid` into cgroup `rel` of every hierarchy.
fn enter_cgroup(rel: &str, pid: i32) -> Result<(), LabError> {
    for h in cgroup_hierarchies() {
        let procs = h.join(rel).join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(LabError::io("writing", procs.clone()))?;
    }
    Ok(())
}

/// Every process in cgroup `rel` or below, in any hierarchy.
pub fn cgroup_pids(rel: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for h in cgroup_hierarchies() {
        collect_pids(&h.join(rel), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// Kills every process in cgroup `rel` (until none is left) and removes the cgroups,
/// deepest first, in every hierarchy.
pub fn destroy_cgroup(rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = cgroup_pids(rel);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // Every process in the node's cgroup is the node's: it was placed there by
            // the lab or descends from a process that was.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in cgroup_hierarchies() {
        remove_cgroup_tree(&h.join(rel));
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // A cgroup's control files go with it; only the (empty) directory is removed.
    let _ = std::fs::remove_dir(dir);
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(LabError::io("creating", dir.to_path_buf()))?;
    }
    std::fs::write(path, text).map_err(LabError::io("writing", path.to_path_buf()))
}

/// Runs `args` inside the node's namespaces (mount and network, through its anchor).
pub fn node_exec(anchor: i32, args: &[&str]) -> Result<String, LabError> {
    let t = anchor.to_string();
    let mut full = vec!["nsenter", "-t", &t, "-m", "-u", "-n", "--"];
    full.extend(args);
    run_ok(&full)
}

/// The host directories a node mounts over; the lab creates those missing on the host
/// (and removes them again when it is done).
pub const MOUNT_POINTS: [&str; 7] = [
    "/var/lib",
    "/var/log",
    "/opt",
    "/etc/cni",
    "/run/containerd",
    "/run/podnet",
    "/run/netns",
];

/// Starts a node: mount namespace and cgroup, certificates and configuration, containerd
/// (with the images imported), kubelet and kube-proxy.
pub fn start(spec: &NodeSpec, env: &NodeEnv) -> Result<KubeNode, LabError> {
    let dir = env.dir.join(&spec.name);
    for d in ["var-lib", "var-log", "opt/cni/bin", "etc-cni/net.d", "pki"] {
        std::fs::create_dir_all(dir.join(d)).map_err(LabError::io("creating", dir.join(d)))?;
    }
    let cgroup = format!("{}/{}", env.cgroup_parent, spec.name);
    make_cgroup(&cgroup)?;
    let mut node = KubeNode {
        name: spec.name.clone(),
        netns: spec.netns.clone(),
        ips: spec.ips.iter().map(ToString::to_string).collect(),
        dir: dir.clone(),
        anchor_pid: 0,
        containerd_pid: 0,
        kubelet_pid: 0,
        proxy_pid: 0,
        cgroup: cgroup.clone(),
        proxy_mode: spec.proxy_mode,
    };
    // The anchor: `sleep` in a new mount namespace (propagation slave) and a UTS
    // namespace whose hostname is the node's name (hostNetwork pods see it, as on a real
    // node), inside the node's network namespace; nsenter, unshare and sh exec, so its
    // PID is sleep's.
    let anchor = crate::spawn_logged(
        Path::new("/usr/bin/nsenter"),
        &[
            format!("--net=/var/run/netns/{}", spec.netns),
            "/usr/bin/unshare".into(),
            "--mount".into(),
            "--uts".into(),
            "--propagation".into(),
            "slave".into(),
            "/bin/sh".into(),
            "-c".into(),
            "/bin/busybox hostname \"$1\" && exec /usr/bin/sleep infinity".into(),
            "anchor".into(),
            spec.name.clone(),
        ],
        &[],
        &dir.join("anchor.log"),
        None,
        true,
    )?;
    node.anchor_pid = anchor.id() as i32;
    enter_cgroup(&cgroup, node.anchor_pid)?;
    // Wait until the anchor is in its own mount namespace.
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{}/ns/mnt", node.anchor_pid)).ok() == own {
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                component: "node anchor",
                reason: format!("{} did not enter a mount namespace of its own", spec.name),
                log: dir.join("anchor.log"),
                tail: crate::controlplane::log_tail(&dir.join("anchor.log"), 10),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = node.anchor_pid;
    let d = |p: &str| dir.join(p).display().to_string();
    for run in ["/run/containerd", "/run/podnet", "/run/netns"] {
        node_exec(
            a,
            &["mount", "-t", "tmpfs", "-o", "mode=0755", "node-run", run],
        )?;
    }
    for (src, dst) in [
        (d("var-lib"), "/var/lib"),
        (d("var-log"), "/var/log"),
        (d("opt"), "/opt"),
        (d("etc-cni"), "/etc/cni"),
    ] {
        node_exec(a, &["mount", "--bind", &src, dst])?;
    }
    configure(spec, env, &node)?;
    // containerd, with the shim and runc on its PATH.
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", env.tools_bin.display());
    node.containerd_pid = spawn_in(
        &node,
        &env.tools_bin.join("containerd"),
        &["--config".into(), d("containerd.toml")],
        &[("PATH", path.clone())],
        "containerd.log",
    )?;
    wait_socket(&node, "/run/containerd/containerd.sock", "containerd.log")?;
    let ctr = env.tools_bin.join("ctr").display().to_string();
    for archive in &env.images {
        node_exec(
            a,
            &[
                &ctr,
                "-n",
                "k8s.io",
                "images",
                "import",
                "--no-unpack=false",
                &archive.display().to_string(),
            ],
        )?;
    }
    node.kubelet_pid = spawn_in(
        &node,
        &env.tools_bin.join("kubelet"),
        &[
            format!("--config={}", d("kubelet.yaml")),
            format!("--kubeconfig={}", d("kubelet.kubeconfig")),
            format!("--hostname-override={}", spec.name),
            format!(
                "--node-ip={}",
                spec.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!(
                "--node-labels={}",
                spec.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "--cert-dir=/var/lib/kubelet/pki".into(),
            "--v=1".into(),
        ],
        &[("PATH", path.clone())],
        "kubelet.log",
    )?;
    node.proxy_pid = spawn_in(
        &node,
        &env.tools_bin.join("kube-proxy"),
        &[format!("--config={}", d("kube-proxy.yaml")), "--v=1".into()],
        &[("PATH", path)],
        "kube-proxy.log",
    )?;
    Ok(node)
}

/// Starts `program` inside the node's namespaces and cgroup; returns its PID.
fn spawn_in(
    node: &KubeNode,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &str,
) -> Result<i32, LabError> {
    let mut full = vec![
        "-t".to_string(),
        node.anchor_pid.to_string(),
        "-m".into(),
        "-u".into(),
        "-n".into(),
        "--".into(),
        program.display().to_string(),
    ];
    full.extend(args.iter().cloned());
    let child = crate::spawn_logged(
        Path::new("/usr/bin/nsenter"),
        &full,
        env,
        &node.dir.join(log),
        None,
        true,
    )?;
    let pid = child.id() as i32;
    enter_cgroup(&node.cgroup, pid)?;
    Ok(pid)
}

fn wait_socket(node: &KubeNode, path: &str, log: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if node_exec(node.anchor_pid, &["test", "-S", path]).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                component: "containerd",
                reason: format!("{}: no socket {path} after 30 s", node.name),
                log: node.dir.join(log),
                tail: crate::controlplane::log_tail(&node.dir.join(log), 30),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kubeconfig(env: &NodeEnv, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: node\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: node\ncurrent-context: lab\n",
        server = env.server,
        ca = env.ca_cert.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// Writes the node's certificates, kubeconfigs and the containerd, kubelet and
/// kube-proxy configurations.
fn configure(spec: &NodeSpec, env: &NodeEnv, node: &KubeNode) -> Result<(), LabError> {
    let dir = &node.dir;
    let pki = dir.join("pki");
    let kubelet_client = issue(
        &env.openssl,
        &env.ca_cert,
        &env.ca_key,
        &pki,
        "kubelet-client",
        &format!("/O=system:nodes/CN=system:node:{}", spec.name),
        Usage::Client,
    )?;
    let kubelet_serving = issue(
        &env.openssl,
        &env.ca_cert,
        &env.ca_key,
        &pki,
        "kubelet-serving",
        &format!("/CN={}", spec.name),
        Usage::Server(&spec.ips),
    )?;
    let proxy_client = issue(
        &env.openssl,
        &env.ca_cert,
        &env.ca_key,
        &pki,
        "kube-proxy",
        "/CN=system:kube-proxy",
        Usage::Client,
    )?;
    write(
        &dir.join("kubelet.kubeconfig"),
        &kubeconfig(env, &kubelet_client.cert, &kubelet_client.key),
    )?;
    write(
        &dir.join("kube-proxy.kubeconfig"),
        &kubeconfig(env, &proxy_client.cert, &proxy_client.key),
    )?;
    write(&dir.join("resolv.conf"), "")?;
    // containerd 2.x, config version 3.
    write(
        &dir.join("containerd.toml"),
        &format!(
            r#"version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here lacks CAP_SYS_RESOURCE: runc may not lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    # podnet-cni is installed into /opt/cni/bin by the chart; containerd adds the
    # reference loopback plugin to every network (Debian's, in /usr/lib/cni).
    bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
    conf_dir = "/etc/cni/net.d"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
"#,
            pause = env.pause_image
        ),
    )?;
    let ip4 = spec.ips.iter().find(|ip| ip.is_ipv4()).copied();
    write(
        &dir.join("kubelet.yaml"),
        &format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: {fail_v1}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
cgroupsPerQOS: true
protectKernelDefaults: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: {addr}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS:
- {dns}
resolvConf: {resolv}
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
evictionPressureTransitionPeriod: 10s
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
nodeStatusReportFrequency: 10s
"#,
            fail_v1 = !cgroup_v1(),
            cgroup = node.cgroup,
            addr = ip4
                .map(|i| i.to_string())
                .unwrap_or_else(|| "0.0.0.0".into()),
            cert = kubelet_serving.cert.display(),
            key = kubelet_serving.key.display(),
            ca = env.ca_cert.display(),
            resolv = dir.join("resolv.conf").display(),
            dns = crate::controlplane::CLUSTER_DNS_IP,
        ),
    )?;
    write(
        &dir.join("kube-proxy.yaml"),
        &format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: {mode}
hostnameOverride: {name}
bindAddress: {addr}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: {kc}
conntrack:
  # The node is a network namespace: leave the host-wide conntrack settings alone.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            mode = spec.proxy_mode.as_str(),
            name = spec.name,
            addr = ip4
                .map(|i| i.to_string())
                .unwrap_or_else(|| "0.0.0.0".into()),
            kc = dir.join("kube-proxy.kubeconfig").display(),
        ),
    )?;
    Ok(())
}

/// Stops a node: every process in its cgroup (containers, shims, containerd, kubelet,
/// kube-proxy, the anchor), then its cgroups. Its mount namespace, and every mount in
/// it, goes with the last of its processes.
pub fn stop(node: &KubeNode) {
    destroy_cgroup(&node.cgroup);
}
