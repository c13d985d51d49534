//! podnet-cni SIGKILLed at random points of ADD, 500 create/delete cycles, 8 at a
//! time; then DEL and GC as a runtime does: nothing leaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use podnet_lab::cluster::{self, LabState};
use podnet_lab::run_ok;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
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
    // Eight ADDs share two cores: an ADD takes several times the lone one. Kill points
    // start spread over six lone ADDs and then follow how long the ADDs that finish
    // really take under this load (a running average; kill points uniform up to 1.2
    // times it), so most cycles die somewhere inside ADD and some finish, however fast
    // or slow the machine is at the moment.
    let window_us = (add_time.as_micros() as u64).clamp(2_000, 200_000) * 6;
    let estimate_us = Arc::new(std::sync::atomic::AtomicU64::new(window_us * 5 / 6));
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
        let estimate_us = Arc::clone(&estimate_us);
        workers.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            for i in 0..(500 / 8 + usize::from(w < 500 % 8)) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let estimate = estimate_us
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .max(500);
                let delay = Duration::from_micros(seed % (estimate * 6 / 5));
                let ns = format!("{tag}-c{w}x{i}");
                run_ok(&["ip", "netns", "add", &ns])?;
                match cni_add_killed_after(&state, &node, &ns, delay)? {
                    None => {
                        killed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(took) => {
                        let took = took.as_micros() as u64;
                        estimate_us.store(
                            (estimate * 7 + took) / 8,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
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
    Ok(Outcome::default()
        .count("cycles", cycles)
        .count("ADDs killed mid-way", killed)
        .count("ADDs completed", cycles - killed)
        .took(
            "kill points uniform from 0 to 1.2 × a concurrent ADD, at the end",
            Duration::from_micros(estimate_us.load(std::sync::atomic::Ordering::Relaxed) * 6 / 5),
        )
        .took("a lone ADD here takes", add_time)
        .held("every DEL succeeded; after GC no leaked lease, attachment record or veth"))
}

/// Runs podnet-cni ADD for `ns` on `node` and SIGKILLs it after `delay` unless it is
/// done; how long it took when it finished, `None` when it was killed.
fn cni_add_killed_after(
    state: &LabState,
    node: &cluster::LabNode,
    ns: &str,
    delay: Duration,
) -> anyhow::Result<Option<Duration>> {
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
    let started = Instant::now();
    let deadline = started + delay;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(Some(started.elapsed()));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
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
