//! podnet-daemon against a real kube-apiserver, programming a network namespace the test
//! creates: peer routes follow NodeRoutes, foreign routes stay, stale podnet routes go,
//! drift is repaired, masquerade follows PodNetwork edits, the CNI config is written
//! once and on change, and an API server restart leaves the dataplane alone.

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use podnet_crds::{NodeRoute, PodNetwork, condition_type, find_condition, reason};
use podnet_lab::ControlPlane;
use podnet_lab::testing::{ApiTest, Isolation, http_get, require_root, run_api_tests_with};
use serde_json::json;

fn main() -> ExitCode {
    run_api_tests_with(
        Isolation::PerTest,
        vec![
            ApiTest::new(
                "routes_follow_peers_and_only_podnet_routes_change",
                routes_follow_peers,
            ),
            ApiTest::new(
                "masquerade_follows_podnetwork_edits_and_is_repaired",
                masquerade,
            ),
            ApiTest::new(
                "api_server_restart_leaves_the_dataplane_alone",
                apiserver_restart,
            ),
            ApiTest::new(
                "forged_statuses_never_touch_routes_podnet_does_not_own",
                forged_statuses,
            ),
            ApiTest::new(
                "unreachable_api_server_at_start_programs_the_saved_state",
                saved_state_at_start,
            ),
            ApiTest::new(
                "nftables_masquerade_updates_sets_only_and_backends_switch_cleanly",
                nftables_masquerade,
            ),
            ApiTest::new(
                "routes_from_the_first_list_pages_never_cover_own_pods",
                first_list_pages,
            ),
        ],
    )
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("{args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A node namespace with a lab interface; deleted on drop.
struct NodeNs {
    name: String,
    conf_dir: std::path::PathBuf,
}

impl NodeNs {
    fn new() -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pnd{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self {
            conf_dir: std::env::temp_dir().join(format!("{name}-cni")),
            name,
        };
        for cmd in [
            "link set lo up",
            "link add lab0 type veth peer name lab1",
            "link set lab1 up",
            "link set lab0 up",
            "addr add 198.18.0.1/24 dev lab0",
            "-6 addr add 2001:db8:18::1/64 dev lab0 nodad",
            // Peers in 203.0.113.0/24 are behind a gateway: not on-link.
            "route add 203.0.113.0/24 via 198.18.0.254 dev lab0",
            // Someone else's route, and a podnet route left from before a restart.
            "route add 10.250.0.0/24 via 198.18.0.50 proto static",
            "route add 10.244.99.0/24 via 198.18.0.99 proto 233",
        ] {
            let mut args = vec!["ip", "-n", &ns.name];
            args.extend(cmd.split(' '));
            sh(&args)?;
        }
        Ok(ns)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    fn netns_arg(&self) -> &'static str {
        // nsenter's --net=PATH, leaked once per namespace: tests make a handful.
        Box::leak(format!("--net={}", self.path()).into_boxed_str())
    }
    /// `ip route show`, without the `nhid N` of routes through nexthop objects (podnet
    /// writes its routes that way; the gateway and device still show, as checked).
    fn routes(&self, v6: bool) -> anyhow::Result<String> {
        let text = sh(&[
            "ip",
            if v6 { "-6" } else { "-4" },
            "-n",
            &self.name,
            "route",
            "show",
        ])?;
        Ok(text
            .lines()
            .map(podnet_lab::probes::without_nexthop_id)
            .collect::<Vec<_>>()
            .join("\n"))
    }
    fn nat(&self, v6: bool) -> anyhow::Result<String> {
        sh(&[
            "nsenter",
            &format!("--net={}", self.path()),
            if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            },
            "-t",
            "nat",
        ])
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.conf_dir);
    }
}

/// A podnet-daemon process for node-a, programming `ns`; killed on drop.
struct DaemonProc(Child);

impl DaemonProc {
    fn start(cp: &ControlPlane, ns: &NodeNs) -> anyhow::Result<Self> {
        Self::start_on(cp, ns, "127.0.0.1:0")
    }

    fn start_on(cp: &ControlPlane, ns: &NodeNs, ops: &str) -> anyhow::Result<Self> {
        // These tests read masquerade rules with iptables-save; the nftables driver has
        // a test of its own.
        Self::start_with(
            cp.kubeconfig(),
            &cp.dir().join(format!("daemon-{}.log", ns.name)),
            ns,
            ops,
            &["--firewall", "iptables"],
        )
    }

