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
const COREDNS: &str = include_str!("../manifests/coredns.yaml");

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

/// Makes sure the lab network is free on this host before a lab takes it. One real-node
/// lab runs at a time (its addresses are fixed); a registered lab whose control plane is
/// gone is removed (`down` from its state), a live one is an error naming it, and an
/// address or route of the lab network that no registered lab explains is an error
/// naming the link that holds it. Without this, a lab left behind keeps its route to
/// 198.18.64.0/24 on the host: the new lab's kubelets reach the API server, its replies
/// leave by the old link and every node stays unregistered.
fn claim_network(progress: &mut dyn FnMut(&str, Duration)) -> Result<(), LabError> {
    let mut candidates: Vec<(String, PathBuf)> = std::fs::read_dir(REGISTRY)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let tag = e.file_name().to_string_lossy().into_owned();
            let dir = std::fs::read_to_string(e.path()).ok()?;
            Some((tag, PathBuf::from(dir.trim())))
        })
        .collect();
    // The link that holds the lab network now, if any (`<tag>-h`): a lab from before
    // the registry keeps its state in /run/<tag>.
    let holder = lab_network_holder()?;
    if let Some(tag) = holder.as_deref().and_then(|l| l.strip_suffix("-h"))
        && !candidates.iter().any(|(t, _)| t == tag)
    {
        candidates.push((tag.to_string(), Path::new("/run").join(tag)));
    }
    for (tag, dir) in candidates {
        let started = Instant::now();
        match load(&dir) {
            Ok(old) if alive(&old) => {
                return Err(LabError::Command {
                    command: "claiming the lab network".into(),
                    stderr: format!(
                        "another real-node lab ({tag}, state in {}) is running and holds \
                         {NET4}.0/24; stop it first (podnet-lab down, or end the test run)",
                        dir.display()
                    ),
                });
            }
            Ok(old) => {
                down(&old);
                progress(
                    &format!("removed lab {tag} left behind (state in {})", dir.display()),
                    started.elapsed(),
                );
            }
            Err(_) => unregister(&tag),
        }
    }
    if let Some(link) = lab_network_holder()? {
        return Err(LabError::Command {
            command: "claiming the lab network".into(),
            stderr: format!(
                "{NET4}.0/24 is already routed on this host through {link}, which no \
                 podnet lab state explains; remove that address/route (or the link) first"
            ),
        });
    }
    Ok(())
}

/// The host link that has a route to the lab network, if any.
fn lab_network_holder() -> Result<Option<String>, LabError> {
    let out = run_ok(&[
        "ip",
        "-4",
        "-o",
        "route",
        "show",
        "match",
        &format!("{NET4}.1"),
    ])?;
    Ok(out.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.first().is_some_and(|d| *d == "default") {
            return None;
        }
        words
            .windows(2)
            .find(|w| w[0] == "dev")
            .map(|w| w[1].to_string())
    }))
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

