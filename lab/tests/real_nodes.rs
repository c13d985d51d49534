//! podnet the way it is used: on one real-node lab (kubelet, containerd and kube-proxy per
//! node; podnet installed with `helm install` and running as pods; workloads created
//! through the API), in order:
//!
//! 1. pods get addresses from their node's CIDRs and reach every pod, hostNetwork pod,
//!    the Service and the external host — with the right source address;
//! 2. Services (kube-proxy in nftables mode on some nodes, iptables on others) work from
//!    pods and from the nodes themselves;
//! 3. Kubernetes' own e2e suite, a bounded network subset (Granular Checks between pods,
//!    dual-stack), passes with nothing skipped;
//! 4. `nonMasqueradeCIDRs` edited with kubectl takes effect live;
//! 5. hostPorts reach their pods from everywhere, with either firewall;
//! 6. NetworkPolicy is enforced from a pod's first packet;
//! 7. the daemon runs with exactly the chart's security context, unprivileged, and still
//!    programs routes and masquerade;
//! 8. a node joining later is `Ready` only once podnet wrote its CNI config;
//! 9. 100 pods created and deleted leave no lease, veth or attachment behind;
//! 10. a rolling update of the daemon loses at most a few packets;
//! 11. `helm uninstall` and the documented cleanup leave nothing of podnet on the nodes.
//!
//! Then the lab is torn down and checked gone. Needs root, the tools of
//! scripts/build-tools.sh and the images of scripts/build-images.sh and
//! scripts/build-lab-images.sh (the test command builds all of them).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use podnet_lab::conformance;
use podnet_lab::kube_node::{self, ProxyMode, node_exec};
use podnet_lab::real::{self, ECHO_PORT, RealLab, RealOptions, fetch_from, kubectl};
use podnet_lab::run_ok;

struct Suite {
    rt: tokio::runtime::Runtime,
    lab: Mutex<Option<RealLab>>,
}

type Test = fn(&Suite, &mut RealLab) -> anyhow::Result<String>;

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<(&'static str, Test)> = vec![
        (
            "pods_get_their_nodes_cidrs_and_reach_everything",
            pods_reach_everything,
        ),
        (
            "services_work_from_pods_and_nodes_in_both_proxy_modes",
            services,
        ),
        ("kubernetes_e2e_network_subset_passes", upstream_e2e_subset),
        ("non_masquerade_cidrs_take_effect_live", non_masquerade_live),
        (
            "host_ports_reach_pods_from_everywhere_in_both_firewalls",
            host_ports,
        ),
        (
            "network_policy_is_enforced_from_the_first_packet",
            network_policy,
        ),
        (
            "cluster_network_policy_tiers_decide_around_network_policy",
            cluster_network_policy,
        ),
        (
            "pod_churn_releases_every_address_and_policy_holds_through_churn_restarts_and_an_api_outage",
            policy_holds,
        ),
        (
            "daemon_runs_unprivileged_with_the_charts_security_context",
            daemon_security,
        ),
        (
            "a_joining_node_is_ready_only_after_its_cni_config",
            node_join,
        ),
        ("rolling_daemon_update_keeps_pods_connected", rolling_update),
        (
            "uninstall_and_cleanup_leave_nothing_on_the_nodes",
            uninstall,
        ),
    ];
    if args.list {
        let trials = tests
            .iter()
            .map(|(n, _)| Trial::test(*n, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let suite = Arc::new(Suite {
        rt,
        lab: Mutex::new(None),
    });
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let suite = Arc::clone(&suite);
            Trial::test(name, move || run_test(&suite, name, f))
        })
        .collect();
    let mut conclusion = libtest_mimic::run(&args, trials);
    if let Some(lab) = suite.lab.lock().ok().and_then(|mut l| l.take()) {
        let tag = lab.tag.clone();
        real::down(&lab);
        if let Err(e) = check_gone(&tag, &lab) {
            eprintln!("the lab left something behind: {e:#}");
            conclusion.num_failed += 1;
        }
    }
    conclusion.exit_code()
}

fn run_test(suite: &Suite, name: &str, f: Test) -> Result<(), Failed> {
    podnet_lab::testing::require_root("the real-node tests")
        .map_err(|e| Failed::from(e.to_string()))?;
    let mut guard = suite
        .lab
        .lock()
        .map_err(|_| Failed::from("lab lock poisoned"))?;
    if guard.is_none() {
        *guard = Some(bring_up(suite).map_err(|e| Failed::from(format!("{e:#}")))?);
    }
    let lab = guard.as_mut().ok_or_else(|| Failed::from("no lab"))?;
    let started = Instant::now();
    let outcome = f(suite, lab);
    let took = started.elapsed().as_secs_f64();
    match &outcome {
        Ok(detail) => eprintln!("| {name} | {detail} | pass ({took:.0} s) |"),
        Err(e) => {
            eprintln!(
                "| {name} | {} | **FAIL** ({took:.0} s) |",
                format!("{e:#}").replace('\n', " ")
            );
            eprintln!("{}", log_tails(lab));
        }
    }
    outcome
        .map(drop)
        .map_err(|e| Failed::from(format!("{e:#}")))
}

fn log_tails(lab: &RealLab) -> String {
    let mut out = String::new();
    for n in &lab.nodes {
        for log in ["kubelet.log", "containerd.log"] {
            out.push_str(&format!(
                "---- {} {log}\n{}\n",
                n.name,
                tail(&n.dir.join(log), 15)
            ));
        }
    }
    if let Ok(pods) = kubectl(
        lab,
        &[
            "logs",
            "-n",
            "podnet-system",
            "-l",
            "app.kubernetes.io/component=daemon",
            "--tail=20",
            "--prefix",
        ],
        "",
    ) {
        out.push_str(&format!("---- podnet daemons\n{pods}\n"));
    }
    out
}

fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn images_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/images")
}

fn bring_up(suite: &Suite) -> anyhow::Result<RealLab> {
    let dir = images_dir();
    let images = real::image_archives(&dir)?;
    let tag = format!("pnr{}", std::process::id());
    let state = PathBuf::from(format!("/run/{tag}"));
    let opts = RealOptions {
        nodes: 3,
        proxy_modes: vec![ProxyMode::Nftables, ProxyMode::Iptables],
        images,
        podnet_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut progress =
        |what: &str, took: Duration| eprintln!("==> {what} ({:.1}s)", took.as_secs_f64());
    match suite
        .rt
        .block_on(real::up(&tag, &opts, &state, &mut progress))
    {
        Ok(lab) => Ok(lab),
        Err(e) => {
            if let Ok(lab) = real::load(&state) {
                eprintln!("{}", log_tails(&lab));
                real::down(&lab);
            }
            bail!("real-node lab up: {e}")
        }
    }
}

/// Nothing of the lab is left: namespaces, the host link, cgroups, processes, files.
fn check_gone(tag: &str, lab: &RealLab) -> anyhow::Result<()> {
    let netns = run_ok(&["ip", "netns", "list"])?;
    ensure!(!netns.contains(tag), "namespaces left: {netns}");
    ensure!(
        run_ok(&["ip", "link", "show", &lab.host_link]).is_err(),
        "{} left",
        lab.host_link
    );
    for n in &lab.nodes {
        ensure!(
            kube_node::cgroup_pids(&n.cgroup).is_empty(),
            "processes left in {}",
            n.cgroup
        );
        for h in kube_node::cgroup_hierarchies() {
            ensure!(
                !h.join(&n.cgroup).exists(),
                "cgroup {} left",
                h.join(&n.cgroup).display()
            );
        }
    }
    ensure!(!lab.dir.exists(), "{} left", lab.dir.display());
    ensure!(
        !lab.control_plane.dir.exists(),
        "{} left",
        lab.control_plane.dir.display()
    );
    Ok(())
}

fn json(lab: &RealLab, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&kubectl(lab, args, "")?)?)
}

