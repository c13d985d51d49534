//! podnet-operator against a real kube-apiserver: allocation at scale, dual-stack,
//! selectors, crashes, two replicas, a paused leader, exhaustion, deletion, PodNetwork
//! edits and bogus status. Every test gets its own control plane (the operator watches
//! the whole cluster) and ends with the invariant check: no CIDR on two nodes.

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, stream};
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_crds::{ConditionStatus, NodeRoute, PodNetwork, condition_is, find_condition};
use podnet_lab::ControlPlane;
use podnet_lab::testing::{ApiTest, Isolation, http_get, run_api_tests_with};
use serde_json::json;

fn main() -> ExitCode {
    run_api_tests_with(
        Isolation::PerTest,
        vec![
            ApiTest::new(
                "allocates_many_dual_stack_nodes_exactly_once",
                allocates_many,
            ),
            ApiTest::new(
                "selectors_pick_networks_and_report_unmatched_nodes",
                selectors,
            ),
            ApiTest::new(
                "killed_operator_restarts_without_double_allocation",
                killed_mid_way,
            ),
            ApiTest::new("two_replicas_never_double_allocate", two_replicas),
            ApiTest::new("paused_leader_resumes_without_stale_writes", paused_leader),
            ApiTest::new(
                "exhaustion_is_reported_and_recovers_without_restart",
                exhaustion,
            ),
            ApiTest::new(
                "released_cidr_is_quarantined_and_goes_back_to_its_node",
                node_deletion,
            ),
            ApiTest::new(
                "podnetwork_edits_grow_drain_and_refuse_overlaps",
                network_edits,
            ),
            ApiTest::new(
                "hand_edited_status_is_reported_and_not_adopted",
                bogus_status,
            ),
            ApiTest::new("invalid_node_addresses_are_refused", node_addresses),
            ApiTest::new("node_pod_cidrs_are_set_only_when_enabled", node_pod_cidrs),
        ],
    )
}

const DUAL: &str = r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"default"},"spec":{"cidrs":["10.244.0.0/16","fd00:10:244::/56"]}}"#;

/// A podnet-operator process; killed (SIGKILL) when dropped.
struct OperatorProc {
    child: Child,
    name: String,
    log: std::path::PathBuf,
}

impl OperatorProc {
    fn start(cp: &ControlPlane, name: &str) -> anyhow::Result<Self> {
        Self::start_with_ops(cp, name, "127.0.0.1:0")
    }

    fn start_with_ops(cp: &ControlPlane, name: &str, ops: &str) -> anyhow::Result<Self> {
        Self::start_with_env(cp, name, ops, &[])
    }

    fn start_with_env(
        cp: &ControlPlane,
        name: &str,
        ops: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = cp.dir().join(format!("operator-{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_podnet-operator"))
            .env("KUBECONFIG", cp.kubeconfig())
            .env("POD_NAMESPACE", "default")
            .env("POD_NAME", name)
            .env("PODNET_LEASE_DURATION", "4")
            .env("PODNET_RENEW_DEADLINE", "2.5")
            .env("PODNET_RETRY_PERIOD", "0.5")
            .env("PODNET_OPS_ADDR", ops)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting podnet-operator")?;
        Ok(Self {
            child,
            name: name.into(),
            log,
        })
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), sig).context("signalling the operator")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "operator {} exited ({status}); log:\n{}",
                self.name,
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for OperatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn apply_json(client: &Client, doc: &str) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_str(doc)?;
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api: Api<PodNetwork> = Api::all(client.clone());
    api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(v))
        .await?;
    Ok(())
}

fn node_ip(i: usize) -> (String, String) {
    (
        format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250),
        format!("2001:db8:18::{:x}", i + 1),
    )
}