    fn start_with(
        kubeconfig: &std::path::Path,
        log: &std::path::Path,
        ns: &NodeNs,
        ops: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_podnet-daemon"))
            .args([
                "run",
                "--node-name",
                "node-a",
                "--netns",
                &ns.path(),
                "--resync",
                "1",
                "--ops-addr",
                ops,
            ])
            .arg("--cni-conf-dir")
            .arg(&ns.conf_dir)
            .arg("--state-dir")
            .arg(ns.conf_dir.join("state"))
            // These nodes have no pods in the API: network policy would hold every
            // address of the node's CIDR as not programmed yet.
            .args(["--network-policy", "false"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self(child))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = probe();
        if let Ok(true) = last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_network(
    client: &Client,
    mtu: u32,
    nonmasq: &[&str],
    masq: bool,
) -> anyhow::Result<()> {
    let pn = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "default"},
        "spec": {"cidrs": ["10.244.0.0/16", "fd00:10:244::/56"], "mtu": mtu,
                 "masquerade": {"enabled": masq, "nonMasqueradeCIDRs": nonmasq}}});
    Api::<PodNetwork>::all(client.clone())
        .patch(
            "default",
            &PatchParams::apply("test").force(),
            &Patch::Apply(pn),
        )
        .await?;
    Ok(())
}