fn wait(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = probe();
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- 1 ----

fn pods_reach_everything(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let nrs = json(lab, &["get", "nr", "-o", "json"])?;
    let cidrs_of = |node: &str| -> Vec<ipnet::IpNet> {
        nrs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|nr| nr["metadata"]["name"] == node)
            .and_then(|nr| nr["status"]["podCIDRs"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.as_str()?.parse().ok())
            .collect()
    };
    let pods = real::pods(lab)?;
    let mut checked = 0;
    for p in pods.iter().filter(|p| !p.host_network) {
        let cidrs = cidrs_of(&p.node);
        ensure!(
            p.ips.len() == 2,
            "{} has {:?}: one address per family wanted",
            p.name,
            p.ips
        );
        for ip in &p.ips {
            let ip: std::net::IpAddr = ip.parse()?;
            ensure!(
                cidrs.iter().any(|c| c.contains(&ip)),
                "{}'s {ip} is outside {}'s CIDRs {cidrs:?}",
                p.name,
                p.node
            );
            checked += 1;
        }
    }
    let (table, ok, total, problems) = real::matrix(lab)?;
    ensure!(
        ok == total,
        "{} of {total} paths failed:\n{table}\n{}",
        total - ok,
        problems.join("\n")
    );
    Ok(format!(
        "{checked} pod addresses inside their node's CIDRs (both families); {ok}/{total} paths (pod, hostNetwork pod, Service, external host; IPv4 and IPv6) with the source address the receiver must see"
    ))
}

// ---- 2 ----

fn services(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let svc = kubectl(
        lab,
        &[
            "get",
            "svc",
            "-n",
            "lab",
            "echo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        "",
    )?;
    ensure!(!svc.is_empty(), "the echo Service has no ClusterIP");
    let mut modes = Vec::new();
    for n in &lab.nodes {
        // kube-proxy's own rules, in the mode it was given.
        match n.proxy_mode {
            ProxyMode::Nftables => {
                let t = node_exec(n.anchor_pid, &["nft", "list", "tables"])?;
                ensure!(
                    t.contains("kube-proxy"),
                    "{}: no kube-proxy nftables table: {t}",
                    n.name
                );
            }
            ProxyMode::Iptables => {
                let t = node_exec(n.anchor_pid, &["iptables-save", "-t", "nat"])?;
                ensure!(
                    t.contains("KUBE-SERVICES"),
                    "{}: no KUBE-SERVICES chain",
                    n.name
                );
            }
        }
        modes.push(format!("{} {:?}", n.name, n.proxy_mode));
        // From the node itself (host network), several times: every endpoint answers.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let out = node_exec(
                n.anchor_pid,
                &["curl", "-s", "-m", "3", &format!("http://{svc}/cgi-bin/ip")],
            )
            .with_context(|| format!("{}: curl to the Service {svc}", n.name))?;
            seen.insert(out.trim().to_string());
        }
        ensure!(!seen.is_empty(), "{}: no answer from the Service", n.name);
    }
    // From pods on every node (the matrix checked one each; here every pod).
    let pods = real::pods(lab)?;
    let mut from_pods = 0;
    for p in pods.iter().filter(|p| p.name.contains("-pod")) {
        ensure!(
            fetch_from(lab, &p.name, &svc, 80).is_some(),
            "{} cannot reach the Service {svc}",
            p.name
        );
        from_pods += 1;
    }
    Ok(format!(
        "Service {svc} answered from every node ({}) and from {from_pods} pods",
        modes.join(", ")
    ))
}

// ---- 3 ----

/// The upstream e2e subset (`conformance::SUBSET_FOCUS`): every selected test must run
/// and pass — a test that skips itself fails this test too (the selection would be
/// broken, not passed).
fn upstream_e2e_subset(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let run = conformance::Run {
        focus: conformance::SUBSET_FOCUS.into(),
        skip: conformance::SUBSET_SKIP.into(),
        procs: 4,
        report_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-subset"),
        timeout: Duration::from_secs(15 * 60),
    };
    let report = conformance::run(lab, &run)?;
    let (passed, failed, skipped) = report.counts();
    let bad: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.outcome != conformance::Outcome::Passed)
        .map(|c| format!("{} -> {:?}", c.name, c.outcome))
        .collect();
    ensure!(
        failed == 0 && skipped == 0 && report.exit_ok,
        "{}: {} (JUnit {}, output {})",
        report.summary(),
        bad.join("; "),
        report.junit.display(),
        report.log.display()
    );
    ensure!(
        passed >= 10,
        "only {passed} tests ran ({}): the focus no longer selects the subset",
        report.summary()
    );
    Ok(report.summary())
}

fn non_masquerade_live(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let pod = real::pods(lab)?
        .into_iter()
        .find(|p| p.name == "node-1-pod1")
        .context("node-1-pod1")?;
    let node_ip = lab.nodes[0].ips[0].clone();
    let ext = lab.external_ips[0].clone();
    ensure!(
        fetch_from(lab, &pod.name, &ext, ECHO_PORT).as_deref() == Some(node_ip.as_str()),
        "before the edit the external host does not see the node's address"
    );
    let set = |cidrs: &[String]| {
        kubectl(
            lab,
            &[
                "patch",
                "pn",
                "default",
                "--type=merge",
                "-p",
                &serde_json::json!({"spec": {"masquerade": {"nonMasqueradeCIDRs": cidrs}}})
                    .to_string(),
            ],
            "",
        )
    };
    // A destination that keeps the pod's address must route back to pods: the external
    // host learns node-1's pod CIDR (via node-1), as a peered network would.
    let ext_ns = format!("{}-ext", lab.tag);
    let v4_cidr = kubectl(
        lab,
        &[
            "get",
            "nr",
            "node-1",
            "-o",
            "jsonpath={.status.podCIDRs[0]}",
        ],
        "",
    )?;
    run_ok(&[
        "ip", "-n", &ext_ns, "route", "add", &v4_cidr, "via", &node_ip,
    ])?;
    let t = Instant::now();
    set(&[format!("{ext}/32"), format!("{}/128", lab.external_ips[1])])?;
    let pod_ip = pod.ips[0].clone();
    let applied = wait(
        "the external host to see the pod's own address",
        Duration::from_secs(20),
        || Ok(fetch_from(lab, &pod.name, &ext, ECHO_PORT).as_deref() == Some(pod_ip.as_str())),
    );
    let took = t.elapsed();
    set(&[])?;
    let _ = run_ok(&["ip", "-n", &ext_ns, "route", "del", &v4_cidr]);
    applied?;
    wait(
        "masquerade back after the revert",
        Duration::from_secs(20),
        || Ok(fetch_from(lab, &pod.name, &ext, ECHO_PORT).as_deref() == Some(node_ip.as_str())),
    )?;
    Ok(format!(
        "nonMasqueradeCIDRs edited with kubectl: the external host saw the pod's {pod_ip} within {:.1} s, the node's {node_ip} again after the revert",
        took.as_secs_f64()
    ))
}

// ---- 3b ----

/// The HTTP answer of the echo server at `[target]:port`, asked from the external
/// host's namespace with busybox `nc`: the client address it saw.
fn ext_fetch(lab: &RealLab, target: &str, port: u16) -> Option<String> {
    let ns = format!("/var/run/netns/{}-ext", lab.tag);
    let out = podnet_lab::output_with_input(
        std::process::Command::new("nsenter").args([
            &format!("--net={ns}"),
            "busybox",
            "nc",
            "-w",
            "3",
            target,
            &port.to_string(),
        ]),
        "GET /cgi-bin/ip HTTP/1.0\r\n\r\n",
    )
    .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with('['))
        .map(|l| {
            let inner = l.trim_start_matches('[').trim_end_matches(']');
            inner.strip_prefix("::ffff:").unwrap_or(inner).to_string()
        })
}

