//! Network policy at scale on the real-node lab (kubelet + containerd per node, podnet
//! installed with helm): 1,000 pods and 500 NetworkPolicies, then
//! (a) a policy change to enforcement on every node, (b) a new pod to its first allowed
//! connection against a pod no policy touches, (c) pod-to-pod TCP requests/s and p99
//! with and without policies, (d) podnet-daemon CPU and RSS.
//!
//! ```text
//! scripts/build-tools.sh && scripts/build-images.sh && scripts/build-lab-images.sh
//! cargo build --release -p podnet-lab
//! target/release/bench-policy [--pods 1000] [--policies 500] [--rounds 5]
//! ```
//!
//! The workload: namespaces `bp-00`…`bp-49` (label `team: t<i mod 10>`), each with ten
//! policies that select its pods `app: a<i mod 5>` and allow ingress from the `tier:
//! front` pods of the `team: t<p mod 10>` namespaces on a named port and a port range,
//! and from `10.0.0.0/8` except `10.99.0.0/16` on 5432; every fourth also limits egress
//! to UDP 53 of `tier: back` pods. Every namespace has a real server pod its ten
//! policies select (round-robin over the three nodes), so every policy is compiled by a
//! daemon; `bp-00` also has, on every node, a policy-selected server `srv-N`, a server
//! no policy selects `open-N` (agnhost netexec) and a client `cli-N`. The rest of the
//! 1,000 pods are Pod objects on Nodes without a kubelet ("virtual" nodes podnet
//! allocates and routes like any other) with addresses from their node's CIDR written
//! into their status: peers the daemons must track, as in a larger cluster.
//!
//! Probing runs in the client pods' network namespaces, from threads of this program
//! (`setns` on threads it owns): a TCP connect every 5 ms with a 30 ms timeout, so a
//! state change is seen within ~35 ms. (a) times `toggle` — a policy allowing `role:
//! cli` into the `srv-N` — from the create (or delete) request until every client sees
//! the change, stable for 300 ms. (b) starts pods that connect from their first instant
//! (`agnhost connect` in a loop) to an `srv` (allowed by `toggle`) and to an `open`
//! server, and times creation → first success of each. (c) opens a new connection per
//! request (HTTP GET to agnhost netexec) from `cli-0` to `srv-1` and to `open-1`,
//! alternating rounds. (d) reads each podnet-daemon's cgroup.
//!
//! The anchor named by issue 16, kube-network-policies, cannot enforce on this kernel:
//! its dataplane queues the first packet of each connection to userspace with nftables'
//! `queue` statement, and this kernel is built without `CONFIG_NFT_QUEUE` (`nft` answers
//! "Could not process rule: No such file or directory"); see docs/benchmarks.md.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use podnet_crds::NodeRoute;
use podnet_lab::real::{self, RealLab, kubectl};

/// Policies at scale on the real-node lab.
#[derive(clap::Parser)]
#[command(version)]
struct Cli {
    /// Pods in all (real and on virtual nodes).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// NetworkPolicies.
    #[arg(long, default_value_t = 500)]
    policies: usize,
    /// Namespaces the pods and policies spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Rounds of each measurement.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of each datapath round.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Where the images are (scripts/build-images.sh, scripts/build-lab-images.sh).
    #[arg(long, default_value = "target/images")]
    images: PathBuf,
    /// Leave the lab running afterwards (for a look at the daemons; `podnet-lab down`
    /// with PODNET_LAB_STATE=/run/pnbp<pid> removes it).
    #[arg(long)]
    keep: bool,
}

const AGNHOST: &str = real::AGNHOST_IMAGE;
const PORT: u16 = 8080;
/// Virtual pods per virtual node (its IPv4 CIDR is a /24).
const PER_VNODE: usize = 200;

fn ns_name(i: usize) -> String {
    format!("bp-{i:02}")
}

use podnet_lab::percentile as pct;

fn spread(v: &[f64]) -> String {
    format!(
        "median {:.3}, min {:.3}, max {:.3} (n={})",
        pct(v, 0.5),
        pct(v, 0.0),
        pct(v, 1.0),
        v.len()
    )
}

/// Seconds since boot: the clock the pods read too.
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The shells of the two images: agnhost's has /bin/sh, the lab's busybox only busybox.
const AGNHOST_SH: &str = r#""/bin/sh""#;
const BUSYBOX_SH: &str = r#""/bin/busybox", "sh""#;