/// Creates nodes (with InternalIPs in status) 16 at a time.
async fn create_nodes(
    client: &Client,
    names: &[String],
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let results: Vec<anyhow::Result<()>> = stream::iter(names.iter().cloned().enumerate())
        .map(|(i, name)| {
            let api = api.clone();
            let labels = labels.clone();
            async move {
                let idx: usize = name
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(i);
                let (v4, v6) = node_ip(idx);
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": labels},
                }))?;
                api.create(&PostParams::default(), &node).await?;
                let status = json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": v4},
                    {"type": "InternalIP", "address": v6},
                    {"type": "Hostname", "address": name},
                ]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cidrs(nr: &NodeRoute) -> Vec<IpNet> {
    nr.status
        .as_ref()
        .map(|s| s.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

/// The invariant: no CIDR held by two nodes. Returns the NodeRoutes.
async fn no_overlaps(client: &Client) -> anyhow::Result<Vec<NodeRoute>> {
    let nrs = Api::<NodeRoute>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut all: Vec<(IpNet, String)> = nrs
        .iter()
        .flat_map(|nr| cidrs(nr).into_iter().map(move |c| (c, nr.name_any())))
        .collect();
    all.sort();
    for pair in all.windows(2) {
        let ((a, na), (b, nb)) = (&pair[0], &pair[1]);
        ensure!(
            !(a.contains(b) || b.contains(a)),
            "{a} of {na} overlaps {b} of {nb}"
        );
    }
    Ok(nrs)
}

/// Waits until each of `nodes` has a NodeRoute with `families` CIDRs and Allocated=True.
async fn wait_allocated(
    client: &Client,
    nodes: &[String],
    families: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<NodeRoute>> {
    let api: Api<NodeRoute> = Api::all(client.clone());
    wait_for(&format!("{} nodes allocated", nodes.len()), timeout, || {
        let api = api.clone();
        async move {
            let nrs = api.list(&ListParams::default()).await?.items;
            let by_name: BTreeMap<String, &NodeRoute> =
                nrs.iter().map(|n| (n.name_any(), n)).collect();
            let done = nodes.iter().all(|n| {
                by_name.get(n).is_some_and(|nr| {
                    cidrs(nr).len() == families
                        && condition_is(
                            &nr.status
                                .as_ref()
                                .map(|s| s.conditions.clone())
                                .unwrap_or_default(),
                            "Allocated",
                            ConditionStatus::True,
                        )
                })
            });
            Ok(done.then_some(nrs))
        }
    })
    .await
}

async fn allocates_many(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut op = OperatorProc::start_with_ops(&cp, "solo", &format!("127.0.0.1:{port}"))?;
    let nodes = names("node", 0..120);
    create_nodes(&client, &nodes, &BTreeMap::new()).await?;
    wait_allocated(&client, &nodes, 2, Duration::from_secs(60)).await?;
    // A node's addresses arrive in a second write (as a kubelet's do), possibly after
    // its CIDRs were allocated: nodeIPs must follow within a few seconds.
    let nrs = wait_for(
        "every NodeRoute to carry its node's addresses",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            let nodes = nodes.clone();
            async move {
                let nrs = Api::<NodeRoute>::all(client)
                    .list(&ListParams::default())
                    .await?
                    .items;
                let complete = nrs
                    .iter()
                    .filter(|n| nodes.contains(&n.name_any()))
                    .all(|n| n.status.as_ref().is_some_and(|s| s.node_ips.len() == 2));
                Ok(complete.then_some(nrs))
            }
        },
    )
    .await?;
    no_overlaps(&client).await?;
    for nr in nrs.iter().filter(|n| nodes.contains(&n.name_any())) {
        let name = nr.name_any();
        let idx: usize = name
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_default();
        let (v4, v6) = node_ip(idx);
        let status = nr.status.clone().unwrap_or_default();
        ensure!(
            status.node_ips == vec![v4, v6],
            "{name}: nodeIPs {:?}",
            status.node_ips
        );
        ensure!(
            nr.spec.pod_network.as_deref() == Some("default"),
            "{name}: network {:?}",
            nr.spec.pod_network
        );
        let c = cidrs(nr);
        ensure!(
            c[0].prefix_len() == 24 && c[1].prefix_len() == 64,
            "{name}: {c:?}"
        );
        let owner = nr
            .owner_references()
            .first()
            .map(|o| (o.kind.clone(), o.name.clone()));
        ensure!(
            owner == Some(("Node".into(), name.clone())),
            "{name}: owner {owner:?}"
        );
    }
    let pn = wait_for("PodNetwork status", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let pn = Api::<PodNetwork>::all(client).get("default").await?;
            let st = pn.status.clone().unwrap_or_default();
            Ok((st.nodes == 120 && st.ipv4.map(|u| u.allocated) == Some(120)).then_some(pn))
        }
    })
    .await?;
    let st = pn.status.unwrap_or_default();
    ensure!(
        st.ipv4.map(|u| u.capacity) == Some(256) && st.ipv6.map(|u| u.capacity) == Some(256),
        "{st:?}"
    );
    ensure!(
        condition_is(&st.conditions, "Ready", ConditionStatus::True),
        "{st:?}"
    );
    ensure!(
        condition_is(&st.conditions, "Exhausted", ConditionStatus::False),
        "{st:?}"
    );
    ensure!(
        st.observed_generation == pn.metadata.generation,
        "observedGeneration {st:?}"
    );
    ensure!(http_get(port, "/healthz")?.starts_with("HTTP/1.1 200"));
    ensure!(http_get(port, "/readyz")?.starts_with("HTTP/1.1 200"));
    let metrics = http_get(port, "/metrics")?;
    for want in [
        "podnet_operator_allocations_total 240",
        "podnet_operator_leader 1",
        "podnet_operator_pool_capacity{network=\"default\",family=\"ipv4\"} 256",
        "podnet_operator_pool_allocated{network=\"default\",family=\"ipv6\"} 120",
        "podnet_operator_sync_duration_seconds_count",
    ] {
        ensure!(
            metrics.contains(want),
            "/metrics lacks {want:?}:\n{metrics}"
        );
    }
    ensure!(http_get(port, "/nope")?.starts_with("HTTP/1.1 404"));
    op.assert_running()
}

