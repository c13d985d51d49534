//! 100 nodes added and removed, three rounds, while pods run on the stable nodes.

use std::time::{Duration, Instant};

use anyhow::ensure;
use podnet_lab::cluster::{self, LAB_LABEL, LabState};
use podnet_lab::invariants::{self, admin_client};
use podnet_lab::run_ok;

use crate::SETTLE;
use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
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
        wait_until(
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
    Ok(Outcome::default()
        .count("routes per node at peak", max_routes)
        .took("3 rounds of 100 nodes in and out", t.elapsed())
        .held("stable pods reachable in every round; routes back to exactly the stable peers"))
}
