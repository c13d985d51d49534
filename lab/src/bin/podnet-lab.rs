//! `podnet-lab`: bring up, inspect and tear down a local podnet lab.
//!
//! ```text
//! podnet-lab up       start etcd + kube-apiserver with podnet's CRDs; prints how to use kubectl
//! podnet-lab status   show whether the lab runs, and `kubectl get pn,nr`
//! podnet-lab down     stop every process the lab started and remove its files
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use podnet_lab::{ControlPlane, ControlPlaneOptions, DetachedControlPlane, Tools};

fn state_file() -> PathBuf {
    std::env::var_os("PODNET_LAB_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/podnet-lab/state.json"))
}

fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprint!("==> {name} ... ");
    let start = Instant::now();
    let out = f().with_context(|| format!("step '{name}' failed"));
    match &out {
        Ok(_) => eprintln!("done ({:.1}s)", start.elapsed().as_secs_f64()),
        Err(_) => eprintln!("FAILED ({:.1}s)", start.elapsed().as_secs_f64()),
    }
    out
}

fn up(rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let state = state_file();
    if let Ok(existing) = DetachedControlPlane::load(&state) {
        if existing.is_running() {
            bail!(
                "a lab is already running (state {}); `podnet-lab down` first",
                state.display()
            );
        }
        existing.stop();
    }
    let cp = step("starting etcd and kube-apiserver", || {
        rt.block_on(ControlPlane::start(ControlPlaneOptions {
            detachable: true,
            ..Default::default()
        }))
        .map_err(Into::into)
    })?;
    step("installing podnet CRDs", || {
        podnet_lab::testing::install_crds(&cp).map_err(Into::into)
    })?;
    let kubeconfig = cp.kubeconfig().to_path_buf();
    let detached = cp.detach();
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    detached.save(&state)?;
    let tools = Tools::locate()?;
    println!("podnet lab control plane is up at {}", detached.server);
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
    println!("  kubectl get crd");
    println!("  kubectl apply -f examples/podnetwork-dualstack.yaml && kubectl get pn,nr");
    println!();
    println!("Stop it with: podnet-lab down");
    Ok(())
}

fn status() -> anyhow::Result<()> {
    let state = state_file();
    let lab = DetachedControlPlane::load(&state)
        .context("no lab is running (podnet-lab up starts one)")?;
    if !lab.is_running() {
        bail!(
            "the lab recorded in {} is not running; `podnet-lab down` cleans it up",
            state.display()
        );
    }
    println!(
        "control plane: {} (kubeconfig {})",
        lab.server,
        lab.kubeconfig.display()
    );
    let tools = Tools::locate()?;
    let out = std::process::Command::new(&tools.kubectl)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(["get", "pn,nr", "-o", "wide"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let state = state_file();
    match DetachedControlPlane::load(&state) {
        Ok(lab) => {
            step("stopping the control plane", || {
                lab.stop();
                Ok(())
            })?;
            std::fs::remove_file(&state)
                .with_context(|| format!("removing {}", state.display()))?;
            println!("lab removed");
        }
        Err(_) => println!("no lab is running"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd.as_str() {
        "up" => up(&rt),
        "status" => status(),
        "down" => down(),
        "--version" | "version" => {
            println!("podnet-lab {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            eprintln!("usage: podnet-lab up|status|down");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