fn host_ports(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    const HOST_PORT: u16 = 30080;
    // One pod with a hostPort on an nftables node and one on the iptables node.
    let picks: Vec<usize> = [ProxyMode::Nftables, ProxyMode::Iptables]
        .iter()
        .filter_map(|m| lab.nodes.iter().position(|n| n.proxy_mode == *m))
        .collect();
    ensure!(picks.len() == 2, "the lab needs a node of each proxy mode");
    let mut manifest = String::new();
    for &i in &picks {
        manifest.push_str(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: hostport-{node}
  namespace: lab
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/podnet-lab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/busybox", "httpd", "-f", "-p", "[::]:{ECHO_PORT}", "-h", "/www"]
    ports:
    - containerPort: {ECHO_PORT}
      hostPort: {HOST_PORT}
      protocol: TCP
---
"#,
            node = lab.nodes[i].name
        ));
    }
    kubectl(lab, &["apply", "-f", "-"], &manifest)?;
    let cleanup = |lab: &RealLab| kubectl(lab, &["delete", "-f", "-", "--wait=true"], &manifest);
    let result = (|| -> anyhow::Result<(Vec<String>, Vec<String>)> {
        for &i in &picks {
            let pod = format!("hostport-{}", lab.nodes[i].name);
            kubectl(
                lab,
                &[
                    "wait",
                    "-n",
                    "lab",
                    "--for=condition=Ready",
                    &format!("pod/{pod}"),
                    "--timeout=120s",
                ],
                "",
            )
            .with_context(|| {
                kubectl(
                    lab,
                    &[
                        "get",
                        "events",
                        "-n",
                        "lab",
                        "--field-selector",
                        &format!("involvedObject.name={pod}"),
                    ],
                    "",
                )
                .unwrap_or_default()
            })?;
        }
        let mut seen = Vec::new();
        let mut retried = Vec::new();
        for &i in &picks {
            let n = &lab.nodes[i];
            let other = lab
                .nodes
                .iter()
                .find(|o| o.name != n.name)
                .context("a second node")?;
            let same_node_pod = format!("{}-pod1", n.name);
            let other_node_pod = format!("{}-pod1", other.name);
            let me = format!("hostport-{}", n.name);
            // Where podnet-cni put the rules: the firewall the node's daemon chose.
            let firewall = kubectl(
                lab,
                &["get", "nr", &n.name, "-o", "jsonpath={.status.firewall}"],
                "",
            )?;
            let rules = if n.proxy_mode == ProxyMode::Nftables {
                node_exec(
                    n.anchor_pid,
                    &["nft", "list", "table", "inet", "podnet-hostports"],
                )?
            } else {
                node_exec(n.anchor_pid, &["iptables-save", "-t", "nat"])?
            };
            ensure!(
                rules.contains(&format!("dport {HOST_PORT}")),
                "{}: no hostPort rule in the {:?} node's firewall:\n{rules}",
                n.name,
                n.proxy_mode
            );
            for (fam, node_ip) in n.ips.iter().enumerate() {
                let url_ip = if node_ip.contains(':') {
                    format!("[{node_ip}]")
                } else {
                    node_ip.clone()
                };
                let ext = ext_fetch(lab, node_ip, HOST_PORT);
                ensure!(
                    ext.as_deref() == Some(lab.external_ips[fam].as_str()),
                    "{}: the external host reaching {node_ip}:{HOST_PORT} was seen as {ext:?} (want its own {})",
                    n.name,
                    lab.external_ips[fam]
                );
                let from_other = node_exec(
                    other.anchor_pid,
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "3",
                        &format!("http://{url_ip}:{HOST_PORT}/cgi-bin/ip"),
                    ],
                )
                .unwrap_or_default();
                ensure!(
                    from_other.contains(&other.ips[fam]),
                    "{}: {} (host network) reaching {node_ip}:{HOST_PORT} got {from_other:?}",
                    n.name,
                    other.name
                );
                let from_self = node_exec(
                    n.anchor_pid,
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "3",
                        &format!("http://{url_ip}:{HOST_PORT}/cgi-bin/ip"),
                    ],
                )
                .unwrap_or_default();
                ensure!(
                    !from_self.trim().is_empty(),
                    "{}: the node cannot reach its own hostPort on {node_ip}",
                    n.name
                );
                for (from, what) in [
                    (&same_node_pod, "a pod on the same node"),
                    (&other_node_pod, "a pod on another node"),
                    (&me, "the pod itself (hairpin)"),
                ] {
                    // A failed try is retried (twice) and counted: the result line says
                    // how many paths needed it, with the first failure's reason.
                    let mut failures = Vec::new();
                    while failures.len() < 3 {
                        match real::ask_from(lab, from, node_ip, HOST_PORT) {
                            Ok(_) => break,
                            Err(e) => failures.push(e),
                        }
                    }
                    ensure!(
                        failures.len() < 3,
                        "{}: {what} ({from}) cannot reach {node_ip}:{HOST_PORT} in 3 tries: {failures:?}",
                        n.name
                    );
                    if let Some(first) = failures.first() {
                        retried.push(format!("{from} -> {node_ip}: {first}"));
                    }
                }
            }
            seen.push(format!("{} ({firewall})", n.name));
        }
        Ok((seen, retried))
    })();
    cleanup(lab)?;
    let (seen, retried) = result?;
    // Deleting the pods removed every rule.
    for &i in &picks {
        let n = &lab.nodes[i];
        wait(
            &format!("{}: hostPort rules gone", n.name),
            Duration::from_secs(30),
            || {
                let nft = node_exec(n.anchor_pid, &["nft", "list", "tables"])?;
                let ipt = node_exec(n.anchor_pid, &["iptables-save", "-t", "nat"])?;
                Ok(!nft.contains("podnet-hostports")
                    && !ipt.contains(&format!("--dport {HOST_PORT}")))
            },
        )?;
    }
    Ok(format!(
        "hostPort {HOST_PORT}/TCP on {}: reached over IPv4 and IPv6 from the external host (its own address kept), another node, the node itself, a pod on the same node, a pod on another node and the pod itself; rules gone with the pods{}",
        seen.join(" and "),
        if retried.is_empty() {
            String::new()
        } else {
            format!(
                "; {} pod path(s) answered only on a retry: {retried:?}",
                retried.len()
            )
        }
    ))
}

// ---- 3c ----

/// What the echo server at `[target]:port` saw, asked from pod `ns/pod` with a
/// `wait`-second timeout; `None` when nothing answered.
fn ask(lab: &RealLab, ns: &str, pod: &str, target: &str, port: u16, wait: u32) -> Option<String> {
    let script =
        format!("printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w {wait} {target} {port}");
    let out = kubectl(lab, &["exec", "-n", ns, pod, "--", "sh", "-c", &script], "").ok()?;
    out.lines()
        .map(str::trim)
        .rfind(|l| l.starts_with('['))
        .map(str::to_string)
}

fn policy_pod(name: &str, ns: &str, node: &str, role: &str, command: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{pol: "{role}"}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: localhost/podnet-lab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/busybox", "sh", "-c", "{command}"]
    ports:
    - {{name: http, containerPort: {ECHO_PORT}}}
---
"#
    )
}

