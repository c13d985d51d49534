//! `podnet-lab`: bring up, inspect and tear down a local multi-node podnet.
//!
//! ```text
//! podnet-lab up [--nodes 3]  control plane + podnet-operator + one podnet-daemon per node
//!                            + two pods per node; prints `kubectl get pn,nr` and the
//!                            connectivity matrix, then leaves the lab running
//! podnet-lab status          the same report again
//! podnet-lab down            stop every process, remove every namespace and file
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use podnet_lab::Tools;
use podnet_lab::cluster::{self, DEFAULT_STATE_DIR, LabState};

fn state_dir() -> PathBuf {
    std::env::var_os("PODNET_LAB_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

async fn report(state: &LabState) -> anyhow::Result<bool> {
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
    println!();
    println!(
        "  export KUBECONFIG={}",
        state.control_plane.kubeconfig.display()
    );
    println!(
        "  export PATH={}:$PATH",
        tools
            .kubectl
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    println!("  kubectl get pn,nr -o wide");
    println!(
        "  ip netns exec {} ping {}",
        state.pods[0].netns,
        state
            .pods
            .last()
            .map(|p| p.ips[0].clone())
            .unwrap_or_default()
    );
    Ok(ok == total)
}

async fn up(nodes: usize) -> anyhow::Result<bool> {
    let dir = state_dir();
    if dir.join("state.json").exists() {
        bail!(
            "a lab is already running (state in {}); `podnet-lab down` first",
            dir.display()
        );
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .context("binary directory")?;
    let mut progress =
        |what: &str, took: Duration| eprintln!("==> {what} ({:.1}s)", took.as_secs_f64());
    let state = match cluster::up("pnlab", nodes, &bin_dir, &dir, &mut progress).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "logs are in {}; `podnet-lab down` removes what was created",
                dir.display()
            );
            return Ok(false);
        }
    };
    report(&state).await
}

async fn run() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => {
            let nodes = match args.iter().position(|a| a == "--nodes") {
                Some(i) => args.get(i + 1).context("--nodes needs a number")?.parse()?,
                None => 3,
            };
            up(nodes).await
        }
        Some("status") => {
            let state = cluster::load(&state_dir())
                .context("no lab is running (podnet-lab up starts one)")?;
            report(&state).await
        }
        Some("down") => {
            match cluster::load(&state_dir()) {
                Ok(state) => {
                    cluster::down(&state);
                    println!("lab removed");
                }
                Err(_) => println!("no lab is running"),
            }
            Ok(true)
        }
        Some("--version") => {
            println!("podnet-lab {}", env!("CARGO_PKG_VERSION"));
            Ok(true)
        }
        _ => bail!("usage: podnet-lab up [--nodes N] | status | down"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