fn pod_doc(ns: &str, name: &str, node: &str, labels: &str, image: &str, cmd: &str) -> String {
    let shell = if image == AGNHOST {
        AGNHOST_SH
    } else {
        BUSYBOX_SH
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {image}
    imagePullPolicy: Never
    command: [{shell}, "-c", "{cmd}"]
    ports: [{{name: http, containerPort: {PORT}}}]
---
"#
    )
}

fn policy(p: usize, namespaces: usize) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "podSelector": {"matchLabels": {"app": format!("a{}", p % 5)}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", p % 10)}},
                       "podSelector": {"matchLabels": {"tier": "front"}}}],
             "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]},
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.99.0.0/16"]}}],
             "ports": [{"port": 5432}]}
        ]
    });
    if p.is_multiple_of(4) {
        spec["policyTypes"] = serde_json::json!(["Ingress", "Egress"]);
        spec["egress"] = serde_json::json!([
            {"to": [{"podSelector": {"matchLabels": {"tier": "back"}}}],
             "ports": [{"protocol": "UDP", "port": 53}]}
        ]);
    }
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("np-{p:03}"), "namespace": ns_name(p % namespaces)},
        "spec": spec,
    })
}

fn toggle_policy() -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "toggle", "namespace": ns_name(0)},
        "spec": {
            "podSelector": {"matchLabels": {"app": "a0"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "cli"}}}],
                         "ports": [{"port": PORT}]}]
        }
    }))
    .unwrap_or_default()
}

/// The `n`-th address of a CIDR (IPv4 or IPv6).
fn nth(cidr: &str, n: u32) -> Option<String> {
    let (base, _) = cidr.split_once('/')?;
    let ip: std::net::IpAddr = base.parse().ok()?;
    Some(match ip {
        std::net::IpAddr::V4(v4) => std::net::Ipv4Addr::from(u32::from(v4) + n).to_string(),
        std::net::IpAddr::V6(v6) => {
            std::net::Ipv6Addr::from(u128::from(v6) + u128::from(n)).to_string()
        }
    })
}

/// One probe: when it started, whether the connection was made.
type Samples = Arc<Mutex<Vec<(Instant, bool)>>>;