fn network_policy(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let httpd = format!("exec /bin/busybox httpd -f -p [::]:{ECHO_PORT} -h /www");
    let (n1, n2, n3) = (
        lab.nodes[0].name.clone(),
        lab.nodes[1].name.clone(),
        lab.nodes[2].name.clone(),
    );
    let mut docs =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab-peer\n---\n");
    for (name, node, role) in [
        ("srv-1", &n1, "srv"),
        ("srv-2", &n2, "srv"),
        ("ok-1", &n1, "ok"),
        ("ok-3", &n3, "ok"),
        ("no-1", &n1, "no"),
        ("no-2", &n2, "no"),
    ] {
        docs.push_str(&policy_pod(name, "lab", node, role, &httpd));
    }
    docs.push_str(&policy_pod("peer-3", "lab-peer", &n3, "ok", &httpd));
    kubectl(lab, &["apply", "-f", "-"], &docs)?;
    // The test's policies carry a label: one command deletes them all.
    let delete_policies = |lab: &RealLab| {
        kubectl(
            lab,
            &[
                "delete",
                "networkpolicy",
                "-n",
                "lab",
                "-l",
                "podnet-test=policy",
                "--wait=true",
            ],
            "",
        )
    };
    let cleanup = |lab: &RealLab| {
        let _ = delete_policies(lab);
        let _ = kubectl(lab, &["delete", "-f", "-", "--wait=true"], &docs);
    };
    let result = (|| -> anyhow::Result<String> {
        for (ns, pod) in [
            ("lab", "srv-1"),
            ("lab", "srv-2"),
            ("lab", "ok-1"),
            ("lab", "ok-3"),
            ("lab", "no-1"),
            ("lab", "no-2"),
            ("lab-peer", "peer-3"),
        ] {
            kubectl(
                lab,
                &[
                    "wait",
                    "-n",
                    ns,
                    "--for=condition=Ready",
                    &format!("pod/{pod}"),
                    "--timeout=120s",
                ],
                "",
            )?;
        }
        let ips = |ns: &str, pod: &str| -> anyhow::Result<Vec<String>> {
            let out = kubectl(
                lab,
                &[
                    "get",
                    "pod",
                    "-n",
                    ns,
                    pod,
                    "-o",
                    "jsonpath={.status.podIPs[*].ip}",
                ],
                "",
            )?;
            Ok(out.split_whitespace().map(str::to_string).collect())
        };
        let servers: Vec<(String, Vec<String>)> = ["srv-1", "srv-2"]
            .iter()
            .map(|s| ips("lab", s).map(|i| (s.to_string(), i)))
            .collect::<anyhow::Result<_>>()?;
        ensure!(
            servers.iter().all(|(_, i)| i.len() == 2),
            "servers need both families: {servers:?}"
        );
        // Every client to every server, both families: Some(true) reached, Some(false)
        // not, per (client, server, family).
        let matrix = |clients: &[(&str, &str)], wait: u32| -> Vec<(String, bool)> {
            let mut out = Vec::new();
            for (ns, c) in clients {
                for (s, sips) in &servers {
                    for ip in sips {
                        let ok = ask(lab, ns, c, ip, ECHO_PORT, wait).is_some();
                        out.push((format!("{c}->{s}[{ip}]"), ok));
                    }
                }
            }
            out
        };
        let all_clients = [
            ("lab", "ok-1"),
            ("lab", "ok-3"),
            ("lab", "no-1"),
            ("lab", "no-2"),
            ("lab-peer", "peer-3"),
        ];
        let before = matrix(&all_clients, 3);
        let unreachable: Vec<&String> = before
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(k, _)| k)
            .collect();
        ensure!(
            unreachable.is_empty(),
            "without a policy every client reaches every server; not: {unreachable:?}"
        );
        // 1. Ingress to the servers only from pol=ok pods of their namespace, on the
        //    named port.
        let apply = |yaml: &str| kubectl(lab, &["apply", "-f", "-"], yaml);
        apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: srv-from-ok\n  namespace: lab\n  labels: {podnet-test: policy}\nspec:\n  podSelector: {matchLabels: {pol: srv}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pol: ok}}}]\n    ports: [{port: http}]\n",
        )?;
        let t = Instant::now();
        let want_first =
            |m: &[(String, bool)]| m.iter().all(|(k, ok)| *ok == (k.starts_with("ok-")));
        let mut last = Vec::new();
        wait("the first policy enforced", Duration::from_secs(30), || {
            last = matrix(&all_clients, 1);
            Ok(want_first(&last))
        })
        .with_context(|| format!("{last:?}"))?;
        let enforced_in = t.elapsed();
        // 2. A second policy adds pods of another namespace (namespaceSelector + podSelector).
        apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: srv-from-peer\n  namespace: lab\n  labels: {podnet-test: policy}\nspec:\n  podSelector: {matchLabels: {pol: srv}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: lab-peer}}\n      podSelector: {matchLabels: {pol: ok}}\n",
        )?;
        wait("the namespace selector", Duration::from_secs(30), || {
            last = matrix(&[("lab-peer", "peer-3"), ("lab", "no-2")], 1);
            Ok(last.iter().all(|(k, ok)| *ok == k.starts_with("peer-")))
        })
        .with_context(|| format!("{last:?}"))?;
        // 3. The node itself always reaches its pods.
        let srv1_ip = &servers[0].1[0];
        let from_node = node_exec(
            lab.nodes[0].anchor_pid,
            &[
                "curl",
                "-s",
                "-m",
                "3",
                &format!("http://{srv1_ip}:{ECHO_PORT}/cgi-bin/ip"),
            ],
        )
        .unwrap_or_default();
        ensure!(
            !from_node.trim().is_empty(),
            "{n1} cannot reach its own isolated pod {srv1_ip}"
        );
        // 4. Egress: ok-1 may reach the servers only (not the external host, not
        //    no-1's server port).
        apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: ok1-egress\n  namespace: lab\n  labels: {podnet-test: policy}\nspec:\n  podSelector: {matchLabels: {pol: ok}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {pol: srv}}}]\n    ports: [{port: 8080, protocol: TCP}]\n",
        )?;
        let ext = lab.external_ips[0].clone();
        let no1 = ips("lab", "no-1")?;
        wait("egress enforced", Duration::from_secs(30), || {
            Ok(ask(lab, "lab", "ok-1", &ext, ECHO_PORT, 1).is_none()
                && ask(lab, "lab", "ok-1", &no1[0], ECHO_PORT, 1).is_none())
        })?;
        ensure!(
            ask(lab, "lab", "ok-1", &servers[1].1[1], ECHO_PORT, 3).is_some(),
            "ok-1 lost its allowed egress to srv-2 over IPv6"
        );
        // 5. A new pod is covered before its first packet: an egress deny-all exists,
        //    then a pod that tries the external host from its first instant.
        apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: fp-deny-egress\n  namespace: lab\n  labels: {podnet-test: policy}\nspec:\n  podSelector: {matchLabels: {pol: fp}}\n  policyTypes: [Egress]\n",
        )?;
        let probe = format!(
            "i=0; while [ $i -lt 20 ]; do if printf x | nc -w 1 {ext} {ECHO_PORT} >/dev/null 2>&1; then echo LEAK; fi; i=$((i+1)); done; echo tried $i; exec sleep 3600"
        );
        let fp = policy_pod("fp", "lab", &n1, "fp", &probe);
        kubectl(lab, &["apply", "-f", "-"], &fp)?;
        let fp_result = (|| -> anyhow::Result<()> {
            wait(
                "the first-packet probe finished",
                Duration::from_secs(120),
                || {
                    Ok(kubectl(lab, &["logs", "-n", "lab", "fp"], "")
                        .is_ok_and(|l| l.contains("tried")))
                },
            )?;
            let log = kubectl(lab, &["logs", "-n", "lab", "fp"], "")?;
            ensure!(
                !log.contains("LEAK"),
                "a pod under an egress deny-all reached the external host before its policy applied:\n{log}"
            );
            Ok(())
        })();
        let _ = kubectl(lab, &["delete", "-f", "-", "--wait=true"], &fp);
        fp_result?;
        // 6. Policies gone: everything reachable again.
        delete_policies(lab)?;
        wait(
            "everything reachable again",
            Duration::from_secs(30),
            || {
                last = matrix(&all_clients, 1);
                Ok(last.iter().all(|(_, ok)| *ok))
            },
        )
        .with_context(|| format!("{last:?}"))?;
        // The daemons' own rule-update latency (podnet_daemon_policy_update_seconds).
        let mut latency = Vec::new();
        for n in &lab.nodes {
            let text = node_exec(
                n.anchor_pid,
                &["curl", "-s", "-m", "3", "http://127.0.0.1:9466/metrics"],
            )?;
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            };
            let (sum, count) = (
                value("podnet_daemon_policy_update_seconds_sum"),
                value("podnet_daemon_policy_update_seconds_count"),
            );
            let (Some(sum), Some(count)) = (sum, count) else {
                anyhow::bail!(
                    "{}: no podnet_daemon_policy_update_seconds in its metrics",
                    n.name
                );
            };
            ensure!(
                count > 0.0,
                "{}: the daemon never recorded a policy update",
                n.name
            );
            latency.push(format!(
                "{} {:.1} ms over {count}",
                n.name,
                sum / count * 1000.0
            ));
        }
        Ok(format!(
            "ingress from a pod selector on a named port: the whole matrix as wanted {:.1} s after kubectl apply, probes included (same node and across nodes, IPv4 and IPv6, {} paths checked); daemons' mean policy update {}; a namespace+pod selector added a namespace's pods; the node reached its isolated pod; egress limited to the servers (external host and other pods refused); a new pod under an egress deny-all never reached the external host in 20 one-second tries from its first instant; all reachable again once the policies were deleted",
            enforced_in.as_secs_f64(),
            last.len(),
            latency.join(", ")
        ))
    })();
    cleanup(lab);
    result
}

