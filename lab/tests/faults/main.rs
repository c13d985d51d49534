//! The fault suite: on one lab (3 nodes, 2 pods each, podnet-operator with a standby
//! replica, one podnet-daemon per node, the real control plane), each scenario injects a
//! fault, then the invariants of `podnet_lab::invariants` must hold: no CIDR on two
//! nodes, every node allocated (or told its pool is exhausted), exactly the right routes
//! everywhere, no leaked lease or veth, pods keep their addresses and connectivity.
//! Results are printed as the table docs/reliability.md carries. Needs root.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use libtest_mimic::{Arguments, Failed, Trial};
use podnet_lab::cluster::{self, LabState};
use podnet_lab::invariants;

mod support;

mod apiserver_frozen;
mod bad_objects;
mod churn;
mod cni_kills;
mod control_plane_restarts;
mod daemon_faults;
mod daemon_starts_without_api;
mod drained_not_masqueraded;
mod exhaustion;
mod forged_statuses;
mod leader_killed;
mod leader_paused;
mod leader_paused_mid_burst;
mod node_recreated;

use support::Outcome;

/// How long the lab may take to converge after a fault before the invariants must hold.
pub const SETTLE: Duration = Duration::from_secs(60);

struct Suite {
    rt: tokio::runtime::Runtime,
    state: Mutex<Option<LabState>>,
    rows: Mutex<Vec<String>>,
    /// `(scenario, error)` of each failed scenario, repeated last in the output: CI
    /// keeps only the tail of a long log.
    failures: Mutex<Vec<(String, String)>>,
}

type Scenario = for<'a> fn(
    &'a mut LabState,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<Outcome>> + Send + 'a>,
>;

macro_rules! scenario {
    ($m:ident) => {
        (|s| Box::pin($m::run(s))) as Scenario
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
            "leader_paused_mid_burst_for_twice_its_lease",
            "operator leader SIGSTOPped in the middle of a burst of 200 allocations, resumed after twice its lease",
            scenario!(leader_paused_mid_burst),
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
            "daemon_starts_without_an_api_server",
            "a node reboots (daemon stopped, podnet's routes and rules gone) while the API server is down",
            scenario!(daemon_starts_without_api),
        ),
        (
            "daemon_killed_mid_sync_and_state_deleted_by_hand",
            "podnet-daemon SIGKILLed mid-sync and restarted; routes and the masquerade setup (iptables chain and hook, or nftables table) deleted by hand",
            scenario!(daemon_faults),
        ),
        (
            "forged_statuses_leave_every_node_alone",
            "hand-written NodeRoute statuses of every dangerous kind, both operator replicas frozen",
            scenario!(forged_statuses),
        ),
        (
            "node_recreated_gets_its_cidr_back",
            "a Node deleted and re-created under its name while its pods run, another node joining in between",
            scenario!(node_recreated),
        ),
        (
            "drained_cidr_is_never_masqueraded",
            "a pool CIDR removed from the PodNetwork while every node uses it",
            scenario!(drained_not_masqueraded),
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
        failures: Mutex::new(Vec::new()),
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
    let failures = suite.failures.lock().map(|f| f.clone()).unwrap_or_default();
    for (name, error) in failures {
        println!("\nFAILED {name}: {error}");
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
    if let Err(e) = &outcome {
        eprintln!("{}", cluster::log_tails(state, 40));
        if let Ok(mut failures) = suite.failures.lock() {
            failures.push((name.to_string(), format!("{e:#}")));
        }
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