async fn selectors(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"edge"},"spec":{"cidrs":["10.250.0.0/20"],"nodeMaskSize":{"ipv4":26},"nodeSelector":{"matchLabels":{"pool":"edge"}}}}"#).await?;
    apply_json(&client, r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"core"},"spec":{"cidrs":["10.244.0.0/16"],"nodeSelector":{"matchExpressions":[{"key":"pool","operator":"In","values":["core"]}]}}}"#).await?;
    let _op = OperatorProc::start(&cp, "solo")?;
    // Node "edge" shares its name with the PodNetwork: per-object bookkeeping must not mix them.
    let mut edge_nodes = names("edge", 0..3);
    edge_nodes.push("edge".to_string());
    create_nodes(
        &client,
        &edge_nodes,
        &[("pool".to_string(), "edge".to_string())].into(),
    )
    .await?;
    create_nodes(
        &client,
        &names("core", 10..13),
        &[("pool".to_string(), "core".to_string())].into(),
    )
    .await?;
    create_nodes(&client, &names("stray", 20..21), &BTreeMap::new()).await?;
    let nrs = wait_allocated(&client, &edge_nodes, 1, Duration::from_secs(30)).await?;
    for nr in nrs.iter().filter(|n| n.name_any().starts_with("edge")) {
        ensure!(
            nr.spec.pod_network.as_deref() == Some("edge"),
            "{:?}",
            nr.spec
        );
        ensure!(
            cidrs(nr)[0].prefix_len() == 26
                && "10.250.0.0/20".parse::<IpNet>()?.contains(&cidrs(nr)[0]),
            "{:?}",
            cidrs(nr)
        );
    }
    let nrs = wait_allocated(&client, &names("core", 10..13), 1, Duration::from_secs(30)).await?;
    ensure!(
        nrs.iter()
            .filter(|n| n.name_any().starts_with("core"))
            .all(|n| n.spec.pod_network.as_deref() == Some("core"))
    );
    let stray = wait_for("stray node reported", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let nr = Api::<NodeRoute>::all(client).get_opt("stray-20").await?;
            Ok(nr.filter(|nr| {
                allocated_condition(nr)
                    .is_some_and(|c| c.status == "False" && c.reason == "NoPodNetwork")
            }))
        }
    })
    .await?;
    ensure!(cidrs(&stray).is_empty());
    // The stray node joins a pool: it is allocated without a restart.
    Api::<Node>::all(client.clone())
        .patch(
            "stray-20",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata":{"labels":{"pool":"core"}}})),
        )
        .await?;
    wait_allocated(&client, &names("stray", 20..21), 1, Duration::from_secs(30)).await?;
    no_overlaps(&client).await?;
    Ok(())
}

