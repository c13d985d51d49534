//! Benchmark: podnet-cni ADD and DEL latency per pod against the reference `bridge` +
//! `host-local` plugins (Debian's containernetworking-plugins), in the same harness and
//! the same run, plus the kernel's floor for DEL (`ip link del` of an identical veth).
//!
//! ```text
//! scripts/build-cni.sh
//! cargo build --release -p podnet-lab
//! target/release/bench-cni [--pods 100] [--concurrent 32] [--plugin PATH] [--ref-dir /usr/lib/cni]
//!     [--preload 0] [--harness direct|ip-netns] [--no-hostport] [--json results.jsonl]
//! ```
//!
//! The program re-executes itself inside a node namespace it creates. With the
//! `direct` harness every plugin is exec'd directly there, as a runtime does; with
//! `ip-netns` each is exec'd through `ip netns exec <node>` (a mount namespace, a sysfs
//! remount and one more exec per call), and that path's own cost — `ip netns exec
//! <node> true`, timed right before each sequential ADD, its median beside each
//! plugin subtracted from that plugin's medians — is taken off. `--preload N`
//! attaches N pods with each plugin first (a node already holding N pods). Pod
//! namespaces are created outside the timed part. Medians, p90 and ratios are printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

struct Opts {
    pods: usize,
    concurrent: usize,
    plugin: PathBuf,
    ref_dir: PathBuf,
    preload: usize,
    /// `Some(node)`: exec every plugin through `ip netns exec <node>`.
    via_ip_netns: Option<String>,
    hostport: bool,
    json: Option<PathBuf>,
}

/// Times podnet-cni ADD and DEL against the reference bridge + host-local plugins and
/// the kernel's own floor, sequentially and concurrently.
#[derive(clap::Parser)]
#[command(version)]
struct Cli {
    /// Pods per round.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// ADDs in flight at once in the concurrent round.
    #[arg(long, default_value_t = 32)]
    concurrent: usize,
    /// The podnet-cni binary to measure (the static build nodes install).
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/podnet-cni"
    )]
    plugin: PathBuf,
    /// The reference plugins (Debian's containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    ref_dir: PathBuf,
    /// Pods each plugin attaches before the measured ones (a node already holding them).
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// How plugins are exec'd: `direct` (as a runtime does) or `ip-netns` (through `ip
    /// netns exec <node>`, that path's own cost measured and subtracted).
    #[arg(long, default_value = "direct")]
    harness: String,
    /// Skip the hostPort part.
    #[arg(long)]
    no_hostport: bool,
    /// Append the results as one JSON line to this file (for bench-report).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run inside the benchmark's node namespace.
    #[arg(long, hide = true)]
    inner: bool,
    /// Internal: the node namespace's name.
    #[arg(long, hide = true)]
    node: Option<String>,
}

fn opts() -> anyhow::Result<Opts> {
    let cli: Cli = clap::Parser::parse();
    ensure!(
        cli.harness == "direct" || cli.harness == "ip-netns",
        "--harness is direct or ip-netns"
    );
    ensure!(
        cli.pods + cli.preload < 1000,
        "--pods plus --preload must stay under 1,000 (the pod CIDR is a /22)"
    );
    let mut o = Opts {
        pods: cli.pods,
        concurrent: cli.concurrent,
        plugin: cli.plugin,
        ref_dir: cli.ref_dir,
        preload: cli.preload,
        via_ip_netns: (cli.harness == "ip-netns").then(|| cli.node.unwrap_or_default()),
        hostport: !cli.no_hostport,
        json: cli.json,
    };
    ensure!(
        o.plugin.is_file(),
        "{} not found: run scripts/build-cni.sh",
        o.plugin.display()
    );
    ensure!(
        o.ref_dir.join("bridge").is_file(),
        "reference plugins missing in {}: apt-get install containernetworking-plugins",
        o.ref_dir.display()
    );
    o.plugin = std::fs::canonicalize(&o.plugin)?;
    Ok(o)
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    podnet_lab::run_ok(args).map(drop).map_err(Into::into)
}

