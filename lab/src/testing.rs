//! The one way integration tests get a real API server.
//!
//! A test binary that needs kube-apiserver sets `harness = false` and calls
//! [`run_api_tests`] from `main`: it starts one [`ControlPlane`] for the whole binary,
//! installs the generated CRDs with kubectl, runs the tests (filters and `--test-threads`
//! work as with the standard harness), then stops the control plane and removes its files
//! whatever the tests did — a panicking test is reported as failed, never left running.
//! When the control plane cannot start, every test fails with the reason (a missing
//! binary, etcd's log tail, ...): nothing is skipped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::{ControlPlane, ControlPlaneOptions, LabError};

type TestFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type TestBody = Box<dyn FnOnce(Arc<ControlPlane>) -> TestFuture + Send>;

/// One test that runs against the shared control plane.
pub struct ApiTest {
    name: &'static str,
    body: TestBody,
}

impl ApiTest {
    /// A test named `name` whose body gets the shared control plane.
    pub fn new<F, Fut>(name: &'static str, body: F) -> Self
    where
        F: FnOnce(Arc<ControlPlane>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            name,
            body: Box::new(move |cp| Box::pin(body(cp))),
        }
    }
}

/// The CRD manifests checked into the chart.
pub fn chart_crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/podnet/crds")
}

/// Installs the chart's CRDs with `kubectl apply` and waits until they are established.
pub fn install_crds(cp: &ControlPlane) -> Result<(), LabError> {
    let dir = chart_crds_dir();
    kubectl_ok(
        cp,
        ["apply", "--server-side", "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.display().to_string()]),
    )?;
    // Polled rather than `kubectl wait --for=condition=Established`, which fails at once
    // ("status.conditions accessor error") when it reads a CRD before the API server has
    // written any condition — seen in CI right after a large CRD was applied.
    let get = [
        "get".to_string(),
        "-f".to_string(),
        dir.display().to_string(),
        "-o".to_string(),
        r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Established")].status}{"\n"}{end}"#.to_string(),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let last = kubectl_ok(cp, get.iter().cloned());
        if let Ok(out) = &last
            && !out.trim().is_empty()
            && out.lines().all(|l| l.ends_with("=True"))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(LabError::Command {
                command: "kubectl get -f charts/podnet/crds (waiting for Established)".into(),
                stderr: format!("not every CRD established after 60 s: {last:?}"),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn kubectl_ok(
    cp: &ControlPlane,
    args: impl IntoIterator<Item = String>,
) -> Result<String, LabError> {
    let args: Vec<String> = args.into_iter().collect();
    let out = cp.kubectl(&args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("kubectl {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Whether tests share one control plane or each get their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// One control plane for the whole binary: for tests that only touch their own objects.
    Shared,
    /// A fresh control plane per test: for tests that run controllers watching everything.
    PerTest,
}

/// Runs `tests` against one shared control plane with podnet's CRDs installed.
pub fn run_api_tests(tests: Vec<ApiTest>) -> ExitCode {
    run_api_tests_with(Isolation::Shared, tests)
}

/// Starts a control plane with the CRDs installed.
pub async fn start_with_crds() -> Result<ControlPlane, LabError> {
    let cp = ControlPlane::start(ControlPlaneOptions::default()).await?;
    install_crds(&cp)?;
    Ok(cp)
}

/// Runs `tests` with the given isolation.
pub fn run_api_tests_with(isolation: Isolation, tests: Vec<ApiTest>) -> ExitCode {
    let args = Arguments::from_args();
    if args.list {
        let trials = tests
            .into_iter()
            .map(|t| Trial::test(t.name, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_all(&args, tests, &format!("cannot build a tokio runtime: {e}")),
    };
    let shared = match isolation {
        Isolation::Shared => match runtime.block_on(start_with_crds()) {
            Ok(cp) => Some(Arc::new(cp)),
            Err(e) => {
                let reason = format!("the real control plane these tests need is unavailable: {e}");
                return fail_all(&args, tests, &reason);
            }
        },
        Isolation::PerTest => None,
    };
    let handle = runtime.handle().clone();
    let trials = tests
        .into_iter()
        .map(|t| {
            let shared = shared.clone();
            let handle = handle.clone();
            Trial::test(t.name, move || {
                handle.block_on(async move {
                    let cp = match shared {
                        Some(cp) => cp,
                        None => Arc::new(start_with_crds().await.map_err(|e| {
                            Failed::from(format!(
                                "the real control plane this test needs is unavailable: {e}"
                            ))
                        })?),
                    };
                    (t.body)(cp)
                        .await
                        .map_err(|e| Failed::from(format!("{e:#}")))
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Every trial has run and released its handle: this drop stops the processes.
    drop(shared);
    drop(runtime);
    conclusion.exit_code()
}

fn fail_all(args: &Arguments, tests: Vec<ApiTest>, reason: &str) -> ExitCode {
    eprintln!("error: {reason}");
    let trials = tests
        .into_iter()
        .map(|t| {
            let reason = reason.to_string();
            Trial::test(t.name, move || Err(Failed::from(reason)))
        })
        .collect();
    libtest_mimic::run(args, trials).exit_code()
}

/// The workspace's debug binaries (podnet-operator, podnet-daemon, podnet-cni), built by
/// `cargo test --workspace` next to the running test binary; an error names what is
/// missing.
pub fn workspace_bins() -> Result<PathBuf, String> {
    let bin_dir: PathBuf = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(PathBuf::from))
        .unwrap_or_default();
    for b in ["podnet-operator", "podnet-daemon", "podnet-cni"] {
        if !bin_dir.join(b).is_file() {
            return Err(format!(
                "{b} missing in {}: run the workspace tests (cargo test --workspace)",
                bin_dir.display()
            ));
        }
    }
    Ok(bin_dir)
}

/// Fails unless the process runs as root, naming what needs it.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "{what} needs root (network namespaces, links, routes, iptables): run the tests as root"
        )
    }
}

/// A plain HTTP GET to 127.0.0.1:`port` (the programs' ops endpoints); the whole response.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
