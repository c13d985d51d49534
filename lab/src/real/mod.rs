//! The real-node lab: a Kubernetes cluster on one machine whose nodes are real — each a
//! network namespace on the lab switch with its own mount namespace, cgroup, containerd,
//! kubelet and kube-proxy ([`crate::kube_node`]) — with podnet installed by
//! `helm install` and running as pods, and workloads created through the API.
//!
//! Topology (nothing routes out of the lab; the host's root namespace gets a route to
//! the lab's node network only, never to a pod CIDR):
//!
//! ```text
//!  host root ns ── <tag>-h (198.18.64.2: controller-manager, scheduler, kubectl, tests)
//!                        │
//!  switch ns (br0) ─┬─ cp     (198.18.64.1: etcd, kube-apiserver; routes to pod CIDRs)
//!                   ├─ node-1 (198.18.64.11) ─┬─ pods (10.244.x.0/24, fd00:10:244:x::/64)
//!                   ├─ node-2 (198.18.64.12)  ...
//!                   └─ ext    (198.18.64.100: an HTTP echo service, the "internet")
//! ```
//!
//! The API server reaches pods (its pod and Service proxy, `kubectl logs` needs only the
//! kubelet) the way it does on a control-plane node that runs podnet: through a route
//! per node's pod CIDR via that node. The lab's control plane is not a Node, so the lab
//! keeps those routes itself ([`route_control_plane`], from the NodeRoutes' status).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::kube_node::{self, KubeNode, NodeEnv, NodeSpec, ProxyMode};
use crate::{ControlPlane, ControlPlaneOptions, DetachedControlPlane, LabError, Tools, run_ok};

mod network;
mod probes;
mod usage;
mod workloads;

use network::{attach, claim_network};
use workloads::{deploy_workloads, wait_workloads};

pub use network::route_control_plane;
pub use probes::{ask_from, fetch_from, matrix};
pub use usage::{
    Usage, bench_lab, container_cgroup, container_ids, container_netns, container_usage,
    podnet_usage,
};
pub use workloads::{PodInfo, pods};

/// The lab network's IPv4 prefix (a /24 of 198.18.0.0/15, apart from the netns lab's).
pub const NET4: &str = "198.18.64";

/// The lab network's IPv6 prefix (a /64 of 2001:db8::/32).
pub const NET6: &str = "2001:db8:18:64";

/// The pod CIDRs of the lab's PodNetwork.
pub const POD_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:10:244::/56"];

/// The control-plane host's addresses (etcd and kube-apiserver in a namespace of their
/// own on the lab switch).
pub const CONTROL_PLANE_IPS: [&str; 2] = ["198.18.64.1", "2001:db8:18:64::1"];

/// The host root namespace's address on the lab switch (kubectl, helm and the tests
/// reach the API server from there; it has no route beyond the lab's /24).
const HOST_IP: &str = "198.18.64.2";

/// Port of the HTTP echo service in the workload pods and on the external host.
pub const ECHO_PORT: u16 = 8080;

/// The cgroup under which the lab's nodes live (one per lab tag).
/// The cgroup every real-node lab lives under (`<hierarchy>/podnet-lab/<tag>/<node>`).
pub const CGROUP_ROOT: &str = "podnet-lab";

/// The e2e suite's agnhost image as the lab imports it on every node (OpenBSD netcat,
/// dash, bash; scripts/build-lab-images.sh).
pub const AGNHOST_IMAGE: &str = "podnet.test/e2e-test-images/agnhost:2.63.0";

/// Host sysctls kubelet rewrites when `protectKernelDefaults` is off: recorded at `up`,
/// restored at `down`.
const KUBELET_SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// The cluster DNS (CoreDNS as a Deployment behind the `kube-dns` Service).
const COREDNS: &str = include_str!("../../manifests/coredns.yaml");

