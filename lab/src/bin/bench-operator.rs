//! Benchmark: podnet-operator allocating CIDRs for N Nodes on the real API server,
//! against the floor — a plain client performing the same writes (create each
//! NodeRoute, then write its status) with no allocation logic, at the same concurrency.
//!
//! ```text
//! cargo build --release -p podnet-operator -p podnet-lab
//! target/release/bench-operator [--nodes 5000] [--runs 3] [--operator target/release/podnet-operator]
//!     [--json results.jsonl]
//! ```
//!
//! Every run gets a fresh control plane with the N Nodes already created; the clock
//! starts when the floor client / the operator process starts and stops when every
//! NodeRoute carries its CIDR. Two floors: the plain writes alone (the same objects the
//! operator writes: owner reference, status with its two conditions), and the same writes
//! by a client that also lists and watches Nodes and NodeRoutes, decoding every event,
//! as the operator must (the API server's and the client's share of those watches is in
//! it). Reports each run, the medians, the ratios, and the operator's peak RSS (VmHWM).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use podnet_crds::NodeRoute;
use podnet_lab::ControlPlane;
use podnet_lab::testing::start_with_crds;
use serde_json::json;

const CONCURRENCY: usize = 32;

struct Opts {
    nodes: usize,
    runs: usize,
    operator: PathBuf,
    json: Option<PathBuf>,
    operator_only: bool,
}

fn opts() -> anyhow::Result<Opts> {
    let cli: Cli = clap::Parser::parse();
    if !cli.operator.is_file() {
        bail!(
            "{} not found: cargo build --release -p podnet-operator",
            cli.operator.display()
        );
    }
    Ok(Opts {
        nodes: cli.nodes,
        runs: cli.runs,
        operator: cli.operator,
        json: cli.json,
        operator_only: cli.operator_only,
    })
}

/// Times podnet-operator allocating N nodes against a plain client writing the same
/// NodeRoutes (the floor), and measures its memory.
#[derive(clap::Parser)]
#[command(version)]
struct Cli {
    /// Nodes to allocate.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The operator binary to measure.
    #[arg(long, default_value = "target/release/podnet-operator")]
    operator: PathBuf,
    /// Append the results as one JSON line to this file (for bench-report).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only the operator (no floors, no ratios, no JSON record): for profiling it,
    /// e.g. with `--operator` naming a wrapper that starts it under heaptrack.
    #[arg(long)]
    operator_only: bool,
}