async fn killed_mid_way(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    let nodes = names("node", 0..200);
    let mut op = OperatorProc::start(&cp, "first")?;
    let creator = {
        let client = client.clone();
        let nodes = nodes.clone();
        tokio::spawn(async move { create_nodes(&client, &nodes, &BTreeMap::new()).await })
    };
    // Kill it once some, but not all, nodes are allocated.
    wait_for("a first allocation", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let nrs = Api::<NodeRoute>::all(client)
                .list(&ListParams::default())
                .await?
                .items;
            Ok((nrs.iter().filter(|n| !cidrs(n).is_empty()).count() >= 20).then_some(()))
        }
    })
    .await?;
    op.signal(Signal::SIGKILL)?;
    let _ = op.child.wait();
    creator.await??;
    let before = no_overlaps(&client).await?;
    let held_before: BTreeMap<String, Vec<IpNet>> = before
        .iter()
        .map(|n| (n.name_any(), cidrs(n)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    ensure!(
        held_before.len() < nodes.len(),
        "the operator finished before it was killed; the test proves nothing"
    );
    let _second = OperatorProc::start(&cp, "second")?;
    let after = wait_allocated(&client, &nodes, 2, Duration::from_secs(90)).await?;
    no_overlaps(&client).await?;
    // Nobody's CIDR moved.
    for nr in &after {
        if let Some(old) = held_before.get(&nr.name_any()) {
            ensure!(
                old.iter().all(|c| cidrs(nr).contains(c)),
                "{}: {old:?} became {:?}",
                nr.name_any(),
                cidrs(nr)
            );
        }
    }
    Ok(())
}

async fn two_replicas(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    // Small list pages: the replica that takes over rebuilds its allocator from four
    // pages of NodeRoutes (a page lost would hand the late nodes taken CIDRs).
    let pages = [("PODNET_LIST_PAGE_SIZE", "40")];
    let mut a = OperatorProc::start_with_env(&cp, "replica-a", "127.0.0.1:0", &pages)?;
    let mut b = OperatorProc::start_with_env(&cp, "replica-b", "127.0.0.1:0", &pages)?;
    let nodes = names("node", 0..150);
    create_nodes(&client, &nodes, &BTreeMap::new()).await?;
    wait_allocated(&client, &nodes, 2, Duration::from_secs(60)).await?;
    no_overlaps(&client).await?;
    let lease = Api::<Lease>::namespaced(client.clone(), "default")
        .get("podnet-operator")
        .await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    ensure!(
        holder == "replica-a" || holder == "replica-b",
        "lease holder {holder:?}"
    );
    a.assert_running()?;
    b.assert_running()?;
    // Graceful shutdown of the leader hands over at once (the lease is released).
    let (leader, other) = if holder == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.signal(Signal::SIGTERM)?;
    let _ = leader.child.wait();
    let started = Instant::now();
    let more = names("late", 500..520);
    create_nodes(&client, &more, &BTreeMap::new()).await?;
    wait_allocated(&client, &more, 2, Duration::from_secs(30)).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(4),
        "takeover after a released lease took {:?}",
        started.elapsed()
    );
    other.assert_running()?;
    no_overlaps(&client).await?;
    Ok(())
}

