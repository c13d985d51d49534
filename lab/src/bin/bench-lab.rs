//! Benchmark on the real-node lab (kubelet + containerd per node, podnet installed with
//! helm): pod startup with podnet-cni against the reference `bridge` + `host-local`
//! plugins configured on the same nodes, node join times, and the memory of podnet's
//! pods at idle and under churn.
//!
//! ```text
//! scripts/build-tools.sh && scripts/build-images.sh && scripts/build-lab-images.sh
//! cargo build --release -p podnet-lab
//! target/release/bench-lab [--pods-per-node 30] [--rounds 3] [--joins 10]
//! ```
//!
//! Pod startup: per round, `--pods-per-node` pods on every node are created in one
//! `kubectl apply`, once with podnet-cni and once with the reference (alternating which
//! goes first). The reference is a conflist `05-ref.conflist` that sorts before podnet's,
//! so containerd uses it: `bridge` on podnet's bridge with `host-local` handing out
//! `.150`–`.250` of the node's IPv4 pod CIDR (podnet's routes carry it between nodes).
//! Each pod pings a pod on the next node until the first reply and logs
//! `/proc/uptime` then; creation and `Ready` are timed by a watch on the same clock.
//!
//! Node join: a node is added (kubelet, containerd, kube-proxy started), timed from the
//! start of its kubelet to its Node object (registration) and to `Ready`; then stopped
//! and deleted. Memory: `memory.usage_in_bytes` and the `rss` of `memory.stat` of each
//! podnet container's cgroup, sampled at idle and every 200 ms during the rounds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::watcher;
use podnet_lab::kube_node::{self, ProxyMode};
use podnet_lab::real::{self, RealLab, kubectl};

/// Seconds since boot: the clock the pods read too (`/proc/uptime`, same kernel).
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Pods, node join and memory on the real-node lab, against the reference plugins.
#[derive(clap::Parser)]
#[command(version)]
struct Cli {
    /// Pods per node per round.
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// Rounds (each one podnet and one reference batch).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Node joins.
    #[arg(long, default_value_t = 10)]
    joins: usize,
    /// Where the images are (scripts/build-images.sh, scripts/build-lab-images.sh).
    #[arg(long, default_value = "target/images")]
    images: PathBuf,
}

use podnet_lab::percentile as pct;

/// (cgroup memory usage, rss) in MiB of every podnet container, by pod name.
fn podnet_memory(lab: &RealLab) -> BTreeMap<String, (f64, f64)> {
    real::podnet_usage(lab)
        .into_iter()
        .map(|(pod, u)| (pod, (u.memory_mib, u.rss_mib)))
        .collect()
}

/// Times seen by the watch: pod name → (first seen, Ready) in uptime seconds.
type Seen = Arc<Mutex<BTreeMap<String, (f64, Option<f64>)>>>;

