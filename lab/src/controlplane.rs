//! etcd + kube-apiserver on loopback, started and stopped as one unit.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::certs::{self, Pki};
use crate::runtime_dir::create_unique_dir;
use crate::{LabError, Tools};

/// How long etcd plus kube-apiserver may take to report ready.
/// The Service ranges of every lab cluster (IPv4 first: Services are IPv4 unless they
/// ask for IPv6 or both).
pub const SERVICE_CIDRS: [&str; 2] = ["198.19.240.0/20", "fd00:10:96::/112"];
/// The cluster DNS Service's address (the kubelets' `clusterDNS`; lab/manifests/coredns.yaml).
pub const CLUSTER_DNS_IP: &str = "198.19.240.10";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a component gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Attempts with fresh ports when one was taken between choosing and binding it.
const PORT_ATTEMPTS: usize = 3;

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// The address kube-apiserver binds and advertises (default 127.0.0.1).
    pub bind: IpAddr,
    /// Start the processes in their own process group so that they outlive the starter
    /// (the lab's `up`); tests leave this off.
    pub detachable: bool,
    /// Real kubelets will join: authorize them with the Node authorizer and the
    /// NodeRestriction admission plugin, and publish the `kubernetes` Service's
    /// endpoint (the bind address) for pods.
    pub real_nodes: bool,
    /// Run etcd and kube-apiserver in this network namespace (a name under /run/netns)
    /// rather than the caller's: the real-node lab's control-plane host, which can route
    /// to pods as a control-plane node does, where the host's root namespace must not.
    /// `bind` must be an address of that namespace; the ports are then fixed (the
    /// namespace is the lab's own): etcd 2379/2380, kube-apiserver 6443.
    pub netns: Option<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            detachable: false,
            real_nodes: false,
            netns: None,
        }
    }
}

/// The ports of a control plane in a namespace of its own: etcd client, etcd peer,
/// kube-apiserver.
const NETNS_PORTS: [u16; 3] = [2379, 2380, 6443];

/// `program args` as started inside `netns` (through nsenter, which execs it: the PID is
/// the program's) or as is.
fn in_netns(netns: Option<&str>, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    match netns {
        None => (program.to_path_buf(), args.to_vec()),
        Some(ns) => {
            let mut full = vec![
                format!("--net=/run/netns/{ns}"),
                "--".to_string(),
                program.display().to_string(),
            ];
            full.extend(args.iter().cloned());
            (PathBuf::from("/usr/bin/nsenter"), full)
        }
    }
}

/// A running etcd + kube-apiserver. Dropping it stops both (SIGTERM, then SIGKILL) and
/// removes its directory, also when a test panics.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    tools: Tools,
    opts: ControlPlaneOptions,
    pki: Pki,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    kubeconfig: PathBuf,
}

