//! The fault suite: on one lab (3 nodes, 2 pods each, podnet-operator with a standby
//! replica, one podnet-daemon per node, the real control plane), each scenario injects a
//! fault, then the invariants of `podnet_lab::invariants` must hold: no CIDR on two
//! nodes, every node allocated (or told its pool is exhausted), exactly the right routes
//! everywhere, no leaked lease or veth, pods keep their addresses and connectivity.
//! Results are printed as the table docs/reliability.md carries. Needs root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_crds::NodeRoute;
use podnet_lab::cluster::{self, LAB_LABEL, LabState};
use podnet_lab::invariants::{self, admin_client};
use podnet_lab::{chart, run_ok};

const SETTLE: Duration = Duration::from_secs(60);

struct Suite {
    rt: tokio::runtime::Runtime,
    state: Mutex<Option<LabState>>,
    rows: Mutex<Vec<String>>,
}

type Scenario = for<'a> fn(
    &'a mut LabState,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send + 'a>,
>;

macro_rules! scenario {
    ($f:ident) => {
        (|s| Box::pin($f(s))) as Scenario
    };
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // One lab, one fault at a time.
    args.test_threads = Some(1);
    let scenarios: Vec<(&'static str, &'static str, Scenario)> = vec![
        (
            "leader_killed_while_allocating_1000_nodes",
            "operator leader SIGKILLed while allocating 1,000 nodes; the standby finishes",
            scenario!(leader_killed),
        ),
        (
            "leader_paused_past_its_lease_writes_nothing_stale",
            "operator leader SIGSTOPped past its lease, standby takes over, SIGCONT",
            scenario!(leader_paused),
        ),
        (
            "apiserver_and_etcd_restarts",
            "kube-apiserver down then restarted, then etcd restarted, under a running lab",
            scenario!(control_plane_restarts),
        ),
        (
            "apiserver_frozen_while_a_daemon_repairs",
            "kube-apiserver frozen (SIGSTOP: it accepts and never answers) while a node's daemon has a failure to report and drift to repair",
            scenario!(apiserver_frozen),
        ),
        (
            "daemon_killed_mid_sync_and_state_deleted_by_hand",
            "podnet-daemon SIGKILLed mid-sync and restarted; routes and the PODNET-MASQ chain and hook deleted by hand",
            scenario!(daemon_faults),
        ),
        (
            "cni_killed_at_random_points_of_add",
            "podnet-cni SIGKILLed at random points of ADD: 500 create/delete cycles, 8 at a time, then DEL + GC",
            scenario!(cni_kills),
        ),
        (
            "pool_exhaustion_and_recovery",
            "pool exhausted, then recovery when a node leaves and when a CIDR is added",
            scenario!(exhaustion),
        ),
        (
            "node_churn_while_pods_run",
            "100 nodes added and removed, 3 rounds, while pods run on the stable nodes",
            scenario!(churn),
        ),
        (
            "bad_objects_with_client_validation_off",
            "malformed PodNetworks/NodeRoutes sent with kubectl --validate=false",
            scenario!(bad_objects),
        ),
    ];
    if args.list {
        let trials = scenarios
            .iter()
            .map(|(n, _, _)| Trial::test(*n, || Ok(())))
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
        state: Mutex::new(None),
        rows: Mutex::new(Vec::new()),
    });
    let trials = scenarios
        .into_iter()
        .map(|(name, what, f)| {
            let suite = Arc::clone(&suite);
            Trial::test(name, move || run_scenario(&suite, name, what, f))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(state) = suite.state.lock().ok().and_then(|mut s| s.take()) {
        cluster::down(&state);
    }
    let rows = suite.rows.lock().map(|r| r.clone()).unwrap_or_default();
    if !rows.is_empty() {
        println!(
            "\n| scenario | what was checked | result | reproduce |\n| --- | --- | --- | --- |"
        );
        for r in rows {
            println!("{r}");
        }
    }
    conclusion.exit_code()
}

fn run_scenario(suite: &Suite, name: &str, what: &str, f: Scenario) -> Result<(), Failed> {
    podnet_lab::testing::require_root("the fault suite")
        .map_err(|e| Failed::from(e.to_string()))?;
    let mut guard = suite
        .state
        .lock()
        .map_err(|_| Failed::from("lab lock poisoned"))?;
    if guard.is_none() {
        *guard = Some(
            suite
                .rt
                .block_on(bring_up())
                .map_err(|e| Failed::from(format!("{e:#}")))?,
        );
    }
    let state = guard.as_mut().ok_or_else(|| Failed::from("no lab"))?;
    let started = Instant::now();
    let outcome = suite.rt.block_on(async {
        let detail = f(state).await?;
        let report = invariants::check_eventually(state, SETTLE)
            .await
            .map_err(|e| anyhow::anyhow!("invariants after {name}: {e}"))?;
        anyhow::Ok((detail, report))
    });
    let took = started.elapsed().as_secs_f64();
    let reproduce = format!("`cargo test -p podnet-lab --test faults -- {name}`");
    let row = match &outcome {
        Ok((detail, report)) => {
            format!("| {what} | {detail}; then: {report} | pass ({took:.0} s) | {reproduce} |")
        }
        Err(e) => format!(
            "| {what} | {} | **FAIL** ({took:.0} s) | {reproduce} |",
            format!("{e:#}").replace('\n', " ")
        ),
    };
    eprintln!("{row}");
    if outcome.is_err() {
        eprintln!("{}", cluster::log_tails(state, 40));
    }
    if let Ok(mut rows) = suite.rows.lock() {
        rows.push(row);
    }
    outcome
        .map(|_| ())
        .map_err(|e| Failed::from(format!("{e:#}")))
}

async fn bring_up() -> anyhow::Result<LabState> {
    let bin_dir = podnet_lab::testing::workspace_bins().map_err(anyhow::Error::msg)?;
    let tag = format!("pnf{}", std::process::id());
    let dir = PathBuf::from(format!("/run/{tag}"));
    let mut progress =
        |what: &str, took: Duration| eprintln!("==> {what} ({:.1}s)", took.as_secs_f64());
    let mut state = match cluster::up(&tag, 3, &bin_dir, &dir, &mut progress).await {
        Ok(s) => s,
        Err(e) => {
            if let Ok(s) = cluster::load(&dir) {
                cluster::down(&s);
            }
            bail!("lab up: {e}");
        }
    };
    let kc = state.control_plane.kubeconfig.clone();
    let standby = cluster::start_operator(&state, "operator-1", &kc)?;
    state.standby_operator_pids.push(standby);
    cluster::save(&state)?;
    let report = invariants::check_eventually(&state, SETTLE)
        .await
        .map_err(|e| anyhow::anyhow!("invariants of the fresh lab: {e}"))?;
    eprintln!("==> fresh lab: {report}");
    Ok(state)
}

// ---- helpers ----

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match probe().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates Nodes `names` (16 at a time) with `labels`; `ips(i)` gives node i's addresses.
async fn create_nodes(
    client: &Client,
    names: &[String],
    labels: &BTreeMap<String, String>,
    ips: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(names.iter().cloned().enumerate())
        .map(|(i, name)| {
            let api = api.clone();
            let addrs = ips(i);
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": labels},
            }))
            .unwrap_or_default();
            async move {
                api.create(&PostParams::default(), &node).await?;
                if !addrs.is_empty() {
                    let st = serde_json::json!({"status": {"addresses":
                        addrs.iter().map(|a| serde_json::json!({"type": "InternalIP", "address": a})).collect::<Vec<_>>()}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
                        .await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn delete_nodes(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn allocated(client: &Client, prefix: &str) -> anyhow::Result<Vec<NodeRoute>> {
    Ok(Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.name_any().starts_with(prefix))
        .filter(|n| n.status.as_ref().is_some_and(|s| !s.pod_cidrs.is_empty()))
        .collect())
}

async fn lease_holder(client: &Client) -> anyhow::Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(client.clone(), chart::NAMESPACE)
        .get_opt("podnet-operator")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

async fn apply_network(client: &Client, doc: serde_json::Value) -> anyhow::Result<()> {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Api::<podnet_crds::PodNetwork>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply("fault-suite").force(),
            &Patch::Apply(doc),
        )
        .await?;
    Ok(())
}

async fn delete_network(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<podnet_crds::PodNetwork>::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn operator_pid(state: &LabState, identity: &str) -> i32 {
    if identity == "operator-0" {
        state.operator_pid
    } else {
        state.standby_operator_pids[0]
    }
}

fn set_operator_pid(state: &mut LabState, identity: &str, pid: i32) {
    if identity == "operator-0" {
        state.operator_pid = pid;
    } else {
        state.standby_operator_pids[0] = pid;
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

/// Restarts the replica that was killed, so the next scenario again has two.
async fn replace_replica(state: &mut LabState, identity: &str) -> anyhow::Result<()> {
    let kc = state.control_plane.kubeconfig.clone();
    let pid = cluster::start_operator(state, identity, &kc)?;
    set_operator_pid(state, identity, pid);
    cluster::save(state)?;
    Ok(())
}

// ---- scenarios ----

async fn leader_killed(state: &mut LabState) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    apply_network(
        &client,
        serde_json::json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
            "metadata": {"name": "big"},
            "spec": {"cidrs": ["10.128.0.0/14", "fd00:128::/48"],
                     "nodeSelector": {"matchLabels": {"pool": "big"}}}
        }),
    )
    .await?;
    let leader = wait_leader(&client).await?;
    let nodes = names("big", 0..1000);
    let creator = {
        let client = client.clone();
        let nodes = nodes.clone();
        tokio::spawn(async move {
            create_nodes(&client, &nodes, &labels(&[("pool", "big")]), |_| Vec::new()).await
        })
    };
    wait_for("100 allocations", Duration::from_secs(60), || {
        let client = client.clone();
        async move { Ok(allocated(&client, "big-").await?.len() >= 100) }
    })
    .await?;
    let pid = operator_pid(state, &leader);
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let killed_at = Instant::now();
    let at_kill = allocated(&client, "big-").await?.len();
    creator.await??;
    ensure!(
        at_kill < nodes.len(),
        "allocation finished before the kill: proves nothing"
    );
    wait_for(
        "1,000 nodes allocated by the standby",
        Duration::from_secs(180),
        || {
            let client = client.clone();
            async move { Ok(allocated(&client, "big-").await?.len() == 1000) }
        },
    )
    .await?;
    let took = killed_at.elapsed();
    let new_leader = lease_holder(&client).await?.unwrap_or_default();
    ensure!(
        new_leader != leader,
        "the killed replica {leader} still holds the lease"
    );
    let all = allocated(&client, "big-").await?;
    ensure!(
        all.iter()
            .all(|n| n.status.as_ref().is_some_and(|s| s.pod_cidrs.len() == 2)),
        "every node gets an IPv4 and an IPv6 CIDR"
    );
    // The invariants (no overlaps) are checked by the suite; clean up the 1,000 nodes.
    replace_replica(state, &leader).await?;
    delete_nodes(&client, &nodes).await?;
    wait_for(
        "the 1,000 NodeRoutes released",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            async move {
                Ok(Api::<NodeRoute>::all(client)
                    .list(&ListParams::default().labels(""))
                    .await?
                    .items
                    .iter()
                    .all(|n| !n.name_any().starts_with("big-")))
            }
        },
    )
    .await?;
    delete_network(&client, "big").await?;
    Ok(format!(
        "{at_kill} of 1,000 allocated when {leader} was killed; {new_leader} allocated the rest, all 1,000 dual-stack, {:.1} s after the kill",
        took.as_secs_f64()
    ))
}

async fn wait_leader(client: &Client) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = lease_holder(client).await? {
            return Ok(h);
        }
        ensure!(Instant::now() < deadline, "no lease holder after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_paused(state: &mut LabState) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    let leader = wait_leader(&client).await?;
    let pid = operator_pid(state, &leader);
    let lab = labels(&[(LAB_LABEL, "true")]);
    let ip = |base: usize| {
        move |i: usize| {
            vec![
                format!("198.18.0.{}", base + i),
                format!("2001:db8:18::{:x}", 0x1000 + base + i),
            ]
        }
    };
    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    let paused_at = Instant::now();
    // While it is paused, nodes arrive: the standby must take over and allocate them.
    let during = names("paused", 0..10);
    create_nodes(&client, &during, &lab, ip(120)).await?;
    let res = wait_for(
        "the standby to allocate while the leader is paused",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { Ok(allocated(&client, "paused-").await?.len() == 10) }
        },
    )
    .await;
    let new_leader = lease_holder(&client).await?.unwrap_or_default();
    let takeover = paused_at.elapsed();
    // Snapshot, then resume the old leader and add more nodes: the resumed replica must
    // not write what it computed before the pause.
    let snapshot: BTreeMap<String, Vec<String>> = Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| (n.name_any(), n.status.clone().unwrap_or_default().pod_cidrs))
        .collect();
    kill(Pid::from_raw(pid), Signal::SIGCONT)?;
    res?;
    ensure!(new_leader != leader, "the paused replica kept the lease");
    let after = names("resumed", 0..10);
    create_nodes(&client, &after, &lab, ip(140)).await?;
    wait_for(
        "nodes after the resume allocated",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { Ok(allocated(&client, "resumed-").await?.len() == 10) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    for nr in &now {
        if let Some(old) = snapshot.get(&nr.name_any()) {
            let cur = nr.status.clone().unwrap_or_default().pod_cidrs;
            ensure!(
                *old == cur,
                "{} changed from {old:?} to {cur:?} after the resume",
                nr.name_any()
            );
        }
    }
    ensure!(
        alive(pid),
        "the resumed replica exited instead of standing by"
    );
    let log = std::fs::read_to_string(state.dir.join(if leader == "operator-0" {
        "operator.log".to_string()
    } else {
        format!("{leader}.log")
    }))
    .unwrap_or_default();
    let stepped_down = log
        .lines()
        .any(|l| l.contains("lost") || l.contains("leadership"));
    // Leave the lab with its own nodes only.
    let mut gone = during.clone();
    gone.extend(after.iter().cloned());
    delete_nodes(&client, &gone).await?;
    Ok(format!(
        "{new_leader} took over {:.1} s after the pause (lease 4 s); 20 nodes allocated across the pause; no NodeRoute changed after SIGCONT; resumed replica stands by{}",
        takeover.as_secs_f64(),
        if stepped_down {
            " (its log records losing the lease)"
        } else {
            ""
        }
    ))
}

async fn probe_node(state: &LabState, name: &str, last_octet: usize) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    create_nodes(
        &client,
        &[name.to_string()],
        &labels(&[(LAB_LABEL, "true")]),
        |_| {
            vec![
                format!("198.18.0.{last_octet}"),
                format!("2001:db8:18::{:x}", 0x1000 + last_octet),
            ]
        },
    )
    .await?;
    // The probe node goes whatever happens, so a failure here leaves no extra peer for
    // the scenarios after it.
    let outcome = probe_routed(state, &client, name).await;
    delete_nodes(&client, &[name.to_string()]).await?;
    outcome
}

async fn probe_routed(state: &LabState, client: &Client, name: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let cidr = loop {
        let nr = Api::<NodeRoute>::all(client.clone()).get_opt(name).await?;
        if let Some(c) = nr.and_then(|n| n.status?.pod_cidrs.first().cloned()) {
            break c;
        }
        ensure!(Instant::now() < deadline, "{name} not allocated after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every node, checked together: the error names the ones still missing it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        for n in &state.nodes {
            if !run_ok(&["ip", "-n", &n.netns, "route", "show", "proto", "233"])?.contains(&cidr) {
                missing.push(n.name.as_str());
            }
        }
        if missing.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{name}'s {cidr} allocated, but after 30 s still not routed on {}",
            missing.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(cidr)
}

async fn control_plane_restarts(state: &mut LabState) -> anyhow::Result<String> {
    // Losing the API server never tears down the dataplane: while it is down (longer
    // than the daemons' 5 s resync), routes and masquerade rules stay and pods keep
    // talking.
    let before: Vec<(String, Vec<String>)> = state
        .nodes
        .iter()
        .map(|n| Ok((n.netns.clone(), kernel_state(&n.netns)?)))
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    state.control_plane.stop_apiserver();
    cluster::save(state)?;
    let outage = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        for (ns, want) in &before {
            ensure!(
                kernel_state(ns)? == *want,
                "{ns}: routes or masquerade rules changed while the API server was down"
            );
        }
        let (m, ok, total) = cluster::matrix(state);
        ensure!(
            ok == total,
            "with the API server down, {} of {total} paths failed:\n{m}",
            total - ok
        );
        anyhow::Ok(total)
    }
    .await;
    state.control_plane.start_apiserver().await?;
    cluster::save(state)?;
    let paths_during_outage = outage?;
    let api_restart = t.elapsed();
    let t = Instant::now();
    probe_node(state, "after-apiserver", 150).await?;
    let api_recovery = t.elapsed();
    let t = Instant::now();
    state.control_plane.restart_etcd().await?;
    cluster::save(state)?;
    let etcd_restart = t.elapsed();
    let t = Instant::now();
    probe_node(state, "after-etcd", 151).await?;
    let etcd_recovery = t.elapsed();
    ensure!(alive(state.operator_pid), "podnet-operator exited");
    for n in &state.nodes {
        ensure!(alive(n.daemon_pid), "{}'s podnet-daemon exited", n.name);
    }
    Ok(format!(
        "API server down for {:.1} s: routes and masquerade rules untouched on every node and all {paths_during_outage} paths reachable meanwhile; etcd restarted in {:.1} s; operator and daemons kept running; a node added right after each restart was allocated and routed on every node within {:.1} s and {:.1} s",
        api_restart.as_secs_f64(),
        etcd_restart.as_secs_f64(),
        api_recovery.as_secs_f64(),
        etcd_recovery.as_secs_f64()
    ))
}

async fn apiserver_frozen(state: &mut LabState) -> anyhow::Result<String> {
    let n1 = state.nodes[0].clone();
    let conflist = state
        .dir
        .join(&n1.name)
        .join("net.d")
        .join("10-podnet.conflist");
    let original = std::fs::read_to_string(&conflist).context("node-1's conflist")?;
    let routes_before = kernel_state(&n1.netns)?;
    let log = state.dir.join(&n1.name).join("daemon.log");
    let sync_failures = || -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(&log)?
            .lines()
            .filter(|l| l.contains("sync failed"))
            .count())
    };
    let failures_before = sync_failures()?;
    state.control_plane.freeze_apiserver(true)?;
    let frozen_at = Instant::now();
    let outcome = async {
        // node-1's next sync fails (its conflist is now a non-empty directory), so its
        // daemon has a SyncFailed condition to write to an API server that never answers.
        std::fs::remove_file(&conflist)?;
        std::fs::create_dir(&conflist)?;
        std::fs::write(conflist.join("in-the-way"), "")?;
        wait_for(
            "node-1's daemon to fail a sync",
            Duration::from_secs(15),
            || async { Ok(sync_failures()? > failures_before) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The cause goes away and podnet's routes are deleted by hand: the daemon must
        // repair both while its status write still hangs.
        std::fs::remove_dir_all(&conflist)?;
        for fam in ["-4", "-6"] {
            run_ok(&["ip", fam, "-n", &n1.netns, "route", "flush", "proto", "233"])?;
        }
        let repair_from = Instant::now();
        wait_for(
            "node-1's routes and conflist repaired with the API server frozen",
            Duration::from_secs(12),
            || async {
                Ok(kernel_state(&n1.netns)? == routes_before
                    && std::fs::read_to_string(&conflist).is_ok_and(|c| c == original))
            },
        )
        .await?;
        anyhow::Ok(repair_from.elapsed())
    }
    .await;
    let thawed = state.control_plane.freeze_apiserver(false);
    let frozen_for = frozen_at.elapsed();
    if conflist.is_dir() {
        std::fs::remove_dir_all(&conflist)?;
    }
    thawed?;
    let repaired = outcome?;
    // Once it answers again, the condition catches up with the node.
    let client = admin_client(state).await?;
    let programmed = || {
        let client = client.clone();
        let name = n1.name.clone();
        async move {
            let nr = Api::<NodeRoute>::all(client).get(&name).await?;
            let conds = nr.status.map(|s| s.conditions).unwrap_or_default();
            Ok(podnet_crds::find_condition(&conds, "Programmed")
                .is_some_and(|c| c.status == "True" && c.reason == "Programmed"))
        }
    };
    wait_for(
        "node-1 Programmed=True after the thaw",
        Duration::from_secs(30),
        programmed,
    )
    .await?;
    let t = Instant::now();
    probe_node(state, "after-freeze", 152).await?;
    Ok(format!(
        "API server frozen {:.1} s; meanwhile node-1's daemon failed a sync (its status write hanging), then restored its deleted routes and conflist {:.1} s after they went (resync 5 s); after the thaw its Programmed condition returned to True and a new node was allocated and routed everywhere in {:.1} s",
        frozen_for.as_secs_f64(),
        repaired.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ))
}

/// A node's podnet routes (both families) and masquerade rules, sorted.
fn kernel_state(netns: &str) -> anyhow::Result<Vec<String>> {
    let mut out = masq_rules(netns)?;
    for fam in ["-4", "-6"] {
        out.extend(
            run_ok(&["ip", fam, "-n", netns, "route", "show", "proto", "233"])?
                .lines()
                .map(String::from),
        );
    }
    out.sort();
    Ok(out)
}

fn masq_rules(netns: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let dump = run_ok(&["ip", "netns", "exec", netns, tool, "-t", "nat"])?;
        out.extend(
            dump.lines()
                .filter(|l| l.contains("PODNET") || l.contains("podnet"))
                .map(|l| {
                    // Counters differ from dump to dump.
                    l.split(" [").next().unwrap_or(l).to_string()
                }),
        );
    }
    out.sort();
    Ok(out)
}

async fn daemon_faults(state: &mut LabState) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    let n1 = state.nodes[0].clone();
    let n2 = state.nodes[1].clone();
    let rules_before = masq_rules(&n2.netns)?;
    ensure!(
        !rules_before.is_empty(),
        "no masquerade rules to start with"
    );
    // Kill node-1's daemon while it programs 40 new peers (80 routes).
    let burst = names("burst", 0..40);
    let ips = |i: usize| {
        vec![
            format!("198.18.0.{}", 160 + i),
            format!("2001:db8:18::{:x}", 0x2000 + i),
        ]
    };
    create_nodes(&client, &burst, &labels(&[(LAB_LABEL, "true")]), ips).await?;
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        seen = run_ok(&["ip", "-n", &n1.netns, "route", "show", "proto", "233"])?
            .lines()
            .count();
        if seen > 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill(Pid::from_raw(n1.daemon_pid), Signal::SIGKILL)?;
    // Meanwhile, remove podnet's state on node-2 by hand.
    run_ok(&["ip", "-n", &n2.netns, "route", "flush", "proto", "233"])?;
    run_ok(&[
        "ip", "-n", &n2.netns, "-6", "route", "flush", "proto", "233",
    ])?;
    // The whole masquerade setup goes, hook and chain, in one transaction per family (the
    // node's daemon is running and may repair it at any moment).
    for tool in ["iptables-restore", "ip6tables-restore"] {
        let out = podnet_lab::output_with_input(
            std::process::Command::new("ip").args(["netns", "exec", &n2.netns, tool, "--noflush"]),
            "*nat\n-D POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ\n-F PODNET-MASQ\n-X PODNET-MASQ\nCOMMIT\n",
        )?;
        ensure!(
            out.status.success(),
            "{tool}: removing the masquerade setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A rolling update stops a daemon gracefully: its node keeps forwarding meanwhile.
    let n3 = state.nodes[2].clone();
    cluster::stop(n3.daemon_pid, &state.bin_dir.join("podnet-daemon"));
    let (pods_n3, others): (Vec<_>, Vec<_>) =
        state.pods.iter().cloned().partition(|p| p.node == n3.name);
    for from in &pods_n3 {
        for to in &others {
            for ip in &to.ips {
                ensure!(
                    cluster::ping(&from.netns, ip),
                    "{} lost {ip} while its daemon was stopped",
                    from.netns
                );
            }
        }
    }
    let pid3 = cluster::spawn_daemon(state, &n3)?;
    state.nodes[2].daemon_pid = pid3;
    let repaired_from = Instant::now();
    let pid = cluster::spawn_daemon(state, &n1)?;
    state.nodes[0].daemon_pid = pid;
    cluster::save(state)?;
    invariants::check_eventually(state, SETTLE)
        .await
        .map_err(|e| anyhow::anyhow!("after the daemon restart: {e}"))?;
    let repaired = repaired_from.elapsed();
    let rules_after = masq_rules(&n2.netns)?;
    ensure!(
        rules_after == rules_before,
        "masquerade rules not restored:\nbefore {rules_before:#?}\nafter {rules_after:#?}"
    );
    delete_nodes(&client, &burst).await?;
    Ok(format!(
        "killed with {seen} IPv4 podnet routes in its kernel (2 before the burst of 40 peers); the restarted daemon and node-2's resync restored every route, the PODNET-MASQ chain, its rules and its POSTROUTING hook in {:.1} s (resync 5 s); node-3's pods kept forwarding while its daemon was stopped (SIGTERM, as in a rolling update) and restarted",
        repaired.as_secs_f64()
    ))
}

async fn cni_kills(state: &mut LabState) -> anyhow::Result<String> {
    let node = state.nodes[2].clone();
    let tag = state.tag.clone();
    // A first ADD/DEL to learn how long an ADD takes here (debug build).
    let sample = format!("{tag}-cs");
    run_ok(&["ip", "netns", "add", &sample])?;
    let t = Instant::now();
    let added = cluster::cni(state, &node, "ADD", &sample);
    let add_time = t.elapsed();
    cluster::cni(state, &node, "DEL", &sample)?;
    run_ok(&["ip", "netns", "del", &sample])?;
    added?;
    // Eight ADDs share two cores: an ADD takes several times the lone one. Kill points are
    // spread over six lone ADDs, so most cycles die somewhere inside ADD and some finish.
    let window_us = (add_time.as_micros() as u64).clamp(2_000, 200_000) * 6;
    let counters = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let state_ro = Arc::new(state.clone());
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let state = Arc::clone(&state_ro);
        let node = node.clone();
        let tag = tag.clone();
        let counters = Arc::clone(&counters);
        let killed = Arc::clone(&killed);
        workers.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            for i in 0..(500 / 8 + usize::from(w < 500 % 8)) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let delay = Duration::from_micros(seed % window_us);
                let ns = format!("{tag}-c{w}x{i}");
                run_ok(&["ip", "netns", "add", &ns])?;
                let was_killed = cni_add_killed_after(&state, &node, &ns, delay)?;
                if was_killed {
                    killed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // What a runtime does after a failed (or any) sandbox: DEL, then remove
                // the namespace. DEL must succeed whatever ADD left behind.
                cluster::cni(&state, &node, "DEL", &ns)
                    .with_context(|| format!("DEL after ADD killed at {delay:?}"))?;
                run_ok(&["ip", "netns", "del", &ns])?;
                counters.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a CNI worker panicked"))??;
    }
    // GC with the pods that really exist as the valid attachments.
    let pods: Vec<_> = state
        .pods
        .iter()
        .filter(|p| p.node == node.name)
        .cloned()
        .collect();
    gc(state, &node, &pods)?;
    let cycles = counters.load(std::sync::atomic::Ordering::Relaxed);
    let killed = killed.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(cycles == 500, "{cycles} cycles ran");
    ensure!(
        killed >= 100,
        "only {killed} ADDs were killed: the kill points missed ADD"
    );
    Ok(format!(
        "{cycles} cycles: {killed} ADDs killed mid-way, {} completed (kill point uniform in 0–{:.0} ms; a lone ADD takes {:.1} ms here); every DEL succeeded; after GC zero leaked leases, attachment records or veths",
        cycles - killed,
        window_us as f64 / 1000.0,
        add_time.as_secs_f64() * 1000.0
    ))
}

/// Runs podnet-cni ADD for `ns` on `node` and SIGKILLs it after `delay` unless it is
/// done; whether it was killed.
fn cni_add_killed_after(
    state: &LabState,
    node: &cluster::LabNode,
    ns: &str,
    delay: Duration,
) -> anyhow::Result<bool> {
    use std::io::Write;
    let conf = cluster::plugin_conf(state, node)?;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(state.bin_dir.join("podnet-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", ns)
        .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &state.bin_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let deadline = Instant::now() + delay;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(true);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn gc(state: &LabState, node: &cluster::LabNode, keep: &[cluster::Pod]) -> anyhow::Result<()> {
    let mut conf = cluster::plugin_conf(state, node)?;
    conf["cni.dev/valid-attachments"] = serde_json::json!(
        keep.iter()
            .map(|p| serde_json::json!({"containerID": p.netns, "ifname": "eth0"}))
            .collect::<Vec<_>>()
    );
    let out = podnet_lab::output_with_input(
        std::process::Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(state.bin_dir.join("podnet-cni"))
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", &state.bin_dir),
        &conf.to_string(),
    )?;
    ensure!(
        out.status.success(),
        "GC failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

async fn exhaustion(state: &mut LabState) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    apply_network(
        &client,
        serde_json::json!({
            "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
            "metadata": {"name": "tiny"},
            "spec": {"cidrs": ["10.250.0.0/23"], "nodeSelector": {"matchLabels": {"pool": "tiny"}}}
        }),
    )
    .await?;
    let nodes = names("tiny", 0..4);
    create_nodes(&client, &nodes, &labels(&[("pool", "tiny")]), |_| {
        Vec::new()
    })
    .await?;
    let exhausted = |client: Client| async move {
        let nrs = Api::<NodeRoute>::all(client)
            .list(&ListParams::default())
            .await?
            .items;
        Ok::<_, anyhow::Error>(
            nrs.iter()
                .filter(|n| n.name_any().starts_with("tiny-"))
                .filter(|n| {
                    n.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Allocated" && c.reason == "PoolExhausted")
                    })
                })
                .map(|n| n.name_any())
                .collect::<Vec<_>>(),
        )
    };
    wait_for(
        "2 allocated, 2 reported PoolExhausted",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                Ok(allocated(&client, "tiny-").await?.len() == 2
                    && exhausted(client).await?.len() == 2)
            }
        },
    )
    .await?;
    invariants::check_eventually(state, SETTLE)
        .await
        .map_err(|e| anyhow::anyhow!("while exhausted: {e}"))?;
    let pn = Api::<podnet_crds::PodNetwork>::all(client.clone())
        .get("tiny")
        .await?;
    let pn_exhausted = pn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Exhausted" && c.status == "True")
    });
    ensure!(pn_exhausted, "PodNetwork tiny does not say Exhausted=True");
    // A node leaves: one waiting node takes its CIDR.
    let holder = allocated(&client, "tiny-").await?[0].name_any();
    let freed = allocated(&client, "tiny-").await?[0]
        .status
        .clone()
        .unwrap_or_default()
        .pod_cidrs;
    delete_nodes(&client, std::slice::from_ref(&holder)).await?;
    wait_for(
        "a waiting node allocated after one left",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                Ok(allocated(&client, "tiny-").await?.len() == 2
                    && exhausted(client).await?.len() == 1)
            }
        },
    )
    .await?;
    // A CIDR is added: the last one is allocated.
    apply_network(&client, serde_json::json!({
        "apiVersion": "podnet.dev/v1alpha1", "kind": "PodNetwork",
        "metadata": {"name": "tiny"},
        "spec": {"cidrs": ["10.250.0.0/23", "10.250.4.0/24"], "nodeSelector": {"matchLabels": {"pool": "tiny"}}}
    })).await?;
    wait_for(
        "every tiny node allocated after a CIDR was added",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                Ok(allocated(&client, "tiny-").await?.len() == 3
                    && exhausted(client).await?.is_empty())
            }
        },
    )
    .await?;
    let rest: Vec<String> = nodes.iter().filter(|n| **n != holder).cloned().collect();
    delete_nodes(&client, &rest).await?;
    wait_for("tiny NodeRoutes released", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            Ok(Api::<NodeRoute>::all(client)
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .all(|n| !n.name_any().starts_with("tiny-")))
        }
    })
    .await?;
    delete_network(&client, "tiny").await?;
    Ok(format!(
        "4 nodes on a pool of 2: 2 PoolExhausted + PodNetwork Exhausted=True; {holder} left and its {freed:?} went to a waiting node; a CIDR added, the last node allocated — no restart"
    ))
}

