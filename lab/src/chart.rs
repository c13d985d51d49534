//! Installing podnet with its Helm chart, and running its programs the way the chart's
//! pods would: as the chart's service accounts, with tokens from the TokenRequest API
//! (the daemon's bound to a Pod object on its node, as a kubelet-mounted token is).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{LabError, Tools};

/// The namespace the lab and the tests install the chart into.
pub const NAMESPACE: &str = "podnet-system";
/// The release name the lab uses (objects are then named podnet-operator, podnet-daemon).
pub const RELEASE: &str = "podnet";
/// The operator's service account (release "podnet").
pub const OPERATOR_SA: &str = "podnet-operator";
/// The daemon's service account (release "podnet").
pub const DAEMON_SA: &str = "podnet-daemon";

/// The chart's directory in the repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/podnet")
}

fn checked(program: &Path, args: &[String], out: std::process::Output) -> Result<String, LabError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{} {}", program.display(), args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Runs `helm` against the cluster of `kubeconfig`; its stdout, or its stderr as the error.
pub fn helm(kubeconfig: &Path, args: &[&str]) -> Result<String, LabError> {
    let tools = Tools::locate()?;
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = Command::new(&tools.helm)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(&args)
        // Helm's caches and repository config stay out of the user's home.
        .env("HELM_CACHE_HOME", helm_home(kubeconfig).join("cache"))
        .env("HELM_CONFIG_HOME", helm_home(kubeconfig).join("config"))
        .env("HELM_DATA_HOME", helm_home(kubeconfig).join("data"))
        .output()
        .map_err(LabError::io("running", tools.helm.clone()))?;
    checked(&tools.helm, &args, out)
}

fn helm_home(kubeconfig: &Path) -> PathBuf {
    kubeconfig
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join("helm")
}

/// Runs `kubectl` against the cluster of `kubeconfig` with `input` on stdin.
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: &str) -> Result<String, LabError> {
    let tools = Tools::locate()?;
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = crate::output_with_input(
        Command::new(&tools.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(&args),
        input,
    )
    .map_err(LabError::io("running", tools.kubectl.clone()))?;
    checked(&tools.kubectl, &args, out)
}

/// `helm install` (or `upgrade --install`) of the chart as release [`RELEASE`] in
/// [`NAMESPACE`], with `--set` style overrides. No `--wait`: the lab has no kubelet, so
/// the operator's and daemon's pods never run; the lab runs those programs itself.
/// `set_strings` are `--set-string` overrides (label values that look like booleans).
pub fn install(kubeconfig: &Path, sets: &[&str], set_strings: &[&str]) -> Result<String, LabError> {
    let chart = chart_dir().display().to_string();
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    for s in set_strings {
        args.extend(["--set-string", s]);
    }
    helm(kubeconfig, &args)
}

/// Writes a kubeconfig next to `kubeconfig` that authenticates as service account
/// `namespace/sa` with a token from the TokenRequest API. With `node`, the token is bound
/// to a Pod object on that node (created here, as the DaemonSet would have it), so the
/// API server sees the node name a kubelet-mounted token carries.
pub fn service_account_kubeconfig(
    kubeconfig: &Path,
    namespace: &str,
    sa: &str,
    node: Option<&str>,
) -> Result<PathBuf, LabError> {
    let mut args = vec![
        "create".to_string(),
        "token".into(),
        sa.into(),
        "--namespace".into(),
        namespace.into(),
        "--duration=168h".into(),
    ];
    let name = match node {
        Some(node) => {
            let pod = format!("{sa}-{node}");
            let doc = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace,
                             "labels": {"app.kubernetes.io/name": "podnet", "podnet.dev/lab": "true"}},
                "spec": {"serviceAccountName": sa, "nodeName": node,
                         "containers": [{"name": "daemon", "image": "podnet-daemon:lab"}]}
            });
            kubectl(kubeconfig, &["apply", "-f", "-"], &doc.to_string())?;
            args.extend([
                "--bound-object-kind=Pod".into(),
                format!("--bound-object-name={pod}"),
            ]);
            pod
        }
        None => sa.to_string(),
    };
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let token = kubectl(kubeconfig, &arg_refs, "")?.trim().to_string();
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(LabError::io("reading", kubeconfig.to_path_buf()))?;
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| LabError::Command {
            command: format!("parsing {}", kubeconfig.display()),
            stderr: e.to_string(),
        })?;
    doc["users"] = serde_yaml::from_str(&format!("- name: {sa}\n  user:\n    token: {token}\n"))
        .map_err(|e| LabError::Command {
            command: "building a kubeconfig".into(),
            stderr: e.to_string(),
        })?;
    doc["contexts"][0]["context"]["user"] = sa.into();
    let path = kubeconfig.with_file_name(format!("kubeconfig-{name}"));
    let out = serde_yaml::to_string(&doc).map_err(|e| LabError::Command {
        command: "writing a kubeconfig".into(),
        stderr: e.to_string(),
    })?;
    std::fs::write(&path, out).map_err(LabError::io("writing", path.clone()))?;
    Ok(path)
}