/// What a detached control plane leaves behind so that a later command can find it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DetachedControlPlane {
    /// The control plane's directory (kubeconfig, logs, PKI, etcd data).
    pub dir: PathBuf,
    /// The kubeconfig for the admin.
    pub kubeconfig: PathBuf,
    /// The API server URL.
    pub server: String,
    /// etcd's PID and binary.
    pub etcd_pid: i32,
    /// kube-apiserver's PID and binary.
    pub apiserver_pid: i32,
    /// Paths used to check a PID still belongs to our process before signalling it.
    pub etcd_bin: PathBuf,
    /// See `etcd_bin`.
    pub apiserver_bin: PathBuf,
    /// etcd's command line, to restart it.
    #[serde(default)]
    pub etcd_args: Vec<String>,
    /// kube-apiserver's command line, to restart it.
    #[serde(default)]
    pub apiserver_args: Vec<String>,
    /// The network namespace both run in (none: the host's).
    #[serde(default)]
    pub netns: Option<String>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers ok.
    pub async fn start(opts: ControlPlaneOptions) -> Result<Self, LabError> {
        let tools = Tools::locate()?;
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = create_unique_dir("podnet-cp")?;
            match Self::start_in(dir.clone(), tools.clone(), opts.clone()).await {
                Ok(cp) => return Ok(cp),
                Err((cp, err)) => {
                    let port_taken = matches!(&err, LabError::NotReady { tail, .. } if tail.contains("address already in use"));
                    drop(cp);
                    if !port_taken {
                        return Err(err);
                    }
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or(LabError::NotRoot("unreachable")))
    }

    async fn start_in(
        dir: PathBuf,
        tools: Tools,
        opts: ControlPlaneOptions,
    ) -> Result<Self, (Option<Self>, LabError)> {
        let fail = |e| (None, e);
        let mut server_ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if !server_ips.contains(&opts.bind) {
            server_ips.push(opts.bind);
        }
        let pki = certs::generate(&tools.openssl, &dir, &server_ips).map_err(fail)?;
        let ports = match opts.netns {
            Some(_) => NETNS_PORTS.to_vec(),
            None => free_ports(3, opts.bind).map_err(fail)?,
        };
        let mut cp = Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            tools,
            opts,
            pki,
            etcd_client_port: ports[0],
            etcd_peer_port: ports[1],
            apiserver_port: ports[2],
            etcd: None,
            apiserver: None,
        };
        match cp.boot().await {
            Ok(()) => Ok(cp),
            Err(e) => Err((Some(cp), e)),
        }
    }

    async fn boot(&mut self) -> Result<(), LabError> {
        self.write_kubeconfig()?;
        self.start_etcd()?;
        self.start_apiserver()?;
        self.wait_ready().await
    }

    /// The admin kubeconfig (client certificate of group system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The control plane's directory: logs, PKI, etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        match self.opts.bind {
            IpAddr::V4(a) => format!("https://{a}:{}", self.apiserver_port),
            IpAddr::V6(a) => format!("https://[{a}]:{}", self.apiserver_port),
        }
    }

    /// The tools this control plane was started with (kubectl, helm, ...).
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// A kube client authenticated as the admin.
    pub async fn client(&self) -> Result<kube::Client, LabError> {
        crate::client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Runs kubectl against this control plane as the admin and returns its output.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(&self.tools.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(LabError::io("running", self.tools.kubectl.clone()))
    }

    /// Runs kubectl as the admin with `input` on its standard input.
    pub fn kubectl_with_input<I, S>(&self, args: I, input: &str) -> Result<Output, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        crate::output_with_input(
            Command::new(&self.tools.kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            input,
        )
        .map_err(LabError::io("running", self.tools.kubectl.clone()))
    }

    /// Stops kube-apiserver (SIGTERM) and starts it again on the same port and data,
    /// waiting until it is ready: an API server restart as clients see it.
    pub async fn restart_apiserver(&mut self) -> Result<(), LabError> {
        stop_child(self.apiserver.take(), STOP_GRACE);
        self.start_apiserver()?;
        self.wait_ready().await
    }

    /// Stops etcd and starts it again on the same data, waiting until the API server is
    /// ready again.
    pub async fn restart_etcd(&mut self) -> Result<(), LabError> {
        stop_child(self.etcd.take(), STOP_GRACE);
        self.start_etcd()?;
        self.wait_ready().await
    }

    /// Hands the running processes over to whoever reads the returned record: dropping
    /// the record does nothing; [`DetachedControlPlane::stop`] stops them.
    pub fn detach(mut self) -> DetachedControlPlane {
        let pid = |c: &Option<Child>| c.as_ref().map_or(0, |c| c.id() as i32);
        let record = DetachedControlPlane {
            dir: self.dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
            server: self.server_url(),
            etcd_pid: pid(&self.etcd),
            apiserver_pid: pid(&self.apiserver),
            etcd_bin: self.tools.etcd.clone(),
            apiserver_bin: self.tools.kube_apiserver.clone(),
            etcd_args: self.etcd_args(),
            apiserver_args: self.apiserver_args(),
            netns: self.opts.netns.clone(),
        };
        // The children are not ours to stop any more.
        self.etcd = None;
        self.apiserver = None;
        self.dir = PathBuf::new();
        record
    }

    fn spawn(&self, program: &Path, args: &[String], log_name: &str) -> Result<Child, LabError> {
        let (program, args) = in_netns(self.opts.netns.as_deref(), program, args);
        crate::spawn_logged(
            &program,
            &args,
            &[],
            &self.dir.join(log_name),
            Some(&self.dir),
            self.opts.detachable,
        )
    }

    fn start_etcd(&mut self) -> Result<(), LabError> {
        let args = self.etcd_args();
        self.etcd = Some(self.spawn(&self.tools.etcd, &args, "etcd.log")?);
        Ok(())
    }

    fn etcd_args(&self) -> Vec<String> {
        let client = format!("http://127.0.0.1:{}", self.etcd_client_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        vec![
            "--name=podnet-lab".to_string(),
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=podnet-lab={peer}"),
            "--logger=zap".to_string(),
            "--log-level=warn".to_string(),
        ]
    }

    fn start_apiserver(&mut self) -> Result<(), LabError> {
        let args = self.apiserver_args();
        self.apiserver =
            Some(self.spawn(&self.tools.kube_apiserver, &args, "kube-apiserver.log")?);
        Ok(())
    }

    fn apiserver_args(&self) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_client_port),
            format!("--bind-address={}", self.opts.bind),
            format!("--advertise-address={}", self.opts.bind),
            format!("--secure-port={}", self.apiserver_port),
            format!("--cert-dir={}", self.dir.join("certs").display()),
            format!("--tls-cert-file={}", p(&self.pki.server_cert)),
            format!("--tls-private-key-file={}", p(&self.pki.server_key)),
            format!("--client-ca-file={}", p(&self.pki.ca_cert)),
            if self.opts.real_nodes {
                "--authorization-mode=Node,RBAC".to_string()
            } else {
                "--authorization-mode=RBAC".to_string()
            },
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", p(&self.pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&self.pki.sa_key)),
            // Dual-stack Services, as podnet is dual-stack. Only inside the lab's node
            // namespaces (kube-proxy's rules) does anything route to these ranges.
            format!("--service-cluster-ip-range={}", SERVICE_CIDRS.join(",")),
            "--profiling=false".to_string(),
        ];
        if self.opts.real_nodes {
            args.extend([
                "--enable-admission-plugins=NodeRestriction".to_string(),
                format!("--kubelet-client-certificate={}", p(&self.pki.admin_cert)),
                format!("--kubelet-client-key={}", p(&self.pki.admin_key)),
                "--kubelet-preferred-address-types=InternalIP".to_string(),
            ]);
        } else {
            // No kubelets or proxies exist to use an endpoint for the API server itself.
            args.push("--endpoint-reconciler-type=none".to_string());
        }
        args
    }

    fn write_kubeconfig(&self) -> Result<(), LabError> {
        let p = |path: &Path| path.display().to_string();
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: podnet-lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: podnet-lab-admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: podnet-lab\n  context:\n    cluster: podnet-lab\n    user: podnet-lab-admin\ncurrent-context: podnet-lab\n",
            server = self.server_url(),
            ca = p(&self.pki.ca_cert),
            cert = p(&self.pki.admin_cert),
            key = p(&self.pki.admin_key),
        );
        std::fs::write(&self.kubeconfig, yaml)
            .map_err(LabError::io("writing", self.kubeconfig.clone()))
    }

    async fn wait_ready(&mut self) -> Result<(), LabError> {
        let client = self.client().await?;
        let dir = self.dir.clone();
        let (etcd, apiserver) = (&mut self.etcd, &mut self.apiserver);
        wait_ready_with(&client, &dir, || {
            for (component, child, log) in [
                ("etcd", &mut *etcd, "etcd.log"),
                ("kube-apiserver", &mut *apiserver, "kube-apiserver.log"),
            ] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    return Some((component, format!("exited with {status}"), log));
                }
            }
            None
        })
        .await
    }
}