// ---- 3d ----

/// A ClusterNetworkPolicy of the test (label podnet-test=cnp).
fn cnp(name: &str, tier: &str, priority: u32, subject: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\n  labels: {{podnet-test: cnp}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {subject}\n{rules}"
    )
}

/// The cluster-admin tiers as a cluster admin uses them, through kubectl and the
/// chart's CRD: a Baseline default-deny that a namespace's NetworkPolicy overrides, an
/// Admin Accept that overrides that NetworkPolicy, an Admin Deny of higher precedence
/// over both, a Pass handing back to the NetworkPolicy, an Admin egress Deny to a
/// network; same node and across nodes, IPv4 and IPv6.
fn cluster_network_policy(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let httpd = format!("exec /bin/busybox httpd -f -p [::]:{ECHO_PORT} -h /www");
    let idle = "exec sleep 3600";
    let (n1, n2, n3) = (
        lab.nodes[0].name.clone(),
        lab.nodes[1].name.clone(),
        lab.nodes[2].name.clone(),
    );
    let mut docs = String::new();
    for ns in ["tier-a", "tier-b"] {
        docs.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n"
        ));
    }
    docs.push_str(&policy_pod("srv", "tier-a", &n1, "srv", &httpd));
    docs.push_str(&policy_pod("cli-a", "tier-a", &n2, "cli", idle));
    docs.push_str(&policy_pod("cli-b", "tier-b", &n3, "cli", idle));
    docs.push_str(&policy_pod("cli-b1", "tier-b", &n1, "cli", idle));
    kubectl(lab, &["apply", "-f", "-"], &docs)?;
    let delete_policies = |lab: &RealLab| {
        let _ = kubectl(
            lab,
            &[
                "delete",
                "clusternetworkpolicy",
                "-l",
                "podnet-test=cnp",
                "--wait=true",
            ],
            "",
        );
        let _ = kubectl(
            lab,
            &[
                "delete",
                "networkpolicy",
                "-n",
                "tier-a",
                "--all",
                "--wait=true",
            ],
            "",
        );
    };
    let result = (|| -> anyhow::Result<String> {
        for (ns, pod) in [
            ("tier-a", "srv"),
            ("tier-a", "cli-a"),
            ("tier-b", "cli-b"),
            ("tier-b", "cli-b1"),
        ] {
            kubectl(
                lab,
                &[
                    "wait",
                    "-n",
                    ns,
                    "--for=condition=Ready",
                    &format!("pod/{pod}"),
                    "--timeout=120s",
                ],
                "",
            )?;
        }
        let srv: Vec<String> = kubectl(
            lab,
            &[
                "get",
                "pod",
                "-n",
                "tier-a",
                "srv",
                "-o",
                "jsonpath={.status.podIPs[*].ip}",
            ],
            "",
        )?
        .split_whitespace()
        .map(str::to_string)
        .collect();
        ensure!(srv.len() == 2, "srv needs both families: {srv:?}");
        let clients = [
            ("tier-a", "cli-a"),
            ("tier-b", "cli-b"),
            ("tier-b", "cli-b1"),
        ];
        // Which clients reach srv over both families (a client counts as reaching only
        // when both do, and as refused only when neither does).
        let reach = |wait: u32| -> Vec<(String, Option<bool>)> {
            clients
                .iter()
                .map(|(ns, c)| {
                    let got: Vec<bool> = srv
                        .iter()
                        .map(|ip| ask(lab, ns, c, ip, ECHO_PORT, wait).is_some())
                        .collect();
                    let v = if got.iter().all(|g| *g) {
                        Some(true)
                    } else if got.iter().all(|g| !*g) {
                        Some(false)
                    } else {
                        None // the families disagree
                    };
                    (c.to_string(), v)
                })
                .collect()
        };
        let mut last = Vec::new();
        let mut expect = |what: &str, want: [bool; 3]| -> anyhow::Result<f64> {
            let t = Instant::now();
            wait(what, Duration::from_secs(30), || {
                last = reach(1);
                Ok(last.iter().zip(want).all(|((_, got), w)| *got == Some(w)))
            })
            .with_context(|| format!("wanted cli-a, cli-b, cli-b1 = {want:?}, got {last:?}"))?;
            Ok(t.elapsed().as_secs_f64())
        };
        let apply = |yaml: &str| kubectl(lab, &["apply", "-f", "-"], yaml);
        expect("everything reachable without policies", [true, true, true])?;
        let srv_subject = "{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: tier-a}}, podSelector: {matchLabels: {pol: srv}}}}";
        // 1. A Baseline default-deny for srv.
        apply(&cnp(
            "base-deny",
            "Baseline",
            10,
            srv_subject,
            "  ingress:\n  - {name: all, action: Deny, from: [{namespaces: {}}]}\n",
        ))?;
        let t1 = expect("the Baseline deny", [false, false, false])?;
        // 2. The namespace's NetworkPolicy overrides the baseline: cli-a only.
        apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: srv-from-cli\n  namespace: tier-a\nspec:\n  podSelector: {matchLabels: {pol: srv}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pol: cli}}}]\n",
        )?;
        expect("the NetworkPolicy over the Baseline", [true, false, false])?;
        // 3. An Admin Accept from tier-b overrides the NetworkPolicy.
        apply(&cnp(
            "admin-accept-b",
            "Admin",
            20,
            srv_subject,
            "  ingress:\n  - {name: from-b, action: Accept, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: tier-b}}}]}\n",
        ))?;
        expect(
            "the Admin Accept over the NetworkPolicy",
            [true, true, true],
        )?;
        // 4. An Admin Deny of higher precedence (lower priority number) over both.
        let deny_a = |action: &str| {
            cnp(
                "admin-first",
                "Admin",
                5,
                srv_subject,
                &format!(
                    "  ingress:\n  - {{name: a, action: {action}, from: [{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: tier-a}}}}}}]}}\n  - {{name: b1, action: {action}, from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pol: cli}}}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 9}}}}}}]}}\n"
                ),
            )
        };
        apply(&deny_a("Deny"))?;
        expect("the Admin Deny over the NetworkPolicy", [false, true, true])?;
        // 5. The same rule as Pass: NetworkPolicy decides for cli-a again (the port-9
        //    rule never matches the echo port).
        apply(&deny_a("Pass"))?;
        expect(
            "the Admin Pass back to the NetworkPolicy",
            [true, true, true],
        )?;
        // 6. Admin egress Deny to the external host's network for tier-b's pods.
        let ext = lab.external_ips.clone();
        apply(&cnp(
            "admin-egress",
            "Admin",
            30,
            "{namespaces: {matchLabels: {kubernetes.io/metadata.name: tier-b}}}",
            &format!(
                "  egress:\n  - {{name: no-ext, action: Deny, to: [{{networks: [{}/32, {}/128]}}]}}\n",
                ext[0], ext[1]
            ),
        ))?;
        wait(
            "the egress Deny to a network",
            Duration::from_secs(30),
            || {
                Ok(ext
                    .iter()
                    .all(|e| ask(lab, "tier-b", "cli-b", e, ECHO_PORT, 1).is_none()))
            },
        )?;
        ensure!(
            ext.iter()
                .all(|e| ask(lab, "tier-a", "cli-a", e, ECHO_PORT, 3).is_some()),
            "tier-a's pods lost the external host to a policy for tier-b"
        );
        // 7. Everything gone: everything reachable again.
        delete_policies(lab);
        expect(
            "everything reachable after the policies are deleted",
            [true, true, true],
        )?;
        Ok(format!(
            "Baseline deny enforced {t1:.1} s after kubectl apply (probes included); a NetworkPolicy overrode it; an Admin Accept overrode the NetworkPolicy; an Admin Deny of higher precedence overrode both; Pass handed back to the NetworkPolicy; an Admin egress Deny to a network (IPv4 and IPv6) held for tier-b only; all reachable again once deleted (same node and across nodes, IPv4 and IPv6)"
        ))
    })();
    delete_policies(lab);
    let _ = kubectl(lab, &["delete", "-f", "-", "--wait=true"], &docs);
    result
}

