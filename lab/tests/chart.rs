//! The Helm chart on the real API server: lint, template (default and non-default
//! values, values the schema refuses), install, upgrade, uninstall; and its RBAC proven
//! minimal with tokens of the chart's service accounts (TokenRequest) and the admission
//! policy that keeps each daemon to its own node's Programmed condition.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams};
use podnet_crds::{NodeRoute, PodNetwork};
use podnet_lab::ControlPlane;
use podnet_lab::chart::{self, helm, kubectl};
use podnet_lab::testing::{ApiTest, run_api_tests};
use serde_yaml::Value;

const KUBE_VERSION: &str = "--kube-version=1.36.0";

fn render(sets: &[&str]) -> anyhow::Result<Vec<Value>> {
    let dir = chart::chart_dir().display().to_string();
    let mut args = vec![
        "template",
        "podnet",
        &dir,
        "--namespace",
        "podnet-system",
        KUBE_VERSION,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    // helm template needs no cluster: any kubeconfig path will do.
    let out = helm(Path::new("/dev/null"), &args)?;
    let docs = serde_yaml::Deserializer::from_str(&out)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()
        .context("helm template printed invalid YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} rendered"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

/// Every RBAC rule of the rendered chart: no wildcard, nothing on secrets.
fn check_rules(docs: &[Value]) -> anyhow::Result<usize> {
    let mut n = 0;
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in d["rules"].as_sequence().context("rules")? {
            n += 1;
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                ensure!(
                    !strs(&rule[field]).iter().any(|s| s.contains('*')),
                    "wildcard in {field} of {}: {rule:?}",
                    d["metadata"]["name"].as_str().unwrap_or("?")
                );
            }
            ensure!(
                !strs(&rule["resources"]).iter().any(|r| r == "secrets"),
                "a rule on secrets in {:?}",
                d["metadata"]["name"]
            );
        }
    }
    Ok(n)
}

async fn lint_and_template(_cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let dir = chart::chart_dir().display().to_string();
    let lint = helm(
        Path::new("/dev/null"),
        &["lint", "--strict", &dir, KUBE_VERSION],
    )?;
    ensure!(lint.contains("0 chart(s) failed"), "helm lint: {lint}");

    // Defaults.
    let docs = render(&[])?;
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("").to_string())
        .collect();
    kinds.sort();
    kinds.dedup();
    for k in [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "PodNetwork",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        ensure!(kinds.iter().any(|x| x == k), "no {k} rendered: {kinds:?}");
    }
    ensure!(
        !kinds.iter().any(|k| k == "ServiceMonitor"),
        "ServiceMonitor is off by default"
    );
    ensure!(check_rules(&docs)? >= 10, "too few RBAC rules rendered");

    let op = find(&docs, "Deployment", "podnet-operator")?;
    let spec = &op["spec"]["template"]["spec"];
    ensure!(op["spec"]["replicas"] == 2, "operator replicas");
    ensure!(spec["hostNetwork"] == true, "operator on the host network");
    ensure!(
        spec["securityContext"]["runAsNonRoot"] == true,
        "operator non-root"
    );
    let c = &spec["containers"][0];
    ensure!(c["securityContext"]["readOnlyRootFilesystem"] == true);
    ensure!(c["securityContext"]["allowPrivilegeEscalation"] == false);
    ensure!(strs(&c["securityContext"]["capabilities"]["drop"]) == ["ALL"]);
    ensure!(c["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(c["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(
        c["resources"]["requests"]["memory"].is_string(),
        "operator resources"
    );
    ensure!(
        c["image"] == "ghcr.io/podnet/podnet-operator:0.1.0",
        "{:?}",
        c["image"]
    );
    ensure!(
        spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_sequence(),
        "operator replicas spread over nodes"
    );

    let ds = find(&docs, "DaemonSet", "podnet-daemon")?;
    let spec = &ds["spec"]["template"]["spec"];
    ensure!(spec["hostNetwork"] == true);
    ensure!(spec["priorityClassName"] == "system-node-critical");
    ensure!(
        spec["tolerations"].as_sequence().map(|t| t.len()) == Some(1)
            && spec["tolerations"][0]["operator"] == "Exists"
            && spec["tolerations"][0]["key"].is_null(),
        "daemon tolerates every taint: {:?}",
        spec["tolerations"]
    );
    ensure!(ds["spec"]["updateStrategy"]["type"] == "RollingUpdate");
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] == false, "daemon is not privileged");
    let mut caps = strs(&sc["capabilities"]["add"]);
    caps.sort();
    ensure!(
        caps == ["NET_ADMIN", "NET_RAW"],
        "daemon capabilities {caps:?}"
    );
    ensure!(strs(&sc["capabilities"]["drop"]) == ["ALL"]);
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .context("mounts")?
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for m in ["/etc/cni/net.d", "/run/podnet", "/run/xtables.lock"] {
        ensure!(mounts.contains(&m), "daemon mounts {m}: {mounts:?}");
    }
    let init = &spec["initContainers"][0];
    ensure!(strs(&init["args"]).first().map(String::as_str) == Some("install-cni"));
    ensure!(init["volumeMounts"][0]["mountPath"] == "/host/cni-bin");
    let bin = spec["volumes"]
        .as_sequence()
        .context("volumes")?
        .iter()
        .find(|v| v["name"] == "cni-bin")
        .context("cni-bin volume")?;
    ensure!(bin["hostPath"]["path"] == "/opt/cni/bin");
    ensure!(env_value(c, "PODNET_LOG_FORMAT").as_deref() == Some("json"));
    let pn = find(&docs, "PodNetwork", "default")?;
    ensure!(strs(&pn["spec"]["cidrs"]) == ["10.244.0.0/16"]);

    // Non-default values.
    let docs = render(&[
        "operator.replicas=3",
        "operator.setNodePodCIDRs=true",
        "operator.podAntiAffinity=preferred",
        "logging.format=text",
        "logging.level=debug",
        "podNetwork.name=pods",
        "podNetwork.cidrs={10.32.0.0/12,fd00:32::/48}",
        "podNetwork.nodeMaskSize.ipv4=26",
        "podNetwork.masquerade.enabled=false",
        "cni.confDir=/etc/kubernetes/cni/net.d",
        "cni.binDir=/home/kubernetes/bin",
        "daemon.ipamDir=/var/lib/podnet/ipam",
        "image.daemon.tag=v9",
        "serviceMonitor.enabled=true",
        "kubernetesServiceHost=10.0.0.1",
        "kubernetesServicePort=6443",
    ])?;
    check_rules(&docs)?;
    let op = find(&docs, "Deployment", "podnet-operator")?;
    ensure!(op["spec"]["replicas"] == 3);
    let oc = &op["spec"]["template"]["spec"]["containers"][0];
    ensure!(strs(&oc["args"]).contains(&"--set-node-pod-cidrs=true".to_string()));
    ensure!(env_value(oc, "KUBERNETES_SERVICE_HOST").as_deref() == Some("10.0.0.1"));
    ensure!(env_value(oc, "KUBERNETES_SERVICE_PORT").as_deref() == Some("6443"));
    ensure!(
        op["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_sequence()
    );
    let role = find(&docs, "ClusterRole", "podnet-operator")?;
    ensure!(
        strs(&role["rules"][0]["verbs"]).contains(&"patch".to_string()),
        "setNodePodCIDRs grants patch on nodes: {:?}",
        role["rules"][0]
    );
    let ds = find(&docs, "DaemonSet", "podnet-daemon")?;
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    ensure!(c["image"] == "ghcr.io/podnet/podnet-daemon:v9");
    ensure!(env_value(c, "PODNET_LOG_FORMAT").as_deref() == Some("text"));
    ensure!(env_value(c, "PODNET_LOG_LEVEL").as_deref() == Some("debug"));
    ensure!(strs(&c["args"]).contains(&"--cni-conf-dir=/etc/kubernetes/cni/net.d".to_string()));
    ensure!(strs(&c["args"]).contains(&"--ipam-dir=/var/lib/podnet/ipam".to_string()));
    let paths: Vec<&str> = spec["volumes"]
        .as_sequence()
        .context("volumes")?
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in [
        "/etc/kubernetes/cni/net.d",
        "/home/kubernetes/bin",
        "/var/lib/podnet/ipam",
        "/run/podnet",
    ] {
        ensure!(paths.contains(&p), "hostPath {p}: {paths:?}");
    }
    let pn = find(&docs, "PodNetwork", "pods")?;
    ensure!(strs(&pn["spec"]["cidrs"]) == ["10.32.0.0/12", "fd00:32::/48"]);
    ensure!(pn["spec"]["nodeMaskSize"]["ipv4"] == 26);
    ensure!(pn["spec"]["masquerade"]["enabled"] == false);
    ensure!(find(&docs, "ServiceMonitor", "podnet-operator").is_ok());
    ensure!(find(&docs, "ServiceMonitor", "podnet-daemon").is_ok());
    ensure!(find(&docs, "Service", "podnet-daemon-metrics").is_ok());
    // Policy enforcement: both tiers by default; each switch takes its RBAC with it.
    let policy_view = |sets: &[&str]| -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let docs = render(sets)?;
        let ds = find(&docs, "DaemonSet", "podnet-daemon")?;
        let args = strs(&ds["spec"]["template"]["spec"]["containers"][0]["args"]);
        let role = find(&docs, "ClusterRole", "podnet-daemon")?;
        let resources = role["rules"]
            .as_sequence()
            .context("rules")?
            .iter()
            .flat_map(|r| strs(&r["resources"]))
            .collect();
        Ok((args, resources))
    };
    for (sets, policy, cluster) in [
        (&[][..], true, true),
        (&["daemon.clusterNetworkPolicy=false"][..], true, false),
        (&["daemon.networkPolicy=false"][..], false, false),
    ] {
        let (args, resources) = policy_view(sets)?;
        ensure!(
            args.contains(&format!("--network-policy={policy}"))
                && args.contains(&format!("--cluster-network-policy={cluster}")),
            "{sets:?}: daemon args {args:?}"
        );
        ensure!(
            resources.contains(&"networkpolicies".to_string()) == policy
                && resources.contains(&"clusternetworkpolicies".to_string()) == cluster,
            "{sets:?}: daemon may read {resources:?}"
        );
    }
    for (sets, want) in [(&[][..], "0"), (&["daemon.policyLogDrops=20"][..], "20")] {
        let (args, _) = policy_view(sets)?;
        ensure!(
            args.contains(&format!("--policy-log-drops={want}")),
            "{sets:?}: daemon args {args:?}"
        );
    }
    let docs = render(&["podNetwork.create=false", "operator.replicas=1"])?;
    ensure!(docs.iter().all(|d| d["kind"] != "PodNetwork"));
    ensure!(docs.iter().all(|d| d["kind"] != "PodDisruptionBudget"));

    // Values the schema (or the chart) refuses, each with a message naming the value.
    for (set, expect) in [
        ("podNetwork.nodeMaskSize.ipv4=40", "ipv4"),
        ("podNetwork.cidrs={not-a-cidr}", "cidrs"),
        ("logging.format=xml", "format"),
        ("operator.replicas=-1", "replicas"),
        ("daemon.bridge=this-name-is-too-long", "bridge"),
        ("cni.confDir=relative/dir", "confDir"),
        ("daemon.metricsPort=70000", "metricsPort"),
        ("unknownKey=1", "unknownKey"),
        ("operator.renewDeadline=20", "renewDeadline"),
        ("daemon.policyLogDrops=-1", "policyLogDrops"),
    ] {
        match render(&[set]) {
            Ok(_) => bail!("helm template accepted --set {set}"),
            Err(e) => ensure!(e.to_string().contains(expect), "--set {set}: {e}"),
        }
    }
    Ok(())
}