#[derive(Clone)]
struct Plugin {
    label: &'static str,
    bin: PathBuf,
    cni_path: PathBuf,
    conf: String,
}

fn invoke(p: &Plugin, cmd: &str, cid: &str, netns: &str) -> anyhow::Result<Duration> {
    invoke_with(p, &p.conf, cmd, cid, netns).map(|(took, _)| took)
}

/// The node namespace to exec plugins through with `ip netns exec` (the ip-netns
/// harness), set once at the start of the inner run.
static VIA_IP_NETNS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The command that runs `bin`: itself, or `ip netns exec <node> bin`.
fn command_for(bin: &std::path::Path) -> Command {
    match VIA_IP_NETNS.get().cloned().flatten() {
        Some(node) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &node]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The harness's own cost per call: `true` exec'd the way plugins are, `n` times.
fn harness_floor(n: usize) -> anyhow::Result<Vec<Duration>> {
    let t = PathBuf::from("/bin/true");
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let st = command_for(&t)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .status()?;
            ensure!(st.success(), "true failed");
            Ok(start.elapsed())
        })
        .collect()
}

/// One exec of `p` with `conf` on stdin: its time and stdout.
fn invoke_with(
    p: &Plugin,
    conf: &str,
    cmd: &str,
    cid: &str,
    netns: &str,
) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let mut child = command_for(&p.bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &p.cni_path)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{} {cmd} {cid}: {}{}",
        p.label,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// A conflist as libcni runs it: ADD through each plugin in order, each given the
/// previous result; DEL in reverse order. Every plugin gets `runtime` as
/// `runtimeConfig`. Returns the whole chain's time.
fn invoke_chain(
    chain: &[Plugin],
    cmd: &str,
    cid: &str,
    netns: &str,
    runtime: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut prev: Option<serde_json::Value> = None;
    let order: Vec<&Plugin> = if cmd == "DEL" {
        chain.iter().rev().collect()
    } else {
        chain.iter().collect()
    };
    for p in order {
        let mut conf: serde_json::Value = serde_json::from_str(&p.conf)?;
        conf["runtimeConfig"] = runtime.clone();
        if let Some(prev) = &prev {
            conf["prevResult"] = prev.clone();
        }
        let (took, out) = invoke_with(p, &conf.to_string(), cmd, cid, netns)?;
        total += took;
        if cmd == "ADD" {
            prev = Some(serde_json::from_str(&out)?);
        }
    }
    Ok(total)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Removes a directory when dropped, also on an early error return.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Pods(Vec<String>);

impl Pods {
    fn new(tag: &str, n: usize) -> anyhow::Result<Self> {
        let names: Vec<String> = (0..n)
            .map(|i| format!("pnb-{tag}-{}-{i}", std::process::id()))
            .collect();
        for name in &names {
            sh(&["ip", "netns", "add", name])?;
        }
        Ok(Self(names))
    }
    fn path(&self, i: usize) -> String {
        format!("/var/run/netns/{}", self.0[i])
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// One plugin's timings.
#[derive(Default)]
struct Rounds {
    seq_add: Vec<Duration>,
    seq_del: Vec<Duration>,
    par_add: Vec<Duration>,
    par_del: Vec<Duration>,
    /// ip-netns harness: its own cost, timed right before each sequential ADD …
    add_harness: Vec<Duration>,
    /// … and right before each sequential DEL.
    del_harness: Vec<Duration>,
    /// With a kernel floor: its removals, each timed beside one sequential DEL.
    floor_del: Vec<Duration>,
}

/// Sequential and concurrent ADD/DEL latencies of one plugin, on a node already
/// holding `o.preload` of its pods (removed afterwards).
fn measure(p: &Plugin, o: &Opts, floor: Option<&mut KernelFloor>) -> anyhow::Result<Rounds> {
    let held = Pods::new(&format!("{}h", p.label), o.preload)?;
    for i in 0..o.preload {
        invoke(p, "ADD", &format!("h{i}"), &held.path(i))?;
    }
    let result = measure_held(p, o, floor);
    for i in 0..o.preload {
        invoke(p, "DEL", &format!("h{i}"), &held.path(i))?;
    }
    result
}

fn measure_held(
    p: &Plugin,
    o: &Opts,
    mut floor: Option<&mut KernelFloor>,
) -> anyhow::Result<Rounds> {
    let pods = Pods::new(p.label, o.pods)?;
    let mut r = Rounds::default();
    // The harness's cost is timed beside the calls it is subtracted from, not in a run
    // of its own: this machine's speed drifts from minute to minute, and a floor
    // measured apart once moved the difference by more than podnet-cni's whole ADD.
    let via_ip_netns = o.via_ip_netns.is_some();
    for i in 0..o.pods {
        if via_ip_netns {
            r.add_harness.extend(harness_floor(1)?);
        }
        r.seq_add
            .push(invoke(p, "ADD", &format!("s{i}"), &pods.path(i))?);
    }
    for i in 0..o.pods {
        if via_ip_netns {
            r.del_harness.extend(harness_floor(1)?);
        }
        let del = || invoke(p, "DEL", &format!("s{i}"), &pods.path(i));
        match floor.as_deref_mut() {
            None => r.seq_del.push(del()?),
            Some(floor) if i % 2 == 0 => {
                r.seq_del.push(del()?);
                r.floor_del.push(floor.remove_next()?);
            }
            Some(floor) => {
                r.floor_del.push(floor.remove_next()?);
                r.seq_del.push(del()?);
            }
        }
    }
    if o.concurrent == 0 {
        return Ok(r);
    }
    let batch = Pods::new(&format!("{}c", p.label), o.concurrent)?;
    let run_all = |cmd: &'static str| -> anyhow::Result<Vec<Duration>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..o.concurrent)
                .map(|i| {
                    let path = batch.path(i);
                    s.spawn(move || invoke(p, cmd, &format!("c{i}"), &path))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
                })
                .collect()
        })
    };
    r.par_add = run_all("ADD")?;
    r.par_del = run_all("DEL")?;
    Ok(r)
}