// ---- 3e ----

const AGNHOST: &str = podnet_lab::real::AGNHOST_IMAGE;

/// A pod that probes `target`'s echo port from its first instant, about once a second,
/// and logs `<unix seconds> OK` or `NO` per try.
fn prober_pod(name: &str, ns: &str, node: &str, role: &str, target: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{pol: "{role}"}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {AGNHOST}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "while true; do if nc -z -w 1 {target} {ECHO_PORT} 2>/dev/null; then echo $(date +%s) OK; else echo $(date +%s) NO; fi; sleep 1; done"]
---
"#
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Enforcement holds while everything around it moves: an isolated server, a client
/// its policy allows and one it does not, both probing about once a second from their
/// own logs; through 100 pods created and deleted, the daemons of the server's and the
/// refused client's nodes restarted, and the API server stopped for 20 s, the allowed
/// client never fails and the refused one never gets through.
fn policy_holds(suite: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let ns = "hold";
    let httpd = format!("exec /bin/busybox httpd -f -p [::]:{ECHO_PORT} -h /www");
    let (n1, n2, n3) = (
        lab.nodes[0].name.clone(),
        lab.nodes[1].name.clone(),
        lab.nodes[2].name.clone(),
    );
    let mut docs = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n");
    docs.push_str(&policy_pod("srv", ns, &n1, "srv", &httpd));
    kubectl(lab, &["apply", "-f", "-"], &docs)?;
    let cleanup = |lab: &RealLab| {
        let _ = kubectl(
            lab,
            &["delete", "namespace", ns, "--wait=true", "--timeout=180s"],
            "",
        );
    };
    // The API server is stopped and started through a copy of the record, written
    // back (and saved for `down`) afterwards.
    let mut cp = lab.control_plane.clone();
    let result = (|| -> anyhow::Result<String> {
        let ready = |pod: &str| {
            kubectl(
                lab,
                &[
                    "wait",
                    "-n",
                    ns,
                    "--for=condition=Ready",
                    &format!("pod/{pod}"),
                    "--timeout=120s",
                ],
                "",
            )
        };
        ready("srv")?;
        let srv = kubectl(
            lab,
            &[
                "get",
                "pod",
                "-n",
                ns,
                "srv",
                "-o",
                "jsonpath={.status.podIPs[0].ip}",
            ],
            "",
        )?;
        let clients = format!(
            "{}{}",
            prober_pod("cli-ok", ns, &n2, "ok", &srv),
            prober_pod("cli-no", ns, &n3, "no", &srv)
        );
        kubectl(lab, &["apply", "-f", "-"], &clients)?;
        ready("cli-ok")?;
        ready("cli-no")?;
        kubectl(
            lab,
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: srv-from-ok\n  namespace: {ns}\nspec:\n  podSelector: {{matchLabels: {{pol: srv}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pol: ok}}}}}}]\n"
            ),
        )?;
        // (OK, NO) tries of a client's log within [from, to] (unix seconds).
        let tries = |pod: &str, from: u64, to: u64| -> anyhow::Result<(usize, usize)> {
            let log = kubectl(lab, &["logs", "-n", ns, pod], "")?;
            let mut counts = (0, 0);
            for line in log.lines() {
                let mut w = line.split_whitespace();
                let (Some(Ok(t)), Some(what)) = (w.next().map(str::parse::<u64>), w.next()) else {
                    continue;
                };
                if t < from || t > to {
                    continue;
                }
                match what {
                    "OK" => counts.0 += 1,
                    _ => counts.1 += 1,
                }
            }
            Ok(counts)
        };
        let settled_from = unix_now() + 3;
        wait("the policy enforced", Duration::from_secs(60), || {
            let now = unix_now();
            if now < settled_from + 3 {
                return Ok(false);
            }
            Ok(tries("cli-ok", now - 3, now)?.1 == 0 && tries("cli-no", now - 3, now)?.0 == 0)
        })?;
        let mut report = Vec::new();
        let mut check = |phase: &str, from: u64, to: u64| -> anyhow::Result<()> {
            let ok = tries("cli-ok", from, to)?;
            let no = tries("cli-no", from, to)?;
            ensure!(
                ok.1 == 0 && no.0 == 0 && ok.0 > 0 && no.1 > 0,
                "{phase} ({} s): the allowed client had {} successes and {} failures, the refused one {} successes and {} failures",
                to - from,
                ok.0,
                ok.1,
                no.0,
                no.1
            );
            report.push(format!(
                "{phase}: {} allowed tries all through, {} refused tries all refused",
                ok.0, no.1
            ));
            Ok(())
        };
        // 1. 100 pods created and deleted across the nodes, every address released.
        let t0 = unix_now();
        let churned = churn_100(lab, ns)?;
        let t1 = unix_now();
        check("100 pods created and deleted", t0, t1)?;
        // 2. The daemons of the server's and the refused client's nodes restarted.
        for node in [&n1, &n3] {
            kubectl(
                lab,
                &[
                    "delete",
                    "pod",
                    "-n",
                    "podnet-system",
                    "-l",
                    "app.kubernetes.io/component=daemon",
                    "--field-selector",
                    &format!("spec.nodeName={node}"),
                    "--wait=true",
                ],
                "",
            )?;
        }
        kubectl(
            lab,
            &[
                "rollout",
                "status",
                "ds/podnet-daemon",
                "-n",
                "podnet-system",
                "--timeout=120s",
            ],
            "",
        )?;
        std::thread::sleep(Duration::from_secs(3));
        let t2 = unix_now();
        check("two daemons restarted", t1 + 1, t2)?;
        // 3. The API server away for 20 s.
        cp.stop_apiserver();
        let t3 = unix_now();
        std::thread::sleep(Duration::from_secs(20));
        let t4 = unix_now();
        suite.rt.block_on(cp.start_apiserver())?;
        std::thread::sleep(Duration::from_secs(2));
        check("the API server stopped for 20 s", t3, t4)?;
        check("the whole run", settled_from + 3, unix_now())?;
        Ok(format!("{churned}; {}", report.join("; ")))
    })();
    lab.control_plane = cp;
    real::save(lab)?;
    cleanup(lab);
    result
}