/// Attaches namespace `name` to the switch through port `port` with the given addresses.
fn attach(lab: &mut RealLab, name: &str, port: &str, v4: &str, v6: &str) -> Result<(), LabError> {
    let sw = format!("{}-sw", lab.tag);
    run_ok(&["ip", "netns", "add", name])?;
    lab.namespaces.push(name.to_string());
    save(lab)?;
    run_ok(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    run_ok(&[
        "ip", "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    run_ok(&["ip", "-n", &sw, "link", "set", port, "master", "br0", "up"])?;
    run_ok(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
    run_ok(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{v4}/24"),
        "dev",
        "eth0",
    ])?;
    run_ok(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    Ok(())
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

/// Gives the control-plane host a route to every node's pod CIDRs via that node's
/// address of the same family (from the NodeRoutes' status), and removes routes into
/// the pod range that no NodeRoute explains any more.
pub async fn route_control_plane(lab: &RealLab) -> Result<(), LabError> {
    use kube::api::{Api, ListParams};
    let client = crate::client_from_kubeconfig(&lab.control_plane.kubeconfig).await?;
    let nrs = Api::<podnet_crds::NodeRoute>::all(client)
        .list(&ListParams::default())
        .await?;
    let want = pod_routes(nrs.items.iter().filter_map(|nr| nr.status.as_ref()));
    let ns = format!("{}-cp", lab.tag);
    for (cidr, via) in &want {
        run_ok(&["ip", "-n", &ns, "route", "replace", cidr, "via", via])?;
    }
    for range in POD_CIDRS {
        let family = if range.contains(':') { "-6" } else { "-4" };
        let have = run_ok(&[
            "ip", family, "-n", &ns, "-o", "route", "show", "root", range,
        ])?;
        for cidr in have.lines().filter_map(|l| l.split_whitespace().next()) {
            if !want.iter().any(|(c, _)| c == cidr) {
                run_ok(&["ip", "-n", &ns, "route", "del", cidr])?;
            }
        }
    }
    Ok(())
}

/// Each pod CIDR with the node address of its family it is routed through.
fn pod_routes<'a>(
    statuses: impl Iterator<Item = &'a podnet_crds::NodeRouteStatus>,
) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for st in statuses {
        for cidr in &st.pod_cidrs {
            let v6 = cidr.contains(':');
            if let Some(via) = st.node_ips.iter().find(|ip| ip.contains(':') == v6) {
                routes.push((cidr.clone(), via.clone()));
            }
        }
    }
    routes
}

/// The lab's workloads: two echo pods pinned to each node, a hostNetwork echo pod per
/// node, and an echo Deployment behind a ClusterIP Service.
fn deploy_workloads(lab: &RealLab) -> Result<(), LabError> {
    let echo = |name: &str, node: &str, host_network: bool, labels: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: lab
  labels: {{{labels}}}
spec:
  nodeName: {node}
  hostNetwork: {host_network}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/podnet-lab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/busybox", "httpd", "-f", "-p", "[::]:{ECHO_PORT}", "-h", "/www"]
---
"#
        )
    };
    let mut docs = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n---\n");
    for n in &lab.nodes {
        for p in 1..=2 {
            docs.push_str(&echo(
                &format!("{}-pod{p}", n.name),
                &n.name,
                false,
                "role: pod",
            ));
        }
        docs.push_str(&echo(
            &format!("{}-host", n.name),
            &n.name,
            true,
            "role: host",
        ));
    }
    docs.push_str(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: lab
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: localhost/podnet-lab/busybox:1
        imagePullPolicy: Never
        command: ["/bin/busybox", "httpd", "-f", "-p", "[::]:{ECHO_PORT}", "-h", "/www"]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: lab
spec:
  selector: {{app: echo}}
  ports:
  - port: 80
    targetPort: {ECHO_PORT}
"#,
        replicas = lab.nodes.len()
    ));
    kubectl(lab, &["apply", "-f", "-"], &docs).map(drop)
}

async fn wait_workloads(lab: &RealLab, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let want = lab.nodes.len() * 4;
    loop {
        let out = kubectl(
            lab,
            &[
                "get",
                "pods",
                "-n",
                "lab",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
            "",
        )
        .unwrap_or_default();
        let ready = out.lines().filter(|l| l.ends_with(" True")).count();
        if ready >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                component: "workload pods",
                reason: format!("{ready} of {want} ready after {timeout:?}:\n{out}"),
                log: lab.dir.clone(),
                tail: kubectl(
                    lab,
                    &["get", "events", "-n", "lab", "--sort-by=.lastTimestamp"],
                    "",
                )
                .unwrap_or_default(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A pod as the matrix needs it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Its name (namespace `lab`).
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its addresses (IPv4 first).
    pub ips: Vec<String>,
    /// Whether it uses the node's network.
    pub host_network: bool,
}

/// The lab's pods in namespace `lab`.
pub fn pods(lab: &RealLab) -> Result<Vec<PodInfo>, LabError> {
    let out = kubectl(lab, &["get", "pods", "-n", "lab", "-o", "json"], "")?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        command: "kubectl get pods -o json".into(),
        stderr: e.to_string(),
    })?;
    let mut out: Vec<PodInfo> = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| PodInfo {
                    name: p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    node: p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    ips: p["status"]["podIPs"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|i| i["ip"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    host_network: p["spec"]["hostNetwork"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

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
fn plain_address(seen: &str) -> String {
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

fn node_ip(lab: &RealLab, node: &str, family: usize) -> String {
    lab.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.ips.get(family).cloned())
        .unwrap_or_default()
}

fn service_ip(lab: &RealLab) -> Option<String> {
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

fn short(name: &str) -> String {
    name.replace("node-", "n")
        .replace("-pod", "p")
        .replace("-host", "h")
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

fn find_dir(root: &Path, name: &str, depth: usize) -> Option<PathBuf> {
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
            super::pod_routes(statuses.iter()),
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