/// The kernel floor for DEL: `ip link del` of a veth pair like the plugins make — host
/// end up on a bridge that carries the gateway address, in hairpin mode; pod end up in
/// its own namespace with an address and a default route through the gateway. (Until
/// 2026-12-04 the pod end had no address or route: removing them is part of what the
/// kernel does for either plugin's DEL, and the floor left it out; and each pair was
/// removed right after it was made, not one after another as the plugins' DELs run.)
///
/// All pairs are made first; each is then removed right beside one of podnet-cni's
/// sequential DELs (alternating which goes first). A veth removal on a VM takes one of
/// two times a few milliseconds apart (how many RCU grace periods it waits out), and the
/// mix drifts over minutes: floor and plugin timed in separate phases could land in
/// different modes, timed in pairs they see the same machine.
struct KernelFloor {
    pods: Pods,
    preload: usize,
    removed: usize,
}

impl KernelFloor {
    fn new(n: usize, preload: usize) -> anyhow::Result<Self> {
        let floor = Self {
            pods: Pods::new("floor", n)?,
            preload,
            removed: 0,
        };
        sh(&["ip", "link", "add", "pnbfbr", "type", "bridge"])?;
        sh(&["ip", "addr", "add", "10.252.0.1/16", "dev", "pnbfbr"])?;
        sh(&["ip", "link", "set", "pnbfbr", "up"])?;
        // As many other ports on the bridge as the plugins' nodes hold pods.
        for i in 0..preload {
            let name = format!("pnbh{i}");
            sh(&[
                "ip",
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("pnbp{i}"),
            ])?;
            sh(&["ip", "link", "set", &name, "master", "pnbfbr", "up"])?;
        }
        for (i, ns) in floor.pods.0.iter().enumerate() {
            let name = format!("pnbf{i}");
            sh(&[
                "ip", "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            sh(&["ip", "link", "set", &name, "master", "pnbfbr", "up"])?;
            sh(&[
                "ip",
                "link",
                "set",
                &name,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])?;
            let k = i + 2;
            let addr = format!("10.252.{}.{}/16", (k >> 8) & 255, k & 255);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                "10.252.0.1",
                "dev",
                "eth0",
            ])?;
        }
        Ok(floor)
    }