// ---- 4 ----

fn daemon_security(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let ds = json(
        lab,
        &[
            "get",
            "ds",
            "-n",
            "podnet-system",
            "podnet-daemon",
            "-o",
            "json",
        ],
    )?;
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] == false, "privileged: {sc}");
    ensure!(
        sc["allowPrivilegeEscalation"] == false,
        "allowPrivilegeEscalation: {sc}"
    );
    ensure!(
        sc["readOnlyRootFilesystem"] == true,
        "readOnlyRootFilesystem: {sc}"
    );
    ensure!(
        sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "drop: {sc}"
    );
    ensure!(
        sc["capabilities"]["add"] == serde_json::json!(["NET_ADMIN", "NET_RAW"]),
        "add: {sc}"
    );
    // The running pods carry it as the chart wrote it, and their nodes are programmed.
    let pods = json(
        lab,
        &[
            "get",
            "pods",
            "-n",
            "podnet-system",
            "-l",
            "app.kubernetes.io/component=daemon",
            "-o",
            "json",
        ],
    )?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    ensure!(
        items.len() == lab.nodes.len(),
        "{} daemon pods for {} nodes",
        items.len(),
        lab.nodes.len()
    );
    for p in &items {
        ensure!(
            p["spec"]["containers"][0]["securityContext"] == *sc,
            "a daemon pod's security context differs"
        );
        ensure!(
            p["status"]["phase"] == "Running",
            "{} is {}",
            p["metadata"]["name"],
            p["status"]["phase"]
        );
    }
    let peers = lab.nodes.len() - 1;
    let mut firewalls = Vec::new();
    for n in &lab.nodes {
        let routes = node_exec(n.anchor_pid, &["ip", "-4", "route", "show", "proto", "233"])?;
        ensure!(
            routes.lines().count() == peers,
            "{}: {} podnet routes for {peers} peers:\n{routes}",
            n.name,
            routes.lines().count()
        );
        // firewall: auto follows kube-proxy; the rules are where the node reports them.
        let want = match n.proxy_mode {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables-nft",
        };
        wait(
            &format!("{}: status.firewall {want}", n.name),
            Duration::from_secs(90),
            || {
                let nr = json(lab, &["get", "noderoute", &n.name, "-o", "json"])?;
                Ok(nr["status"]["firewall"] == want)
            },
        )?;
        let nat = node_exec(n.anchor_pid, &["iptables-save", "-t", "nat"])?;
        let table = node_exec(n.anchor_pid, &["nft", "list", "tables", "inet"])?;
        let has_table = table.lines().any(|l| l.trim() == "table inet podnet");
        match n.proxy_mode {
            ProxyMode::Nftables => {
                let t = node_exec(n.anchor_pid, &["nft", "list", "table", "inet", "podnet"])?;
                ensure!(
                    t.contains("masquerade") && !nat.contains("PODNET"),
                    "{}: want the nftables table only:\n{t}\n{nat}",
                    n.name
                );
            }
            ProxyMode::Iptables => ensure!(
                nat.contains("-j PODNET-MASQ") && nat.contains("MASQUERADE") && !has_table,
                "{}: want the iptables chain only (nft table present: {has_table})",
                n.name
            ),
        }
        firewalls.push(format!("{} {want}", n.name));
    }
    Ok(format!(
        "daemon container: privileged false, no privilege escalation, read-only root, capabilities [NET_ADMIN, NET_RAW] only; {} daemon pods running so; every node has its {peers} podnet routes per family and its masquerade rules in the firewall kube-proxy uses ({})",
        items.len(),
        firewalls.join(", ")
    ))
}

// ---- 5 ----

fn node_join(suite: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let i = lab.nodes.len() + 1;
    let name = format!("node-{i}");
    let t0 = Instant::now();
    let node = real::add_node(lab, i, ProxyMode::Nftables)?;
    let conflist = node
        .dir
        .join("etc-cni/net.d")
        .join(podnet_contract::CONFLIST_FILE);
    let (mut registered, mut allocated, mut config, mut ready) = (None, None, None, None);
    let mut not_ready_before_config = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.is_none() {
        ensure!(
            Instant::now() < deadline,
            "{name} not Ready after 120 s (registered {registered:?}, allocated {allocated:?}, config {config:?})"
        );
        let node_obj = kubectl(lab, &["get", "node", &name, "-o", "json"], "").ok();
        if let Some(text) = node_obj {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            registered.get_or_insert(t0.elapsed());
            let is_ready = v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if is_ready {
                ensure!(
                    conflist.exists(),
                    "{name} went Ready before podnet wrote {}",
                    conflist.display()
                );
                ready = Some(t0.elapsed());
            } else if !conflist.exists() {
                not_ready_before_config = true;
            }
        }
        if allocated.is_none()
            && kubectl(
                lab,
                &["get", "nr", &name, "-o", "jsonpath={.status.podCIDRs}"],
                "",
            )
            .is_ok_and(|c| c.contains('/'))
        {
            allocated = Some(t0.elapsed());
        }
        if config.is_none() && conflist.exists() {
            config = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        not_ready_before_config,
        "{name} was never seen NotReady without its CNI config"
    );
    suite
        .rt
        .block_on(real::wait_nodes_ready(lab, Duration::from_secs(60)))?;
    let s = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into())
    };
    Ok(format!(
        "{name} (kubelet started at 0): registered {}, CIDR allocated {}, CNI config written {}, Ready {}; NotReady until the config existed",
        s(registered),
        s(allocated),
        s(config),
        s(ready)
    ))
}

// ---- 6 ----

fn node_state(lab: &RealLab, n: &kube_node::KubeNode) -> anyhow::Result<(usize, usize, usize)> {
    let dir = "/run/podnet/ipam/podnet";
    let listing = node_exec(n.anchor_pid, &["ls", "-1", dir]).unwrap_or_default();
    let leases = listing
        .lines()
        .filter(|l| l.parse::<std::net::IpAddr>().is_ok())
        .count();
    let attachments = node_exec(n.anchor_pid, &["ls", "-1", &format!("{dir}/attachments")])
        .unwrap_or_default()
        .lines()
        .count();
    let veths = node_exec(n.anchor_pid, &["ip", "-br", "link", "show", "type", "veth"])?
        .lines()
        .filter(|l| l.starts_with(podnet_contract::VETH_PREFIX))
        .count();
    let _ = lab;
    Ok((leases, attachments, veths))
}

fn pods_on(lab: &RealLab, node: &str) -> anyhow::Result<usize> {
    let v = json(
        lab,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "json",
        ],
    )?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .count())
}