/// Everything `down` needs, saved as JSON in the state directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RealLab {
    /// Prefix of every namespace, link and cgroup name.
    pub tag: String,
    /// The state directory.
    pub dir: PathBuf,
    /// The control plane.
    pub control_plane: DetachedControlPlane,
    /// kube-controller-manager's PID.
    pub controller_manager_pid: i32,
    /// kube-scheduler's PID.
    pub scheduler_pid: i32,
    /// The external host's echo service PID.
    pub echo_pid: i32,
    /// The host end of the link to the lab switch.
    pub host_link: String,
    /// Every namespace the lab made.
    pub namespaces: Vec<String>,
    /// The nodes.
    pub nodes: Vec<KubeNode>,
    /// Host directories created as mount points (removed again at `down`).
    pub created_dirs: Vec<PathBuf>,
    /// Host sysctls as they were before the first kubelet started.
    pub sysctls: BTreeMap<String, String>,
    /// The external host's addresses.
    pub external_ips: Vec<String>,
    /// The directory of the tool binaries.
    pub tools_bin: PathBuf,
    /// The images every node imports.
    #[serde(default)]
    pub images: Vec<PathBuf>,
}

/// Writes the lab's state file (after a change such as a restarted API server, so that
/// `down` finds the processes that run now).
pub fn save(lab: &RealLab) -> Result<(), LabError> {
    let path = lab.dir.join("state.json");
    let text = serde_json::to_string_pretty(lab).map_err(|e| LabError::Command {
        command: "saving the lab state".into(),
        stderr: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(LabError::io("writing", path))
}

/// Reads the state a running lab saved in `dir`.
pub fn load(dir: &Path) -> Result<RealLab, LabError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(LabError::io("reading", path.clone()))?;
    serde_json::from_str(&text).map_err(|e| LabError::Command {
        command: format!("parsing {}", path.display()),
        stderr: e.to_string(),
    })
}

/// Where every real-node lab registers its state directory (`<REGISTRY>/<tag>`), so a
/// later lab finds one that was left behind (its owner killed, the machine snapshotted
/// mid-run) and removes it instead of sharing the lab network with it.
const REGISTRY: &str = "/run/podnet-labs";

fn register(tag: &str, state_dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(REGISTRY).map_err(LabError::io("creating", REGISTRY))?;
    let entry = Path::new(REGISTRY).join(tag);
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    std::fs::write(&entry, dir.as_os_str().as_encoded_bytes())
        .map_err(LabError::io("writing", entry))
}

fn unregister(tag: &str) {
    let _ = std::fs::remove_file(Path::new(REGISTRY).join(tag));
    let _ = std::fs::remove_dir(REGISTRY);
}

/// Whether a lab's control plane still runs (its kube-apiserver is alive as our binary).
fn alive(lab: &RealLab) -> bool {
    crate::controlplane::owns_pid(
        lab.control_plane.apiserver_pid,
        &lab.control_plane.apiserver_bin,
    )
}

/// The node tools: kubelet, kube-proxy, containerd, ctr and the runc shim from the tool
/// cache, runc from Debian.
fn node_tools(bin: &Path) -> Result<(), LabError> {
    for name in [
        "kubelet",
        "kube-proxy",
        "kube-controller-manager",
        "kube-scheduler",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
    ] {
        if !bin.join(name).is_file() {
            return Err(LabError::MissingTool {
                name: "a node binary",
                path: bin.join(name),
                hint: "run scripts/build-tools.sh (the README test command does)",
            });
        }
    }
    if !Path::new("/usr/sbin/runc").is_file() {
        return Err(LabError::MissingTool {
            name: "runc",
            path: "/usr/sbin/runc".into(),
            hint: "apt-get install runc",
        });
    }
    Ok(())
}

/// The image archives every node imports (podnet's and the lab's), from `dir`, made
/// absolute; an error names the first one missing and the scripts that build them.
pub fn image_archives(dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    [
        "podnet-operator.tar",
        "podnet-daemon.tar",
        "lab-pause.tar",
        "lab-busybox.tar",
        "lab-coredns.tar",
        "lab-e2e.tar",
    ]
    .iter()
    .map(|name| {
        let p = dir.join(name);
        std::fs::canonicalize(&p).map_err(|_| LabError::MissingTool {
            name: "an image archive",
            path: p,
            hint: "run scripts/build-images.sh and scripts/build-lab-images.sh (scripts/lab and the test command do)",
        })
    })
    .collect()
}

/// Options of a real-node lab.
#[derive(Clone, Debug)]
pub struct RealOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// kube-proxy's mode per node (cycled).
    pub proxy_modes: Vec<ProxyMode>,
    /// OCI archives of podnet's images and the lab's (pause, busybox).
    pub images: Vec<PathBuf>,
    /// podnet's image tag.
    pub podnet_version: String,
}