/// A fresh control plane with the PodNetwork and `nodes` Nodes; also each Node's uid.
async fn prepare(nodes: usize) -> anyhow::Result<(ControlPlane, Client, Vec<String>)> {
    let cp = start_with_crds().await?;
    let client = cp.client().await?;
    let pn = json!({"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"default"},
        "spec":{"cidrs":["10.0.0.0/8"],"nodeMaskSize":{"ipv4":24}}});
    Api::<podnet_crds::PodNetwork>::all(client.clone())
        .patch(
            "default",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(pn),
        )
        .await?;
    let api: Api<Node> = Api::all(client.clone());
    let made = stream::iter(0..nodes)
        .map(|i| {
            let api = api.clone();
            async move {
                // A Node keeps the status it is created with: one request per Node.
                let ip = format!("198.18.{}.{}", i / 250, 1 + i % 250);
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": format!("node-{i}")},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))?;
                let created = api.create(&PostParams::default(), &node).await?;
                let uid = created.metadata.uid.clone().unwrap_or_default();
                let kept = created
                    .status
                    .and_then(|s| s.addresses)
                    .is_some_and(|a| a.iter().any(|a| a.address == ip));
                if !kept {
                    let st = json!({"status":{"addresses":[{"type":"InternalIP","address":ip}]}});
                    api.patch_status(
                        &format!("node-{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(st),
                    )
                    .await?;
                }
                anyhow::Ok((i, uid))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let mut uids = vec![String::new(); nodes];
    for (i, uid) in made {
        uids[i] = uid;
    }
    Ok((cp, client, uids))
}

/// Resolves when a watch has seen a CIDR in every one of `nodes` NodeRoutes. Both sides
/// are timed by this same watch, so its cost and latency are in both numbers.
async fn all_allocated(client: &Client, nodes: usize, deadline: Instant) -> anyhow::Result<()> {
    let api: Api<NodeRoute> = Api::all(client.clone());
    let watch = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(watch);
    let mut done = HashSet::new();
    while done.len() < nodes {
        let next = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .context("not finished in 600 s")?;
        match next {
            Some(Ok(nr)) if nr.status.as_ref().is_some_and(|s| !s.pod_cidrs.is_empty()) => {
                done.insert(nr.name_any());
            }
            Some(_) => {}
            None => bail!("watch ended"),
        }
    }
    Ok(())
}

/// Lists and watches `K` like a reflector, decoding every event, until dropped.
async fn carry_watch<K>(client: Client) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (_store, writer) = kube::runtime::reflector::store::<K>();
    let events = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(events);
    while let Some(ev) = events.next().await {
        ev?;
    }
    Ok(())
}

/// The floor: the same two writes per node as the operator's, carrying the same content
/// (the owner reference to the Node on create; the node IP, the CIDR and the
/// `Allocated` and `NodeIPsValid` conditions in the status); with `watches`, by a
/// client that also caches Nodes and NodeRoutes from watches, as the operator does.
async fn floor_run(client: &Client, uids: &[String], watches: bool) -> anyhow::Result<Duration> {
    let nodes = uids.len();
    let api: Api<NodeRoute> = Api::all(client.clone());
    let start = Instant::now();
    let carried = watches.then(|| {
        (
            tokio::spawn(carry_watch::<Node>(client.clone())),
            tokio::spawn(carry_watch::<NodeRoute>(client.clone())),
        )
    });
    let watched = all_allocated(client, nodes, start + Duration::from_secs(600));
    let writes = stream::iter(0..nodes)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("node-{i}");
                let nr: NodeRoute = serde_json::from_value(
                    json!({"apiVersion":"podnet.dev/v1alpha1","kind":"NodeRoute",
                    "metadata":{"name":name,"ownerReferences":[{"apiVersion":"v1","kind":"Node",
                        "name":name,"uid":uids[i],"controller":true}]},
                    "spec":{"nodeName":name,"podNetwork":"default"}}),
                )?;
                let created = api.create(&PostParams::default(), &nr).await?;
                let ip = format!("198.18.{}.{}", i / 250, 1 + i % 250);
                let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
                let now = "2026-01-01T00:00:00Z";
                let st = json!({"apiVersion":"podnet.dev/v1alpha1","kind":"NodeRoute",
                    "metadata":{"name":name,"resourceVersion":created.resource_version()},
                    "status":{"nodeIPs":[ip],"podCIDRs":[cidr],"observedGeneration":1,
                        "conditions":[
                            {"type":"Allocated","status":"True","reason":"Allocated",
                             "message":format!("{cidr} from PodNetwork default"),
                             "lastTransitionTime":now,"observedGeneration":1},
                            {"type":"NodeIPsValid","status":"True","reason":"Valid",
                             "message":format!("peers route this node's pods through {ip}"),
                             "lastTransitionTime":now,"observedGeneration":1}]}});
                api.patch_status(
                    &name,
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(st),
                )
                .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>();
    let (w, r) = tokio::join!(watched, writes);
    let took = start.elapsed();
    if let Some((a, b)) = carried {
        a.abort();
        b.abort();
    }
    w?;
    r?;
    Ok(took)
}

/// The operator: started as a process; done when a watch has seen every CIDR.
async fn operator_run(
    cp: &ControlPlane,
    client: &Client,
    nodes: usize,
    bin: &PathBuf,
) -> anyhow::Result<(Duration, u64)> {
    let log = std::fs::File::create(cp.dir().join("operator.log"))?;
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("POD_NAMESPACE", "default")
        .env("POD_NAME", "bench")
        .env("PODNET_OPS_ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()?;
    all_allocated(client, nodes, start + Duration::from_secs(600)).await?;
    let elapsed = start.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    Ok((elapsed, hwm_kib))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = opts()?;
    let mut rec = podnet_lab::bench::Record::new("bench-operator", o.nodes, "");
    for run in 1..=o.runs {
        let started = Instant::now();
        if o.operator_only {
            let (cp, client, _) = prepare(o.nodes).await?;
            let (t, hwm) = operator_run(&cp, &client, o.nodes, &o.operator).await?;
            println!(
                "run {run}/{}: operator {:.2} s, peak RSS {:.1} MiB [{:.0} s]",
                o.runs,
                t.as_secs_f64(),
                hwm as f64 / 1024.0,
                started.elapsed().as_secs_f64()
            );
            continue;
        }
        let (cp, client, uids) = prepare(o.nodes).await?;
        let f = floor_run(&client, &uids, false).await?;
        drop(cp);
        let (cp, client, uids) = prepare(o.nodes).await?;
        let fw = floor_run(&client, &uids, true).await?;
        drop(cp);
        let (cp, client, _) = prepare(o.nodes).await?;
        let (t, hwm) = operator_run(&cp, &client, o.nodes, &o.operator).await?;
        if let Ok(dir) = std::env::var("BENCH_KEEP_LOG") {
            let _ = std::fs::copy(cp.dir().join("operator.log"), dir);
        }
        drop(cp);
        let (f, fw, t) = (f.as_secs_f64(), fw.as_secs_f64(), t.as_secs_f64());
        println!(
            "run {run}/{}: floor {f:.2} s, floor with watches {fw:.2} s, operator {t:.2} s ({:.2}x, {:.2}x), peak RSS {:.1} MiB [{:.0} s]",
            o.runs,
            t / f,
            t / fw,
            hwm as f64 / 1024.0,
            started.elapsed().as_secs_f64()
        );
        rec.push("floor_s", f);
        rec.push("floor_watches_s", fw);
        rec.push("operator_s", t);
        rec.push("ratio", t / f);
        rec.push("ratio_watches", t / fw);
        rec.push("rss_mib", hwm as f64 / 1024.0);
    }
    if o.operator_only {
        return Ok(());
    }
    let m = |k: &str| podnet_lab::bench::spread(&rec.series[k]).0;
    println!(
        "nodes {}: median floor {:.2} s, with watches {:.2} s, operator {:.2} s; ratio of medians {:.2}x ({:.2}x to the floor with watches), peak RSS max {:.1} MiB",
        o.nodes,
        m("floor_s"),
        m("floor_watches_s"),
        m("operator_s"),
        m("operator_s") / m("floor_s"),
        m("operator_s") / m("floor_watches_s"),
        podnet_lab::bench::spread(&rec.series["rss_mib"]).2
    );
    rec.append_to(o.json.as_deref())?;
    Ok(())
}