fn self_not_ready(dir: &Path, component: &'static str, reason: String, log: &str) -> LabError {
    let log = dir.join(log);
    LabError::NotReady {
        component,
        reason,
        tail: log_tail(&log, 25),
        log,
    }
}

/// The last `n` lines of a log file (empty when unreadable).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The directory goes away with them: a graceful shutdown would buy nothing.
        stop_child(self.apiserver.take(), Duration::ZERO);
        stop_child(self.etcd.take(), Duration::ZERO);
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace` (at once when zero); always reaps the child.
fn stop_child(child: Option<Child>, grace: Duration) {
    let Some(mut child) = child else { return };
    let pid = Pid::from_raw(child.id() as i32);
    if !grace.is_zero() && kill(pid, Signal::SIGTERM).is_ok() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `n` distinct ports that were free a moment ago on `ip` (and on loopback for etcd).
pub(crate) fn free_ports(n: usize, ip: IpAddr) -> Result<Vec<u16>, LabError> {
    let listeners = (0..n)
        .map(|_| {
            TcpListener::bind((ip, 0))
                .map_err(LabError::io("binding a free port on", ip.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(LabError::io("reading a port of", ip.to_string()))
        })
        .collect()
}

impl DetachedControlPlane {
    /// Reads the record a detached control plane left in `path`.
    pub fn load(path: &Path) -> Result<Self, LabError> {
        let text = std::fs::read_to_string(path).map_err(LabError::io("reading", path))?;
        serde_json::from_str(&text).map_err(|source| LabError::State {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the record to `path`.
    pub fn save(&self, path: &Path) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| LabError::State {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(LabError::io("writing", path))
    }

    /// Whether both processes are still running.
    pub fn is_running(&self) -> bool {
        owns_pid(self.etcd_pid, &self.etcd_bin) && owns_pid(self.apiserver_pid, &self.apiserver_bin)
    }

    /// Stops etcd (SIGTERM) and starts it again on the same data and ports, then waits
    /// until the API server is ready: an etcd restart as kube-apiserver sees it.
    pub async fn restart_etcd(&mut self) -> Result<(), LabError> {
        stop_pid(self.etcd_pid, &self.etcd_bin);
        self.etcd_pid = self.respawn(&self.etcd_bin, &self.etcd_args, "etcd.log")?;
        self.wait_ready().await
    }

    /// Stops kube-apiserver (SIGTERM) and starts it again with the same flags, then
    /// waits until it is ready.
    pub async fn restart_apiserver(&mut self) -> Result<(), LabError> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after the grace period): an outage.
    pub fn stop_apiserver(&mut self) {
        stop_pid(self.apiserver_pid, &self.apiserver_bin);
        self.apiserver_pid = 0;
    }

    /// Freezes (`true`: SIGSTOP) or thaws (`false`: SIGCONT) kube-apiserver: while it is
    /// frozen its sockets stay open and accept connections, and nothing answers — an API
    /// server that hangs requests rather than refusing them.
    pub fn freeze_apiserver(&self, frozen: bool) -> Result<(), LabError> {
        let process = format!("kube-apiserver (PID {})", self.apiserver_pid);
        if !owns_pid(self.apiserver_pid, &self.apiserver_bin) {
            return Err(LabError::Signal {
                process,
                reason: "not running (or the PID is no longer ours)".into(),
            });
        }
        let sig = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(Pid::from_raw(self.apiserver_pid), sig).map_err(|e| LabError::Signal {
            process,
            reason: format!("{sig}: {e}"),
        })
    }

    /// Starts kube-apiserver again with the same flags and waits until it is ready.
    pub async fn start_apiserver(&mut self) -> Result<(), LabError> {
        self.apiserver_pid = self.respawn(
            &self.apiserver_bin,
            &self.apiserver_args,
            "kube-apiserver.log",
        )?;
        self.wait_ready().await
    }

    fn respawn(&self, program: &Path, args: &[String], log_name: &str) -> Result<i32, LabError> {
        if args.is_empty() {
            return Err(LabError::NotReady {
                component: "control plane",
                reason: "this record has no command lines to restart from".into(),
                tail: String::new(),
                log: self.dir.join(log_name),
            });
        }
        let (program, args) = in_netns(self.netns.as_deref(), program, args);
        let child = crate::spawn_logged(
            &program,
            &args,
            &[],
            &self.dir.join(log_name),
            Some(&self.dir),
            true,
        )?;
        Ok(child.id() as i32)
    }

    async fn wait_ready(&self) -> Result<(), LabError> {
        let client = crate::client_from_kubeconfig(&self.kubeconfig).await?;
        wait_ready_with(&client, &self.dir, || None).await
    }

    /// Stops both processes (only if each PID still runs the binary we started) and
    /// removes the directory.
    pub fn stop(&self) {
        stop_pid(self.apiserver_pid, &self.apiserver_bin);
        stop_pid(self.etcd_pid, &self.etcd_bin);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls /readyz until the API server is ready; fails when `exited` names a process
/// that died (component, reason, log file) or after [`READY_TIMEOUT`].
async fn wait_ready_with(
    client: &kube::Client,
    dir: &Path,
    mut exited: impl FnMut() -> Option<(&'static str, String, &'static str)>,
) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some((component, reason, log)) = exited() {
            return Err(self_not_ready(dir, component, reason, log));
        }
        let last = match readyz(client).await {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() > deadline {
            return Err(self_not_ready(
                dir,
                "kube-apiserver",
                format!("/readyz not ok after {READY_TIMEOUT:?}: {last}"),
                "kube-apiserver.log",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One GET /readyz (5 s at most): `Ok` when the API server says ok, else what it said.
async fn readyz(client: &kube::Client) -> Result<(), String> {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("GET /readyz timed out".into()),
    }
}

/// SIGTERM to `pid` if it still runs `bin`, SIGKILL after the grace period; returns when
/// it is gone (or a zombie: its parent reaps it).
pub(crate) fn stop_pid(pid: i32, bin: &Path) {
    if !owns_pid(pid, bin) {
        return;
    }
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && owns_pid(pid, bin) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if owns_pid(pid, bin) {
        let _ = kill(p, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while owns_pid(pid, bin) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` is alive and runs `bin` (guards against a recycled PID). A process