fn manifest(lab: &RealLab, label: &str, per_node: usize, targets: &[String]) -> String {
    let mut docs = String::new();
    for (i, n) in lab.nodes.iter().enumerate() {
        let target = &targets[(i + 1) % targets.len()];
        for p in 0..per_node {
            docs.push_str(&format!(
                r#"apiVersion: v1
kind: Pod
metadata:
  name: {label}-{node}-{p}
  namespace: bench
  labels: {{bench: "{label}"}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: localhost/podnet-lab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/busybox", "sh", "-c", "until /bin/busybox ping -c 1 -W 1 {target} >/dev/null 2>&1; do /bin/busybox usleep 20000; done; /bin/busybox cat /proc/uptime; exec /bin/busybox sleep 3600"]
---
"#,
                node = n.name
            ));
        }
    }
    docs
}

/// One batch: creates the pods, waits until every one is Ready and has logged its first
/// reply, deletes them. Returns (to Ready, to first ping) per pod, in seconds.
async fn batch(
    lab: &RealLab,
    seen: &Seen,
    label: &str,
    per_node: usize,
    targets: &[String],
    mem: &Mutex<BTreeMap<String, (f64, f64)>>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let docs = manifest(lab, label, per_node, targets);
    let want = per_node * lab.nodes.len();
    let created = uptime();
    kubectl(lab, &["apply", "-f", "-"], &docs)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pinged: BTreeMap<String, f64> = BTreeMap::new();
    loop {
        let ready = seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(k, v)| k.starts_with(&format!("{label}-")) && v.1.is_some())
                    .count()
            })
            .unwrap_or(0);
        if ready == want {
            for (name, _) in seen.lock().map(|s| s.clone()).unwrap_or_default() {
                if !name.starts_with(&format!("{label}-")) || pinged.contains_key(&name) {
                    continue;
                }
                if let Ok(log) = kubectl(lab, &["logs", "-n", "bench", &name], "")
                    && let Some(t) = log.split_whitespace().next().and_then(|s| s.parse().ok())
                {
                    pinged.insert(name, t);
                }
            }
            if pinged.len() == want {
                break;
            }
        }
        for (pod, m) in podnet_memory(lab) {
            if let Ok(mut all) = mem.lock() {
                let e = all.entry(pod).or_insert((0.0, 0.0));
                e.0 = e.0.max(m.0);
                e.1 = e.1.max(m.1);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{label}: {ready}/{want} Ready and {}/{want} pinged after 300 s",
            pinged.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready: Vec<f64> = seen
        .lock()
        .map(|s| {
            s.iter()
                .filter(|(k, _)| k.starts_with(&format!("{label}-")))
                .filter_map(|(_, v)| v.1.map(|r| r - created))
                .collect()
        })
        .unwrap_or_default();
    let ping: Vec<f64> = pinged.values().map(|t| t - created).collect();
    kubectl(
        lab,
        &[
            "delete",
            "pods",
            "-n",
            "bench",
            "-l",
            &format!("bench={label}"),
            "--wait=true",
        ],
        "",
    )?;
    if let Ok(mut s) = seen.lock() {
        s.retain(|k, _| !k.starts_with(&format!("{label}-")));
    }
    Ok((ready, ping))
}

fn set_reference(lab: &RealLab, on: bool) -> anyhow::Result<()> {
    // host-local's leases: in the lab's own directory (nodes see the host's /run), gone
    // with the reference.
    let ipam_dir = lab.dir.join("ref-ipam");
    if !on {
        let _ = std::fs::remove_dir_all(&ipam_dir);
    }
    for n in &lab.nodes {
        let path = n.dir.join("etc-cni/net.d/05-ref.conflist");
        if !on {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let cidr = kubectl(
            lab,
            &["get", "nr", &n.name, "-o", "jsonpath={.status.podCIDRs[0]}"],
            "",
        )?;
        let base = cidr.split('/').next().unwrap_or_default();
        let prefix: Vec<&str> = base.split('.').take(3).collect();
        let p = prefix.join(".");
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "plugins": [
            {"type": "bridge", "bridge": podnet_contract::DEFAULT_BRIDGE, "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": ipam_dir,
                      "ranges": [[{"subnet": cidr, "rangeStart": format!("{p}.150"), "rangeEnd": format!("{p}.250"), "gateway": format!("{p}.1")}]]}}]});
        std::fs::write(&path, conf.to_string()).with_context(|| path.display().to_string())?;
    }
    // containerd reloads its CNI config on a change in the directory.
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