async fn paused_leader(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    let a = OperatorProc::start(&cp, "replica-a")?;
    wait_for("replica-a to lead", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let l = Api::<Lease>::namespaced(client, "default")
                .get_opt("podnet-operator")
                .await?;
            Ok(l.and_then(|l| l.spec?.holder_identity)
                .filter(|h| h == "replica-a"))
        }
    })
    .await?;
    let mut b = OperatorProc::start(&cp, "replica-b")?;
    let first = names("node", 0..40);
    create_nodes(&client, &first, &BTreeMap::new()).await?;
    wait_allocated(&client, &first, 2, Duration::from_secs(30)).await?;
    // Pause the leader while nodes keep arriving; it is paused for longer than its lease.
    a.signal(Signal::SIGSTOP)?;
    let second = names("node", 40..120);
    create_nodes(&client, &second, &BTreeMap::new()).await?;
    wait_allocated(&client, &second, 2, Duration::from_secs(60)).await?;
    let holder = Api::<Lease>::namespaced(client.clone(), "default")
        .get("podnet-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity);
    ensure!(
        holder.as_deref() == Some("replica-b"),
        "replica-b should lead, lease says {holder:?}"
    );
    let snapshot: BTreeMap<String, Vec<IpNet>> = no_overlaps(&client)
        .await?
        .iter()
        .map(|n| (n.name_any(), cidrs(n)))
        .collect();
    a.signal(Signal::SIGCONT)?;
    // More nodes right after the resume: the resumed replica must not race the leader.
    let third = names("node", 120..160);
    create_nodes(&client, &third, &BTreeMap::new()).await?;
    wait_allocated(&client, &third, 2, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = no_overlaps(&client).await?;
    for nr in &now {
        if let Some(old) = snapshot.get(&nr.name_any()) {
            ensure!(
                *old == cidrs(nr),
                "{} changed from {old:?} to {:?} after the resume",
                nr.name_any(),
                cidrs(nr)
            );
        }
    }
    b.assert_running()?;
    Ok(())
}

async fn exhaustion(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"small"},"spec":{"cidrs":["10.9.0.0/22"]}}"#).await?;
    // A short quarantine: the released CIDR goes to a waiting node 2 s after the release.
    let _op = OperatorProc::start_with_env(
        &cp,
        "solo",
        "127.0.0.1:0",
        &[("PODNET_CIDR_QUARANTINE", "2")],
    )?;
    let nodes = names("node", 0..6);
    create_nodes(&client, &nodes, &BTreeMap::new()).await?;
    let nr_api: Api<NodeRoute> = Api::all(client.clone());
    let exhausted: Vec<String> = wait_for(
        "two nodes reported PoolExhausted",
        Duration::from_secs(30),
        || {
            let api = nr_api.clone();
            async move {
                let nrs = api.list(&ListParams::default()).await?.items;
                let waiting: Vec<String> = nrs
                    .iter()
                    .filter(|nr| {
                        allocated_condition(nr)
                            .is_some_and(|c| c.reason == "PoolExhausted" && c.status == "False")
                    })
                    .map(|n| n.name_any())
                    .collect();
                let allocated = nrs.iter().filter(|n| !cidrs(n).is_empty()).count();
                Ok((waiting.len() == 2 && allocated == 4).then_some(waiting))
            }
        },
    )
    .await?;
    let pn_api: Api<PodNetwork> = Api::all(client.clone());
    wait_for(
        "Exhausted=True on the PodNetwork",
        Duration::from_secs(20),
        || {
            let api = pn_api.clone();
            async move {
                let st = api.get("small").await?.status.unwrap_or_default();
                Ok(condition_is(&st.conditions, "Exhausted", ConditionStatus::True).then_some(()))
            }
        },
    )
    .await?;
    let events = cp.kubectl(["get", "events", "-A", "-o", "jsonpath={.items[*].reason}"])?;
    ensure!(
        String::from_utf8_lossy(&events.stdout).contains("PoolExhausted"),
        "no PoolExhausted event: {events:?}"
    );
    // Freed capacity: one node leaves, one waiting node gets its CIDR.
    let victim = nodes
        .iter()
        .find(|n| !exhausted.contains(n))
        .cloned()
        .unwrap_or_default();
    Api::<Node>::all(client.clone())
        .delete(&victim, &DeleteParams::default())
        .await?;
    wait_for(
        "a waiting node allocated after a release",
        Duration::from_secs(30),
        || {
            let api = nr_api.clone();
            async move {
                let nrs = api.list(&ListParams::default()).await?.items;
                Ok(
                    (nrs.iter().filter(|n| !cidrs(n).is_empty()).count() == 4 && nrs.len() == 5)
                        .then_some(()),
                )
            }
        },
    )
    .await?;
    // Added capacity: the last waiting node is allocated, the condition clears.
    pn_api
        .patch(
            "small",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec":{"cidrs":["10.9.0.0/22","10.9.8.0/24"]}})),
        )
        .await?;
    let remaining: Vec<String> = nodes.iter().filter(|n| **n != victim).cloned().collect();
    wait_allocated(&client, &remaining, 1, Duration::from_secs(30)).await?;
    wait_for("Exhausted=False", Duration::from_secs(20), || {
        let api = pn_api.clone();
        async move {
            let st = api.get("small").await?.status.unwrap_or_default();
            Ok(condition_is(&st.conditions, "Exhausted", ConditionStatus::False).then_some(()))
        }
    })
    .await?;
    no_overlaps(&client).await?;
    Ok(())
}

async fn quarantine_of(client: &Client, network: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(Api::<PodNetwork>::all(client.clone())
        .get(network)
        .await?
        .status
        .unwrap_or_default()
        .quarantine
        .into_iter()
        .map(|q| (q.node, q.cidr))
        .collect())
}

