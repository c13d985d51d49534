//! Benchmark: podnet-daemon programming the routes of N peers (NodeRoutes on the real
//! API server) into a fresh network namespace, against the floor — `ip -batch` adding
//! the same N routes into an identical namespace. Also: the daemon's peak RSS, the CPU
//! time of a periodic check that finds nothing to change, and the time a
//! `nonMasqueradeCIDRs` edit takes to reach the firewall, against the firewall tool
//! applying the same change by hand.
//!
//! ```text
//! cargo build --release -p podnet-daemon -p podnet-lab
//! target/release/bench-daemon [--peers 5000] [--runs 3] [--firewall nftables|iptables]
//!     [--non-masq 100] [--daemon target/release/podnet-daemon]
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, Patch, PatchParams};
use podnet_crds::{NodeRoute, PodNetwork};
use podnet_lab::testing::start_with_crds;
use podnet_netlink::{Netlink, RouteChange, RouteFilter};
use serde_json::json;

fn sh(args: &[&str]) -> anyhow::Result<()> {
    podnet_lab::run_ok(args).map(drop).map_err(Into::into)
}

fn peer(i: usize) -> (String, String) {
    // Peers on the lab /16, pod CIDRs /24 out of 10.0.0.0/8.
    (
        format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250),
        format!("10.{}.{}.0/24", i / 256, i % 256),
    )
}

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("pnbd-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        for cmd in [
            "link set lo up",
            "link add lab0 type veth peer name lab1",
            "link set lab1 up",
            "link set lab0 up",
            "addr add 198.18.0.1/15 dev lab0",
        ] {
            let mut a = vec!["ip", "-n", &name];
            a.extend(cmd.split(' '));
            sh(&a)?;
        }
        Ok(Self(name))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
    /// Starts watching the namespace for `want` routes of protocol 233: the returned
    /// thread ends at the instant they are all in. It counts from route notifications
    /// (no polling dumps beside the daemon: on two cores those took CPU from the work
    /// measured); a dump confirms the count, and stands in whenever notifications stall
    /// for 100 ms (they are dropped if the socket's buffer overflows).
    fn watch_routes(
        &self,
        want: usize,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Instant>>> {
        let path = self.path();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> anyhow::Result<Instant> {
            let mut nl = Netlink::in_netns(&path)?;
            nl.subscribe_routes()?;
            let dump = |nl: &mut Netlink| -> anyhow::Result<std::collections::HashSet<IpAddr>> {
                let filter = RouteFilter {
                    ipv6: false,
                    protocol: Some(233),
                };
                Ok(nl.routes(filter)?.into_iter().map(|r| r.dst).collect())
            };
            // The first request starts the connection: subscribed from here on.
            let mut seen = dump(&mut nl)?;
            let _ = ready_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if seen.len() >= want {
                    let at = Instant::now();
                    seen = dump(&mut nl)?;
                    if seen.len() >= want {
                        return Ok(at);
                    }
                }
                ensure!(
                    Instant::now() < deadline,
                    "the daemon did not converge in 120 s"
                );
                let changes = nl.route_changes(Duration::from_millis(100))?;
                if changes.is_empty() {
                    seen = dump(&mut nl)?;
                }
                for c in changes {
                    match c {
                        RouteChange::Added(r) if r.protocol == 233 => seen.insert(r.dst),
                        RouteChange::Removed(r) if r.protocol == 233 => seen.remove(&r.dst),
                        _ => false,
                    };
                }
            }
        });
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the route watcher failed to start"))?;
        Ok(thread)
    }

    fn count(&self) -> anyhow::Result<usize> {
        let mut nl = Netlink::in_netns(&self.path())?;
        Ok(nl
            .routes(RouteFilter {
                ipv6: false,
                protocol: Some(233),
            })?
            .len())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // Flush synchronously: a namespace deleted with thousands of routes is cleaned
        // up by a kernel worker holding the RTNL lock, which would slow the next run.
        let _ = podnet_lab::probes::delete_podnet_routes(&self.0);
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

fn proc_stat(pid: u32) -> (u64, u64) {
    // (utime+stime+cutime+cstime in ticks, VmHWM in KiB)
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // after ')' fields start at 3 (state is not numeric): utime is field 14 → index 10 here.
    let cpu = f.get(10..14).map(|v| v.iter().sum()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// Resync periods (of 1 s) the idle check's CPU is measured over.
const IDLE_PERIODS: u64 = 12;

/// Times podnet-daemon's first sync of N peers' routes against `ip -batch` adding the
/// same routes, and measures its idle check and memory.
#[derive(clap::Parser)]
#[command(version)]
struct Cli {
    /// Peers (NodeRoutes), each one route.
    #[arg(long, default_value_t = 5000)]
    peers: usize,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The daemon binary to measure.
    #[arg(long, default_value = "target/release/podnet-daemon")]
    daemon: PathBuf,
    /// The daemon's `--firewall` (nftables or iptables).
    #[arg(long, default_value = "nftables")]
    firewall: String,
    /// nonMasqueradeCIDRs in the PodNetwork.
    #[arg(long, default_value_t = 100)]
    non_masq: usize,
    /// Append the results as one JSON line to this file (for bench-report).
    #[arg(long)]
    json: Option<PathBuf>,
    /// nonMasqueradeCIDRs edits timed per run.
    #[arg(long, default_value_t = 5)]
    edits: usize,
}

/// The i-th nonMasqueradeCIDR (edit `gen` of the list: the last entry changes).
fn non_masq(n: usize, generation: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i + 1 == n {
                format!("100.{}.{}.0/24", 64 + generation / 256, generation % 256)
            } else {
                format!("172.{}.{}.0/24", 16 + i / 256, i % 256)
            }
        })
        .collect()
}

/// podnet's masquerade setup in `ns`, as the firewall tool prints it.
fn firewall_dump(ns: &str, firewall: &str) -> anyhow::Result<String> {
    let args: Vec<&str> = if firewall == "nftables" {
        vec![
            "ip", "netns", "exec", ns, "nft", "list", "table", "inet", "podnet",
        ]
    } else {
        vec!["ip", "netns", "exec", ns, "iptables-nft-save", "-t", "nat"]
    };
    Ok(podnet_lab::run_ok(&args)?)
}

/// The same edit applied with the firewall tool alone (the anchor): the exempt set's
/// elements replaced in one `nft` transaction, or the whole chain in one
/// `iptables-restore --noflush`, exactly what podnet-daemon writes. Returns seconds.
fn tool_edit(ns: &str, firewall: &str, cidrs: &[String]) -> anyhow::Result<f64> {
    let script = if firewall == "nftables" {
        format!(
            "flush set inet podnet no-masq4\nadd element inet podnet no-masq4 {{ 10.0.0.0/8, {} }}\n",
            cidrs.join(", ")
        )
    } else {
        let mut s = String::from("*nat\n:PODNET-MASQ - [0:0]\n");
        for c in std::iter::once("10.0.0.0/8").chain(cidrs.iter().map(String::as_str)) {
            s.push_str(&format!(
                "-A PODNET-MASQ -s 10.255.255.0/24 -d {c} -j RETURN\n"
            ));
        }
        s.push_str("-A PODNET-MASQ -s 10.255.255.0/24 -j MASQUERADE\nCOMMIT\n");
        s
    };
    let (tool, args): (&str, Vec<&str>) = if firewall == "nftables" {
        ("nft", vec!["-f", "-"])
    } else {
        ("iptables-nft-restore", vec!["--noflush"])
    };
    let start = Instant::now();
    let out = podnet_lab::output_with_input(
        Command::new("ip")
            .args(["netns", "exec", ns, tool])
            .args(&args),
        &script,
    )?;
    let took = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        peers,
        runs,
        daemon,
        json,
        firewall,
        non_masq: n_masq,
        edits,
    } = clap::Parser::parse();
    ensure!(
        firewall == "nftables" || firewall == "iptables",
        "--firewall is nftables or iptables"
    );
    ensure!(n_masq >= 1, "--non-masq must be at least 1");
    ensure!(
        daemon.is_file(),
        "{} missing: cargo build --release -p podnet-daemon",
        daemon.display()
    );
    let cp = start_with_crds().await?;
    let client = cp.client().await?;
    let pn_api = Api::<PodNetwork>::all(client.clone());
    let set_non_masq = |generation: usize| {
        let pn_api = pn_api.clone();
        async move {
            let pn = json!({"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"default"},
                "spec":{"cidrs":["10.0.0.0/8"],"masquerade":{"enabled":true,"nonMasqueradeCIDRs": non_masq(n_masq, generation)}}});
            pn_api
                .patch(
                    "default",
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(pn),
                )
                .await
                .map(drop)
        }
    };
    set_non_masq(0).await?;
    let api: Api<NodeRoute> = Api::all(client.clone());
    let mut all: Vec<usize> = (0..peers).collect();
    all.push(usize::MAX); // the daemon's own node
    stream::iter(all)
        .map(|i| {
            let api = api.clone();
            async move {
                let (name, ip, cidr) = if i == usize::MAX {
                    ("self".to_string(), "198.18.0.1".to_string(), "10.255.255.0/24".to_string())
                } else {
                    let (ip, cidr) = peer(i);
                    (format!("peer-{i}"), ip, cidr)
                };
                let nr = json!({"apiVersion":"podnet.dev/v1alpha1","kind":"NodeRoute","metadata":{"name":name},"spec":{"nodeName":name,"podNetwork":"default"}});
                api.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(nr)).await?;
                // As the operator writes it: Allocated=True vouches for the CIDRs.
                let st = json!({"apiVersion":"podnet.dev/v1alpha1","kind":"NodeRoute","metadata":{"name":name},"status":{"nodeIPs":[ip],"podCIDRs":[cidr],
                    "conditions":[{"type":"Allocated","status":"True","reason":"Allocated","message":"bench","lastTransitionTime":"2026-01-01T00:00:00Z"}]}});
                api.patch_status(&name, &PatchParams::apply("bench").force(), &Patch::Apply(st)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let batch = std::env::temp_dir().join(format!("pnbd-{}.batch", std::process::id()));
    let text: String = (0..peers)
        .map(|i| {
            let (ip, cidr) = peer(i);
            format!("route add {cidr} via {ip} proto 233\n")
        })
        .collect();
    std::fs::write(&batch, text)?;
    // The same routes through nexthop objects (one per peer, `route add … nhid`): the
    // kernel's linear path. A plain gateway route's fib_info is hashed by its device
    // alone, so every new one walks all the others on that device (quadratic in the
    // peers); a nexthop object's id is in the hash.
    let batch_nh = std::env::temp_dir().join(format!("pnbd-{}-nh.batch", std::process::id()));
    let text: String = (0..peers)
        .map(|i| {
            format!(
                "nexthop add id {} via {} dev lab0 proto 233\n",
                i + 1,
                peer(i).0
            )
        })
        .chain((0..peers).map(|i| format!("route add {} nhid {} proto 233\n", peer(i).1, i + 1)))
        .collect();
    std::fs::write(&batch_nh, text)?;
    let mut floors_nh = Vec::new();
    let (mut floors, mut daemons) = (Vec::new(), Vec::new());
    let (mut hwm_max, mut check_ms, mut rss) = (0u64, Vec::new(), Vec::new());
    let (mut edit_daemon, mut edit_tool) = (Vec::new(), Vec::new());
    let mut generation = 0;
    for run in 1..=runs {
        let ns = Ns::new("floor")?;
        let start = Instant::now();
        sh(&["ip", "-n", &ns.0, "-batch", &batch.display().to_string()])?;
        let floor = start.elapsed();
        ensure!(ns.count()? == peers);
        drop(ns);
        let ns = Ns::new("floornh")?;
        let start = Instant::now();
        sh(&["ip", "-n", &ns.0, "-batch", &batch_nh.display().to_string()])?;
        floors_nh.push(start.elapsed().as_secs_f64());
        ensure!(ns.count()? == peers);
        drop(ns);
        let ns = Ns::new("daemon")?;
        let conf_dir = std::env::temp_dir().join(format!("pnbd-cni-{}", std::process::id()));
        let converged = ns.watch_routes(peers)?;
        let start = Instant::now();
        let mut child = Command::new(&daemon)
            .args([
                "run",
                "--node-name",
                "self",
                "--resync",
                "1",
                "--ops-addr",
                "127.0.0.1:0",
            ])
            .env(
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .arg("--netns")
            .arg(ns.path())
            .arg("--cni-conf-dir")
            .arg(&conf_dir)
            // Nothing on the host's own paths.
            .arg("--state-dir")
            .arg(conf_dir.join("state"))
            .arg("--ipam-dir")
            .arg(conf_dir.join("ipam"))
            .arg("--firewall")
            .arg(&firewall)
            .args(["--network-policy", "false"])
            .env("KUBECONFIG", cp.kubeconfig())
            .stdin(Stdio::null())
            .spawn()?;
        let at = tokio::task::spawn_blocking(move || converged.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the route watcher panicked"))??;
        let took = at - start;
        // Idle checks: CPU over 12 periods of 1 s with nothing to change. The daemon
        // reads the routing table at one check in six when route notifications say
        // nothing changed (ROUTE_READ_EVERY): two whole cycles, so the figure is the
        // cost per check averaged the way a node pays it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (c0, _) = proc_stat(child.id());
        tokio::time::sleep(Duration::from_secs(IDLE_PERIODS)).await;
        let (c1, hwm) = proc_stat(child.id());
        let tick_ms = 1000.0 / 100.0; // USER_HZ
        let per_check = (c1 - c0) as f64 * tick_ms / IDLE_PERIODS as f64;
        // nonMasqueradeCIDRs edits: from the PATCH to the rule in the kernel.
        let anchor_ns = Ns::new("anchor")?;
        let dump = firewall_dump(&ns.0, &firewall)?;
        if firewall == "nftables" {
            podnet_lab::output_with_input(
                Command::new("ip").args(["netns", "exec", &anchor_ns.0, "nft", "-f", "-"]),
                &dump,
            )?;
        }
        for _ in 0..edits {
            generation += 1;
            let want = non_masq(n_masq, generation);
            let marker = want[n_masq - 1].clone();
            let start = Instant::now();
            set_non_masq(generation).await?;
            loop {
                if firewall_dump(&ns.0, &firewall)?.contains(&marker) {
                    break;
                }
                ensure!(
                    start.elapsed() < Duration::from_secs(30),
                    "the edit did not arrive in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            edit_daemon.push(start.elapsed().as_secs_f64());
            edit_tool.push(tool_edit(&anchor_ns.0, &firewall, &want)?);
        }
        drop(anchor_ns);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&conf_dir);
        println!(
            "run {run}: ip -batch {:.3} s (through nexthop objects {:.3} s), daemon {:.3} s ({:.2}x), idle check {per_check:.1} ms CPU, peak RSS {:.1} MiB",
            floor.as_secs_f64(),
            floors_nh[floors_nh.len() - 1],
            took.as_secs_f64(),
            took.as_secs_f64() / floor.as_secs_f64(),
            hwm as f64 / 1024.0
        );
        floors.push(floor.as_secs_f64());
        daemons.push(took.as_secs_f64());
        check_ms.push(per_check);
        hwm_max = hwm_max.max(hwm);
        rss.push(hwm as f64 / 1024.0);
    }
    let _ = std::fs::remove_file(&batch);
    let _ = std::fs::remove_file(&batch_nh);
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let (f, d) = (med(floors.clone()), med(daemons.clone()));
    println!(
        "peers {peers}, firewall {firewall}: median ip -batch {f:.3} s, median daemon {d:.3} s, ratio {:.2}x, idle check median {:.1} ms CPU (spread {:.1}-{:.1}), peak RSS max {:.1} MiB",
        d / f,
        med(check_ms.clone()),
        spread(&check_ms).0,
        spread(&check_ms).1,
        hwm_max as f64 / 1024.0
    );
    let (ed, et) = (med(edit_daemon.clone()), med(edit_tool.clone()));
    println!(
        "nonMasqueradeCIDRs edit ({n_masq} CIDRs, {} edits): PATCH to kernel median {:.1} ms (spread {:.1}-{:.1}); {} alone median {:.1} ms (spread {:.1}-{:.1}); ratio {:.1}x",
        edit_daemon.len(),
        ed * 1e3,
        spread(&edit_daemon).0 * 1e3,
        spread(&edit_daemon).1 * 1e3,
        if firewall == "nftables" {
            "nft -f"
        } else {
            "iptables-nft-restore"
        },
        et * 1e3,
        spread(&edit_tool).0 * 1e3,
        spread(&edit_tool).1 * 1e3,
        ed / et
    );
    let mut rec = podnet_lab::bench::Record::new("bench-daemon", peers, &firewall);
    rec.set(
        "ratio",
        floors.iter().zip(&daemons).map(|(f, d)| d / f).collect(),
    );
    rec.set("floor_s", floors);
    rec.set("floor_nexthops_s", floors_nh);
    rec.set("daemon_s", daemons);
    rec.set("idle_check_ms", check_ms);
    rec.set("rss_mib", rss);
    rec.set("edit_ms", edit_daemon.iter().map(|v| v * 1e3).collect());
    rec.set("edit_tool_ms", edit_tool.iter().map(|v| v * 1e3).collect());
    rec.append_to(json.as_deref())?;
    Ok(())
}
