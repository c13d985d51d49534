//! podnet's lab: a real local control plane (etcd + kube-apiserver) for tests and demos.
//!
//! [`ControlPlane`] starts etcd and kube-apiserver on loopback in a directory of its own,
//! with RBAC on, an admin client certificate and a service-account signing key, and stops
//! them (and removes the directory) when dropped. [`testing`] is the one helper every
//! integration test that needs an API server goes through.
//!
//! Nothing but tests, benchmarks and the `podnet-lab` tool may import this crate; it
//! imports the others (crds, contract, netlink) and never ships in an image.

pub mod bench;
pub mod certs;
pub mod chart;
pub mod cluster;
pub mod conformance;
pub(crate) mod controlplane;
mod error;
pub mod invariants;
pub mod kube_node;
pub mod objects;
pub mod policy_conformance;
pub mod probes;
pub mod real;
mod runtime_dir;
pub mod testing;
mod tools;
mod wait;

pub use controlplane::{ControlPlane, ControlPlaneOptions, DetachedControlPlane};
pub use error::LabError;
pub use tools::Tools;
pub use wait::{WaitTimeout, wait_for, wait_until};

/// Runs a command (no shell) and returns its stdout; fails with its stderr.
pub fn run_ok(args: &[&str]) -> Result<String, LabError> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(LabError::io("running", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A kube client for whoever `path` (a kubeconfig) authenticates.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<kube::Client, LabError> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Starts `program` with `args` and `env`, its stdout and stderr appended to `log`, in its
/// own process group when `own_group` (a Ctrl-C aimed at the starter does not reach it).
pub(crate) fn spawn_logged(
    program: &std::path::Path,
    args: &[String],
    env: &[(&str, String)],
    log: &std::path::Path,
    cwd: Option<&std::path::Path>,
    own_group: bool,
) -> Result<std::process::Child, LabError> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(LabError::io("opening", log))?;
    let err = out.try_clone().map_err(LabError::io("opening", log))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    if own_group {
        cmd.process_group(0);
    }
    cmd.spawn().map_err(LabError::io("starting", program))
}

/// Runs `cmd` with `input` on its standard input and collects its output.
pub fn output_with_input(
    cmd: &mut std::process::Command,
    input: &str,
) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits without reading its input is not an error here.
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait_with_output()
}

/// The `p`-quantile (0..=1, nearest rank) of `v`; NaN for no values.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