/// kubectl as the lab's admin.
pub fn kubectl(lab: &RealLab, args: &[&str], input: &str) -> Result<String, LabError> {
    crate::chart::kubectl(&lab.control_plane.kubeconfig, args, input)
}

/// Brings up a real-node lab; on failure leaves a state file `down` can clean up with.
pub async fn up(
    tag: &str,
    opts: &RealOptions,
    state_dir: &Path,
    progress: &mut dyn FnMut(&str, Duration),
) -> Result<RealLab, LabError> {
    let tools = Tools::locate()?;
    let tools_bin = tools
        .kubectl
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    node_tools(&tools_bin)?;
    claim_network(progress)?;
    std::fs::create_dir_all(state_dir).map_err(LabError::io("creating", state_dir))?;
    register(tag, state_dir)?;
    let step = Instant::now();
    // The switch and the host's link to it: the control plane listens there.
    let sw = format!("{tag}-sw");
    let host_link = format!("{tag}-h");
    run_ok(&["ip", "netns", "add", &sw])?;
    let mut lab = RealLab {
        tag: tag.to_string(),
        dir: state_dir.to_path_buf(),
        control_plane: DetachedControlPlane::default(),
        controller_manager_pid: 0,
        scheduler_pid: 0,
        echo_pid: 0,
        host_link: host_link.clone(),
        namespaces: vec![sw.clone()],
        nodes: Vec::new(),
        created_dirs: Vec::new(),
        sysctls: BTreeMap::new(),
        external_ips: vec![format!("{NET4}.100"), format!("{NET6}::100")],
        tools_bin: tools_bin.clone(),
        images: opts.images.clone(),
    };
    save(&lab)?;
    let result = build(&mut lab, opts, progress, step).await;
    save(&lab)?;
    result.map(|()| lab)
}