async fn put_node(client: &Client, name: &str, ips: &[&str], cidrs: &[&str]) -> anyhow::Result<()> {
    let api: Api<NodeRoute> = Api::all(client.clone());
    let nr = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": name},
        "spec": {"nodeName": name, "podNetwork": "default"}});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(nr))
        .await?;
    // As the operator writes it: Allocated=True vouches for the CIDRs.
    let st = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": name},
        "status": {"nodeIPs": ips, "podCIDRs": cidrs, "conditions": [{
            "type": "Allocated", "status": "True", "reason": "Allocated", "message": "test",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(
        name,
        &PatchParams::apply("test-operator").force(),
        &Patch::Apply(st),
    )
    .await?;
    Ok(())
}

async fn base(client: &Client) -> anyhow::Result<()> {
    put_network(client, 1450, &[], true).await?;
    put_node(
        client,
        "node-a",
        &["198.18.0.1", "2001:db8:18::1"],
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
    )
    .await?;
    put_node(
        client,
        "node-b",
        &["198.18.0.2", "2001:db8:18::2"],
        &["10.244.2.0/24", "fd00:10:244:2::/64"],
    )
    .await?;
    put_node(client, "node-far", &["203.0.113.9"], &["10.244.9.0/24"]).await?;
    Ok(())
}

async fn routes_follow_peers(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut d = DaemonProc::start_on(&cp, &ns, &format!("127.0.0.1:{port}"))?;
    wait_for("peer routes", Duration::from_secs(20), || {
        let (v4, v6) = (ns.routes(false)?, ns.routes(true)?);
        Ok(
            v4.contains("10.244.2.0/24 via 198.18.0.2 dev lab0 proto 233")
                && v6.contains("fd00:10:244:2::/64 via 2001:db8:18::2 dev lab0 proto 233"),
        )
    })
    .await?;
    let v4 = ns.routes(false)?;
    ensure!(
        !v4.contains("10.244.99.0/24"),
        "the stale podnet route survived:\n{v4}"
    );
    ensure!(
        v4.contains("10.250.0.0/24 via 198.18.0.50 dev lab0 proto static"),
        "a foreign route was touched:\n{v4}"
    );
    ensure!(
        !v4.contains("10.244.9.0"),
        "an off-link peer got a route:\n{v4}"
    );
    ensure!(
        !v4.contains("10.244.1.0"),
        "a route to the node's own CIDR:\n{v4}"
    );
    // Programmed, with counts and the refused peer.
    let api: Api<NodeRoute> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    let msg = loop {
        let nr = api.get("node-a").await?;
        let conds = nr.status.unwrap_or_default().conditions;
        if let Some(c) = find_condition(&conds, condition_type::PROGRAMMED)
            .filter(|c| c.reason == reason::ROUTES_REJECTED)
        {
            break c.message.clone();
        }
        ensure!(
            Instant::now() < deadline,
            "no Programmed condition: {conds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        msg.contains("2 routes programmed; 1 rejected")
            && msg.contains("node-far")
            && msg.contains("GatewayNotOnLink"),
        "{msg}"
    );
    // The CNI config: own CIDRs and the network's MTU; written once.
    let conf_path = ns.conf_dir.join("10-podnet.conflist");
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conf_path)?)?;
    ensure!(
        conf["plugins"][0]["podCIDRs"] == json!(["10.244.1.0/24", "fd00:10:244:1::/64"]),
        "{conf}"
    );
    ensure!(
        conf["plugins"][0]["mtu"] == 1450 && conf["plugins"][0]["type"] == "podnet-cni",
        "{conf}"
    );
    let written = std::fs::metadata(&conf_path)?.modified()?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ensure!(
        std::fs::metadata(&conf_path)?.modified()? == written,
        "the conflist was rewritten without a change"
    );
    put_network(&client, 1400, &[], true).await?;
    wait_for(
        "the conflist with the new MTU",
        Duration::from_secs(10),
        || Ok(std::fs::read_to_string(&conf_path)?.contains("\"mtu\": 1400")),
    )
    .await?;
    // Peers come and go.
    put_node(&client, "node-c", &["198.18.0.3"], &["10.244.3.0/24"]).await?;
    api.delete("node-b", &DeleteParams::default()).await?;
    wait_for(
        "routes of node-c, none of node-b",
        Duration::from_secs(10),
        || {
            let v4 = ns.routes(false)?;
            Ok(v4.contains("10.244.3.0/24 via 198.18.0.3")
                && !v4.contains("10.244.2.0/24")
                && !ns.routes(true)?.contains("fd00:10:244:2::"))
        },
    )
    .await?;
    // Quiet passes rely on the last read of the routing table while the kernel's route
    // notifications say nothing changed...
    let unchanged_checks = || -> anyhow::Result<u64> {
        let metrics = http_get(port, "/metrics")?;
        Ok(metrics
            .lines()
            .find_map(|l| l.strip_prefix("podnet_daemon_route_checks_total{how=\"unchanged\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    };
    wait_for(
        "a quiet pass without reading the table",
        Duration::from_secs(10),
        || Ok(unchanged_checks()? > 0),
    )
    .await?;
    // ...and a route deleted by hand, which is notified, is back at the next period
    // (well before the read every six periods would find it).
    sh(&["ip", "-n", &ns.name, "route", "del", "10.244.3.0/24"])?;
    let deleted = Instant::now();
    wait_for("the deleted route repaired", Duration::from_secs(5), || {
        Ok(ns.routes(false)?.contains("10.244.3.0/24 via 198.18.0.3"))
    })
    .await?;
    ensure!(
        deleted.elapsed() < Duration::from_millis(2500),
        "the deleted route took {:?} to come back: the notification did not make the pass read the table",
        deleted.elapsed()
    );
    // Operations endpoints.
    ensure!(http_get(port, "/readyz")?.starts_with("HTTP/1.1 200"));
    let metrics = http_get(port, "/metrics")?;
    for want in [
        "podnet_daemon_routes_desired 2",
        "podnet_daemon_routes_programmed 1",
        "podnet_daemon_routes_rejected{rule=\"GatewayNotOnLink\"} 1",
        "podnet_daemon_routes_rejected{rule=\"DefaultRoute\"} 0",
        "podnet_daemon_drift_repairs_total",
    ] {
        ensure!(
            metrics.contains(want),
            "/metrics lacks {want:?}:\n{metrics}"
        );
    }
    // SIGTERM: the daemon exits and leaves routes, rules and config for the pods.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = d.0.wait()?;
    ensure!(status.success(), "exit after SIGTERM: {status}");
    ensure!(
        ns.routes(false)?.contains("10.244.3.0/24 via 198.18.0.3")
            && conf_path.exists()
            && ns.nat(false)?.contains("PODNET-MASQ"),
        "SIGTERM tore down the dataplane"
    );
    // cleanup removes everything podnet installed, and only that.
    let out = Command::new(env!("CARGO_BIN_EXE_podnet-daemon"))
        .args(["cleanup", "--netns", &ns.path()])
        .arg("--cni-conf-dir")
        .arg(&ns.conf_dir)
        // Never the host's own paths: everything under the test's directory.
        .arg("--cni-bin-dir")
        .arg(ns.conf_dir.join("bin"))
        .arg("--ipam-dir")
        .arg(ns.conf_dir.join("ipam"))
        .arg("--state-dir")
        .arg(ns.conf_dir.join("state"))
        .output()?;
    ensure!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v4 = ns.routes(false)?;
    ensure!(
        !v4.contains("proto 233") && v4.contains("10.250.0.0/24 via 198.18.0.50"),
        "{v4}"
    );
    ensure!(
        !conf_path.exists()
            && !ns.conf_dir.join("state/programmed.json").exists()
            && !ns.nat(false)?.contains("PODNET-MASQ")
            && !ns.nat(true)?.contains("PODNET-MASQ"),
        "cleanup left podnet state behind"
    );
    // install-cni: an atomic, executable copy into the CNI bin dir.
    let bin_dir = ns.conf_dir.join("bin");
    let src = env!("CARGO_BIN_EXE_podnet-daemon");
    let out = Command::new(src)
        .args(["install-cni", "--cni-src", src])
        .arg("--cni-bin-dir")
        .arg(&bin_dir)
        .output()?;
    ensure!(
        out.status.success(),
        "install-cni: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = std::fs::metadata(bin_dir.join("podnet-cni"))?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(
        installed.len() == std::fs::metadata(src)?.len()
            && installed.permissions().mode() & 0o111 != 0
    );
    ensure!(
        std::fs::read_dir(&bin_dir)?.count() == 1,
        "temporary files left in the bin dir"
    );
    Ok(())
}

async fn masquerade(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    let _d = DaemonProc::start(&cp, &ns)?;
    let v4_rules = [
        "-A POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ",
        "-A PODNET-MASQ -s 10.244.1.0/24 -d 10.244.0.0/16 -j RETURN",
        "-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE",
    ];
    // Each family is its own restore: wait for both (IPv6 may land a moment later).
    let v6_rules = [
        "-A PODNET-MASQ -s fd00:10:244:1::/64 -d fd00:10:244::/56 -j RETURN",
        "-A PODNET-MASQ -s fd00:10:244:1::/64 -j MASQUERADE",
    ];
    let mut nat6 = String::new();
    wait_for(
        "IPv4 and IPv6 masquerade rules",
        Duration::from_secs(20),
        || {
            let nat = ns.nat(false)?;
            nat6 = ns.nat(true)?;
            Ok(v4_rules.iter().all(|r| nat.contains(r))
                && v6_rules.iter().all(|r| nat6.contains(r)))
        },
    )
    .await
    .with_context(|| format!("IPv6 nat table: {nat6}"))?;
    ensure!(
        ns.nat(false)?.matches("-j PODNET-MASQ").count() == 1,
        "hooked more than once"
    );
    // An edit: the lab range keeps the pod address.
    put_network(&client, 1450, &["198.18.0.0/15"], true).await?;
    wait_for(
        "the nonMasqueradeCIDRs rule",
        Duration::from_secs(10),
        || {
            let nat = ns.nat(false)?;
            Ok(nat.contains("-A PODNET-MASQ -s 10.244.1.0/24 -d 198.18.0.0/15 -j RETURN"))
        },
    )
    .await?;
    // Flushed by hand: repaired within a period.
    sh(&[
        "nsenter",
        &format!("--net={}", ns.path()),
        "iptables",
        "-t",
        "nat",
        "-F",
        "PODNET-MASQ",
    ])?;
    wait_for("the flushed chain repaired", Duration::from_secs(5), || {
        Ok(ns
            .nat(false)?
            .contains("-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE"))
    })
    .await?;
    // Disabled: chain and hook gone, in both families.
    put_network(&client, 1450, &[], false).await?;
    wait_for("masquerade removed", Duration::from_secs(10), || {
        Ok(!ns.nat(false)?.contains("PODNET-MASQ") && !ns.nat(true)?.contains("PODNET-MASQ"))
    })
    .await?;
    Ok(())
}

async fn apiserver_restart(mut cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    let _d = DaemonProc::start(&cp, &ns)?;
    wait_for("peer routes", Duration::from_secs(20), || {
        Ok(ns.routes(false)?.contains("10.244.2.0/24 via 198.18.0.2"))
    })
    .await?;
    let cp_mut = Arc::get_mut(&mut cp).context("the control plane is shared")?;
    cp_mut.restart_apiserver().await?;
    // Through the restart and after it, the routes stayed.
    ensure!(
        ns.routes(false)?.contains("10.244.2.0/24 via 198.18.0.2"),
        "routes were flushed while the API server was away"
    );
    let client = cp.client().await?;
    put_node(&client, "node-c", &["198.18.0.3"], &["10.244.3.0/24"]).await?;
    wait_for(
        "a route added after the restart",
        Duration::from_secs(30),
        || Ok(ns.routes(false)?.contains("10.244.3.0/24 via 198.18.0.3")),
    )
    .await?;
    ensure!(ns.routes(false)?.contains("10.244.2.0/24 via 198.18.0.2"));
    Ok(())
}

/// The routes of `ns` that podnet does not own, both families, sorted.
fn foreign_routes(ns: &NodeNs) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::new();
    for v6 in [false, true] {
        all.extend(
            ns.routes(v6)?
                .lines()
                .filter(|l| !l.contains("proto 233"))
                .map(str::to_string),
        );
    }
    all.sort();
    Ok(all)
}

/// Hand-written statuses of every dangerous kind, from peers of a network whose pool
/// (wrongly) covers the node network: none may change a route podnet does not own, the
/// good peer keeps its route throughout, and deleting the bad objects deletes nothing
/// but podnet's own routes.
async fn forged_statuses(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    // A second network whose pool (wrongly) covers a network the node is on and a route
    // someone else installed: only the kernel-side rules stand between its NodeRoutes
    // and the node's own routes.
    for cmd in [
        "link add mgmt0 type veth peer name mgmt1",
        "link set mgmt1 up",
        "link set mgmt0 up",
        "addr add 10.250.1.1/24 dev mgmt0",
    ] {
        let mut args = vec!["ip", "-n", &ns.name];
        args.extend(cmd.split(' '));
        sh(&args)?;
    }
    let wide = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "wide"},
        "spec": {"cidrs": ["10.250.0.0/16"], "nodeMaskSize": {"ipv4": 24, "ipv6": 64}}});
    Api::<PodNetwork>::all(client.clone())
        .patch(
            "wide",
            &PatchParams::apply("test").force(),
            &Patch::Apply(wide),
        )
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _d = DaemonProc::start_on(&cp, &ns, &format!("127.0.0.1:{port}"))?;
    wait_for("peer routes", Duration::from_secs(20), || {
        Ok(ns.routes(false)?.contains("10.244.2.0/24 via 198.18.0.2"))
    })
    .await?;
    let before = foreign_routes(&ns)?;
    let forged: &[(&str, &str, &[&str], &[&str])] = &[
        ("f-node-net", "wide", &["198.18.0.7"], &["10.250.1.0/24"]),
        ("f-foreign", "wide", &["198.18.0.7"], &["10.250.0.0/24"]),
        ("f-default", "default", &["198.18.0.7"], &["0.0.0.0/0"]),
        ("f-own", "default", &["198.18.0.7"], &["10.244.1.0/24"]),
        ("f-peer", "default", &["198.18.0.7"], &["10.244.2.0/24"]),
        ("f-gw-self", "default", &["198.18.0.1"], &["10.244.5.0/24"]),
        (
            "f-gw-bcast",
            "default",
            &["198.18.0.255"],
            &["10.244.6.0/24"],
        ),
        ("f-gw-pod", "default", &["10.244.2.9"], &["10.244.7.0/24"]),
    ];
    let api: Api<NodeRoute> = Api::all(client.clone());
    for (name, network, ips, cidrs) in forged {
        put_node(&client, name, ips, cidrs).await?;
        let spec = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": name},
            "spec": {"nodeName": name, "podNetwork": network}});
        api.patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(spec),
        )
        .await?;
    }
    // Each one is refused with its own rule, named on node-a's condition.
    let want = [
        ("f-node-net", "OverlapsNodeNetwork"),
        ("f-foreign", "PrefixHeldByOtherRoute"),
        ("f-default", "DefaultRoute"),
        ("f-own", "OverlapsOwnCIDR"),
        ("f-peer", "OverlapsPeer"),
        ("f-gw-self", "GatewayIsOwnAddress"),
        ("f-gw-bcast", "GatewayNetworkOrBroadcast"),
        ("f-gw-pod", "GatewayInsidePodCIDR"),
    ];
    wait_for(
        "every forged peer refused by its rule",
        Duration::from_secs(20),
        || {
            let metrics = http_get(port, "/metrics").unwrap_or_default();
            Ok(want.iter().all(|(_, rule)| {
                metrics.lines().any(|l| {
                    l.starts_with(&format!(
                        "podnet_daemon_routes_rejected{{rule=\"{rule}\"}} "
                    )) && !l.ends_with(" 0")
                })
            }))
        },
    )
    .await?;
    let mut msg = String::new();
    for _ in 0..100 {
        let nr = api.get("node-a").await?;
        if let Some(c) = find_condition(
            &nr.status.unwrap_or_default().conditions,
            condition_type::PROGRAMMED,
        )
        .filter(|c| c.reason == reason::ROUTES_REJECTED && c.message.contains("9 rejected"))
        {
            msg = c.message.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        msg.contains("9 rejected"),
        "Programmed does not list 8 forged peers and node-far: {msg:?}"
    );
    let during = foreign_routes(&ns)?;
    ensure!(
        during == before,
        "a route podnet does not own changed:\nbefore {before:#?}\nafter {during:#?}"
    );
    let v4 = ns.routes(false)?;
    ensure!(
        v4.contains("10.244.2.0/24 via 198.18.0.2"),
        "the good peer lost its route:\n{v4}"
    );
    ensure!(
        !v4.contains("default via 198.18.0.7")
            && !v4.contains("10.244.5.0")
            && !v4.contains("10.244.6.0")
            && !v4.contains("10.244.7.0"),
        "{v4}"
    );
    // Events on the forged peers' side.
    let events = cp.kubectl([
        "get",
        "events",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.name} {.reason}{\"\\n\"}{end}",
    ])?;
    let events = String::from_utf8_lossy(&events.stdout).into_owned();
    for (name, _) in &want {
        ensure!(
            events.contains(&format!("{name} RouteRejected")),
            "no RouteRejected event on {name}:\n{events}"
        );
    }
    // Deleting the forged objects removes nothing but podnet's own routes.
    for (name, ..) in forged {
        api.delete(name, &DeleteParams::default()).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = foreign_routes(&ns)?;
    ensure!(
        after == before,
        "deleting forged objects changed routes podnet does not own:\nbefore {before:#?}\nafter {after:#?}"
    );
    ensure!(ns.routes(false)?.contains("10.244.2.0/24 via 198.18.0.2"));
    Ok(())
}

/// A daemon restarting on a node whose bridge holds its pods' gateway adds routes from
/// the first pages of a long NodeRoute list, before the list is complete. A forged peer
/// claiming this node's CIDR, listed before this node's own NodeRoute, never gets a
/// route, not for an instant: every route notification of the namespace is checked.
async fn first_list_pages(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt, stream};
    use podnet_netlink::{Netlink, RouteChange};
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    for cmd in [
        "link add podnet0 type bridge",
        "link set podnet0 up",
        "addr add 10.244.1.1/24 dev podnet0",
        "addr add 198.19.0.1/16 dev lab0",
    ] {
        let mut args = vec!["ip", "-n", &ns.name];
        args.extend(cmd.split(' '));
        sh(&args)?;
    }
    // 1,200 peers in a second network: three pages of the daemon's list (500 each),
    // all sorting before node-a, as does the forged one.
    let big = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "big"},
        "spec": {"cidrs": ["10.128.0.0/12"], "nodeMaskSize": {"ipv4": 24, "ipv6": 64}}});
    Api::<PodNetwork>::all(client.clone())
        .patch(
            "big",
            &PatchParams::apply("test").force(),
            &Patch::Apply(big),
        )
        .await?;
    let api: Api<NodeRoute> = Api::all(client.clone());
    const PEERS: usize = 1200;
    stream::iter(0..PEERS)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("a-peer-{i:04}");
                let nr = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": name},
                    "spec": {"nodeName": name, "podNetwork": "big"}});
                api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(nr))
                    .await?;
                let st = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": name},
                    "status": {"nodeIPs": [format!("198.19.{}.{}", 1 + i / 250, 1 + i % 250)],
                        "podCIDRs": [format!("10.{}.{}.0/24", 128 + i / 256, i % 256)],
                        "conditions": [{"type": "Allocated", "status": "True", "reason": "Allocated",
                            "message": "test", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
                api.patch_status(&name, &PatchParams::apply("test-operator").force(), &Patch::Apply(st))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    // The forged peer's network (wrongly) overlaps the default one with a longer mask:
    // its /25 would take half of this node's pods' traffic from the bridge's /24.
    let narrow = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "narrow"},
        "spec": {"cidrs": ["10.244.1.0/24"], "nodeMaskSize": {"ipv4": 25, "ipv6": 64}}});
    Api::<PodNetwork>::all(client.clone())
        .patch(
            "narrow",
            &PatchParams::apply("test").force(),
            &Patch::Apply(narrow),
        )
        .await?;
    let forged = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": "a-forged"},
        "spec": {"nodeName": "a-forged", "podNetwork": "narrow"}});
    api.patch(
        "a-forged",
        &PatchParams::apply("test").force(),
        &Patch::Apply(forged),
    )
    .await?;
    let st = json!({"apiVersion": "podnet.dev/v1alpha1", "kind": "NodeRoute", "metadata": {"name": "a-forged"},
        "status": {"nodeIPs": ["198.18.0.7"], "podCIDRs": ["10.244.1.0/25"],
            "conditions": [{"type": "Allocated", "status": "True", "reason": "Allocated",
                "message": "test", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(
        "a-forged",
        &PatchParams::apply("test-operator").force(),
        &Patch::Apply(st),
    )
    .await?;
    // Every route the kernel adds in the namespace, from before the daemon starts.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let path = std::path::PathBuf::from(ns.path());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
            let mut nl = Netlink::in_netns(&path)?;
            nl.subscribe_routes()?;
            nl.links()?; // the first request starts the subscribed connection
            let _ = ready_tx.send(());
            let mut added = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for c in nl.route_changes(Duration::from_millis(50))? {
                    if let RouteChange::Added(r) = c {
                        added.push(format!("{}/{} {:?}", r.dst, r.prefix, r.gateway));
                    }
                }
            }
            Ok(added)
        })
    };
    ready_rx.recv().context("the route watcher did not start")?;
    let _d = DaemonProc::start(&cp, &ns)?;
    wait_for("every peer's route", Duration::from_secs(60), || {
        let v4 = ns.routes(false)?;
        Ok(v4.matches(" via 198.19.").count() == PEERS)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let added = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the route watcher panicked"))??;
    ensure!(
        added.len() >= PEERS,
        "only {} route notifications seen (socket overflow?)",
        added.len()
    );
    let hijack: Vec<&String> = added
        .iter()
        .filter(|r| r.starts_with("10.244.1."))
        .collect();
    ensure!(
        hijack.is_empty(),
        "a peer route covered this node's pods: {hijack:?}"
    );
    let log = std::fs::read_to_string(cp.dir().join(format!("daemon-{}.log", ns.name)))?;
    let line = log
        .lines()
        .find(|l| l.contains("routes added while the first NodeRoute list arrived"))
        .with_context(|| format!("no routes were added from the first list's pages:\n{log}"))?;
    ensure!(!line.contains("added=0"), "{line}");
    // The full pass then refuses the forged peer by its rule, as ever.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nr = api.get("node-a").await?;
        let programmed = find_condition(
            &nr.status.unwrap_or_default().conditions,
            condition_type::PROGRAMMED,
        )
        .cloned();
        if programmed
            .as_ref()
            .is_some_and(|c| c.message.contains("a-forged"))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node-a's Programmed does not name the forged peer: {programmed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(!ns.routes(false)?.contains("10.244.1.0/25"));
    Ok(())
}

/// A daemon restarted while the API server is unreachable (a node rebooting without its
/// control plane) programs the state it saved, instead of waiting with nothing.
async fn saved_state_at_start(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    let d = DaemonProc::start(&cp, &ns)?;
    wait_for("peer routes", Duration::from_secs(20), || {
        Ok(ns.routes(false)?.contains("10.244.2.0/24 via 198.18.0.2"))
    })
    .await?;
    wait_for("the saved state", Duration::from_secs(10), || {
        Ok(ns.conf_dir.join("state/programmed.json").exists())
    })
    .await?;
    drop(d);
    // The reboot: podnet's routes are gone with the old kernel state.
    podnet_lab::probes::delete_podnet_routes(&ns.name)?;
    ensure!(!ns.routes(false)?.contains("10.244.2.0/24"));
    for args in [
        &[
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "podnet masquerade",
            "-j",
            "PODNET-MASQ",
        ][..],
        &["-t", "nat", "-F", "PODNET-MASQ"],
        &["-t", "nat", "-X", "PODNET-MASQ"],
    ] {
        let mut full = vec!["nsenter", ns.netns_arg(), "iptables"];
        full.extend(args);
        sh(&full)?;
    }
    ensure!(
        !ns.nat(false)?.contains("PODNET"),
        "the reboot left masquerade rules"
    );
    // An API server that is not there: a kubeconfig pointing at a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let kubeconfig = ns.conf_dir.join("unreachable.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{closed}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
        ),
    )?;
    let log = ns.conf_dir.join("restarted.log");
    let _d = DaemonProc::start_with(
        &kubeconfig,
        &log,
        &ns,
        "127.0.0.1:0",
        &["--startup-grace", "1", "--firewall", "iptables"],
    )?;
    wait_for(
        "routes from the saved state",
        Duration::from_secs(15),
        || {
            let v4 = ns.routes(false)?;
            Ok(v4.contains("10.244.2.0/24 via 198.18.0.2")
                && ns
                    .routes(true)?
                    .contains("fd00:10:244:2::/64 via 2001:db8:18::2"))
        },
    )
    .await
    .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    wait_for(
        "masquerade from the saved state",
        Duration::from_secs(10),
        || {
            Ok(ns
                .nat(false)?
                .contains("-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE"))
        },
    )
    .await?;
    Ok(())
}