async fn churn(state: &mut LabState) -> anyhow::Result<String> {
    let client = admin_client(state).await?;
    let stable_pods = state.pods.clone();
    let ips = |i: usize| {
        vec![
            format!("198.18.0.{}", 100 + i),
            format!("2001:db8:18::{:x}", 0x3000 + i),
        ]
    };
    let mut max_routes = 0usize;
    let t = Instant::now();
    for round in 0..3 {
        let nodes = names(&format!("churn{round}"), 0..100);
        create_nodes(&client, &nodes, &labels(&[(LAB_LABEL, "true")]), ips).await?;
        let want = 2 * (100 + state.nodes.len() - 1);
        let ns = state.nodes[0].netns.clone();
        wait_for(
            &format!("round {round}: {want} routes on {ns}"),
            Duration::from_secs(60),
            || {
                let ns = ns.clone();
                async move {
                    let n = run_ok(&["ip", "-n", &ns, "route", "show", "proto", "233"])?
                        .lines()
                        .count()
                        + run_ok(&["ip", "-6", "-n", &ns, "route", "show", "proto", "233"])?
                            .lines()
                            .count();
                    Ok(n == want)
                }
            },
        )
        .await?;
        max_routes = max_routes.max(want);
        // Pods on the stable nodes keep talking while the churn goes on.
        let (a, b) = (&stable_pods[0], &stable_pods[stable_pods.len() - 1]);
        for fam in [0, 1] {
            ensure!(
                cluster::ping(&a.netns, &b.ips[fam]),
                "round {round}: {} cannot reach {}",
                a.netns,
                b.ips[fam]
            );
        }
        delete_nodes(&client, &nodes).await?;
        invariants::check_eventually(state, SETTLE)
            .await
            .map_err(|e| anyhow::anyhow!("after churn round {round}: {e}"))?;
    }
    Ok(format!(
        "3 rounds of 100 nodes in and out ({max_routes} routes per node at peak), {:.1} s; stable pods reachable in every round, routes back to exactly the stable peers",
        t.elapsed().as_secs_f64()
    ))
}