async fn build(
    lab: &mut RealLab,
    opts: &RealOptions,
    progress: &mut dyn FnMut(&str, Duration),
    step: Instant,
) -> Result<(), LabError> {
    let sw = format!("{}-sw", lab.tag);
    run_ok(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    run_ok(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
    run_ok(&[
        "ip",
        "link",
        "add",
        &lab.host_link,
        "type",
        "veth",
        "peer",
        "name",
        "host",
        "netns",
        &sw,
    ])?;
    run_ok(&[
        "ip", "-n", &sw, "link", "set", "host", "master", "br0", "up",
    ])?;
    run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_IP}/24"),
        "dev",
        &lab.host_link,
    ])?;
    run_ok(&["ip", "link", "set", &lab.host_link, "up"])?;
    // The control-plane host: etcd and kube-apiserver run there, with routes to the
    // nodes' pod CIDRs (`route_control_plane`) so that the API server reaches pods
    // (its pod and service proxy, as `kubectl port-forward`-less tools and the e2e
    // suite use it) as on a control-plane node running podnet.
    let cp_ns = format!("{}-cp", lab.tag);
    attach(
        lab,
        &cp_ns,
        "cp",
        CONTROL_PLANE_IPS[0],
        CONTROL_PLANE_IPS[1],
    )?;
    let ext = format!("{}-ext", lab.tag);
    attach(
        lab,
        &ext,
        "ext",
        &lab.external_ips[0].clone(),
        &lab.external_ips[1].clone(),
    )?;
    let echo_root = lab.dir.join("echo");
    write_echo_root(&echo_root)?;
    lab.echo_pid = crate::spawn_logged(
        Path::new("/usr/bin/nsenter"),
        &[
            format!("--net=/var/run/netns/{ext}"),
            "/bin/busybox".into(),
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            format!("[::]:{ECHO_PORT}"),
            "-h".into(),
            echo_root.display().to_string(),
        ],
        &[],
        &lab.dir.join("echo.log"),
        None,
        true,
    )?
    .id() as i32;
    progress(
        "lab switch, the host's link to it, the external host",
        step.elapsed(),
    );

    let step = Instant::now();
    let cp = ControlPlane::start(ControlPlaneOptions {
        bind: CONTROL_PLANE_IPS[0]
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1])),
        detachable: true,
        real_nodes: true,
        netns: Some(cp_ns),
    })
    .await?;
    lab.control_plane = cp.detach();
    save(lab)?;
    let cp_dir = lab.control_plane.dir.clone();
    let admin = lab.control_plane.kubeconfig.clone();
    let free = crate::controlplane::free_ports(2, IpAddr::from([127, 0, 0, 1]))?;
    lab.controller_manager_pid = crate::spawn_logged(
        &tools_bin_path(lab, "kube-controller-manager"),
        &[
            format!("--kubeconfig={}", admin.display()),
            format!("--authentication-kubeconfig={}", admin.display()),
            format!("--authorization-kubeconfig={}", admin.display()),
            format!(
                "--service-account-private-key-file={}",
                cp_dir.join("sa.key").display()
            ),
            format!("--root-ca-file={}", cp_dir.join("ca.crt").display()),
            "--use-service-account-credentials=true".into(),
            // podnet allocates pod CIDRs: no node IPAM.
            "--allocate-node-cidrs=false".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free[0]),
            "--node-monitor-grace-period=20s".into(),
        ],
        &[],
        &lab.dir.join("kube-controller-manager.log"),
        None,
        true,
    )?
    .id() as i32;
    lab.scheduler_pid = crate::spawn_logged(
        &tools_bin_path(lab, "kube-scheduler"),
        &[
            format!("--kubeconfig={}", admin.display()),
            format!("--authentication-kubeconfig={}", admin.display()),
            format!("--authorization-kubeconfig={}", admin.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free[1]),
        ],
        &[],
        &lab.dir.join("kube-scheduler.log"),
        None,
        true,
    )?
    .id() as i32;
    save(lab)?;
    progress(
        "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler",
        step.elapsed(),
    );

    // podnet, as a cluster admin installs it.
    let step = Instant::now();
    let (host, port) = lab
        .control_plane
        .server
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap_or_default();
    crate::chart::install(
        &admin,
        &[
            &format!("podNetwork.cidrs={{{}}}", POD_CIDRS.join(",")),
            &format!("kubernetesServicePort={port}"),
            "operator.replicas=2",
        ],
        &[
            "image.operator.repository=localhost/podnet-operator",
            "image.daemon.repository=localhost/podnet-daemon",
            &format!("image.operator.tag={}", opts.podnet_version),
            &format!("image.daemon.tag={}", opts.podnet_version),
            "image.operator.pullPolicy=Never",
            "image.daemon.pullPolicy=Never",
            &format!("kubernetesServiceHost={host}"),
        ],
    )?;
    progress("podnet installed with helm", step.elapsed());

    // The nodes.
    let step = Instant::now();
    if kube_node::cgroup_v1() {
        progress(
            "this host runs cgroup v1 (hybrid): kubelet 1.36 supports it only with failCgroupV1: false, which the lab sets (v1 support is deprecated, not removed)",
            Duration::ZERO,
        );
    }
    for f in KUBELET_SYSCTLS {
        let path = format!("/proc/sys/{f}");
        if let Ok(v) = std::fs::read_to_string(&path) {
            lab.sysctls.insert(path, v.trim().to_string());
        }
    }
    for m in kube_node::MOUNT_POINTS {
        if !Path::new(m).exists() {
            std::fs::create_dir_all(m).map_err(LabError::io("creating", PathBuf::from(m)))?;
            lab.created_dirs.push(m.into());
        }
    }
    save(lab)?;
    for i in 1..=opts.nodes {
        let mode = opts
            .proxy_modes
            .get((i - 1) % opts.proxy_modes.len().max(1))
            .copied()
            .unwrap_or(ProxyMode::Nftables);
        add_node(lab, i, mode)?;
    }
    progress(
        &format!(
            "{} nodes: namespace, containerd (images imported), kubelet, kube-proxy",
            opts.nodes
        ),
        step.elapsed(),
    );
    let step = Instant::now();
    wait_nodes_ready(lab, Duration::from_secs(180)).await?;
    progress(
        "every node Ready (podnet's daemon wrote its CNI config)",
        step.elapsed(),
    );
    let step = Instant::now();
    kubectl(lab, &["apply", "-f", "-"], COREDNS)?;
    deploy_workloads(lab)?;
    wait_workloads(lab, Duration::from_secs(180)).await?;
    kubectl(
        lab,
        &[
            "rollout",
            "status",
            "-n",
            "kube-system",
            "deployment/coredns",
            "--timeout=120s",
        ],
        "",
    )?;
    progress(
        "workloads: 2 pods and a hostNetwork pod per node, an echo Service; CoreDNS",
        step.elapsed(),
    );
    Ok(())
}

