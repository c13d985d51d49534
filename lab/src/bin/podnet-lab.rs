//! `podnet-lab`: bring up, inspect and tear down a local podnet cluster.
//!
//! By default the nodes are real Kubernetes nodes (containerd, kubelet and kube-proxy
//! each), podnet is installed with its Helm chart and runs as pods; `--netns` brings up
//! the lighter lab of network namespaces whose daemons run on the host (the fault
//! suite's).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use podnet_lab::Tools;
use podnet_lab::cluster::{self, DEFAULT_STATE_DIR, LabState};
use podnet_lab::kube_node::ProxyMode;
use podnet_lab::real::{self, RealLab, RealOptions};
use podnet_lab::{conformance, policy_conformance};

/// A local podnet cluster on this machine, in network namespaces: nothing leaves it.
#[derive(Parser)]
#[command(name = "podnet-lab", version)]
struct Cli {
    /// Where the lab keeps its state, logs and files.
    #[arg(long, env = "PODNET_LAB_STATE", default_value = DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Brings a lab up, prints its state and the connectivity matrix, and leaves it
    /// running.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The network-namespace lab (daemons on the host, no kubelet) instead of real
        /// nodes.
        #[arg(long)]
        netns: bool,
        /// kube-proxy modes, given to the nodes in turn (real nodes only).
        #[arg(long, value_delimiter = ',', default_value = "nftables")]
        proxy_modes: Vec<String>,
        /// podnet's and the lab's images (OCI archives); scripts/lab builds them.
        #[arg(long, env = "PODNET_LAB_IMAGES", default_value = "target/images")]
        images: PathBuf,
    },
    /// Prints the report of the running lab again.
    Status,
    /// Runs Kubernetes' e2e suite (network selection) against the running real-node lab,
    /// writes the JUnit report and a markdown summary, and fails if any selected test
    /// failed or none passed.
    Conformance {
        /// ginkgo --focus (default: podnet's conformance selection).
        #[arg(long, default_value = conformance::FULL_FOCUS)]
        focus: String,
        /// ginkgo --skip (default: what the selection cannot run here, see
        /// docs/conformance.md).
        #[arg(long)]
        skip: Option<String>,
        /// Parallel ginkgo processes.
        #[arg(long, default_value_t = 4)]
        procs: usize,
        /// Where junit.xml, e2e.log and summary.md go.
        #[arg(long, default_value = "target/conformance")]
        report_dir: PathBuf,
        /// Time limit of the whole run, in minutes.
        #[arg(long, default_value_t = 90)]
        timeout_minutes: u64,
    },
    /// Runs the network-policy-api conformance suite (ClusterNetworkPolicy) against the
    /// running real-node lab, writes its events and a markdown summary, and fails if
    /// any check failed for a reason other than this kernel's missing SCTP, or none
    /// passed.
    PolicyConformance {
        /// Only the tests matching this `-test.run` pattern
        /// (`TestConformance/CNPAdminTierIngressTCP`).
        #[arg(long)]
        run: Option<String>,
        /// Where events.json, stderr.log and summary.md go.
        #[arg(long, default_value = "target/policy-conformance")]
        report_dir: PathBuf,
        /// Time limit of the whole run, in minutes.
        #[arg(long, default_value_t = 60)]
        timeout_minutes: u64,
    },
    /// Stops every process and removes every namespace, link, cgroup, mount and file
    /// the lab created.
    Down,
}

fn progress(what: &str, took: Duration) {
    eprintln!("==> {what} ({:.1}s)", took.as_secs_f64());
}

/// Which lab the state directory holds.
enum Running {
    Netns(LabState),
    Real(RealLab),
}

fn running(dir: &Path) -> Option<Running> {
    if let Ok(lab) = real::load(dir) {
        return Some(Running::Real(lab));
    }
    cluster::load(dir).ok().map(Running::Netns)
}

async fn report_netns(state: &LabState) -> anyhow::Result<bool> {
    let tools = Tools::locate()?;
    let out = std::process::Command::new(&tools.kubectl)
        .arg("--kubeconfig")
        .arg(&state.control_plane.kubeconfig)
        .args(["get", "pn,nr", "-o", "wide"])
        .output()?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let (matrix, ok, total) = cluster::matrix(state);
    println!("{matrix}");
    println!("{ok}/{total} paths reachable");
    let samples = cluster::measure_convergence(state, 20).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "convergence (NodeRoute gets its CIDR -> route on every node), {} probes: p50 {:.1} ms, p99 {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[(samples.len() * 99).div_ceil(100) - 1])
    );
    print_exports(&state.control_plane.kubeconfig, &tools);
    Ok(ok == total)
}