/// 100 pods created and deleted in namespace `ns` (a Deployment spread over the nodes);
/// afterwards every node is back to exactly one lease per family, one attachment and
/// one veth per pod that still runs.
fn churn_100(lab: &RealLab, ns: &str) -> anyhow::Result<String> {
    let before: Vec<(usize, usize, usize)> = lab
        .nodes
        .iter()
        .map(|n| node_state(lab, n))
        .collect::<anyhow::Result<_>>()?;
    let doc = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: churn
  namespace: {ns}
spec:
  replicas: 100
  selector:
    matchLabels: {{app: churn}}
  template:
    metadata:
      labels: {{app: churn}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: sleep
        image: localhost/podnet-lab/busybox:1
        imagePullPolicy: Never
        command: ["/bin/busybox", "sleep", "3600"]
"#
    );
    let t = Instant::now();
    kubectl(lab, &["apply", "-f", "-"], &doc)?;
    wait("100 churn pods running", Duration::from_secs(300), || {
        let out = kubectl(
            lab,
            &[
                "get",
                "deploy",
                "-n",
                ns,
                "churn",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
            "",
        )?;
        Ok(out.trim() == "100")
    })?;
    let up = t.elapsed();
    let during: usize = lab
        .nodes
        .iter()
        .map(|n| node_state(lab, n).map(|s| s.1))
        .sum::<anyhow::Result<usize>>()?;
    kubectl(
        lab,
        &[
            "delete",
            "deploy",
            "-n",
            ns,
            "churn",
            "--wait=true",
            "--timeout=300s",
        ],
        "",
    )?;
    wait("every churn pod gone", Duration::from_secs(300), || {
        Ok(kubectl(
            lab,
            &["get", "pods", "-n", ns, "-l", "app=churn", "-o", "name"],
            "",
        )?
        .trim()
        .is_empty())
    })?;
    // Every node: exactly one lease per family, one attachment and one veth per pod
    // still there — nothing of the 100.
    wait(
        "leases, attachments and veths back to the pods that run",
        Duration::from_secs(60),
        || {
            for (n, b) in lab.nodes.iter().zip(&before) {
                let pods = pods_on(lab, &n.name)?;
                let now = node_state(lab, n)?;
                if now != (2 * pods, pods, pods) || now != *b {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    Ok(format!(
        "100 pods running in {:.1} s ({during} attachments across the nodes at peak), deleted; every node back to exactly one lease per family, one attachment and one veth per running pod",
        up.as_secs_f64()
    ))
}

// ---- 7 ----

fn rolling_update(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    let version = env!("CARGO_PKG_VERSION");
    for n in &lab.nodes {
        let ctr = lab.tools_bin.join("ctr").display().to_string();
        let _ = node_exec(
            n.anchor_pid,
            &[
                &ctr,
                "-n",
                "k8s.io",
                "images",
                "rm",
                "localhost/podnet-daemon:rollout",
            ],
        );
        node_exec(
            n.anchor_pid,
            &[
                &ctr,
                "-n",
                "k8s.io",
                "images",
                "tag",
                &format!("localhost/podnet-daemon:{version}"),
                "localhost/podnet-daemon:rollout",
            ],
        )?;
    }
    let pods = real::pods(lab)?;
    let from = pods
        .iter()
        .find(|p| p.name == "node-1-pod1")
        .context("node-1-pod1")?;
    let to = pods
        .iter()
        .find(|p| p.name == "node-2-pod1")
        .context("node-2-pod1")?;
    // 0.2 s apart for 40 s, across the whole rollout.
    let pinger = std::process::Command::new(podnet_lab::Tools::locate()?.kubectl)
        .arg("--kubeconfig")
        .arg(&lab.control_plane.kubeconfig)
        .args([
            "exec", "-n", "lab", &from.name, "--", "ping", "-i", "0.2", "-c", "200", "-W", "1",
            &to.ips[0],
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    podnet_lab::chart::helm(
        &lab.control_plane.kubeconfig,
        &[
            "upgrade",
            podnet_lab::chart::RELEASE,
            &podnet_lab::chart::chart_dir().display().to_string(),
            "-n",
            podnet_lab::chart::NAMESPACE,
            "--reuse-values",
            "--set-string",
            "image.daemon.tag=rollout",
        ],
    )?;
    kubectl(
        lab,
        &[
            "rollout",
            "status",
            "ds/podnet-daemon",
            "-n",
            "podnet-system",
            "--timeout=120s",
        ],
        "",
    )?;
    let rolled = t.elapsed();
    let images = kubectl(
        lab,
        &[
            "get",
            "pods",
            "-n",
            "podnet-system",
            "-l",
            "app.kubernetes.io/component=daemon",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
        "",
    )?;
    ensure!(
        images.split_whitespace().all(|i| i.ends_with(":rollout")),
        "not every daemon pod runs the new image: {images}"
    );
    let out = pinger.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("no ping summary")?
        .to_string();
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (sent, received) = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    );
    let lost = sent.saturating_sub(received);
    ensure!(sent >= 150, "the pinger sent only {sent}: {text}");
    ensure!(
        lost <= 5,
        "{lost} of {sent} pings lost across the rollout (at most 5 allowed): {line}"
    );
    Ok(format!(
        "helm upgrade of the daemon image rolled {} daemon pods in {:.1} s; a pod pinging a pod on another node every 0.2 s meanwhile lost {lost} of {sent}",
        lab.nodes.len(),
        rolled.as_secs_f64()
    ))
}

// ---- 8 ----

fn uninstall(_: &Suite, lab: &mut RealLab) -> anyhow::Result<String> {
    // Workloads first, while podnet-cni can still DEL them.
    kubectl(
        lab,
        &[
            "delete",
            "namespace",
            "lab",
            "--wait=true",
            "--timeout=180s",
        ],
        "",
    )?;
    podnet_lab::chart::helm(
        &lab.control_plane.kubeconfig,
        &[
            "uninstall",
            podnet_lab::chart::RELEASE,
            "-n",
            podnet_lab::chart::NAMESPACE,
            "--wait",
            "--timeout",
            "120s",
        ],
    )?;
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cleanup-daemonset.yaml"),
    )?
    .replace(
        "ghcr.io/podnet/podnet-daemon:0.1.0",
        &format!("localhost/podnet-daemon:{}", env!("CARGO_PKG_VERSION")),
    )
    .replace("imagePullPolicy: IfNotPresent", "imagePullPolicy: Never");
    kubectl(lab, &["apply", "-f", "-"], &manifest)?;
    kubectl(
        lab,
        &[
            "rollout",
            "status",
            "ds/podnet-cleanup",
            "-n",
            "kube-system",
            "--timeout=120s",
        ],
        "",
    )?;
    kubectl(lab, &["delete", "-f", "-", "--wait=true"], &manifest)?;
    let mut checked = Vec::new();
    for n in &lab.nodes {
        let a = n.anchor_pid;
        let routes4 = node_exec(a, &["ip", "-4", "route", "show", "proto", "233"])?;
        let routes6 = node_exec(a, &["ip", "-6", "route", "show", "proto", "233"])?;
        let nexthops = node_exec(a, &["ip", "nexthop", "show", "proto", "233"])?;
        ensure!(
            routes4.trim().is_empty() && routes6.trim().is_empty() && nexthops.trim().is_empty(),
            "{}: podnet routes or nexthop objects left:\n{routes4}{routes6}{nexthops}",
            n.name
        );
        for tool in ["iptables-save", "ip6tables-save"] {
            let nat = node_exec(a, &[tool, "-t", "nat"])?;
            ensure!(
                !nat.contains("PODNET"),
                "{}: {tool} still has podnet rules",
                n.name
            );
        }
        let tables = node_exec(a, &["nft", "list", "tables"])?;
        ensure!(
            !tables.contains("podnet"),
            "{}: nftables still has podnet's table:\n{tables}",
            n.name
        );
        ensure!(
            node_exec(a, &["ip", "link", "show", podnet_contract::DEFAULT_BRIDGE]).is_err(),
            "{}: bridge left",
            n.name
        );
        for path in [
            format!("/etc/cni/net.d/{}", podnet_contract::CONFLIST_FILE),
            format!("/opt/cni/bin/{}", podnet_contract::PLUGIN_TYPE),
            "/var/lib/podnet/programmed.json".into(),
            "/run/podnet/ipam".into(),
        ] {
            ensure!(
                node_exec(a, &["test", "-e", &path]).is_err(),
                "{}: {path} left",
                n.name
            );
        }
        checked.push(n.name.clone());
    }
    Ok(format!(
        "after helm uninstall and examples/cleanup-daemonset.yaml, {}: no podnet route (either family), masquerade rule, bridge, CNI config or plugin, lease or saved state",
        checked.join(", ")
    ))
}