    /// Removes the next pair: `ip link del` of its host end, timed, exec'd the way the
    /// plugins are (through `ip netns exec` in that harness, whose cost the caller
    /// subtracts from the floor as from the plugin's DELs).
    fn remove_next(&mut self) -> anyhow::Result<Duration> {
        ensure!(self.removed < self.pods.0.len(), "no floor pair left");
        let name = format!("pnbf{}", self.removed);
        let start = Instant::now();
        let st = command_for(Path::new("ip"))
            .args(["link", "del", &name])
            .status()?;
        let took = start.elapsed();
        ensure!(st.success(), "ip link del {name} failed");
        self.removed += 1;
        Ok(took)
    }
}

impl Drop for KernelFloor {
    fn drop(&mut self) {
        for i in self.removed..self.pods.0.len() {
            let _ = sh(&["ip", "link", "del", &format!("pnbf{i}")]);
        }
        for i in 0..self.preload {
            let _ = sh(&["ip", "link", "del", &format!("pnbh{i}")]);
        }
        let _ = sh(&["ip", "link", "del", "pnbfbr"]);
    }
}

fn inner(o: &Opts) -> anyhow::Result<()> {
    let _ = VIA_IP_NETNS.set(o.via_ip_netns.clone());
    sh(&["ip", "link", "set", "lo", "up"])?;
    // Both plugins keep their leases on tmpfs, as podnet does by default (/run).
    let dir = PathBuf::from(format!("/dev/shm/pnb-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let podnet = Plugin {
        label: "podnet",
        bin: o.plugin.clone(),
        cni_path: o.plugin.parent().map(PathBuf::from).unwrap_or_default(),
        conf: serde_json::json!({"cniVersion": "1.0.0", "name": "podnet", "type": "podnet-cni", "bridge": "pnb0",
            "podCIDRs": ["10.251.0.0/22"], "mtu": 1500, "dataDir": dir.join("podnet")}).to_string(),
    };
    let reference = Plugin {
        label: "ref",
        bin: o.ref_dir.join("bridge"),
        cni_path: o.ref_dir.clone(),
        conf: serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "refb0",
            "isGateway": true, "hairpinMode": true, "mtu": 1500,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/22"}]], "dataDir": dir.join("ref")}}).to_string(),
    };
    // Warm-up (page cache, bridge creation) outside the measurement.
    for p in [&reference, &podnet] {
        let w = Pods::new(&format!("{}w", p.label), 1)?;
        invoke(p, "ADD", "warm", &w.path(0))?;
        invoke(p, "DEL", "warm", &w.path(0))?;
    }
    let mut r = measure(&reference, o, None)?;
    let mut kernel_floor = KernelFloor::new(o.pods, o.preload)?;
    let mut p = measure(&podnet, o, Some(&mut kernel_floor))?;
    drop(kernel_floor);
    // The ip-netns harness's own cost, timed beside each plugin's sequential ADDs and
    // DELs and subtracted from that plugin's medians (the ADD one also from the
    // concurrent rounds').
    let harness = |v: &mut Vec<Duration>| if v.is_empty() { 0.0 } else { pct(v, 0.5) };
    let (r_ha, p_ha) = (harness(&mut r.add_harness), harness(&mut p.add_harness));
    let (r_hd, p_hd) = (harness(&mut r.del_harness), harness(&mut p.del_harness));
    let mut rec = podnet_lab::bench::Record::new(
        "bench-cni",
        o.preload,
        if o.via_ip_netns.is_some() {
            "ip-netns"
        } else {
            "direct"
        },
    );
    if o.via_ip_netns.is_some() {
        println!(
            "harness: ip netns exec <node> true, timed before each sequential call: median {r_ha:.2} / {r_hd:.2} ms beside the reference's ADDs / DELs, {p_ha:.2} / {p_hd:.2} ms beside podnet-cni's (each subtracted from its own medians below; podnet-cni's DEL one from the kernel floor's too, exec'd the same way)"
        );
        rec.set("harness_ms", vec![p_ha, r_ha, p_hd, r_hd]);
    }
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "median ms (p90)", "reference", "podnet", "ratio", ""
    );
    let ms = |v: &[Duration], h: f64| v.iter().map(|d| d.as_secs_f64() * 1e3 - h).collect();
    for (key, name, rv, pv, hr, hp) in [
        (
            "add",
            format!("ADD, {} sequential", o.pods),
            &mut r.seq_add,
            &mut p.seq_add,
            r_ha,
            p_ha,
        ),
        (
            "add_concurrent",
            format!("ADD, {} concurrent", o.concurrent),
            &mut r.par_add,
            &mut p.par_add,
            r_ha,
            p_ha,
        ),
        (
            "del",
            format!("DEL, {} sequential", o.pods),
            &mut r.seq_del,
            &mut p.seq_del,
            r_hd,
            p_hd,
        ),
        (
            "del_concurrent",
            format!("DEL, {} concurrent", o.concurrent),
            &mut r.par_del,
            &mut p.par_del,
            r_ha,
            p_ha,
        ),
    ] {
        if rv.is_empty() {
            continue;
        }
        let (rm, pm) = (pct(rv, 0.5) - hr, pct(pv, 0.5) - hp);
        println!(
            "{name:<28} {rm:>6.2} ({:>5.2}) {pm:>6.2} ({:>5.2}) {:>7.2}x",
            pct(rv, 0.9) - hr,
            pct(pv, 0.9) - hp,
            pm / rm
        );
        rec.set(&format!("{key}_ref_ms"), ms(rv, hr));
        rec.set(&format!("{key}_podnet_ms"), ms(pv, hp));
    }
    let fm = pct(&mut p.floor_del, 0.5) - p_hd;
    let pdm = pct(&mut p.seq_del, 0.5) - p_hd;
    println!(
        "kernel floor (ip link del of a veth, each beside one podnet-cni DEL): median {fm:.2} ms; podnet DEL / floor = {:.2}x",
        pdm / fm
    );
    rec.set("del_floor_ms", ms(&p.floor_del, p_hd));
    rec.append_to(o.json.as_deref())?;
    if !o.hostport {
        return Ok(());
    }
    mapped(o, &dir)?;
    Ok(())
}