async fn node_deletion(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"tiny"},"spec":{"cidrs":["10.7.0.0/24"],"nodeMaskSize":{"ipv4":25}}}"#).await?;
    let _op = OperatorProc::start_with_env(
        &cp,
        "solo",
        "127.0.0.1:0",
        &[("PODNET_CIDR_QUARANTINE", "8")],
    )?;
    create_nodes(&client, &names("node", 0..2), &BTreeMap::new()).await?;
    let nrs = wait_allocated(&client, &names("node", 0..2), 1, Duration::from_secs(30)).await?;
    let freed = nrs
        .iter()
        .find(|n| n.name_any() == "node-0")
        .map(cidrs)
        .unwrap_or_default();
    let nodes: Api<Node> = Api::all(client.clone());
    let nr_api: Api<NodeRoute> = Api::all(client.clone());
    let gone = |name: &'static str| {
        let api = nr_api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    };
    nodes.delete("node-0", &DeleteParams::default()).await?;
    // No garbage collector runs here: the operator itself removes the orphaned NodeRoute.
    wait_for(
        "node-0's NodeRoute removed",
        Duration::from_secs(30),
        || gone("node-0"),
    )
    .await?;
    let released = Instant::now();
    let want = vec![("node-0".to_string(), freed[0].to_string())];
    wait_for(
        "node-0's CIDR in quarantine",
        Duration::from_secs(10),
        || {
            let (client, want) = (client.clone(), want.clone());
            async move { Ok((quarantine_of(&client, "tiny").await? == want).then_some(())) }
        },
    )
    .await?;
    // A new node does not get the quarantined CIDR: the pool is exhausted meanwhile.
    create_nodes(&client, &names("node", 5..6), &BTreeMap::new()).await?;
    wait_for(
        "node-5 waiting (PoolExhausted)",
        Duration::from_secs(10),
        || {
            let api = nr_api.clone();
            async move {
                let nr = api.get_opt("node-5").await?;
                Ok(nr
                    .filter(|nr| {
                        allocated_condition(nr).is_some_and(|c| c.reason == "PoolExhausted")
                    })
                    .map(|_| ()))
            }
        },
    )
    .await?;
    // node-0 comes back (a re-registered kubelet) within the quarantine: same CIDR.
    create_nodes(&client, &names("node", 0..1), &BTreeMap::new()).await?;
    let back = wait_allocated(&client, &names("node", 0..1), 1, Duration::from_secs(30)).await?;
    let again = back
        .iter()
        .find(|n| n.name_any() == "node-0")
        .map(cidrs)
        .unwrap_or_default();
    ensure!(
        again == freed,
        "node-0 came back and got {again:?}, not its {freed:?}"
    );
    ensure!(
        released.elapsed() < Duration::from_secs(8),
        "too slow to prove anything about the quarantine"
    );
    ensure!(quarantine_of(&client, "tiny").await?.is_empty());
    // Gone again, and this time the quarantine runs out: node-5 gets the CIDR.
    nodes.delete("node-0", &DeleteParams::default()).await?;
    wait_for(
        "node-0's NodeRoute removed",
        Duration::from_secs(30),
        || gone("node-0"),
    )
    .await?;
    let released = Instant::now();
    let nrs = wait_allocated(&client, &names("node", 5..6), 1, Duration::from_secs(30)).await?;
    let reused = nrs
        .iter()
        .find(|n| n.name_any() == "node-5")
        .map(cidrs)
        .unwrap_or_default();
    ensure!(
        released.elapsed() >= Duration::from_secs(7),
        "reused {:?} after the release, before the 8 s quarantine",
        released.elapsed()
    );
    ensure!(
        reused == freed,
        "the freed {freed:?} should be reused, got {reused:?}"
    );
    no_overlaps(&client).await?;
    Ok(())
}

async fn network_edits(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"first"},"spec":{"cidrs":["10.20.0.0/24","10.21.0.0/24"]}}"#).await?;
    let _op = OperatorProc::start(&cp, "solo")?;
    create_nodes(&client, &names("node", 0..2), &BTreeMap::new()).await?;
    let nrs = wait_allocated(&client, &names("node", 0..2), 1, Duration::from_secs(30)).await?;
    let held: BTreeMap<String, Vec<IpNet>> = nrs.iter().map(|n| (n.name_any(), cidrs(n))).collect();
    // Remove the CIDR node-0 uses: it keeps it, and the network says it is draining.
    let pn_api: Api<PodNetwork> = Api::all(client.clone());
    pn_api
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec":{"cidrs":["10.21.0.0/24"]}})),
        )
        .await?;
    wait_for("Draining=True", Duration::from_secs(20), || {
        let api = pn_api.clone();
        async move {
            let st = api.get("first").await?.status.unwrap_or_default();
            Ok(condition_is(&st.conditions, "Draining", ConditionStatus::True).then_some(st))
        }
    })
    .await?;
    let after = no_overlaps(&client).await?;
    for nr in &after {
        ensure!(
            held.get(&nr.name_any()) == Some(&cidrs(nr)),
            "{} lost its CIDR",
            nr.name_any()
        );
    }
    // A second network overlapping the first is refused, naming it.
    apply_json(&client, r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"second"},"spec":{"cidrs":["10.21.0.0/16"],"nodeSelector":{"matchLabels":{"x":"y"}}}}"#).await?;
    let st = wait_for(
        "Invalid=True on the overlapping network",
        Duration::from_secs(20),
        || {
            let api = pn_api.clone();
            async move {
                let st = api.get("second").await?.status.unwrap_or_default();
                Ok(condition_is(&st.conditions, "Invalid", ConditionStatus::True).then_some(st))
            }
        },
    )
    .await?;
    let msg = find_condition(&st.conditions, "Invalid")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(msg.contains("PodNetwork first"), "{msg}");
    ensure!(condition_is(
        &st.conditions,
        "Ready",
        ConditionStatus::False
    ));
    Ok(())
}