/// A thread in `netns` that connects to `target` every 5 ms (30 ms timeout) until
/// `stop`, recording every try.
fn prober(netns: PathBuf, target: SocketAddr, stop: Arc<AtomicBool>) -> Samples {
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&samples);
    std::thread::spawn(move || {
        if let Err(e) = enter(&netns) {
            eprintln!("prober to {target}: {e:#}");
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = TcpStream::connect_timeout(&target, Duration::from_millis(30)).is_ok();
            if let Ok(mut s) = out.lock() {
                s.push((t, ok));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    samples
}

/// Moves this thread (one this program spawned for the purpose) into `netns`.
fn enter(netns: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {}", netns.display()))?;
    Ok(())
}

/// The first try at or after `since` from which every try for 300 ms (at least 5) had
/// outcome `want`: seconds after `since`.
fn settled(samples: &[(Instant, bool)], since: Instant, want: bool) -> Option<f64> {
    let window = Duration::from_millis(300);
    let after: Vec<&(Instant, bool)> = samples.iter().filter(|(t, _)| *t >= since).collect();
    for (i, (t, ok)) in after.iter().enumerate() {
        if *ok != want {
            continue;
        }
        let run: Vec<_> = after[i..]
            .iter()
            .take_while(|(u, _)| u.duration_since(*t) <= window)
            .collect();
        let last = run.last().map(|(u, _)| u.duration_since(*t));
        if run.len() >= 5 && last >= Some(window / 2) && run.iter().all(|(_, o)| *o == want) {
            return Some(t.duration_since(since).as_secs_f64());
        }
    }
    None
}

/// Waits until every prober shows `want` settled after `since`; the seconds per prober.
async fn wait_settled(
    probers: &[Samples],
    since: Instant,
    want: bool,
    what: &str,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Option<f64>> = probers
            .iter()
            .map(|p| p.lock().ok().and_then(|s| settled(&s, since, want)))
            .collect();
        if got.iter().all(Option::is_some) {
            return Ok(got.into_iter().flatten().collect());
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not every client saw {} within 60 s ({got:?})",
            if want {
                "its connections allowed"
            } else {
                "its connections refused"
            }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests from `netns` to `target` for `seconds`, `workers` threads, each a new TCP
/// connection with an HTTP GET read to the end: (requests/s, latencies in ms).
fn load(
    netns: &std::path::Path,
    target: SocketAddr,
    seconds: f64,
    workers: usize,
) -> (f64, Vec<f64>) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let netns = netns.to_path_buf();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut failed = 0usize;
                if enter(&netns).is_err() {
                    return (lat, usize::MAX);
                }
                let req = b"GET /hostname HTTP/1.0\r\n\r\n";
                let mut buf = [0u8; 4096];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(req)?;
                        while s.read(&mut buf)? > 0 {}
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => failed += 1,
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failed = 0usize;
    for h in handles {
        if let Ok((lat, f)) = h.join() {
            all.extend(lat);
            failed = failed.saturating_add(f);
        }
    }
    if failed > 0 {
        eprintln!("    {failed} requests to {target} failed");
    }
    (all.len() as f64 / seconds, all)
}

/// The pods' IPv4 addresses in `ns`, by name, once they all have one.
async fn ips(
    lab: &RealLab,
    ns: &str,
    names: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = kubectl(
            lab,
            &[
                "get",
                "pods",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
            ],
            "",
        )?;
        let got: BTreeMap<String, String> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (n, ip, ready) = (it.next()?, it.next()?, it.next()?);
                (ready == "true").then(|| (n.to_string(), ip.to_string()))
            })
            .collect();
        if names.iter().all(|n| got.contains_key(n)) {
            return Ok(got);
        }
        ensure!(
            Instant::now() < deadline,
            "pods of {ns} not all running after 300 s: have {:?}",
            got.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// podnet-daemon pods' container IDs, by pod name.
fn daemon_ids(lab: &RealLab) -> BTreeMap<String, String> {
    real::container_ids(lab, podnet_lab::chart::NAMESPACE)
        .into_iter()
        .filter(|(pod, _)| pod.starts_with("podnet-daemon"))
        .collect()
}

/// Their use now, from their cgroups (no API call: cheap enough to sample often).
fn usage(lab: &RealLab, ids: &BTreeMap<String, String>) -> BTreeMap<String, real::Usage> {
    ids.iter()
        .filter_map(|(pod, id)| Some((pod.clone(), real::container_usage(lab, id)?)))
        .collect()
}

async fn run(lab: &mut RealLab, cli: &Cli) -> anyhow::Result<()> {
    let client = podnet_lab::client_from_kubeconfig(&lab.control_plane.kubeconfig).await?;
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    let nn = nodes.len();
    let dids = daemon_ids(lab);
    ensure!(
        dids.len() == lab.nodes.len(),
        "podnet-daemon pods: {dids:?}"
    );
    let daemons = |lab: &RealLab| usage(lab, &dids);
    let idle = daemons(lab);

    // Namespaces and the real pods.
    let mut docs = String::new();
    for i in 0..cli.namespaces {
        docs.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels: {{team: t{}}}\n---\n",
            ns_name(i),
            i % 10
        ));
    }
    kubectl(lab, &["apply", "-f", "-"], &docs)?;
    let netexec = format!("exec /agnhost netexec --http-port={PORT} --udp-port=-1");
    let httpd = format!("exec /bin/busybox httpd -f -p {PORT} -h /www");
    let mut docs = String::new();
    let mut bp0 = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for (name, labels, cmd) in [
            (
                format!("srv-{n}"),
                "app: a0, tier: back".to_string(),
                netexec.clone(),
            ),
            (
                format!("open-{n}"),
                "app: open".to_string(),
                netexec.clone(),
            ),
            (
                format!("cli-{n}"),
                "role: cli".to_string(),
                "exec /agnhost pause".to_string(),
            ),
        ] {
            docs.push_str(&pod_doc(&ns_name(0), &name, node, &labels, AGNHOST, &cmd));
            bp0.push(name);
        }
    }
    for i in 1..cli.namespaces {
        docs.push_str(&pod_doc(
            &ns_name(i),
            "srv",
            &nodes[i % nn],
            &format!("app: a{}, tier: back", i % 5),
            "localhost/podnet-lab/busybox:1",
            &httpd,
        ));
    }
    let real_pods = bp0.len() + cli.namespaces - 1;
    let t = Instant::now();
    kubectl(lab, &["apply", "-f", "-"], &docs)?;
    let addr = ips(lab, &ns_name(0), &bp0).await?;
    for i in 1..cli.namespaces {
        ips(lab, &ns_name(i), &["srv".to_string()]).await?;
    }
    eprintln!(
        "==> {real_pods} real pods running ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    // Virtual nodes and their pods.
    let virtual_pods = cli.pods.saturating_sub(real_pods);
    let vnodes: Vec<String> = (0..virtual_pods.div_ceil(PER_VNODE))
        .map(|k| format!("vnode-{k}"))
        .collect();
    podnet_lab::objects::create_nodes(&client, &vnodes, &BTreeMap::new(), |k| {
        vec![
            format!("{}.{}", real::NET4, 200 + k),
            format!("{}::{:x}", real::NET6, 0x200 + k),
        ]
    })
    .await?;
    let nrs: Api<NodeRoute> = Api::all(client.clone());
    let mut cidrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for v in &vnodes {
        loop {
            let c = nrs
                .get_opt(v)
                .await?
                .and_then(|n| n.status)
                .map(|s| s.pod_cidrs)
                .unwrap_or_default();
            if c.len() == 2 {
                cidrs.insert(v.clone(), c);
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{v} got no CIDRs of both families in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let t = Instant::now();
    let specs: Vec<(String, String, serde_json::Value, serde_json::Value)> = (0..virtual_pods)
        .map(|i| {
            let v = &vnodes[i / PER_VNODE];
            let c = &cidrs[v];
            let ip4 = nth(&c[0], (i % PER_VNODE) as u32 + 2).unwrap_or_default();
            let ip6 = nth(&c[1], (i % PER_VNODE) as u32 + 2).unwrap_or_default();
            let ns = ns_name(i % cli.namespaces);
            let name = format!("v-{i}");
            let pod = serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "labels": {
                    "app": format!("a{}", i % 5), "tier": if i % 2 == 0 { "front" } else { "back" }}},
                "spec": {"nodeName": v, "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "c", "image": "podnet.test/pause:3.10.2",
                        "ports": [{"name": "http", "containerPort": PORT}]}]}
            });
            let status = serde_json::json!({"status": {"phase": "Running", "podIP": ip4,
                "podIPs": [{"ip": ip4}, {"ip": ip6}]}});
            (ns, name, pod, status)
        })
        .collect();
    futures::stream::iter(specs)
        .map(|(ns, name, pod, status)| {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            async move {
                let pod: Pod = serde_json::from_value(pod)?;
                api.create(&PostParams::default(), &pod).await?;
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "==> {virtual_pods} pods on {} virtual nodes ({:.1}s)",
        vnodes.len(),
        t.elapsed().as_secs_f64()
    );

    // The policies; daemon CPU and memory while they arrive and after.
    let setup_cpu = daemons(lab);
    // Peak (cgroup rss, process VmRSS) per daemon.
    let peak: Arc<Mutex<BTreeMap<String, (f64, f64)>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (lab, peak, stop) = (lab.clone(), Arc::clone(&peak), Arc::clone(&sampling));
        let ids = dids.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (pod, u) in usage(&lab, &ids) {
                    if let Ok(mut p) = peak.lock() {
                        let e = p.entry(pod).or_insert((0.0, 0.0));
                        e.0 = e.0.max(u.rss_mib);
                        e.1 = e.1.max(u.vm_rss_mib);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let t = Instant::now();
    let policies: Vec<serde_json::Value> = (0..cli.policies)
        .map(|p| policy(p, cli.namespaces))
        .collect();
    futures::stream::iter(policies)
        .map(|p| {
            let client = client.clone();
            async move {
                let np: NetworkPolicy = serde_json::from_value(p)?;
                let ns = np.metadata.namespace.clone().unwrap_or_default();
                Api::<NetworkPolicy>::namespaced(client, &ns)
                    .create(&PostParams::default(), &np)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "==> {} policies created ({:.1}s)",
        cli.policies,
        t.elapsed().as_secs_f64()
    );

    // Probers: cli-N → srv-(N+1), across nodes; isolated by the policies, so refused.
    let ids = real::container_ids(lab, &ns_name(0));
    let netns = |pod: &str| -> anyhow::Result<PathBuf> {
        let id = ids
            .get(pod)
            .with_context(|| format!("no container ID for {pod}"))?;
        real::container_netns(lab, id).with_context(|| format!("no network namespace for {pod}"))
    };
    let target =
        |pod: &str| -> anyhow::Result<SocketAddr> { Ok(SocketAddr::new(addr[pod].parse()?, PORT)) };
    let stop = Arc::new(AtomicBool::new(false));
    let mut probers = Vec::new();
    for n in 0..nn {
        probers.push(prober(
            netns(&format!("cli-{n}"))?,
            target(&format!("srv-{}", (n + 1) % nn))?,
            Arc::clone(&stop),
        ));
    }
    let since = Instant::now();
    wait_settled(&probers, since, false, "after the policies").await?;
    eprintln!("==> every client refused by the policies; 40 s at rest");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled_use = daemons(lab);
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let quiet_use = daemons(lab);
    let quiet_secs = quiet.elapsed().as_secs_f64();

    // (a) policy change → enforced on every node.
    eprintln!("==> (a) policy changes, {} rounds", cli.rounds);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns_name(0));
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    let before_a = daemons(lab);
    for _ in 0..cli.rounds {
        let t0 = Instant::now();
        nps.create(&PostParams::default(), &toggle_policy()).await?;
        let each = wait_settled(&probers, t0, true, "toggle created").await?;
        allow.push(each.iter().copied().fold(0.0, f64::max));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        nps.delete("toggle", &DeleteParams::default()).await?;
        let each = wait_settled(&probers, t0, false, "toggle deleted").await?;
        deny.push(each.iter().copied().fold(0.0, f64::max));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after_a = daemons(lab);
    stop.store(true, Ordering::Relaxed);

    // (b) new pod → first allowed connection, against a pod no policy touches.
    eprintln!("==> (b) new pods, {} rounds", cli.rounds);
    nps.create(&PostParams::default(), &toggle_policy()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut to_srv, mut to_open) = (Vec::new(), Vec::new());
    for r in 0..cli.rounds {
        let n = r % nn;
        let peer = (n + 1) % nn;
        let first = |target: &str| {
            format!(
                "while :; do if /agnhost connect --timeout=100ms {target}:{PORT} >/dev/null 2>&1; then read -r up _ < /proc/uptime; echo $up; exec sleep 3600; fi; done"
            )
        };
        let mut docs = String::new();
        let pair = [
            (
                format!("new-{r}"),
                "role: cli",
                first(&addr[&format!("srv-{peer}")]),
            ),
            (
                format!("newopen-{r}"),
                "role: other",
                first(&addr[&format!("open-{peer}")]),
            ),
        ];
        let order: Vec<_> = if r % 2 == 0 {
            pair.iter().collect()
        } else {
            pair.iter().rev().collect()
        };
        for (name, labels, cmd) in order {
            docs.push_str(&pod_doc(&ns_name(0), name, &nodes[n], labels, AGNHOST, cmd));
        }
        let created = uptime();
        kubectl(lab, &["apply", "-f", "-"], &docs)?;
        for (name, _, _) in &pair {
            let deadline = Instant::now() + Duration::from_secs(120);
            let t = loop {
                let log = kubectl(lab, &["logs", "-n", &ns_name(0), name], "").unwrap_or_default();
                if let Some(t) = log
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
                {
                    break t;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{name} made no connection in 120 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if name.starts_with("new-") {
                to_srv.push(t - created);
            } else {
                to_open.push(t - created);
            }
        }
        kubectl(
            lab,
            &[
                "delete",
                "pod",
                "-n",
                &ns_name(0),
                &pair[0].0,
                &pair[1].0,
                "--wait=true",
            ],
            "",
        )?;
    }

    // (c) datapath: new connection per request, with and without policies.
    eprintln!("==> (c) datapath, {} rounds", cli.rounds);
    let from = netns("cli-0")?;
    let (mut rps_pol, mut rps_open, mut lat_pol, mut lat_open) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (srv, open) = (
        target(&format!("srv-{}", 1 % nn))?,
        target(&format!("open-{}", 1 % nn))?,
    );
    let _ = load(&from, open, 1.0, 2); // warm up
    for r in 0..cli.rounds {
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with_policy in order {
            let (rps, lat) = load(&from, if with_policy { srv } else { open }, cli.seconds, 2);
            if with_policy {
                rps_pol.push(rps);
                lat_pol.push(pct(&lat, 0.99));
            } else {
                rps_open.push(rps);
                lat_open.push(pct(&lat, 0.99));
            }
        }
    }
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.lock().map(|p| p.clone()).unwrap_or_default();
    // The CPU and memory figures are a container's since it started: a restarted daemon
    // would make them wrong (and would be a finding of its own).
    let now = daemon_ids(lab);
    ensure!(
        now == dids,
        "a podnet-daemon container changed during the run (restarted?): before {dids:?}, after {now:?}"
    );

    // Report.
    println!(
        "\n## bench-policy: {} pods ({real_pods} real, {virtual_pods} on {} virtual nodes), {} NetworkPolicies in {} namespaces, {} nodes\n",
        cli.pods,
        vnodes.len(),
        cli.policies,
        cli.namespaces,
        nn
    );
    println!(
        "(a) policy change → enforced on every node (s, max over the {nn} nodes' clients; probe resolution ~0.035 s):"
    );
    println!("    allow (create):  {}", spread(&allow));
    println!("    deny (delete):   {}", spread(&deny));
    println!(
        "(b) pod creation → first connection (s, from the create request; the pod probes from its first instant):"
    );
    println!(
        "    to a policy-selected server (allowed by `toggle`): {}",
        spread(&to_srv)
    );
    println!(
        "    to a server no policy selects:                     {}",
        spread(&to_open)
    );
    let diff: Vec<f64> = to_srv.iter().zip(&to_open).map(|(a, b)| a - b).collect();
    println!(
        "    difference per round (policy − none):              {}",
        spread(&diff)
    );
    println!(
        "(c) datapath: a new TCP connection and HTTP GET per request, cli-0 → node 2, 2 workers, {} s rounds:",
        cli.seconds
    );
    println!("    requests/s with policies: {}", spread(&rps_pol));
    println!("    requests/s without:       {}", spread(&rps_open));
    println!("    p99 ms with policies:     {}", spread(&lat_pol));
    println!("    p99 ms without:           {}", spread(&lat_open));
    let (mp, mo) = (pct(&rps_pol, 0.5), pct(&rps_open, 0.5));
    println!(
        "    ratio of medians (requests/s with / without): {:.3} ({:+.1} %)",
        mp / mo,
        (mp / mo - 1.0) * 100.0
    );
    println!(
        "(d) podnet-daemon per node; RSS: the process's VmRSS (as ps shows it), in brackets the cgroup's rss (anonymous memory charged to it):"
    );
    println!(
        "    | pod | RSS idle MiB | RSS after setup MiB | RSS peak MiB | CPU s for the setup | CPU % at rest | CPU s per policy change |"
    );
    println!("    |---|---|---|---|---|---|---|");
    for (pod, u) in &settled_use {
        let i = idle.get(pod).copied().unwrap_or_default();
        let s = setup_cpu.get(pod).copied().unwrap_or_default();
        let q = quiet_use.get(pod).copied().unwrap_or_default();
        let (a0, a1) = (
            before_a.get(pod).copied().unwrap_or_default(),
            after_a.get(pod).copied().unwrap_or_default(),
        );
        println!(
            "    | {pod} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.2} | {:.2} | {:.4} |",
            i.vm_rss_mib,
            i.rss_mib,
            u.vm_rss_mib,
            u.rss_mib,
            peak.get(pod).map_or(0.0, |p| p.1),
            peak.get(pod).map_or(0.0, |p| p.0),
            u.cpu_seconds - s.cpu_seconds,
            (q.cpu_seconds - u.cpu_seconds) / quiet_secs * 100.0,
            (a1.cpu_seconds - a0.cpu_seconds) / (2 * cli.rounds) as f64
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = clap::Parser::parse();
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "bench-policy needs root (namespaces, cgroups, mounts)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut lab = real::bench_lab(&rt, "pnbp", &cli.images)
        .map_err(|e| anyhow::anyhow!("real-node lab up: {e}"))?;
    let result = rt.block_on(run(&mut lab, &cli));
    if cli.keep {
        eprintln!(
            "==> lab kept: export KUBECONFIG={}; PODNET_LAB_STATE={} podnet-lab down removes it",
            lab.control_plane.kubeconfig.display(),
            lab.dir.display()
        );
    } else {
        real::down(&lab);
    }
    result
}
