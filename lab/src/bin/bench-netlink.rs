//! bench-netlink: podnet's own synchronous netlink client (`podnet-netlink`) against the
//! `rtnetlink` crate, on the two paths where podnet talks to the kernel most (the work
//! itself is in `podnet-netlink-probe`, written once for both clients):
//!
//! - **daemon first sync**: list the node's podnet routes, then create `--routes` IPv4
//!   routes `10.x.y.0/24 via 198.18.a.b proto 233` — podnet's batched `create_routes`,
//!   rtnetlink pipelined (`--inflight` requests in flight on one connection), rtnetlink
//!   one request at a time — with `ip -batch` (the kernel floor, with its exec) beside.
//! - **podnet-cni ADD's netlink part**, for `--pods` pods: in this process (each ADD on
//!   a fresh thread in the node's namespace, as a plugin's), and as processes of their
//!   own (`probe-podnet` / `probe-rtnetlink`, exec'd through `ip netns exec <node>` as a
//!   runtime runs a plugin), with `ip netns exec <node> true` as the exec floor.
//!
//! Everything runs in network namespaces this program creates (one "node", one per pod)
//! and removes; no packet is sent. The clients alternate round by round; medians,
//! min–max and the ratio to podnet's client are printed as a Markdown table. Needs root.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use podnet_contract::ROUTE_PROTOCOL;
use podnet_netlink_probe::{BRIDGE, Client, add_pod, host_name, sync_routes};

/// Compares podnet's netlink client with rtnetlink on the daemon's route sync and the
/// plugin's ADD (see the program's doc comment). Needs root.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Routes the simulated first sync creates.
    #[arg(long, default_value_t = 5000)]
    routes: usize,
    /// Pods per CNI ADD round.
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// Rounds per client (alternating clients).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// rtnetlink requests in flight at once in the pipelined route sync.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Where probe-podnet and probe-rtnetlink are (default: beside this program).
    #[arg(long)]
    probes: Option<PathBuf>,
}

/// The namespaces this run made; removed on drop (also after a failure).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(PathBuf::from("/run/netns").join(name))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
}

/// `ip ARGS` through the lab's one command runner; its stderr becomes the error.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    Ok(podnet_lab::run_ok(&full)?)
}

/// Runs `f` on a new thread that first enters the namespace at `path` (never on a
/// thread that lives on).
fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

fn routes(n: usize) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    (0..n)
        .map(|i| {
            let dst = Ipv4Addr::new(10, (i / 250) as u8 + 1, (i % 250) as u8, 0);
            let via = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 2);
            (dst, via)
        })
        .collect()
}

fn ip_batch(node: &str, set: &[(Ipv4Addr, Ipv4Addr)], file: &Path) -> anyhow::Result<()> {
    let text: String = set
        .iter()
        .map(|(dst, via)| format!("route add {dst}/24 via {via} proto {ROUTE_PROTOCOL}\n"))
        .collect();
    std::fs::write(file, text)?;
    ip(&["-n", node, "-batch", &file.display().to_string()])?;
    Ok(())
}

fn count_routes(node: &str) -> anyhow::Result<usize> {
    Ok(ip(&[
        "-n",
        node,
        "route",
        "show",
        "proto",
        &ROUTE_PROTOCOL.to_string(),
    ])?
    .lines()
    .count())
}

fn flush_routes(node: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        node,
        "route",
        "flush",
        "proto",
        &ROUTE_PROTOCOL.to_string(),
    ])
    .map(drop)
}

fn median(v: &[f64]) -> f64 {
    podnet_lab::percentile(v, 0.5)
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}–{:.2}", min * 1e3, max * 1e3)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let probes = match &args.probes {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("the program's directory")?,
    };
    for p in ["probe-podnet", "probe-rtnetlink"] {
        if !probes.join(p).is_file() {
            bail!(
                "{} is missing: build the probes (scripts/bench-netlink does)",
                probes.join(p).display()
            );
        }
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench-netlink needs root (network namespaces, links, routes)");
    }
    let tag = format!("pnbn{}", std::process::id());
    let mut spaces = Namespaces { names: Vec::new() };
    let node_name = format!("{tag}-node");
    let node = spaces.add(&node_name)?;
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir)?;
    let batch_file = dir.join("routes.batch");
    let result = run(
        &args,
        &probes,
        &mut spaces,
        &node_name,
        &node,
        &batch_file,
        &tag,
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(spaces);
    result
}