async fn bogus_status(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    let mut op = OperatorProc::start(&cp, "solo")?;
    create_nodes(&client, &names("node", 0..3), &BTreeMap::new()).await?;
    let nrs = wait_allocated(&client, &names("node", 0..3), 2, Duration::from_secs(30)).await?;
    let of = |name: &str| {
        nrs.iter()
            .find(|n| n.name_any() == name)
            .map(cidrs)
            .unwrap_or_default()
    };
    let (victim, own1, own2) = (of("node-0"), of("node-1"), of("node-2"));
    let api = Api::<NodeRoute>::all(client.clone());
    // Someone writes node-0's IPv4 CIDR into node-1's status by hand, and a default
    // route into node-2's.
    for (name, forged) in [
        ("node-1", vec![victim[0].to_string(), own1[1].to_string()]),
        ("node-2", vec!["0.0.0.0/0".to_string(), own2[1].to_string()]),
    ] {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podCIDRs": forged}})),
        )
        .await?;
    }
    // Not adopted: each node's status is written back with what it was allocated.
    for (name, own) in [("node-1", &own1), ("node-2", &own2)] {
        wait_for(
            &format!("{name}'s CIDRs restored"),
            Duration::from_secs(20),
            || {
                let api = api.clone();
                async move {
                    let nr = api.get(name).await?;
                    Ok((cidrs(&nr) == *own
                        && allocated_condition(&nr).is_some_and(|c| c.status == "True"))
                    .then_some(()))
                }
            },
        )
        .await?;
    }
    ensure!(cidrs(&api.get("node-0").await?) == victim);
    // Reported: an InvalidAllocation event on each.
    let events = cp.kubectl([
        "get",
        "events",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.name} {.reason} {.message}{\"\\n\"}{end}",
    ])?;
    let events = String::from_utf8_lossy(&events.stdout).into_owned();
    for name in ["node-1", "node-2"] {
        ensure!(
            events
                .lines()
                .any(|l| l.starts_with(&format!("{name} InvalidAllocation"))
                    && l.contains("restored")),
            "no InvalidAllocation event for {name}:\n{events}"
        );
    }
    // New nodes never get the contested CIDR.
    create_nodes(&client, &names("node", 3..5), &BTreeMap::new()).await?;
    let nrs = wait_allocated(&client, &names("node", 3..5), 2, Duration::from_secs(30)).await?;
    ensure!(
        nrs.iter()
            .filter(|n| n.name_any() == "node-3" || n.name_any() == "node-4")
            .all(|n| !cidrs(n).contains(&victim[0]))
    );
    no_overlaps(&client).await?;
    // A restarted operator adopts what it finds, but reports (and never routes) what is
    // wrong: a CIDR outside every pool stays InvalidAllocation.
    drop(op);
    api.patch_status(
        "node-2",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podCIDRs": ["192.0.2.0/24", own2[1].to_string()]}})),
    )
    .await?;
    op = OperatorProc::start(&cp, "second")?;
    wait_for(
        "node-2 reported InvalidAllocation",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let nr = api.get("node-2").await?;
                Ok(allocated_condition(&nr)
                    .filter(|c| c.reason == "InvalidAllocation" && c.status == "False")
                    .map(|c| c.message))
            }
        },
    )
    .await
    .and_then(|msg| {
        ensure!(
            msg.contains("192.0.2.0/24") && msg.contains("outside"),
            "{msg}"
        );
        Ok(())
    })?;
    op.assert_running()
}