fn nft(ns: &NodeNs, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["nsenter", ns.netns_arg(), "nft"];
    full.extend(args);
    sh(&full)
}

async fn firewall_of(client: &Client) -> anyhow::Result<Option<String>> {
    Ok(Api::<NodeRoute>::all(client.clone())
        .get("node-a")
        .await?
        .status
        .and_then(|s| s.firewall))
}

/// The nftables driver: one `inet podnet` table with sets; an edit of the exempt
/// destinations changes only the set (rule handles stay); a table deleted by hand is
/// back within a period; a switch to iptables removes the table, and cleanup removes
/// both; `auto` follows kube-proxy's mode.
async fn nftables_masquerade(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    require_root("the daemon tests")?;
    let client = cp.client().await?;
    let ns = NodeNs::new()?;
    base(&client).await?;
    let log = cp.dir().join(format!("daemon-{}.log", ns.name));
    let d = DaemonProc::start_with(
        cp.kubeconfig(),
        &log,
        &ns,
        "127.0.0.1:0",
        &["--firewall", "nftables"],
    )?;
    wait_for("the inet podnet table", Duration::from_secs(20), || {
        let t = nft(&ns, &["list", "table", "inet", "podnet"]).unwrap_or_default();
        Ok(t.contains("10.244.1.0/24")
            && t.contains("10.244.0.0/16")
            && t.contains("fd00:10:244::/56"))
    })
    .await?;
    ensure!(
        !ns.nat(false)?.contains("PODNET-MASQ"),
        "the nftables driver also wrote iptables rules"
    );
    let status_deadline = Instant::now() + Duration::from_secs(10);
    while firewall_of(&client).await?.as_deref() != Some("nftables") {
        ensure!(
            Instant::now() < status_deadline,
            "NodeRoute status.firewall is not nftables"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handles = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.contains("masquerade"))
            .map(|l| l.split("# handle").nth(1).unwrap_or("").trim().to_string())
            .collect()
    };
    let before = handles(&nft(&ns, &["-a", "list", "table", "inet", "podnet"])?);
    ensure!(before.len() == 2, "two masquerade rules wanted: {before:?}");
    put_network(&client, 1450, &["198.18.0.0/15"], true).await?;
    wait_for("the exempt set updated", Duration::from_secs(10), || {
        Ok(nft(&ns, &["list", "set", "inet", "podnet", "no-masq4"])?.contains("198.18.0.0/15"))
    })
    .await?;
    let after = handles(&nft(&ns, &["-a", "list", "table", "inet", "podnet"])?);
    ensure!(
        before == after,
        "a set change rewrote the rules: {before:?} -> {after:?}"
    );
    // Deleted by hand: back within a period (resync 1 s).
    nft(&ns, &["delete", "table", "inet", "podnet"])?;
    wait_for("the table repaired", Duration::from_secs(10), || {
        Ok(nft(&ns, &["list", "table", "inet", "podnet"])
            .is_ok_and(|t| t.contains("198.18.0.0/15")))
    })
    .await?;
    // Switch to iptables (a chart upgrade): the table goes, the chain comes.
    drop(d);
    let d = DaemonProc::start_with(
        cp.kubeconfig(),
        &log,
        &ns,
        "127.0.0.1:0",
        &["--firewall", "iptables"],
    )?;
    wait_for(
        "iptables rules, no nftables table",
        Duration::from_secs(20),
        || {
            Ok(ns
                .nat(false)?
                .contains("-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE")
                && nft(&ns, &["list", "table", "inet", "podnet"]).is_err())
        },
    )
    .await?;
    drop(d);
    // auto follows kube-proxy: a kube-proxy nftables table makes it nftables.
    nft(&ns, &["add", "table", "ip", "kube-proxy"])?;
    let d = DaemonProc::start_with(
        cp.kubeconfig(),
        &log,
        &ns,
        "127.0.0.1:0",
        &["--firewall", "auto"],
    )?;
    wait_for(
        "auto chose nftables after kube-proxy",
        Duration::from_secs(20),
        || {
            Ok(nft(&ns, &["list", "table", "inet", "podnet"]).is_ok()
                && !ns.nat(false)?.contains("PODNET-MASQ"))
        },
    )
    .await?;
    drop(d);
    nft(&ns, &["delete", "table", "ip", "kube-proxy"])?;
    // cleanup removes podnet's rules from every firewall.
    let out = Command::new(env!("CARGO_BIN_EXE_podnet-daemon"))
        .args(["cleanup", "--netns", &ns.path()])
        .arg("--cni-conf-dir")
        .arg(&ns.conf_dir)
        .arg("--cni-bin-dir")
        .arg(ns.conf_dir.join("bin"))
        .arg("--ipam-dir")
        .arg(ns.conf_dir.join("ipam"))
        .arg("--state-dir")
        .arg(ns.conf_dir.join("state"))
        .output()?;
    ensure!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        nft(&ns, &["list", "table", "inet", "podnet"]).is_err()
            && !ns.nat(false)?.contains("PODNET"),
        "cleanup left rules"
    );
    Ok(())
}