fn print_exports(kubeconfig: &Path, tools: &Tools) {
    println!();
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!(
        "  export PATH={}:$PATH",
        tools
            .kubectl
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
}

fn report_real(lab: &RealLab) -> anyhow::Result<bool> {
    let tools = Tools::locate()?;
    for args in [
        &["get", "nodes", "-o", "wide"][..],
        &["get", "pods", "-A", "-o", "wide"][..],
        &["get", "pn,nr", "-o", "wide"][..],
    ] {
        println!("$ kubectl {}", args.join(" "));
        let out = std::process::Command::new(&tools.kubectl)
            .arg("--kubeconfig")
            .arg(&lab.control_plane.kubeconfig)
            .args(args)
            .output()?;
        println!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let (table, ok, total, problems) = real::matrix(lab)?;
    println!(
        "connectivity, from inside the pods (kubectl exec; the receiver's view of the source):"
    );
    println!("{table}");
    for p in &problems {
        println!("  {p}");
    }
    println!("{ok}/{total} paths reachable with the right source address");
    print_exports(&lab.control_plane.kubeconfig, &tools);
    Ok(ok == total)
}

async fn up(
    dir: &Path,
    nodes: usize,
    netns: bool,
    proxy_modes: &[String],
    images: &Path,
) -> anyhow::Result<bool> {
    if running(dir).is_some() {
        bail!(
            "a lab is already running (state in {}); `podnet-lab down` first",
            dir.display()
        );
    }
    if netns {
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .context("binary directory")?;
        let mut progress = progress;
        return match cluster::up("pnlab", nodes, &bin_dir, dir, &mut progress).await {
            Ok(state) => report_netns(&state).await,
            Err(e) => {
                eprintln!(
                    "error: {e}\nlogs are in {}; `podnet-lab down` removes what was created",
                    dir.display()
                );
                Ok(false)
            }
        };
    }
    let modes = proxy_modes
        .iter()
        .map(|m| match m.as_str() {
            "nftables" => Ok(ProxyMode::Nftables),
            "iptables" => Ok(ProxyMode::Iptables),
            other => bail!("--proxy-modes: {other:?} is neither nftables nor iptables"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = RealOptions {
        nodes,
        proxy_modes: modes,
        images: real::image_archives(images)?,
        podnet_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut progress = progress;
    match real::up("pnk", &opts, dir, &mut progress).await {
        Ok(lab) => report_real(&lab),
        Err(e) => {
            eprintln!(
                "error: {e}\nlogs are in {}; `podnet-lab down` removes what was created",
                dir.display()
            );
            Ok(false)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Cmd::Up {
            nodes,
            netns,
            proxy_modes,
            images,
        } => up(&cli.state_dir, nodes, netns, &proxy_modes, &images).await,
        Cmd::Status => match running(&cli.state_dir) {
            Some(Running::Real(lab)) => report_real(&lab),
            Some(Running::Netns(state)) => report_netns(&state).await,
            None => bail!("no lab is running (podnet-lab up starts one)"),
        },
        Cmd::Conformance {
            focus,
            skip,
            procs,
            report_dir,
            timeout_minutes,
        } => {
            let Some(Running::Real(lab)) = running(&cli.state_dir) else {
                bail!("no real-node lab is running (podnet-lab up starts one)");
            };
            let skip = skip.unwrap_or_else(|| {
                conformance::FULL_SKIP
                    .iter()
                    .map(|(re, _)| *re)
                    .collect::<Vec<_>>()
                    .join("|")
            });
            let run = conformance::Run {
                focus,
                skip,
                procs,
                report_dir,
                timeout: Duration::from_secs(timeout_minutes * 60),
            };
            eprintln!(
                "==> e2e.test --focus '{}' --skip '{}' ({} processes; output in {})",
                run.focus,
                run.skip,
                run.procs,
                run.report_dir.join("e2e.log").display()
            );
            let report = conformance::run(&lab, &run)?;
            let summary = conformance::summary_markdown(&report, &run);
            let path = run.report_dir.join("summary.md");
            std::fs::write(&path, &summary)
                .with_context(|| format!("writing {}", path.display()))?;
            print!("{}", report.table());
            println!(
                "\n{}\nJUnit: {}\nsummary: {}",
                report.summary(),
                report.junit.display(),
                path.display()
            );
            let (passed, failed, _) = report.counts();
            Ok(failed == 0 && passed > 0 && report.exit_ok)
        }
        Cmd::PolicyConformance {
            run,
            report_dir,
            timeout_minutes,
        } => {
            let Some(Running::Real(lab)) = running(&cli.state_dir) else {
                bail!("no real-node lab is running (podnet-lab up starts one)");
            };
            let run = policy_conformance::Run {
                report_dir,
                timeout: Duration::from_secs(timeout_minutes * 60),
                run,
            };
            eprintln!(
                "==> network-policy-api conformance (events in {})",
                run.report_dir.join("events.json").display()
            );
            let report = policy_conformance::run(&lab, &run)?;
            let path = run.report_dir.join("summary.md");
            std::fs::write(&path, policy_conformance::summary_markdown(&report))
                .with_context(|| format!("writing {}", path.display()))?;
            print!("{}", report.table());
            println!("\n{}\nsummary: {}", report.summary(), path.display());
            Ok(report.ok())
        }
        Cmd::Down => {
            match running(&cli.state_dir) {
                Some(Running::Real(lab)) => real::down(&lab),
                Some(Running::Netns(state)) => cluster::down(&state),
                None => {
                    println!("no lab is running");
                    return Ok(true);
                }
            }
            println!("lab removed");
            Ok(true)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