/// Node addresses that cannot carry pod traffic are refused with a condition and an
/// event, and the previous valid ones stay in force.
async fn node_addresses(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    let _op = OperatorProc::start(&cp, "solo")?;
    create_nodes(&client, &names("node", 0..2), &BTreeMap::new()).await?;
    let nrs = wait_allocated(&client, &names("node", 0..2), 2, Duration::from_secs(30)).await?;
    let ips_of = |nr: &NodeRoute| nr.status.clone().unwrap_or_default().node_ips;
    let before: BTreeMap<String, Vec<String>> =
        nrs.iter().map(|n| (n.name_any(), ips_of(n))).collect();
    let nodes: Api<Node> = Api::all(client.clone());
    let api: Api<NodeRoute> = Api::all(client.clone());
    let (n0_v4, _) = node_ip(0);
    // node-1 now claims node-0's IPv4 address and a loopback IPv6 one.
    nodes
        .patch_status(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": [
                {"type": "InternalIP", "address": n0_v4},
                {"type": "InternalIP", "address": "::1"},
            ]}})),
        )
        .await?;
    let msg = wait_for(
        "node-1's NodeIPsValid=False",
        Duration::from_secs(20),
        || {
            let api = api.clone();
            async move {
                let nr = api.get("node-1").await?;
                Ok(nr
                    .status
                    .as_ref()
                    .and_then(|s| find_condition(&s.conditions, "NodeIPsValid"))
                    .filter(|c| c.status == "False" && c.reason == "InvalidNodeIP")
                    .map(|c| c.message.clone()))
            }
        },
    )
    .await?;
    ensure!(
        msg.contains("node-0's address") && msg.contains("loopback"),
        "{msg}"
    );
    for nr in api.list(&ListParams::default()).await?.items {
        ensure!(
            ips_of(&nr) == before[&nr.name_any()],
            "{}'s nodeIPs changed to {:?}",
            nr.name_any(),
            ips_of(&nr)
        );
    }
    let events = cp.kubectl(["get", "events", "-A", "-o", "jsonpath={.items[*].reason}"])?;
    ensure!(
        String::from_utf8_lossy(&events.stdout).contains("InvalidNodeIP"),
        "no InvalidNodeIP event"
    );
    // Fixed: accepted again.
    let (n1_v4, n1_v6) = node_ip(1);
    nodes
        .patch_status(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": [
                {"type": "InternalIP", "address": n1_v4},
                {"type": "InternalIP", "address": n1_v6},
            ]}})),
        )
        .await?;
    wait_for(
        "node-1's NodeIPsValid=True",
        Duration::from_secs(20),
        || {
            let api = api.clone();
            async move {
                let nr = api.get("node-1").await?;
                Ok(nr
                    .status
                    .as_ref()
                    .and_then(|s| find_condition(&s.conditions, "NodeIPsValid"))
                    .filter(|c| c.status == "True")
                    .map(|_| ()))
            }
        },
    )
    .await?;
    Ok(())
}

async fn node_pod_cidrs(cp: Arc<ControlPlane>) -> anyhow::Result<()> {
    let client = cp.client().await?;
    apply_json(&client, DUAL).await?;
    let nodes_api: Api<Node> = Api::all(client.clone());
    {
        let _off = OperatorProc::start(&cp, "default-off")?;
        create_nodes(&client, &names("node", 0..2), &BTreeMap::new()).await?;
        wait_allocated(&client, &names("node", 0..2), 2, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = nodes_api.get("node-0").await?;
        ensure!(
            n.spec.and_then(|s| s.pod_cidrs).is_none(),
            "Node.spec.podCIDRs set although the option is off"
        );
    }
    let _on = OperatorProc::start_with_env(
        &cp,
        "on",
        "127.0.0.1:0",
        &[("PODNET_SET_NODE_POD_CIDRS", "true")],
    )?;
    let nrs = wait_allocated(&client, &names("node", 0..2), 2, Duration::from_secs(30)).await?;
    for nr in nrs {
        let want: Vec<String> = cidrs(&nr).iter().map(ToString::to_string).collect();
        let name = nr.name_any();
        wait_for("Node.spec.podCIDRs", Duration::from_secs(30), || {
            let api = nodes_api.clone();
            let (name, want) = (name.clone(), want.clone());
            async move {
                let spec = api.get(&name).await?.spec.unwrap_or_default();
                Ok((spec.pod_cidrs.as_ref() == Some(&want)
                    && spec.pod_cidr.as_ref() == want.first())
                .then_some(()))
            }
        })
        .await?;
    }
    Ok(())
}

fn allocated_condition(
    nr: &NodeRoute,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    nr.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Allocated").cloned())
}
