//! A daemon SIGKILLed mid-sync and restarted; another node's podnet routes and whole
//! masquerade setup deleted by hand; a third daemon stopped as in a rolling update.

use std::time::{Duration, Instant};

use anyhow::ensure;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_lab::cluster::{self, LAB_LABEL, LabState};
use podnet_lab::invariants::{self, admin_client};
use podnet_lab::run_ok;

use crate::SETTLE;
use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
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
    // From here on, a failure still leaves every node with a running daemon.
    let n3 = state.nodes[2].clone();
    let faults = async {
        // A rolling update stops a daemon gracefully: its node keeps forwarding meanwhile
        // (to the nodes whose routes nobody touched).
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
        // Meanwhile, remove podnet's state on node-2 by hand.
        podnet_lab::probes::delete_podnet_routes(&n2.netns)?;
        // The whole masquerade setup goes: iptables hook and chain in one transaction
        // per family, or the nftables table (the daemon may repair it at any moment).
        remove_masquerade(&n2.netns)?;
        anyhow::Ok(())
    }
    .await;
    let pid3 = cluster::spawn_daemon(state, &n3)?;
    state.nodes[2].daemon_pid = pid3;
    let repaired_from = Instant::now();
    let pid = cluster::spawn_daemon(state, &n1)?;
    state.nodes[0].daemon_pid = pid;
    cluster::save(state)?;
    if let Err(e) = faults {
        delete_nodes(&client, &burst).await?;
        return Err(e);
    }
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
    Ok(Outcome::default()
        .count("IPv4 podnet routes in node-1's kernel when its daemon was killed (2 before the burst of 40 peers)", seen)
        .took("every route and the masquerade setup (node-2: the nftables table) restored (resync 5 s) in", repaired)
        .held("node-3's pods kept forwarding while its daemon was stopped (SIGTERM, as in a rolling update) and restarted"))
}