fn tools_bin_path(lab: &RealLab, name: &str) -> PathBuf {
    lab.tools_bin.join(name)
}

fn write_echo_root(root: &Path) -> Result<(), LabError> {
    let cgi = root.join("cgi-bin");
    std::fs::create_dir_all(&cgi).map_err(LabError::io("creating", cgi.clone()))?;
    let script = cgi.join("ip");
    std::fs::write(
        &script,
        "#!/bin/busybox sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n",
    )
    .map_err(LabError::io("writing", script.clone()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .map_err(LabError::io("chmod", script))
}

/// What the lab's nodes are started with.
fn node_env(lab: &RealLab) -> Result<NodeEnv, LabError> {
    let tools = Tools::locate()?;
    let cp = &lab.control_plane;
    Ok(NodeEnv {
        dir: lab.dir.clone(),
        tools_bin: lab.tools_bin.clone(),
        openssl: tools.openssl,
        ca_cert: cp.dir.join("ca.crt"),
        ca_key: cp.dir.join("ca.key"),
        server: cp.server.clone(),
        images: lab.images.clone(),
        pause_image: "localhost/podnet-lab/pause:1".into(),
        cgroup_parent: format!("{CGROUP_ROOT}/{}", lab.tag),
    })
}

/// Adds node `node-<i>` (namespace, addresses, a Kubernetes node) and saves the state.
pub fn add_node(lab: &mut RealLab, i: usize, mode: ProxyMode) -> Result<KubeNode, LabError> {
    let env = node_env(lab)?;
    let name = format!("node-{i}");
    let netns = format!("{}-{name}", lab.tag);
    let (v4, v6) = (
        format!("{NET4}.{}", 10 + i),
        format!("{NET6}::{:x}", 0x10 + i),
    );
    attach(lab, &netns, &format!("n{i}"), &v4, &v6)?;
    // A node has a default route; here it leads to the external host, which routes
    // nowhere: host-network clients reach Service addresses (kube-proxy rewrites them
    // after the route lookup), and nothing leaves the lab.
    run_ok(&[
        "ip",
        "-n",
        &netns,
        "route",
        "add",
        "default",
        "via",
        &lab.external_ips[0],
    ])?;
    run_ok(&[
        "ip",
        "-n",
        &netns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &lab.external_ips[1],
    ])?;
    let spec = NodeSpec {
        name,
        netns,
        ips: vec![
            v4.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            v6.parse().unwrap_or(IpAddr::from([0u16; 8])),
        ],
        labels: vec![("podnet.dev/lab".into(), "true".into())],
        proxy_mode: mode,
    };
    let node = kube_node::start(&spec, &env)?;
    lab.nodes.push(node.clone());
    save(lab)?;
    Ok(node)
}

/// Waits until every node is `Ready`.
pub async fn wait_nodes_ready(lab: &RealLab, timeout: Duration) -> Result<(), LabError> {
    let want = lab.nodes.len();
    let deadline = Instant::now() + timeout;
    loop {
        let out = kubectl(
            lab,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
            "",
        )
        .unwrap_or_default();
        let ready = out.lines().filter(|l| l.ends_with(" True")).count();
        if ready == want {
            return route_control_plane(lab).await;
        }
        if Instant::now() > deadline {
            let mut tail = String::new();
            for n in &lab.nodes {
                tail.push_str(&format!(
                    "--- {} kubelet\n{}\n",
                    n.name,
                    crate::controlplane::log_tail(&n.dir.join("kubelet.log"), 15)
                ));
            }
            return Err(LabError::NotReady {
                component: "kubelet",
                reason: format!("{ready} of {want} nodes Ready after {timeout:?}: {out}"),
                log: lab.dir.clone(),
                tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops every process, removes every namespace, link, cgroup, mount point and file the
/// lab created, and restores the host sysctls kubelet changed.
pub fn down(lab: &RealLab) {
    for n in &lab.nodes {
        kube_node::stop(n);
    }
    let _ = std::fs::remove_dir(
        kube_node::cgroup_hierarchies()
            .first()
            .map(|h| h.join(CGROUP_ROOT).join(&lab.tag))
            .unwrap_or_default(),
    );
    for h in kube_node::cgroup_hierarchies() {
        let _ = std::fs::remove_dir(h.join(CGROUP_ROOT).join(&lab.tag));
        let _ = std::fs::remove_dir(h.join(CGROUP_ROOT));
    }
    let tools = &lab.tools_bin;
    crate::controlplane::stop_pid(
        lab.controller_manager_pid,
        &tools.join("kube-controller-manager"),
    );
    crate::controlplane::stop_pid(lab.scheduler_pid, &tools.join("kube-scheduler"));
    crate::controlplane::stop_pid(lab.echo_pid, Path::new("/bin/busybox"));
    lab.control_plane.stop();
    let _ = run_ok(&["ip", "link", "del", &lab.host_link]);
    for ns in lab.namespaces.iter().rev() {
        let _ = run_ok(&["ip", "netns", "del", ns]);
    }
    for (path, value) in &lab.sysctls {
        let _ = std::fs::write(path, value);
    }
    for d in lab.created_dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
    unregister(&lab.tag);
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_cidrs_are_routed_through_the_node_address_of_their_family() {
        let st = |ips: &[&str], cidrs: &[&str]| podnet_crds::NodeRouteStatus {
            node_ips: ips.iter().map(|s| s.to_string()).collect(),
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let statuses = [
            st(
                &["198.18.64.11", "2001:db8:18:64::11"],
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
            ),
            // Not allocated yet, and a node without an IPv6 address.
            st(&["198.18.64.12"], &[]),
            st(&["198.18.64.13"], &["10.244.3.0/24", "fd00:10:244:3::/64"]),
        ];
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            super::network::pod_routes(statuses.iter()),
            vec![
                pair("10.244.1.0/24", "198.18.64.11"),
                pair("fd00:10:244:1::/64", "2001:db8:18:64::11"),
                pair("10.244.3.0/24", "198.18.64.13"),
            ]
        );
    }

    #[test]
    fn the_dns_service_has_the_kubelets_cluster_dns_address() {
        assert!(
            super::COREDNS.contains(&format!(
                "clusterIP: {}\n",
                crate::controlplane::CLUSTER_DNS_IP
            )),
            "lab/manifests/coredns.yaml and CLUSTER_DNS_IP disagree"
        );
    }
}