/// whose binary was rebuilt since it started (`cargo build` during a lab's life) still
/// counts: the kernel then names its executable `<bin> (deleted)`.
pub(crate) fn owns_pid(pid: i32, bin: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let want = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    let replaced = format!("{} (deleted)", want.display());
    exe == want || exe.as_os_str() == replaced.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab stops what it started even when the binary was rebuilt meanwhile (a
    /// lab left running across `cargo build` leaked its daemons before this), and
    /// never a process running something else.
    #[test]
    fn stops_its_process_after_the_binary_was_replaced() {
        let dir = std::env::temp_dir().join(format!("pnl-owns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let bin = dir.join("sleeper");
        std::fs::copy("/bin/sleep", &bin).unwrap_or_else(|e| panic!("copy /bin/sleep: {e}"));
        let mut child = std::process::Command::new(&bin)
            .arg("60")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let pid = child.id() as i32;
        assert!(owns_pid(pid, &bin));
        assert!(
            !owns_pid(pid, Path::new("/bin/true")),
            "another binary's PID"
        );
        // Rebuilt: a new file renamed over the old path.
        let fresh = dir.join("sleeper.new");
        std::fs::copy("/bin/sleep", &fresh).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&fresh, &bin).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            owns_pid(pid, &bin),
            "lost track of its process after the rebuild"
        );
        stop_pid(pid, &bin);
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(!status.success(), "it should have been stopped by a signal");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