/// ADD and DEL with one hostPort per pod: the reference chain `bridge` + `portmap`
/// (iptables) against podnet-cni in each firewall, sequentially, each pod its own port.
fn mapped(o: &Opts, dir: &std::path::Path) -> anyhow::Result<()> {
    let bridge = Plugin {
        label: "ref-bridge",
        bin: o.ref_dir.join("bridge"),
        cni_path: o.ref_dir.clone(),
        conf: serde_json::json!({"cniVersion": "1.0.0", "name": "refpm", "type": "bridge", "bridge": "refpm0",
            "isGateway": true, "hairpinMode": true, "mtu": 1500,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.249.0.0/24"}]], "dataDir": dir.join("refpm")}}).to_string(),
    };
    let portmap = Plugin {
        label: "ref-portmap",
        bin: o.ref_dir.join("portmap"),
        cni_path: o.ref_dir.clone(),
        conf: serde_json::json!({"cniVersion": "1.0.0", "name": "refpm", "type": "portmap",
            "capabilities": {"portMappings": true}, "snat": true})
        .to_string(),
    };
    let podnet = |firewall: &'static str, cidr: &str, bridge: &str| {
        Plugin {
        label: firewall,
        bin: o.plugin.clone(),
        cni_path: o.plugin.parent().map(PathBuf::from).unwrap_or_default(),
        conf: serde_json::json!({"cniVersion": "1.0.0", "name": format!("pm-{firewall}"), "type": "podnet-cni", "bridge": bridge,
            "podCIDRs": [cidr], "mtu": 1500, "dataDir": dir.join(firewall), "firewall": firewall,
            "capabilities": {"portMappings": true}}).to_string(),
    }
    };
    let runs: Vec<(&str, Vec<Plugin>)> = vec![
        ("bridge + portmap", vec![bridge, portmap]),
        (
            "podnet, nftables",
            vec![podnet("nftables", "10.248.0.0/24", "pnpm0")],
        ),
        (
            "podnet, iptables-nft",
            vec![podnet("iptables-nft", "10.247.0.0/24", "pnpm1")],
        ),
    ];
    let mut rows = Vec::new();
    for (label, chain) in &runs {
        let pods = Pods::new(&format!("pm{}", rows.len()), o.pods)?;
        let runtime = |i: usize| serde_json::json!({"portMappings": [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}]});
        // Warm-up outside the measurement.
        invoke_chain(chain, "ADD", "pmwarm", &pods.path(0), &runtime(9999))?;
        invoke_chain(chain, "DEL", "pmwarm", &pods.path(0), &runtime(9999))?;
        let mut add = Vec::new();
        let mut del = Vec::new();
        for i in 0..o.pods {
            add.push(invoke_chain(
                chain,
                "ADD",
                &format!("m{i}"),
                &pods.path(i),
                &runtime(i),
            )?);
        }
        for i in 0..o.pods {
            del.push(invoke_chain(
                chain,
                "DEL",
                &format!("m{i}"),
                &pods.path(i),
                &runtime(i),
            )?);
        }
        rows.push((label.to_string(), add, del));
    }
    println!(
        "\none hostPort per pod, {} pods sequential: median ms (p90)",
        o.pods
    );
    let (mut ra, mut rd) = (rows[0].1.clone(), rows[0].2.clone());
    let (ram, rdm) = (pct(&mut ra, 0.5), pct(&mut rd, 0.5));
    for (label, mut add, mut del) in rows {
        let (am, dm) = (pct(&mut add, 0.5), pct(&mut del, 0.5));
        println!(
            "{label:<24} ADD {am:>6.2} ({:>5.2}) {:>5.2}x   DEL {dm:>6.2} ({:>5.2}) {:>5.2}x",
            pct(&mut add, 0.9),
            am / ram,
            pct(&mut del, 0.9),
            dm / rdm
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let o = opts()?;
    if std::env::args().any(|a| a == "--inner") {
        return inner(&o);
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "bench-cni needs root (network namespaces)"
    );
    let node = format!("pnb-node-{}", std::process::id());
    sh(&["ip", "netns", "add", &node])?;
    let me = std::env::current_exe()?;
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        node.clone(),
        me.display().to_string(),
        "--inner".into(),
    ];
    args.extend([
        "--pods".into(),
        o.pods.to_string(),
        "--concurrent".into(),
        o.concurrent.to_string(),
    ]);
    args.extend([
        "--plugin".into(),
        o.plugin.display().to_string(),
        "--ref-dir".into(),
        o.ref_dir.display().to_string(),
        "--preload".into(),
        o.preload.to_string(),
        "--harness".into(),
        if o.via_ip_netns.is_some() {
            "ip-netns"
        } else {
            "direct"
        }
        .into(),
        "--node".into(),
        node.clone(),
    ]);
    if !o.hostport {
        args.push("--no-hostport".into());
    }
    if let Some(j) = &o.json {
        args.extend([
            "--json".into(),
            std::path::absolute(j)?.display().to_string(),
        ]);
    }
    let status = Command::new("ip")
        .args(&args)
        .env(
            podnet_lab::bench::COMMAND_ENV,
            podnet_lab::bench::command_line("bench-cni"),
        )
        .status();
    let _ = sh(&["ip", "netns", "del", &node]);
    ensure!(status?.success(), "the benchmark failed");
    Ok(())
}