fn run(
    args: &Args,
    probes: &Path,
    spaces: &mut Namespaces,
    n: &str,
    node: &Path,
    batch_file: &Path,
    tag: &str,
) -> anyhow::Result<()> {
    // A veth pair (both ends here) carries the next hops: this kernel may lack dummy.
    ip(&[
        "-n", n, "link", "add", "pnd0", "type", "veth", "peer", "name", "pnd0p",
    ])?;
    ip(&["-n", n, "link", "set", "pnd0p", "up"])?;
    ip(&["-n", n, "addr", "add", "198.18.0.1/16", "dev", "pnd0"])?;
    ip(&["-n", n, "link", "set", "pnd0", "up"])?;
    ip(&["-n", n, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", n, "link", "set", BRIDGE, "up"])?;

    // Daemon first sync.
    let set = routes(args.routes);
    let mut sync: [Vec<f64>; 4] = Default::default();
    eprintln!("route sync: {} routes, {} rounds", args.routes, args.runs);
    for run in 0..args.runs {
        let mut order = [0usize, 1, 2, 3];
        if run % 2 == 1 {
            order.reverse();
        }
        for which in order {
            flush_routes(n)?;
            let s = set.clone();
            let inflight = args.inflight;
            let started = Instant::now();
            match which {
                0 => in_netns(node, move || Ok(sync_routes(Client::Podnet, &s, inflight)?))?,
                1 => in_netns(node, move || {
                    Ok(sync_routes(Client::Rtnetlink, &s, inflight)?)
                })?,
                2 => in_netns(node, move || {
                    Ok(sync_routes(Client::RtnetlinkSerial, &s, inflight)?)
                })?,
                _ => ip_batch(n, &s, batch_file)?,
            }
            sync[which].push(started.elapsed().as_secs_f64());
            let have = count_routes(n)?;
            if have != args.routes {
                bail!("way {which} left {have} routes, not {}", args.routes);
            }
        }
        eprintln!(
            "  round {}/{} ({:.1} s)",
            run + 1,
            args.runs,
            sync[0].iter().sum::<f64>()
        );
    }
    flush_routes(n)?;

    // CNI ADD's netlink part: 0 podnet in-process, 1 rtnetlink in-process, 2 probe-podnet
    // exec'd, 3 probe-rtnetlink exec'd, 4 the exec floor.
    let mut pods = Vec::new();
    for i in 0..args.pods {
        pods.push(spaces.add(&format!("{tag}-p{i}"))?);
    }
    let mut add: [Vec<f64>; 5] = Default::default();
    eprintln!(
        "CNI ADD: {} pods, {} rounds of each way",
        args.pods, args.runs
    );
    for run in 0..args.runs {
        let mut order = [0usize, 1, 2, 3, 4];
        if run % 2 == 1 {
            order.reverse();
        }
        for which in order {
            for (i, pod) in pods.iter().enumerate() {
                let pod_path = pod.clone();
                let started = Instant::now();
                match which {
                    0 | 1 => {
                        let client = if which == 0 {
                            Client::Podnet
                        } else {
                            Client::Rtnetlink
                        };
                        in_netns(node, move || Ok(add_pod(client, &pod_path, i)?))?;
                    }
                    2 | 3 => {
                        let probe = probes.join(if which == 2 {
                            "probe-podnet"
                        } else {
                            "probe-rtnetlink"
                        });
                        ip(&[
                            "netns",
                            "exec",
                            n,
                            &probe.display().to_string(),
                            &pod_path.display().to_string(),
                            &i.to_string(),
                        ])?;
                    }
                    _ => {
                        ip(&["netns", "exec", n, "true"])?;
                    }
                }
                add[which].push(started.elapsed().as_secs_f64());
            }
            if which == 4 {
                continue;
            }
            // Check, then undo (untimed): every pod has its IPv6 default route.
            for (i, pod) in pods.iter().enumerate() {
                let name = pod
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let routes = ip(&["-n", &name, "-6", "route", "show", "default"])?;
                if !routes.contains("fd00:10:244:1::1") {
                    bail!(
                        "way {which}, pod {i}: no IPv6 default route ({})",
                        routes.trim()
                    );
                }
                ip(&["-n", n, "link", "del", &host_name(i)])?;
            }
        }
        eprintln!("  round {}/{}", run + 1, args.runs);
    }

    let ms = |v: &[f64]| median(v) * 1e3;
    println!("| path | way | median (ms) | min–max (ms) | vs podnet-netlink |");
    println!("| --- | --- | ---: | --- | ---: |");
    let rows: [(&str, &str, &[f64], f64); 9] = [
        (
            "route sync",
            "podnet-netlink (batched)",
            &sync[0],
            ms(&sync[0]),
        ),
        ("route sync", "rtnetlink, pipelined", &sync[1], ms(&sync[0])),
        (
            "route sync",
            "rtnetlink, one at a time",
            &sync[2],
            ms(&sync[0]),
        ),
        (
            "route sync",
            "`ip -batch` (with its exec)",
            &sync[3],
            ms(&sync[0]),
        ),
        (
            "ADD netlink part, in process",
            "podnet-netlink",
            &add[0],
            ms(&add[0]),
        ),
        (
            "ADD netlink part, in process",
            "rtnetlink (+ runtime)",
            &add[1],
            ms(&add[0]),
        ),
        (
            "ADD netlink part, exec'd",
            "probe-podnet",
            &add[2],
            ms(&add[2]),
        ),
        (
            "ADD netlink part, exec'd",
            "probe-rtnetlink",
            &add[3],
            ms(&add[2]),
        ),
        (
            "ADD netlink part, exec'd",
            "floor: `ip netns exec <node> true`",
            &add[4],
            ms(&add[2]),
        ),
    ];
    for (path, way, v, base) in rows {
        println!(
            "| {path} | {way} | {:.2} | {} | {:.2}× |",
            ms(v),
            spread(v),
            ms(v) / base
        );
    }
    let floor = ms(&add[4]);
    println!(
        "\nexec'd, minus the exec floor: probe-podnet {:.2} ms, probe-rtnetlink {:.2} ms ({:.2}×)",
        ms(&add[2]) - floor,
        ms(&add[3]) - floor,
        (ms(&add[3]) - floor) / (ms(&add[2]) - floor)
    );
    let size = |p: &str| {
        std::fs::metadata(probes.join(p))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    println!(
        "probe binaries: probe-podnet {} KiB, probe-rtnetlink {} KiB ({})",
        size("probe-podnet") / 1024,
        size("probe-rtnetlink") / 1024,
        probes.display()
    );
    println!(
        "{} routes; {} ADDs per way; {} rounds; {} in flight for pipelined rtnetlink",
        args.routes,
        add[0].len(),
        args.runs,
        args.inflight
    );
    Ok(())
}