async fn join(lab: &mut RealLab, i: usize, nodes: &Api<Node>) -> anyhow::Result<(f64, f64)> {
    let name = format!("node-{i}");
    let t0 = Instant::now();
    let node = real::add_node(lab, i, ProxyMode::Nftables)?;
    let (mut registered, mut ready) = (None, None);
    while ready.is_none() {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "{name} not Ready in 120 s"
        );
        if let Some(n) = nodes.get_opt(&name).await? {
            registered.get_or_insert(t0.elapsed().as_secs_f64());
            if n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                ready = Some(t0.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kube_node::stop(&node);
    kubectl(lab, &["delete", "node", &name, "--wait=true"], "")?;
    lab.nodes.retain(|n| n.name != name);
    Ok((registered.unwrap_or(0.0), ready.unwrap_or(0.0)))
}

async fn run(lab: &mut RealLab, cli: &Cli) -> anyhow::Result<()> {
    let client = podnet_lab::client_from_kubeconfig(&lab.control_plane.kubeconfig).await?;
    kubectl(lab, &["create", "namespace", "bench"], "")?;
    let seen: Seen = Arc::new(Mutex::new(BTreeMap::new()));
    let watch_seen = seen.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let watch = tokio::spawn(async move {
        let mut s = watcher(pods, watcher::Config::default()).boxed();
        while let Some(Ok(ev)) = s.next().await {
            let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                continue;
            };
            let now = uptime();
            let name = p.metadata.name.clone().unwrap_or_default();
            let ready = p
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if let Ok(mut m) = watch_seen.lock() {
                let e = m.entry(name).or_insert((now, None));
                if ready && e.1.is_none() {
                    e.1 = Some(now);
                }
            }
        }
    });
    // Ping targets: the first lab pod of each node.
    let targets: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| {
            real::pods(lab)
                .ok()
                .and_then(|p| p.into_iter().find(|p| p.name == format!("{}-pod1", n.name)))
                .and_then(|p| p.ips.first().cloned())
                .context("a ping target")
        })
        .collect::<anyhow::Result<_>>()?;
    let idle = podnet_memory(lab);
    let mem = Mutex::new(BTreeMap::new());
    let (mut p_ready, mut p_ping, mut r_ready, mut r_ping) = (vec![], vec![], vec![], vec![]);
    for round in 0..cli.rounds {
        let order = if round % 2 == 0 {
            ["podnet", "ref"]
        } else {
            ["ref", "podnet"]
        };
        for which in order {
            set_reference(lab, which == "ref")?;
            let label = format!("{which}{round}");
            let (ready, ping) =
                batch(lab, &seen, &label, cli.pods_per_node, &targets, &mem).await?;
            println!(
                "round {round} {which:<6}: {} pods, Ready median {:.2} s p90 {:.2} s, first ping median {:.2} s p90 {:.2} s",
                ready.len(),
                pct(&ready, 0.5),
                pct(&ready, 0.9),
                pct(&ping, 0.5),
                pct(&ping, 0.9)
            );
            if which == "ref" {
                r_ready.extend(ready);
                r_ping.extend(ping);
            } else {
                p_ready.extend(ready);
                p_ping.extend(ping);
            }
        }
    }
    set_reference(lab, false)?;
    watch.abort();
    println!(
        "pod startup, {} pods per node x {} nodes x {} rounds: to Ready median {:.2} s (p90 {:.2}) podnet vs {:.2} s (p90 {:.2}) reference, ratio {:.2}x; to first cross-node ping median {:.2} s (p90 {:.2}) vs {:.2} s (p90 {:.2}), ratio {:.2}x",
        cli.pods_per_node,
        lab.nodes.len(),
        cli.rounds,
        pct(&p_ready, 0.5),
        pct(&p_ready, 0.9),
        pct(&r_ready, 0.5),
        pct(&r_ready, 0.9),
        pct(&p_ready, 0.5) / pct(&r_ready, 0.5),
        pct(&p_ping, 0.5),
        pct(&p_ping, 0.9),
        pct(&r_ping, 0.5),
        pct(&r_ping, 0.9),
        pct(&p_ping, 0.5) / pct(&r_ping, 0.5),
    );
    for (pod, (usage, rss)) in &idle {
        let peak = mem
            .lock()
            .ok()
            .and_then(|m| m.get(pod).copied())
            .unwrap_or((0.0, 0.0));
        println!(
            "memory {pod}: idle {usage:.1} MiB (rss {rss:.1}), peak under churn {:.1} MiB (rss {:.1})",
            peak.0, peak.1
        );
    }
    let nodes: Api<Node> = Api::all(client);
    let (mut reg, mut rdy, mut beyond) = (vec![], vec![], vec![]);
    for j in 0..cli.joins {
        let i = 10 + j;
        let (r, ready) = join(lab, i, &nodes).await?;
        println!(
            "join node-{i}: registered {r:.2} s, Ready {ready:.2} s after kubelet started ({:.2} s beyond registration)",
            ready - r
        );
        reg.push(r);
        rdy.push(ready);
        beyond.push(ready - r);
    }
    if !beyond.is_empty() {
        println!(
            "node join x{}: registration median {:.2} s p99 {:.2} s; Ready median {:.2} s p99 {:.2} s; Ready beyond registration median {:.2} s p99 {:.2} s",
            beyond.len(),
            pct(&reg, 0.5),
            pct(&reg, 0.99),
            pct(&rdy, 0.5),
            pct(&rdy, 0.99),
            pct(&beyond, 0.5),
            pct(&beyond, 0.99)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = clap::Parser::parse();
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "bench-lab needs root (namespaces, cgroups, mounts)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut lab = real::bench_lab(&rt, "pnbl", &cli.images)
        .map_err(|e| anyhow::anyhow!("real-node lab up: {e}"))?;
    let result = rt.block_on(run(&mut lab, &cli));
    let _ = set_reference(&lab, false);
    real::down(&lab);
    result
}