async fn bad_objects(state: &mut LabState) -> anyhow::Result<String> {
    let kc = state.control_plane.kubeconfig.clone();
    let refused = [
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad1"},"spec":{"cidrs":["10.1.2.3/16"]}}"#,
            "canonical",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad2"},"spec":{"cidrs":["not-a-cidr"]}}"#,
            "cidrs",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad3"},"spec":{"cidrs":"10.0.0.0/8"}}"#,
            "cidrs",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad4"},"spec":{"cidrs":["10.0.0.0/8"],"nodeMaskSize":{"ipv4":4}}}"#,
            "ipv4",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad5"},"spec":{"cidrs":["10.0.0.0/8"],"mtu":-5}}"#,
            "mtu",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad6"},"spec":{"cidrs":["10.0.0.0/16","10.0.1.0/24"]}}"#,
            "overlap",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"NodeRoute","metadata":{"name":"node-1x"},"spec":{"nodeName":"node-2"}}"#,
            "named after its node",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad7"},"spec":{"cidrs":[]}}"#,
            "cidrs",
        ),
    ];
    let big: Vec<String> = (0..10_000)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let huge = serde_json::json!({"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad8"},"spec":{"cidrs": big}}).to_string();
    let mut n = 0;
    for (doc, expect) in refused
        .iter()
        .map(|(d, e)| (d.to_string(), *e))
        .chain([(huge, "cidrs")])
    {
        match chart::kubectl(&kc, &["apply", "--validate=false", "-f", "-"], &doc) {
            Ok(out) => bail!(
                "the API server accepted {}: {out}",
                &doc[..doc.len().min(200)]
            ),
            Err(e) => {
                let msg = e.to_string();
                ensure!(
                    msg.contains(expect) && msg.contains("Invalid"),
                    "refusal of {} does not say {expect:?}: {msg}",
                    &doc[..doc.len().min(200)]
                );
            }
        }
        n += 1;
    }
    // Unknown fields, with validation off, are pruned (never stored), the object accepted.
    chart::kubectl(
        &kc,
        &["create", "--validate=false", "-f", "-"],
        r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"extra"},"spec":{"cidrs":["10.251.0.0/16"],"nodeSelector":{"matchLabels":{"pool":"none"}},"bogus":{"x":1}},"status":{"hacked":true}}"#,
    )?;
    let stored: serde_json::Value = serde_json::from_str(&chart::kubectl(
        &kc,
        &["get", "pn", "extra", "-o", "json"],
        "",
    )?)?;
    ensure!(
        stored["spec"].get("bogus").is_none() && stored["status"].get("hacked").is_none(),
        "unknown fields stored: {stored}"
    );
    chart::kubectl(&kc, &["delete", "pn", "extra"], "")?;
    ensure!(alive(state.operator_pid), "podnet-operator exited");
    for node in &state.nodes {
        ensure!(alive(node.daemon_pid), "{}'s daemon exited", node.name);
    }
    Ok(format!(
        "{n} malformed objects refused by the API server with a message naming the field (--validate=false); unknown fields pruned; operator and daemons unaffected"
    ))
}