/// The names of a release's objects: in `namespace` (workloads, accounts, roles, PDB), or
/// cluster-scoped (roles, bindings, admission policy, PodNetwork) when `None`.
fn release_objects(kc: &Path, namespace: Option<&str>, selector: &str) -> anyhow::Result<String> {
    let (scope, kinds): (&[&str], &str) = match namespace {
        Some(ns) => (&["-n", ns], "deploy,ds,sa,role,rolebinding,pdb"),
        None => (
            &[],
            "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding,pn",
        ),
    };
    let mut args = scope.to_vec();
    args.extend(["get", kinds, "-l", selector, "-o", "name"]);
    Ok(kubectl(kc, &args, "")?)
}

async fn install_upgrade_uninstall(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let kc = cp.kubeconfig();
    let dir = chart::chart_dir().display().to_string();
    let release = "upg";
    let ns = "upg-system";
    let sel = format!("app.kubernetes.io/instance={release}");
    let install = helm(
        kc,
        &[
            "install",
            release,
            &dir,
            "--namespace",
            ns,
            "--create-namespace",
            "--set",
            "podNetwork.name=upg",
            "--set",
            "podNetwork.cidrs={10.60.0.0/16}",
        ],
    )?;
    ensure!(
        install.contains("kubectl get pn,nr"),
        "NOTES tell what to check: {install}"
    );
    let deploys = release_objects(kc, Some(ns), &sel)?;
    for want in [
        "deployment.apps/upg-podnet-operator",
        "daemonset.apps/upg-podnet-daemon",
        "serviceaccount/upg-podnet-operator",
        "serviceaccount/upg-podnet-daemon",
        "role.rbac.authorization.k8s.io/upg-podnet-operator-leader-election",
        "poddisruptionbudget.policy/upg-podnet-operator",
    ] {
        ensure!(
            deploys.lines().any(|l| l == want),
            "{want} not created: {deploys}"
        );
    }
    let cluster = release_objects(kc, None, &sel)?;
    ensure!(
        cluster.lines().count() == 9,
        "cluster-scoped objects: {cluster}"
    );
    let cidrs = kubectl(
        kc,
        &["get", "pn", "upg", "-o", "jsonpath={.spec.cidrs}"],
        "",
    )?;
    ensure!(cidrs == r#"["10.60.0.0/16"]"#, "{cidrs}");

    // Upgrade: grow the pool, change the log level; the objects follow.
    helm(
        kc,
        &[
            "upgrade",
            release,
            &dir,
            "--namespace",
            ns,
            "--reuse-values",
            "--set",
            "podNetwork.cidrs={10.60.0.0/16,fd00:60::/56}",
            "--set",
            "logging.level=debug",
            "--set",
            "operator.replicas=3",
        ],
    )?;
    let cidrs = kubectl(
        kc,
        &["get", "pn", "upg", "-o", "jsonpath={.spec.cidrs}"],
        "",
    )?;
    ensure!(cidrs == r#"["10.60.0.0/16","fd00:60::/56"]"#, "{cidrs}");
    let level = kubectl(
        kc,
        &[
            "-n",
            ns,
            "get",
            "ds",
            "upg-podnet-daemon",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"PODNET_LOG_LEVEL\")].value}",
        ],
        "",
    )?;
    ensure!(level == "debug", "log level after upgrade: {level}");
    let replicas = kubectl(
        kc,
        &[
            "-n",
            ns,
            "get",
            "deploy",
            "upg-podnet-operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        "",
    )?;
    ensure!(replicas == "3");
    let history = helm(kc, &["history", release, "--namespace", ns, "-o", "json"])?;
    ensure!(history.matches("\"revision\"").count() == 2, "{history}");

    // An upgrade the API server refuses (nodeMaskSize is immutable) fails loudly and
    // leaves the release as it was.
    let refused = helm(
        kc,
        &[
            "upgrade",
            release,
            &dir,
            "--namespace",
            ns,
            "--reuse-values",
            "--set",
            "podNetwork.nodeMaskSize.ipv4=25",
        ],
    );
    match refused {
        Ok(out) => bail!("the API server accepted a nodeMaskSize change: {out}"),
        Err(e) => ensure!(e.to_string().contains("immutable"), "{e}"),
    }
    let mask = kubectl(
        kc,
        &[
            "get",
            "pn",
            "upg",
            "-o",
            "jsonpath={.spec.nodeMaskSize.ipv4}",
        ],
        "",
    )?;
    ensure!(mask == "24", "nodeMaskSize after a refused upgrade: {mask}");

    // Uninstall: nothing cluster-scoped is left but the CRDs (helm never deletes CRDs,
    // so the allocation record survives a reinstall).
    helm(kc, &["uninstall", release, "--namespace", ns])?;
    let left = release_objects(kc, None, &sel)?;
    ensure!(left.trim().is_empty(), "left after uninstall: {left}");
    let left = release_objects(kc, Some(ns), &sel)?;
    ensure!(left.trim().is_empty(), "left after uninstall: {left}");
    let crds = kubectl(
        kc,
        &[
            "get",
            "crd",
            "podnetworks.podnet.dev",
            "noderoutes.podnet.dev",
            "-o",
            "name",
        ],
        "",
    )?;
    ensure!(crds.lines().count() == 2, "the CRDs stay: {crds}");
    Ok(())
}

async fn client_for(kc: &Path) -> anyhow::Result<kube::Client> {
    Ok(podnet_lab::client_from_kubeconfig(kc).await?)
}

/// A server-side apply patch as podnet-daemon sends it.
fn apply(doc: &str) -> anyhow::Result<Patch<serde_json::Value>> {
    Ok(Patch::Apply(serde_json::from_str(doc)?))
}

/// Patches NodeRoute `name` (its status with `status`) as whoever `kc` authenticates,
/// the way podnet's programs do (no GET first, unlike kubectl).
async fn kube_patch(
    kc: &Path,
    name: &str,
    status: bool,
    patch: Patch<serde_json::Value>,
) -> anyhow::Result<()> {
    let api: Api<NodeRoute> = Api::all(client_for(kc).await?);
    let pp = PatchParams::apply("podnet-daemon").force();
    let pp = if matches!(patch, Patch::Apply(_)) {
        pp
    } else {
        PatchParams::default()
    };
    if status {
        api.patch_status(name, &pp, &patch).await?;
    } else {
        api.patch(name, &pp, &patch).await?;
    }
    Ok(())
}

/// `kubectl auth can-i` as whoever `kc` authenticates.
fn can_i(kc: &Path, args: &[&str]) -> anyhow::Result<bool> {
    let tools = podnet_lab::Tools::locate()?;
    let out = std::process::Command::new(&tools.kubectl)
        .arg("--kubeconfig")
        .arg(kc)
        .args(["auth", "can-i"])
        .args(args)
        .output()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl auth can-i {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn expect_can(kc: &Path, who: &str, checks: &[(&[&str], bool)]) -> anyhow::Result<()> {
    for (args, want) in checks {
        let got = can_i(kc, args)?;
        ensure!(got == *want, "{who} can-i {args:?}: {got}, want {want}");
    }
    Ok(())
}

async fn rbac_is_least_privilege(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let kc = cp.kubeconfig();
    chart::install(
        kc,
        &["podNetwork.name=rbac", "podNetwork.cidrs={10.70.0.0/16}"],
        &[],
    )?;
    let ns = chart::NAMESPACE;
    for n in ["rbac-a", "rbac-b"] {
        kubectl(
            kc,
            &["create", "-f", "-"],
            &format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{n}\"}}}}"
            ),
        )?;
    }
    let op = chart::service_account_kubeconfig(kc, ns, chart::OPERATOR_SA, None)?;
    let daemon = chart::service_account_kubeconfig(kc, ns, chart::DAEMON_SA, Some("rbac-a"))?;

    expect_can(
        &op,
        "operator",
        &[
            (&["list", "nodes"], true),
            (&["watch", "nodes"], true),
            (&["patch", "nodes"], false),
            (&["create", "noderoutes.podnet.dev"], true),
            (&["delete", "noderoutes.podnet.dev"], true),
            (
                &["patch", "noderoutes.podnet.dev", "--subresource=status"],
                true,
            ),
            (&["watch", "podnetworks.podnet.dev"], true),
            (&["patch", "podnetworks.podnet.dev"], false),
            (&["delete", "podnetworks.podnet.dev"], false),
            (
                &["patch", "podnetworks.podnet.dev", "--subresource=status"],
                true,
            ),
            (&["create", "events.events.k8s.io", "-n", "default"], true),
            (&["create", "leases.coordination.k8s.io", "-n", ns], true),
            (
                &[
                    "update",
                    "leases.coordination.k8s.io/podnet-operator",
                    "-n",
                    ns,
                ],
                true,
            ),
            (
                &[
                    "update",
                    "leases.coordination.k8s.io/kube-scheduler",
                    "-n",
                    ns,
                ],
                false,
            ),
            (
                &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
                false,
            ),
            (&["get", "secrets", "-n", ns], false),
            (&["list", "secrets", "--all-namespaces"], false),
            (&["create", "pods", "-n", ns], false),
        ],
    )?;
    expect_can(
        &daemon,
        "daemon",
        &[
            (&["list", "noderoutes.podnet.dev"], true),
            (&["watch", "noderoutes.podnet.dev"], true),
            (
                &["patch", "noderoutes.podnet.dev", "--subresource=status"],
                true,
            ),
            (&["patch", "noderoutes.podnet.dev"], false),
            (&["create", "noderoutes.podnet.dev"], false),
            (&["delete", "noderoutes.podnet.dev"], false),
            (&["watch", "podnetworks.podnet.dev"], true),
            (&["patch", "podnetworks.podnet.dev"], false),
            (&["update", "podnetworks.podnet.dev"], false),
            (
                &["patch", "podnetworks.podnet.dev", "--subresource=status"],
                false,
            ),
            (&["get", "nodes"], false),
            (&["watch", "pods", "--all-namespaces"], true),
            (&["watch", "namespaces"], true),
            (
                &[
                    "watch",
                    "networkpolicies.networking.k8s.io",
                    "--all-namespaces",
                ],
                true,
            ),
            (
                &["watch", "clusternetworkpolicies.policy.networking.k8s.io"],
                true,
            ),
            (
                &["update", "clusternetworkpolicies.policy.networking.k8s.io"],
                false,
            ),
            (&["create", "pods", "-n", "default"], false),
            (
                &[
                    "update",
                    "networkpolicies.networking.k8s.io",
                    "-n",
                    "default",
                ],
                false,
            ),
            (&["create", "events.events.k8s.io", "-n", "default"], true),
            (&["delete", "events.events.k8s.io", "-n", "default"], false),
            (&["get", "secrets", "-n", ns], false),
            (&["list", "secrets", "--all-namespaces"], false),
        ],
    )?;

    // NodeRoutes for both nodes, with an allocation, written as the operator would.
    for (n, cidr) in [("rbac-a", "10.70.0.0/24"), ("rbac-b", "10.70.1.0/24")] {
        kubectl(
            &op,
            &["create", "-f", "-"],
            &format!(
                "{{\"apiVersion\":\"podnet.dev/v1alpha1\",\"kind\":\"NodeRoute\",\"metadata\":{{\"name\":\"{n}\"}},\"spec\":{{\"nodeName\":\"{n}\",\"podNetwork\":\"rbac\"}}}}"
            ),
        )?;
        kube_patch(&op, n, true, Patch::Merge(serde_json::from_str::<serde_json::Value>(
            &format!("{{\"status\":{{\"podCIDRs\":[\"{cidr}\"],\"nodeIPs\":[\"198.18.9.1\"],\"conditions\":[{{\"type\":\"Allocated\",\"status\":\"True\",\"reason\":\"Allocated\",\"message\":\"x\",\"lastTransitionTime\":\"2026-01-01T00:00:00Z\"}}]}}}}"))?)).await?;
    }
    let programmed = |status: &str| {
        format!(
            "{{\"apiVersion\":\"podnet.dev/v1alpha1\",\"kind\":\"NodeRoute\",\"status\":{{\"conditions\":[{{\"type\":\"Programmed\",\"status\":\"{status}\",\"reason\":\"Programmed\",\"message\":\"ok\",\"lastTransitionTime\":\"2026-01-01T00:00:00Z\"}}]}}}}"
        )
    };
    // Its own node's Programmed condition, as podnet-daemon writes it: allowed.
    kube_patch(&daemon, "rbac-a", true, apply(&programmed("True"))?)
        .await
        .context("the daemon writing its own Programmed condition")?;
    // Anything else is refused, with a message saying why.
    let json = |s: &str| -> anyhow::Result<serde_json::Value> { Ok(serde_json::from_str(s)?) };
    for (what, node, status, patch, expect) in [
        (
            "another node's NodeRoute",
            "rbac-b",
            true,
            apply(&programmed("True"))?,
            "may not write the status of NodeRoute rbac-b",
        ),
        (
            "its pod CIDRs",
            "rbac-a",
            true,
            Patch::Merge(json(r#"{"status":{"podCIDRs":["10.70.1.0/24"]}}"#)?),
            "podCIDRs",
        ),
        (
            "its node IPs",
            "rbac-a",
            true,
            Patch::Merge(json(r#"{"status":{"nodeIPs":["198.18.9.9"]}}"#)?),
            "nodeIPs",
        ),
        (
            "the operator's condition",
            "rbac-a",
            true,
            Patch::Merge(json(
                r#"{"status":{"conditions":[{"type":"Allocated","status":"False","reason":"X","message":"x","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
            )?),
            "Programmed condition",
        ),
        (
            "a NodeRoute's spec",
            "rbac-a",
            false,
            Patch::Merge(json(r#"{"spec":{"podNetwork":"x"}}"#)?),
            "forbidden",
        ),
    ] {
        match kube_patch(&daemon, node, status, patch).await {
            Ok(()) => bail!("the daemon could change {what}"),
            Err(e) => ensure!(
                format!("{e:#}").contains(expect),
                "the daemon changing {what}: {e:#}"
            ),
        }
    }
    let client = client_for(&daemon).await?;
    let pns: Api<PodNetwork> = Api::all(client.clone());
    match pns
        .patch(
            "rbac",
            &PatchParams::default(),
            &Patch::Merge(json(r#"{"spec":{"cidrs":["10.0.0.0/8"]}}"#)?),
        )
        .await
    {
        Ok(_) => bail!("the daemon changed a PodNetwork's spec"),
        Err(e) => ensure!(e.to_string().contains("forbidden"), "{e}"),
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, ns);
    match secrets.list(&Default::default()).await {
        Ok(_) => bail!("the daemon listed secrets"),
        Err(e) => ensure!(e.to_string().contains("forbidden"), "{e}"),
    }
    let cidrs = kubectl(
        kc,
        &["get", "nr", "rbac-a", "-o", "jsonpath={.status.podCIDRs}"],
        "",
    )?;
    ensure!(
        cidrs == r#"["10.70.0.0/24"]"#,
        "allocation after refused writes: {cidrs}"
    );
    // A token not bound to a node (not what a daemon pod has) may write no NodeRoute.
    let unbound = chart::service_account_kubeconfig(kc, ns, chart::DAEMON_SA, None)?;
    match kube_patch(&unbound, "rbac-a", true, apply(&programmed("False"))?).await {
        Ok(()) => bail!("an unbound daemon token wrote a NodeRoute"),
        Err(e) => ensure!(format!("{e:#}").contains("not bound to a node"), "{e:#}"),
    }

    // Users: the built-in view/edit/admin roles pick up podnet's roles through their
    // aggregation labels (kube-controller-manager merges them; it does not run here, so
    // the labels are checked against the roles' selectors, and the rules by binding).
    let view = kubectl(kc, &["get", "clusterrole", "podnet-view", "-o", "json"], "")?;
    let view: serde_json::Value = serde_json::from_str(&view)?;
    let admin = kubectl(
        kc,
        &["get", "clusterrole", "podnet-admin", "-o", "json"],
        "",
    )?;
    let admin: serde_json::Value = serde_json::from_str(&admin)?;
    for (builtin, ours, want) in [
        ("view", &view, true),
        ("edit", &view, true),
        ("admin", &view, true),
        ("view", &admin, false),
        ("edit", &admin, false),
        ("admin", &admin, true),
    ] {
        let role = kubectl(kc, &["get", "clusterrole", builtin, "-o", "json"], "")?;
        let role: serde_json::Value = serde_json::from_str(&role)?;
        let selectors = role["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .with_context(|| format!("{builtin} has no aggregation rule"))?;
        let selected = selectors.iter().any(|s| {
            s["matchLabels"]
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| ours["metadata"]["labels"][k] == *v))
        });
        ensure!(
            selected == want,
            "built-in {builtin} aggregates {}: {selected}, want {want}",
            ours["metadata"]["name"]
        );
    }
    for (user, role) in [("alice", "podnet-view"), ("bob", "podnet-admin")] {
        kubectl(
            kc,
            &[
                "create",
                "clusterrolebinding",
                &format!("rbac-test-{user}"),
                "--clusterrole",
                role,
                "--user",
                user,
            ],
            "",
        )?;
    }
    let as_ = |u: &str| format!("--as={u}");
    let (alice, bob) = (as_("alice"), as_("bob"));
    expect_can(
        kc,
        "view",
        &[
            (&["list", "podnetworks.podnet.dev", &alice], true),
            (&["get", "noderoutes.podnet.dev", &alice], true),
            (&["patch", "podnetworks.podnet.dev", &alice], false),
            (&["patch", "noderoutes.podnet.dev", &alice], false),
        ],
    )?;
    expect_can(
        kc,
        "admin",
        &[
            (&["patch", "podnetworks.podnet.dev", &bob], true),
            (&["create", "podnetworks.podnet.dev", &bob], true),
            (&["patch", "noderoutes.podnet.dev", &bob], false),
        ],
    )?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    run_api_tests(vec![
        ApiTest::new("chart_lint_and_template", lint_and_template),
        ApiTest::new("chart_install_upgrade_uninstall", install_upgrade_uninstall),
        ApiTest::new("chart_rbac_is_least_privilege", rbac_is_least_privilege),
    ])
}
